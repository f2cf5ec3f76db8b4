"""Benchmark `curate filter` on the fixture mix: the filter's precision and recall at its chosen threshold.

The cascade's face crops of the fixture illustrations are the good faces; square crops of the noise
fixtures (animals, scenery, photos, text pages) are the bad ones. Instance discrimination is trained on
all of them, then 10 good and 10 bad seeds choose the rest. Prints the input's precision, the kept
set's precision and recall, and how alike faces are to their nearest neighbour (near 1: the embedding
has not separated them, and the figures say little).

Run from the repo root: ``python tests/bench/filter.py [--quick] [--backbone NAME] [--epochs N]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path[:] = [p for p in sys.path if Path(p or os.curdir).resolve() != HERE]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from crawl.local import ingest_folder  # noqa: E402
from curate.manifest import CROP, FILTER, OK, now_utc, read_stage, write_part  # noqa: E402
from curate.workspace import Workspace  # noqa: E402
from detect.crop import CropOptions, DetectorSpec, crop_images  # noqa: E402
from embed.filter import FilterOptions, filter_faces  # noqa: E402
from embed.stage import EmbedOptions, embed_faces  # noqa: E402
from embed.train import EmbedTrainOptions  # noqa: E402
from tests.fakebooru import fixture_dir  # noqa: E402

SEEDS = 10


def mixed_workspace(root: Path) -> tuple[Workspace, list[str], list[str]]:
    """Face crops of the illustrations, and centre squares of the noise images as crops too."""
    from PIL import Image

    fixtures = fixture_dir()
    ws = Workspace.open(root / "ws")
    ingest_folder(fixtures / "images" / "faces", ws.root, progress=False)
    spec = DetectorSpec(model=fixtures / "models" / "lbpcascade_animeface.xml")
    crop_images(ws.root, CropOptions(detector=spec, progress=False))
    faces = [r["face_id"] for r in read_stage(ws, CROP).to_pylist() if r["status"] == OK]
    noise, rows = [], []
    for index, path in enumerate(sorted((fixtures / "images" / "noise").iterdir())):
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
        except (OSError, ValueError):
            continue  # the corrupt fixtures
        side = min(image.size)
        if side < 64:
            continue
        left, top = (image.width - side) // 2, (image.height - side) // 2
        out = ws.crops / "zz" / f"noise{index}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        image.crop((left, top, left + side, top + side)).resize((256, 256)).save(out)
        noise.append(f"noise{index}-0")
        rows.append(
            {"face_id": noise[-1], "image_id": f"noise{index}", "status": OK, "path": ws.relative(out),
             "cropped_at": now_utc()}
        )  # fmt: skip
    write_part(ws, CROP, rows)
    return ws, faces, noise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny network, 5 epochs (a smoke run)")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    backbone, epochs, size = ("test_resnet", 5, 48) if args.quick else (args.backbone, args.epochs, 64)
    with tempfile.TemporaryDirectory(prefix="curate-bench-filter-") as tmp:
        ws, faces, noise = mixed_workspace(Path(tmp))
        start = time.perf_counter()
        training = EmbedTrainOptions(
            backbone=backbone,
            dim=32,
            size=size,
            epochs=epochs,
            lr=0.1,
            batch_size=32,
            device="cpu",
            progress=False,
        )
        embedded = embed_faces(ws.root, EmbedOptions(train=training, progress=False))
        embed_s = time.perf_counter() - start
        report = filter_faces(ws.root, FilterOptions(good=faces[:SEEDS], bad=noise[:SEEDS]))
        kept = [r["face_id"] for r in read_stage(ws, FILTER).to_pylist() if r["keep"]]
    true_kept = sum(face in set(faces) for face in kept)
    figures = {
        "bench": "filter",
        "faces": len(faces),
        "noise": len(noise),
        "seeds": {"good": SEEDS, "bad": SEEDS},
        "embedding": f"instdisc:{backbone}@{size}, {epochs} epochs",
        "embed_seconds": round(embed_s, 1),
        "final_loss": round(embedded.training.losses[-1], 3),
        "uniform_loss": round(math.log(len(faces) + len(noise)), 3),
        "nearest_similarity": round(report.nearest_similarity, 4),
        "threshold": round(report.threshold, 4),
        "input_precision": round(len(faces) / (len(faces) + len(noise)), 3),
        "kept": len(kept),
        "kept_precision": round(true_kept / len(kept), 3) if kept else None,
        "kept_recall": round(true_kept / len(faces), 3),
        "duplicates_dropped": report.reasons["duplicate"],
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
