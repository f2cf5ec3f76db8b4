"""The `curate` Typer app that every family of commands registers on, its global options, the entry point."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from curate import __version__
from curate.cli.options import err, out
from curate.errors import CurateError, InvalidArgument

app = typer.Typer(
    name="curate",
    help="Turn an image board into a clean, labelled anime-face dataset and train a StyleGAN2 on it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(asked: bool) -> None:
    # eager, so it answers before Typer asks for a command
    if asked:
        out.print(f"curate {__version__}")
        raise typer.Exit()


@app.callback()
def _setup(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log each retry and lookup.")] = False,
    version: Annotated[
        bool,
        typer.Option("--version", help="Print the version and exit.", is_eager=True, callback=_print_version),
    ] = False,
) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err, show_path=False, show_time=False)],
    )
    logging.getLogger("urllib3").setLevel(logging.WARNING)


def main() -> None:
    """Console entry point: a CurateError becomes a one-line message and an exit code, not a traceback."""
    try:
        app()
    except CurateError as error:
        err.print(f"[red]error:[/red] {error}", highlight=False)
        raise SystemExit(2 if isinstance(error, InvalidArgument) else 1) from None
