"""mmdet v2 Faster R-CNN R50-FPN checkpoints (hysts' anime-face model) as torchvision state dicts.

mmdet and torchvision build the same network under different names. Two layouts also differ: mmdet's
classifier puts the background class last where torchvision puts it first, and mmdet's class-specific
box regression has no rows for the background, which torchvision's has (and never uses).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from curate.errors import ModelError

if TYPE_CHECKING:  # torch is imported where tensors are touched, as everywhere outside detect.faces.frcnn
    from torch import Tensor

# how a tensor changes on its way from mmdet to torchvision
_Transform = Callable[["Tensor"], "Tensor"]


def _background_first(tensor: Tensor) -> Tensor:
    """mmdet's fc_cls rows are [classes..., background]; torchvision's are [background, classes...]."""
    import torch

    return torch.cat([tensor[-1:], tensor[:-1]])


def _with_background_rows(tensor: Tensor) -> Tensor:
    """torchvision's bbox_pred has 4 (unused) rows for the background class ahead of mmdet's."""
    import torch

    return torch.cat([tensor.new_zeros((4, *tensor.shape[1:])), tensor])


def _same(tensor: Tensor) -> Tensor:
    return tensor


# (mmdet key pattern, torchvision key template, transform)
_RULES: list[tuple[re.Pattern[str], str, _Transform]] = [
    (re.compile(p), t, f)
    for p, t, f in [
        (r"backbone\.(.+)", r"backbone.body.\1", _same),
        (r"neck\.lateral_convs\.(\d+)\.conv\.(weight|bias)", r"backbone.fpn.inner_blocks.\1.0.\2", _same),
        (r"neck\.fpn_convs\.(\d+)\.conv\.(weight|bias)", r"backbone.fpn.layer_blocks.\1.0.\2", _same),
        (r"rpn_head\.rpn_conv\.(weight|bias)", r"rpn.head.conv.0.0.\1", _same),
        (r"rpn_head\.rpn_cls\.(weight|bias)", r"rpn.head.cls_logits.\1", _same),
        (r"rpn_head\.rpn_reg\.(weight|bias)", r"rpn.head.bbox_pred.\1", _same),
        (r"roi_head\.bbox_head\.shared_fcs\.0\.(weight|bias)", r"roi_heads.box_head.fc6.\1", _same),
        (r"roi_head\.bbox_head\.shared_fcs\.1\.(weight|bias)", r"roi_heads.box_head.fc7.\1", _same),
        (
            r"roi_head\.bbox_head\.fc_cls\.(weight|bias)",
            r"roi_heads.box_predictor.cls_score.\1",
            _background_first,
        ),
        (
            r"roi_head\.bbox_head\.fc_reg\.(weight|bias)",
            r"roi_heads.box_predictor.bbox_pred.\1",
            _with_background_rows,
        ),
    ]
]
# Keys any mmdet checkpoint has that a torchvision model may lack: BatchNorm's counters (FrozenBatchNorm2d
# keeps none; they never affect the output).
_DROPPABLE = re.compile(r".*\.num_batches_tracked")

MMDET_MARKERS = ("neck.lateral_convs.", "rpn_head.rpn_conv.", "roi_head.bbox_head.")


def looks_like_mmdet(state: Mapping[str, object]) -> bool:
    """True when a state dict uses mmdet's module names (neck/rpn_head/roi_head)."""
    keys = [k.removeprefix("module.") for k in state]
    return any(k.startswith("backbone.") for k in keys) and all(
        any(k.startswith(marker) for k in keys) for marker in MMDET_MARKERS
    )


def mmdet_key(key: str) -> tuple[str, _Transform] | None:
    """The torchvision name of an mmdet key and the change its tensor needs; None when no rule maps it."""
    for pattern, template, transform in _RULES:
        if pattern.fullmatch(key):
            return pattern.sub(template, key), transform
    return None


def convert_mmdet_state_dict(
    state: Mapping[str, Tensor], *, reference: Mapping[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """mmdet v2 Faster R-CNN R50-FPN weights renamed and laid out for `detect.faces.frcnn.build_model`.

    `reference` is the target model's state dict (default: a fresh `build_model()`); every one of its
    keys must be filled with the right shape and every mmdet key used, else ModelError lists them.
    """
    if reference is None:
        from detect.faces.frcnn import build_model

        reference = build_model().state_dict()
    if state and all(k.startswith("module.") for k in state):  # saved from a DataParallel wrapper
        state = {k.removeprefix("module."): v for k, v in state.items()}
    converted: dict[str, Tensor] = {}
    unmapped: list[str] = []
    for key, tensor in state.items():
        mapped = mmdet_key(key)
        if mapped is None:
            unmapped.append(key)
            continue
        target, transform = mapped
        if _DROPPABLE.fullmatch(key) and target not in reference:
            continue  # deliberately dropped: FrozenBatchNorm2d has no counter
        converted[target] = transform(tensor)
    _check(converted, reference, unmapped)
    return converted


def _check(converted: Mapping[str, Tensor], reference: Mapping[str, Tensor], unmapped: list[str]) -> None:
    """Raise ModelError naming every key that has no home, is missing, or has the wrong shape."""
    problems = []
    if unmapped:
        problems.append(f"mmdet keys with no torchvision counterpart: {_listing(unmapped)}")
    unexpected = [k for k in converted if k not in reference]
    if unexpected:
        problems.append(f"converted keys the model does not have: {_listing(unexpected)}")
    missing = [k for k in reference if k not in converted]
    if missing:
        problems.append(f"model keys the checkpoint does not fill: {_listing(missing)}")
    shapes = [
        f"{k} {tuple(v.shape)} != model {tuple(reference[k].shape)}"
        for k, v in converted.items()
        if k in reference and v.shape != reference[k].shape
    ]
    if shapes:
        problems.append(f"shape mismatches: {_listing(shapes)}")
    if problems:
        raise ModelError("not an mmdet Faster R-CNN R50-FPN face checkpoint: " + "; ".join(problems))


def _listing(items: list[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown} … ({len(items)} in all)"
