"""The README that travels with an export: what is in it, where it came from, how to load it."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from curate.export.select import Selection
    from curate.export.stage import ExportOptions
    from curate.workspace import Workspace

LOADING = {
    "parquet": "pandas.read_parquet('data')  # or pyarrow.dataset.dataset('data'), duckdb, datasets",
    "stylegan": "python train.py --data dataset.zip --cond 1  # NVlabs stylegan2-ada-pytorch",
    "imagefolder": "datasets.load_dataset('imagefolder', data_dir='.')",
}


def dataset_card(
    options: ExportOptions, selection: Selection, vocabulary: list[str], counts, ws: Workspace
) -> str:
    """Markdown: counts per split, the label table, the selection and how to load the files."""
    per_split = {split: Counter() for split in counts}
    for sample in selection.samples:
        per_split[sample.split].update(set(sample.labels) & set(vocabulary))
    lines = [
        f"# Anime faces from `{ws.root.name}`",
        "",
        f"Exported by curate as `{options.format}`, {options.resolution}×{options.resolution} RGB PNGs.",
        "",
        "| split | faces |",
        "|---|---|",
        *(f"| {split} | {count:,} |" for split, count in counts.items()),
        "",
        "Selected: "
        + ("the faces the filter kept" if selection.filtered else "every face (no filter ran)")
        + "; left out: "
        + (", ".join(f"{reason} {n:,}" for reason, n in sorted(selection.dropped.items())) or "none")
        + ".",
        "",
    ]
    if vocabulary:
        lines += [
            f"## Labels ({len(vocabulary)}, the order of the label vector)",
            "",
            "| # | label | train | validation |",
            "|---|---|---|---|",
            *(
                f"| {i} | {label} | {per_split['train'][label]:,} | {per_split['validation'][label]:,} |"
                for i, label in enumerate(vocabulary)
            ),
            "",
        ]
    else:
        lines += [
            "No label vocabulary was chosen (`curate labels select`), so there are no label vectors.",
            "",
        ]
    lines += ["## Loading", "", "```python", LOADING[options.format], "```", ""]
    return "\n".join(lines)
