"""Faces: `curate crop`, `curate detect-train` and `curate detect-eval`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from curate import summaries
from curate.cli import options as opt
from curate.cli.options import out
from curate.cli.program import app


@app.command()
def crop(
    workspace: opt.Workspace = opt.DEFAULT_WORKSPACE,
    detector: opt.Detector("Face detector.") = opt.DetectorKind.cascade,
    model: opt.DetectorModel(
        "Detector file (cascade XML or Faster R-CNN checkpoint); default: the pinned download."
    ) = None,
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
        Optional[float],  # noqa: UP045 - typer needs Optional here on Python 3.10
        typer.Option(help="Cascade: drop boxes whose level weight is below this."),
    ] = None,
    score_threshold: Annotated[
        float, typer.Option(help="Faster R-CNN: keep boxes scoring at least this.")
    ] = 0.5,
    nms: Annotated[float, typer.Option(help="Faster R-CNN: IoU above which overlapping boxes merge.")] = 0.5,
    device: opt.Device = "auto",
    batch_size: opt.BatchSize("Faster R-CNN: images per forward pass.") = 4,
    workers: Annotated[int, typer.Option(min=0, help="Cascade: worker processes; 0 = one per CPU.")] = 0,
    shard: opt.Shard = None,
    retry_failed: opt.RetryFailed("Try images that failed to decode again.") = False,
    force: opt.Force("Redo every image.") = False,
    part_rows: opt.PartRows = 1000,
    quiet: opt.Quiet = False,
) -> None:
    """Find anime faces in the stored originals and crop them square with margin."""
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
        **opt.per_image(shard, force, retry_failed, quiet, part_rows),
    )
    opt.show(summaries.crop_summary(crop_images(workspace, options), detector.value, workspace))


@app.command("detect-train")
def detect_train(
    workspace: opt.Workspace = opt.DEFAULT_WORKSPACE,
    annotations: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="COCO-format face boxes; default: the cascade's confident boxes (pseudo-labels)."),
    ] = None,
    images: opt.CocoImages = None,
    category: opt.CocoCategory("Train on only this COCO category's boxes; default: every box.") = None,
    min_score: Annotated[
        float, typer.Option(help="Pseudo-labels: use images whose cascade boxes all score at least this.")
    ] = 2.0,
    init: Annotated[
        str, typer.Option(help="Start from: pretrained (hysts' model), scratch, or a checkpoint file.")
    ] = "pretrained",
    out_dir: opt.OutDir("Checkpoint folder; default: WORKSPACE/models/frcnn.") = None,
    steps: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(min=1, help="Steps in all (a larger number goes on); default: 12 epochs."),
    ] = None,
    batch_size: opt.BatchSize("Images per step.") = 2,
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
    device: opt.Device = "auto",
    seed: opt.Seed("Seed of the batch order, flips and initialisation.") = 0,
    force: opt.Force("Start again instead of resuming last.pt.") = False,
    quiet: opt.Quiet = False,
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
    opt.show(summaries.detect_train_summary(run_detect_train(workspace, options)))


@app.command("detect-eval")
def detect_eval(
    annotations: Annotated[Path, typer.Option(help="COCO-format ground truth (boxes of faces).")],
    detector: opt.Detector("Face detector to evaluate.") = opt.DetectorKind.cascade,
    model: opt.DetectorModel("Detector file; default: the pinned download.") = None,
    images: opt.CocoImages = None,
    category: opt.CocoCategory("Evaluate only this COCO category's boxes; default: every box.") = None,
    min_face: Annotated[
        float, typer.Option(min=0, help="Faces smaller than this (pixels) are neither hits nor misses.")
    ] = 0.0,
    iou: Annotated[float, typer.Option(help="IoU a detection needs to count as a hit.")] = 0.5,
    score_threshold: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(help="Score cut for precision and recall; default: what `curate crop` keeps."),
    ] = None,
    device: opt.Device = "auto",
    batch_size: opt.BatchSize("Images per detector call.") = 4,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as one JSON object.")] = False,
    quiet: opt.Quiet = False,
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
    if score_threshold is None and detector is opt.DetectorKind.frcnn:
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
