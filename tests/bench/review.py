"""Benchmark the review loop on the fixture mix: what people's answers on the review page are worth.

The mix (tests/mixes.py) is embedded once (instance discrimination trained here, or `--features`). An
oracle answers from the mix's truth through `curate.review.decide`, which writes the review manifest
as the page does: first 10 good and 10 bad seeds (round 0), then rounds of 20 answers, each followed
by `curate filter` with the reviewed faces as seeds. Six arms answer in a workspace copy each: the
vote, the learned or the fine-tuned score (`--score`; `--quick` runs finetuned/queue only), and the
next 20 faces taken from `review_queue` (the faces the page shows first: nearest the threshold) or at
random among the undecided ones.

After each round it measures the kept set over every face: a face a person answered counts as the
person decided it (good kept, bad dropped), as the export would take it; a duplicate that dedup
dropped counts as chosen (as in tests/bench/filter.py). `open_*` are the same figures over the faces
nobody answered. The target: precision ≥ 0.95 at recall ≥ 0.90 within 60 answers.

With `--tagger MODEL` it also runs the same arms on the tagger's pooled features (`curate embed
--features tagger:MODEL`) and on instance discrimination started from the tagger's backbone
(`--init tagger:MODEL`), reported under `beside`.

Run from the repo root:
``python tests/bench/review.py [--quick] [--rounds N] [--features timm:NAME] [--tagger MODEL]
[--local-factor F]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path[:] = [p for p in sys.path if Path(p or os.curdir).resolve() != HERE]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from curate.manifest import FILTER, read_stage  # noqa: E402
from curate.metrics import roc_auc  # noqa: E402
from curate.review import decide, decisions, review_queue  # noqa: E402
from curate.workspace import Workspace  # noqa: E402
from embed import threshold  # noqa: E402
from embed.filter import FilterOptions, filter_faces  # noqa: E402
from embed.stage import EmbedOptions, embed_faces  # noqa: E402
from embed.train import EmbedTrainOptions  # noqa: E402
from tests.fakebooru import fixture_dir  # noqa: E402
from tests.mixes import Mix, fixture_mix  # noqa: E402

SEEDS = 10  # good and bad each, before any round
BATCH = 20  # answers per round: the faces the page shows first
TARGET = {"precision": 0.95, "recall": 0.90, "answers": 60}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny network, 5 epochs, 2 rounds (smoke)")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=4, help="rounds of 20 answers after the seeds")
    parser.add_argument("--features", default=None, help="EmbedOptions.features, e.g. timm:<name>")
    parser.add_argument(
        "--tagger",
        default=None,
        help="a WD tagger (hub id or folder): also run its features and instance discrimination from it",
    )
    parser.add_argument("--size", type=int, default=64, help="input side (`curate embed` uses 128)")
    parser.add_argument("--dim", type=int, default=32, help="embedding width (`curate embed` uses 128)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--scores", default="vote,learned,finetuned", help="the filter scores to run arms of, comma-separated"
    )
    parser.add_argument(
        "--local-factor", type=float, default=None, help="the learned cut's LOCAL_FACTOR (embed/threshold.py)"
    )
    args = parser.parse_args()
    if args.local_factor is not None:  # the cut's one constant, to measure it on this machine's embeddings
        threshold.LOCAL_FACTOR = args.local_factor
    backbone, epochs, size = ("test_resnet", 5, 48) if args.quick else (args.backbone, args.epochs, args.size)
    rounds = min(args.rounds, 2) if args.quick else args.rounds
    training = EmbedTrainOptions(
        backbone=backbone, dim=args.dim, size=size, epochs=epochs, lr=0.1, batch_size=32, device="cpu",
        seed=args.seed, progress=False,
    )  # fmt: skip
    embeddings = {"main": EmbedOptions(train=training, features=args.features, progress=False)}
    if args.tagger:  # the tagger's features, and instance discrimination started from its backbone
        embeddings["tagger_features"] = EmbedOptions(features=f"tagger:{args.tagger}", progress=False)
        init = dataclasses.replace(training, init=f"tagger:{args.tagger}", lr=0.01)
        embeddings["tagger_init"] = EmbedOptions(train=init, progress=False)
    with tempfile.TemporaryDirectory(prefix="curate-bench-review-") as tmp:
        mix = fixture_mix(fixture_dir(), Path(tmp) / "mix", copies=10, patches=40)
        results = {
            name: bench_embedding(mix, Path(tmp) / name, options, rounds, args)
            for name, options in embeddings.items()
        }
    main_result = results.pop("main")
    if not args.features:
        main_result["embedding"] = f"instdisc:{backbone}@{size}, {args.dim}-d, {epochs} epochs"
    figures = {
        "bench": "review",
        "faces": len(set(mix.faces) | set(mix.copies)),
        "bad": len(mix.bad),
        **main_result,
        "target": TARGET,
        "beside": results,  # the tagger's embeddings, each with the same arms, when --tagger is given
    }
    print(json.dumps(figures))


def bench_embedding(mix: Mix, folder: Path, options: EmbedOptions, rounds: int, args) -> dict:
    """Embed a copy of the mix with `options`, then run every arm on a copy of that each."""
    shutil.copytree(mix.ws.root, folder / "ws", symlinks=True)
    start = time.perf_counter()
    embedded = embed_faces(folder / "ws", options)
    embed_s = time.perf_counter() - start
    picks = [(score, pick) for score in args.scores.split(",") for pick in ("queue", "random")]
    if args.quick and ("finetuned", "random") in picks:  # one fine-tuned arm keeps the smoke run short
        picks.remove(("finetuned", "random"))
    if not embedded.model.startswith("instdisc:"):  # pretrained features: no network of ours to tune
        picks = [(score, pick) for score, pick in picks if score != "finetuned"]
    arms = {}
    for score, pick in picks:
        copy = folder / f"{score}-{pick}"
        shutil.copytree(folder / "ws", copy, symlinks=True)
        arms[f"{score}/{pick}"] = run_arm(mix, Workspace.open(copy), score, pick, rounds, args.seed)
    return {
        "embedding": embedded.model,
        "embed_seconds": round(embed_s, 1),
        "arms": arms,
        "target_reached": {name: reached(arm) for name, arm in arms.items()},
    }


def run_arm(mix: Mix, ws: Workspace, score: str, pick: str, rounds: int, seed: int) -> list[dict]:
    """Seeds, then `rounds` of 20 answers picked by `pick`; the figures after each filter run."""
    good = set(mix.faces) | set(mix.copies)
    noise = [f for f in mix.bad if f.startswith("noise")]
    patches = [f for f in mix.bad if f.startswith("patch")]
    # the seeds of tests/bench/filter.py: round 0 is that benchmark's setting
    first = sorted(mix.faces)[:SEEDS] + noise[: SEEDS // 2] + patches[: SEEDS // 2]
    rng = random.Random(seed)
    # the filter aims at the target precision: its threshold is chosen for it on the seeds
    options = FilterOptions(score=score, target_precision=TARGET["precision"])
    figures, batch = [], first
    for round_ in range(rounds + 1):
        image = {r["face_id"]: r["image_id"] for r in read_stage(ws, FILTER, ["image_id"]).to_pylist()}
        for face in batch:  # the oracle: the mix's truth, answered as the page does
            decide(ws, face, image.get(face, face.rsplit("-", 1)[0]), "good" if face in good else "bad")
        start = time.perf_counter()
        report = filter_faces(ws.root, options)
        seconds = time.perf_counter() - start
        figures.append(
            {"round": round_, **measure(ws, good), "method": report.score, "filter_s": round(seconds, 2)}
        )
        if pick == "queue":
            batch = review_queue(ws, BATCH)
        else:
            decided = set(decisions(ws))
            undecided = sorted(r["face_id"] for r in read_stage(ws, FILTER, ["seed"]).to_pylist())
            undecided = [f for f in undecided if f not in decided]
            batch = rng.sample(undecided, min(BATCH, len(undecided)))
    return figures


def measure(ws: Workspace, good: set[str]) -> dict:
    """Precision and recall of the kept set over all faces, and over the faces nobody answered."""
    rows = read_stage(ws, FILTER, ["seed", "keep", "error", "score"]).to_pylist()
    params = _params(ws)
    # a duplicate passed the score (or was a good seed) before dedup dropped it: it counts as chosen
    chosen = {r["face_id"] for r in rows if r["keep"] or r["error"] == "duplicate"}
    answered = {r["face_id"] for r in rows if r["seed"] is not None}
    everyone = {r["face_id"] for r in rows}
    out = {"answers": len(answered), "kept": len(chosen)}
    for prefix, pool in (("", everyone), ("open_", everyone - answered)):
        picked = chosen & pool
        true = len(picked & good)
        out[f"{prefix}precision"] = round(true / len(picked), 3) if picked else None
        out[f"{prefix}recall"] = round(true / len(pool & good), 3) if pool & good else None
    # threshold-free: how well the score ranks the open faces, and the best cut the score allows
    open_rows = [r for r in rows if r["seed"] is None and r["score"] is not None]
    scores = np.array([r["score"] for r in open_rows])
    truth = np.array([r["face_id"] in good for r in open_rows])
    out["open_auc"] = round(roc_auc(scores, truth), 3) if len(set(truth)) == 2 else None
    out["best_precision_at_recall"] = best_precision(rows, good, TARGET["recall"])
    out["threshold"] = round(params["threshold"], 4)
    out["estimated_precision"] = params["estimated_precision"]
    return out


def best_precision(rows: list[dict], good: set[str], recall: float) -> float | None:
    """The kept set's precision at the best cut of the score that reaches `recall` (answered faces as
    decided): what a perfect threshold would give, so the score's worth shows apart from the threshold's."""
    seeded = [r for r in rows if r["seed"] == "good"]
    ranked = sorted(
        (r for r in rows if r["seed"] is None and r["score"] is not None), key=lambda r: -r["score"]
    )
    true = np.cumsum([r["face_id"] in good for r in ranked]) + sum(r["face_id"] in good for r in seeded)
    kept = np.arange(1, len(ranked) + 1) + len(seeded)
    enough = true >= recall * len(good & {r["face_id"] for r in rows})
    return round(float((true / kept)[enough].max()), 3) if enough.any() else None


def _params(ws: Workspace) -> dict:
    from curate.manifest import part_files, part_metadata

    return part_metadata(part_files(ws, FILTER)[-1])["params"]


def reached(arm: list[dict]) -> int | None:
    """The fewest answers after which the kept set met the target (None: not within the rounds run)."""
    for step in arm:
        if (step["precision"] or 0) >= TARGET["precision"] and (step["recall"] or 0) >= TARGET["recall"]:
            return step["answers"]
    return None


if __name__ == "__main__":
    main()
