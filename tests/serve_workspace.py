"""A small real workspace for the review app: originals, crops, tags, crawl rows, embeddings, a filter run.

Forty faces: 24 near one centre of the embedding (good), 15 elsewhere (bad) and an exact copy of good0
(the same original, so the same crop: a near-duplicate in pixels too). Built in well under a second.
"""

from __future__ import annotations

import zlib

import numpy as np

from curate.manifest import CRAWL, CROP, EMBED, TAG, now_utc, write_part
from curate.workspace import Workspace

GOOD, BAD = 24, 15
NASTY_LABEL = '<img src=x onerror="document.title=`pwned`">'  # shown as text, never as markup
SEEDS = {"good": ["good1-0", "good2-0", "good3-0"], "bad": ["bad1-0", "bad2-0"]}


def _cluster(centre: np.ndarray, count: int, spread: float, rng) -> np.ndarray:
    centre = centre / np.linalg.norm(centre)
    points = centre + spread * rng.normal(size=(count, len(centre)))
    return points / np.linalg.norm(points, axis=1, keepdims=True)


def build_workspace(root) -> Workspace:
    """The workspace, filtered once with SEEDS (needs faiss)."""
    from PIL import Image

    from embed.filter import FilterOptions, filter_faces

    rng = np.random.default_rng(7)
    dim = 16
    vectors = np.concatenate(
        [_cluster(rng.normal(size=dim), GOOD, 0.2, rng), _cluster(rng.normal(size=dim), BAD, 0.3, rng)]
    )
    names = [f"good{i}" for i in range(GOOD)] + [f"bad{i}" for i in range(BAD)]
    vectors = np.concatenate([vectors, vectors[:1]])
    names.append("copy0")
    ws = Workspace.open(root)
    stamp = now_utc()
    crops, crawl, tags, embeds = [], [], [], []
    for n, (name, vector) in enumerate(zip(names, vectors, strict=True)):
        source = "good0" if name == "copy0" else name
        seed = zlib.crc32(source.encode())
        pixels = np.random.default_rng(seed).integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
        original = Image.fromarray(pixels).resize((160, 120), Image.NEAREST)
        original_rel = f"images/{name[:2]}/{name}.png"
        crop_rel = f"crops/{name[:2]}/{name}-0.png"
        crop = original.crop((40, 20, 100, 80)).resize((64, 64))
        for rel, image in ((original_rel, original), (crop_rel, crop)):
            (ws.root / rel).parent.mkdir(parents=True, exist_ok=True)
            image.save(ws.root / rel)
        face = f"{name}-0"
        crops.append(
            {"face_id": face, "image_id": name, "status": "ok", "face_index": 0, "detector": "cascade",
             "score": 1.0, "face_x0": 45.0, "face_y0": 25.0, "face_x1": 95.0, "face_y1": 75.0,
             "crop_x0": 40, "crop_y0": 20, "crop_x1": 100, "crop_y1": 80, "padded": False, "path": crop_rel,
             "size": 64, "source_path": original_rel, "image_width": 160, "image_height": 120,
             "cropped_at": stamp}
        )  # fmt: skip
        crawl.append(
            {"post_id": f"safebooru:{1000 + n}", "source": "safebooru", "source_id": str(1000 + n),
             "status": "ok", "image_id": name, "path": original_rel,
             "url": f"https://safebooru.example/images/{name}.png", "fetched_at": stamp}
        )  # fmt: skip
        labels = ["1girl", "solo"] if name.startswith("good") else ["1boy"]
        labels += ["smile"] if n % 3 == 0 else []
        labels += [NASTY_LABEL] if name == "bad9" else []
        tags.append({"face_id": face, "image_id": name, "status": "ok", "labels": labels, "tagged_at": stamp})
        embeds.append(
            {"face_id": face, "image_id": name, "status": "ok", "model": "test", "embedding": vector.tolist(),
             "embedded_at": stamp}
        )  # fmt: skip
    # an image the crop stage found no face in: no face of the table
    crops.append({"face_id": "noface", "image_id": "noface", "status": "skipped", "error": "no_face",
                  "cropped_at": stamp})  # fmt: skip
    for stage, rows in ((CRAWL, crawl), (CROP, crops), (TAG, tags), (EMBED, embeds)):
        write_part(ws, stage, rows)
    filter_faces(ws.root, FilterOptions(good=SEEDS["good"], bad=SEEDS["bad"], review=True))
    return ws


def tree(ws: Workspace) -> dict[str, int]:
    """Every file under the workspace with its size: what a request must not change."""
    return {p.relative_to(ws.root).as_posix(): p.stat().st_size for p in ws.root.rglob("*") if p.is_file()}
