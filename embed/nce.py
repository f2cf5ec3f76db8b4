"""Instance discrimination (Wu et al. 2018): every image is its own class, kept in a memory bank.

Each image i has a unit vector V_i in the bank. A feature v of image i is scored against the bank with a
non-parametric softmax at temperature τ: P(i|v) = exp(V_i·v/τ) / Z. With many images Z is estimated as
Z ≈ N · mean_j exp(V_j·v/τ) over sampled negatives, once, and then held fixed, and the loss is NCE
against a uniform noise distribution Pn = 1/N with m = K noise samples per image:

    h(i, v) = P(i|v) / (P(i|v) + m·Pn(i))
    loss = −log h(i, v) − Σ_{j ∈ noise} log(1 − h(j, v))

With few images the exact softmax over the whole bank is cheaper and used instead. After each step the
bank takes the new feature in with momentum: V_i ← normalise(m·V_i + (1 − m)·v).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


class MemoryBank:
    """N unit vectors of dimension D, one per image, updated with momentum."""

    def __init__(self, size: int, dim: int, *, momentum: float = 0.5, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        # uniform on the sphere: the paper's initialisation, so no image starts nearer another
        self.vectors = torch.nn.functional.normalize(torch.randn(size, dim, generator=generator), dim=1)
        self.momentum = momentum

    def to(self, device: torch.device | str) -> MemoryBank:
        self.vectors = self.vectors.to(device)
        return self

    @torch.no_grad()
    def update(self, indices: Tensor, features: Tensor) -> None:
        """V_i ← normalise(m·V_i + (1 − m)·v_i) for each (i, v_i)."""
        mixed = self.momentum * self.vectors[indices] + (1 - self.momentum) * features.detach().float()
        self.vectors[indices] = torch.nn.functional.normalize(mixed, dim=1)

    def state_dict(self) -> dict[str, Tensor | float]:
        return {"vectors": self.vectors.cpu(), "momentum": self.momentum}

    def load_state_dict(self, state: dict) -> None:
        self.vectors = state["vectors"].to(self.vectors.device)
        self.momentum = float(state["momentum"])


def softmax_loss(features: Tensor, indices: Tensor, bank: Tensor, temperature: float = 0.07) -> Tensor:
    """Mean cross entropy of the exact non-parametric softmax over the whole bank."""
    logits = features.float() @ bank.T / temperature
    return torch.nn.functional.cross_entropy(logits, indices)


class NCELoss:
    """NCE over `negatives` noise images per feature, with Z estimated on first use and then fixed."""

    def __init__(self, size: int, negatives: int = 4096, temperature: float = 0.07, z: float | None = None):
        self.size, self.negatives, self.temperature, self.z = size, negatives, temperature, z

    def __call__(
        self, features: Tensor, indices: Tensor, bank: Tensor, noise: Tensor | None = None, *, generator=None
    ) -> Tensor:
        """Mean NCE loss; `noise` (B×K indices) may be given, else drawn uniformly from the bank."""
        batch = len(features)
        if noise is None:
            noise = torch.randint(self.size, (batch, self.negatives), generator=generator, device=bank.device)
        positives = torch.exp((features.float() * bank[indices]).sum(1) / self.temperature)
        others = torch.exp(torch.einsum("bd,bkd->bk", features.float(), bank[noise]) / self.temperature)
        if self.z is None:
            # the paper's estimate, from the first batch, then constant (it hardly moves afterwards)
            self.z = float(others.mean().detach()) * self.size
        pn = 1.0 / self.size
        m = noise.shape[1]
        p_positive = positives / self.z
        p_others = others / self.z
        h_positive = p_positive / (p_positive + m * pn)
        h_others = p_others / (p_others + m * pn)
        loss = -torch.log(h_positive) - torch.log(1 - h_others).sum(1)
        return loss.mean()


def uses_full_softmax(size: int, negatives: int) -> bool:
    """Below a few times K images, the exact softmax costs no more than NCE and needs no estimate of Z."""
    return size <= max(2 * negatives, 1)


def paper_lr(epoch: int, epochs: int, base: float = 0.03) -> float:
    """The paper's step schedule (×0.1 at epochs 120 and 160 of 200) scaled to `epochs`."""
    drops = sum(epoch >= math.floor(epochs * f) for f in (0.6, 0.8))
    return base * 0.1**drops
