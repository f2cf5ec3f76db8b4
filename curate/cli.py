"""The `curate` command: parses options and calls one library function per command.

Stage packages are imported inside the commands so `curate --help` stays fast.
"""

from __future__ import annotations

import logging
from collections import Counter
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from curate import __version__
from curate.errors import CurateError, InvalidArgument
from curate.workspace import DEFAULT_ROOT

app = typer.Typer(
    name="curate",
    help="Turn an image board into a clean, labelled anime-face dataset.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(soft_wrap=True)  # long paths stay whole in logs and pipes
err = Console(stderr=True, soft_wrap=True)

Workspace = Annotated[
    Path,
    typer.Option(
        "--workspace", "-w", envvar="CURATE_WORKSPACE", help="Workspace folder (created if missing)."
    ),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]


class Size(str, Enum):
    original = "original"
    sample = "sample"


class ApiFormat(str, Enum):
    xml = "xml"
    json = "json"


@app.callback()
def _setup(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log each retry and lookup.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        out.print(f"curate {__version__}")
        raise typer.Exit()
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err, show_path=False, show_time=False)],
    )
    logging.getLogger("urllib3").setLevel(logging.WARNING)


@app.command()
def crawl(
    tags: Annotated[
        str, typer.Option(help="Tag query, space separated; -tag excludes (e.g. 'solo -comic').")
    ],
    limit: Annotated[int, typer.Option(min=1, help="Posts to crawl, newest first; a larger limit extends.")],
    workspace: Workspace = DEFAULT_ROOT / "default",
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
    min_side: Annotated[int, typer.Option(min=0, help="Skip images whose shorter side is under PX.")] = 0,
    rating: Annotated[
        Optional[str],  # noqa: UP045 - typer needs Optional here on Python 3.10
        typer.Option(
            help="Keep only these ratings, comma separated: general,sensitive,questionable,explicit."
        ),
    ] = None,
    api: Annotated[ApiFormat, typer.Option(help="Listing format to read.")] = ApiFormat.xml,
    tag_categories: Annotated[bool, typer.Option(help="Look up each tag's category.")] = True,
    api_key: Annotated[
        Optional[str],  # noqa: UP045 - typer needs Optional here on Python 3.10
        typer.Option(envvar="CURATE_API_KEY", help="API key, for boards that require one (with --user-id)."),
    ] = None,
    user_id: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(envvar="CURATE_USER_ID", help="User id that goes with --api-key."),
    ] = None,
    retry_failed: Annotated[bool, typer.Option(help="Try failed posts again.")] = False,
    force: Annotated[bool, typer.Option(help="Redo every post, fetching images again.")] = False,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds to wait for a server to answer.")] = 30.0,
    retries: Annotated[int, typer.Option(min=1, help="Attempts per request before a post fails.")] = 5,
    part_rows: Annotated[int, typer.Option(min=1, help="Rows per manifest part.")] = 1000,
    quiet: Quiet = False,
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
    report = crawl_board(workspace, options, progress=not quiet)
    if report.up_to_date:
        out.print(
            f"crawl of '{report.query}' is already complete in {workspace}: nothing to do.\n"
            "A larger --limit extends it; --retry-failed tries failed posts again; --force redoes it."
        )
        return
    total = f" of {report.total:,} on the board" if report.total is not None else ""
    out.print(f"[bold]crawl[/bold] '{report.query}': {report.listed:,} posts listed{total}")
    if report.already_done:
        out.print(f"  {report.already_done:,} were already done")
    _print_outcomes(report.outcomes)
    rate_text = f"{report.written / max(report.seconds, 1e-9):.1f} posts/s"
    out.print(
        f"  {report.bytes / 1e6:.1f} MB in {report.seconds:.1f} s ({rate_text}), {report.retries} retries"
    )
    if report.exhausted:
        out.print("  the board has no more posts for this query")
    _exit_if_interrupted(report.interrupted)


@app.command()
def ingest(
    folder: Annotated[Path, typer.Argument(help="Folder of images, searched recursively.")],
    workspace: Workspace = DEFAULT_ROOT / "default",
    min_side: Annotated[int, typer.Option(min=0, help="Skip images whose shorter side is under PX.")] = 0,
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="Files checked in parallel.")] = 4,
    retry_failed: Annotated[bool, typer.Option(help="Try failed files again.")] = False,
    force: Annotated[bool, typer.Option(help="Redo every file.")] = False,
    quiet: Quiet = False,
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
    if not report.written:
        out.print(f"all {report.listed:,} images under {report.root} are already ingested: nothing to do.")
        return
    out.print(
        f"[bold]ingest[/bold] {report.root}: {report.listed:,} images, {report.already_done:,} already done"
    )
    _print_outcomes(report.outcomes)
    out.print(f"  {report.bytes / 1e6:.1f} MB in {report.seconds:.1f} s")
    _exit_if_interrupted(report.interrupted)


class DetectorKind(str, Enum):
    cascade = "cascade"
    frcnn = "frcnn"


Shard = Annotated[
    Optional[str],  # noqa: UP045 - typer needs Optional here on Python 3.10
    typer.Option(help="Do only part K of N (0-based), e.g. 0/4, for N parallel runs."),
]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]


@app.command()
def crop(
    workspace: Workspace = DEFAULT_ROOT / "default",
    detector: Annotated[DetectorKind, typer.Option(help="Face detector.")] = DetectorKind.cascade,
    model: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--model",
            "--cascade",
            help="Detector file (cascade XML or Faster R-CNN checkpoint); default: the pinned download.",
        ),
    ] = None,
    size: Annotated[int, typer.Option(min=8, help="Crop side in pixels.")] = 256,
    margin: Annotated[float, typer.Option(help="Face sides added on each side of the face box.")] = 0.5,
    lift: Annotated[float, typer.Option(help="Move the crop up by this many face sides (hair).")] = 0.1,
    min_face: Annotated[
        float, typer.Option(help="Faces with a shorter side (original pixels) get too_small rows.")
    ] = 64.0,
    pad: Annotated[
        str, typer.Option(help="Past the image edge: replicate, reflect, white, black, #rrggbb or r,g,b.")
    ] = "replicate",
    scale_factor: Annotated[float, typer.Option(help="Cascade: pyramid step.")] = 1.1,
    min_neighbors: Annotated[int, typer.Option(min=0, help="Cascade: overlapping hits a face needs.")] = 5,
    min_size: Annotated[int, typer.Option(min=1, help="Cascade: smallest window searched, pixels.")] = 24,
    equalize: Annotated[bool, typer.Option(help="Cascade: equalise the grey histogram first.")] = True,
    min_score: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(help="Cascade: drop boxes whose level weight is below this."),
    ] = None,
    score_threshold: Annotated[
        float, typer.Option(help="Faster R-CNN: keep boxes scoring at least this.")
    ] = 0.5,
    nms: Annotated[float, typer.Option(help="Faster R-CNN: IoU above which overlapping boxes merge.")] = 0.5,
    device: Device = "auto",
    batch_size: Annotated[int, typer.Option(min=1, help="Faster R-CNN: images per forward pass.")] = 4,
    workers: Annotated[int, typer.Option(min=0, help="Cascade: worker processes; 0 = one per CPU.")] = 0,
    shard: Shard = None,
    retry_failed: Annotated[bool, typer.Option(help="Try images that failed to decode again.")] = False,
    force: Annotated[bool, typer.Option(help="Redo every image.")] = False,
    part_rows: Annotated[int, typer.Option(min=1, help="Rows per manifest part.")] = 1000,
    quiet: Quiet = False,
) -> None:
    """Find anime faces in the stored originals and crop them square with margin."""
    from curate.shard import Shard as ShardSpec
    from detect.faces.cascade import CascadeSettings
    from detect.faces.crop import CropOptions, DetectorSpec, crop_images
    from detect.faces.geometry import CropSettings

    spec = DetectorSpec(
        kind=detector.value,
        model=model,
        cascade=CascadeSettings(scale_factor, min_neighbors, min_size, equalize, min_score),
        score_threshold=score_threshold,
        nms_threshold=nms,
        device=device,
        batch_size=batch_size,
    )
    options = CropOptions(
        detector=spec,
        crop=CropSettings(size=size, margin=margin, lift=lift, min_face=min_face, pad=pad),
        workers=workers,
        shard=ShardSpec.parse(shard),
        force=force,
        retry_failed=retry_failed,
        progress=not quiet,
        rows_per_part=part_rows,
    )
    report = crop_images(workspace, options)
    if not report.images and not report.interrupted:
        out.print(
            f"all {report.already_done:,} images in {workspace} are already cropped: nothing to do.\n"
            "--retry-failed tries failed images again; --force redoes them all."
        )
        return
    out.print(
        f"[bold]crop[/bold] ({detector.value}): {report.images:,} images, {report.faces:,} faces cropped, "
        f"{report.already_done:,} images already done"
    )
    _print_outcomes(report.outcomes)
    out.print(f"  {report.seconds:.1f} s ({report.images / max(report.seconds, 1e-9):.1f} images/s)")
    _exit_if_interrupted(report.interrupted)


@app.command("detect-train")
def detect_train(
    workspace: Workspace = DEFAULT_ROOT / "default",
    annotations: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="COCO-format face boxes; default: the cascade's confident boxes (pseudo-labels)."),
    ] = None,
    images: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="Folder the COCO file names are relative to; default: the file's folder."),
    ] = None,
    category: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Train on only this COCO category's boxes; default: every box."),
    ] = None,
    min_score: Annotated[
        float, typer.Option(help="Pseudo-labels: use images whose cascade boxes all score at least this.")
    ] = 2.0,
    init: Annotated[
        str, typer.Option(help="Start from: pretrained (hysts' model), scratch, or a checkpoint file.")
    ] = "pretrained",
    out_dir: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--out", help="Checkpoint folder; default: WORKSPACE/models/frcnn."),
    ] = None,
    steps: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(min=1, help="Steps in all (a larger number goes on); default: 12 epochs."),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per step.")] = 2,
    lr: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(min=0, help="Peak learning rate; default 0.02 × batch size / 16."),
    ] = None,
    val_fraction: Annotated[
        float, typer.Option(help="Images held out for AP@0.5 at each checkpoint (with ≥ 10 images).")
    ] = 0.1,
    checkpoint_every: Annotated[int, typer.Option(min=1, help="Steps between checkpoints.")] = 500,
    min_size: Annotated[int, typer.Option(min=32, help="Model input: shorter side, pixels.")] = 800,
    max_size: Annotated[int, typer.Option(min=32, help="Model input: longer side at most, pixels.")] = 1333,
    device: Device = "auto",
    seed: Annotated[int, typer.Option(help="Seed of the batch order, flips and initialisation.")] = 0,
    force: Annotated[bool, typer.Option(help="Start again instead of resuming last.pt.")] = False,
    quiet: Quiet = False,
) -> None:
    """Fine-tune the Faster R-CNN face detector on COCO boxes or the cascade's pseudo-labels."""
    from detect.faces.detect_train import DetectTrainOptions
    from detect.faces.detect_train import detect_train as run_detect_train

    options = DetectTrainOptions(
        annotations=annotations,
        images_root=images,
        category=category,
        min_score=min_score,
        out=out_dir,
        init=init,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        device=device,
        val_fraction=val_fraction,
        checkpoint_every=checkpoint_every,
        min_size=min_size,
        max_size=max_size,
        seed=seed,
        force=force,
        progress=not quiet,
    )
    report = run_detect_train(workspace, options)
    if report.up_to_date:
        out.print(
            f"{report.last} is already trained for {report.steps:,} steps: nothing to do.\n"
            "A larger --steps goes on; --force starts again."
        )
        return
    skipped = f", {report.skipped_images:,} left out under --min-score" if report.skipped_images else ""
    out.print(
        f"[bold]detect-train[/bold] on {report.labels}: {report.train_images:,} images with "
        f"{report.boxes:,} faces, {report.val_images:,} held out{skipped}"
    )
    loss = f", recent loss {report.recent_loss:.4f}" if report.recent_loss is not None else ""
    out.print(f"  steps {report.resumed_from:,} → {report.steps:,}{loss}")
    if report.validation:
        out.print(f"  held-out AP@0.5 by step: {', '.join(f'{s}: {ap:.3f}' for s, ap in report.validation)}")
    model = report.best or report.last
    out.print(f"  checkpoint {model}\n  use it: curate crop --detector frcnn --model {model}")


@app.command("detect-eval")
def detect_eval(
    annotations: Annotated[Path, typer.Option(help="COCO-format ground truth (boxes of faces).")],
    detector: Annotated[DetectorKind, typer.Option(help="Face detector to evaluate.")] = DetectorKind.cascade,
    model: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--model", "--cascade", help="Detector file; default: the pinned download."),
    ] = None,
    images: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="Folder the COCO file names are relative to; default: the file's folder."),
    ] = None,
    category: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Evaluate only this COCO category's boxes; default: every box."),
    ] = None,
    min_face: Annotated[
        float, typer.Option(min=0, help="Faces smaller than this (pixels) are neither hits nor misses.")
    ] = 0.0,
    iou: Annotated[float, typer.Option(help="IoU a detection needs to count as a hit.")] = 0.5,
    score_threshold: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(help="Score cut for precision and recall; default: what `curate crop` keeps."),
    ] = None,
    device: Device = "auto",
    batch_size: Annotated[int, typer.Option(min=1, help="Images per detector call.")] = 4,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as one JSON object.")] = False,
    quiet: Quiet = False,
) -> None:
    """Precision, recall and AP@0.5 of a detector against COCO-format face boxes."""
    import json

    from detect.faces.crop import DetectorSpec
    from detect.faces.evaluate import evaluate_detector, format_report

    # The detector keeps low-scoring boxes so AP sees the whole precision-recall curve; precision and
    # recall are read at the crop stage's operating point unless --score-threshold says otherwise.
    spec = DetectorSpec(
        kind=detector.value, model=model, device=device, batch_size=batch_size, score_threshold=0.05
    ).resolved()
    if score_threshold is None and detector is DetectorKind.frcnn:
        score_threshold = DetectorSpec().score_threshold
    report = evaluate_detector(
        annotations,
        spec.build(),
        images_root=images,
        category=category,
        min_face=min_face,
        batch_size=batch_size,
        iou_threshold=iou,
        score_threshold=score_threshold,
        progress=not quiet,
    )
    if as_json:
        out.print(json.dumps({"detector": detector.value, **report.as_dict()}), highlight=False)
    else:
        out.print(format_report(report, detector.value), highlight=False)


@app.command()
def tag(
    workspace: Workspace = DEFAULT_ROOT / "default",
    model: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            help="Tagger: a hub id (owner/name[@revision]) or a folder with config.json, "
            "model.safetensors and selected_tags.csv; default SmilingWolf/wd-vit-tagger-v3."
        ),
    ] = None,
    general_threshold: Annotated[float, typer.Option(help="General tags kept at this probability.")] = 0.35,
    character_threshold: Annotated[
        float, typer.Option(help="Character tags kept at this probability.")
    ] = 0.85,
    floor: Annotated[
        float, typer.Option(help="Every probability at least this is stored, for re-thresholding later.")
    ] = 0.05,
    device: Device = "auto",
    batch_size: Annotated[int, typer.Option(min=1, help="Faces per forward pass.")] = 8,
    workers: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(min=0, help="Decoding processes; default half the CPUs."),
    ] = None,
    shard: Shard = None,
    retry_failed: Annotated[bool, typer.Option(help="Tag faces that failed again.")] = False,
    force: Annotated[bool, typer.Option(help="Tag every face again.")] = False,
    part_rows: Annotated[int, typer.Option(min=1, help="Rows per manifest part.")] = 1000,
    quiet: Quiet = False,
) -> None:
    """Tag every face crop with a WD tagger (timm), beside the post's own booru tags."""
    from curate.shard import Shard as ShardSpec
    from detect.tags.tag import TagOptions, tag_faces
    from detect.tags.tagger import Thresholds

    options = TagOptions(
        model=model,
        thresholds=Thresholds(general=general_threshold, character=character_threshold, floor=floor),
        device=device,
        batch_size=batch_size,
        workers=workers,
        shard=ShardSpec.parse(shard),
        force=force,
        retry_failed=retry_failed,
        progress=not quiet,
        rows_per_part=part_rows,
    )
    report = tag_faces(workspace, options)
    if not report.faces and not report.interrupted:
        out.print(
            f"all {report.already_done:,} faces in {workspace} are already tagged: nothing to do.\n"
            "--retry-failed tags failed faces again; --force tags them all."
        )
        return
    out.print(f"[bold]tag[/bold]: {report.faces:,} faces, {report.already_done:,} already done")
    _print_outcomes(report.outcomes)
    if report.labels:
        common = ", ".join(f"{name}: {n}" for name, n in report.labels.most_common(8))
        out.print(f"  most given: {common}", highlight=False)
    out.print(f"  {report.seconds:.1f} s ({report.faces / max(report.seconds, 1e-9):.2f} faces/s)")
    _exit_if_interrupted(report.interrupted)


@app.command("tag-train")
def tag_train(
    workspace: Workspace = DEFAULT_ROOT / "default",
    backbone: Annotated[str, typer.Option(help="Any timm model name.")] = "resnet50",
    pretrained: Annotated[
        bool, typer.Option(help="Start from the backbone's timm weights (hub access or its cache).")
    ] = False,
    size: Annotated[int, typer.Option(min=16, help="Input side in pixels.")] = 224,
    top: Annotated[int, typer.Option(min=1, help="Vocabulary: the N most frequent booru tags.")] = 256,
    min_count: Annotated[int, typer.Option(min=1, help="...on at least this many training faces.")] = 5,
    use_labels: Annotated[
        bool, typer.Option("--use-labels", help="Train on the workspace's labels.json instead of --top.")
    ] = False,
    loss: Annotated[str, typer.Option(help="asl (asymmetric) or bce.")] = "asl",
    epochs: Annotated[int, typer.Option(min=1, help="Epochs in all (a larger number goes on).")] = 10,
    batch_size: Annotated[int, typer.Option(min=1, help="Faces per step.")] = 32,
    lr: Annotated[float, typer.Option(min=0, help="Peak learning rate (AdamW, cosine).")] = 1e-3,
    val_fraction: Annotated[float, typer.Option(help="Images held out for mAP and F1.")] = 0.1,
    threshold: Annotated[float, typer.Option(help="Probability cut for the F1 reported.")] = 0.35,
    device: Device = "auto",
    workers: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(min=0, help="Decoding processes; default half the CPUs."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the initialisation, batch order and flips.")] = 0,
    out_dir: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--out", help="Run folder; default WORKSPACE/models/tagger."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Start again instead of resuming.")] = False,
    quiet: Quiet = False,
) -> None:
    """Fine-tune a timm backbone on the face crops with their booru tags; the result loads as a tagger."""
    from detect.tags.tag_train import TagTrainOptions, train_tagger

    labels = None
    if use_labels:
        from curate.labels import read_vocabulary
        from curate.workspace import Workspace as Ws

        labels = read_vocabulary(Ws.open(workspace)).labels
    options = TagTrainOptions(
        backbone=backbone,
        pretrained=pretrained,
        size=size,
        top=top,
        min_count=min_count,
        labels=labels,
        loss=loss,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        val_fraction=val_fraction,
        threshold=threshold,
        device=device,
        workers=workers,
        seed=seed,
        out=out_dir,
        force=force,
        progress=not quiet,
    )
    report = train_tagger(workspace, options)
    if report.up_to_date:
        out.print(
            f"{report.out} is already trained for {report.epochs[-1].epoch} epochs: nothing to do.\n"
            "A larger --epochs goes on; --force starts again."
        )
        return
    out.print(
        f"[bold]tag-train[/bold] {backbone}: {len(report.labels)} labels, {report.train_faces:,} faces, "
        f"{report.val_faces:,} held out; epochs {report.resumed_from} → {report.epochs[-1].epoch}"
    )
    for result in report.epochs[report.resumed_from :]:
        held = (
            f", held-out mAP {result.val_map:.3f}, F1 {result.val_f1:.3f}"
            if result.val_map is not None
            else ""
        )
        out.print(f"  epoch {result.epoch}: loss {result.loss:.4f}{held}", highlight=False)
    model = report.best or report.last
    out.print(f"  tagger {model}\n  use it: curate tag --model {model}")


@app.command()
def embed(
    workspace: Workspace = DEFAULT_ROOT / "default",
    features: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="timm:<name>: a pretrained timm model's features instead of training."),
    ] = None,
    backbone: Annotated[str, typer.Option(help="Instance discrimination: any timm model name.")] = "resnet18",
    dim: Annotated[int, typer.Option(min=2, help="Embedding dimension.")] = 128,
    size: Annotated[int, typer.Option(min=16, help="Input side in pixels.")] = 128,
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs in all (more goes on).")] = 20,
    batch_size: Annotated[int, typer.Option(min=1, help="Faces per step.")] = 64,
    lr: Annotated[float, typer.Option(min=0, help="SGD learning rate (×0.1 at 60% and 80%).")] = 0.03,
    negatives: Annotated[int, typer.Option(min=1, help="NCE noise samples per face.")] = 4096,
    augment: Annotated[
        str,
        typer.Option(
            help="light (keeps hair and eye colour) or paper (Wu et al.: greyscale, strong jitter)."
        ),
    ] = "light",
    train: Annotated[bool, typer.Option(help="Train (or resume) before embedding.")] = True,
    index: Annotated[str, typer.Option(help="FAISS index: auto, flat, ivf or hnsw.")] = "auto",
    device: Device = "auto",
    workers: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(min=0, help="Decoding processes; default half the CPUs."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the initialisation, order and augmentations.")] = 0,
    shard: Shard = None,
    retry_failed: Annotated[bool, typer.Option(help="Embed faces that failed again.")] = False,
    force: Annotated[bool, typer.Option(help="Train again from scratch and embed every face.")] = False,
    quiet: Quiet = False,
) -> None:
    """Embed every face crop (instance discrimination, or timm features) and index them with FAISS."""
    from curate.shard import Shard as ShardSpec
    from embed.stage import EmbedOptions, embed_faces
    from embed.train import EmbedTrainOptions

    options = EmbedOptions(
        train=EmbedTrainOptions(
            backbone=backbone,
            dim=dim,
            size=size,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            negatives=negatives,
            augment=augment,
            device=device,
            workers=workers,
            seed=seed,
            force=force,
            progress=not quiet,
        ),
        features=features,
        retrain=train,
        index=index,
        shard=ShardSpec.parse(shard),
        force=force,
        retry_failed=retry_failed,
        progress=not quiet,
    )
    report = embed_faces(workspace, options)
    if report.training is not None:
        trained = report.training
        if trained.resumed_from == trained.epochs:
            out.print(f"embedding model already trained for {trained.epochs} epochs")
        else:
            losses = ", ".join(f"{x:.3f}" for x in trained.losses[trained.resumed_from :])
            how = "exact softmax" if trained.full_softmax else "NCE"
            out.print(
                f"[bold]embed-train[/bold] epochs {trained.resumed_from} → {trained.epochs} ({how}): "
                f"loss {losses}"
            )
    out.print(
        f"[bold]embed[/bold] ({report.model}): {report.faces:,} faces, {report.already_done:,} already done"
    )
    _print_outcomes(report.outcomes)
    if report.index is not None:
        info = report.index
        detail = f", nprobe {info.nprobe}" if info.nprobe else ""
        out.print(
            f"  index: {info.kind} over {info.vectors:,} × {info.dim}{detail}, "
            f"recall@{info.k} {info.recall_at_k:.3f}"
        )
    if report.knn is not None:
        knn = report.knn
        out.print(
            f"  tags by weighted kNN on {knn.held_out:,} held-out faces: mAP {knn.map:.3f} over "
            f"{knn.labels} labels (chance {knn.chance:.3f})"
        )


@app.command("filter")
def filter_command(
    workspace: Workspace = DEFAULT_ROOT / "default",
    good: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(help="Good seeds: face ids (repeat or comma separated) or a folder of example faces."),
    ] = None,
    bad: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(help="Bad seeds: face ids or a folder of example images."),
    ] = None,
    good_query: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Faces whose labels include all these tags are good seeds, e.g. 'solo portrait'."),
    ] = None,
    bad_query: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Faces whose labels include all these tags are bad seeds."),
    ] = None,
    k: Annotated[int, typer.Option(min=1, help="Seeds that vote on each face.")] = 10,
    rounds: Annotated[int, typer.Option(min=0, help="Mining rounds that grow the seed sets.")] = 2,
    threshold: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(help="Keep faces scoring at least this; default: chosen from the seeds."),
    ] = None,
    target_precision: Annotated[
        float, typer.Option(help="Precision the chosen threshold aims at (leave-one-out on the seeds).")
    ] = 0.9,
    dedup: Annotated[
        float, typer.Option(help="Cosine similarity at which faces are near-duplicates; 0 = no dedup.")
    ] = 0.98,
    dedup_pixels: Annotated[
        float,
        typer.Option(
            help="Correlation of 16-px grey thumbnails that confirms a near-duplicate pair; "
            "0 = trust the embedding alone."
        ),
    ] = 0.8,
) -> None:
    """Keep the faces near the good seeds (kNN vote, mined over rounds) and one of each near-duplicate."""
    from embed.filter import FilterOptions, filter_faces

    def split(values: list[str] | None) -> list[str]:
        return [v.strip() for value in values or () for v in value.split(",") if v.strip()]

    options = FilterOptions(
        good=split(good),
        bad=split(bad),
        good_query=good_query,
        bad_query=bad_query,
        k=k,
        rounds=rounds,
        threshold=threshold,
        target_precision=target_precision,
        dedup=dedup or None,
        dedup_pixels=dedup_pixels or None,
    )
    report = filter_faces(workspace, options)
    estimate = (
        f", estimated precision {report.estimated_precision:.2f}"
        if report.estimated_precision is not None
        else ""
    )
    out.print(
        f"[bold]filter[/bold]: {report.kept:,} of {report.faces:,} faces kept; "
        f"seeds {report.good_seeds} good, {report.bad_seeds} bad; mined {report.mined_good} good, "
        f"{report.mined_bad} bad; threshold {report.threshold:.3f}{estimate}"
    )
    for reason, count in report.reasons.most_common():
        if reason != "kept":
            out.print(f"  dropped {count:,}: {reason}", highlight=False)
    if not report.target_met:
        err.print(
            f"[yellow]warning:[/yellow] no threshold reaches precision {target_precision:.2f} on the seeds "
            "(leave-one-out), so the majority vote (0.5) was used. Give more seeds, seeds nearer the "
            "boundary, or --threshold."
        )
    if report.collapsed:
        err.print(
            f"[yellow]warning:[/yellow] faces are {report.nearest_similarity:.3f} alike to their nearest "
            "neighbour (median): the embedding barely tells them apart, so votes and duplicates mean "
            "little. Train it longer (`curate embed --epochs`) or use --features timm:<name>."
        )


labels_app = typer.Typer(help="Tag statistics and the label vocabulary training uses.", no_args_is_help=True)
app.add_typer(labels_app, name="labels")
LabelSource = Annotated[
    str, typer.Option(help="Count the tagger's labels, the posts' booru tags, or any (either).")
]
LabelCategory = Annotated[str, typer.Option(help="general, character or any.")]


@labels_app.command("stats")
def labels_stats(
    workspace: Workspace = DEFAULT_ROOT / "default",
    source: LabelSource = "any",
    category: LabelCategory = "general",
    top: Annotated[int, typer.Option(min=1, help="Tags to list and chart.")] = 40,
) -> None:
    """Faces per tag, most frequent first, as a table and a PNG bar chart in WORKSPACE/report/."""
    from curate.labels import label_stats

    counts, ranked, chart = label_stats(workspace, source=source, category=category, top=top)
    out.print(f"[bold]{category} tags[/bold] ({source}) on {counts.faces:,} tagged faces")
    width = max((len(name) for name, _ in ranked), default=0)
    for name, count in ranked:
        out.print(f"  {name:<{width}}  {count:>7,}  {100 * count / counts.faces:5.1f}%", highlight=False)
    out.print(f"chart: {chart}")


@labels_app.command("select")
def labels_select(
    workspace: Workspace = DEFAULT_ROOT / "default",
    top: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(min=1, help="The N most frequent tags of --category."),
    ] = None,
    list_file: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--list", help="A file of tags, one per line or comma separated, in label order."),
    ] = None,
    preset: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="A label list shipped with curate."),
    ] = None,
    source: LabelSource = "any",
    category: LabelCategory = "general",
    min_count: Annotated[int, typer.Option(min=1, help="Leave out tags on fewer faces than this.")] = 1,
    exclude: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(help="Tags to leave out (repeat, or comma separated)."),
    ] = None,
) -> None:
    """Choose the label vocabulary and write it to WORKSPACE/labels.json."""
    from curate.labels import choose_labels

    excluded = [t for item in exclude or () for t in item.split(",") if t.strip()]
    vocabulary, path = choose_labels(
        workspace,
        top=top,
        list_file=list_file,
        preset_name=preset,
        source=source,
        category=category,
        min_count=min_count,
        exclude=excluded,
    )
    shown = ", ".join(f"{t}: {vocabulary.counts[t]}" for t in vocabulary.labels[:12])
    more = f" … ({len(vocabulary.labels)} in all)" if len(vocabulary.labels) > 12 else ""
    out.print(f"[bold]{len(vocabulary.labels)} labels[/bold] over {vocabulary.faces:,} faces: {shown}{more}")
    out.print(f"written to {path}")


@app.command()
def export(
    workspace: Workspace = DEFAULT_ROOT / "default",
    format: Annotated[
        str, typer.Option("--format", "-f", help="parquet, stylegan (NVlabs zip) or imagefolder.")
    ] = "parquet",
    out_dir: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--out", help="Folder to write; default <workspace>/export/<format>."),
    ] = None,
    resolution: Annotated[
        int, typer.Option(min=4, help="Square side in pixels (a power of two for stylegan).")
    ] = 256,
    min_score: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(help="Only faces the filter scored at least this."),
    ] = None,
    exclude_monochrome: Annotated[bool, typer.Option(help="Leave out greyscale and sketch crops.")] = False,
    balance: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Equal counts of faces per tag, e.g. '1boy,1girl' (down-sampled)."),
    ] = None,
    max_faces: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--max", min=1, help="At most this many faces (a seeded sample)."),
    ] = None,
    validation: Annotated[float, typer.Option(help="Share of faces in the validation split.")] = 0.05,
    seed: Annotated[int, typer.Option(help="Seed of the sampling and the split.")] = 0,
    quiet: Quiet = False,
) -> None:
    """Write the kept faces as Parquet shards, an NVlabs StyleGAN zip or an imagefolder."""
    from curate.export.select import SelectOptions
    from curate.export.stage import ExportOptions, export_dataset

    select = SelectOptions(
        min_score=min_score,
        exclude_monochrome=exclude_monochrome,
        balance=[t.strip() for t in (balance or "").split(",") if t.strip()],
        max_faces=max_faces,
        validation=validation,
        seed=seed,
    )
    options = ExportOptions(
        format=format, out=out_dir, resolution=resolution, select=select, progress=not quiet
    )
    report = export_dataset(workspace, options)
    counts = ", ".join(f"{split} {n:,}" for split, n in report.counts.items())
    if report.unchanged:
        out.print(f"[bold]export[/bold]: {report.out} is already this export ({counts}); nothing to do")
        return
    chosen = "kept by the filter" if report.filtered else "all faces (no filter ran)"
    out.print(f"[bold]export[/bold]: {counts} faces ({chosen}), {report.labels} labels → {report.out}")
    for reason, count in sorted(report.dropped.items()):
        out.print(f"  left out {count:,}: {reason}", highlight=False)


@app.command()
def report(workspace: Workspace = DEFAULT_ROOT / "default", quiet: Quiet = False) -> None:
    """Write WORKSPACE/report/index.html: the funnel, contact sheets, duplicates, tags, scores, parameters."""
    from curate.report import build_report

    result = build_report(workspace, progress=not quiet)
    out.print(f"[bold]report[/bold]: {result.page} ({result.thumbnails:,} thumbnails)")


@app.command("run")
def run_command(
    config: Annotated[Path, typer.Argument(help="TOML file: the workspace and each stage's options.")],
    dry_run: Annotated[bool, typer.Option(help="Check the config and print the plan; run nothing.")] = False,
    quiet: Quiet = False,
) -> None:
    """Run the stages a config names, in order; each skips what is done, so a killed run continues."""
    from curate.run import plan, run_config

    if dry_run:
        workspace, steps = plan(config, progress=not quiet)
        out.print(f"workspace {workspace}")
        for number, step in enumerate(steps, 1):
            out.print(f"{number}. [bold]{step.stage}[/bold]: {step.options}", highlight=False)
        return
    run_config(config, progress=not quiet, say=lambda line: out.print(line, highlight=False))


@app.command()
def status(workspace: Workspace = DEFAULT_ROOT / "default") -> None:
    """Rows per stage by status and error code."""
    from curate.status import format_counts, workspace_status
    from curate.workspace import Workspace as Ws

    if not Path(workspace).is_dir():
        raise InvalidArgument(f"no workspace at {workspace}")
    stages = workspace_status(Ws.open(workspace))
    out.print(f"workspace {Path(workspace).resolve()}")
    if not stages:
        out.print("  no manifests yet: start with `curate crawl` or `curate ingest`")
    for counts in stages:
        out.print(f"[bold]{counts.stage}[/bold]  {counts.rows:,} rows")
        for line in format_counts(counts):
            out.print(f"  {line}", highlight=False)


def _exit_if_interrupted(interrupted: bool) -> None:
    """A stage stopped by Ctrl-C has saved what finished: say so and exit 130, as shells expect."""
    if interrupted:
        err.print("interrupted: what finished is saved; run the same command again to resume")
        raise typer.Exit(130)


def _print_outcomes(outcomes: Counter[tuple[str, str | None]]) -> None:
    from curate.manifest import STATUSES

    for status_name in STATUSES:
        codes = Counter({code: n for (s, code), n in outcomes.items() if s == status_name})
        total = sum(codes.values())
        if total:
            detail = ", ".join(f"{code} {n}" for code, n in codes.most_common() if code)
            out.print(f"  {status_name:<8}{total:>8,}" + (f"  ({detail})" if detail else ""), highlight=False)


def main() -> None:
    """Console entry point: a CurateError becomes a one-line message and an exit code, not a traceback."""
    try:
        app()
    except InvalidArgument as error:
        err.print(f"[red]error:[/red] {error}", highlight=False)
        raise SystemExit(2) from None
    except CurateError as error:
        err.print(f"[red]error:[/red] {error}", highlight=False)
        raise SystemExit(1) from None
