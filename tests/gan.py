"""A toy dataset whose label decides the image, and tiny training options, for the GAN tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# four labels, four flat colours (RGB in [−1, 1]): what a conditional G must learn to draw
COLOURS = np.array([[1, -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, -1]], dtype=np.float32)


def colour_set(folder: Path, count: int = 64, resolution: int = 16, seed: int = 0) -> Path:
    """NVlabs' folder layout: flat-colour PNGs with a little noise, and dataset.json with one-hot labels."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    labels = []
    for index in range(count):
        label = index % len(COLOURS)
        pixels = COLOURS[label][:, None, None] + 0.1 * rng.standard_normal((3, resolution, resolution))
        image = ((np.clip(pixels, -1, 1) + 1) * 127.5).round().astype(np.uint8).transpose(1, 2, 0)
        name = f"{index // 1000:05d}/img{index:08d}.png"
        (folder / name).parent.mkdir(exist_ok=True)
        Image.fromarray(image).save(folder / name)
        labels.append([name, np.eye(len(COLOURS))[label].tolist()])
    (folder / "dataset.json").write_text(json.dumps({"labels": labels}), encoding="utf-8")
    return folder


def tiny_options(data: Path, out: Path, **overrides):
    """A StyleGAN2 small enough to train for a minute on two CPU cores."""
    from train.runs import TrainOptions

    settings = dict(
        data=data,
        out=out,
        cfg="cpu",
        batch=16,
        channel_base=256,
        channel_max=32,
        z_dim=32,
        mapping_layers=2,
        aug="none",
        tick_kimg=0.256,
        snap_ticks=4,
        workers=0,
        device="cpu",
        progress=False,
    )
    settings.update(overrides)
    return TrainOptions(**settings)


def colour_scores(G, count: int = 200, seed: int = 1) -> tuple[float, float]:
    """(mean distance of the images' mean colour to their label's colour, share nearest to it)."""
    import torch

    colours = torch.tensor(COLOURS)
    with torch.no_grad():
        z = torch.randn(count, G.z_dim, generator=torch.Generator().manual_seed(seed))
        labels = torch.arange(count) % len(COLOURS)
        images = G(z, torch.eye(len(COLOURS))[labels], noise_mode="const")
        mean = images.mean(dim=[2, 3])
        distance = (mean - colours[labels]).norm(dim=1).mean().item()
        accuracy = (torch.cdist(mean, colours).argmin(dim=1) == labels).float().mean().item()
    return distance, accuracy


def random_inception(path: Path) -> Path:
    """pytorch-fid's FID Inception with random (He) weights, saved as its state dict like the real file."""
    import sys

    import pytorch_fid.inception as library
    import torch

    def own_state(url, *args, **kwargs):
        return sys._getframe(1).f_locals["inception"].state_dict()  # fid_inception_v3's fresh model

    original, library.load_state_dict_from_url = library.load_state_dict_from_url, own_state
    try:
        torch.manual_seed(0)
        model = library.fid_inception_v3()
    finally:
        library.load_state_dict_from_url = original
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):  # the default init's features vanish (~1e-8)
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path
