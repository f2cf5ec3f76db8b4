"""Images from a trained generator: `curate generate`."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from curate import summaries
from curate.cli import options as opt
from curate.cli.program import app


class NoiseMode(str, Enum):
    const = "const"
    random = "random"
    none = "none"


class Vary(str, Enum):
    noise = "noise"
    tags = "tags"


@app.command()
def generate(
    run: Annotated[Path, typer.Option(help="A run folder (WORKSPACE/runs/NAME) or a snapshot file.")],
    snapshot: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="The run's snapshot: its file name or kimg. Default: the newest."),
    ] = None,
    out_dir: opt.OutDir("Folder to write (a new one). Default: RUN/generated/<from the parameters>.") = None,
    n: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--n", min=1, help="Images, one per seed (default 16); with --vary tags, columns (8)."),
    ] = None,
    seed: opt.Seed("First seed: image k is seed + k, the same face in any batch.") = 0,
    tags: Annotated[
        str, typer.Option(help="Labels of every image, comma-separated: blonde_hair,smile or 'blonde hair'.")
    ] = "",
    truncation: Annotated[
        float,
        typer.Option(help="ψ: 1 samples what G learned; less pulls w toward the mean w of the asked labels."),
    ] = 0.7,
    truncation_cutoff: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(min=1, help="Truncate only the first N ws (the coarse layers). Default: all."),
    ] = None,
    noise_mode: Annotated[
        NoiseMode, typer.Option(help="Per-pixel noise: const (the layers' own), random (by seed) or none.")
    ] = NoiseMode.const,
    vary: Annotated[
        Vary, typer.Option(help="The grid: noise (--tags, seeds vary) or tags (label sets by row, z by col).")
    ] = Vary.noise,
    rows: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="--vary tags rows: 'blonde_hair,smile;blue_hair' (- none). Default: the data's."),
    ] = None,
    mix: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Style mixing of seeds A,B (or 1,2;3,4): A with B's coarse, middle, fine styles."),
    ] = None,
    interpolate: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="A walk in W through these seeds, e.g. 1,5,9: a strip PNG (--gif: and a GIF)."),
    ] = None,
    steps: Annotated[int, typer.Option(min=2, help="--interpolate: frames from seed to seed, both in.")] = 8,
    gif: Annotated[bool, typer.Option("--gif", help="--interpolate: also an animated GIF.")] = False,
    edit: Annotated[
        str, typer.Option(help="Move w along `curate directions`' fits: smile=+1.5,glasses=-1 (strip each).")
    ] = "",
    batch: opt.BatchSize("Images per forward pass.") = 32,
    device: opt.Device = "auto",
    force: opt.Force("Replace the folder when it holds other images.") = False,
    quiet: opt.Quiet = False,
) -> None:
    """Images of a run by seed and labels: PNGs and grids, style mixing, interpolation, edits."""
    from train.generate import GenerateOptions
    from train.generate import generate as generate_images

    report = generate_images(
        GenerateOptions(
            run=run, snapshot=snapshot, out=out_dir, n=n, seed=seed, tags=tags, truncation=truncation,
            truncation_cutoff=truncation_cutoff, noise_mode=noise_mode.value, vary=vary.value, rows=rows,
            mix=mix, interpolate=interpolate, steps=steps, gif=gif, edit=edit, batch=batch, device=device,
            force=force, progress=not quiet,
        )
    )  # fmt: skip
    opt.show(summaries.generate_summary(report))
    if report.interrupted:
        raise typer.Exit(130)
