"""What each mode of `curate generate` draws: per-seed images, label-set grids, style mixing,
interpolation strips and GIFs, and a strip per `--edit`. `train.generate` runs them in a Job."""

from __future__ import annotations

import math
from functools import partial
from itertools import pairwise
from typing import TYPE_CHECKING

import numpy as np

from curate.errors import InvalidArgument
from curate.progress import StageProgress
from train.generate import EDIT_STEPS, GIF_FRAME_MS, GRID_COLUMNS, GRID_MAX, safe_name

if TYPE_CHECKING:
    from pathlib import Path

    from train.generate import Job
    from train.inference import TrainedGenerator

# the grids' default font has ASCII only: labels say 4x4-8x8, ->, ..
ROWS_FROM_DATA = 8  # --vary tags without --rows: this many distinct label sets of the training data


def images(job: Job) -> None:
    """One PNG per seed (`seed0001.png`), written on threads while the next batch generates, and a
    grid of the first 64."""
    o, n = job.options, job.plan["n"]
    seeds = list(range(o.seed, o.seed + n))
    tiles: list[np.ndarray] = []
    with StageProgress("generate", total=n, unit="images", enabled=o.progress and n > o.batch) as bar:
        chunks = [seeds[start : start + o.batch] for start in range(0, n, o.batch)]
        for chunk, batch in zip(chunks, job.render_seeds(chunks), strict=True):
            for seed, image in zip(chunk, batch, strict=True):
                job.writer.put(job.folder / f"seed{seed:04d}.png", image)
                if len(tiles) < GRID_MAX:
                    tiles.append(image)
                    if len(tiles) == min(n, GRID_MAX):  # written while the rest generate
                        _seed_grid(job, seeds, tiles)
            bar.advance(len(chunk))
    job.report.image_files = [f"seed{seeds[0]:04d}.png", f"seed{seeds[-1]:04d}.png"]


def _seed_grid(job: Job, seeds: list[int], tiles: list[np.ndarray]) -> None:
    names = job.names(job.row)
    row_names = [
        [f"seeds {seeds[r]}-{seeds[min(r + GRID_COLUMNS, len(tiles)) - 1]}", *names]
        for r in range(0, len(tiles), GRID_COLUMNS)
    ]
    _grid(job, "grid", tile_grid(tiles, min(GRID_COLUMNS, len(tiles))), row_names)


def label_rows(gen: TrainedGenerator, text: str | None, seed: int) -> list[list[int]]:
    """--rows "a,b;c;-" (`-` is the empty set), or distinct label sets of the run's training data
    (each label alone when the data is not where the run found it)."""
    if not gen.c_dim:
        raise InvalidArgument("--vary tags needs a conditional run; this generator takes no labels")
    if text:
        parts = [part.strip() for part in text.split(";") if part.strip()]
        return [[] if part in ("-", "none") else gen.labels(part) for part in parts]
    from train.grids import grid_inputs

    try:
        from train.dataset import read_labels

        labels, _ = read_labels(gen.dataset["path"])
        labels = labels[:, : gen.c_dim]
    except (KeyError, OSError, InvalidArgument):
        labels = np.eye(gen.c_dim, dtype=np.float32)
    chosen = grid_inputs(labels, gen.label_names, gen.z_dim, seed).labels
    assert chosen is not None
    return [np.flatnonzero(row.numpy() > 0).tolist() for row in chosen[:ROWS_FROM_DATA]]


def tags_grid(job: Job) -> None:
    """Fixed noise, varied tags: column k is seed + k under every row's label set."""
    o, n, rows = job.options, job.plan["n"], job.plan["rows"]
    seeds = list(range(o.seed, o.seed + n))
    tiles: list[np.ndarray] = []
    with StageProgress("generate", total=n * len(rows), unit="images", enabled=o.progress) as bar:
        for row in rows:
            tiles += job.render(job.ws(seeds, row), seeds)
            bar.advance(n)
    _grid(job, "grid", tile_grid(tiles, n), [job.names(row) or ["(no labels)"] for row in rows])


def mix(job: Job) -> None:
    """Style mixing, one column per seed pair: A, B, then A with B's coarse, middle and fine styles."""
    pairs, gen = job.plan["pairs"], job.gen
    a_seeds, b_seeds = [a for a, _ in pairs], [b for _, b in pairs]
    ws_a, ws_b = job.ws(a_seeds), job.ws(b_seeds)
    groups = {name: indices for name, indices in gen.style_groups().items() if indices}
    cells, noise = [ws_a, ws_b], [a_seeds, b_seeds]
    row_names = [["A", f"seed {', '.join(map(str, a_seeds))}"], ["B", f"seed {', '.join(map(str, b_seeds))}"]]
    for name, indices in groups.items():
        mixed = ws_a.clone()
        mixed[:, indices] = ws_b[:, indices]
        cells.append(mixed)
        noise.append(a_seeds)
        row_names.append([f"A with B's {name}", f"styles {_resolutions(name, gen.resolution)}"])
    import torch

    tiles = job.render(torch.cat(cells), [s for seeds in noise for s in seeds])
    _grid(job, "mixing", tile_grid(tiles, len(pairs)), row_names)


def _resolutions(group: str, resolution: int) -> str:
    low, high = {"coarse": (4, 8), "middle": (16, 32), "fine": (64, resolution)}[group]
    high = min(high, resolution)
    return f"{low}x{low}-{high}x{high}" if high > low else f"{low}x{low}"


def interpolate(job: Job) -> None:
    """A strip from seed to seed, lerping w (one row per pair of neighbours, --steps frames each, both
    ends included), and with --gif the whole walk as an animated GIF."""
    import torch

    seeds, steps, gen = job.plan["seeds"], job.options.steps, job.gen
    anchors = job.ws(seeds)
    t = torch.linspace(0, 1, steps, device=anchors.device)[:, None, None]
    segments = [a[None].lerp(b[None], t) for a, b in pairwise(anchors)]
    frames = torch.cat([segments[0], *(segment[1:] for segment in segments[1:])])
    walk = job.render(frames, [seeds[0]] * len(frames))  # one noise throughout, so only w moves
    rows, names = [], job.names(job.row)
    for k in range(len(segments)):
        rows += walk[k * (steps - 1) : k * (steps - 1) + steps]
    row_names = [[f"seed {a} -> {b}", *names] for a, b in pairwise(seeds)]
    _grid(job, "interpolation", tile_grid(rows, steps), row_names)
    if job.options.gif:
        job.report.files["gif"] = save_gif(job.folder / "interpolation.gif", walk, gen.resolution)


def edit_strips(job: Job) -> None:
    """Per edit, one face at EDIT_STEPS × its strength (−s, −s/2, 0, s/2, s): the middle tile is the face
    unedited, the last the edit as applied; only that edit moves it."""
    import torch

    from train.directions import edit_ws

    seed = _first_seed(job)
    row = job.plan["rows"][0] if job.mode == "tags" else job.row
    base = job.ws([seed], row, edited=False)
    for name, strength in job.edits.items():
        ws = torch.cat([edit_ws(base, job.directions, {name: strength * f}) for f in EDIT_STEPS])
        tiles = job.render(ws, [seed] * len(EDIT_STEPS))
        label = [f"{name} {-strength:+g} .. {strength:+g}", f"seed {seed}", *job.names(row)]
        _grid(job, f"edit {name}", tile_grid(tiles, len(EDIT_STEPS)), [label], f"edit-{safe_name(name)}")


def _first_seed(job: Job) -> int:
    if job.mode == "mix":
        return job.plan["pairs"][0][0]
    if job.mode == "interpolate":
        return job.plan["seeds"][0]
    return job.options.seed


def _grid(job: Job, name: str, grid: np.ndarray, row_names: list[list[str]], stem: str | None = None) -> None:
    from train.grids import save_grid
    from train.pngwriter import LEVEL

    path = job.folder / f"{stem or name}.png"
    job.writer.submit(partial(save_grid, compress_level=LEVEL), path, grid, job.gen.resolution, row_names)
    job.report.files[name] = path


def tile_grid(tiles: list[np.ndarray], columns: int) -> np.ndarray:
    """HWC tiles in rows of `columns` (a short last row padded white) as one uint8 HWC image."""
    size = tiles[0].shape[0]
    rows = math.ceil(len(tiles) / columns)
    grid = np.full((rows * size, columns * size, 3), 255, np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, columns)
        grid[r * size : (r + 1) * size, c * size : (c + 1) * size] = tile
    return grid


def save_gif(path: Path, frames: list[np.ndarray], resolution: int) -> Path:
    """An endlessly looping GIF, small images enlarged like the grids' tiles."""
    from PIL import Image

    from train.grids import MIN_TILE

    scale = -(-MIN_TILE // resolution) if resolution < MIN_TILE else 1
    images = [Image.fromarray(f).resize((resolution * scale,) * 2, Image.Resampling.NEAREST) for f in frames]
    tmp = path.with_name(f".{path.name}.tmp")
    images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=GIF_FRAME_MS, loop=0)
    tmp.replace(path)
    return path
