"""Other StyleGAN2 ports' state dicts renamed to ours: NVlabs (stylegan2-ada-pytorch, stylegan3's
networks_stylegan2) and rosinality's stylegan2-pytorch.

Both store equalised-learning-rate weights the way we do (unit-scale weights, run-time gains, mapping
layers at lr ×0.01 with the same run-time semantics), so most tensors copy as they are. Two things
change values. Their upsampling convolution is a transposed convolution with the weight as stored,
that is zero insertion followed by a true convolution, while ours correlates after zero insertion:
those weights are flipped. Rosinality keeps a leading batch axis on its modulated weights and its
RGB bias, and a [1] noise strength: reshaped. Label layers never carry over from these two (NVlabs
conditions through a separately normalised embedding and a projection D; rosinality has no labels).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from curate.errors import ModelError

SYNTHESIS_LAYER = ("affine.weight", "affine.bias", "weight", "bias", "noise_strength", "noise_const")
TORGB = ("affine.weight", "affine.bias", "weight", "bias")
IGNORED = re.compile(r"(^|\.)(resample_filter|kernel)$")  # fixed FIR filters: ours are built in


@dataclass
class Renamed:
    """A network's tensors under our names, plus what was left out on purpose."""

    tensors: dict[str, Any] = field(default_factory=dict)
    label_keys: list[str] = field(default_factory=list)  # their label layers, which ours do not share


def _block(resolution: str) -> int:
    return int(math.log2(int(resolution))) - 2


def _flip(value):
    return value.flip([2, 3])


def _rename(flat: dict[str, Any], rules, label_prefixes: tuple[str, ...], what: str) -> Renamed:
    """Apply (pattern, name(match), transform) rules to every key; unknown keys are an error, so an
    architecture we do not share (StyleGAN3, resnet G, skip D) is refused instead of half-copied."""
    renamed, unknown = Renamed(), []
    for key, value in flat.items():
        if IGNORED.search(key):
            continue
        if key.startswith(label_prefixes):
            renamed.label_keys.append(key)
            continue
        for pattern, name, transform in rules:
            match = pattern.fullmatch(key)
            if match:
                target = name(match)
                renamed.tensors[target] = transform(value, match) if transform else value
                break
        else:
            unknown.append(key)
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise ModelError(
            f"the file's {what} holds tensors a StyleGAN2 config-F network (skip generator, residual "
            f"discriminator) does not have: {shown}"
        )
    return renamed


Rule = tuple[re.Pattern, Callable[[re.Match], str], Callable | None]


def _rules(*rules: tuple[str, Callable[[re.Match], str], Callable | None]) -> list[Rule]:
    return [(re.compile(pattern), name, transform) for pattern, name, transform in rules]


_LAYER = "|".join(re.escape(name) for name in SYNTHESIS_LAYER)
_RGB = "|".join(re.escape(name) for name in TORGB)

NVLABS_G = _rules(
    (r"mapping\.fc(\d+)\.(weight|bias)", lambda m: f"mapping.layers.{m[1]}.{m[2]}", None),
    (r"mapping\.w_avg", lambda m: "mapping.w_avg", None),
    (r"synthesis\.b(\d+)\.const", lambda m: f"synthesis.blocks.{_block(m[1])}.const", None),
    (
        rf"synthesis\.b(\d+)\.(conv0|conv1)\.({_LAYER})",
        lambda m: f"synthesis.blocks.{_block(m[1])}.{m[2]}.{m[3]}",
        # conv0 upsamples: a true convolution there, a correlation here
        lambda v, m: _flip(v) if m[2] == "conv0" and m[3] == "weight" else v,
    ),
    (rf"synthesis\.b(\d+)\.torgb\.({_RGB})", lambda m: f"synthesis.blocks.{_block(m[1])}.torgb.{m[2]}", None),
)


def nvlabs_generator(flat: dict[str, Any]) -> Renamed:
    return _rename(flat, NVLABS_G, ("mapping.embed.",), "generator")


def nvlabs_discriminator(flat: dict[str, Any]) -> Renamed:
    resolutions = [int(m[1]) for key in flat if (m := re.match(r"b(\d+)\.", key))]
    top = max(resolutions, default=4)

    def block(res: str) -> int:
        return int(math.log2(top)) - int(math.log2(int(res)))

    rules = _rules(
        (r"b(\d+)\.fromrgb\.(weight|bias)", lambda m: _fromrgb(m[1], block(m[1]), m[2]), None),
        (r"b(\d+)\.(conv0|conv1)\.(weight|bias)", lambda m: f"blocks.{block(m[1])}.{m[2]}.{m[3]}", None),
        (r"b(\d+)\.skip\.weight", lambda m: f"blocks.{block(m[1])}.skip.weight", None),
        (r"b4\.(conv|fc|out)\.(weight|bias)", lambda m: f"{m[1]}.{m[2]}", None),
    )
    # a conditional NVlabs D projects onto a mapped label embedding: its `mapping` and `out` (sized by
    # the embedding, not by the labels) have no counterpart in our per-label output
    conditional = any(key.startswith("mapping.") for key in flat)
    renamed = _rename(flat, rules, ("mapping.",), "discriminator")
    if conditional:
        for key in ("out.weight", "out.bias"):
            renamed.label_keys.append(key)
            renamed.tensors.pop(key, None)
    return renamed


def _fromrgb(res: str, block: int, param: str) -> str:
    # only the top block reads RGB; a 4² network reads it in its epilogue (our `from_rgb4`)
    return f"from_rgb4.{param}" if res == "4" else f"blocks.{block}.fromrgb.{param}"


def _rosinality_noise(index: int) -> str:
    """noises.noise_i is the i-th synthesis layer's: 4²'s conv, then each block's conv0 and conv1."""
    if index == 0:
        return "synthesis.blocks.0.conv1.noise_const"
    return f"synthesis.blocks.{(index + 1) // 2}.conv{1 - index % 2}.noise_const"


def _styled_conv(prefix: str, rest: str, value, *, up: bool):
    """(our name suffix, value) of one StyledConv tensor: conv.weight [1,O,I,k,k], conv.modulation.*,
    noise.weight [1], activate.bias."""
    if rest == "conv.weight":
        value = value[0]
        return f"{prefix}.weight", _flip(value) if up else value
    if rest.startswith("conv.modulation."):
        return f"{prefix}.affine.{rest.removeprefix('conv.modulation.')}", value
    if rest == "noise.weight":
        return f"{prefix}.noise_strength", value.reshape(())
    if rest == "activate.bias":
        return f"{prefix}.bias", value
    return None, value


def _to_rgb(prefix: str, rest: str, value):
    if rest == "conv.weight":
        return f"{prefix}.weight", value[0]
    if rest.startswith("conv.modulation."):
        return f"{prefix}.affine.{rest.removeprefix('conv.modulation.')}", value
    if rest == "bias":
        return f"{prefix}.bias", value.reshape(-1)
    return None, value


def rosinality_generator(flat: dict[str, Any]) -> Renamed:
    renamed, unknown = Renamed(), []
    for key, value in flat.items():
        if IGNORED.search(key):
            continue
        name = None
        if match := re.fullmatch(r"style\.(\d+)\.(weight|bias)", key):
            name = f"mapping.layers.{int(match[1]) - 1}.{match[2]}"  # style.0 is the pixel norm
        elif key == "input.input":
            name, value = "synthesis.blocks.0.const", value[0]
        elif match := re.fullmatch(r"conv1\.(.+)", key):
            name, value = _styled_conv("synthesis.blocks.0.conv1", match[1], value, up=False)
        elif match := re.fullmatch(r"to_rgb1\.(.+)", key):
            name, value = _to_rgb("synthesis.blocks.0.torgb", match[1], value)
        elif match := re.fullmatch(r"convs\.(\d+)\.(.+)", key):
            index = int(match[1])
            prefix = f"synthesis.blocks.{index // 2 + 1}.conv{index % 2}"
            name, value = _styled_conv(prefix, match[2], value, up=index % 2 == 0)
        elif match := re.fullmatch(r"to_rgbs\.(\d+)\.(.+)", key):
            name, value = _to_rgb(f"synthesis.blocks.{int(match[1]) + 1}.torgb", match[2], value)
        elif match := re.fullmatch(r"noises\.noise_(\d+)", key):
            name, value = _rosinality_noise(int(match[1])), value[0, 0]
        if name is None:
            unknown.append(key)
        else:
            renamed.tensors[name] = value
    if unknown:
        raise ModelError(f"the file's generator holds tensors rosinality's StyleGAN2 does not: {unknown[:5]}")
    return renamed


ROSINALITY_D = _rules(
    (r"convs\.0\.0\.weight", lambda m: "blocks.0.fromrgb.weight", None),
    (r"convs\.0\.1\.bias", lambda m: "blocks.0.fromrgb.bias", None),
    (r"convs\.(\d+)\.conv1\.0\.weight", lambda m: f"blocks.{int(m[1]) - 1}.conv0.weight", None),
    (r"convs\.(\d+)\.conv1\.1\.bias", lambda m: f"blocks.{int(m[1]) - 1}.conv0.bias", None),
    (r"convs\.(\d+)\.conv2\.1\.weight", lambda m: f"blocks.{int(m[1]) - 1}.conv1.weight", None),
    (r"convs\.(\d+)\.conv2\.2\.bias", lambda m: f"blocks.{int(m[1]) - 1}.conv1.bias", None),
    (r"convs\.(\d+)\.skip\.1\.weight", lambda m: f"blocks.{int(m[1]) - 1}.skip.weight", None),
    (r"final_conv\.0\.weight", lambda m: "conv.weight", None),
    (r"final_conv\.1\.bias", lambda m: "conv.bias", None),
    (r"final_linear\.0\.(weight|bias)", lambda m: f"fc.{m[1]}", None),
    (r"final_linear\.1\.(weight|bias)", lambda m: f"out.{m[1]}", None),
)


def rosinality_discriminator(flat: dict[str, Any]) -> Renamed:
    return _rename(flat, ROSINALITY_D, (), "discriminator")
