"""What a stage's report says to a person: the lines its command prints, which `curate run` prints too.

Lines may carry rich markup (the stage's name in bold); `plain` takes it off for other outputs.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from rich.markup import escape

if TYPE_CHECKING:
    from crawl.board import CrawlReport
    from crawl.local import IngestReport
    from curate.export.stage import ExportReport
    from curate.labels import Vocabulary
    from detect.faces.crop import CropReport
    from detect.faces.detect_train import DetectTrainReport
    from detect.tags.tag import TagReport
    from detect.tags.tag_train import TagTrainReport
    from embed.filter import FilterReport
    from embed.stage import EmbedReport
    from train.direction_fit import DirectionsReport
    from train.generate import GenerateReport
    from train.quality import MetricsReport
    from train.session import TrainReport


@dataclass
class Summary:
    lines: list[str] = field(default_factory=list)  # for stdout
    warnings: list[str] = field(default_factory=list)  # for stderr
    interrupted: bool = False  # Ctrl-C stopped the stage after it saved what finished

    def __add__(self, other: Summary) -> Summary:
        return Summary(
            self.lines + other.lines, self.warnings + other.warnings, self.interrupted or other.interrupted
        )


def plain(line: str) -> str:
    """The line without its markup."""
    from rich.text import Text

    return Text.from_markup(line).plain


def outcome_lines(outcomes: Counter[tuple[str, str | None]]) -> list[str]:
    """Rows by status, with their error codes: `  failed        3  (decode_error 2, missing_file 1)`."""
    from curate.manifest import STATUSES  # pyarrow: not on the path of `curate --help`

    lines = []
    for status in STATUSES:
        codes = Counter({code: n for (s, code), n in outcomes.items() if s == status})
        total = sum(codes.values())
        if total:
            detail = ", ".join(f"{code} {n}" for code, n in codes.most_common() if code)
            lines.append(f"  {status:<8}{total:>8,}" + (f"  ({detail})" if detail else ""))
    return lines


def crawl_summary(report: CrawlReport, workspace: str | Path) -> Summary:
    if report.up_to_date:
        return Summary(
            [
                f"crawl of '{report.query}' is already complete in {workspace}: nothing to do.",
                "A larger --limit extends it; --retry-failed tries failed posts again; --force redoes it.",
            ]
        )
    total = f" of {report.total:,} on the board" if report.total is not None else ""
    lines = [f"[bold]crawl[/bold] '{report.query}': {report.listed:,} posts listed{total}"]
    if report.already_done:
        lines.append(f"  {report.already_done:,} were already done")
    lines += outcome_lines(report.outcomes)
    rate = f"{report.written / max(report.seconds, 1e-9):.1f} posts/s"
    lines.append(
        f"  {report.bytes / 1e6:.1f} MB in {report.seconds:.1f} s ({rate}), {report.retries} retries"
    )
    if report.exhausted:
        lines.append("  the board has no more posts for this query")
    return Summary(lines, interrupted=report.interrupted)


def ingest_summary(report: IngestReport) -> Summary:
    if not report.written:
        return Summary(
            [f"all {report.listed:,} images under {report.root} are already ingested: nothing to do."],
            interrupted=report.interrupted,
        )
    lines = [
        f"[bold]ingest[/bold] {report.root}: {report.listed:,} images, {report.already_done:,} already done",
        *outcome_lines(report.outcomes),
        f"  {report.bytes / 1e6:.1f} MB in {report.seconds:.1f} s",
    ]
    return Summary(lines, interrupted=report.interrupted)


def _all_done(done: int, things: str, workspace: str | Path, state: str, hint: str) -> Summary:
    return Summary([f"all {done:,} {things} in {workspace} are already {state}: nothing to do.", hint])


def crop_summary(report: CropReport, detector: str, workspace: str | Path) -> Summary:
    if not report.images and not report.interrupted:
        hint = "--retry-failed tries failed images again; --force redoes them all."
        return _all_done(report.already_done, "images", workspace, "cropped", hint)
    lines = [
        f"[bold]crop[/bold] ({detector}): {report.images:,} images, {report.faces:,} faces cropped, "
        f"{report.already_done:,} images already done",
        *outcome_lines(report.outcomes),
        f"  {report.seconds:.1f} s ({report.images / max(report.seconds, 1e-9):.1f} images/s)",
    ]
    return Summary(lines, interrupted=report.interrupted)


def detect_train_summary(report: DetectTrainReport) -> Summary:
    if report.up_to_date:
        return Summary(
            [
                f"{report.last} is already trained for {report.steps:,} steps: nothing to do.",
                "A larger --steps goes on; --force starts again.",
            ]
        )
    skipped = f", {report.skipped_images:,} left out under --min-score" if report.skipped_images else ""
    loss = f", recent loss {report.recent_loss:.4f}" if report.recent_loss is not None else ""
    lines = [
        f"[bold]detect-train[/bold] on {report.labels}: {report.train_images:,} images with "
        f"{report.boxes:,} faces, {report.val_images:,} held out{skipped}",
        f"  steps {report.resumed_from:,} → {report.steps:,}{loss}",
    ]
    if report.validation:
        by_step = ", ".join(f"{step}: {ap:.3f}" for step, ap in report.validation)
        lines.append(f"  held-out AP@0.5 by step: {by_step}")
    model = report.best or report.last
    lines += [f"  checkpoint {model}", f"  use it: curate crop --detector frcnn --model {model}"]
    return Summary(lines)


def tag_summary(report: TagReport, workspace: str | Path) -> Summary:
    if not report.faces and not report.interrupted:
        hint = "--retry-failed tags failed faces again; --force tags them all."
        return _all_done(report.already_done, "faces", workspace, "tagged", hint)
    lines = [
        f"[bold]tag[/bold]: {report.faces:,} faces, {report.already_done:,} already done",
        *outcome_lines(report.outcomes),
    ]
    if report.labels:
        common = ", ".join(f"{name}: {n}" for name, n in report.labels.most_common(8))
        lines.append(f"  most given: {common}")
    lines.append(f"  {report.seconds:.1f} s ({report.faces / max(report.seconds, 1e-9):.2f} faces/s)")
    return Summary(lines, interrupted=report.interrupted)


def tag_train_summary(report: TagTrainReport, backbone: str) -> Summary:
    if report.up_to_date:
        return Summary(
            [
                f"{report.out} is already trained for {report.epochs[-1].epoch} epochs: nothing to do.",
                "A larger --epochs goes on; --force starts again.",
            ]
        )
    lines = [
        f"[bold]tag-train[/bold] {backbone}: {len(report.labels)} labels, {report.train_faces:,} faces, "
        f"{report.val_faces:,} held out; epochs {report.resumed_from} → {report.epochs[-1].epoch}"
    ]
    for result in report.epochs[report.resumed_from :]:
        held = (
            f", held-out mAP {result.val_map:.3f}, F1 {result.val_f1:.3f}"
            if result.val_map is not None
            else ""
        )
        lines.append(f"  epoch {result.epoch}: loss {result.loss:.4f}{held}")
    model = report.best or report.last
    return Summary([*lines, f"  tagger {model}", f"  use it: curate tag --model {model}"])


def labels_summary(vocabulary: Vocabulary, path: Path) -> Summary:
    shown = ", ".join(f"{t}: {vocabulary.counts[t]}" for t in vocabulary.labels[:12])
    more = f" … ({len(vocabulary.labels)} in all)" if len(vocabulary.labels) > 12 else ""
    return Summary(
        [
            f"[bold]{len(vocabulary.labels)} labels[/bold] over {vocabulary.faces:,} faces: {shown}{more}",
            f"written to {path}",
        ],
        [f"[yellow]warning:[/yellow] {escape(warning)}" for warning in vocabulary.warnings()],
    )


def embed_summary(report: EmbedReport) -> Summary:
    lines = []
    if report.training is not None:
        trained = report.training
        if trained.resumed_from == trained.epochs:
            lines.append(f"embedding model already trained for {trained.epochs} epochs")
        else:
            losses = ", ".join(f"{x:.3f}" for x in trained.losses[trained.resumed_from :])
            how = "exact softmax" if trained.full_softmax else "NCE"
            lines.append(
                f"[bold]embed-train[/bold] epochs {trained.resumed_from} → {trained.epochs} ({how}): "
                f"loss {losses}"
            )
    lines.append(
        f"[bold]embed[/bold] ({report.model}): {report.faces:,} faces, {report.already_done:,} already done"
    )
    lines += outcome_lines(report.outcomes)
    if report.index is not None:
        info = report.index
        detail = f", nprobe {info.nprobe}" if info.nprobe else ""
        lines.append(
            f"  index: {info.kind} over {info.vectors:,} × {info.dim}{detail}, "
            f"recall@{info.k} {info.recall_at_k:.3f}"
        )
    if report.knn is not None:
        knn = report.knn
        lines.append(
            f"  tags by weighted kNN on {knn.held_out:,} held-out faces: mAP {knn.map:.3f} over "
            f"{knn.labels} labels (chance {knn.chance:.3f})"
        )
    return Summary(lines)


_even_odds = {
    "vote": "the majority vote",
    "learned": "even odds of the learned score",
    "finetuned": "even odds of the fine-tuned network",
}


def filter_summary(report: FilterReport, target_precision: float) -> Summary:
    estimate = (
        f", estimated precision {report.estimated_precision:.2f}"
        if report.estimated_precision is not None
        else ""
    )
    lines = [
        f"[bold]filter[/bold]: {report.kept:,} of {report.faces:,} faces kept; "
        f"seeds {report.good_seeds} good, {report.bad_seeds} bad; mined {report.mined_good} good, "
        f"{report.mined_bad} bad; threshold {report.threshold:.3f} on the {report.score} score{estimate}"
    ]
    lines += [f"  dropped {n:,}: {reason}" for reason, n in report.reasons.most_common() if reason != "kept"]
    warnings = []
    if not report.target_met:
        warnings.append(
            f"[yellow]warning:[/yellow] no threshold reaches precision {target_precision:.2f} on the seeds "
            f"(held out), so the cut is 0.5 ({_even_odds[report.score]}). Give more seeds, seeds nearer "
            "the boundary, or --threshold."
        )
    if report.collapsed:
        warnings.append(
            f"[yellow]warning:[/yellow] faces are {report.nearest_similarity:.3f} alike to their nearest "
            "neighbour (median): the embedding barely tells them apart, so votes and duplicates mean "
            "little. Train it longer (`curate embed --epochs`) or use --features timm:<name>."
        )
    return Summary(lines, warnings)


def export_summary(report: ExportReport) -> Summary:
    counts = ", ".join(f"{split} {n:,}" for split, n in report.counts.items())
    if report.unchanged:
        return Summary(
            [f"[bold]export[/bold]: {report.out} is already this export ({counts}); nothing to do"]
        )
    chosen = "kept by the filter" if report.filtered else "all faces (no filter ran)"
    lines = [f"[bold]export[/bold]: {counts} faces ({chosen}), {report.labels} labels → {report.out}"]
    lines += [f"  left out {count:,}: {reason}" for reason, count in sorted(report.dropped.items())]
    return Summary(lines)


def train_summary(report: TrainReport) -> Summary:
    if report.up_to_date:
        return Summary(
            [
                f"{report.out} is already trained to {report.nimg / 1000:g} kimg: nothing to do.",
                "A larger --kimg goes on; --force starts again.",
            ]
        )
    start = report.resumed_from or 0
    resumed = f", resumed from {start / 1000:g} kimg" if report.resumed_from is not None else ""
    labels = f", {len(report.label_names)} labels" if report.label_names else ", unconditional"
    lines = [
        f"[bold]train[/bold] {report.out}: kimg {start / 1000:g} → {report.nimg / 1000:g} of "
        f"{report.kimg_target:g} in {report.seconds:.0f} s{resumed}{labels}"
    ]
    if report.initialised is not None:
        lines.append(f"  {escape(report.initialised.summary())}")
    tick = report.last_tick
    if tick:
        figures = [f"{tick['sec_per_kimg']:.2f} s/kimg", f"{tick['images_per_sec']:.0f} images/s"]
        figures += [f"{name} {tick[name]:.3f}" for name in ("loss_G", "loss_D") if name in tick]
        figures.append(f"augment p {tick['augment_p']:.3f}")
        if "gpu_mem_gb" in tick:
            figures.append(f"{tick['gpu_mem_gb']:.1f} GB of GPU memory")
        lines.append(f"  last tick: {', '.join(figures)}")
    if report.snapshot is not None:
        grid = report.snapshot.with_name(f"fakes-{report.snapshot.stem.removeprefix('snapshot-')}.png")
        lines.append(f"  snapshot {report.snapshot}")
        if grid.is_file():
            lines.append(f"  samples {grid}")
    if report.measured:
        lines.append(f"  measured at the last snapshot: {metric_values(report.measured)}")
    return Summary(lines, interrupted=report.interrupted)


def metric_values(values: dict[str, float]) -> str:
    """`fid50k_full 12.34, kid50k_full 0.0123, pr50k3_full_precision 0.712, …`."""
    return ", ".join(f"{key} {value:.4g}" for key, value in values.items())


def metrics_summary(report: MetricsReport) -> Summary:
    return Summary(
        [
            f"[bold]metrics[/bold] {report.snapshot} (kimg {report.nimg / 1000:g}): {report.generated:,} "
            f"generated against {report.reals:,} reals of {report.data} in {report.seconds:.0f} s",
            f"  {metric_values(report.values)}",
            f"  appended to {report.metrics_file}",
        ]
    )


def directions_summary(report: DirectionsReport) -> Summary:
    """The fitted tags, best held-out accuracy first, with AUC and positive share beside it."""
    if report.interrupted:
        return Summary([f"[bold]directions[/bold]: interrupted; {report.run} is unchanged"], interrupted=True)
    lines = [
        f"[bold]directions[/bold] {report.run}: {len(report.fits)} tags from {report.samples:,} samples "
        f"in {report.seconds:.0f} s (tagger {escape(report.tagger)}; labels: {escape(report.labels_from)})",
        f"  {'tag':<24}{'accuracy':>9}{'balanced':>10}{'AUC':>7}{'positive':>10}",
    ]
    for fit in sorted(report.fits, key=lambda f: -f.accuracy):
        share = fit.positives / max(report.samples, 1)
        lines.append(
            f"  {escape(fit.name):<24}{fit.accuracy:>9.3f}{fit.balanced_accuracy:>10.3f}{fit.auc:>7.3f}"
            f"{share:>10.1%}"
        )
    lines.append(f"  saved {report.path} (figures in {report.table}); use them with --edit NAME=STRENGTH")
    warnings = [f"directions: skipped {name}: {why}" for name, why in report.skipped]
    if report.not_in_tagger:
        unknown = ", ".join(report.not_in_tagger)
        warnings.append(f"directions: the tagger does not know the run's labels {unknown}")
    return Summary(lines, warnings)


def generate_summary(report: GenerateReport) -> Summary:
    if report.interrupted:
        return Summary([f"generate stopped: nothing written to {report.out}"])
    if report.up_to_date:
        return Summary(
            [
                f"{report.out} already holds these images: nothing to do.",
                "Other parameters make another folder; --force makes them again.",
            ]
        )
    made = f"{report.images:,} images in {report.seconds:.1f} s ({report.images_per_sec:.1f} images/s)"
    lines = [f"[bold]generate[/bold] {report.mode} from {report.snapshot.name}: {made} → {report.out}"]
    if report.image_files:
        first, last = report.image_files
        lines.append(f"  {'one per seed':<14}{report.out / first}" + (f" … {last}" if last != first else ""))
    lines += [f"  {name:<14}{path}" for name, path in report.files.items()]
    lines.append(f"  {'parameters':<14}{report.out / 'params.json'}")
    return Summary(lines)
