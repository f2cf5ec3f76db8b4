"""COCO-format face annotations: read ground truth for training and evaluation, write detections back."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from curate.errors import InvalidArgument
from detect.faces.boxes import Box


@dataclass
class CocoImage:
    """One image of a COCO file: where it is, its size, and its face boxes (score 1.0 for ground truth)."""

    id: int
    path: Path
    width: int | None
    height: int | None
    boxes: list[Box] = field(default_factory=list)
    ignore: list[Box] = field(default_factory=list)  # `iscrowd` regions: neither hits nor misses


def load_coco(
    path: str | Path, *, images_root: str | Path | None = None, category: str | None = None
) -> list[CocoImage]:
    """The images of a COCO file with their boxes; `category` keeps one category's boxes (default all).

    Image `file_name`s are resolved against `images_root`, by default the folder holding the file.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidArgument(f"annotations not found: {path}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgument(f"{path} is not a COCO JSON file: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise InvalidArgument(f"{path} has no 'images' list: not a COCO annotation file")
    root = Path(images_root) if images_root is not None else path.parent
    wanted = _category_ids(data, category, path)
    images: dict[int, CocoImage] = {}
    for entry in data["images"]:
        try:
            image_id, name = int(entry["id"]), str(entry["file_name"])
        except (KeyError, TypeError, ValueError):
            raise InvalidArgument(f"{path}: an image entry lacks 'id' or 'file_name': {entry!r}") from None
        images[image_id] = CocoImage(image_id, root / name, entry.get("width"), entry.get("height"))
    for ann in data.get("annotations", []):
        if wanted is not None and ann.get("category_id") not in wanted:
            continue
        try:
            image = images[int(ann["image_id"])]
            x, y, w, h = (float(v) for v in ann["bbox"])
        except KeyError as exc:
            raise InvalidArgument(f"{path}: annotation {ann.get('id')!r} refers to a missing {exc}") from None
        except (TypeError, ValueError):
            raise InvalidArgument(f"{path}: annotation {ann.get('id')!r} has a malformed bbox") from None
        if w <= 0 or h <= 0:
            raise InvalidArgument(f"{path}: annotation {ann.get('id')!r} has an empty bbox {ann['bbox']}")
        box = Box.from_xywh(x, y, w, h, float(ann.get("score", 1.0)))
        (image.ignore if ann.get("iscrowd") else image.boxes).append(box)
    return list(images.values())


def _category_ids(data: dict, category: str | None, path: Path) -> set[int] | None:
    if category is None:
        return None
    ids = {int(c["id"]) for c in data.get("categories", []) if c.get("name") == category}
    if not ids:
        names = sorted(str(c.get("name")) for c in data.get("categories", []))
        raise InvalidArgument(f"{path} has no category {category!r} (it has: {', '.join(names) or 'none'})")
    return ids


def write_coco(
    path: str | Path,
    images: Sequence[tuple[str, int, int, Sequence[Box]]],
    *,
    category: str = "face",
    scores: bool = False,
) -> Path:
    """Write `(file_name, width, height, boxes)` as a COCO file; `scores` keeps each box's score."""
    doc: dict = {"images": [], "annotations": [], "categories": [{"id": 1, "name": category}]}
    for image_id, (name, width, height, boxes) in enumerate(images, start=1):
        doc["images"].append({"id": image_id, "file_name": name, "width": width, "height": height})
        for box in boxes:
            ann = {
                "id": len(doc["annotations"]) + 1,
                "image_id": image_id,
                "category_id": 1,
                "bbox": [round(box.x0, 2), round(box.y0, 2), round(box.width, 2), round(box.height, 2)],
                "area": round(box.area, 2),
                "iscrowd": 0,
            }
            if scores:
                ann["score"] = round(box.score, 5)
            doc["annotations"].append(ann)
    path = Path(path)
    path.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    return path
