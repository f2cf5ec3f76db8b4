"""Benchmark `curate filter` on the fixture mix: the filter's precision and recall at its chosen threshold.

The mix (tests/mixes.py): the cascade's face crops of the illustrations are the good faces; square
crops of the noise fixtures and face-sized patches of the illustrations away from any face are the
bad ones; re-encoded and downsized copies of 10 illustrations add near-duplicates. Instance
discrimination is trained on all of them, then 10 good and 10 bad seeds choose the rest. Prints the
input's precision, the chosen set's precision and recall, how many copies dedup found, and how alike
faces are to their nearest neighbour (near 1: the embedding has not separated them).

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

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path[:] = [p for p in sys.path if Path(p or os.curdir).resolve() != HERE]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from curate.manifest import FILTER, read_stage  # noqa: E402
from curate.metrics import roc_auc  # noqa: E402
from embed.filter import FilterOptions, filter_faces  # noqa: E402
from embed.stage import EmbedOptions, embed_faces  # noqa: E402
from embed.train import EmbedTrainOptions  # noqa: E402
from tests.fakebooru import fixture_dir  # noqa: E402
from tests.mixes import fixture_mix  # noqa: E402

SEEDS = 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny network, 5 epochs (a smoke run)")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--augment", default="light", choices=("light", "paper"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    backbone, epochs, size = ("test_resnet", 5, 48) if args.quick else (args.backbone, args.epochs, 64)
    with tempfile.TemporaryDirectory(prefix="curate-bench-filter-") as tmp:
        mix = fixture_mix(fixture_dir(), Path(tmp), copies=10, patches=40)
        start = time.perf_counter()
        training = EmbedTrainOptions(
            backbone=backbone, dim=32, size=size, epochs=epochs, lr=0.1, batch_size=32, device="cpu",
            augment=args.augment, seed=args.seed, progress=False,
        )  # fmt: skip
        embedded = embed_faces(mix.ws.root, EmbedOptions(train=training, progress=False))
        embed_s = time.perf_counter() - start
        noise = [f for f in mix.bad if f.startswith("noise")]
        patches = [f for f in mix.bad if f.startswith("patch")]
        seeds = FilterOptions(good=sorted(mix.faces)[:SEEDS], bad=noise[: SEEDS // 2] + patches[: SEEDS // 2])
        report = filter_faces(mix.ws.root, seeds)
        rows = {r["face_id"]: r for r in read_stage(mix.ws, FILTER).to_pylist()}
    faces = set(mix.faces) | set(mix.copies)
    open_rows = [f for f, r in rows.items() if r["seed"] is None]
    # a duplicate passed the vote before dedup dropped it: it counts as chosen
    chosen = [f for f in open_rows if rows[f]["keep"] or rows[f]["error"] == "duplicate"]
    true_chosen = sum(f in faces for f in chosen)
    found = sum(
        rows[c]["dup_group"] is not None and rows[c]["dup_group"] == rows[o]["dup_group"]
        for c, o in mix.copies.items()
    )
    figures = {
        "bench": "filter",
        "faces": len(faces),
        "bad": len(mix.bad),
        "seeds": {"good": SEEDS, "bad": SEEDS},
        "embedding": f"instdisc:{backbone}@{size}, {epochs} epochs, {args.augment} augmentation",
        "embed_seconds": round(embed_s, 1),
        "final_loss": round(embedded.training.losses[-1], 3),
        "uniform_loss": round(math.log(len(rows)), 3),
        "nearest_similarity": round(report.nearest_similarity, 4),
        "threshold": round(report.threshold, 4),
        "target_met": report.target_met,
        "input_precision": round(sum(f in faces for f in open_rows) / len(open_rows), 3),
        "chosen": len(chosen),
        "chosen_precision": round(true_chosen / len(chosen), 3) if chosen else None,
        "chosen_recall": round(true_chosen / sum(f in faces for f in open_rows), 3),
        "score_auc": round(
            roc_auc(
                np.array([rows[f]["score"] for f in open_rows]), np.array([f in faces for f in open_rows])
            ),
            3,
        ),
        "copies_found": f"{found}/{len(mix.copies)}",
        "duplicates_dropped": report.reasons["duplicate"],
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
