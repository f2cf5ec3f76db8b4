"""The torchvision Faster R-CNN: its mmdet layout, checkpoint conversion and loading, the Detector API."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from curate.errors import ModelError  # noqa: E402
from detect.faces.boxes import Box  # noqa: E402
from detect.faces.decode import decode  # noqa: E402
from detect.faces.frcnn import (  # noqa: E402
    FasterRCNNDetector,
    build_model,
    load_model,
    save_checkpoint,
)
from detect.faces.mmdet import convert_mmdet_state_dict  # noqa: E402

SMALL = {"min_size": 256, "max_size": 427}  # fast on a CPU; the layout does not depend on it
FACE = "dbregion__code_ap_ois_ods_images_1.input.png"  # 1024×1430, one face at x382 y255 w303 h303

# mmdet v2 faster_rcnn_r50_fpn names and shapes, written out by hand (not derived from the converter)
MMDET_HEADS = {
    **{f"neck.lateral_convs.{i}.conv.weight": (256, c, 1, 1) for i, c in enumerate((256, 512, 1024, 2048))},
    **{f"neck.lateral_convs.{i}.conv.bias": (256,) for i in range(4)},
    **{f"neck.fpn_convs.{i}.conv.weight": (256, 256, 3, 3) for i in range(4)},
    **{f"neck.fpn_convs.{i}.conv.bias": (256,) for i in range(4)},
    "rpn_head.rpn_conv.weight": (256, 256, 3, 3),
    "rpn_head.rpn_conv.bias": (256,),
    "rpn_head.rpn_cls.weight": (3, 256, 1, 1),  # sigmoid objectness: one channel per anchor
    "rpn_head.rpn_cls.bias": (3,),
    "rpn_head.rpn_reg.weight": (12, 256, 1, 1),
    "rpn_head.rpn_reg.bias": (12,),
    "roi_head.bbox_head.shared_fcs.0.weight": (1024, 256 * 7 * 7),
    "roi_head.bbox_head.shared_fcs.0.bias": (1024,),
    "roi_head.bbox_head.shared_fcs.1.weight": (1024, 1024),
    "roi_head.bbox_head.shared_fcs.1.bias": (1024,),
    "roi_head.bbox_head.fc_cls.weight": (2, 1024),  # [face, background]
    "roi_head.bbox_head.fc_cls.bias": (2,),
    "roi_head.bbox_head.fc_reg.weight": (4, 1024),  # face only: reg_class_agnostic=False, one class
    "roi_head.bbox_head.fc_reg.bias": (4,),
}
# where each of them lives in torchvision's FasterRCNN, weight and bias alike (the backbone gains `.body`)
TORCHVISION_MODULE = {
    **{f"neck.lateral_convs.{i}.conv": f"backbone.fpn.inner_blocks.{i}.0" for i in range(4)},
    **{f"neck.fpn_convs.{i}.conv": f"backbone.fpn.layer_blocks.{i}.0" for i in range(4)},
    "rpn_head.rpn_conv": "rpn.head.conv.0.0",
    "rpn_head.rpn_cls": "rpn.head.cls_logits",
    "rpn_head.rpn_reg": "rpn.head.bbox_pred",
    "roi_head.bbox_head.shared_fcs.0": "roi_heads.box_head.fc6",
    "roi_head.bbox_head.shared_fcs.1": "roi_heads.box_head.fc7",
    "roi_head.bbox_head.fc_cls": "roi_heads.box_predictor.cls_score",
    "roi_head.bbox_head.fc_reg": "roi_heads.box_predictor.bbox_pred",
}


def torchvision_name(mmdet_key: str) -> str:
    if mmdet_key.startswith("backbone."):
        return "backbone.body." + mmdet_key.removeprefix("backbone.")
    module, param = mmdet_key.rsplit(".", 1)
    return f"{TORCHVISION_MODULE[module]}.{param}"


def random_mmdet_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A full mmdet checkpoint state dict with random but well-scaled values (so the net's output is sane)."""
    from torchvision.models import resnet50

    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for key, value in resnet50(weights=None).state_dict().items():
        if key.startswith("fc."):
            continue  # mmdet's ResNet has no classifier
        if key.endswith("num_batches_tracked"):
            state[f"backbone.{key}"] = torch.tensor(1000 + len(state))
        elif key.endswith(("running_var", ".weight")) and value.ndim == 1:
            state[f"backbone.{key}"] = 0.5 + torch.rand(value.shape, generator=gen) * 0.5
        elif value.ndim == 1:
            state[f"backbone.{key}"] = torch.randn(value.shape, generator=gen) * 0.05
        else:
            state[f"backbone.{key}"] = _he(value.shape, gen)
    for key, shape in MMDET_HEADS.items():
        state[key] = _he(shape, gen) if len(shape) > 1 else torch.randn(shape, generator=gen) * 0.01
    # a confident face classifier: mmdet's row 0 is the face, row 1 the background
    state["roi_head.bbox_head.fc_cls.bias"] = torch.tensor([6.0, -6.0])
    return state


def _he(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    fan_in = int(np.prod(shape[1:]))
    return torch.randn(shape, generator=gen) * (1.0 / fan_in) ** 0.5


@pytest.fixture(scope="module")
def mmdet_state() -> dict[str, torch.Tensor]:
    return random_mmdet_state()


@pytest.fixture(scope="module")
def mmdet_file(mmdet_state, tmp_path_factory) -> Path:
    """The synthetic weights saved the way mmcv's save_checkpoint does."""
    path = tmp_path_factory.mktemp("models") / "anime_face_faster_rcnn.pth"
    meta = {"mmdet_version": "2.18.0", "CLASSES": ("face",), "epoch": 12, "iter": 3000, "config": "..."}
    torch.save({"meta": meta, "state_dict": mmdet_state}, path)
    return path


@pytest.fixture(scope="module")
def face_rgb(fixtures) -> np.ndarray:
    return decode(fixtures / "images" / "faces" / FACE, scale_for=lambda w, h: 0.25).rgb


def test_build_model_is_mmdet_faster_rcnn_r50_fpn():
    from torchvision.ops import FrozenBatchNorm2d

    model = build_model(**SMALL)
    norms = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d | torch.nn.BatchNorm2d)]
    assert len(norms) == 53 and all(isinstance(m, FrozenBatchNorm2d) for m in norms)
    assert model.rpn.anchor_generator.num_anchors_per_location() == [3] * 5
    assert model.rpn._pre_nms_top_n["testing"] == model.rpn._post_nms_top_n["testing"] == 1000
    assert model.rpn.nms_thresh == 0.7
    assert model.roi_heads.box_roi_pool.featmap_names == ["0", "1", "2", "3"]
    assert model.roi_heads.box_roi_pool.output_size == (7, 7)
    assert model.roi_heads.box_roi_pool.sampling_ratio == 0
    assert model.roi_heads.box_coder.weights == (10.0, 10.0, 5.0, 5.0)
    assert (model.roi_heads.score_thresh, model.roi_heads.nms_thresh) == (0.05, 0.5)
    assert model.roi_heads.detections_per_img == 100
    assert model.transform.min_size == (256,) and model.transform.max_size == 427
    assert model.roi_heads.box_predictor.cls_score.out_features == 2
    trainable = build_model(trainable_norm=True)
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in trainable.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in trainable.modules()) == 53


def test_anchors_follow_mmdet():
    """Unrounded base anchors (mmdet does not round) and a stride of exactly 64 on the pooled level."""
    from torchvision.models.detection.image_list import ImageList

    generator = build_model(**SMALL).rpn.anchor_generator
    half = 32 * 2**0.5 / 2  # stride 4 × octave scale 8 = 32 px, ratio h/w = 0.5
    expected = torch.tensor([-half, -half / 2, half, half / 2])
    assert torch.allclose(generator.cell_anchors[0][0], expected, atol=1e-4)
    image = ImageList(torch.zeros(1, 3, 800, 1216), [(800, 1216)])
    features = [torch.zeros(1, 1, 800 // s, 1216 // s) for s in (4, 8, 16, 32)] + [torch.zeros(1, 1, 13, 19)]
    pooled = generator(image, features)[0][-13 * 19 * 3 :].view(13, 19, 3, 4)
    centres = (pooled[..., 0] + pooled[..., 2]) / 2
    assert centres[0, 1, 0].item() == pytest.approx(64.0) and centres[0, 18, 0].item() == pytest.approx(
        18 * 64
    )


def test_convert_fills_every_key_from_mmdet(mmdet_state):
    model = build_model()
    reference = model.state_dict()
    converted = convert_mmdet_state_dict(mmdet_state, reference=reference)
    assert set(converted) == set(reference)
    model.load_state_dict(converted, strict=True)
    used = set()
    for key, value in mmdet_state.items():
        if key.endswith("num_batches_tracked"):
            continue  # FrozenBatchNorm2d keeps no counter: the only keys allowed to go unused
        name = torchvision_name(key)
        used.add(name)
        got = model.state_dict()[name]
        if key.startswith("roi_head.bbox_head.fc_cls."):
            assert torch.equal(got[0], value[1]) and torch.equal(got[1], value[0])  # background first
        elif key.startswith("roi_head.bbox_head.fc_reg."):
            assert torch.equal(got[:4], torch.zeros_like(got[:4]))  # background rows, never used
            assert torch.equal(got[4:], value)
        else:
            assert torch.equal(got, value), key
    assert used == set(reference)


def test_convert_keeps_counters_for_trainable_norms(mmdet_state):
    reference = build_model(trainable_norm=True).state_dict()
    converted = convert_mmdet_state_dict(mmdet_state, reference=reference)
    assert (
        converted["backbone.body.bn1.num_batches_tracked"] == mmdet_state["backbone.bn1.num_batches_tracked"]
    )


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda s: s.update({"roi_head.bbox_head.fc_extra.weight": torch.zeros(1)}), "fc_extra"),
        (lambda s: s.pop("rpn_head.rpn_reg.bias"), "rpn.head.bbox_pred.bias"),
        (lambda s: s.update({"roi_head.bbox_head.fc_cls.weight": torch.zeros(3, 1024)}), "cls_score.weight"),
    ],
    ids=["unmapped", "missing", "shape"],
)
def test_convert_rejects_a_different_network(mmdet_state, change, named):
    state = dict(mmdet_state)
    change(state)
    with pytest.raises(ModelError, match=named):
        convert_mmdet_state_dict(state, reference=build_model().state_dict())


def test_mmdet_checkpoint_through_load_model_and_detector(mmdet_file, mmdet_state, face_rgb):
    model, info = load_model(mmdet_file, **SMALL)
    assert info["format"] == "mmdet" and info["meta"]["CLASSES"] == ("face",)
    assert not model.training
    assert torch.equal(
        model.state_dict()["roi_heads.box_head.fc6.weight"],
        mmdet_state["roi_head.bbox_head.shared_fcs.0.weight"],
    )

    detector = FasterRCNNDetector(model_path=mmdet_file, device="cpu", batch_size=2, **SMALL)
    height, width = face_rgb.shape[:2]
    found = detector.detect([face_rgb, face_rgb[: height // 2]])
    assert len(found) == 2 and found[0], "the confident random classifier keeps boxes"
    for boxes, (h, w) in zip(found, [(height, width), (height // 2, width)], strict=True):
        assert all(isinstance(b, Box) and b.score >= 0.5 for b in boxes)
        assert [b.score for b in boxes] == sorted((b.score for b in boxes), reverse=True)
        assert all(0 <= b.x0 < b.x1 <= w and 0 <= b.y0 < b.y1 <= h for b in boxes)
    params = detector.params()
    assert params["detector"] == "frcnn" and params["model"] == mmdet_file.name
    assert params["model_sha256"] == hashlib.sha256(mmdet_file.read_bytes()).hexdigest()
    assert params["model_format"] == "mmdet" and params["min_size"] == 256


def test_bare_mmdet_state_dict_loads(mmdet_state, tmp_path):
    path = tmp_path / "bare.pth"
    torch.save(mmdet_state, path)
    assert load_model(path, **SMALL)[1]["format"] == "mmdet"


def test_min_faces_and_thresholds_filter(mmdet_file, face_rgb):
    detector = FasterRCNNDetector(model_path=mmdet_file, device="cpu", score_threshold=0.0, **SMALL)
    everything = detector.detect([face_rgb])[0]
    assert everything
    smallest = min(b.side for b in everything)
    kept = detector.detect([face_rgb], min_faces=[smallest + 1])[0]
    assert all(b.side >= smallest + 1 for b in kept) and len(kept) < len(everything)
    strict = FasterRCNNDetector(model_path=mmdet_file, device="cpu", score_threshold=0.9999, **SMALL)
    assert all(b.score >= 0.9999 for b in strict.detect([face_rgb])[0])
    assert detector.detect([]) == []


def test_decode_scale_is_the_models_own_shrink(mmdet_file):
    detector = FasterRCNNDetector(model_path=mmdet_file, device="cpu")  # 800 / 1333 as trained
    assert detector.decode_scale(2000, 3000, 40) == pytest.approx(0.4)  # shorter side to 800
    assert detector.decode_scale(1000, 4000, 40) == pytest.approx(1333 / 4000)  # longer side capped
    assert detector.decode_scale(600, 700, 40) == 1.0  # the model enlarges it: decode it whole


def test_curate_checkpoint_round_trip(tmp_path):
    torch.manual_seed(1)
    model = build_model(trainable_norm=True, **SMALL)
    config = {"trainable_norm": True, **SMALL}
    path = save_checkpoint(tmp_path / "m.pt", model, config, step=7, losses=[1.0, 0.5])
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temporary file left behind
    loaded, info = load_model(path, min_size=320)
    assert info["format"] == "curate.frcnn" and info["step"] == 7
    assert info["config"]["trainable_norm"] is True and loaded.transform.min_size == (320,)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_plain_torchvision_state_dict_loads(tmp_path):
    model = build_model(**SMALL)
    path = tmp_path / "tv.pth"
    torch.save(model.state_dict(), path)
    loaded, info = load_model(path)
    assert info["format"] == "torchvision"
    assert torch.equal(
        loaded.state_dict()["rpn.head.cls_logits.weight"], model.state_dict()["rpn.head.cls_logits.weight"]
    )


class Payload:
    """Pickled objects of arbitrary classes run code on load; weights_only refuses them."""

    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.parametrize(
    "content",
    [
        b"not a checkpoint at all",
        b"",
        {"weights": torch.zeros(3)},
        ["a", "list"],
        {"state_dict": {"backbone.conv1.weight": torch.zeros(1)}},
        Payload(),
    ],
    ids=["garbage", "empty", "unknown-keys", "list", "partial-mmdet", "code"],
)
def test_unreadable_or_foreign_files_are_model_errors(tmp_path, content):
    path = tmp_path / "model.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(ModelError, match=r"model\.pth"):
        load_model(path)


def test_missing_model_file_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        FasterRCNNDetector(model_path=tmp_path / "nope.pth", device="cpu")


def test_registry_model_offline_and_absent(tmp_path, monkeypatch):
    monkeypatch.setenv("CURATE_CACHE", str(tmp_path))
    monkeypatch.setenv("CURATE_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ModelError) as caught:
        load_model()
    assert time.monotonic() - start < 5
    message = str(caught.value)
    assert str(tmp_path / "anime-face-frcnn" / "mmdet_anime-face_faster-rcnn.pth") in message
    assert "mmdet_anime-face_faster-rcnn.pth" in message and "CURATE_OFFLINE" in message
    with pytest.raises(ModelError):
        FasterRCNNDetector(device="cpu")


@pytest.mark.parametrize("numpy_module", ["numpy._core", "numpy.core"], ids=["numpy2", "numpy1"])
def test_mmdet_meta_with_numpy_values_loads(mmdet_state, tmp_path, numpy_module):
    """mmcv keeps evaluation scores in `meta`, often as numpy values; they are data, so they may load."""
    path = tmp_path / "scores.pth"
    meta = {"hook_msgs": {"best_score": np.float64(0.93), "curve": np.arange(3.0)}, "CLASSES": ("face",)}
    torch.save({"meta": meta, "state_dict": mmdet_state}, path, _use_new_zipfile_serialization=False)
    here = getattr(np, "_core", np.core).multiarray.__name__.encode()
    data = path.read_bytes()
    assert here + b"\n" in data
    path.write_bytes(data.replace(here + b"\n", numpy_module.encode() + b".multiarray\n"))
    _, info = load_model(path, **SMALL)
    assert info["meta"]["hook_msgs"]["best_score"] == pytest.approx(0.93)
