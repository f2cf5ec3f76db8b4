"""StyleGAN2's generator (config F): mapping network, skip synthesis network with modulated convolutions.

Conditioning follows the TF StyleGAN2 that Hambir et al. trained: the labels are multiplied by a
[c, z_dim] matrix, concatenated with z and normalised together, so the first mapping layer takes
z_dim + z_dim inputs. Without labels the generator is the unconditional one.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from train.ops import FullyConnected, fir_kernel, lrelu, modulated_conv2d, upsample2d


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


class MappingNetwork(nn.Module):
    """z (and labels) → w, with a running average of w for truncation."""

    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        num_ws: int,
        *,
        num_layers: int = 8,
        lr_multiplier: float = 0.01,
        w_avg_beta: float = 0.995,
    ):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, c_dim, w_dim, num_ws
        self.w_avg_beta = w_avg_beta
        # TF StyleGAN2's label embedding: a plain matrix (no bias, no equalised gain), as in the paper
        self.embed = nn.Parameter(torch.randn(c_dim, z_dim)) if c_dim else None
        features = [z_dim + (z_dim if c_dim else 0)] + [w_dim] * num_layers
        self.layers = nn.ModuleList(
            FullyConnected(a, b, lr_multiplier=lr_multiplier, activation=True)
            for a, b in itertools.pairwise(features)
        )
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(
        self,
        z: torch.Tensor,
        c: torch.Tensor | None,
        *,
        truncation: float = 1.0,
        truncation_cutoff: int | None = None,
        w_center: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """ws [N, num_ws, w_dim]; truncation pulls the first `truncation_cutoff` ws toward `w_center`
        (the tracked average unless given: e.g. a per-label mean)."""
        x = z
        if self.embed is not None:
            if c is None or c.shape[1] != self.c_dim:
                raise ValueError(f"this generator takes {self.c_dim} labels per sample")
            x = torch.cat([z, c.to(z.dtype) @ self.embed.to(z.dtype)], dim=1)
        x = normalize_2nd_moment(x)
        for layer in self.layers:
            x = layer(x)
        ws = x[:, None].repeat(1, self.num_ws, 1)
        if truncation != 1:
            center = self.w_avg if w_center is None else w_center
            cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
            ws[:, :cutoff] = center.lerp(ws[:, :cutoff], truncation)
        return ws

    @torch.no_grad()
    def update_w_avg(self, w_mean: torch.Tensor) -> None:
        """Move the tracked average toward the mean w of a (global) batch."""
        self.w_avg.copy_(w_mean.to(self.w_avg.dtype).lerp(self.w_avg, self.w_avg_beta))


class SynthesisLayer(nn.Module):
    """Modulated 3×3 convolution (optionally upsampling), per-pixel noise, bias, leaky ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        *,
        up: bool = False,
        conv_clamp: float | None = None,
    ):
        super().__init__()
        self.affine = FullyConnected(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        self.weight_gain = 1 / math.sqrt(in_channels * 9)
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        self.register_buffer("fir", fir_kernel(), persistent=False)
        self.up, self.resolution, self.conv_clamp = up, resolution, conv_clamp

    def forward(
        self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor | None, fused: bool
    ) -> torch.Tensor:
        """`noise` is [N, 1, H, W] (random), [H, W] (this layer's constant) or None (none)."""
        styles = self.affine(w)
        x = modulated_conv2d(x, self.weight * self.weight_gain, styles, up=self.up, fir=self.fir, fused=fused)
        if noise is not None:
            x = x + noise.to(x.dtype) * self.noise_strength.to(x.dtype)
        return lrelu(x + self.bias.to(x.dtype)[None, :, None, None], self.conv_clamp)


class ToRGB(nn.Module):
    """Modulated 1×1 convolution to RGB, without demodulation."""

    def __init__(self, in_channels: int, w_dim: int, *, conv_clamp: float | None = None):
        super().__init__()
        self.affine = FullyConnected(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(3, in_channels, 1, 1))
        self.weight_gain = 1 / math.sqrt(in_channels)
        self.bias = nn.Parameter(torch.zeros(3))
        self.conv_clamp = conv_clamp

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused: bool) -> torch.Tensor:
        styles = self.affine(w)
        x = modulated_conv2d(x, self.weight * self.weight_gain, styles, demodulate=False, fused=fused)
        x = x + self.bias.to(x.dtype)[None, :, None, None]
        return x.clamp(-self.conv_clamp, self.conv_clamp) if self.conv_clamp is not None else x


class SynthesisBlock(nn.Module):
    """One resolution: (constant input or upsampling conv), conv, and ToRGB added to the upsampled image."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        *,
        mixed_precision: bool = False,
        conv_clamp: float | None = None,
    ):
        super().__init__()
        self.resolution = resolution
        self.mixed_precision = mixed_precision
        clamp = conv_clamp if mixed_precision else None
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
            self.conv0 = None
        else:
            self.const = None
            self.conv0 = SynthesisLayer(
                in_channels, out_channels, w_dim, resolution, up=True, conv_clamp=clamp
            )
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, conv_clamp=clamp)
        self.torgb = ToRGB(out_channels, w_dim, conv_clamp=clamp)
        self.register_buffer("fir", fir_kernel(), persistent=False)
        self.layers = [self.conv1] if self.conv0 is None else [self.conv0, self.conv1]
        self.num_conv = len(self.layers)

    def forward(
        self,
        x: torch.Tensor | None,
        img: torch.Tensor | None,
        ws: torch.Tensor,
        noise: list[torch.Tensor | None],
        *,
        fused: bool,
        dtype: torch.dtype | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`ws` holds this block's num_conv + 1 w vectors (the last one feeds ToRGB). With `dtype` (bf16 or
        fp16) the convolutions run in it while styles and demodulation stay in float32."""
        dtype = dtype or torch.float32
        if self.const is not None:
            x = self.const.to(dtype)[None].expand(ws.shape[0], -1, -1, -1)
        else:
            assert x is not None
            x = x.to(dtype)
            if dtype != torch.float32 and x.is_cuda:
                x = x.contiguous(memory_format=torch.channels_last)
        for index, layer in enumerate(self.layers):
            x = layer(x, ws[:, index], noise[index], fused)
        rgb = self.torgb(x, ws[:, self.num_conv], fused).float()
        img = rgb if img is None else upsample2d(img, self.fir) + rgb
        return x, img


NOISE_MODES = ("random", "const", "none")


class SynthesisNetwork(nn.Module):
    """ws → image, resolutions 4, 8, …, `resolution`; the skip architecture sums ToRGB outputs."""

    def __init__(
        self,
        w_dim: int,
        resolution: int,
        *,
        channel_base: int = 16384,
        channel_max: int = 512,
        num_fp16_res: int = 0,
        conv_clamp: float | None = 256.0,
    ):
        super().__init__()
        if resolution < 4 or resolution & (resolution - 1):
            raise ValueError(f"resolution must be a power of two ≥ 4, got {resolution}")
        self.resolution = resolution
        self.resolutions = [2**i for i in range(2, int(math.log2(resolution)) + 1)]
        channels = {r: min(channel_base // r, channel_max) for r in self.resolutions}
        fp16_from = max(2 ** (int(math.log2(resolution)) + 1 - num_fp16_res), 8)
        self.blocks = nn.ModuleList()
        previous = 0
        for r in self.resolutions:
            self.blocks.append(
                SynthesisBlock(
                    previous,
                    channels[r],
                    w_dim,
                    r,
                    mixed_precision=num_fp16_res > 0 and r >= fp16_from,
                    conv_clamp=conv_clamp,
                )
            )
            previous = channels[r]
        self.num_ws = sum(b.num_conv for b in self.blocks) + 1

    def make_noise(
        self, batch: int, mode: str = "random", generator: torch.Generator | None = None
    ) -> list[torch.Tensor | None]:
        """One noise input per layer, in order: fresh [N, 1, H, W] draws, the layers' constants, or None.

        Drawn outside `forward` so a compiled synthesis network stays free of random number generation.
        """
        if mode not in NOISE_MODES:
            raise ValueError(f"noise mode must be one of {', '.join(NOISE_MODES)}, got {mode!r}")
        noise: list[torch.Tensor | None] = []
        for block in self.blocks:
            for layer in block.layers:
                if mode == "random":
                    shape = (batch, 1, layer.resolution, layer.resolution)
                    device = layer.noise_const.device
                    noise.append(torch.randn(shape, device=device, generator=generator))
                else:
                    noise.append(layer.noise_const if mode == "const" else None)
        return noise

    def forward(
        self,
        ws: torch.Tensor,
        noise: list[torch.Tensor | None] | None = None,
        *,
        fused: bool = False,
        half: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Images in about [−1, 1], NCHW float32. `noise` from `make_noise` (default: fresh random noise);
        `half` (bf16 or fp16) runs the top blocks in it."""
        if noise is None:
            noise = self.make_noise(ws.shape[0])
        x = img = None
        start = layer = 0
        for block in self.blocks:
            block_ws = ws[:, start : start + block.num_conv + 1]
            dtype = half if block.mixed_precision else None
            block_noise = noise[layer : layer + block.num_conv]
            x, img = block(x, img, block_ws, block_noise, fused=fused, dtype=dtype)
            start += block.num_conv
            layer += block.num_conv
        assert img is not None
        return img


class Generator(nn.Module):
    """Mapping and synthesis networks: (z, labels) → image."""

    def __init__(
        self,
        z_dim: int = 512,
        c_dim: int = 0,
        w_dim: int = 512,
        resolution: int = 256,
        *,
        mapping_layers: int = 8,
        channel_base: int = 16384,
        channel_max: int = 512,
        num_fp16_res: int = 0,
        conv_clamp: float | None = 256.0,
    ):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.resolution = z_dim, c_dim, w_dim, resolution
        self.synthesis = SynthesisNetwork(
            w_dim,
            resolution,
            channel_base=channel_base,
            channel_max=channel_max,
            num_fp16_res=num_fp16_res,
            conv_clamp=conv_clamp,
        )
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, c_dim, w_dim, self.num_ws, num_layers=mapping_layers)

    def forward(
        self,
        z: torch.Tensor,
        c: torch.Tensor | None = None,
        *,
        truncation: float = 1.0,
        truncation_cutoff: int | None = None,
        noise_mode: str = "random",
        generator: torch.Generator | None = None,
        fused: bool = False,
        half: torch.dtype | None = None,
    ) -> torch.Tensor:
        ws = self.mapping(z, c, truncation=truncation, truncation_cutoff=truncation_cutoff)
        noise = self.synthesis.make_noise(z.shape[0], noise_mode, generator)
        return self.synthesis(ws, noise, fused=fused, half=half)
