"""Reading NVlabs network pickles (stylegan2-ada-pytorch, stylegan3) as data, never as code.

NVlabs pickles their networks through `torch_utils.persistence`: each network is a call to
`_reconstruct_persistent_obj(meta)`, where `meta` carries the class's source code and the module's
`__dict__`. Unpickling them normally runs that source. Here a restricted unpickler answers every
global the pickle asks for from a short list of data-only constructors (tensors, storages, plain
containers, numpy scalars), turns each persistent object into a `PersistentStub` that keeps the class
name and the state and ignores the source, and refuses anything else before it can be called.
"""

from __future__ import annotations

import collections
import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curate.errors import ModelError

PERSISTENCE = "torch_utils.persistence"


@dataclass
class PersistentStub:
    """What a persistent NVlabs object held: its class name and its state (`__dict__`), as data."""

    class_name: str
    state: dict[str, Any]


def _reconstruct_persistent_obj(meta: Any) -> PersistentStub:
    """Stands in for NVlabs' function of the same name: keeps the state, never reads `module_src`."""
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("state"), dict):
        raise pickle.UnpicklingError("a persistent object whose description is not a class with a state")
    return PersistentStub(str(meta.get("class_name", "?")), meta["state"])


def _load_storage(data: bytes):
    """Stands in for `torch.storage._load_from_bytes`: the storage inside is a legacy torch.save,
    read here with the weights-only loader."""
    import torch

    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _allowed() -> dict[tuple[str, str], Any]:
    """(module, name) → what the unpickler hands back for it."""
    import numpy
    import torch
    import torch._utils

    allowed: dict[tuple[str, str], Any] = {
        (PERSISTENCE, "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
        ("dnnlib.util", "EasyDict"): dict,  # a dict with attribute access: the items are what matter
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
        ("torch.storage", "_load_from_bytes"): _load_storage,
        ("torch", "device"): torch.device,
        ("numpy", "dtype"): numpy.dtype,
        ("numpy", "ndarray"): numpy.ndarray,
    }
    for name in ("set", "frozenset", "slice", "complex", "bytearray", "range"):
        allowed["builtins", name] = getattr(__import__("builtins"), name)
    multiarray = getattr(numpy, "_core", None) or numpy.core  # numpy 2 renamed numpy.core
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        # pickles written under either numpy name the module their way; both build from bytes
        allowed[module, "_reconstruct"] = multiarray.multiarray._reconstruct
        allowed[module, "scalar"] = multiarray.multiarray.scalar
    for name in dir(torch):
        if isinstance(getattr(torch, name, None), torch.dtype):
            allowed["torch", name] = getattr(torch, name)
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that only builds tensors, storages and plain containers (see the module docstring)."""

    def __init__(self, file, source: Path):
        super().__init__(file)
        self.source = source
        self.allowed = _allowed()

    def find_class(self, module: str, name: str) -> Any:
        found = self.allowed.get((module, name))
        if found is not None:
            return found
        if module.startswith("dnnlib.tflib"):
            raise ModelError(
                f"{self.source} is a TensorFlow StyleGAN pickle ({module}.{name}): convert it to a PyTorch "
                "network pickle first (NVlabs' stylegan2-ada-pytorch legacy.py does), then give that"
            )
        raise ModelError(
            f"{self.source} asks for {module}.{name}, which an NVlabs network pickle does not need: "
            "refused (curate never runs code from a pickle)"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise ModelError(f"{self.source} refers to persistent ids: not an NVlabs network pickle")


def load_pickle(path: Path) -> Any:
    """The first object pickled in `path`, built by the restricted unpickler."""
    try:
        with open(path, "rb") as handle:
            return RestrictedUnpickler(handle, path).load()
    except FileNotFoundError:
        raise ModelError(f"no file at {path}") from None
    except ModelError:
        raise
    except Exception as exc:  # a corrupt or foreign pickle fails in many ways; all mean "not readable"
        raise ModelError(f"{path} is not a readable network pickle: {str(exc).splitlines()[0]}") from None


def flatten(stub: Any, where: str = "") -> dict[str, Any]:
    """A persistent module as a state dict: its parameters and persistent buffers, then its children's
    under their `_modules` names, as `Module.state_dict` would name them."""
    import torch

    if not isinstance(stub, PersistentStub):
        raise ModelError(f"{where or 'the network'} is a {type(stub).__name__}, not a persisted module")
    state = stub.state
    flat: dict[str, Any] = {}
    skip = set(state.get("_non_persistent_buffers_set") or ())
    for group in ("_parameters", "_buffers"):
        for name, value in (state.get(group) or {}).items():
            if value is None or (group == "_buffers" and name in skip):
                continue
            if not isinstance(value, torch.Tensor):
                raise ModelError(f"{where}{name} is a {type(value).__name__}, not a tensor")
            flat[where + name] = value.detach()
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            flat.update(flatten(child, f"{where}{name}."))
    return flat
