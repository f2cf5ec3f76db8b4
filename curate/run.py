"""`curate run CONFIG.toml`: every stage the config names, in pipeline order, each skipping work done.

A config holds `workspace = "…"` and one table per stage, whose keys are that stage's options (the
same names as the library's dataclasses; see the README's example). Stages resume on their own, so a
killed run started again goes on where it stopped.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curate import summaries
from curate.config import build, read_toml
from curate.errors import InvalidArgument
from curate.summaries import Summary, plain

ORDER = ("crawl", "ingest", "crop", "tag", "labels", "embed", "filter", "export", "train")


@dataclass
class Step:
    stage: str
    options: Any  # the stage's options dataclass, a list of them (one per query or format), or keywords
    run: Callable[[Path], Summary]  # does the work; says what it did as the stage's own command does
    defaults: dict[str, Any] = field(default_factory=dict)  # of keyword options: the function's defaults
    always: tuple[str, ...] = ()  # options the plan names even at their default (which export is which)


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


def _print_plain(line: str) -> None:
    print(plain(line))


def _warn_plain(line: str) -> None:
    print(plain(line), file=sys.stderr)


def run_config(
    config_path: str | Path,
    *,
    progress: bool = True,
    say: Callable[[str], None] = _print_plain,
    warn: Callable[[str], None] = _warn_plain,
) -> Path:
    """Run every step of the plan; `say` gets a line as each stage starts and its summary's lines (rich
    markup), `warn` its warnings. A stage stopped by Ctrl-C has saved its work; the run stops there with
    KeyboardInterrupt."""
    ws, steps = plan(config_path, progress=progress)
    for step in steps:
        say(f"▶ {step.stage}")
        summary = step.run(ws)
        for line in summary.lines:
            say(line)
        for line in summary.warnings:
            warn(line)
        if summary.interrupted:
            raise KeyboardInterrupt
    return ws


def describe(steps: list[Step]) -> list[str]:
    """The plan, a line a stage (and one per query or format), naming only options that differ from the
    defaults; secrets (fields kept out of reprs) never appear."""
    lines = []
    for number, step in enumerate(steps, 1):
        items = step.options if isinstance(step.options, list) else [step.options]
        shown = [", ".join(_differences(item, step.defaults, step.always)) or "defaults" for item in items]
        if len(shown) == 1:
            lines.append(f"{number}. {step.stage}: {shown[0]}")
        else:
            lines += [f"{number}. {step.stage}:", *(f"   - {text}" for text in shown)]
    return lines


def _differences(
    options: Any, defaults: dict[str, Any], always: tuple[str, ...] = (), prefix: str = ""
) -> list[str]:
    """`name=value` for each option unlike its default, nested dataclasses as `train.epochs=30`."""
    if dataclasses.is_dataclass(options):
        pairs = [
            (f.name, getattr(options, f.name), _default(f))
            for f in dataclasses.fields(options)
            if f.repr and f.name != "progress"  # --quiet, not the config's
        ]
    else:
        pairs = [(name, value, defaults.get(name, _REQUIRED)) for name, value in options.items()]
    shown = []
    for name, value, default in pairs:
        if dataclasses.is_dataclass(value) and type(default) is type(value):
            shown += _differences(value, {}, prefix=f"{prefix}{name}.")
        elif value != default or name in always:
            shown.append(f"{prefix}{name}={_value(value)}")
    return shown


_REQUIRED = object()


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return _REQUIRED


def _value(value: Any) -> str:
    """As TOML would spell it, near enough."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | Path):
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return "none" if value is None else str(value)


def _crawl(table: dict, progress: bool) -> Step:
    from crawl.board import CrawlOptions, crawl_board

    queries = table.pop("queries", None)
    if not isinstance(queries, list) or not queries:
        raise InvalidArgument('[crawl]: give the tag queries as `queries = ["1girl solo", …]`')
    options = [build(CrawlOptions, {**table, "tags": query}, "[crawl]") for query in queries]
    return Step(
        "crawl",
        options,
        _each(options, lambda ws, o: summaries.crawl_summary(crawl_board(ws, o, progress=progress), ws)),
    )


def _ingest(table: dict, progress: bool) -> Step:
    from crawl.local import ingest_folder

    folders = table.pop("folders", None)
    if not isinstance(folders, list) or not folders:
        raise InvalidArgument('[ingest]: give `folders = ["path", …]`')
    skip = ("folder", "workspace", "progress")
    _check_keywords(ingest_folder, table, "[ingest]", skip=skip)

    def ingest(ws: Path, folder: str) -> Summary:
        return summaries.ingest_summary(
            ingest_folder(Path(folder).expanduser(), ws, progress=progress, **table)
        )

    return Step(
        "ingest", {"folders": folders, **table}, _each(folders, ingest), _defaults(ingest_folder, skip)
    )


def _options_step(
    stage: str, cls_path: str, call_path: str, summary: Callable[[Any, Any, Path], Summary]
) -> Callable[[dict, bool], Step]:
    """A step whose options are one dataclass and whose work is one function (crop, tag, embed, filter);
    `summary(report, options, workspace)` says what it did."""

    def builder(table: dict, progress: bool) -> Step:
        cls, function = _load(cls_path), _load(call_path)
        if "progress" in {f.name for f in dataclasses.fields(cls)}:
            table.setdefault("progress", progress)
        if stage == "embed" and isinstance(table.setdefault("train", {}), dict):
            table["train"].setdefault("progress", progress)  # the training loop has its own bar
        options = build(cls, table, f"[{stage}]")
        return Step(stage, options, lambda ws: summary(function(ws, options), options, ws))

    return builder


def _labels(table: dict, progress: bool) -> Step:
    from curate.labels import choose_labels

    _check_keywords(choose_labels, table, "[labels]", skip=("workspace",))
    return Step(
        "labels",
        table,
        lambda ws: summaries.labels_summary(*choose_labels(ws, **table)),
        _defaults(choose_labels, ("workspace",)),
    )


def _export(table: dict, progress: bool) -> Step:
    from curate.export.stage import ExportOptions, export_dataset

    formats = table.pop("formats", None) or [table.pop("format", "parquet")]
    table.setdefault("progress", progress)
    options = [build(ExportOptions, {**table, "format": f}, "[export]") for f in formats]
    run = _each(options, lambda ws, o: summaries.export_summary(export_dataset(ws, o)))
    return Step("export", options, run, always=("format",))


def _train(table: dict, progress: bool) -> Step:
    from train.runs import TrainOptions

    table.setdefault("progress", progress)
    options = build(TrainOptions, table, "[train]")

    def run(ws: Path) -> Summary:
        from train.stage import train_stylegan

        # the workspace's latest export, and its runs/, unless the table names data and a run folder
        report = train_stylegan(dataclasses.replace(options, workspace=options.workspace or ws))
        return summaries.train_summary(report)

    return Step("train", options, run)


def _each(items: list, stage: Callable[[Path, Any], Summary]) -> Callable[[Path], Summary]:
    """The work of a step that runs once per query, folder or format: it stops at an interrupted one."""

    def run(ws: Path) -> Summary:
        said = Summary()
        for item in items:
            said += stage(ws, item)
            if said.interrupted:
                break
        return said

    return run


def _defaults(function: Callable, skip: tuple[str, ...]) -> dict[str, Any]:
    parameters = inspect.signature(function).parameters.values()
    return {p.name: p.default for p in parameters if p.name not in skip and p.default is not p.empty}


def _check_keywords(function: Callable, table: dict, where: str, *, skip: tuple[str, ...]) -> None:
    known = [name for name in inspect.signature(function).parameters if name not in skip]
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise InvalidArgument(f"{where}: unknown key {', '.join(unknown)}; known: {', '.join(known)}")


def _load(dotted: str) -> Any:
    import importlib

    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


BUILDERS: dict[str, Callable[[dict, bool], Step]] = {
    "crawl": _crawl,
    "ingest": _ingest,
    "train": _train,
    "crop": _options_step(
        "crop",
        "detect.faces.crop.CropOptions",
        "detect.faces.crop.crop_images",
        lambda report, options, ws: summaries.crop_summary(report, options.detector.kind, ws),
    ),
    "tag": _options_step(
        "tag",
        "detect.tags.tag.TagOptions",
        "detect.tags.tag.tag_faces",
        lambda report, options, ws: summaries.tag_summary(report, ws),
    ),
    "labels": _labels,
    "embed": _options_step(
        "embed",
        "embed.stage.EmbedOptions",
        "embed.stage.embed_faces",
        lambda report, options, ws: summaries.embed_summary(report),
    ),
    "filter": _options_step(
        "filter",
        "embed.filter.FilterOptions",
        "embed.filter.filter_faces",
        lambda report, options, ws: summaries.filter_summary(report, options.target_precision),
    ),
    "export": _export,
}
