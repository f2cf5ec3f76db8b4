"""The generate API: a run's vocabulary, directions and snapshots, and generation through one worker.

POST /api/generate and /api/mix wait on the worker's future through asyncio, so the event loop (and
every other route) keeps answering while the generator works; the PNGs are written off the loop too.
Each result is a history entry in RUN/playground/ whose `request` posted again makes the same pixels.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from curate.errors import InvalidArgument
from curate.serve import playground
from curate.serve.playground import Catalog, NotFound, Run
from curate.serve.worker import GROUPS, MAX_STRENGTH, Sample, Worker, style_groups

router = APIRouter(prefix="/api")

MAX_N = 64  # images per request
SEED_MAX = 2**31 - 1
Name = Annotated[str, Field(min_length=1, max_length=100)]
Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]
Strength = Annotated[float, Field(ge=-MAX_STRENGTH, le=MAX_STRENGTH)]


class GenerateBody(BaseModel):
    """mode `noise`: one label set, an image per seed. mode `tags`: a row per label set in `rows` (each
    with `labels` added), the same seeds in every row."""

    model_config = ConfigDict(extra="forbid")
    run: Annotated[str, Field(max_length=128)] | None = None
    snapshot: Annotated[str, Field(max_length=64)] | None = None
    mode: Literal["noise", "tags"] = "noise"
    labels: Annotated[list[Name], Field(max_length=256)] = []
    rows: Annotated[list[Annotated[list[Name], Field(max_length=256)]], Field(max_length=MAX_N)] | None = None
    seeds: Annotated[list[Seed], Field(min_length=1, max_length=MAX_N)] | None = None
    seed: Seed = 0
    count: Annotated[int, Field(ge=1, le=MAX_N)] = 8
    truncation: Annotated[float, Field(ge=0, le=2)] = 0.7
    truncation_cutoff: Annotated[int, Field(ge=1, le=64)] | None = None
    edits: Annotated[dict[Name, Strength], Field(max_length=64)] = {}
    noise_mode: Literal["const", "random", "none"] = "const"


class MixBody(BaseModel):
    """Style mixing of two images of one entry: A, B, then A with B's coarse, middle and fine styles."""

    model_config = ConfigDict(extra="forbid")
    entry: Annotated[str, Field(max_length=64)]
    a: Annotated[int, Field(ge=0, le=999)]
    b: Annotated[int, Field(ge=0, le=999)]
    groups: Annotated[list[Literal["coarse", "middle", "fine"]], Field(min_length=1, max_length=3)] | None = (
        None
    )


def open(app) -> None:
    options = app.state.options
    app.state.catalog = Catalog(app.state.workspace.runs, options.run)
    app.state.generator = Worker(options.device, options.batch).start()


def close(app) -> None:
    app.state.generator.stop()


def _catalog(request: Request) -> Catalog:
    return request.app.state.catalog


@router.get("/runs")
async def runs(request: Request) -> dict[str, Any]:
    """The runs the page may use and which one is chosen by default."""
    from train.snapshot import list_snapshots

    catalog = _catalog(request)

    def listing() -> dict[str, Any]:
        found = catalog.runs()
        listed = [
            {"name": r.name, "snapshots": [p.name for p in list_snapshots(r.path)]} for r in found.values()
        ]
        return {"runs": listed, "default": catalog.default(), "max_n": MAX_N}

    return await asyncio.to_thread(listing)


@router.get("/runs/{run}/info")
async def info(request: Request, run: str, snapshot: Annotated[str | None, Query(max_length=64)] = None):
    """A run's snapshot (loaded into the worker): labels, resolution, style groups, directions."""
    from train.snapshot import list_snapshots, snapshot_nimg

    catalog = _catalog(request)
    found = catalog.run(run)
    path = catalog.snapshot(found, snapshot)
    described = await asyncio.wrap_future(request.app.state.generator.describe(found.path, path))
    snapshots = [{"name": p.name, "kimg": (snapshot_nimg(p) or 0) / 1000} for p in list_snapshots(found.path)]
    return {"run": found.name, **described, "snapshots": snapshots, "max_n": MAX_N}


@router.post("/generate")
async def generate(request: Request, body: GenerateBody) -> dict[str, Any]:
    """Images for the body's parameters, kept as a new history entry; returns the entry."""
    catalog = _catalog(request)
    run = catalog.run(body.run)
    snapshot = catalog.snapshot(run, body.snapshot)
    seeds = (
        body.seeds
        if body.seeds is not None
        else list(range(body.seed, min(body.seed + body.count, SEED_MAX + 1)))
    )
    if body.mode == "tags":
        if not body.rows:
            raise InvalidArgument('mode tags needs `rows`: a label set per row, e.g. [["smile"], []]')
        rows = [list(dict.fromkeys(body.labels + row)) for row in body.rows]
    else:
        if body.rows is not None:
            raise InvalidArgument("`rows` goes with mode tags")
        rows = [list(dict.fromkeys(body.labels))]
    n = len(rows) * len(seeds)
    if n > MAX_N:
        raise InvalidArgument(
            f"{n} images asked for ({len(rows)} rows x {len(seeds)} seeds): at most {MAX_N}"
        )
    edits = tuple(sorted(body.edits.items()))
    samples, described = [], []
    for r, row in enumerate(rows):
        for c, seed in enumerate(seeds):
            sample = Sample(seed, tuple(row), body.truncation, body.truncation_cutoff, edits, body.noise_mode)
            samples.append(sample)
            described.append({"row": r, "column": c, "caption": f"seed {seed}", "sample": sample.record()})
    resolved = {**body.model_dump(exclude={"seed", "count"}), "run": run.name, "snapshot": snapshot.name}
    resolved["seeds"] = seeds
    return await _make(request, run, snapshot, "generate", resolved, samples, described, len(seeds))


@router.post("/mix")
async def mix(request: Request, body: MixBody) -> dict[str, Any]:
    """Style mixing of images `a` and `b` of an entry, kept as a new entry."""
    catalog = _catalog(request)
    run, folder = catalog.entry(body.entry)
    source = await asyncio.to_thread(playground.read_params, folder)
    images = source.get("images", [])
    for k in (body.a, body.b):
        if k >= len(images):
            raise NotFound(f"entry {body.entry} has {len(images)} images: no image {k}")
    a, b = (Sample.from_record(images[k]["sample"]) for k in (body.a, body.b))
    if a.mix is not None or b.mix is not None:
        raise InvalidArgument("mix two images of a generated entry, not of a mix")
    snapshot = catalog.snapshot(run, source["snapshot"]["name"])
    present = style_groups(int(source["resolution"]))
    groups = [g for g in present if g in (body.groups or GROUPS)]
    if not groups:
        raise InvalidArgument(f"this network's styles are {', '.join(present)}: mix one of those")
    samples = [a, b] + [replace(a, mix=(b, g)) for g in groups]
    captions = ["A", "B"] + [f"A with B's {g}" for g in groups]
    described = [
        {"row": 0, "column": i, "caption": caption, "sample": s.record()}
        for i, (caption, s) in enumerate(zip(captions, samples, strict=True))
    ]
    resolved = {"entry": body.entry, "a": body.a, "b": body.b, "groups": groups}
    return await _make(request, run, snapshot, "mix", resolved, samples, described, len(samples))


async def _make(request, run: Run, snapshot, kind: str, resolved: dict, samples, described, columns: int):
    worker = request.app.state.generator
    start = time.perf_counter()
    images = await asyncio.wrap_future(worker.submit(run.path, snapshot, samples))
    entry = playground.new_entry_id()
    params = {
        "format": playground.FORMAT, "entry": entry, "kind": kind, "request": resolved,
        "run": run.name, "snapshot": {"name": snapshot.name},
        "resolution": int(images[0].shape[0]), "columns": columns,
        "images": [{"k": k, "file": playground.image_file(k), **d} for k, d in enumerate(described)],
        "seconds": round(time.perf_counter() - start, 4), "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }  # fmt: skip
    await asyncio.to_thread(playground.write_entry, run, entry, params, images, columns)
    return _shown(params)


def _shown(params: dict[str, Any]) -> dict[str, Any]:
    """An entry's params with the URLs of its images."""
    entry = params["entry"]
    base = f"/api/playground/{entry}"
    images = [{**image, "url": f"{base}/{image['k']}.png"} for image in params.get("images", [])]
    return {**params, "images": images, "grid": f"{base}/grid.png"}


@router.get("/playground")
async def history(request: Request, run: Annotated[str | None, Query(max_length=128)] = None):
    """A run's history entries, newest first."""
    found = _catalog(request).run(run)
    return {"run": found.name, "entries": await asyncio.to_thread(playground.history, found)}


@router.get("/playground/{entry}")
async def entry(request: Request, entry: str) -> dict[str, Any]:
    """An entry's parameters, images and the request that makes them again."""
    _, folder = _catalog(request).entry(entry)
    return _shown(await asyncio.to_thread(playground.read_params, folder))


@router.get("/playground/{entry}/{image}.png")
async def image(request: Request, entry: str, image: str, download: bool = False) -> FileResponse:
    """An image of an entry (`grid` for all of them); `?download=1` saves it under a telling name."""
    _, folder = _catalog(request).entry(entry)
    path = playground.image_path(folder, image)
    headers = {"Cache-Control": "private, max-age=31536000, immutable"}  # an entry never changes
    if download:
        headers["Content-Disposition"] = f'attachment; filename="curate-{entry}-{image}.png"'
    return FileResponse(path, media_type="image/png", headers=headers)
