"""ADA's augmentation pipeline ('bgc') and its controller, after Karras et al. 2020, "Training Generative
Adversarial Networks with Limited Data" (sections 2–3, appendix B).

Every augmentation is applied to each image independently with probability p (times its multiplier);
a skipped one takes its identity parameter, chosen per image with `torch.where`, so nothing syncs with
the host and an image no augmentation touched comes out bit for bit as it went in (p = 0 is exact).
  blit       x-flip, rotation by a multiple of 90°, integer translation: one exact gather of pixels.
  geometric  isotropic scale, rotation, anisotropic scale, rotation, fractional translation: composed
             into one 3×3 matrix per image, applied in one 2×-oversampled bilinear pass.
  colour     brightness, contrast, luma flip, hue rotation, saturation: composed into one 4×4 matrix
             per image, applied as one batched matmul on (r, g, b, 1).
Everything is twice differentiable with respect to the images, so R1 can run through the pipe.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from curate.errors import InvalidArgument
from train.gridsample import grid_sample

BLIT = ("xflip", "rotate90", "xint")
GEOMETRIC = ("scale", "rotate", "aniso", "xfrac")
COLOUR = ("brightness", "contrast", "lumaflip", "hue", "saturation")
GROUPS = {"b": BLIT, "g": GEOMETRIC, "c": COLOUR}
AUGMENTATIONS = BLIT + GEOMETRIC + COLOUR

# The paper's strengths (appendix B): translations in units of the image size, log2 std devs for the
# lognormal scalings, rotations in units of π.
XINT_MAX = 0.125
SCALE_STD = 0.2
ROTATE_MAX = 1.0
ANISO_STD = 0.2
XFRAC_STD = 0.125
BRIGHTNESS_STD = 0.2
CONTRAST_STD = 0.5
HUE_MAX = 1.0
SATURATION_STD = 1.0

# Resampling filter of the geometric pass: StyleGAN2's separable [1, 3, 3, 1] as plain depthwise
# convolutions, not the paper's symlet-6 wavelet. Unlike that orthogonal wavelet, up- then downsampling
# with [1, 3, 3, 1] is not the identity: an image the geometric group transforms is also softened by a
# [3, 10, 3]/16 blur per axis. Images it leaves alone skip the pass (per image), so they stay exact.
FIR_TAPS = (1.0, 3.0, 3.0, 1.0)


def _parse(augment: str | Mapping[str, float]) -> dict[str, float]:
    """Per-augmentation multipliers from group letters ('bgc') or a {name: multiplier} mapping."""
    if isinstance(augment, str):
        unknown = set(augment) - set(GROUPS)
        if unknown:
            raise InvalidArgument(f"augment {augment!r}: groups are letters of 'bgc', not {sorted(unknown)}")
        on = {name for letter in augment for name in GROUPS[letter]}
        return {name: float(name in on) for name in AUGMENTATIONS}
    unknown = set(augment) - set(AUGMENTATIONS)
    if unknown:
        raise InvalidArgument(f"augment: unknown {sorted(unknown)}; choose from {', '.join(AUGMENTATIONS)}")
    multipliers = {name: float(augment.get(name, 0.0)) for name in AUGMENTATIONS}
    bad = [name for name, value in multipliers.items() if not 0 <= value < math.inf]
    if bad:
        raise InvalidArgument(f"augment: multipliers must be finite and >= 0: {bad}")
    return multipliers


class AugmentPipe(nn.Module):
    """ADA's 'bgc' pipeline with its probability `p` as a buffer (0-dim float32), and its controller."""

    def __init__(self, augment: str | Mapping[str, float] = "bgc", p: float = 0.0, adaptive: bool = True):
        super().__init__()
        self.multipliers = _parse(augment)
        self.adaptive = adaptive  # the loop calls `adjust` only when this is set
        self.register_buffer("p", torch.tensor(float(p), dtype=torch.float32))
        # Constants live on the pipe's device: building them per call with torch.tensor(..., device=cuda)
        # would copy from pageable host memory, which syncs. Not persistent, so state_dict holds only p.
        rgb = torch.tensor([1.0, 1.0, 1.0, 0.0])
        cross = torch.tensor([[0.0, -1, 1, 0], [1, 0, -1, 0], [-1, 1, 0, 0], [0, 0, 0, 0]])
        self.register_buffer("fir_taps", torch.tensor(FIR_TAPS), persistent=False)
        self.register_buffer("luma_axis", rgb / math.sqrt(3), persistent=False)  # v = (1, 1, 1)/√3
        self.register_buffer("luma_cross", cross / math.sqrt(3), persistent=False)  # [v]×: [v]× rgb = v × rgb

    @property
    def enabled(self) -> bool:
        """Whether any augmentation is on at all (host-side; forward returns its input when not)."""
        return any(value > 0 for value in self.multipliers.values())

    def extra_repr(self) -> str:
        on = ", ".join(f"{name}={value:g}" for name, value in self.multipliers.items() if value > 0)
        return f"{on or 'nothing on'}, adaptive={self.adaptive}"

    # --- the controller --------------------------------------------------------------------------
    @torch.no_grad()
    def adjust(
        self,
        sign_sum: torch.Tensor | float,
        count: torch.Tensor | int,
        target: float = 0.6,
        ada_kimg: float = 500.0,
    ) -> None:
        """ADA's update, on device: r = sign_sum / count, p ← p + sign(r − target)·count/(ada_kimg·1000).

        `sign_sum` is Σ sign(D(real)) over the `count` images since the last call, summed over processes.
        p is kept in [0, 1] (the paper clamps at 0; above 1 every probability is already saturated).
        """
        if not ada_kimg > 0:
            raise InvalidArgument(f"ada_kimg must be > 0, got {ada_kimg}")
        sign_sum = torch.as_tensor(sign_sum, dtype=torch.float32, device=self.p.device)
        if isinstance(count, torch.Tensor):
            count = count.to(device=self.p.device, dtype=torch.float32)
            rate = sign_sum / count.clamp_min(1)
        else:
            rate = sign_sum / max(count, 1)
        step = torch.sign(rate - target) * count / (ada_kimg * 1000)
        self.p.copy_((self.p + step).clamp(0, 1))

    def p_value(self) -> float:
        """p as a Python float, for logging at tick ends (syncs with the device)."""
        return float(self.p)

    # --- the pipe --------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment a batch [N, 3, H, W] (roughly in [-1, 1]) into the same shape and dtype, randomness from
        `generator` drawn on the images' device. Twice differentiable with respect to `images`."""
        if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise InvalidArgument(
                f"augment: expected float images [N, 3, H, W], got {images.dtype} {tuple(images.shape)}"
            )
        if not self.enabled:
            return images
        _, _, height, width = images.shape
        if self.multipliers["rotate90"] > 0 and height != width:
            raise InvalidArgument(f"augment: rotate90 needs square images, got {height}×{width}")
        # Matrices and sampling in float32 at least, outside any autocast region of the caller.
        dtype = torch.float64 if images.dtype == torch.float64 else torch.float32
        with torch.autocast(device_type=images.device.type, enabled=False):
            draw = _Draws(self, len(images), images.device, dtype, generator)
            x = images.to(dtype)
            if any(self.multipliers[name] > 0 for name in BLIT):
                x = _blit(x, draw)
            if any(self.multipliers[name] > 0 for name in GEOMETRIC):
                x = _geometric(x, draw)
            if any(self.multipliers[name] > 0 for name in COLOUR):
                x = _colour(x, draw)
        return x.to(images.dtype)


class _Draws:
    """Per-image random draws on the images' device, and per-augmentation gates `rand < p·multiplier`."""

    def __init__(self, pipe: AugmentPipe, n: int, device, dtype, generator):
        self.pipe, self.n, self.device, self.dtype, self.generator = pipe, n, device, dtype, generator

    def on(self, name: str) -> bool:
        return self.pipe.multipliers[name] > 0

    def uniform(self, *shape: int) -> torch.Tensor:
        """Uniform in [-1, 1), shape [N, *shape]."""
        u = torch.rand(self.n, *shape, device=self.device, dtype=self.dtype, generator=self.generator)
        return u * 2 - 1

    def normal(self, *shape: int) -> torch.Tensor:
        return torch.randn(self.n, *shape, device=self.device, dtype=self.dtype, generator=self.generator)

    def integers(self, high: int) -> torch.Tensor:
        return torch.randint(high, (self.n,), device=self.device, generator=self.generator)

    def gate(self, name: str, rotation: bool = False) -> torch.Tensor:
        """Bool [N]: whether each image gets augmentation `name`. Rotations come twice (before and after the
        anisotropic scaling), each with 1 − √(1 − p) so that at least one happens with probability p."""
        p = (self.pipe.p.to(self.device, self.dtype) * self.pipe.multipliers[name]).clamp(0, 1)
        if rotation:
            p = 1 - torch.sqrt(1 - p)
        u = torch.rand(self.n, device=self.device, dtype=self.dtype, generator=self.generator)
        return u < p


# --- blit: an exact permutation of pixels ------------------------------------------------------------
def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Integer indices reflected into [0, size) without repeating the edge (F.pad's 'reflect')."""
    if size == 1:
        return torch.zeros_like(index)
    period = 2 * (size - 1)
    index = torch.remainder(index, period)
    return torch.where(index >= size, period - index, index)


def _blit(x: torch.Tensor, draw: _Draws) -> torch.Tensor:
    """x-flip, rotate90, integer translation, as one gather. Coordinates are doubled and centred
    (2j + 1 − W), so every step is exact integer arithmetic; we map output pixels to their sources by
    undoing the transforms in reverse order."""
    n, c, h, w = x.shape
    dev = x.device
    u = (2 * torch.arange(w, device=dev) + 1 - w).view(1, 1, w).expand(n, h, w)
    v = (2 * torch.arange(h, device=dev) + 1 - h).view(1, h, 1).expand(n, h, w)
    zero = torch.zeros(n, dtype=torch.long, device=dev)
    if draw.on("xint"):
        gate = draw.gate("xint")
        t = draw.uniform(2) * XINT_MAX
        shift_x = torch.where(gate, torch.round(t[:, 0] * w).long(), 0)
        shift_y = torch.where(gate, torch.round(t[:, 1] * h).long(), 0)
        u = u - 2 * shift_x.view(n, 1, 1)
        v = v - 2 * shift_y.view(n, 1, 1)
    if draw.on("rotate90"):
        gate = draw.gate("rotate90")
        quarter = torch.where(gate, draw.integers(4), zero).view(n, 1, 1)
        cos = (quarter == 0).long() - (quarter == 2).long()
        sin = (quarter == 1).long() - (quarter == 3).long()
        u, v = cos * u + sin * v, cos * v - sin * u  # rotate back by −90°·quarter
    if draw.on("xflip"):
        gate = draw.gate("xflip")
        flip = torch.where(gate, draw.integers(2), zero).view(n, 1, 1)
        u = torch.where(flip == 1, -u, u)
    column = _reflect(torch.div(u + w - 1, 2, rounding_mode="floor"), w)
    row = _reflect(torch.div(v + h - 1, 2, rounding_mode="floor"), h)
    index = (row * w + column).reshape(n, 1, h * w).expand(n, c, h * w)
    return x.reshape(n, c, h * w).gather(2, index).view(n, c, h, w)


# --- geometric: one matrix, one sampling pass --------------------------------------------------------
def _matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batched product of small matrices as elementwise ops: exact float32 (no TF32, no autocast)."""
    return (a.unsqueeze(-1) * b.unsqueeze(-3)).sum(-2)


def _affine(a, b, c, d, e, f) -> torch.Tensor:
    """[N, 3, 3] rows (a b c; d e f; 0 0 1) from per-image [N] tensors."""
    zero, one = torch.zeros_like(a), torch.ones_like(a)
    return torch.stack([a, b, c, d, e, f, zero, zero, one], dim=-1).view(-1, 3, 3)


def _rotation_inverse(theta: torch.Tensor) -> torch.Tensor:
    cos, sin, zero = torch.cos(theta), torch.sin(theta), torch.zeros_like(theta)
    return _affine(cos, sin, zero, -sin, cos, zero)


def _geometric(x: torch.Tensor, draw: _Draws) -> torch.Tensor:
    """Compose the inverse geometric transforms (output → input, in pixel units about the centre) and
    resample the images some transform touched; the others pass through unchanged."""
    n, _, h, w = x.shape
    one = torch.ones(n, device=x.device, dtype=draw.dtype)
    zero = torch.zeros_like(one)
    inverse = _affine(one, zero, zero, zero, one, zero)
    touched = torch.zeros(n, dtype=torch.bool, device=x.device)

    def then(transform_inverse: torch.Tensor) -> None:  # T = T_k … T_1, so T⁻¹ = T_1⁻¹ … T_k⁻¹
        nonlocal inverse
        inverse = _matmul(inverse, transform_inverse)

    if draw.on("scale"):
        gate = draw.gate("scale")
        s = torch.where(gate, torch.exp2(draw.normal() * SCALE_STD), one)
        touched |= gate
        then(_affine(1 / s, zero, zero, zero, 1 / s, zero))
    for turn in range(2):  # before and after the anisotropic scaling
        if turn == 1 and draw.on("aniso"):
            gate = draw.gate("aniso")
            s = torch.where(gate, torch.exp2(draw.normal() * ANISO_STD), one)
            touched |= gate
            then(_affine(1 / s, zero, zero, zero, s, zero))
        if draw.on("rotate"):
            gate = draw.gate("rotate", rotation=True)
            theta = torch.where(gate, draw.uniform() * ROTATE_MAX * math.pi, zero)
            touched |= gate
            then(_rotation_inverse(theta))
    if draw.on("xfrac"):
        gate = draw.gate("xfrac")
        t = torch.where(gate[:, None], draw.normal(2) * XFRAC_STD, 0)
        touched |= gate
        then(_affine(one, zero, -t[:, 0] * w, zero, one, -t[:, 1] * h))
    resampled = affine_resample(x, inverse, draw.pipe.fir_taps)
    return torch.where(touched.view(n, 1, 1, 1), resampled, x)


def _fir(taps: torch.Tensor, like: torch.Tensor, gain: float) -> torch.Tensor:
    """The separable filter as a single-channel 4×4 conv kernel whose 1-D factor sums to `gain`."""
    taps = taps.to(device=like.device, dtype=like.dtype)
    taps = taps * (gain / sum(FIR_TAPS))
    return torch.outer(taps, taps).view(1, 1, len(FIR_TAPS), len(FIR_TAPS))


def _upsample(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """[M, 1, H, W] → [M, 1, 2H, 2W]: zero-insertion and the filter (gain 2 per axis) as one transposed
    convolution. A one-pixel margin repeating the edge (the mirror grid_sample's reflection uses) lets the
    outermost 2× samples see both neighbours; the image's 2× grid is then rows and columns [3, 3 + 2·size)."""
    _, _, h, w = x.shape
    x = torch.cat([x[:, :, :, :1], x, x[:, :, :, -1:]], dim=3)
    x = torch.cat([x[:, :, :1], x, x[:, :, -1:]], dim=2)
    x = F.conv_transpose2d(x, _fir(taps, x, 2), stride=2)
    return x[:, :, 3 : 3 + 2 * h, 3 : 3 + 2 * w]


def _downsample(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """[M, 1, 2H + 2, 2W + 2] → [M, 1, H, W]: the filter, then every second sample (a strided convolution)."""
    return F.conv2d(x, _fir(taps, x, 1), stride=2)


def affine_resample(
    images: torch.Tensor, inverse: torch.Tensor, fir_taps: torch.Tensor | None = None
) -> torch.Tensor:
    """Resample images [N, C, H, W] through per-image 3×3 matrices [N, 3, 3] mapping output positions to
    input positions (pixel units, origin at the image centre, x right, y down).

    Upsample 2× with the FIR, sample bilinearly at the 2× output grid (plus one sample of margin for the
    downsampling filter), downsample 2× with the FIR. Outside the image, samples reflect about its edges
    (grid_sample's 'reflection' mode), which covers any transformed corner without a data-dependent pad
    (sizing one would need a host sync). The FIR runs on every channel alike as a single-channel
    convolution with the channels folded into the batch (on CPU several times faster than groups=C).
    `fir_taps` is FIR_TAPS already on the images' device (AugmentPipe keeps it there; made here if None).
    """
    n, c, h, w = images.shape
    taps = torch.tensor(FIR_TAPS, device=images.device) if fir_taps is None else fir_taps
    x = _upsample(images.reshape(n * c, 1, h, w), taps).view(n, c, 2 * h, 2 * w)
    # 2× output sample centres j = −1 … 2·size, in pixel units about the centre.
    xs = (torch.arange(-1, 2 * w + 1, device=x.device, dtype=inverse.dtype) + 0.5) / 2 - w / 2
    ys = (torch.arange(-1, 2 * h + 1, device=x.device, dtype=inverse.dtype) + 0.5) / 2 - h / 2
    xs, ys = xs.view(1, 1, -1), ys.view(1, -1, 1)
    m = inverse.reshape(n, 9, 1, 1).unbind(1)
    source_x = m[0] * xs + m[1] * ys + m[2]
    source_y = m[3] * xs + m[4] * ys + m[5]
    # the 2× image spans the same extent as the original, so normalise by half the original size
    grid = torch.stack([source_x / (w / 2), source_y / (h / 2)], dim=-1).to(x.dtype)
    x = grid_sample(x, grid)
    return _downsample(x.reshape(n * c, 1, 2 * h + 2, 2 * w + 2), taps).view(n, c, h, w)


# --- colour: one 4×4 matrix --------------------------------------------------------------------------
def _colour(x: torch.Tensor, draw: _Draws) -> torch.Tensor:
    """Compose the colour transforms on (r, g, b, 1) and apply them as one batched matmul to the images
    some transform touched. The luma axis is v = (1, 1, 1)/√3 (mid-grey is 0 for images in [-1, 1])."""
    n, c, h, w = x.shape
    dev, dtype = x.device, draw.dtype
    eye = torch.eye(4, device=dev, dtype=dtype)
    matrix = eye.expand(n, 4, 4)
    touched = torch.zeros(n, dtype=torch.bool, device=dev)
    v = draw.pipe.luma_axis.to(device=dev, dtype=dtype)
    vv = torch.outer(v, v)  # projection onto the luma axis
    cross = draw.pipe.luma_cross.to(device=dev, dtype=dtype)
    column = (slice(None), None, None)

    def then(transform: torch.Tensor) -> None:
        nonlocal matrix
        matrix = _matmul(transform, matrix)

    if draw.on("brightness"):
        gate = draw.gate("brightness")
        b = torch.where(gate, draw.normal() * BRIGHTNESS_STD, 0)
        touched |= gate
        then(eye + b[column] * (v * math.sqrt(3)).view(4, 1) * eye[3])  # adds b to r, g and b
    if draw.on("contrast"):
        gate = draw.gate("contrast")
        s = torch.where(gate, torch.exp2(draw.normal() * CONTRAST_STD), 1)
        touched |= gate
        then(eye * torch.stack([s, s, s, torch.ones_like(s)], -1).view(n, 1, 4))
    if draw.on("lumaflip"):
        gate = draw.gate("lumaflip")
        flip = torch.where(gate, draw.integers(2), 0).to(dtype)
        touched |= gate
        then(eye - 2 * vv * flip[column])
    if draw.on("hue"):
        gate = draw.gate("hue")
        theta = torch.where(gate, draw.uniform() * HUE_MAX * math.pi, 0)
        touched |= gate
        cos, sin = torch.cos(theta)[column], torch.sin(theta)[column]
        then(vv + (eye - vv) * cos + cross * sin + eye[3].view(4, 1) * eye[3] * (1 - cos))
    if draw.on("saturation"):
        gate = draw.gate("saturation")
        s = torch.where(gate, torch.exp2(draw.normal() * SATURATION_STD), 1)
        touched |= gate
        then(vv + (eye - vv) * s[column] + eye[3].view(4, 1) * eye[3] * (1 - s[column]))
    matrix = matrix.to(x.dtype)
    # one batched matmul; under TF32 it rounds the touched images' colours to ~1e-3, harmless here
    out = torch.baddbmm(matrix[:, :3, 3:], matrix[:, :3, :3], x.reshape(n, c, h * w)).view(n, c, h, w)
    return torch.where(touched.view(n, 1, 1, 1), out, x)
