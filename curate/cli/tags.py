"""Tags: `curate tag`, `curate tag-train` and the `curate labels` commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from curate import summaries
from curate.cli import options as opt
from curate.cli.options import out
from curate.cli.program import app


@app.command()
def tag(
    workspace: opt.Workspace = opt.DEFAULT_WORKSPACE,
    model: Annotated[
        Optional[str],  # noqa: UP045 - typer needs Optional here on Python 3.10
        typer.Option(
            help="Tagger: a hub id (owner/name[@revision]) or a folder with config.json, "
            "model.safetensors (or pytorch_model.bin) and selected_tags.csv; "
            "default SmilingWolf/wd-vit-tagger-v3."
        ),
    ] = None,
    general_threshold: Annotated[float, typer.Option(help="General tags kept at this probability.")] = 0.35,
    character_threshold: Annotated[
        float, typer.Option(help="Character tags kept at this probability.")
    ] = 0.85,
    floor: Annotated[
        float, typer.Option(help="Every probability at least this is stored, for re-thresholding later.")
    ] = 0.05,
    device: opt.Device = "auto",
    batch_size: opt.BatchSize("Faces per forward pass.") = 8,
    workers: opt.Workers = None,
    shard: opt.Shard = None,
    retry_failed: opt.RetryFailed("Tag faces that failed again.") = False,
    force: opt.Force("Tag every face again.") = False,
    part_rows: opt.PartRows = 1000,
    quiet: opt.Quiet = False,
) -> None:
    """Tag every face crop with a WD tagger (timm), beside the post's own booru tags."""
    from detect.tags.tag import TagOptions, tag_faces
    from detect.tags.tagger import Thresholds

    options = TagOptions(
        model=model,
        thresholds=Thresholds(general=general_threshold, character=character_threshold, floor=floor),
        device=device,
        batch_size=batch_size,
        workers=workers,
        **opt.per_image(shard, force, retry_failed, quiet, part_rows),
    )
    opt.show(summaries.tag_summary(tag_faces(workspace, options), workspace))


@app.command("tag-train")
def tag_train(
    workspace: opt.Workspace = opt.DEFAULT_WORKSPACE,
    backbone: Annotated[str, typer.Option(help="Any timm model name.")] = "resnet50",
    pretrained: Annotated[
        bool, typer.Option(help="Start from the backbone's timm weights (hub access or its cache).")
    ] = False,
    size: opt.InputSize = 224,
    top: Annotated[int, typer.Option(min=1, help="Vocabulary: the N most frequent booru tags.")] = 256,
    min_count: Annotated[int, typer.Option(min=1, help="...on at least this many training faces.")] = 5,
    use_labels: Annotated[
        bool, typer.Option("--use-labels", help="Train on the workspace's labels.json instead of --top.")
    ] = False,
    loss: Annotated[str, typer.Option(help="asl (asymmetric) or bce.")] = "asl",
    epochs: opt.Epochs("Epochs in all (a larger number goes on).") = 10,
    batch_size: opt.BatchSize("Faces per step.") = 32,
    lr: Annotated[float, typer.Option(min=0, help="Peak learning rate (AdamW, cosine).")] = 1e-3,
    val_fraction: Annotated[float, typer.Option(help="Images held out for mAP and F1.")] = 0.1,
    threshold: Annotated[float, typer.Option(help="Probability cut for the F1 reported.")] = 0.35,
    device: opt.Device = "auto",
    workers: opt.Workers = None,
    seed: opt.Seed("Seed of the initialisation, batch order and flips.") = 0,
    out_dir: opt.OutDir("Run folder; default WORKSPACE/models/tagger.") = None,
    force: opt.Force("Start again instead of resuming.") = False,
    quiet: opt.Quiet = False,
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
    opt.show(summaries.tag_train_summary(train_tagger(workspace, options), backbone))


labels_app = typer.Typer(help="Tag statistics and the label vocabulary training uses.", no_args_is_help=True)
app.add_typer(labels_app, name="labels")
LabelSource = Annotated[
    str, typer.Option(help="Count the tagger's labels, the posts' booru tags, or any (either).")
]
LabelCategory = Annotated[str, typer.Option(help="general, character or any.")]


@labels_app.command("stats")
def labels_stats(
    workspace: opt.Workspace = opt.DEFAULT_WORKSPACE,
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
    workspace: opt.Workspace = opt.DEFAULT_WORKSPACE,
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
    tagger: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="A tagger folder whose selected_tags.csv the listed labels are checked against."),
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
        tagger=tagger,
    )
    opt.show(summaries.labels_summary(vocabulary, path))
