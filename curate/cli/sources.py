"""Where images come from: `curate crawl` (a Gelbooru-0.2 board) and `curate ingest` (a local folder)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from curate import summaries
from curate.cli import options as opt
from curate.cli.program import app

MinSide = Annotated[int, typer.Option(min=0, help="Skip images whose shorter side is under PX.")]


class Size(str, Enum):
    original = "original"
    sample = "sample"


class ApiFormat(str, Enum):
    xml = "xml"
    json = "json"


@app.command()
def crawl(
    tags: Annotated[
        str, typer.Option(help="Tag query, space separated; -tag excludes (e.g. 'solo -comic').")
    ],
    limit: Annotated[int, typer.Option(min=1, help="Posts to crawl, newest first; a larger limit extends.")],
    workspace: opt.Workspace = opt.DEFAULT_WORKSPACE,
    base_url: Annotated[str, typer.Option(help="A Gelbooru 0.2 board.")] = "https://safebooru.org",
    rate: Annotated[
        float, typer.Option(min=0, help="Requests per second to the board; 0 = unlimited.")
    ] = 2.0,
    concurrency: Annotated[int, typer.Option(min=1, max=256, help="Parallel downloads.")] = 32,
    processes: Annotated[
        int, typer.Option(min=0, max=64, help="Download processes; 0 = one per core if --rate is 0 or fast.")
    ] = 0,
    size: Annotated[
        Size, typer.Option(help="Original files, or the board's smaller samples.")
    ] = Size.original,
    min_side: MinSide = 0,
    rating: Annotated[
        Optional[str],  # noqa: UP045 - typer needs Optional here on Python 3.10
        typer.Option(
            help="Keep only these ratings, comma separated: general,sensitive,questionable,explicit."
        ),
    ] = None,
    api: Annotated[ApiFormat, typer.Option(help="Listing format to read.")] = ApiFormat.xml,
    tag_categories: Annotated[bool, typer.Option(help="Look up each tag's category.")] = True,
    api_key: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(envvar="CURATE_API_KEY", help="API key, for boards that require one (with --user-id)."),
    ] = None,
    user_id: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(envvar="CURATE_USER_ID", help="User id that goes with --api-key."),
    ] = None,
    retry_failed: opt.RetryFailed("Try failed posts again.") = False,
    force: opt.Force("Redo every post, fetching images again.") = False,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds to wait for a server to answer.")] = 30.0,
    retries: Annotated[int, typer.Option(min=1, help="Attempts per request before a post fails.")] = 5,
    part_rows: opt.PartRows = 1000,
    quiet: opt.Quiet = False,
) -> None:
    """Crawl a Gelbooru-0.2 board (Safebooru by default) by tag into the workspace."""
    from crawl.board import CrawlOptions, crawl_board
    from crawl.http import RetryPolicy

    options = CrawlOptions(
        tags=tags,
        limit=limit,
        base_url=base_url,
        rate=rate,
        concurrency=concurrency,
        processes=processes,
        size=size.value,
        min_side=min_side,
        ratings=tuple(r.strip() for r in rating.split(",") if r.strip()) if rating else (),
        api_format=api.value,
        tag_categories=tag_categories,
        api_key=api_key,
        user_id=user_id,
        force=force,
        retry_failed=retry_failed,
        rows_per_part=part_rows,
        timeout=(min(10.0, timeout), timeout),
        retry=RetryPolicy(attempts=retries),
    )
    opt.show(summaries.crawl_summary(crawl_board(workspace, options, progress=not quiet), workspace))


@app.command()
def ingest(
    folder: Annotated[Path, typer.Argument(help="Folder of images, searched recursively.")],
    workspace: opt.Workspace = opt.DEFAULT_WORKSPACE,
    min_side: MinSide = 0,
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="Files checked in parallel.")] = 4,
    retry_failed: opt.RetryFailed("Try failed files again.") = False,
    force: opt.Force("Redo every file.") = False,
    quiet: opt.Quiet = False,
) -> None:
    """Add a local folder of images (with .txt/.json tag sidecars) to the workspace."""
    from crawl.local import ingest_folder

    report = ingest_folder(
        folder,
        workspace,
        min_side=min_side,
        concurrency=concurrency,
        force=force,
        retry_failed=retry_failed,
        progress=not quiet,
    )
    opt.show(summaries.ingest_summary(report))
