"""The dataset and the workspace as a whole: `curate export`, `report`, `run` and `status`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from curate import summaries
from curate.cli import options as opt
from curate.cli.options import err, out
from curate.cli.program import app
from curate.errors import InvalidArgument


@app.command()
def export(
    workspace: opt.Workspace = opt.DEFAULT_WORKSPACE,
    format: Annotated[
        str, typer.Option("--format", "-f", help="parquet, stylegan (NVlabs zip) or imagefolder.")
    ] = "parquet",
    out_dir: opt.OutDir("Folder to write; default <workspace>/export/<format>.") = None,
    resolution: Annotated[
        int, typer.Option(min=4, help="Square side in pixels (a power of two for stylegan).")
    ] = 256,
    min_score: Annotated[
        Optional[float],  # noqa: UP045 - typer needs Optional here on Python 3.10
        typer.Option(help="Only faces the filter scored at least this."),
    ] = None,
    exclude_monochrome: Annotated[bool, typer.Option(help="Leave out greyscale and sketch crops.")] = False,
    balance: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Equal counts of faces per tag, e.g. '1boy,1girl' (down-sampled)."),
    ] = None,
    max_faces: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--max", min=1, help="At most this many faces (a seeded sample)."),
    ] = None,
    validation: Annotated[float, typer.Option(help="Share of faces in the validation split.")] = 0.05,
    seed: opt.Seed("Seed of the sampling and the split.") = 0,
    quiet: opt.Quiet = False,
) -> None:
    """Write the kept faces as Parquet shards, an NVlabs StyleGAN zip or an imagefolder."""
    from curate.export.select import SelectOptions
    from curate.export.stage import ExportOptions, export_dataset

    select = SelectOptions(
        min_score=min_score,
        exclude_monochrome=exclude_monochrome,
        balance=[t.strip() for t in (balance or "").split(",") if t.strip()],
        max_faces=max_faces,
        validation=validation,
        seed=seed,
    )
    options = ExportOptions(
        format=format, out=out_dir, resolution=resolution, select=select, progress=not quiet
    )
    opt.show(summaries.export_summary(export_dataset(workspace, options)))


@app.command()
def report(workspace: opt.Workspace = opt.DEFAULT_WORKSPACE, quiet: opt.Quiet = False) -> None:
    """Write WORKSPACE/report/index.html: the funnel, contact sheets, duplicates, tags, scores, training
    runs (curves, metrics, newest grids), parameters."""
    from curate.report import build_report

    result = build_report(workspace, progress=not quiet)
    runs = f", {result.runs} training run{'s' if result.runs != 1 else ''}" if result.runs else ""
    out.print(f"[bold]report[/bold]: {result.page} ({result.thumbnails:,} thumbnails{runs})")


@app.command("run")
def run_command(
    config: Annotated[Path, typer.Argument(help="TOML file: the workspace and each stage's options.")],
    dry_run: Annotated[bool, typer.Option(help="Check the config and print the plan; run nothing.")] = False,
    quiet: opt.Quiet = False,
) -> None:
    """Run the stages a config names, in order; each skips what is done, so a killed run continues."""
    from curate.run import describe, plan, run_config

    if dry_run:
        workspace, steps = plan(config, progress=not quiet)
        for line in [f"workspace {workspace}", *describe(steps)]:
            out.print(line, highlight=False)
        return
    try:
        run_config(
            config,
            progress=not quiet,
            say=lambda line: out.print(line, highlight=False),
            warn=lambda line: err.print(line, highlight=False),
        )
    except KeyboardInterrupt:
        opt.exit_if_interrupted(True)


@app.command()
def status(workspace: opt.Workspace = opt.DEFAULT_WORKSPACE) -> None:
    """Rows per stage by status and error code, and the training runs with their kimg."""
    from curate.status import format_counts, run_lines, workspace_status
    from curate.workspace import Workspace as Ws

    if not Path(workspace).is_dir():
        raise InvalidArgument(f"no workspace at {workspace}")
    stages = workspace_status(Ws.open(workspace))
    out.print(f"workspace {Path(workspace).resolve()}")
    if not stages:
        out.print("  no manifests yet: start with `curate crawl` or `curate ingest`")
    for counts in stages:
        out.print(f"[bold]{counts.stage}[/bold]  {counts.rows:,} rows")
        for line in format_counts(counts):
            out.print(f"  {line}", highlight=False)
    runs = run_lines(Ws.open(workspace))
    if runs:
        out.print(f"[bold]runs[/bold]  {len(runs)}")
        for line in runs:
            out.print(f"  {line}", highlight=False)
