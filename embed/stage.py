"""`curate embed`: an embedding per face crop, in the manifest and in a FAISS index in models/embed/.

The embedding is instance discrimination trained here on the crops (default; from a random network,
or from the WD tagger's backbone with `train.init="tagger[:MODEL]"`), or the pooled features of a
pretrained model: a timm model's (`features="timm:<name>"`) or the tagger's (`features="tagger[:MODEL]"`).
Extraction is resumable and sharded; training happens once, before extraction, and is skipped by
shards (train first, then run the shards).
"""

from __future__ import annotations

import json
import os
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc

from curate.distributed import World
from curate.errors import InvalidArgument, ModelError
from curate.imagefiles import image_batches
from curate.manifest import EMBED, FAILED, OK, STATUS, FaceCrop, PartWriter, face_crops, now_utc, read_stage
from curate.progress import StageProgress
from curate.shard import Shard
from curate.workspace import Workspace
from embed.evaluate import KnnLabelReport, knn_label_map
from embed.index import IndexInfo, build_index, tune_recall
from embed.tagger_features import is_tagger, tagger_spec
from embed.train import CHECKPOINT, EmbedTrainOptions, EmbedTrainResult, train_embedding

INDEX_FILE, INDEX_INFO, INDEX_IDS = "faces.faiss", "faces.json", "faces-ids.txt"


@dataclass
class EmbedOptions:
    train: EmbedTrainOptions = field(default_factory=EmbedTrainOptions)
    # "timm:<name>" or "tagger[:<hub id or folder>]": a pretrained model's features instead of training
    features: str | None = None
    retrain: bool = True  # train (or resume training) before extracting; False uses the model as it is
    index: str = "auto"  # flat | ivf | hnsw | auto
    shard: Shard = field(default_factory=Shard)
    force: bool = False  # embed every face again (with `train.force`, train again too)
    retry_failed: bool = False
    progress: bool = True
    rows_per_part: int = 1000


@dataclass
class EmbedReport:
    model: str
    faces: int = 0  # embedded this run
    already_done: int = 0
    outcomes: Counter[tuple[str, str | None]] = field(default_factory=Counter)
    training: EmbedTrainResult | None = None
    index: IndexInfo | None = None
    knn: KnnLabelReport | None = None  # held-out weighted-kNN mAP of the tags, when faces have tags
    seconds: float = 0.0


def model_dir(ws: Workspace) -> Path:
    return ws.models / "embed"


def embed_faces(workspace: str | Path, options: EmbedOptions | None = None) -> EmbedReport:
    """Train (unless told not to), embed every face crop not yet embedded, and rebuild the index."""
    options = _checked(options or EmbedOptions())
    ws = Workspace.open(workspace)
    crops = all_crops(ws)
    folder = model_dir(ws)
    training = None
    if options.features is None:
        model_name = f"instdisc:{options.train.init or options.train.backbone}"
        if options.retrain and options.shard.count == 1:
            # in face id order, not manifest order (which follows the crop workers' finishing order),
            # so the same crops always train the same network
            paths = [ws.root / crop.path for crop in sorted(crops, key=lambda crop: crop.face_id)]
            training = train_embedding(paths, folder, options.train)
            if not World.from_env().main:  # under torchrun the first process embeds; the others are done
                return EmbedReport(model=model_name, training=training)
        elif not (folder / CHECKPOINT).is_file():
            raise InvalidArgument(
                f"no embedding model at {folder / CHECKPOINT}: run `curate embed` without --shard first"
            )
    else:
        model_name = _features_name(options.features)
    report = EmbedReport(model=model_name, training=training)
    wanted = [crop for crop in crops if crop.face_id in options.shard]
    todo = _not_done(ws, wanted, model_name, options)
    report.already_done = len(wanted) - len(todo)
    if todo:
        _extract(ws, todo, _network(folder, options, model_name), model_name, options, report)
    ids, vectors, _ = read_embeddings(ws, model_name)
    report.index = write_index(ws, model_name, ids, vectors, options.index)
    report.knn = knn_label_map(ws, ids, vectors)
    return report


def all_crops(ws: Workspace) -> list[FaceCrop]:
    crops = face_crops(ws)
    if not crops:
        raise InvalidArgument(f"{ws.root} has no face crops: run `curate crop` first")
    return crops


def _checked(options: EmbedOptions) -> EmbedOptions:
    """The options with --init in its canonical form; InvalidArgument for --init with --features."""
    init = options.train.init
    if init is None:
        return options
    if options.features is not None:
        raise InvalidArgument(
            f"--init {init!r} starts instance discrimination; --features {options.features!r} uses a "
            "pretrained model's features without training: give one or the other"
        )
    if not is_tagger(init):
        raise InvalidArgument(f"--init must be tagger or tagger:<hub id or tagger folder>, got {init!r}")
    return replace(options, train=replace(options.train, init=tagger_spec(init, "--init")))


def _features_name(features: str) -> str:
    kind, _, name = features.partition(":")
    if is_tagger(features):
        return tagger_spec(features, "--features")
    if kind != "timm" or not name:
        raise InvalidArgument(
            f"--features must look like timm:<model name> or tagger[:<hub id or folder>], got {features!r}"
        )
    return features


def _not_done(ws: Workspace, wanted: list[FaceCrop], model: str, options: EmbedOptions) -> list[FaceCrop]:
    if options.force:
        return wanted
    table = read_stage(ws, EMBED, columns=[STATUS, "model"])
    keep = pc.equal(table["model"], model)
    if options.retry_failed:
        keep = pc.and_(keep, pc.not_equal(table[STATUS], FAILED))
    done = set(table.filter(keep)["face_id"].to_pylist())
    return [crop for crop in wanted if crop.face_id not in done]


@dataclass
class Embedder:
    """Unit vectors of batches `transform` made: a network ready for extraction."""

    embed: Callable[[Any], np.ndarray]  # a collated batch → N×D float32 unit vectors
    transform: Callable[[Any], Any]  # a PIL image → one item of a batch
    size: int  # input side
    dim: int | None

    def __call__(self, batch: Any) -> np.ndarray:
        return self.embed(batch)


def _network(folder: Path, options: EmbedOptions, model: str) -> Embedder:
    """The embedding the options ask for (named `model` in the manifest), in eval mode, for extraction."""
    from embed.train import eval_transform, load_network, network_transform

    if options.features is None:
        network, settings = load_network(folder / CHECKPOINT, options.train.device)
        trained = f"instdisc:{settings.get('init') or settings['backbone']}"
        if trained != model:  # untrained here (--no-train, a shard): rows must not be named for another
            raise InvalidArgument(
                f"{folder / CHECKPOINT} holds {trained}, not {model}: give the options it was trained "
                "with, or train (not as a shard, without --no-train)"
            )
        return _torch_embedder(network, network_transform(settings), settings["size"])
    if is_tagger(options.features):
        from embed.tagger_features import TaggerEmbedder, load_tagger

        tagger = load_tagger(tagger_spec(options.features, "--features"), options.train.device)
        embedder = TaggerEmbedder(tagger)
        return Embedder(embedder, embedder.transform, embedder.size, embedder.dim)
    import timm
    import torch

    from curate.device import pick_device

    name = options.features.partition(":")[2]
    try:
        backbone = timm.create_model(name, pretrained=True, num_classes=0)
    except RuntimeError as exc:
        raise InvalidArgument(f"--features {options.features!r}: {exc}") from None
    except Exception as exc:  # offline without the weights in the hub cache, or no network
        raise ModelError(
            f"the pretrained weights of {name} are not available ({type(exc).__name__}: {exc}); "
            "with CURATE_OFFLINE/HF_HUB_OFFLINE they must already be in the hub cache"
        ) from exc

    class Normalised(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = backbone

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.normalize(self.backbone(pixels), dim=1)

    network = Normalised().to(pick_device(options.train.device)).eval()
    size = int(backbone.pretrained_cfg.get("input_size", (3, 224, 224))[-1])
    return _torch_embedder(network, eval_transform(size), size)


def _torch_embedder(network: Any, transform: Callable[[Any], Any], size: int) -> Embedder:
    import torch

    device = next(network.parameters()).device

    def embed(batch: Any) -> np.ndarray:
        with torch.inference_mode():
            return network(torch.as_tensor(batch).to(device)).float().cpu().numpy()

    return Embedder(embed, transform, size, network_dim(network))


def _extract(
    ws: Workspace,
    todo: list[FaceCrop],
    embedder: Embedder,
    model: str,
    options: EmbedOptions,
    report: EmbedReport,
) -> None:
    params = {"model": model, "size": embedder.size, "shard": str(options.shard)}
    writer = PartWriter(ws, EMBED, params, rows_per_part=options.rows_per_part)
    batches = image_batches(
        [crop.path for crop in todo],
        embedder.transform,
        batch_size=options.train.batch_size,
        workers=options.train.workers,
        root=ws.root,
    )
    completed = False
    with StageProgress("embed", total=len(todo), unit="faces", enabled=options.progress) as progress:
        try:
            for indices, pixels, errors in batches:
                rows = []
                if indices:
                    for index, vector in zip(indices, embedder(pixels), strict=True):
                        rows.append({**_row(todo[index], model, OK), "embedding": vector.tolist()})
                for index, code, message in errors:
                    rows.append({**_row(todo[index], model, FAILED), "error": code, "message": message})
                writer.extend(rows)
                report.outcomes.update((row[STATUS], row["error"]) for row in rows)
                report.faces += len(rows)
                progress.advance(len(rows))
            completed = True
        finally:
            writer.flush(complete=completed and options.shard.count == 1, dim=embedder.dim)
            report.seconds = progress.elapsed


def network_dim(network: Any) -> int | None:
    dim = getattr(network, "dim", None)
    return int(dim) if dim is not None else None


def _row(crop: FaceCrop, model: str, status: str) -> dict[str, Any]:
    return {
        "face_id": crop.face_id,
        "image_id": crop.image_id,
        STATUS: status,
        "error": None,
        "message": None,
        "model": model,
        "embedded_at": now_utc(),
    }


def read_embeddings(ws: Workspace, model: str | None = None) -> tuple[list[str], np.ndarray, str]:
    """(face ids, N×D unit vectors, model) of every embedded face, of `model` or the newest model."""
    table = read_stage(ws, EMBED, columns=[STATUS, "model", "embedding"])
    table = table.filter(pc.equal(table[STATUS], OK))
    if table.num_rows == 0:
        raise InvalidArgument(f"{ws.root} has no embedded faces: run `curate embed` first")
    models = table["model"].to_pylist()
    model = model or models[-1]
    table = table.filter(pc.equal(table["model"], model))
    vectors = np.asarray(table["embedding"].to_pylist(), dtype=np.float32)
    return table["face_id"].to_pylist(), vectors, model


def write_index(
    ws: Workspace, model: str, ids: list[str], vectors: np.ndarray, kind: str = "auto"
) -> IndexInfo:
    """The FAISS index over the faces `model` embedded (`ids`, `vectors`), written to models/embed/."""
    import faiss

    index, info = build_index(vectors, kind)
    info = tune_recall(index, info, vectors, k=10)
    folder = model_dir(ws)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
    files = {
        INDEX_FILE: lambda tmp: faiss.write_index(index, str(tmp)),
        INDEX_IDS: lambda tmp: tmp.write_text("\n".join(ids) + "\n", encoding="utf-8"),
        INDEX_INFO: lambda tmp: tmp.write_text(
            json.dumps({"model": model, **asdict(info)}, indent=1) + "\n", encoding="utf-8"
        ),
    }
    for name, write in files.items():
        tmp = folder / f".{name}.{stamp}.tmp"
        write(tmp)
        os.replace(tmp, folder / name)
    return info


def embed_files(ws: Workspace, model: str, paths: list[Path], *, device: str = "auto") -> np.ndarray:
    """Unit embeddings of image files (e.g. example faces given as seeds) by the workspace's `model`."""
    settings = EmbedOptions(train=EmbedTrainOptions(device=device, workers=0), features=None)
    if model.startswith("timm:") or is_tagger(model):
        settings.features = model
    embedder = _network(model_dir(ws), settings, model)
    rows = []
    for _, pixels, errors in image_batches(paths, embedder.transform, batch_size=32, workers=0):
        if errors:
            raise InvalidArgument(f"{len(errors)} example images do not decode, e.g. {errors[0][2]}")
        rows.append(embedder(pixels))
    return np.concatenate(rows)
