"""The web app: `curate serve` reviews the dataset and plays with the generator in a browser."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from curate.cli import options as opt
from curate.cli.program import app


@app.command()
def serve(
    workspace: opt.Workspace = opt.DEFAULT_WORKSPACE,
    run: Annotated[
        Optional[Path],  # noqa: UP045 - typer needs Optional here on Python 3.10
        typer.Option(help="A training run (WORKSPACE/runs/NAME) for the generate page."),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to bind; anything but loopback needs a token.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8765,
    token: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            help="Token every API call must carry; off loopback one is made and printed if not given."
        ),
    ] = None,
    device: opt.Device = "auto",
    batch: opt.BatchSize("Images per generator call (queued requests are batched).") = 16,
) -> None:
    """Serve the review and generate pages on a local web app (FastAPI + uvicorn)."""
    from curate.serve.app import ServeOptions
    from curate.serve.app import serve as run_server

    options = ServeOptions(
        workspace=Path(workspace), run=run, host=host, port=port, token=token, device=device, batch=batch
    )
    run_server(options, announce=opt.out.print)
