"""`curate generate`: images of a trained run by seed and labels, as PNGs and labelled grids.

Modes: `images` (one PNG per seed and a grid: fixed labels, varied noise), `tags` (a grid of label sets
by row under the same z per column), `mix` (style mixing of seed pairs) and `interpolate` (a strip and
GIF between seeds, in W); `--edit` moves every w along fitted directions and adds a strip per edit.
Output goes to a temporary folder renamed into place at the end, with params.json recording every
parameter, so a folder is whole or absent and can be made again from its record.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from curate.errors import InvalidArgument
from train.pngwriter import PngWriter

if TYPE_CHECKING:
    import torch

    from train.directions import Directions
    from train.inference import TrainedGenerator

MODES = ("images", "tags", "mix", "interpolate")
NOISE_MODES = ("const", "random", "none")
GRID_COLUMNS = 8
GRID_MAX = 64  # images of the `images` grid: the first 64 seeds, whatever --n is
EDIT_STEPS = (-1.0, -0.5, 0.0, 0.5, 1.0)  # an edit strip's strengths, times the strength asked for
GIF_FRAME_MS = 80
PARAMS = "params.json"


@dataclass
class GenerateOptions:
    run: Path  # a run folder or a snapshot file
    snapshot: str | None = None  # file name or kimg; default the newest
    out: Path | None = None  # default RUN/generated/<name from the parameters>
    n: int | None = None  # images (default 16); columns with --vary tags (default 8)
    seed: int = 0
    tags: str = ""  # one label set for every image, comma-separated
    truncation: float = 0.7
    truncation_cutoff: int | None = None
    noise_mode: str = "const"
    vary: str = "noise"  # noise: one label set, a grid of seeds; tags: a label set per row
    rows: str | None = None  # --vary tags: "a,b;c" (default: label sets of the run's data)
    mix: str | None = None  # "A,B" or "A,B;C,D": style mixing of seed pairs
    interpolate: str | None = None  # "1,5,9": seeds to walk between
    steps: int = 8  # frames from one seed to the next, both included
    gif: bool = False
    edit: str = ""  # "smile=+1.5,glasses=-1"
    batch: int = 32
    device: str = "auto"
    force: bool = False
    progress: bool = True


@dataclass
class GenerateReport:
    out: Path
    mode: str
    snapshot: Path
    images: int = 0  # images generated
    files: dict[str, Path] = field(default_factory=dict)  # what a person looks at: grid, strips, GIF
    image_files: list[str] = field(default_factory=list)  # mode `images`: the first and last PNG per seed
    seconds: float = 0.0
    up_to_date: bool = False
    interrupted: bool = False

    @property
    def images_per_sec(self) -> float:
        return self.images / max(self.seconds, 1e-9)


@dataclass
class Job:
    """One generation: the generator, the parsed options and where files go."""

    options: GenerateOptions
    gen: TrainedGenerator
    mode: str
    row: list[int]  # the label set of --tags
    plan: dict[str, Any]  # the mode's parsed inputs: count, label rows, seed pairs, path seeds
    edits: dict[str, float]
    directions: Directions | None
    folder: Path  # the temporary folder being filled
    writer: PngWriter
    report: GenerateReport

    def ws(self, seeds: list[int], row: list[int] | None = None, *, edited: bool = True) -> torch.Tensor:
        """Truncated (and edited) ws of `seeds` under label set `row` (default --tags)."""
        from train.directions import edit_ws
        from train.inference import seed_z

        o = self.options
        z = seed_z(seeds, self.gen.z_dim)
        rows = [self.row if row is None else row] * len(seeds)
        ws = self.gen.ws(z, rows, truncation=o.truncation, truncation_cutoff=o.truncation_cutoff)
        if edited and self.edits:
            assert self.directions is not None
            ws = edit_ws(ws, self.directions, self.edits)
        return ws

    def render(self, ws: torch.Tensor, noise_seeds: list[int]) -> list[np.ndarray]:
        """Every image of `ws` (uint8 HWC), noise by seed when --noise-mode random."""
        batches = self.gen.images(
            ws, noise_mode=self.options.noise_mode, batch=self.options.batch, noise_seeds=noise_seeds
        )
        images = [image for batch in batches for image in batch]
        self.report.images += len(images)
        return images

    def render_seeds(self, seed_batches: Iterable[list[int]]) -> Iterator[np.ndarray]:
        """The images (uint8 NHWC) of each batch of seeds under --tags, the next batch's ws made and
        queued on the device while the caller writes this one's files."""
        batches = ((self.ws(seeds), seeds) for seeds in seed_batches)
        for images in self.gen.stream(batches, noise_mode=self.options.noise_mode):
            self.report.images += len(images)
            yield images

    def names(self, row: list[int]) -> list[str]:
        return [self.gen.label_names[i] for i in row]


def generate(options: GenerateOptions) -> GenerateReport:
    """Generate what `options` asks for into a new folder (see the module docstring)."""
    from train.inference import load_generator

    mode = _mode(options)
    _check_numbers(options)
    gen = load_generator(options.run, options.snapshot, options.device)
    row = gen.labels(options.tags)
    edits, directions = _edits(options, gen)
    plan = _plan(options, gen, mode)
    if options.truncation_cutoff is not None and not 1 <= options.truncation_cutoff <= gen.num_ws:
        raise InvalidArgument(f"--truncation-cutoff must be 1 to {gen.num_ws} (this network's ws)")
    params = _params(options, gen, mode, row, plan, edits, directions)
    final = options.out or _run_folder(options, gen) / "generated" / _folder_name(mode, options, gen, params)
    report = GenerateReport(Path(final), mode, gen.snapshot)
    if _already_done(report.out, params, options.force):
        report.up_to_date = True
        return report
    folder = report.out.with_name(f".{report.out.name}.{os.getpid()}-{uuid.uuid4().hex[:6]}.tmp")
    folder.mkdir(parents=True)
    writer = PngWriter()
    job = Job(options, gen, mode, row, plan, edits, directions, folder, writer, report)
    with ThreadPoolExecutor(max_workers=1) as hasher:
        digest = hasher.submit(_sha256, gen.snapshot)  # a large file: hashed while images are made
        start = time.perf_counter()
        try:
            from train import generate_modes

            {"images": generate_modes.images, "tags": generate_modes.tags_grid, "mix": generate_modes.mix,
             "interpolate": generate_modes.interpolate}[mode](job)  # fmt: skip
            if edits:
                generate_modes.edit_strips(job)
            writer.close()
            report.seconds = time.perf_counter() - start
        except KeyboardInterrupt:
            writer.abandon()
            shutil.rmtree(folder, ignore_errors=True)
            report.interrupted = True
            return report
        except BaseException:
            writer.abandon()
            shutil.rmtree(folder, ignore_errors=True)
            raise
        params["snapshot"]["sha256"] = digest.result()
    params["files"] = {name: path.name for name, path in report.files.items()}
    params["images"] = report.images
    _write_json(folder / PARAMS, params)
    _move_into_place(folder, report.out)
    report.files = {name: report.out / path.relative_to(folder) for name, path in report.files.items()}
    return report


def _mode(o: GenerateOptions) -> str:
    if o.vary not in ("noise", "tags"):
        raise InvalidArgument(f"--vary must be noise or tags, not {o.vary!r}")
    if o.noise_mode not in NOISE_MODES:
        raise InvalidArgument(f"--noise-mode must be one of {', '.join(NOISE_MODES)}, not {o.noise_mode!r}")
    chosen = (("tags", o.vary == "tags"), ("mix", o.mix), ("interpolate", o.interpolate))
    asked = [mode for mode, on in chosen if on]
    if len(asked) > 1:
        flags = {"tags": "--vary tags", "mix": "--mix", "interpolate": "--interpolate"}
        raise InvalidArgument(f"{' and '.join(flags[m] for m in asked)} are separate modes: give one")
    if o.rows and o.vary != "tags":
        raise InvalidArgument("--rows goes with --vary tags")
    if o.gif and not o.interpolate:
        raise InvalidArgument("--gif goes with --interpolate SEEDS")
    return asked[0] if asked else "images"


def _check_numbers(o: GenerateOptions) -> None:
    if o.n is not None and o.n < 1:
        raise InvalidArgument(f"--n must be at least 1, not {o.n}")
    if o.batch < 1:
        raise InvalidArgument(f"--batch must be at least 1, not {o.batch}")
    if o.steps < 2:
        raise InvalidArgument(f"--steps must be at least 2 (the two seeds), not {o.steps}")


def _edits(o: GenerateOptions, gen: TrainedGenerator) -> tuple[dict[str, float], Directions | None]:
    """The parsed --edit, checked against the run's directions before anything is generated."""
    from train.directions import load_directions, parse_edits

    edits = parse_edits(o.edit) if o.edit else {}
    if not edits:
        return {}, None
    directions = load_directions(_run_folder(o, gen))
    for name in edits:
        directions.index(name)  # an unknown name fails here, naming the nearest
    if directions.vectors.shape[-1] != gen.G.w_dim:
        width = directions.vectors.shape[-1]
        raise InvalidArgument(f"the directions are {width}-wide but this generator's w is {gen.G.w_dim}")
    return edits, directions


def _plan(o: GenerateOptions, gen: TrainedGenerator, mode: str) -> dict[str, Any]:
    """The mode's inputs, parsed and checked before anything is generated."""
    if mode == "images":
        return {"n": o.n or 16}
    if mode == "tags":
        from train.generate_modes import label_rows

        return {"n": o.n or 8, "rows": label_rows(gen, o.rows, o.seed)}
    if mode == "mix":
        pairs = [parse_seeds(part, "--mix") for part in re.split(r"[;/]", str(o.mix)) if part.strip()]
        if not pairs or any(len(pair) != 2 for pair in pairs):
            raise InvalidArgument(f"--mix {o.mix!r}: give seed pairs A,B (several as A,B;C,D)")
        return {"pairs": pairs}
    seeds = parse_seeds(str(o.interpolate), "--interpolate")
    if len(seeds) < 2:
        raise InvalidArgument(f"--interpolate {o.interpolate!r}: give two seeds or more, e.g. 1,5,9")
    return {"seeds": seeds}


def _run_folder(o: GenerateOptions, gen: TrainedGenerator) -> Path:
    run = Path(o.run).expanduser()
    return run if run.is_dir() else gen.snapshot.parent


def parse_seeds(text: str, what: str) -> list[int]:
    """`1,5,9` → [1, 5, 9]."""
    try:
        seeds = [int(part) for part in re.split(r"[,\s]+", text.strip()) if part]
    except ValueError:
        raise InvalidArgument(f"{what} {text!r}: give whole-number seeds separated by commas") from None
    if any(seed < 0 for seed in seeds):
        raise InvalidArgument(f"{what} {text!r}: seeds are 0 or more")
    return seeds


def _params(
    o: GenerateOptions,
    gen: TrainedGenerator,
    mode: str,
    row: list[int],
    plan: dict[str, Any],
    edits: dict,
    directions: Directions | None,
) -> dict[str, Any]:
    """Everything that decides the images (the `key`), then what was used to make them."""
    from curate import __version__

    stat = gen.snapshot.stat()
    key = {
        "mode": mode, "n": plan.get("n"), "seed": o.seed, "tags": [gen.label_names[i] for i in row],
        "truncation": o.truncation, "truncation_cutoff": o.truncation_cutoff, "noise_mode": o.noise_mode,
        "rows": [[gen.label_names[i] for i in r] for r in plan["rows"]] if "rows" in plan else None,
        "mix": plan.get("pairs"), "interpolate": plan.get("seeds"),
        "steps": o.steps if mode == "interpolate" else None, "gif": o.gif, "edit": edits,
        "snapshot": gen.snapshot.name, "snapshot_bytes": stat.st_size, "snapshot_mtime_ns": stat.st_mtime_ns,
    }  # fmt: skip
    params: dict[str, Any] = {
        "key": key,
        "command": _command(o, gen, plan),
        "snapshot": {"path": str(gen.snapshot.resolve()), "name": gen.snapshot.name, "nimg": gen.nimg},
        "network": gen.network,
        "label_names": gen.label_names,
        "batch": o.batch,
        "device": str(gen.device),
        "curate_version": __version__,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if directions is not None:
        params["directions"] = {"names": list(directions.names), "info": directions.info}
    return params


def _command(o: GenerateOptions, gen: TrainedGenerator, plan: dict[str, Any]) -> list[str]:
    """The `curate generate` arguments that make the same images again (into another folder): the
    snapshot, counts and label rows as resolved, not as defaulted."""
    words = ["curate", "generate", "--run", str(Path(o.run).expanduser().resolve())]
    words += ["--snapshot", gen.snapshot.name]
    if "n" in plan:
        words += ["--n", str(plan["n"]), "--seed", str(o.seed)]
    if "rows" in plan:  # the label sets used, also when they were drawn from the data
        rows = [",".join(gen.label_names[i] for i in r) or "-" for r in plan["rows"]]
        words += ["--vary", "tags", "--rows", ";".join(rows)]
    if "pairs" in plan:
        words += ["--mix", ";".join(f"{a},{b}" for a, b in plan["pairs"])]
    if "seeds" in plan:
        words += ["--interpolate", ",".join(map(str, plan["seeds"])), "--steps", str(o.steps)]
        words += ["--gif"] if o.gif else []
    if o.tags.strip():
        words += ["--tags", o.tags]
    words += ["--truncation", f"{o.truncation:g}", "--noise-mode", o.noise_mode]
    if o.truncation_cutoff is not None:
        words += ["--truncation-cutoff", str(o.truncation_cutoff)]
    return words + (["--edit", o.edit] if o.edit.strip() else [])


def _folder_name(mode: str, o: GenerateOptions, gen: TrainedGenerator, params: dict) -> str:
    """Readable and stable: mode, snapshot, seeds and labels, then a hash of every parameter."""
    kimg = gen.snapshot.stem.removeprefix("snapshot-")
    parts = [mode, kimg]
    if mode in ("images", "tags"):
        parts += [f"seed{o.seed}", f"n{params['key']['n']}"]
    elif mode == "mix":
        parts.append(re.sub(r"[^0-9]+", "_", str(o.mix)).strip("_"))
    else:
        parts.append(re.sub(r"[^0-9]+", "_", str(o.interpolate)).strip("_"))
    if params["key"]["tags"]:
        parts.append(safe_name("+".join(params["key"]["tags"]))[:40])
    digest = hashlib.sha256(json.dumps(params["key"], sort_keys=True).encode()).hexdigest()[:8]
    return "-".join([*parts, digest])


def safe_name(text: str) -> str:
    """A label name as part of a file name."""
    return re.sub(r"[^\w.+-]+", "_", text).strip("_") or "_"


def _already_done(out: Path, params: dict, force: bool) -> bool:
    """True when `out` holds these very images; an error when it holds something else (unless --force)."""
    if not out.exists() or force:
        return False
    if out.is_file():
        raise InvalidArgument(f"--out {out} is a file")
    try:
        before = json.loads((out / PARAMS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        before = None
    if before is not None and before.get("key") == params["key"]:
        return True
    if any(out.iterdir()):
        raise InvalidArgument(
            f"{out} already holds other files{' (other parameters)' if before else ''}: give another "
            "--out, or --force to replace it"
        )
    return False


def _move_into_place(folder: Path, out: Path) -> None:
    """Rename the finished folder to `out`; an `out` being replaced (--force) goes only after."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.{uuid.uuid4().hex[:6]}.old")
        os.replace(out, old)
    os.replace(folder, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()
