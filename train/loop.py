"""The StyleGAN2 training step: four phases with lazy regularisation, G EMA, ADA, exact randomness.

Each step runs NVlabs' phases in order: G main (non-saturating loss), G path-length regularisation
(every `pl_interval` steps), D main (logistic loss), D R1 (every `r1_interval` steps), each its own
Adam step, then the EMA of G and, every `ada_interval` steps, the ADA update. The regularisation
passes differentiate twice and always run eagerly; with `compile` the main passes run through
`torch.compile`.

Randomness is a function of counters, not of a generator's history: each (step, phase, round) seeds
its own generator, where a round is one `batch_gpu` slice of the global batch numbered across all
processes. So a resumed run draws exactly what it would have drawn, and N processes draw what one
process accumulating N rounds draws. Running statistics (w average, path-length mean, ADA's signs)
are updated once per step from global-batch sums, for the same reason.
"""

from __future__ import annotations

import copy
import hashlib
import math
from dataclasses import dataclass

import torch

from curate.distributed import World
from train.config import Hyperparameters, NetworkConfig
from train.loss import discriminator_loss, generator_loss, path_length_penalty, path_lengths, r1_penalty
from train.sync import broadcast_module, reduce_gradients, sum_across

PHASES = ("G_main", "G_pl", "D_main", "D_r1", "init")
STATS = ("loss_G", "loss_D", "score_real", "score_fake", "r1", "pl_length")


@dataclass(frozen=True)
class StepSettings:
    """How one process runs its share of a step."""

    batch_gpu: int
    rounds: int  # gradient accumulation: batch = world × rounds × batch_gpu
    seed: int = 0
    half: torch.dtype | None = None  # bf16/fp16 in the top resolutions (CUDA)
    compile: bool = False
    ada_interval: int = 4
    ada_target: float = 0.6
    ada_kimg: float = 500.0


def round_seed(seed: int, step: int, phase: str, round_index: int) -> int:
    """The seed of one round's generator: a hash, so nearby counters give unrelated streams."""
    digest = hashlib.blake2b(f"{seed}/{step}/{phase}/{round_index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def mix_styles(
    ws: torch.Tensor, other: torch.Tensor, prob: float, generator: torch.Generator
) -> torch.Tensor:
    """Style mixing per sample: with probability `prob`, the ws from a random layer on come from `other`."""
    n, num_ws = ws.shape[:2]
    cutoff = torch.randint(1, num_ws, (n,), device=ws.device, generator=generator)
    mixed = torch.rand(n, device=ws.device, generator=generator) < prob
    cutoff = torch.where(mixed, cutoff, torch.full_like(cutoff, num_ws))
    take_other = torch.arange(num_ws, device=ws.device)[None] >= cutoff[:, None]
    return torch.where(take_other[:, :, None], other, ws)


def adam(params, hyper: Hyperparameters, interval: int | None, device: torch.device) -> torch.optim.Adam:
    """Adam with StyleGAN2's lazy-regularisation correction: regularising every k steps adds a step per
    k main steps, so lr and betas are scaled by k / (k + 1) to keep the same effective schedule."""
    ratio = interval / (interval + 1) if interval else 1.0
    betas = (hyper.betas[0] ** ratio, hyper.betas[1] ** ratio)
    fused = device.type == "cuda"
    return torch.optim.Adam(params, lr=hyper.lr * ratio, betas=betas, eps=hyper.eps, fused=fused or None)


class Trainer:
    """G, D, G_ema, their optimisers and the regularisers' state, advanced one global batch at a time."""

    def __init__(
        self,
        network: NetworkConfig,
        hyper: Hyperparameters,
        settings: StepSettings,
        fake_labels: torch.Tensor,
        device: torch.device,
        world: World,
        augment=None,
    ):
        self.network, self.hyper, self.settings = network, hyper, settings
        self.device, self.world = device, world
        if hyper.batch != world.size * settings.rounds * settings.batch_gpu:
            raise ValueError("batch must be processes × rounds × batch_gpu")
        torch.manual_seed(settings.seed)  # the same initial weights in every process
        G, D = network.build()
        self.G, self.D = G.to(device), D.to(device)
        broadcast_module(self.G, world)
        broadcast_module(self.D, world)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.G_opt = adam(self.G.parameters(), hyper, hyper.pl_interval if hyper.pl_weight else None, device)
        self.D_opt = adam(self.D.parameters(), hyper, hyper.r1_interval if hyper.gamma else None, device)
        self.augment = augment.to(device) if augment is not None else None
        self.fake_labels = fake_labels.to(device)  # rows to draw the labels of generated images from
        self.pl_mean = torch.zeros([], device=device)
        self.ada_signs = torch.zeros([], device=device)  # Σ sign(D(real)) since the last ADA update
        self.ada_images = 0
        self.step = 0
        self.generator = torch.Generator(device=device)
        self.stats = {name: torch.zeros([], device=device) for name in STATS}
        self.counts = dict.fromkeys(STATS, 0)
        self.finite = torch.ones([], dtype=torch.bool, device=device)
        self._build_passes()

    @property
    def nimg(self) -> int:
        return self.step * self.hyper.batch

    def _build_passes(self) -> None:
        """The forward passes the main phases use: compiled when asked, the modules themselves otherwise."""
        self.mapping, self.synthesis, self.discriminate = self.G.mapping, self.G.synthesis, self.D
        if self.settings.compile:
            self.mapping = torch.compile(self.G.mapping)
            self.synthesis = torch.compile(self.G.synthesis)
            self.discriminate = torch.compile(self.D)

    # --- one round's randomness ------------------------------------------------------------------
    def _seeded(self, phase: str, round_index: int) -> torch.Generator:
        rank_round = self.world.rank * self.settings.rounds + round_index
        return self.generator.manual_seed(round_seed(self.settings.seed, self.step, phase, rank_round))

    def _generate(self, n: int, generator: torch.Generator, *, main: bool):
        """(images, ws, labels) of n fakes; `main` uses the compiled passes."""
        mapping = self.mapping if main else self.G.mapping
        synthesis = self.synthesis if main else self.G.synthesis
        z = torch.randn(n, self.network.z_dim, device=self.device, generator=generator)
        c = None
        if self.network.c_dim:
            rows = torch.randint(len(self.fake_labels), (n,), device=self.device, generator=generator)
            c = self.fake_labels[rows]
        ws = mapping(z, c)
        if self.hyper.style_mixing > 0:
            other = mapping(torch.randn(n, self.network.z_dim, device=self.device, generator=generator), c)
            ws = mix_styles(ws, other, self.hyper.style_mixing, generator)
        noise = self.G.synthesis.make_noise(n, "random", generator)
        return synthesis(ws, noise, half=self.settings.half), ws, c

    def _discriminate(self, images: torch.Tensor, c, generator: torch.Generator, *, main: bool):
        if self.augment is not None:
            images = self.augment(images, generator)
        discriminate = self.discriminate if main else self.D
        return discriminate(images, c, half=self.settings.half)

    def _record(self, name: str, values: torch.Tensor) -> None:
        values = values.detach()
        self.stats[name] += values.float().sum()
        self.counts[name] += values.numel()
        self.finite &= torch.isfinite(values).all()

    # --- the phases ------------------------------------------------------------------------------
    def run_step(self, reals: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """One global batch: `reals` holds this process's rounds, (uint8 images, labels) each."""
        step, hyper, rounds = self.step, self.hyper, self.settings.rounds
        self._g_main()
        if hyper.pl_weight and step % hyper.pl_interval == 0:
            self._g_path_length()
        images = [(x.to(torch.float32) / 127.5 - 1, c if self.network.c_dim else None) for x, c in reals]
        if len(images) != rounds:
            raise ValueError(f"expected {rounds} rounds of reals, got {len(images)}")
        self._d_main(images)
        if hyper.gamma and step % hyper.r1_interval == 0:
            self._d_r1(images)
        self._update_ema()
        self.step += 1
        if self.augment is not None and self.augment.adaptive and self.step % self.settings.ada_interval == 0:
            self._adjust_augment()

    def _g_main(self) -> None:
        self.G.requires_grad_(True)
        self.D.requires_grad_(False)
        self.G_opt.zero_grad(set_to_none=True)
        w_sum = torch.zeros(self.network.w_dim, device=self.device)
        for index in range(self.settings.rounds):
            g = self._seeded("G_main", index)
            fakes, ws, c = self._generate(self.settings.batch_gpu, g, main=True)
            loss = generator_loss(self._discriminate(fakes, c, g, main=True))
            (loss.mean() / self.settings.rounds).backward()
            self._record("loss_G", loss)
            w_sum += ws[:, 0].detach().sum(dim=0)
        reduce_gradients(self.G.parameters(), self.world, [w_sum])
        self.G_opt.step()
        self.G.mapping.update_w_avg(w_sum / self.hyper.batch)

    def _g_path_length(self) -> None:
        hyper = self.hyper
        self.G_opt.zero_grad(set_to_none=True)
        n = max(self.settings.batch_gpu // hyper.pl_batch_shrink, 1)
        length_sum = torch.zeros([], device=self.device)
        for index in range(self.settings.rounds):
            g = self._seeded("G_pl", index)
            fakes, ws, _ = self._generate(n, g, main=False)
            noise = torch.randn(fakes.shape, device=self.device, generator=g)
            lengths = path_lengths(fakes, ws, noise)
            penalty = path_length_penalty(lengths, self.pl_mean)
            # gain = interval: the lazy regulariser stands in for `interval` steps' worth
            (penalty.mean() * hyper.pl_weight * hyper.pl_interval / self.settings.rounds).backward()
            self._record("pl_length", lengths)
            length_sum += lengths.detach().sum()
        reduce_gradients(self.G.parameters(), self.world, [length_sum])
        self.G_opt.step()
        total = n * self.settings.rounds * self.world.size
        self.pl_mean.lerp_(length_sum / total, hyper.pl_decay)

    def _d_main(self, images: list[tuple[torch.Tensor, torch.Tensor | None]]) -> None:
        self.G.requires_grad_(False)
        self.D.requires_grad_(True)
        self.D_opt.zero_grad(set_to_none=True)
        for index, (real, real_c) in enumerate(images):
            g = self._seeded("D_main", index)
            with torch.no_grad():
                fakes, _, c = self._generate(len(real), g, main=True)
            fake_logits = self._discriminate(fakes, c, g, main=True)
            real_logits = self._discriminate(real, real_c, g, main=True)
            loss = discriminator_loss(real_logits, fake_logits)
            (loss.mean() / self.settings.rounds).backward()
            self._record("loss_D", loss)
            self._record("score_real", real_logits)
            self._record("score_fake", fake_logits)
            if self.augment is not None:
                self.ada_signs += real_logits.detach().sign().sum()
                self.ada_images += len(real) * self.world.size
        reduce_gradients(self.D.parameters(), self.world)
        self.D_opt.step()

    def _d_r1(self, images: list[tuple[torch.Tensor, torch.Tensor | None]]) -> None:
        self.D_opt.zero_grad(set_to_none=True)
        for index, (real, real_c) in enumerate(images):
            g = self._seeded("D_r1", index)
            real = real.detach().requires_grad_(True)
            penalty = r1_penalty(real, self._discriminate(real, real_c, g, main=False))
            gain = self.hyper.gamma / 2 * self.hyper.r1_interval / self.settings.rounds
            (penalty.mean() * gain).backward()
            self._record("r1", penalty)
        reduce_gradients(self.D.parameters(), self.world)
        self.D_opt.step()

    @torch.no_grad()
    def _update_ema(self) -> None:
        hyper = self.hyper
        ema_nimg = hyper.ema_kimg * 1000
        if hyper.ema_rampup is not None:
            ema_nimg = min(ema_nimg, self.nimg * hyper.ema_rampup)
        beta = 0.5 ** (hyper.batch / max(ema_nimg, 1e-8))
        ema_params, params = list(self.G_ema.parameters()), list(self.G.parameters())
        torch._foreach_lerp_(ema_params, params, 1 - beta)
        for ema_buffer, buffer in zip(self.G_ema.buffers(), self.G.buffers(), strict=True):
            ema_buffer.copy_(buffer)

    def _adjust_augment(self) -> None:
        sum_across([self.ada_signs], self.world)
        settings = self.settings
        self.augment.adjust(
            self.ada_signs, self.ada_images, target=settings.ada_target, ada_kimg=settings.ada_kimg
        )
        self.ada_signs.zero_()
        self.ada_images = 0

    # --- statistics and state --------------------------------------------------------------------
    def take_stats(self) -> dict[str, float]:
        """Means of the statistics since the last call, over every process (a host sync: at ticks)."""
        names = [n for n in STATS if self.counts[n]]
        totals = [self.stats[n] for n in names]
        counts = torch.tensor([float(self.counts[n]) for n in names], device=self.device)
        sum_across([*totals, counts], self.world)
        means = {
            n: float(t) / max(float(k), 1.0) for n, t, k in zip(names, totals, counts.tolist(), strict=True)
        }
        for name in STATS:
            self.stats[name].zero_()
            self.counts[name] = 0
        return means

    def diverged(self) -> bool:
        """Whether any loss or statistic was NaN or infinite since the run (re)started (a host sync)."""
        flag = (~self.finite).float()
        sum_across([flag], self.world)
        return bool(flag > 0)

    def state_dict(self) -> dict:
        """Everything `load_state_dict` needs to continue exactly (tensors and plain values)."""
        return {
            "step": self.step,
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "G_ema": self.G_ema.state_dict(),
            "G_opt": self.G_opt.state_dict(),
            "D_opt": self.D_opt.state_dict(),
            "augment": self.augment.state_dict() if self.augment is not None else {},
            "pl_mean": self.pl_mean.detach().cpu(),
            "ada_signs": self.ada_signs.detach().cpu(),
            "ada_images": self.ada_images,
        }

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.G_ema.load_state_dict(state["G_ema"])
        self.G_opt.load_state_dict(state["G_opt"])
        self.D_opt.load_state_dict(state["D_opt"])
        if self.augment is not None and state["augment"]:
            self.augment.load_state_dict(state["augment"])
        self.pl_mean.copy_(state["pl_mean"])
        self.ada_signs.copy_(state["ada_signs"])
        self.ada_images = int(state["ada_images"])


def tick_due(nimg: int, tick_start: int, tick_kimg: float) -> bool:
    return nimg >= tick_start + math.ceil(tick_kimg * 1000)
