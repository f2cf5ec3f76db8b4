"""StyleGAN2's building blocks in plain PyTorch: FIR resampling as convolutions, equalised layers,
modulated convolution. No custom CUDA extension, so nothing needs compiling.

Resampling follows StyleGAN2 (Karras et al. 2020, "Analyzing and Improving the Image Quality of
StyleGAN"): the separable [1, 3, 3, 1] low-pass filter, applied after zero-insertion when upsampling
(gain 4, so a flat image keeps its level) and before decimation when downsampling. Both are
depthwise convolutions here, which cuDNN runs as fast as a dedicated kernel at these filter sizes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)  # keeps activations' variance through leaky ReLU (He et al.)
FIR_TAPS = (1.0, 3.0, 3.0, 1.0)


def fir_kernel(taps: tuple[float, ...] = FIR_TAPS) -> torch.Tensor:
    """The separable 2-D low-pass filter [k, k], normalised to sum to one."""
    row = torch.tensor(taps, dtype=torch.float32)
    kernel = torch.outer(row, row)
    return kernel / kernel.sum()


def _depthwise(kernel: torch.Tensor, channels: int, like: torch.Tensor) -> torch.Tensor:
    return kernel.to(like.dtype)[None, None].expand(channels, 1, *kernel.shape)


def blur(x: torch.Tensor, kernel: torch.Tensor, pad: tuple[int, int], gain: float = 1.0) -> torch.Tensor:
    """Filter every channel with `kernel` after zero-padding (before, after) on both axes."""
    channels = x.shape[1]
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    return F.conv2d(x, _depthwise(kernel * gain, channels, x), groups=channels)


def upsample2d(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """2× upsampling: zero-insertion, then the filter (gain 4), as one transposed depthwise convolution.

    Output pixel o takes inputs i with o = 2i + t − 1 for filter tap t, which is exactly zero-insertion
    followed by the filter padded (2, 1); the filter is symmetric, so no flip is needed.
    """
    channels = x.shape[1]
    weight = _depthwise(kernel * 4, channels, x)
    return F.conv_transpose2d(x, weight, stride=2, padding=1, groups=channels)


def downsample2d(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """2× downsampling: the filter padded (1, 1), then every second pixel, as one strided convolution."""
    channels = x.shape[1]
    return F.conv2d(x, _depthwise(kernel, channels, x), stride=2, padding=1, groups=channels)


def lrelu(x: torch.Tensor, clamp: float | None = None) -> torch.Tensor:
    """Leaky ReLU with StyleGAN's gain, optionally clamped (keeps fp16 activations finite)."""
    x = F.leaky_relu(x, LRELU_SLOPE) * LRELU_GAIN
    return x.clamp(-clamp, clamp) if clamp is not None else x


class FullyConnected(nn.Module):
    """A dense layer with equalised learning rate: weights stored at unit scale, scaled at run time.

    `lr_multiplier` slows a layer down (the mapping network uses 0.01) without changing its output at
    initialisation: the stored values are divided by it and the run-time gain multiplied by it.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool = True,
        bias_init: float = 0.0,
        lr_multiplier: float = 1.0,
        activation: bool = False,
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], bias_init / lr_multiplier)) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.lr_multiplier = lr_multiplier
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.to(x.dtype) * self.weight_gain
        bias = self.bias.to(x.dtype) * self.lr_multiplier if self.bias is not None else None
        x = F.linear(x, weight, bias)
        return lrelu(x) if self.activation else x

    def extra_repr(self) -> str:
        out_features, in_features = self.weight.shape
        return f"{in_features} → {out_features}, lr ×{self.lr_multiplier:g}, activation={self.activation}"


class Conv2d(nn.Module):
    """A plain convolution with equalised learning rate; `down=True` blurs then strides by two."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        bias: bool = True,
        activation: bool = True,
        down: bool = False,
        conv_clamp: float | None = None,
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.activation = activation
        self.down = down
        self.conv_clamp = conv_clamp
        self.register_buffer("fir", fir_kernel(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.to(x.dtype) * self.weight_gain
        k = weight.shape[-1]
        if self.down and k == 1:
            x = F.conv2d(downsample2d(x, self.fir), weight)
        elif self.down:
            # filter with padding (k + 1) / 2 … then a valid strided convolution: output side H / 2
            pad = (len(FIR_TAPS) - 2 + k - 1) // 2
            x = F.conv2d(blur(x, self.fir, (pad, pad)), weight, stride=2)
        else:
            x = F.conv2d(x, weight, padding=k // 2)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype)[None, :, None, None]
        if self.activation:
            return lrelu(x, self.conv_clamp)
        return x.clamp(-self.conv_clamp, self.conv_clamp) if self.conv_clamp is not None else x


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    *,
    demodulate: bool = True,
    up: bool = False,
    fir: torch.Tensor | None = None,
    fused: bool = False,
) -> torch.Tensor:
    """StyleGAN2's weight (de)modulation: sample n convolves with weight[o, i] × styles[n, i], each
    output channel rescaled to unit norm when `demodulate`.

    `fused=False` scales the input by the styles and the output by the demodulation coefficients around
    one ordinary convolution shared by the batch, which equals the per-sample convolution because both
    factors are per (sample, channel); `fused=True` runs the per-sample kernels as a grouped convolution.
    `up=True` doubles the resolution: zero-insertion, the 3×3 convolution, then the [1,3,3,1] filter,
    with the first two done together as a transposed convolution.
    """
    batch, in_channels, height, width = x.shape
    out_channels, _, kh, kw = weight.shape
    dcoefs = None
    if demodulate:
        # |w ⊙ s|² summed over (i, kh, kw) without materialising the per-sample kernels
        dcoefs = (styles.square() @ weight.square().sum([2, 3]).T + 1e-8).rsqrt()  # [N, O]
    if fused:
        w = weight[None] * styles[:, None, :, None, None]
        if dcoefs is not None:
            w = w * dcoefs[:, :, None, None, None]
        w = w.reshape(batch * out_channels, in_channels, kh, kw)
        y = _conv(x.reshape(1, batch * in_channels, height, width), w, up=up, fir=fir, groups=batch)
        return y.reshape(batch, out_channels, *y.shape[2:])
    y = _conv(x * styles[:, :, None, None].to(x.dtype), weight, up=up, fir=fir, groups=1)
    if dcoefs is not None:
        y = y * dcoefs[:, :, None, None].to(y.dtype)
    return y


def _conv(x: torch.Tensor, weight: torch.Tensor, *, up: bool, fir: torch.Tensor | None, groups: int):
    """A same-size convolution, or the 2× upsampling one (transposed convolution, then the filter)."""
    weight = weight.to(x.dtype)
    k = weight.shape[-1]
    if not up:
        return F.conv2d(x, weight, padding=k // 2, groups=groups)
    assert fir is not None, "an upsampling convolution needs the FIR filter"
    out_total, in_per_group = weight.shape[0], weight.shape[1]
    out_per_group = out_total // groups
    # conv_transpose2d wants [in, out / groups, k, k] and correlates with the flipped kernel: flip it
    # back so the result is zero-insertion followed by an ordinary convolution with `weight`.
    w = weight.reshape(groups, out_per_group, in_per_group, k, k).transpose(1, 2)
    w = w.reshape(groups * in_per_group, out_per_group, k, k).flip([2, 3])
    y = F.conv_transpose2d(x, w, stride=2, groups=groups)
    # the transposed convolution is one pixel larger than 2H on each axis per (k − 1); the filter's
    # padding brings it back to exactly 2H, aligned with `upsample2d`
    pad = (len(FIR_TAPS) - 2) - (k - 1)  # 4-tap filter, factor 2: p = 2 − (k − 1)
    return blur(y, fir, ((pad + 1) // 2 + 1, pad // 2 + 1), gain=4)
