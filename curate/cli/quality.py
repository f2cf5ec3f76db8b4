"""The generator's image quality: `curate metrics` (FID, KID, precision/recall of a run's snapshot)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from curate import summaries
from curate.cli import options as opt
from curate.cli.program import app


@app.command()
def metrics(
    run: Annotated[Path, typer.Option(help="A run folder (its newest snapshot) or a snapshot file.")],
    data: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="The reals; default the data the run trained on."),
    ] = None,
    metrics: Annotated[
        str, typer.Option(help="Comma-separated: fid50k_full, kid50k_full, pr50k3_full (or another count).")
    ] = "fid50k_full",
    snapshot: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="A snapshot of the run: its file name or kimg. Default the newest."),
    ] = None,
    n: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--n", "--metrics-n", min=2, help="Generated images per metric (fid5k_full…)."),
    ] = None,
    batch: opt.BatchSize("Images per pass of G and of Inception.") = 32,
    device: opt.Device = "auto",
    inception: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth; default from the cache."),
    ] = None,
    quiet: opt.Quiet = False,
) -> None:
    """Measure a run's generator against its reals; a line goes to RUN/metrics.jsonl."""
    from train.quality import measure_run

    report = measure_run(
        run, data=data, metrics=metrics, snapshot=snapshot, n=n, batch=batch, device=device,
        inception=inception, progress=not quiet,
    )  # fmt: skip
    opt.show(summaries.metrics_summary(report))
