"""Steering a trained generator: `curate directions` fits a direction in W per tag."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from curate import summaries
from curate.cli import options as opt
from curate.cli.program import app


@app.command()
def directions(
    run: Annotated[Path, typer.Option(help="The run folder (WORKSPACE/runs/NAME).")],
    tagger: Annotated[
        Optional[str],  # noqa: UP045 - typer needs Optional here on Python 3.10
        typer.Option(
            help="Tagger, as `curate tag --model`: a hub id or a WD-format folder; "
            "default SmilingWolf/wd-vit-tagger-v3."
        ),
    ] = None,
    n: Annotated[int, typer.Option("--n", min=1, help="Faces sampled and tagged.")] = 10_000,
    tags: Annotated[
        str, typer.Option(help="Tags to fit, comma-separated; default: the run's labels the tagger knows.")
    ] = "",
    threshold: Annotated[float, typer.Option(min=0, max=1, help="A tag is on at this probability.")] = 0.35,
    snapshot: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="A snapshot of the run (file name or kimg); default the newest."),
    ] = None,
    batch: opt.BatchSize("Faces per forward pass.") = 32,
    device: opt.Device = "auto",
    seed: opt.Seed("Seed of the sampled z, label sets and held-out split.") = 0,
    quiet: opt.Quiet = False,
) -> None:
    """Fit a direction in W per tag (logistic regression on tagged samples) for `--edit`."""
    from train.direction_fit import DirectionsOptions, fit_directions

    options = DirectionsOptions(
        run=run, tagger=tagger, n=n, tags=[t for t in tags.split(",") if t.strip()] or None,
        threshold=threshold, snapshot=snapshot, batch=batch, device=device, seed=seed, progress=not quiet,
    )  # fmt: skip
    opt.show(summaries.directions_summary(fit_directions(options)))
