"""The label vocabulary a conditional generator trains on: tag counts over the faces, and the choice.

Counts come from the tag manifest: the tagger's labels, the posts' booru tags, or either. The chosen
vocabulary is written to `<workspace>/labels.json`, which export and training read. Listed labels
(presets, --list) are read by their current names (`curate.tagnames.ALIASES`), and those no face carries
and no tagger knows (its `selected_tags.csv`) are left out with a warning.
"""

from __future__ import annotations

import csv
import json
import os
import uuid
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import pyarrow.compute as pc

from curate import registry
from curate.errors import InvalidArgument
from curate.manifest import OK, STATUS, TAG, now_utc, part_files, part_metadata, read_stage
from curate.tagnames import ALIASES, canonical_tag, current_tag
from curate.workspace import Workspace

SOURCES = ("any", "tagger", "booru")
CATEGORIES = ("general", "character", "any")
VOCABULARY_FILE = "labels.json"
TAG_LIST = "selected_tags.csv"  # a WD tagger's vocabulary, in its folder
# which tag manifest columns hold each (source, category)
_COLUMNS = {
    ("tagger", "general"): "tags_general",
    ("tagger", "character"): "tags_character",
    ("booru", "general"): "booru_general",
    ("booru", "character"): "booru_character",
}


@dataclass
class TagCounts:
    """How many tagged faces carry each tag, by category."""

    faces: int
    general: Counter[str] = field(default_factory=Counter)
    character: Counter[str] = field(default_factory=Counter)

    def of(self, category: str) -> Counter[str]:
        """One category's counts, or both (`any`)."""
        if category == "any":
            return self.general + self.character
        return self.general if category == "general" else self.character


def count_tags(ws: Workspace, source: str = "any") -> TagCounts:
    """Faces per tag over the tagged faces; `source` is tagger, booru, or any (either, counted once)."""
    if source not in SOURCES:
        raise InvalidArgument(f"--source must be one of {', '.join(SOURCES)}, got {source!r}")
    table = read_stage(ws, TAG, columns=[STATUS, *_COLUMNS.values()])
    table = table.filter(pc.equal(table[STATUS], OK))
    if table.num_rows == 0:
        raise InvalidArgument(f"{ws.root} has no tagged faces: run `curate tag` first")
    counts = TagCounts(faces=table.num_rows)
    sources = ("tagger", "booru") if source == "any" else (source,)
    for category in ("general", "character"):
        columns = [table[_COLUMNS[(s, category)]].to_pylist() for s in sources]
        for lists in zip(*columns, strict=True):
            counts.of(category).update({canonical_tag(t) for tags in lists for t in tags or ()})
    return counts


@dataclass
class Vocabulary:
    """The chosen labels, in order (the order of the label vector), and how they were chosen."""

    labels: list[str]
    counts: dict[str, int]
    faces: int
    how: dict[str, object]
    created_at: str = ""

    def write(self, ws: Workspace) -> Path:
        """Write `labels.json` atomically."""
        path = ws.root / VOCABULARY_FILE
        tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:6]}.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path

    def warnings(self) -> list[str]:
        """What the choice left out that the user should hear of (recorded in `how`)."""
        unknown = list(self.how.get("unknown") or ())
        if not unknown:
            return []
        lists = [str(path) for path in dict(self.how.get("vocabularies") or {}).values() if path]
        where = ", ".join(lists) or "no tagger vocabulary was found to look in; --tagger FOLDER names one"
        return [
            f"left out {len(unknown)} listed labels that no face carries and no tagger knows ({where}); "
            f"a label that is 0 for every image cannot be learned: {', '.join(unknown)}"
        ]


def read_vocabulary(ws: Workspace) -> Vocabulary:
    """The workspace's vocabulary; InvalidArgument when `curate labels select` has not run."""
    path = ws.root / VOCABULARY_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Vocabulary(**data)
    except FileNotFoundError:
        raise InvalidArgument(f"{path} does not exist: run `curate labels select` first") from None
    except (ValueError, TypeError) as exc:
        raise InvalidArgument(f"{path} is not a label vocabulary: {exc}") from None


def preset(name: str) -> list[str]:
    """A named label list shipped with curate (curate/presets/NAME.txt), by current names."""
    return read_list_text(_preset_text(name))


def _preset_text(name: str) -> str:
    folder = resources.files("curate.presets")
    available = sorted(p.name.removesuffix(".txt") for p in folder.iterdir() if p.name.endswith(".txt"))
    if name not in available:
        listed = ", ".join(available) or "none yet"
        raise InvalidArgument(f"no label preset {name!r} (available: {listed}); pass --list FILE instead")
    return folder.joinpath(f"{name}.txt").read_text("utf-8")


def read_list_text(text: str) -> list[str]:
    """Tags one per line or comma separated; `#` starts a comment; spaces and underscores alike; old
    names read as current ones (`twin tails` → `twintails`)."""
    return list(dict.fromkeys(current_tag(tag) for tag in _listed(text)))


def _listed(text: str) -> list[str]:
    """The list's tags as written (canonical spelling, names not updated)."""
    tags = []
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        tags += [canonical_tag(part) for part in line.split(",") if part.strip()]
    return tags


def tagger_vocabularies(ws: Workspace, tagger: str | Path | None = None) -> dict[str, Path | None]:
    """model → its selected_tags.csv, for each tagger that tagged the workspace (the tag manifest's part
    metadata), or for `tagger`, a folder given instead. A folder's list is used, or a hub id's when the
    hub cache already holds it (nothing is fetched); None where it is not found here."""
    if tagger is not None:
        path = Path(tagger).expanduser() / TAG_LIST
        if not path.is_file():
            raise InvalidArgument(f"--tagger {tagger}: there is no {TAG_LIST} there")
        return {str(tagger): path}
    found: dict[str, Path | None] = {}
    for part in part_files(ws, TAG):
        model = part_metadata(part)["params"].get("model")
        if model and model not in found:
            local = Path(model).expanduser() / TAG_LIST
            found[model] = local if local.is_file() else registry.cached_hub_file(model, TAG_LIST)
    return found


def read_tag_names(path: Path) -> set[str]:
    """The canonical names a tagger's selected_tags.csv lists."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            return {canonical_tag(row["name"]) for row in csv.DictReader(handle)}
    except (OSError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise InvalidArgument(
            f"{path} is not a tagger's tag list (tag_id,name,category,count): {exc}"
        ) from None


def select_labels(
    counts: TagCounts,
    *,
    top: int | None = None,
    wanted: Sequence[str] | None = None,
    category: str = "general",
    min_count: int = 1,
    exclude: Iterable[str] = (),
    how: dict[str, object] | None = None,
    known: Collection[str] | None = None,
) -> Vocabulary:
    """The `top` most frequent tags of `category`, or the `wanted` list in its own order, less `exclude`.

    Tags under `min_count` faces are left out of the top; a wanted one is an error, since its label
    would be (almost) zero for every image. With `known` (the names a tagger can give), a wanted tag
    that no face carries and that is not known is left out instead, and named in `how["unknown"]`: an
    old or misspelt name, which no --min-count would help.
    """
    if category not in CATEGORIES:
        raise InvalidArgument(f"--category must be one of {', '.join(CATEGORIES)}, got {category!r}")
    if (top is None) == (wanted is None):
        raise InvalidArgument("choose the labels with exactly one of --top, --list or --preset")
    pool = counts.of(category) if wanted is None else counts.of("any")
    excluded = {current_tag(t) for t in exclude}
    unknown: list[str] = []
    if wanted is None:
        if top is None or top < 1:
            raise InvalidArgument("--top must be at least 1")
        ranked = sorted(pool.items(), key=lambda item: (-item[1], item[0]))
        chosen = [t for t, n in ranked if n >= min_count and t not in excluded][:top]
    else:
        chosen = [t for t in dict.fromkeys(canonical_tag(w) for w in wanted) if t not in excluded]
        if known is not None:
            unknown = [t for t in chosen if not pool[t] and t not in known]
            chosen = [t for t in chosen if t not in unknown]
        rare = [f"{t} ({pool[t]})" for t in chosen if pool[t] < min_count]
        if rare:
            raise InvalidArgument(
                f"{len(rare)} listed tags are on fewer than {max(min_count, 1)} of {counts.faces:,} faces: "
                + ", ".join(rare[:12])
                + (" …" if len(rare) > 12 else "")
            )
    if not chosen:
        raise InvalidArgument("no tag is left to choose: lower --min-count or change the selection")
    return Vocabulary(
        labels=chosen,
        counts={t: pool[t] for t in chosen},
        faces=counts.faces,
        how={**(how or {}), **({"unknown": unknown} if unknown else {})},
        created_at=now_utc().isoformat(),
    )


def label_stats(
    workspace: str | Path, *, source: str = "any", category: str = "general", top: int = 40
) -> tuple[TagCounts, list[tuple[str, int]], Path]:
    """Counts, the `top` most frequent tags of `category`, and a PNG bar chart of them in report/."""
    from curate.charts import bar_chart

    if category not in CATEGORIES:
        raise InvalidArgument(f"--category must be one of {', '.join(CATEGORIES)}, got {category!r}")
    ws = Workspace.open(workspace)
    counts = count_tags(ws, source)
    ranked = sorted(counts.of(category).items(), key=lambda item: (-item[1], item[0]))[:top]
    title = f"{category} tags ({source}) on {counts.faces:,} faces"
    chart = bar_chart(
        ranked, ws.root / "report" / f"tags-{category}-{source}.png", title=title, total=counts.faces
    )
    return counts, ranked, chart


def choose_labels(
    workspace: str | Path,
    *,
    top: int | None = None,
    list_file: str | Path | None = None,
    preset_name: str | None = None,
    source: str = "any",
    category: str = "general",
    min_count: int = 1,
    exclude: Iterable[str] = (),
    tagger: str | Path | None = None,
) -> tuple[Vocabulary, Path]:
    """Choose the vocabulary (see `select_labels`) and write it to the workspace's labels.json.

    A list or preset is read by current names; its labels that no face carries and that no tagger
    vocabulary lists (see `tagger_vocabularies`; none found, none listed) are left out, and
    `Vocabulary.warnings()` says which.
    """
    if sum(x is not None for x in (top, list_file, preset_name)) != 1:
        raise InvalidArgument("choose the labels with exactly one of --top, --list or --preset")
    ws = Workspace.open(workspace)
    text = None
    if list_file is not None:
        try:
            text = Path(list_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise InvalidArgument(f"cannot read the label list {list_file}: {exc}") from None
    elif preset_name is not None:
        text = _preset_text(preset_name)
    wanted, known, listing = None, None, {}
    if text is not None:
        wanted = read_list_text(text)
        renamed = {t: ALIASES[t] for t in _listed(text) if t in ALIASES}
        vocabularies = tagger_vocabularies(ws, tagger)
        known = {name for path in vocabularies.values() if path for name in read_tag_names(path)}
        listing = {"renamed": renamed, "vocabularies": {m: p and str(p) for m, p in vocabularies.items()}}
    how = {
        "top": top,
        "list": str(list_file) if list_file else None,
        "preset": preset_name,
        "source": source,
        "category": category,
        "min_count": min_count,
        "exclude": sorted(current_tag(t) for t in exclude),
        **listing,
    }
    vocabulary = select_labels(
        count_tags(ws, source),
        top=top,
        wanted=wanted,
        category=category,
        min_count=min_count,
        exclude=exclude,
        how=how,
        known=known,
    )
    return vocabulary, vocabulary.write(ws)
