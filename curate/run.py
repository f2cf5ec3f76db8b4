"""`curate run CONFIG.toml`: every stage the config names, in pipeline order, each skipping work done.

A config holds `workspace = "…"` and one table per stage, whose keys are that stage's options (the
same names as the library's dataclasses; see the README's example). Stages resume on their own, so a
killed run started again goes on where it stopped.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curate.config import build, read_toml
from curate.errors import InvalidArgument

ORDER = ("crawl", "ingest", "crop", "tag", "labels", "embed", "filter", "export")


@dataclass
class Step:
    stage: str
    options: Any  # the stage's options dataclass(es), or keyword arguments
    run: Callable[[Path], str]  # does the work; returns one line saying what it did


def plan(config_path: str | Path, *, progress: bool = True) -> tuple[Path, list[Step]]:
    """(workspace, the steps to run): every table checked and turned into options before anything runs."""
    config = read_toml(config_path)
    base = Path(config_path).resolve().parent
    workspace = config.pop("workspace", None)
    if not isinstance(workspace, str):
        raise InvalidArgument(f'{config_path}: give `workspace = "path"` at the top')
    unknown = sorted(set(config) - set(ORDER))
    if unknown:
        raise InvalidArgument(
            f"{config_path}: unknown stage {', '.join(unknown)}; stages: {', '.join(ORDER)}"
        )
    ws = (base / Path(workspace).expanduser()).resolve()
    steps = [BUILDERS[stage](dict(config[stage]), progress) for stage in ORDER if stage in config]
    return ws, steps


def run_config(config_path: str | Path, *, progress: bool = True, say: Callable[[str], None] = print) -> Path:
    """Run every step of the plan; `say` gets a line as each stage starts and ends."""
    ws, steps = plan(config_path, progress=progress)
    for step in steps:
        say(f"▶ {step.stage}")
        say(f"  {step.run(ws)}")
    return ws


def _crawl(table: dict, progress: bool) -> Step:
    from crawl.board import CrawlOptions, crawl_board

    queries = table.pop("queries", None)
    if not isinstance(queries, list) or not queries:
        raise InvalidArgument('[crawl]: give the tag queries as `queries = ["1girl solo", …]`')
    options = [build(CrawlOptions, {**table, "tags": query}, "[crawl]") for query in queries]

    def run(ws: Path) -> str:
        reports = [crawl_board(ws, option, progress=progress) for option in options]
        return "; ".join(f"{o.tags!r}: {r}" for o, r in zip(options, reports, strict=True))

    return Step("crawl", options, run)


def _ingest(table: dict, progress: bool) -> Step:
    from crawl.local import ingest_folder

    folders = table.pop("folders", None)
    if not isinstance(folders, list) or not folders:
        raise InvalidArgument('[ingest]: give `folders = ["path", …]`')
    _check_keywords(ingest_folder, table, "[ingest]", skip=("folder", "workspace", "progress"))

    def run(ws: Path) -> str:
        reports = [ingest_folder(Path(f).expanduser(), ws, progress=progress, **table) for f in folders]
        return "; ".join(str(r) for r in reports)

    return Step("ingest", {"folders": folders, **table}, run)


def _options_step(stage: str, cls_path: str, call_path: str) -> Callable[[dict, bool], Step]:
    """A step whose options are one dataclass and whose work is one function (crop, tag, embed, filter)."""

    def builder(table: dict, progress: bool) -> Step:
        cls, function = _load(cls_path), _load(call_path)
        if "progress" in {f.name for f in dataclasses.fields(cls)}:
            table.setdefault("progress", progress)
        if stage == "embed" and isinstance(table.setdefault("train", {}), dict):
            table["train"].setdefault("progress", progress)  # the training loop has its own bar
        options = build(cls, table, f"[{stage}]")
        return Step(stage, options, lambda ws: _summary(function(ws, options)))

    return builder


def _labels(table: dict, progress: bool) -> Step:
    from curate.labels import choose_labels

    _check_keywords(choose_labels, table, "[labels]", skip=("workspace",))

    def run(ws: Path) -> str:
        vocabulary, path = choose_labels(ws, **table)
        return f"{len(vocabulary.labels)} labels written to {path}"

    return Step("labels", table, run)


def _export(table: dict, progress: bool) -> Step:
    from curate.export.stage import ExportOptions, export_dataset

    formats = table.pop("formats", None) or [table.pop("format", "parquet")]
    table.setdefault("progress", progress)
    options = [build(ExportOptions, {**table, "format": f}, "[export]") for f in formats]

    def run(ws: Path) -> str:
        reports = [export_dataset(ws, option) for option in options]
        return "; ".join(
            f"{o.format}: {'unchanged' if r.unchanged else 'written'} {r.counts} → {r.out}"
            for o, r in zip(options, reports, strict=True)
        )

    return Step("export", options, run)


def _check_keywords(function: Callable, table: dict, where: str, *, skip: tuple[str, ...]) -> None:
    known = [name for name in inspect.signature(function).parameters if name not in skip]
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise InvalidArgument(f"{where}: unknown key {', '.join(unknown)}; known: {', '.join(known)}")


def _load(dotted: str) -> Any:
    import importlib

    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _summary(report: Any) -> str:
    """A report's plain fields on one line."""
    if not dataclasses.is_dataclass(report):
        return str(report)
    fields = {f.name: getattr(report, f.name) for f in dataclasses.fields(report)}
    shown = {
        k: v for k, v in fields.items() if isinstance(v, int | float | str | bool) and v not in ("", None)
    }
    return ", ".join(f"{k} {v}" for k, v in shown.items())


BUILDERS: dict[str, Callable[[dict, bool], Step]] = {
    "crawl": _crawl,
    "ingest": _ingest,
    "crop": _options_step("crop", "detect.faces.crop.CropOptions", "detect.faces.crop.crop_images"),
    "tag": _options_step("tag", "detect.tags.tag.TagOptions", "detect.tags.tag.tag_faces"),
    "labels": _labels,
    "embed": _options_step("embed", "embed.stage.EmbedOptions", "embed.stage.embed_faces"),
    "filter": _options_step("filter", "embed.filter.FilterOptions", "embed.filter.filter_faces"),
    "export": _export,
}
