"""Small PNG charts drawn with Pillow (already a dependency), so no plotting library is needed."""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path

_BACKGROUND, _BAR, _TEXT, _GRID = (255, 255, 255), (70, 110, 190), (30, 30, 30), (225, 225, 225)


def bar_chart(items: Sequence[tuple[str, int]], path: str | Path, *, title: str, total: int) -> Path:
    """Horizontal bars, one per (name, count), labelled with the count and its share of `total`."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=14)
    bold = ImageFont.load_default(size=16)
    row, pad, bar_width = 22, 12, 420
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    name_width = max([int(probe.textlength(name, font=font)) for name, _ in items] + [40])
    width = pad + name_width + pad + bar_width + 110
    height = pad * 2 + 28 + row * max(len(items), 1)
    image = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(image)
    draw.text((pad, pad), title, fill=_TEXT, font=bold)
    top = max((count for _, count in items), default=1) or 1
    x0 = pad + name_width + pad
    for quarter in range(5):
        x = x0 + bar_width * quarter // 4
        draw.line([(x, pad + 26), (x, height - pad)], fill=_GRID)
    for index, (name, count) in enumerate(items):
        y = pad + 28 + index * row
        draw.text((x0 - pad - draw.textlength(name, font=font), y + 2), name, fill=_TEXT, font=font)
        draw.rectangle([x0, y + 3, x0 + max(1, round(bar_width * count / top)), y + row - 3], fill=_BAR)
        share = f"{count:,}  {100 * count / total:.0f}%" if total else f"{count:,}"
        draw.text((x0 + bar_width + 8, y + 2), share, fill=_TEXT, font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:6]}.tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path
