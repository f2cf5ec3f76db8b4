"""What the commands share: the consoles, the options many take, printing a summary, the exit after Ctrl-C.

An option spelled the same way everywhere is an alias (`workspace: Workspace = DEFAULT_WORKSPACE`); one
whose help text says something per command comes from a function of that text
(`force: Force("Redo every image.") = False`).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.console import Console

from curate.workspace import DEFAULT_ROOT

if TYPE_CHECKING:
    from curate.summaries import Summary

out = Console(soft_wrap=True)  # long paths stay whole in logs and pipes
err = Console(stderr=True, soft_wrap=True)

DEFAULT_WORKSPACE = DEFAULT_ROOT / "default"

Workspace = Annotated[
    Path,
    typer.Option(
        "--workspace", "-w", envvar="CURATE_WORKSPACE", help="Workspace folder (created if missing)."
    ),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
Shard = Annotated[
    Optional[str],  # noqa: UP045 - typer needs Optional here on Python 3.10
    typer.Option(help="Do only part K of N (0-based), e.g. 0/4, for N parallel runs."),
]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
PartRows = Annotated[int, typer.Option(min=1, help="Rows per manifest part.")]
Workers = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option(min=0, help="Decoding processes; default half the CPUs."),
]
InputSize = Annotated[int, typer.Option(min=16, help="Input side in pixels.")]
CocoImages = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(help="Folder the COCO file names are relative to; default: the file's folder."),
]


class DetectorKind(str, Enum):
    cascade = "cascade"
    frcnn = "frcnn"


# Named like the aliases above because they stand where a type goes: `force: Force("…") = False`.
def Force(help: str) -> Any:
    return Annotated[bool, typer.Option(help=help)]


def RetryFailed(help: str) -> Any:
    return Annotated[bool, typer.Option(help=help)]


def Seed(help: str) -> Any:
    return Annotated[int, typer.Option(help=help)]


def BatchSize(help: str) -> Any:
    return Annotated[int, typer.Option(min=1, help=help)]


def Epochs(help: str) -> Any:
    return Annotated[int, typer.Option(min=1, help=help)]


def OutDir(help: str) -> Any:
    """`--out FOLDER`, optional."""
    return Annotated[Optional[Path], typer.Option("--out", help=help)]  # noqa: UP045


def DetectorModel(help: str) -> Any:
    """`--model FILE` (alias `--cascade`), optional."""
    return Annotated[Optional[Path], typer.Option("--model", "--cascade", help=help)]  # noqa: UP045


def Detector(help: str) -> Any:
    return Annotated[DetectorKind, typer.Option(help=help)]


def CocoCategory(help: str) -> Any:
    return Annotated[Optional[str], typer.Option(help=help)]  # noqa: UP045


def per_image(
    shard: str | None, force: bool, retry_failed: bool, quiet: bool, part_rows: int
) -> dict[str, Any]:
    """The keywords of a per-image stage's options (crop, tag) from --shard, --force, --retry-failed,
    --quiet and --part-rows, in that order."""
    from curate.shard import Shard as ShardSpec

    return {
        "shard": ShardSpec.parse(shard),
        "force": force,
        "retry_failed": retry_failed,
        "progress": not quiet,
        "rows_per_part": part_rows,
    }


def exit_if_interrupted(interrupted: bool) -> None:
    """A stage stopped by Ctrl-C has saved what finished: say so and exit 130, as shells expect."""
    if interrupted:
        err.print("interrupted: what finished is saved; run the same command again to resume")
        raise typer.Exit(130)


def show(summary: Summary) -> None:
    """Print a stage's summary (its warnings to stderr), and exit 130 if Ctrl-C stopped the stage."""
    for line in summary.lines:
        out.print(line, highlight=False)
    for line in summary.warnings:
        err.print(line, highlight=False)
    exit_if_interrupted(summary.interrupted)
