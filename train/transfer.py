"""`curate train --init`: a new run's G, D and G_ema start from pretrained weights.

Three sources, told apart by content: a curate snapshot, an NVlabs network pickle (read as data by
train/pickles.py) and a rosinality stylegan2-pytorch checkpoint. Each is renamed to our keys
(train/keymaps.py), checked shape by shape against the run's networks and copied in place, so the
optimisers keep their parameters. Label layers carry over only between curate runs, row by label
name; elsewhere they keep the run's fresh initialisation, and the report says so.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curate.errors import InvalidArgument, ModelError

TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # the first object of a pre-1.6 torch.save file
W_AVG_SAMPLES = 10_000


@dataclass
class TransferReport:
    """What `initialise` copied and what kept its fresh initialisation."""

    kind: str  # "curate snapshot", "NVlabs pickle" or "rosinality checkpoint"
    path: Path
    copied: int = 0  # tensors copied (whole or in part) into G, D and G_ema together
    fresh: list[str] = field(default_factory=list)  # tensors (or parts) left as initialised
    labels_carried: list[str] = field(default_factory=list)
    labels_fresh: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        fresh = ", ".join(self.fresh) if self.fresh else "nothing"
        line = f"started from {self.kind} {self.path}: {self.copied} tensors copied; fresh: {fresh}"
        if self.labels_carried:
            line += f"; labels carried over: {', '.join(self.labels_carried)}"
        return line


@dataclass
class Source:
    """A file's networks under our tensor names."""

    kind: str
    G: dict[str, Any] | None
    G_ema: dict[str, Any] | None
    D: dict[str, Any] | None
    z_dim: int
    label_names: list[str] | None = None  # curate's labels; None: no labels we can carry
    notes: list[str] = field(default_factory=list)


def initialise(trainer, path: Path, label_names: list[str]) -> TransferReport:
    """Copy the weights in `path` onto the trainer's G, D and G_ema; returns what was copied."""
    source = read_source(path)
    report = TransferReport(source.kind, path, notes=list(source.notes))
    g_source = source.G if source.G is not None else source.G_ema
    ema_source = source.G_ema if source.G_ema is not None else source.G
    if g_source is None:
        raise ModelError(f"{path} holds no generator")
    if source.G is None:
        report.notes.append("the file has no training G: G starts from its G_ema")
    geometry = _geometry(g_source, source.z_dim)
    _check_resolution(geometry, trainer.network.resolution, path)
    check = _Checker(path, geometry)
    labels = _LabelRows(source.label_names, label_names)
    for name, module, tensors in (("G", trainer.G, g_source), ("G_ema", trainer.G_ema, ema_source)):
        _copy_generator(module, tensors, source, labels, check, report, name)
    if source.D is None:
        report.fresh.append("D (the file has none)")
    else:
        _copy_discriminator(trainer.D, source.D, labels, check, report)
    report.labels_carried, report.labels_fresh = labels.carried(), labels.fresh()
    if label_names and not labels.carried():
        report.fresh.append("the label layers (G mapping.embed, D out)")
    elif labels.fresh():
        report.fresh.append(f"the rows of {', '.join(labels.fresh())} in G mapping.embed and D out")
    for name, module, tensors in (("G", trainer.G, g_source), ("G_ema", trainer.G_ema, ema_source)):
        if "mapping.w_avg" not in tensors:
            _estimate_w_avg(module, trainer, seed=0)
            report.notes.append(f"{name}'s w average estimated from {W_AVG_SAMPLES:,} z (the file has none)")
    return report


# ---------------------------------------------------------------------------------------- reading


def read_source(path: Path) -> Source:
    """The file's networks, whatever its kind (decided by content, not by extension)."""
    if not path.is_file():
        raise ModelError(f"--init: no file at {path}")
    if zipfile.is_zipfile(path):
        return _from_torch_file(path, _torch_load(path))
    from train.pickles import load_pickle

    loaded = load_pickle(path)
    if isinstance(loaded, int) and loaded == TORCH_LEGACY_MAGIC:
        # an old (pre-zip) torch.save: the weights-only loader reads that format too
        return _from_torch_file(path, _torch_load(path))
    return _from_nvlabs(path, loaded)


def _torch_load(path: Path) -> Any:
    import argparse
    import pickle

    import torch

    try:
        # rosinality saves its command-line arguments; a Namespace holds plain values
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ModelError(f"{path} is not a readable torch file: {str(exc).splitlines()[0]}") from None


def _from_torch_file(path: Path, loaded: Any) -> Source:
    from train.snapshot import FORMAT

    if isinstance(loaded, dict) and loaded.get("format") == FORMAT:
        return _from_curate(loaded)
    if isinstance(loaded, dict) and "g_ema" in loaded:
        return _from_rosinality(path, loaded)
    keys = ", ".join(map(str, list(loaded)[:6])) if isinstance(loaded, dict) else type(loaded).__name__
    raise ModelError(
        f"{path} is neither a curate snapshot nor a rosinality checkpoint (it holds {keys}); --init takes "
        "those or an NVlabs network-snapshot-*.pkl"
    )


def _from_curate(state: dict) -> Source:
    trainer, network = state["trainer"], state["network"]
    names = list(state.get("label_names") or []) if network.get("c_dim") else None
    return Source("curate snapshot", trainer.get("G"), trainer.get("G_ema"), trainer.get("D"),
                  int(network["z_dim"]), names)  # fmt: skip


def _from_rosinality(path: Path, loaded: dict) -> Source:
    from train.keymaps import rosinality_discriminator, rosinality_generator

    def generator(key: str) -> dict | None:
        if key not in loaded:
            return None
        tensors = rosinality_generator(loaded[key]).tensors
        if loaded.get("latent_avg") is not None:  # checkpoints converted from TF keep the average
            tensors["mapping.w_avg"] = loaded["latent_avg"].reshape(-1)
        return tensors

    G, G_ema = generator("g"), generator("g_ema")
    D = rosinality_discriminator(loaded["d"]).tensors if "d" in loaded else None
    first = (G_ema or G or {}).get("mapping.layers.0.weight")
    if first is None:
        raise ModelError(f"{path} has no mapping network (style.1) in g_ema")
    return Source("rosinality checkpoint", G, G_ema, D, int(first.shape[1]))


def _from_nvlabs(path: Path, loaded: Any) -> Source:
    from train.keymaps import nvlabs_discriminator, nvlabs_generator
    from train.pickles import flatten

    if not isinstance(loaded, dict) or not ({"G", "G_ema"} & set(loaded)):
        found = ", ".join(map(str, loaded)) if isinstance(loaded, dict) else type(loaded).__name__
        raise ModelError(f"{path} is not an NVlabs network pickle: it holds {found}, not G_ema")
    notes: list[str] = []
    nets: dict[str, dict | None] = {}
    labelled: dict[str, bool] = {}
    for key in ("G", "G_ema", "D"):
        if loaded.get(key) is None:
            nets[key] = None
            continue
        flat = flatten(loaded[key], "")
        renamed = nvlabs_generator(flat) if key != "D" else nvlabs_discriminator(flat)
        nets[key] = renamed.tensors
        labelled[key] = bool(renamed.label_keys)
        if renamed.label_keys and key != "G":
            notes.append(
                f"the file's {key} is conditioned another way (NVlabs): its label layers are not used"
            )
    main = "G_ema" if nets["G_ema"] is not None else "G"
    first = nets[main].get("mapping.layers.0.weight")
    if first is None:
        raise ModelError(f"{path}: its generator has no mapping.fc0")
    # NVlabs' fc0 reads [normalised z, normalised embed(c)]: the embedding is w_dim wide
    z_dim = first.shape[1] - (first.shape[0] if labelled[main] else 0)
    return Source("NVlabs pickle", nets["G"], nets["G_ema"], nets["D"], int(z_dim), notes=notes)


# ---------------------------------------------------------------------------------------- checking


@dataclass(frozen=True)
class Geometry:
    resolution: int
    channels: dict[int, int]
    mapping_layers: int
    z_dim: int
    w_dim: int

    def options(self) -> str:
        """The training options that build networks of this shape."""
        cmax = self.channels[4]
        for res, count in sorted(self.channels.items()):
            base = count * res
            if all(min(base // r, cmax) == c for r, c in self.channels.items()):
                break
        else:
            return f"no --cbase/--cmax (its channel counts {self.channels} follow another rule)"
        width = f"--z-dim {self.z_dim}" if self.z_dim == self.w_dim else f"z {self.z_dim} and w {self.w_dim}"
        return f"--cbase {base} --cmax {cmax} --map {self.mapping_layers} {width}, at {self.resolution}²"


def _geometry(tensors: dict[str, Any], z_dim: int) -> Geometry:
    blocks = sorted(int(k.split(".")[2]) for k in tensors if k.endswith(".conv1.weight") and "synthesis" in k)
    if not blocks:
        raise ModelError("the file's generator has no synthesis blocks")
    channels = {4 * 2**j: int(tensors[f"synthesis.blocks.{j}.conv1.weight"].shape[0]) for j in blocks}
    layers = sum(1 for k in tensors if k.startswith("mapping.layers.") and k.endswith(".weight"))
    w_dim = int(tensors["mapping.layers.0.weight"].shape[0])
    return Geometry(4 * 2 ** blocks[-1], channels, layers, z_dim, w_dim)


def _check_resolution(geometry: Geometry, resolution: int, path: Path) -> None:
    if geometry.resolution != resolution:
        raise InvalidArgument(
            f"{path} generates {geometry.resolution}² images and the data is {resolution}²: --init needs "
            f"data at {geometry.resolution}² (or a file trained at {resolution}²)"
        )


@dataclass
class _Checker:
    path: Path
    geometry: Geometry

    def mismatch(self, network: str, name: str, there, here) -> InvalidArgument:
        def shape(t) -> str:
            return "absent" if t is None else str(list(t.shape))

        return InvalidArgument(
            f"{self.path}: {network} tensor {name} is {shape(there)} in the file and {shape(here)} in this "
            f"run's networks; the file's networks match {self.geometry.options()}"
        )

    def extras(self, network: str, source: dict, target: dict, allowed: set[str]) -> None:
        for name in source:
            if name not in target and name not in allowed:
                raise self.mismatch(network, name, source[name], None)


# ---------------------------------------------------------------------------------------- copying


class _LabelRows:
    """Which of the run's labels take their rows from the file (by name)."""

    def __init__(self, source: list[str] | None, target: list[str]):
        self.source, self.target = source, list(target)
        self.pairs = [(i, source.index(n)) for i, n in enumerate(target) if source and n in source]

    def carried(self) -> list[str]:
        return [self.target[i] for i, _ in self.pairs]

    def fresh(self) -> list[str]:
        taken = {i for i, _ in self.pairs}
        return [n for i, n in enumerate(self.target) if i not in taken] if self.pairs else []


def _copy_rows(target, source, labels: _LabelRows) -> None:
    for here, there in labels.pairs:
        target[here].copy_(source[there])


def _copy_generator(
    module, tensors, source: Source, labels: _LabelRows, check: _Checker, report, name
) -> None:
    import torch

    target = module.state_dict()
    label_keys = {"mapping.embed", "mapping.layers.0.weight"}
    check.extras(name, tensors, target, label_keys | {"mapping.w_avg"})
    with torch.no_grad():
        for key, here in target.items():
            there = tensors.get(key)
            if key == "mapping.embed":
                if there is not None and labels.pairs:
                    _copy_rows(here, there, labels)
                    report.copied += 1
                continue
            if key == "mapping.layers.0.weight" and there is not None:
                _copy_first_layer(here, there, source, module.z_dim, check, name, report)
                continue
            if key == "mapping.w_avg" and there is None:
                continue  # estimated once the mapping network is in place
            if there is None or there.shape != here.shape:
                raise check.mismatch(name, key, there, here)
            here.copy_(there)
            report.copied += 1


def _copy_first_layer(here, there, source: Source, z_dim: int, check: _Checker, name: str, report) -> None:
    """mapping.layers.0 reads [z, labels]: z's columns always carry over; the label columns only from a
    curate run with labels. Where the widths differ, the z columns are rescaled so z's contribution
    through the equalised gain 1/√fan_in stays what it was in the file."""
    if source.z_dim != z_dim or there.shape[0] != here.shape[0]:
        raise check.mismatch(name, "mapping.layers.0.weight", there, here)
    if there.shape == here.shape and source.label_names is not None:
        here.copy_(there)  # curate to curate, both with labels: the label columns mean the same
    elif there.shape == here.shape and here.shape[1] == z_dim:
        here.copy_(there)  # no labels on either side
    else:
        here[:, :z_dim].copy_(there[:, :z_dim] * math.sqrt(here.shape[1] / there.shape[1]))
        if here.shape[1] > z_dim and name == "G":
            report.fresh.append("G mapping.layers.0 label columns")
    report.copied += 1


def _copy_discriminator(module, tensors, labels: _LabelRows, check: _Checker, report) -> None:
    import torch

    target = module.state_dict()
    check.extras("D", tensors, target, {"out.weight", "out.bias"})
    with torch.no_grad():
        for key, here in target.items():
            there = tensors.get(key)
            if key in ("out.weight", "out.bias"):
                if there is not None and labels.source is None and module.c_dim == 0:
                    if there.shape != here.shape:
                        raise check.mismatch("D", key, there, here)
                    here.copy_(there)  # one unconditional score on both sides
                    report.copied += 1
                elif there is not None and labels.pairs:
                    _copy_rows(here, there, labels)
                    report.copied += 1
                elif module.c_dim == 0 and key == "out.weight":
                    report.fresh.append("D out (the file's scores labels)")
                continue
            if there is None or there.shape != here.shape:
                raise check.mismatch("D", key, there, here)
            here.copy_(there)
            report.copied += 1


def _estimate_w_avg(G, trainer, seed: int) -> None:
    """The mean of mapping(z) over W_AVG_SAMPLES z (with label rows drawn from the data's), for a file
    whose mapping network tracks no average."""
    import torch

    generator = torch.Generator(device="cpu").manual_seed(seed)
    device = G.mapping.w_avg.device
    total = torch.zeros_like(G.mapping.w_avg)
    with torch.no_grad():
        for _ in range(W_AVG_SAMPLES // 1000):
            z = torch.randn(1000, G.z_dim, generator=generator).to(device)
            c = None
            if G.c_dim:
                rows = torch.randint(len(trainer.fake_labels), (1000,), generator=generator)
                c = trainer.fake_labels[rows.to(trainer.fake_labels.device)].to(device)
            total += G.mapping(z, c)[:, 0].sum(dim=0)
        G.mapping.w_avg.copy_(total / W_AVG_SAMPLES)
