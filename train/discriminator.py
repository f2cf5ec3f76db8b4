"""StyleGAN2's residual discriminator with minibatch standard deviation and projection conditioning.

As in the TF StyleGAN2 that Hambir et al. trained, the last dense layer has one output per label and
the score is their sum weighted by the image's labels, Σ(out · labels); unconditional, one output.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from train.ops import Conv2d, FullyConnected


class DiscriminatorBlock(nn.Module):
    """Two 3×3 convolutions (the second downsampling) and a 1×1 downsampling skip, averaged in variance."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        from_rgb: bool,
        mixed_precision: bool = False,
        conv_clamp: float | None = None,
    ):
        super().__init__()
        clamp = conv_clamp if mixed_precision else None
        self.mixed_precision = mixed_precision
        self.fromrgb = Conv2d(3, in_channels, 1, conv_clamp=clamp) if from_rgb else None
        self.conv0 = Conv2d(in_channels, in_channels, 3, conv_clamp=clamp)
        self.conv1 = Conv2d(in_channels, out_channels, 3, down=True, conv_clamp=clamp)
        self.skip = Conv2d(in_channels, out_channels, 1, bias=False, activation=False, down=True)

    def forward(self, x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
        x = x.to(dtype or torch.float32)
        if dtype is not None and x.is_cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.fromrgb is not None:
            x = self.fromrgb(x)
        skip = self.skip(x)
        x = self.conv1(self.conv0(x))
        return (x + skip) * (1 / math.sqrt(2))


class MinibatchStd(nn.Module):
    """Appends the standard deviation of features within groups of the batch as extra channels."""

    def __init__(self, group_size: int = 4, num_channels: int = 1):
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        group = min(self.group_size, n)
        if n % group:
            raise ValueError(f"a batch of {n} does not split into minibatch-std groups of {group}")
        f = self.num_channels
        y = x.float().reshape(group, -1, f, c // f, h, w)  # [G, M, F, c, H, W]: groups interleaved
        y = (y - y.mean(dim=0)).square().mean(dim=0).add(1e-8).sqrt()  # std over each group
        y = y.mean(dim=[2, 3, 4])  # [M, F]
        y = y.reshape(-1, f, 1, 1).repeat(group, 1, h, w).to(x.dtype)  # [N, F, H, W]
        return torch.cat([x, y], dim=1)


class Discriminator(nn.Module):
    """image (and labels) → one logit per image."""

    def __init__(
        self,
        c_dim: int = 0,
        resolution: int = 256,
        *,
        channel_base: int = 16384,
        channel_max: int = 512,
        mbstd_group: int = 4,
        num_fp16_res: int = 0,
        conv_clamp: float | None = 256.0,
    ):
        super().__init__()
        if resolution < 4 or resolution & (resolution - 1):
            raise ValueError(f"resolution must be a power of two ≥ 4, got {resolution}")
        self.c_dim, self.resolution = c_dim, resolution
        top = int(math.log2(resolution))
        channels = {2**i: min(channel_base // 2**i, channel_max) for i in range(2, top + 1)}
        fp16_from = max(2 ** (top + 1 - num_fp16_res), 8)
        self.blocks = nn.ModuleList(
            DiscriminatorBlock(
                channels[2**i],
                channels[2 ** (i - 1)],
                from_rgb=i == top,
                mixed_precision=num_fp16_res > 0 and 2**i >= fp16_from,
                conv_clamp=conv_clamp,
            )
            for i in range(top, 2, -1)
        )
        c4 = channels[4]
        self.from_rgb4 = Conv2d(3, c4, 1) if resolution == 4 else None
        self.mbstd = MinibatchStd(mbstd_group)
        self.conv = Conv2d(c4 + 1, c4, 3)
        self.fc = FullyConnected(c4 * 16, c4, activation=True)
        self.out = FullyConnected(c4, max(c_dim, 1))

    def forward(
        self, img: torch.Tensor, c: torch.Tensor | None = None, *, half: torch.dtype | None = None
    ) -> torch.Tensor:
        """Logits [N]; `half` runs the top-resolution blocks in bf16 or fp16."""
        x = img
        if self.from_rgb4 is not None:
            x = self.from_rgb4(x)
        for block in self.blocks:
            x = block(x, half if block.mixed_precision else None)
        x = self.mbstd(x.float())
        x = self.fc(self.conv(x).flatten(1))
        x = self.out(x)
        if self.c_dim:
            if c is None or c.shape[1] != self.c_dim:
                raise ValueError(f"this discriminator takes {self.c_dim} labels per sample")
            return (x * c.to(x.dtype)).sum(dim=1)
        return x[:, 0]
