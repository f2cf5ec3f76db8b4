"""`curate train --init`: weights from a curate snapshot, an NVlabs network pickle or a rosinality
checkpoint reach our networks with the same outputs, label rows follow their names, pickles are read as
data only, and mismatched shapes say which options would match.

The NVlabs and rosinality files are built here from one of our own networks through the inverse key
map, with the same structure and key names as theirs (NVlabs' persistence objects are stood in for by
classes that pickle the same way); no file from either project is used.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import pickle
import sys
import types
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from curate.errors import InvalidArgument, ModelError
from train.config import NetworkConfig
from train.ops import blur, fir_kernel, modulated_conv2d
from train.snapshot import save_snapshot
from train.transfer import initialise

EVIL_SOURCE = "import os\nos.environ['CURATE_TRANSFER_RAN'] = '1'\nraise SystemExit('module_src ran')\n"
BUFFERS = ("w_avg", "noise_const", "resample_filter")


def network(c_dim: int = 0, resolution: int = 16, **changes) -> NetworkConfig:
    settings = dict(resolution=resolution, c_dim=c_dim, z_dim=32, w_dim=32, mapping_layers=2,
                    channel_base=256, channel_max=32, num_fp16_res=0)  # fmt: skip
    return NetworkConfig(**{**settings, **changes})


def known_networks(config: NetworkConfig, seed: int = 1):
    """(G, D) with every tensor random, biases and noise strengths included, so nothing hides at zero."""
    torch.manual_seed(seed)
    G, D = config.build()
    with torch.no_grad():
        for tensor in [*G.parameters(), *D.parameters()]:
            tensor.add_(0.3 * torch.randn_like(tensor))
        G.mapping.w_avg.normal_()
    return G.eval(), D.eval()


def fake_trainer(config: NetworkConfig, seed: int = 7, labels: int = 0):
    torch.manual_seed(seed)
    G, D = config.build()
    fake_labels = torch.eye(labels) if labels else torch.zeros(1, 0)
    return SimpleNamespace(network=config, G=G, D=D, G_ema=copy.deepcopy(G).eval(), fake_labels=fake_labels)


def images(G, c=None, seed: int = 3) -> torch.Tensor:
    z = torch.randn(4, G.z_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return G(z, c, noise_mode="const")


def logits(D, c=None, seed: int = 4) -> torch.Tensor:
    img = torch.randn(4, 3, D.resolution, D.resolution, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return D(img, c)


# ------------------------------------------------------------------------------ NVlabs stand-ins


def nvlabs_generator_keys(G) -> dict[str, torch.Tensor]:
    """Our G's tensors under NVlabs' names, the upsampling convolutions' weights flipped back."""
    out = {}
    for key, value in G.state_dict().items():
        parts = key.split(".")
        if parts[0] == "mapping" and parts[1] == "layers":
            out[f"mapping.fc{parts[2]}.{parts[3]}"] = value
        elif key == "mapping.w_avg":
            out[key] = value
        elif parts[0] == "synthesis":
            res = 4 * 2 ** int(parts[2])
            rest = ".".join(parts[3:])
            out[f"synthesis.b{res}.{rest}"] = value.flip([2, 3]) if rest == "conv0.weight" else value
            if rest == "conv1.weight":
                out[f"synthesis.b{res}.resample_filter"] = torch.ones(4, 4)
    return out


def nvlabs_discriminator_keys(D) -> dict[str, torch.Tensor]:
    top = D.resolution
    out = {}
    for key, value in D.state_dict().items():
        parts = key.split(".")
        if parts[0] == "blocks":
            out[f"b{top >> int(parts[1])}.{'.'.join(parts[2:])}"] = value
        else:
            out[f"b4.{key}"] = value
    return out


def persistence_modules() -> tuple[types.ModuleType, type]:
    """Fake `torch_utils.persistence` and `dnnlib.util` modules, registered while a test pickles."""
    persistence = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):  # pickled by name only; loading must never call it
        os.environ["CURATE_TRANSFER_RAN"] = "1"
        raise AssertionError("the real reconstruct function ran")

    _reconstruct_persistent_obj.__module__ = persistence.__name__
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    util = types.ModuleType("dnnlib.util")
    EasyDict = type("EasyDict", (dict,), {"__module__": "dnnlib.util"})
    util.EasyDict = EasyDict
    return persistence, util


class Persistent:
    """Pickles as NVlabs' persistent objects do: a call to `_reconstruct_persistent_obj(meta)`."""

    def __init__(self, class_name: str, state: dict, reconstruct):
        self.class_name, self.state, self.reconstruct = class_name, state, reconstruct

    def __reduce__(self):
        meta = dict(
            type="class", version=6, module_src=EVIL_SOURCE, class_name=self.class_name, state=self.state
        )
        return self.reconstruct, (meta,)


def module_tree(flat: dict[str, torch.Tensor], class_name: str, fakes) -> Persistent:
    """NVlabs' module structure: a Module __dict__ per level, parameters, buffers, hooks and kwargs."""
    persistence, util = fakes

    def node(name: str) -> Persistent:
        state = {
            "training": False, "_parameters": OrderedDict(), "_buffers": OrderedDict(),
            "_non_persistent_buffers_set": set(), "_modules": OrderedDict(), "_forward_hooks": OrderedDict(),
            "_forward_pre_hooks": OrderedDict(), "_state_dict_hooks": OrderedDict(),
            "_init_args": (), "_init_kwargs": util.EasyDict(res=16, mapping=util.EasyDict(num_layers=2)),
            "weight_gain": np.float64(1 / math.sqrt(32)), "act_gain": np.float32(math.sqrt(2)),
            "channels": np.arange(3), "conv_clamp": None, "dtype": torch.float32,
        }  # fmt: skip
        return Persistent(name, state, persistence._reconstruct_persistent_obj)

    root = node(class_name)
    root.state["_buffers"]["scratch"] = torch.full([3], 9.0)  # not persistent: must not be read
    root.state["_non_persistent_buffers_set"].add("scratch")
    for key, value in flat.items():
        *path, leaf = key.split(".")
        here = root
        for part in path:
            here = here.state["_modules"].setdefault(part, node(part))
        if leaf in BUFFERS:
            here.state["_buffers"][leaf] = value.clone()
        else:
            here.state["_parameters"][leaf] = torch.nn.Parameter(value.clone(), requires_grad=False)
    return root


def write_nvlabs(path: Path, networks: dict[str, dict | None], **extra) -> Path:
    """`pickle.dump(dict(G=…, D=…, G_ema=…, augment_pipe=…, training_set_kwargs=…))` as NVlabs writes it;
    the fake modules leave sys.modules before the file is read."""
    fakes = persistence_modules()
    added = {"torch_utils": types.ModuleType("torch_utils"), "torch_utils.persistence": fakes[0],
             "dnnlib": types.ModuleType("dnnlib"), "dnnlib.util": fakes[1]}  # fmt: skip
    sys.modules.update(added)
    try:
        payload = {k: module_tree(v, k, fakes) if v is not None else None for k, v in networks.items()}
        payload["training_set_kwargs"] = fakes[1].EasyDict(path="ffhq.zip", resolution=16, use_labels=False)
        payload.update(extra)
        path.write_bytes(pickle.dumps(payload, protocol=4))
    finally:
        for name in added:
            sys.modules.pop(name)
    return path


@pytest.fixture(autouse=True)
def nothing_runs():
    os.environ.pop("CURATE_TRANSFER_RAN", None)
    yield
    assert "CURATE_TRANSFER_RAN" not in os.environ, "code from a pickle ran"
    assert "torch_utils" not in sys.modules and "dnnlib" not in sys.modules


def test_nvlabs_upsampling_convention_is_a_true_convolution_so_weights_are_flipped():
    # the convention both ports use: conv_transpose2d with the weight as stored, then the 4-tap filter
    x, weight = torch.randn(2, 5, 4, 4), torch.randn(6, 5, 3, 3)
    theirs = blur(F.conv_transpose2d(x, weight.transpose(0, 1), stride=2), fir_kernel(), (1, 1), gain=4)
    ours = modulated_conv2d(
        x, weight.flip([2, 3]), torch.ones(2, 5), demodulate=False, up=True, fir=fir_kernel()
    )
    assert torch.allclose(ours, theirs, atol=1e-5)
    unflipped = modulated_conv2d(x, weight, torch.ones(2, 5), demodulate=False, up=True, fir=fir_kernel())
    assert not torch.allclose(unflipped, theirs, atol=1e-2)


def test_an_nvlabs_pickle_gives_the_same_images_and_logits(tmp_path):
    config = network()
    G, D = known_networks(config, seed=1)
    G_ema, _ = known_networks(config, seed=2)
    path = write_nvlabs(
        tmp_path / "weights.pt",  # the extension says nothing: the content decides
        {
            "G": nvlabs_generator_keys(G),
            "D": nvlabs_discriminator_keys(D),
            "G_ema": nvlabs_generator_keys(G_ema),
            "augment_pipe": {"p": torch.zeros([])},
        },
    )
    trainer = fake_trainer(config)
    report = initialise(trainer, path, [])
    assert report.kind == "NVlabs pickle" and report.fresh == []
    assert report.copied == 2 * len(G.state_dict()) + len(D.state_dict())
    assert (images(trainer.G) - images(G)).abs().max() < 1e-5
    assert (images(trainer.G_ema) - images(G_ema)).abs().max() < 1e-5
    assert (logits(trainer.D) - logits(D)).abs().max() < 1e-5
    assert torch.equal(trainer.G_ema.mapping.w_avg, G_ema.mapping.w_avg)


def test_an_official_pickle_without_g_and_d_starts_g_from_g_ema(tmp_path):
    config = network()
    G_ema, _ = known_networks(config, seed=2)
    path = write_nvlabs(tmp_path / "ffhq.pkl", {"G_ema": nvlabs_generator_keys(G_ema)})
    trainer = fake_trainer(config)
    D_before = copy.deepcopy(trainer.D.state_dict())
    report = initialise(trainer, path, [])
    assert (images(trainer.G) - images(G_ema)).abs().max() < 1e-5
    assert "D (the file has none)" in report.fresh and any("G_ema" in note for note in report.notes)
    assert all(torch.equal(v, trainer.D.state_dict()[k]) for k, v in D_before.items())


def test_a_conditional_nvlabs_pickle_keeps_our_label_layers_fresh(tmp_path):
    source = network(c_dim=0)
    G, D = known_networks(source)
    g_keys = nvlabs_generator_keys(G)
    # NVlabs conditions through embed(c) (w_dim wide) appended to z: fc0 reads z_dim + w_dim
    g_keys["mapping.fc0.weight"] = torch.cat([g_keys["mapping.fc0.weight"], torch.randn(32, 32)], dim=1)
    g_keys["mapping.embed.weight"], g_keys["mapping.embed.bias"] = torch.randn(32, 3), torch.zeros(32)
    d_keys = nvlabs_discriminator_keys(D)
    d_keys["b4.out.weight"], d_keys["b4.out.bias"] = torch.randn(16, 32), torch.zeros(16)  # onto cmap
    d_keys["mapping.fc0.weight"], d_keys["mapping.embed.weight"] = torch.randn(16, 16), torch.randn(16, 3)
    path = write_nvlabs(tmp_path / "cond.pkl", {"G": g_keys, "D": d_keys, "G_ema": g_keys})
    trainer = fake_trainer(network(c_dim=3), labels=3)
    fresh_embed = trainer.G.mapping.embed.detach().clone()
    fresh_columns = trainer.G.mapping.layers[0].weight[:, 32:].detach().clone()
    fresh_out = trainer.D.out.weight.detach().clone()
    report = initialise(trainer, path, ["a", "b", "c"])
    first = trainer.G.mapping.layers[0].weight.detach()
    assert torch.equal(first[:, :32], g_keys["mapping.fc0.weight"][:, :32])  # same fan-in: as is
    assert torch.equal(first[:, 32:], fresh_columns) and torch.equal(trainer.G.mapping.embed, fresh_embed)
    assert torch.equal(trainer.D.out.weight, fresh_out)
    assert torch.equal(trainer.D.conv.weight, D.conv.weight)
    assert report.labels_carried == [] and any("label layers" in item for item in report.fresh)
    assert any("conditioned another way" in note for note in report.notes)


@pytest.mark.parametrize(
    ("call", "expected"), [(os.system, f"{os.system.__module__}.system"), (eval, "builtins.eval")]
)
def test_a_pickle_that_asks_for_code_is_refused_and_nothing_runs(tmp_path, call, expected):
    marker = tmp_path / "ran"
    argument = f"touch {marker}" if call is os.system else f"open({str(marker)!r}, 'w')"

    class Evil:
        def __reduce__(self):
            return call, (argument,)

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"G_ema": {"x": Evil()}}))
    with pytest.raises(ModelError, match=f"asks for {expected}.*refused"):
        initialise(fake_trainer(network()), path, [])
    assert not marker.exists()


def test_a_persistence_class_other_than_the_reconstruct_function_is_refused(tmp_path):
    persistence = types.ModuleType("torch_utils.persistence")
    persistent_class = type("persistent_class", (), {"__module__": "torch_utils.persistence"})
    persistence.persistent_class = persistent_class
    sys.modules.update(
        {"torch_utils": types.ModuleType("torch_utils"), "torch_utils.persistence": persistence}
    )
    try:
        data = pickle.dumps({"G_ema": persistent_class})
    finally:
        sys.modules.pop("torch_utils"), sys.modules.pop("torch_utils.persistence")
    (tmp_path / "p.pkl").write_bytes(data)
    with pytest.raises(ModelError, match=r"torch_utils\.persistence\.persistent_class"):
        initialise(fake_trainer(network()), tmp_path / "p.pkl", [])


def test_shape_mismatches_name_the_tensor_and_the_options_that_match(tmp_path):
    G, D = known_networks(network(channel_base=512))
    path = write_nvlabs(
        tmp_path / "wide.pkl", {"G_ema": nvlabs_generator_keys(G), "D": nvlabs_discriminator_keys(D)}
    )
    with pytest.raises(InvalidArgument) as caught:
        initialise(fake_trainer(network()), path, [])
    message = str(caught.value)
    assert "synthesis.blocks.2.conv0.weight is [32, 32, 3, 3] in the file and [16, 32, 3, 3]" in message
    assert "--cbase 512 --cmax 32 --map 2 --z-dim 32, at 16²" in message
    G3, _ = known_networks(network(mapping_layers=3))
    path = write_nvlabs(tmp_path / "deep.pkl", {"G_ema": nvlabs_generator_keys(G3)})
    with pytest.raises(
        InvalidArgument, match=r"mapping\.layers\.2\.weight is \[32, 32\] in the file and absent.*--map 3"
    ):
        initialise(fake_trainer(network()), path, [])
    G32, _ = known_networks(network(resolution=32))
    path = write_nvlabs(tmp_path / "big.pkl", {"G_ema": nvlabs_generator_keys(G32)})
    with pytest.raises(InvalidArgument, match=r"generates 32² images and the data is 16²"):
        initialise(fake_trainer(network()), path, [])


# ------------------------------------------------------------------------------ rosinality


def rosinality_generator_keys(G) -> dict[str, torch.Tensor]:
    out, layer = {}, 0
    for j, block in enumerate(G.synthesis.blocks):
        if j == 0:
            convs = [("conv1", block.conv1, False)]
        else:
            convs = [(f"convs.{2 * j - 2}", block.conv0, True), (f"convs.{2 * j - 1}", block.conv1, False)]
        for name, conv, up in convs:
            weight = conv.weight.detach().flip([2, 3]) if up else conv.weight.detach()
            out[f"{name}.conv.weight"] = weight[None]
            out[f"{name}.conv.modulation.weight"] = conv.affine.weight.detach()
            out[f"{name}.conv.modulation.bias"] = conv.affine.bias.detach()
            out[f"{name}.noise.weight"] = conv.noise_strength.detach().reshape(1)
            out[f"{name}.activate.bias"] = conv.bias.detach()
            if up:
                out[f"{name}.conv.blur.kernel"] = torch.ones(4, 4)
            out[f"noises.noise_{layer}"] = conv.noise_const[None, None]
            layer += 1
        rgb = "to_rgb1" if j == 0 else f"to_rgbs.{j - 1}"
        out[f"{rgb}.conv.weight"] = block.torgb.weight.detach()[None]
        out[f"{rgb}.conv.modulation.weight"] = block.torgb.affine.weight.detach()
        out[f"{rgb}.conv.modulation.bias"] = block.torgb.affine.bias.detach()
        out[f"{rgb}.bias"] = block.torgb.bias.detach().reshape(1, 3, 1, 1)
        if j:
            out[f"{rgb}.upsample.kernel"] = torch.ones(4, 4)
    out["input.input"] = G.synthesis.blocks[0].const.detach()[None]
    for i, fc in enumerate(G.mapping.layers):
        out[f"style.{i + 1}.weight"], out[f"style.{i + 1}.bias"] = fc.weight.detach(), fc.bias.detach()
    return out


def rosinality_discriminator_keys(D) -> dict[str, torch.Tensor]:
    s = D.state_dict()
    out = {"convs.0.0.weight": s["blocks.0.fromrgb.weight"], "convs.0.1.bias": s["blocks.0.fromrgb.bias"],
           "final_conv.0.weight": s["conv.weight"], "final_conv.1.bias": s["conv.bias"],
           "final_linear.0.weight": s["fc.weight"], "final_linear.0.bias": s["fc.bias"],
           "final_linear.1.weight": s["out.weight"], "final_linear.1.bias": s["out.bias"]}  # fmt: skip
    for j in range(len(D.blocks)):
        i = j + 1
        blocks = {"conv1.0.weight": "conv0.weight", "conv1.1.bias": "conv0.bias",
                  "skip.1.weight": "skip.weight",
                  "conv2.1.weight": "conv1.weight", "conv2.2.bias": "conv1.bias"}  # fmt: skip
        out |= {f"convs.{i}.{theirs}": s[f"blocks.{j}.{ours}"] for theirs, ours in blocks.items()}
        out |= {f"convs.{i}.conv2.0.kernel": torch.ones(4, 4), f"convs.{i}.skip.0.kernel": torch.ones(4, 4)}
    return out


def test_a_rosinality_checkpoint_gives_the_same_images_and_logits(tmp_path):
    config = network()
    G, D = known_networks(config, seed=1)
    G_ema, _ = known_networks(config, seed=2)
    path = tmp_path / "550000.pkl"  # a zip torch file, whatever its name
    torch.save({"g": rosinality_generator_keys(G), "d": rosinality_discriminator_keys(D),
                "g_ema": rosinality_generator_keys(G_ema), "g_optim": {}, "d_optim": {},
                "args": argparse.Namespace(size=16, channel_multiplier=2, n_mlp=2)}, path)  # fmt: skip
    trainer = fake_trainer(config)
    report = initialise(trainer, path, [])
    assert report.kind == "rosinality checkpoint" and report.fresh == []
    assert (images(trainer.G) - images(G)).abs().max() < 1e-5
    assert (images(trainer.G_ema) - images(G_ema)).abs().max() < 1e-5
    assert (logits(trainer.D) - logits(D)).abs().max() < 1e-5
    # no tracked average there: estimated from 10k z, close to the mean of mapping(z) over other z
    z = torch.randn(4000, 32, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        mean = G_ema.mapping(z, None)[:, 0].mean(dim=0)
        spread = G_ema.mapping(z, None)[:, 0].std(dim=0).mean()
    assert (trainer.G_ema.mapping.w_avg - mean).abs().max() < 0.1 * spread
    assert any("estimated" in note for note in report.notes)


# ------------------------------------------------------------------------------ curate snapshots


def test_a_curate_snapshot_carries_label_rows_by_name(tmp_path):
    G, D = known_networks(network(c_dim=3))
    path = save_snapshot(tmp_path / "snapshot-000100.pt", {
        "trainer": {"G": G.state_dict(), "D": D.state_dict(), "G_ema": G.state_dict()},
        "network": network(c_dim=3).as_dict(), "label_names": ["a", "b", "c"]})  # fmt: skip
    trainer = fake_trainer(network(c_dim=3), labels=3)
    fresh_row = trainer.G.mapping.embed[1].detach().clone()
    report = initialise(trainer, path, ["c", "x", "a"])
    assert report.kind == "curate snapshot"
    assert report.labels_carried == ["c", "a"] and report.labels_fresh == ["x"]
    embed = trainer.G.mapping.embed.detach()
    assert torch.equal(embed[0], G.mapping.embed[2]) and torch.equal(embed[2], G.mapping.embed[0])
    assert torch.equal(embed[1], fresh_row)
    assert torch.equal(trainer.D.out.weight[0], D.out.weight[2]) and torch.equal(
        trainer.D.out.bias[2], D.out.bias[0]
    )
    # a label both know draws the same images and gets the same scores
    a_here, a_there = torch.eye(3)[[2] * 4], torch.eye(3)[[0] * 4]
    assert (images(trainer.G_ema, a_here) - images(G, a_there)).abs().max() < 1e-5
    assert (logits(trainer.D, a_here) - logits(D, a_there)).abs().max() < 1e-5
    assert "rows of x" in report.summary()


def test_end_to_end_a_new_run_starts_from_the_file_and_a_resumed_one_ignores_it(colour_run, tmp_path):
    from PIL import Image

    from curate.summaries import train_summary
    from tests.gan import tiny_options
    from train.snapshot import latest_snapshot, load_snapshot
    from train.stage import train_stylegan

    source = latest_snapshot(colour_run)
    data, out = colour_run.parent / "data", tmp_path / "run"
    report = train_stylegan(tiny_options(data, out, kimg=0.016, init=source))
    assert report.initialised.kind == "curate snapshot"
    assert report.initialised.labels_carried == [f"label_{i}" for i in range(4)]
    assert report.initialised.fresh == []
    # the first grid is drawn by the file's G_ema: the same picture as that snapshot's own grid
    source_grid = colour_run / f"fakes-{source.stem.removeprefix('snapshot-')}.png"
    assert np.array_equal(np.asarray(Image.open(out / "fakes-init.png")), np.asarray(Image.open(source_grid)))
    assert "started from curate snapshot" in train_summary(report).lines[1]
    first = load_snapshot(latest_snapshot(out))["trainer"]["G_ema"]
    before = load_snapshot(source)["trainer"]["G_ema"]
    assert max((first[k].float() - before[k].float()).abs().max().item() for k in first) < 0.05
    (tmp_path / "broken.pkl").write_bytes(b"not a pickle")  # read it and the run would fail
    again = train_stylegan(tiny_options(data, out, kimg=0.032, init=tmp_path / "broken.pkl"))
    assert again.resumed_from == 16 and again.initialised is None


def test_a_converted_rosinality_checkpoint_in_the_old_torch_format_keeps_its_latent_average(tmp_path):
    # convert_weight.py's output: g_ema and latent_avg only; torch.save's pre-zip format
    G_ema, _ = known_networks(network(), seed=2)
    path = tmp_path / "stylegan2-ffhq-config-f.pt"
    latent_avg = torch.randn(32)
    torch.save(
        {"g_ema": rosinality_generator_keys(G_ema), "latent_avg": latent_avg},
        path,
        _use_new_zipfile_serialization=False,
    )
    trainer = fake_trainer(network())
    report = initialise(trainer, path, [])
    assert torch.equal(trainer.G_ema.mapping.w_avg, latent_avg) and torch.equal(
        trainer.G.mapping.w_avg, latent_avg
    )
    assert (images(trainer.G) - images(G_ema)).abs().max() < 1e-5
    assert "D (the file has none)" in report.fresh
