"""Embeddings: `curate embed` and `curate filter`."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from curate import summaries
from curate.cli import options as opt
from curate.cli.program import app


@app.command()
def embed(
    workspace: opt.Workspace = opt.DEFAULT_WORKSPACE,
    features: Annotated[
        Optional[str],  # noqa: UP045 - typer needs Optional here on Python 3.10
        typer.Option(
            help="A pretrained model's L2-normalised pooled features instead of training: timm:<name>, "
            "or tagger[:MODEL] for the WD tagger's (MODEL as `curate tag --model`: a hub id or a tagger "
            "folder; bare tagger: the default tagger), preprocessed as `curate tag` does."
        ),
    ] = None,
    init: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            help="tagger[:MODEL]: start instance discrimination from the WD tagger's backbone (its "
            "architecture, weights, input side and preprocessing) instead of a random --backbone."
        ),
    ] = None,
    backbone: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Instance discrimination: any timm model name [default: resnet18]."),
    ] = None,
    dim: Annotated[int, typer.Option(min=2, help="Embedding dimension.")] = 128,
    size: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(min=16, help="Input side in pixels [default: 128; with --init, the tagger's]."),
    ] = None,
    epochs: opt.Epochs("Training epochs in all (more goes on).") = 20,
    batch_size: opt.BatchSize("Faces per step.") = 64,
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
    device: opt.Device = "auto",
    workers: opt.Workers = None,
    seed: opt.Seed("Seed of the initialisation, order and augmentations.") = 0,
    shard: opt.Shard = None,
    retry_failed: opt.RetryFailed("Embed faces that failed again.") = False,
    force: opt.Force("Train again from scratch and embed every face.") = False,
    quiet: opt.Quiet = False,
) -> None:
    """Embed every face crop (instance discrimination, or timm or tagger features); index them with FAISS."""
    from curate.errors import InvalidArgument
    from curate.shard import Shard as ShardSpec
    from embed.stage import EmbedOptions, embed_faces
    from embed.train import EmbedTrainOptions

    if init is not None and (backbone is not None or size is not None):
        # the tagger's architecture and input side are the ones its weights fit
        raise InvalidArgument(
            "--init tagger takes the tagger's architecture and input side: drop --backbone/--size"
        )
    options = EmbedOptions(
        train=EmbedTrainOptions(
            backbone=backbone or "resnet18",
            dim=dim,
            size=size or 128,
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
            init=init,
        ),
        features=features,
        retrain=train,
        index=index,
        shard=ShardSpec.parse(shard),
        force=force,
        retry_failed=retry_failed,
        progress=not quiet,
    )
    opt.show(summaries.embed_summary(embed_faces(workspace, options)))


@app.command("filter")
def filter_command(
    workspace: opt.Workspace = opt.DEFAULT_WORKSPACE,
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
        float,
        typer.Option(help="Precision the chosen threshold aims at, judged on the seeds' held-out scores."),
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
    review: Annotated[
        bool, typer.Option(help="Faces marked good or bad on `curate serve`'s review page are seeds too.")
    ] = True,
    score: Annotated[
        str,
        typer.Option(
            help="What the threshold applies to: vote (the seeds' kNN vote), learned (a logistic regression "
            "fitted on the seeds over the vote, the embedding, the crop's shape, the detector's score, the "
            "box's geometry and the tagger's probabilities), finetuned (the embedding's network fine-tuned"
            " on the seed crops: slower, tens of seconds on CPU; needs a `curate embed`-trained embedding) "
            "or auto (learned from 8 good and 8 bad seeds on)."
        ),
    ] = "auto",
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
        review=review,
        score=score,
    )
    opt.show(summaries.filter_summary(filter_faces(workspace, options), target_precision))
