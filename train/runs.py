"""Training runs on disk: the options of `curate train`, run folders, and what resuming may change.

A run folder (`WORKSPACE/runs/NAME/` or `--out`) holds `options.json`, `metrics.jsonl` (a line per
tick), sample grids (`fakes-*.png`) and snapshots (`snapshot-*.pt`). Running the same command again
continues the run from its newest snapshot; options that would change what the run computes must then
be the ones it started with.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from curate.errors import InvalidArgument
from train.snapshot import latest_snapshot, snapshot_nimg

OPTIONS_FILE = "options.json"
METRICS_FILE = "metrics.jsonl"
AUGMENT_MODES = ("ada", "fixed", "none")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class TrainOptions:
    """`curate train`'s options; None takes the preset's (`cfg`) value."""

    data: Path | None = None  # an export (zip, Parquet, imagefolder) or a folder of images
    workspace: Path | None = None  # its latest export, and runs/ for the run folder
    out: Path | None = None  # the run folder; default WORKSPACE/runs/<dataset>-<cfg>-<res>
    cfg: str = "auto"
    kimg: float = 25000  # length of training, thousands of real images shown to D
    batch: int | None = None
    batch_gpu: int | None = None  # per process and round (gradient accumulation), for memory
    gamma: float | None = None  # R1 weight
    lr: float | None = None
    ema_kimg: float | None = None
    mapping_layers: int | None = None
    channel_base: int | None = None
    channel_max: int | None = None
    z_dim: int | None = None
    mbstd_group: int | None = None
    style_mixing: float | None = None
    pl_weight: float | None = None
    cond: bool = True  # condition on the labels when the data has them
    mirror: bool = False  # x-flips of the reals
    aug: str = "ada"
    target: float = 0.6  # ADA's overfitting target for sign(D(real))
    aug_p: float = 0.2  # the probability with --aug fixed
    seed: int = 0
    precision: str = "auto"  # auto: bf16 in the top resolutions on CUDA, fp32 on the CPU
    compile: bool = False
    device: str = "auto"
    tick_kimg: float = 4.0
    snap_ticks: int = 50  # snapshot and grid every this many ticks
    cache: str = "auto"  # decoded reals: auto, gpu, ram or none (stream from disk)
    cache_gb: float | None = None
    workers: int = 3
    resume: Path | None = None  # a snapshot (or run folder) to continue from
    force: bool = False  # start again in a run folder that has snapshots
    init: Path | None = None  # weights a new run starts from: curate snapshot, NVlabs pickle, rosinality
    metrics: list[str] = field(default_factory=list)  # measured at each snapshot, e.g. fid50k_full
    metrics_n: int | None = None  # generated images per metric instead of the metric's own count
    progress: bool = True

    def check(self) -> None:
        if self.aug not in AUGMENT_MODES:
            raise InvalidArgument(f"--aug {self.aug!r}: choose one of {', '.join(AUGMENT_MODES)}")
        if self.precision not in PRECISIONS:
            raise InvalidArgument(f"--precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if self.kimg <= 0 or self.tick_kimg <= 0 or self.snap_ticks < 1:
            raise InvalidArgument("--kimg and --tick must be positive and --snap at least 1")
        if not 0 <= self.aug_p < 1 or not 0 < self.target < 1:
            raise InvalidArgument("--aug-p must be in [0, 1) and --target in (0, 1)")
        if self.data is None and self.workspace is None and self.resume is None:
            raise InvalidArgument("give --data (an export or a folder of images) or --workspace")
        if self.force and self.resume is not None:
            raise InvalidArgument("--force starts again; --resume continues: give one of them")
        if self.metrics_n is not None and self.metrics_n < 1:
            raise InvalidArgument("--metrics-n must be at least 1")
        if self.metrics:
            from train.quality import parse_metrics

            parse_metrics(self.metrics, self.metrics_n)  # a typo fails now, not after hours of training


# What may differ when a run continues: how long it runs, how often it reports and measures, and how
# it is fed and run, none of which changes what is computed (--init only shapes a new run's start).
# Everything else must match the run's options.
RESUMABLE_CHANGES = frozenset(
    {"kimg", "tick_kimg", "snap_ticks", "cache", "cache_gb", "workers", "device", "compile", "progress",
     "resume", "force", "workspace", "out", "data", "init", "metrics", "metrics_n"}
)  # fmt: skip


def options_record(options: TrainOptions) -> dict[str, Any]:
    """The options as JSON-able values."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()}


def changed_options(started: dict[str, Any], now: TrainOptions) -> list[str]:
    """`name: old → new` for each option that differs from the run's and may not change on resume."""
    current = options_record(now)
    names = [f.name for f in fields(TrainOptions) if f.name not in RESUMABLE_CHANGES]
    return [
        f"--{n.replace('_', '-')}: {started.get(n)!r} → {current[n]!r}"
        for n in names
        if started.get(n) != current[n]
    ]


def run_name(data: Path, cfg: str, resolution: int, c_dim: int) -> str:
    """`<dataset>-<cfg>-<res>[-cond<c>]`, e.g. `stylegan-auto-256-cond59`."""
    stem = data.stem if data.is_file() else data.name
    if stem in ("dataset", "data", "train") and data.parent.name:
        stem = data.parent.name
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-") or "data"
    return f"{stem}-{cfg}-{resolution}" + (f"-cond{c_dim}" if c_dim else "")


def choose_run_folder(root: Path, name: str, options: TrainOptions) -> Path:
    """`root/name`, or `root/name-2`, … when that folder holds a run with other options."""
    for number in range(1, 1000):
        candidate = root / (name if number == 1 else f"{name}-{number}")
        started = read_options(candidate)
        if started is None or not changed_options(started, options):
            return candidate
    raise InvalidArgument(f"{root} holds 999 runs named {name}-*: give --out")


def read_options(run: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((run / OPTIONS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record.get("options") if isinstance(record, dict) else None


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write a JSON file atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:6]}.tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def trim_metrics(run: Path, nimg: int) -> None:
    """Drop metrics lines past `nimg` (a run resumed from an earlier snapshot recomputes them)."""
    path = run / METRICS_FILE
    if not path.is_file():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines() if _line_nimg(line) <= nimg]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)


def _line_nimg(line: str) -> int:
    try:
        return int(json.loads(line).get("nimg", 0))
    except (ValueError, AttributeError):
        return 0


@dataclass
class RunSummary:
    """What `curate status` shows of a run."""

    name: str
    path: Path
    kimg: float  # of the newest snapshot
    target_kimg: float | None
    snapshots: int


def list_runs(runs_root: Path) -> list[RunSummary]:
    """Every run folder under `runs_root` with the kimg of its newest snapshot (from the name)."""
    from train.snapshot import list_snapshots

    summaries = []
    for run in sorted(p for p in runs_root.iterdir() if p.is_dir()) if runs_root.is_dir() else []:
        if not (run / OPTIONS_FILE).is_file():
            continue
        options = read_options(run) or {}
        snapshots = list_snapshots(run)
        nimg = snapshot_nimg(snapshots[-1]) if snapshots else 0
        summaries.append(RunSummary(run.name, run, (nimg or 0) / 1000, options.get("kimg"), len(snapshots)))
    return summaries


def set_aside(run: Path, paths: list[Path], label: str) -> Path | None:
    """Move `paths` (files of the run) into `run/<label>-<time>/`, so nothing trained is deleted."""
    import shutil
    import time

    if not paths:
        return None
    folder = run / f"{label}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder.mkdir()
    for path in paths:
        shutil.move(str(path), folder / path.name)
    return folder


def run_files(run: Path, after_nimg: int = -1) -> list[Path]:
    """The run's snapshots, grids and records; with `after_nimg`, only snapshots and grids past it."""
    from train.snapshot import list_snapshots

    snapshots = [p for p in list_snapshots(run) if (snapshot_nimg(p) or 0) > after_nimg]
    grids = [
        run / f"fakes-{p.stem.removeprefix('snapshot-')}{ext}" for p in snapshots for ext in (".png", ".json")
    ]
    found = snapshots + [p for p in grids if p.is_file()]
    if after_nimg < 0:
        extra = [
            run / n for n in (OPTIONS_FILE, METRICS_FILE, "reals.png", "fakes-init.png", "fakes-init.json")
        ]
        found += [p for p in extra if p.is_file()]
    return found


def resume_point(options: TrainOptions, run: Path) -> Path | None:
    """The snapshot to continue from: --resume's, or the run folder's newest (None: start afresh)."""
    if options.resume is not None:
        path = Path(options.resume)
        if path.is_dir():
            found = latest_snapshot(path)
            if found is None:
                raise InvalidArgument(f"--resume {path}: the folder has no snapshot-*.pt")
            return found
        if not path.is_file():
            raise InvalidArgument(f"--resume {path}: no such snapshot")
        return path
    return None if options.force else latest_snapshot(run)
