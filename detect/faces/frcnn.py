"""Faster R-CNN ResNet-50 FPN face detector in torchvision, built to match hysts' mmdet anime-face model.

The network is assembled by hand so its layout is exactly mmdet's `faster_rcnn_r50_fpn` with one class:
anchors of 32–512 px at strides 4–64 without rounding, RoIAlign with mmdet's `aligned=True` and level
rule, mmdet's test-time NMS settings. That lets `load_model` take mmdet checkpoints (converted by
`detect.faces.mmdet`) as well as the checkpoints `detect.faces.detector_training` writes.
"""

from __future__ import annotations

import os
import pickle
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign, roi_align

from curate import registry
from curate.device import pick_device
from curate.errors import InvalidArgument, ModelError
from detect.faces.boxes import Box
from detect.faces.mmdet import convert_mmdet_state_dict, looks_like_mmdet

FORMAT = "curate.frcnn"
VERSION = 1
DEFAULT_CONFIG: dict[str, Any] = {
    "min_size": 800,
    "max_size": 1333,
    "score_thresh": 0.05,
    "nms_thresh": 0.5,
    "detections_per_img": 100,
    "trainable_norm": False,
}
_STRIDES = (4, 8, 16, 32, 64)
_ANCHOR_SIZES = ((32,), (64,), (128,), (256,), (512,))  # mmdet: octave_base_scale 8 × strides
_ASPECT_RATIOS = ((0.5, 1.0, 2.0),) * 5
_IMAGENET_MEAN = (0.485, 0.456, 0.406)  # mmdet's 123.675, 116.28, 103.53 on 0–255
_IMAGENET_STD = (0.229, 0.224, 0.225)


class MMDetAnchorGenerator(AnchorGenerator):
    """Anchors as mmdet v2 makes them: unrounded base anchors, fixed strides per level.

    torchvision rounds base anchors to whole pixels and derives each level's stride as padded image size
    // feature size, which for the max-pooled level is 61 instead of 64 whenever size/32 is odd.
    """

    def __init__(self, sizes: tuple[tuple[int, ...], ...], aspect_ratios: tuple, strides: Sequence[int]):
        super().__init__(sizes, aspect_ratios)
        self.strides = tuple(strides)

    def generate_anchors(
        self,
        scales: Sequence[int],
        aspect_ratios: Sequence[float],
        dtype: torch.dtype = torch.float32,
        device: torch.device | None = None,
    ) -> Tensor:
        scales_t = torch.as_tensor(scales, dtype=dtype, device=device)
        ratios = torch.as_tensor(aspect_ratios, dtype=dtype, device=device)
        h_ratios = torch.sqrt(ratios)
        w_ratios = 1 / h_ratios
        ws = (w_ratios[:, None] * scales_t[None, :]).view(-1)
        hs = (h_ratios[:, None] * scales_t[None, :]).view(-1)
        return torch.stack([-ws, -hs, ws, hs], dim=1) / 2

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        grid_sizes = [list(fm.shape[-2:]) for fm in feature_maps]
        device = feature_maps[0].device
        strides = [[torch.tensor(s, device=device), torch.tensor(s, device=device)] for s in self.strides]
        # float32 even under autocast: fp16 coordinates near 1333 px are only good to a pixel
        self.set_cell_anchors(torch.float32, device)
        anchors = torch.cat(self.grid_anchors(grid_sizes, strides))
        return [anchors for _ in image_list.image_sizes]


class MMDetRoIAlign(MultiScaleRoIAlign):
    """mmdet's SingleRoIExtractor: RoIAlign `aligned=True` (mmcv's default), level ⌊log2(√area / 56)⌋."""

    def __init__(
        self,
        featmap_names: list[str],
        output_size: int,
        sampling_ratio: int,
        strides: Sequence[int] = _STRIDES[:4],
        finest_scale: float = 56.0,
    ):
        super().__init__(featmap_names, output_size, sampling_ratio)
        self.strides = tuple(strides)
        self.finest_scale = finest_scale

    def forward(
        self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> Tensor:
        features = [x[name] for name in self.featmap_names]
        rois = torch.cat([torch.cat([b.new_full((len(b), 1), i), b], dim=1) for i, b in enumerate(boxes)])
        scale = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
        levels = torch.floor(torch.log2(scale / self.finest_scale + 1e-6)).clamp(0, len(features) - 1)
        result = rois.new_zeros((len(rois), features[0].shape[1], *self.output_size))
        for level, (feature, stride) in enumerate(zip(features, self.strides, strict=True)):
            index = torch.where(levels == level)[0]
            # fp32 boxes even when the features are half (training under autocast): fp16 is ±0.5 px at 1k
            pooled = roi_align(
                feature.to(rois.dtype),
                rois[index],
                self.output_size,
                spatial_scale=1.0 / stride,
                sampling_ratio=self.sampling_ratio,
                aligned=True,
            )
            result[index] = pooled.to(result.dtype)
        return result


def build_model(
    *,
    min_size: int = 800,
    max_size: int = 1333,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    detections_per_img: int = 100,
    trainable_norm: bool = False,
) -> FasterRCNN:
    """A randomly initialised one-class Faster R-CNN R50-FPN laid out like hysts' mmdet model."""
    from torchvision.models import resnet50
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    # Frozen norms are what trained detectors use; from scratch they are identities and let activations
    # explode, so training from nothing needs real BatchNorm.
    norm = nn.BatchNorm2d if trainable_norm else FrozenBatchNorm2d
    body = resnet50(weights=None, norm_layer=norm)
    backbone = _resnet_fpn_extractor(body, trainable_layers=5, extra_blocks=LastLevelMaxPool())
    return FasterRCNN(
        backbone,
        num_classes=2,  # background, face
        min_size=min_size,
        max_size=max_size,
        image_mean=list(_IMAGENET_MEAN),
        image_std=list(_IMAGENET_STD),
        rpn_anchor_generator=MMDetAnchorGenerator(_ANCHOR_SIZES, _ASPECT_RATIOS, _STRIDES),
        rpn_pre_nms_top_n_test=1000,
        rpn_post_nms_top_n_test=1000,
        rpn_nms_thresh=0.7,
        box_roi_pool=MMDetRoIAlign(["0", "1", "2", "3"], output_size=7, sampling_ratio=0),
        box_score_thresh=score_thresh,
        box_nms_thresh=nms_thresh,
        box_detections_per_img=detections_per_img,
        # TwoMLPHead(256·7·7 → 1024 → 1024) and box coder weights (10, 10, 5, 5) are torchvision's
        # defaults and equal mmdet's Shared2FCBBoxHead with target stds (0.1, 0.1, 0.2, 0.2).
    )


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    config: Mapping[str, Any],
    *,
    step: int = 0,
    optimizer: Any = None,
    scheduler: Any = None,
    losses: Sequence[float] = (),
    **extra: Any,
) -> Path:
    """Write a curate.frcnn checkpoint atomically (temporary name beside it, then rename)."""
    path = Path(path)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": {**DEFAULT_CONFIG, **config},
        "model": model.state_dict(),
        "step": int(step),
        "optimizer": optimizer.state_dict() if hasattr(optimizer, "state_dict") else optimizer,
        "scheduler": scheduler.state_dict() if hasattr(scheduler, "state_dict") else scheduler,
        "losses": [float(x) for x in losses],
        **extra,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:6]}.tmp")
    try:
        with open(tmp, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_checkpoint(path: str | os.PathLike[str]) -> Any:
    """`torch.load` without code execution; anything that is not a readable checkpoint is a ModelError."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass  # perhaps numpy scalars in mmdet's meta (evaluation scores): allow those data types only
    except Exception as exc:  # torch raises RuntimeError, EOFError, zipfile errors … for foreign bytes
        raise ModelError(f"{path} is not a PyTorch checkpoint: {exc}") from exc
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"{path} is not a PyTorch checkpoint curate can read safely: {exc}") from exc


def _numpy_globals() -> list[Any]:
    """numpy's array and scalar reconstructors and dtypes: data only, nothing that runs code."""
    core = getattr(np, "_core", None) or np.core
    dtypes = [type(np.dtype(t)) for t in (np.float32, np.float64, np.int32, np.int64, np.bool_)]
    reconstruct, scalar = core.multiarray._reconstruct, core.multiarray.scalar
    # numpy 1 (which wrote most mmdet checkpoints) named the module numpy.core, numpy 2 numpy._core
    renamed = [(reconstruct, "numpy.core.multiarray._reconstruct"), (scalar, "numpy.core.multiarray.scalar")]
    return [reconstruct, scalar, np.ndarray, np.dtype, *dtypes, *renamed]


def load_model(
    path: str | os.PathLike[str] | None = None, **overrides: Any
) -> tuple[FasterRCNN, dict[str, Any]]:
    """A model in eval mode from a curate, mmdet or torchvision checkpoint (None: the registry's model).

    `overrides` are `build_model` arguments that win over those a checkpoint stored (e.g. min_size).
    """
    file = registry.resolve(registry.ANIME_FACE_FRCNN, path)
    return model_from_checkpoint(read_checkpoint(file), file, **overrides)


def model_from_checkpoint(checkpoint: Any, file: Path, **overrides: Any) -> tuple[FasterRCNN, dict[str, Any]]:
    """The model a checkpoint already read from `file` holds (see `load_model`)."""
    unknown = set(overrides) - set(DEFAULT_CONFIG)
    if unknown:
        raise InvalidArgument(f"unknown model settings: {', '.join(sorted(unknown))}")
    kind, stored, state = _interpret(checkpoint, file)
    stored = {k: v for k, v in stored.items() if k in DEFAULT_CONFIG}  # settings of a newer version
    config = {**DEFAULT_CONFIG, **stored, **overrides}
    model = build_model(**config)
    if kind == "mmdet":
        state = convert_mmdet_state_dict(state, reference=model.state_dict())
    _load_state(model, state, file)
    model.eval()
    info: dict[str, Any] = {"path": str(file), "format": kind, "config": config}
    if isinstance(checkpoint, Mapping):
        info["step"] = checkpoint.get("step") if kind == FORMAT else None
        info["meta"] = checkpoint.get("meta") if kind == "mmdet" else None
    return model, info


def _interpret(checkpoint: Any, file: Path) -> tuple[str, dict[str, Any], Mapping[str, Tensor]]:
    """(format, stored build settings, state dict) of a loaded checkpoint; ModelError if unrecognised."""
    if not isinstance(checkpoint, Mapping):
        raise ModelError(f"{file} holds a {type(checkpoint).__name__}, not a detector checkpoint")
    if checkpoint.get("format") == FORMAT:
        if checkpoint.get("version") != VERSION:
            raise ModelError(
                f"{file} is a {FORMAT} checkpoint of unknown version {checkpoint.get('version')}"
            )
        return FORMAT, dict(checkpoint.get("config") or {}), _tensors(checkpoint.get("model"), file)
    if isinstance(checkpoint.get("state_dict"), Mapping):
        state = _tensors(checkpoint["state_dict"], file)
        if looks_like_mmdet(state):
            return "mmdet", {}, state
    if looks_like_mmdet(checkpoint):
        return "mmdet", {}, _tensors(checkpoint, file)
    state = checkpoint["model"] if isinstance(checkpoint.get("model"), Mapping) else checkpoint
    if any(str(k).startswith("backbone.body.") for k in state) and any(
        str(k).startswith("roi_heads.") for k in state
    ):
        return "torchvision", {}, _tensors(state, file)
    keys = ", ".join(list(map(str, checkpoint))[:8])
    raise ModelError(
        f"{file} is not a Faster R-CNN face detector curate knows (curate, mmdet or torchvision state dict); "
        f"its top-level keys: {keys or 'none'}"
    )


def _tensors(state: Any, file: Path) -> Mapping[str, Tensor]:
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ModelError(f"{file} has no state dict of tensors where its weights should be")
    return state


def _load_state(model: nn.Module, state: Mapping[str, Tensor], file: Path) -> None:
    """load_state_dict(strict=True), BatchNorm counters aside, with ModelError listing what differs."""
    wanted = model.state_dict()
    state = {k.removeprefix("module."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked") or k in wanted}
    for key, value in wanted.items():  # trainable norms loaded from frozen weights start counting at 0
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(value)
    missing = [k for k in wanted if k not in state]
    unexpected = [k for k in state if k not in wanted]
    shapes = [
        f"{k} {tuple(v.shape)}≠{tuple(wanted[k].shape)}"
        for k, v in state.items()
        if k in wanted and v.shape != wanted[k].shape
    ]
    if missing or unexpected or shapes:
        details = {"missing": missing, "unexpected": unexpected, "wrong shape": shapes}
        text = "; ".join(
            f"{name}: {', '.join(keys[:8])}{' …' if len(keys) > 8 else ''}"
            for name, keys in details.items()
            if keys
        )
        raise ModelError(f"{file} does not fit the face Faster R-CNN: {text}")
    model.load_state_dict(state, strict=True)


def model_scale(width: int, height: int, min_size: int, max_size: int) -> float:
    """The factor GeneralizedRCNNTransform resizes a width×height image by."""
    return min(min_size / min(width, height), max_size / max(width, height))


class FasterRCNNDetector:
    """The Faster R-CNN behind the Detector protocol: batched RGB arrays in, scored face boxes out."""

    name = "frcnn"

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        device: str = "auto",
        batch_size: int = 4,
        score_threshold: float = 0.5,
        nms_threshold: float = 0.5,
        min_size: int | None = None,
        max_size: int | None = None,
    ):
        """`min_size`/`max_size` (the model's input scale) default to what the checkpoint was trained at."""
        if batch_size < 1 or not 0 <= score_threshold <= 1 or not 0 < nms_threshold <= 1:
            raise InvalidArgument(
                "batch_size must be ≥ 1, score_threshold in [0, 1], nms_threshold in (0, 1]"
            )
        self.device = pick_device(device)
        self.batch_size = batch_size
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        sizes = {k: v for k, v in (("min_size", min_size), ("max_size", max_size)) if v is not None}
        # The model's own score filter equals ours: greedy NMS never lets a lower score suppress a higher.
        self.model, self.info = load_model(
            model_path, score_thresh=score_threshold, nms_thresh=nms_threshold, **sizes
        )
        self.min_size: int = self.info["config"]["min_size"]
        self.max_size: int = self.info["config"]["max_size"]
        self.model_file = Path(self.info["path"])
        # resolve() has just verified the registry copy's hash; any other file is hashed when asked
        self._sha256 = registry.ANIME_FACE_FRCNN.sha256 if model_path is None else None
        self._amp = self.device.type == "cuda"
        self.model.to(self.device)
        if self._amp:
            self.model.backbone.to(memory_format=torch.channels_last)

    def decode_scale(self, width: int, height: int, min_face: float) -> float:
        """The model shrinks large images itself; decoding at its size loses nothing and is faster."""
        return min(1.0, model_scale(width, height, self.min_size, self.max_size))

    def detect(
        self, images: Sequence[np.ndarray], min_faces: Sequence[float] | None = None
    ) -> list[list[Box]]:
        """Faces in each H×W×3 uint8 RGB image, best first, in that image's pixels."""
        # A CPU gains nothing from batching (one image already fills its cores) and loses to padding; on
        # a GPU, images batched with others of like shape are padded the least.
        step = self.batch_size if self.device.type == "cuda" else 1
        order = sorted(
            range(len(images)), key=lambda i: (images[i].shape[0] > images[i].shape[1], images[i].shape[:2])
        )
        found: list[list[Box]] = [[] for _ in images]
        for start in range(0, len(order), step):
            chunk = order[start : start + step]
            for index, boxes in zip(chunk, self._detect_batch([images[i] for i in chunk]), strict=True):
                found[index] = boxes
        if min_faces is not None:
            found = [[b for b in boxes if b.side >= m] for boxes, m in zip(found, min_faces, strict=True)]
        return found

    @torch.inference_mode()
    def _detect_batch(self, images: Sequence[np.ndarray]) -> list[list[Box]]:
        model = self.model
        tensors = [self._to_tensor(image) for image in images]
        sizes = [(t.shape[-2], t.shape[-1]) for t in tensors]
        batch, _ = model.transform(tensors)
        pixels = batch.tensors.contiguous(memory_format=torch.channels_last) if self._amp else batch.tensors
        # Half precision for the backbone only: box regression in fp16 is off by up to a pixel at 1333 px.
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self._amp):
            features = model.backbone(pixels)
        features = {k: v.float() for k, v in features.items()}
        proposals, _ = model.rpn(batch, features)
        detections, _ = model.roi_heads(features, proposals, batch.image_sizes)
        detections = model.transform.postprocess(detections, batch.image_sizes, sizes)
        return [self._boxes(d) for d in detections]

    def _to_tensor(self, image: np.ndarray) -> Tensor:
        """uint8 H×W×3 (or grey H×W) to float C×H×W in [0, 1] on the device; uint8 travels, floats do not."""
        array = np.asarray(image)
        if array.ndim == 2:
            array = np.repeat(array[:, :, None], 3, axis=2)
        if array.ndim != 3 or array.shape[2] < 3 or array.dtype != np.uint8:
            raise InvalidArgument(f"expected an H×W×3 uint8 RGB image, got {array.dtype} {array.shape}")
        array = np.ascontiguousarray(array[:, :, :3])
        if not array.flags.writeable:  # Pillow hands out read-only arrays; torch wants writable memory
            array = array.copy()
        pixels = torch.from_numpy(array).to(self.device, non_blocking=True)
        return pixels.permute(2, 0, 1).float().div_(255.0)

    def _boxes(self, detection: dict[str, Tensor]) -> list[Box]:
        coords = detection["boxes"].float().cpu().tolist()
        scores = detection["scores"].float().cpu().tolist()
        boxes = [
            Box(*xyxy, score=s) for xyxy, s in zip(coords, scores, strict=True) if s >= self.score_threshold
        ]
        return sorted(boxes, key=lambda b: -b.score)

    def sha256(self) -> str:
        """The model file's sha256, computed once."""
        if self._sha256 is None:
            self._sha256 = registry.sha256_of(self.model_file)
        return self._sha256

    def params(self) -> dict[str, Any]:
        return {
            "detector": self.name,
            "model": self.model_file.name,
            "model_sha256": self.sha256(),
            "model_format": self.info["format"],
            "score_threshold": self.score_threshold,
            "nms_threshold": self.nms_threshold,
            "min_size": self.min_size,
            "max_size": self.max_size,
            "device": self.device.type,
            "precision": "fp16-backbone" if self._amp else "fp32",
        }
