"""Training configurations: NVlabs' `auto` and `paper256` presets, and `cpu` for a first try on a laptop.

A preset fills every hyperparameter the user did not give. `auto` follows stylegan2-ada-pytorch's
rules from the resolution and the number of GPUs (with the paper's 8-layer mapping network where
NVlabs' auto has 2); `paper256` is its fixed 256² setting (8 GPUs,
batch 64); `cpu` is a small network at the data's resolution that shows progress within minutes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from curate.errors import InvalidArgument

PRESETS = ("auto", "paper256", "cpu")


@dataclass(frozen=True)
class NetworkConfig:
    """Everything that decides the shapes of G and D."""

    resolution: int
    c_dim: int = 0
    z_dim: int = 512
    w_dim: int = 512
    mapping_layers: int = 8
    channel_base: int = 16384
    channel_max: int = 512
    mbstd_group: int = 4
    num_fp16_res: int = 4  # top resolutions run in bf16/fp16 on CUDA
    conv_clamp: float = 256.0

    def build(self, device=None):
        """(G, D) on `device` (or the current default device, e.g. `meta` for counting)."""
        from train.discriminator import Discriminator
        from train.generator import Generator

        common = dict(
            resolution=self.resolution,
            channel_base=self.channel_base,
            channel_max=self.channel_max,
            num_fp16_res=self.num_fp16_res,
            conv_clamp=self.conv_clamp,
        )
        G = Generator(self.z_dim, self.c_dim, self.w_dim, mapping_layers=self.mapping_layers, **common)
        D = Discriminator(self.c_dim, mbstd_group=self.mbstd_group, **common)
        return (G.to(device), D.to(device)) if device is not None else (G, D)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Hyperparameters:
    """The optimisation settings of one run (per-image quantities are per global batch)."""

    batch: int
    lr: float
    gamma: float  # R1 weight
    ema_kimg: float
    ema_rampup: float | None
    style_mixing: float = 0.9
    pl_weight: float = 2.0
    pl_interval: int = 4
    r1_interval: int = 16
    pl_batch_shrink: int = 2
    pl_decay: float = 0.01
    betas: tuple[float, float] = (0.0, 0.99)
    eps: float = 1e-8

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Overrides:
    """What the user set explicitly; None takes the preset's value."""

    batch: int | None = None
    lr: float | None = None
    gamma: float | None = None
    ema_kimg: float | None = None
    mapping_layers: int | None = None
    channel_base: int | None = None
    channel_max: int | None = None
    z_dim: int | None = None
    mbstd_group: int | None = None
    style_mixing: float | None = None
    pl_weight: float | None = None


def resolve(
    cfg: str, resolution: int, c_dim: int, gpus: int, overrides: Overrides = Overrides()
) -> tuple[NetworkConfig, Hyperparameters]:
    """The networks and hyperparameters of preset `cfg` at this resolution and GPU count."""
    if cfg not in PRESETS:
        raise InvalidArgument(f"--cfg {cfg!r}: choose one of {', '.join(PRESETS)}")
    if cfg == "auto":
        # stylegan2-ada-pytorch's `auto`: batch 32 at 128² on one GPU, fewer images as they grow
        batch = max(min(gpus * min(4096 // resolution, 32), 64), gpus)
        spec = dict(
            batch=batch,
            mbstd=min(batch // gpus, 4),
            channel_base=32768 if resolution >= 512 else 16384,
            lr=0.002 if resolution >= 1024 else 0.0025,
            gamma=None,  # 0.0002·res²/batch, from the batch actually used
            ema=None,  # batch·10/32 kimg, likewise
            ramp=0.05,
            # NVlabs' auto uses 2 mapping layers; we keep the paper's 8 (the StyleGAN2 target and
            # Hambir et al.'s parameter counts): `--map 2` gives NVlabs' exact auto
            mapping=8,
            z=512,
            channel_max=512,
        )
    elif cfg == "paper256":
        spec = dict(
            batch=64, mbstd=8, channel_base=16384, lr=0.0025, gamma=1.0, ema=20.0, ramp=None, mapping=8,
            z=512, channel_max=512,
        )  # fmt: skip
    else:  # cpu: small enough that a laptop shows faces forming within minutes
        spec = dict(
            batch=16, mbstd=4, channel_base=4096, lr=0.0025, gamma=None, ema=None, ramp=0.05, mapping=2,
            z=128, channel_max=128,
        )  # fmt: skip
    o = overrides
    batch = o.batch or spec["batch"]
    if batch % gpus:
        raise InvalidArgument(f"--batch {batch} does not split over {gpus} GPUs")
    z_dim = o.z_dim or spec["z"]
    mbstd = o.mbstd_group or min(spec["mbstd"], batch // gpus)
    network = NetworkConfig(
        resolution=resolution,
        c_dim=c_dim,
        z_dim=z_dim,
        w_dim=z_dim,
        mapping_layers=o.mapping_layers or spec["mapping"],
        channel_base=o.channel_base or spec["channel_base"],
        channel_max=o.channel_max or spec["channel_max"],
        mbstd_group=mbstd,
        num_fp16_res=0 if cfg == "cpu" else 4,
    )
    gamma = o.gamma if o.gamma is not None else spec["gamma"]
    ema = o.ema_kimg if o.ema_kimg is not None else spec["ema"]
    hyper = Hyperparameters(
        batch=batch,
        lr=o.lr or spec["lr"],
        gamma=gamma if gamma is not None else 0.0002 * resolution**2 / batch,
        ema_kimg=ema if ema is not None else batch * 10 / 32,
        ema_rampup=spec["ramp"],
        style_mixing=o.style_mixing if o.style_mixing is not None else 0.9,
        pl_weight=o.pl_weight if o.pl_weight is not None else 2.0,
    )
    return network, hyper


def describe_networks(network: NetworkConfig) -> dict:
    """Parameter counts of G (mapping, synthesis) and D, built on the meta device: no memory, no time."""
    import torch

    with torch.device("meta"):
        G, D = network.build()

    def count(module) -> int:
        return sum(p.numel() for p in module.parameters())

    return {
        "G": count(G),
        "G_mapping": count(G.mapping),
        "G_synthesis": count(G.synthesis),
        "D": count(D),
        "num_ws": G.num_ws,
        "network": network.as_dict(),
    }
