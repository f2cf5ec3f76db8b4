"""Tiny taggers in the real WD on-disk format, with outputs fixed by their head's bias."""

from __future__ import annotations

import csv
import math
from pathlib import Path

# (name, category, logit): the head's weights are zero, so every image gets sigmoid(logit) for each tag
TAGS = (
    ("general", 9, 2.0),
    ("sensitive", 9, -1.0),
    ("questionable", 9, -4.0),
    ("explicit", 9, -6.0),
    ("1girl", 0, 5.0),
    ("blue_eyes", 0, -0.2),  # 0.450: above the 0.35 general threshold
    ("smile", 0, -1.0),  # 0.269: below it, above the 0.05 floor
    ("long_hair", 0, -5.0),  # 0.0067: below the floor
    ("hatsune_miku", 4, 2.0),  # 0.881: above the 0.85 character threshold
    ("saber", 4, 1.0),  # 0.731: below it
)
MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def probability(name: str) -> float:
    logit = next(value for tag, _, value in TAGS if tag == name)
    return 1 / (1 + math.exp(-logit))


def make_model(size: int = 64, *, fixed: bool = True, seed: int = 0, tags=TAGS):
    """A random tiny ViT with one output per tag; `fixed` zeroes its head so the bias alone decides."""
    import timm
    import torch

    torch.manual_seed(seed)
    model = timm.create_model("test_vit", num_classes=len(tags), img_size=size)
    if fixed:
        with torch.no_grad():
            model.head.weight.zero_()
            model.head.bias.copy_(torch.tensor([logit for _, _, logit in tags]))
    return model.eval()


def save_wd_folder(model, folder: Path, size: int = 64, tags=TAGS, *, safe: bool | str = True) -> Path:
    """Write `model` as config.json + model.safetensors + selected_tags.csv, as the WD taggers ship.

    `safe` is save_for_hf's `safe_serialization`: False writes pytorch_model.bin instead of
    model.safetensors (its default), "both" writes both.
    """
    from timm.models import save_for_hf

    folder.mkdir(parents=True, exist_ok=True)
    data = {"mean": MEAN, "std": STD, "input_size": (3, size, size), "interpolation": "bicubic"}
    save_for_hf(model, str(folder), model_args={"img_size": size}, safe_serialization=safe, data_config=data)
    with open(folder / "selected_tags.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["tag_id", "name", "category", "count"])
        for index, (name, category, _) in enumerate(tags):
            writer.writerow([1000 + index, name, category, 100 - index])
    return folder
