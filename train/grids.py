"""Sample grids written at each snapshot: one fixed z per column, one label set per row.

Reading a column shows one face's noise under different labels (MakeGirlsMoe's "fixed noise, varied
tags"); reading a row shows one label set under different noise ("fixed tags, varied noise"). Rows are
label sets drawn from the dataset, so they are combinations the generator is trained on; their names
are written in a margin on the left and in a JSON file beside the PNG.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

COLUMNS, ROWS = 8, 8
MARGIN = 180  # pixels of label text left of the images
MIN_TILE = 64  # smaller images are enlarged (nearest neighbour) so a grid of 16² samples is legible


@dataclass
class GridInputs:
    z: torch.Tensor  # [columns, z_dim]
    labels: torch.Tensor | None  # [rows, c_dim], None for an unconditional generator
    row_names: list[list[str]]  # the names of each row's labels


def grid_inputs(
    dataset_labels: np.ndarray, label_names: list[str], z_dim: int, seed: int, columns: int = COLUMNS
) -> GridInputs:
    """Fixed z and label rows for a run: a function of the seed only, the same at every snapshot."""
    generator = torch.Generator().manual_seed(seed + 1_000_003)
    z = torch.randn(columns, z_dim, generator=generator)
    if dataset_labels.shape[1] == 0:
        return GridInputs(z, None, [])
    rng = np.random.default_rng(seed)
    # distinct label sets first, so rows differ; repeats only when the data has fewer than ROWS sets
    unique = np.unique(dataset_labels, axis=0)
    order = rng.permutation(len(unique))
    chosen = unique[order[:ROWS]] if len(unique) >= ROWS else unique[order]
    labels = torch.tensor(chosen, dtype=torch.float32)
    names = [[label_names[i] for i in np.flatnonzero(row > 0)] for row in chosen]
    return GridInputs(z, labels, names)


@torch.no_grad()
def render_grid(G, inputs: GridInputs, device: torch.device, batch: int = 32) -> np.ndarray:
    """The images as one uint8 HWC array: rows × columns tiles (an 8 × 8 square when unconditional)."""
    columns = len(inputs.z)
    if inputs.labels is None:
        generator = torch.Generator().manual_seed(len(inputs.z))
        z = torch.cat([inputs.z, torch.randn(columns * (ROWS - 1), inputs.z.shape[1], generator=generator)])
        c = None
        rows = ROWS
    else:
        rows = len(inputs.labels)
        z = inputs.z.repeat(rows, 1)
        c = inputs.labels.repeat_interleave(columns, dim=0)
    tiles = []
    for start in range(0, len(z), batch):
        zb = z[start : start + batch].to(device)
        cb = c[start : start + batch].to(device) if c is not None else None
        images = G(zb, cb, noise_mode="const")
        tiles.append((images.clamp(-1, 1) * 127.5 + 127.5).round().to(torch.uint8).cpu())
    images = torch.cat(tiles)
    size = images.shape[-1]
    grid = images.reshape(rows, columns, 3, size, size).permute(0, 3, 1, 4, 2)
    return grid.reshape(rows * size, columns * size, 3).numpy()


def save_grid(
    path: Path, grid: np.ndarray, tile: int, row_names: list[list[str]], *, compress_level: int = 6
) -> Path:
    """The grid (of `tile`-pixel images) as PNG, with each row's labels in a left margin and
    `<name>.json` naming them."""
    from PIL import Image, ImageDraw

    image = Image.fromarray(grid)
    if tile < MIN_TILE:
        scale = -(-MIN_TILE // tile)
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
        tile *= scale
    if row_names:
        canvas = Image.new("RGB", (image.width + MARGIN, image.height), (255, 255, 255))
        canvas.paste(image, (MARGIN, 0))
        draw = ImageDraw.Draw(canvas)
        for row, names in enumerate(row_names):
            lines = _wrap(names or ["(no labels)"], max(1, tile // 12))
            for number, line in enumerate(lines):
                draw.text((4, row * tile + 4 + 12 * number), line, fill=(0, 0, 0))
        image = canvas
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG", compress_level=compress_level)
    tmp.replace(path)
    if row_names:
        path.with_suffix(".json").write_text(
            json.dumps({"rows": row_names}, indent=1) + "\n", encoding="utf-8"
        )
    return path


def _wrap(names: list[str], max_lines: int, width: int = 28) -> list[str]:
    lines: list[str] = []
    for name in names:
        if lines and len(lines[-1]) + len(name) + 2 <= width:
            lines[-1] += f", {name}"
        else:
            lines.append(name[:width])
    return [*lines[: max_lines - 1], "…"] if len(lines) > max_lines else lines


def save_reals(path: Path, images: np.ndarray) -> Path:
    """A square grid of real training images (uint8 NCHW) to compare the fakes with."""
    n = max(int(np.sqrt(len(images))), 1)
    size = images.shape[-1]
    grid = (
        images[: n * n].reshape(n, n, 3, size, size).transpose(0, 3, 1, 4, 2).reshape(n * size, n * size, 3)
    )
    return save_grid(path, np.ascontiguousarray(grid), size, [])
