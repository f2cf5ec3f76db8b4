"""StyleGAN2's losses and regularisers against small cases worked by hand."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from train.loop import mix_styles, round_seed
from train.loss import (
    discriminator_loss,
    generator_loss,
    path_length_penalty,
    path_lengths,
    r1_penalty,
)


def test_logistic_losses():
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    assert torch.allclose(generator_loss(fake), torch.log1p(torch.exp(-fake)))
    expected = torch.log1p(torch.exp(fake)) + torch.log1p(torch.exp(-real))
    assert torch.allclose(discriminator_loss(real, fake), expected)
    assert torch.allclose(generator_loss(torch.zeros(1)), torch.tensor([math.log(2)]))


def test_r1_of_a_quadratic_discriminator():
    # D(x) = θ·Σx²/2, so ∂D/∂x = θx, R1 = θ²‖x‖², and ∂R1/∂θ = 2θ‖x‖²
    theta = torch.tensor(3.0, requires_grad=True)
    x = torch.tensor([[[[1.0, 2.0]], [[0.0, -1.0]]], [[[0.5, 0.5]], [[0.5, 0.5]]]], requires_grad=True)
    logits = theta * x.square().sum(dim=[1, 2, 3]) / 2
    penalty = r1_penalty(x, logits)
    assert torch.allclose(penalty, torch.tensor([9.0 * 6.0, 9.0 * 1.0]))
    (grad,) = torch.autograd.grad(penalty.sum(), theta)
    assert torch.isclose(grad, torch.tensor(2 * 3.0 * 7.0))


def test_r1_of_a_linear_discriminator_is_its_weight_norm():
    weight = torch.tensor([[1.0, -2.0, 2.0, 0.0]])
    x = torch.randn(3, 1, 2, 2, requires_grad=True)
    penalty = r1_penalty(x, F.linear(x.flatten(1), weight)[:, 0])
    assert torch.allclose(penalty, torch.full((3,), 9.0))


def test_path_length_of_a_linear_generator():
    # image = Σ_k w_k A_k over num_ws = 2 copies of a 2-d w, as a 1×2×2 image. With noise of ones,
    # y = 1/√(H·W) = 1/2 everywhere, ∂(image·y)/∂w_k = A_k y, and the length is √(mean_k ‖A_k y‖²).
    a = torch.tensor(
        [[[1.0, 0.0, 2.0, 0.0], [0.0, 1.0, 0.0, 1.0]], [[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 4.0]]],
        requires_grad=True,
    )  # [num_ws, w_dim, 4 pixels]
    ws = torch.tensor([[[0.3, -0.2], [1.0, 2.0]]], requires_grad=True)  # one sample
    images = torch.einsum("nkd,kdp->np", ws, a).reshape(1, 1, 2, 2)
    lengths = path_lengths(images, ws, torch.ones_like(images))
    # A_0 y = (1.5, 1.0), A_1 y = (2.0, 2.0): mean of squared norms (3.25 + 8) / 2 = 5.625
    assert torch.allclose(lengths, torch.tensor([math.sqrt(5.625)]))
    penalty = path_length_penalty(lengths, torch.tensor(2.0))
    assert torch.allclose(penalty, (torch.tensor(math.sqrt(5.625)) - 2) ** 2)
    (grad,) = torch.autograd.grad(penalty.sum(), a)
    # ∂/∂A[k, d, p] of (L − 2)² with L² = mean_k Σ_d (Σ_p A[k,d,p]·½)²: 2(L − 2) · (A_k y)_d · ½ / (2L)
    length = math.sqrt(5.625)
    ay = torch.tensor([[1.5, 1.0], [2.0, 2.0]])
    expected = (2 * (length - 2) * ay * 0.5 / (2 * length))[:, :, None].expand(2, 2, 4)
    assert torch.allclose(grad, expected, atol=1e-6)


def test_style_mixing_takes_the_other_ws_from_a_cutoff_on():
    ws, other = torch.zeros(500, 6, 2), torch.ones(500, 6, 2)
    mixed = mix_styles(ws, other, 0.9, torch.Generator().manual_seed(0))
    from_other = mixed[:, :, 0]
    # every row is 0…0 then 1…1 (never starting with 1: the first layer keeps its own w)
    assert torch.all(from_other[:, 0] == 0)
    assert torch.all(from_other[:, 1:] >= from_other[:, :-1])
    share = (from_other[:, -1] == 1).float().mean()
    assert 0.85 < share < 0.95
    assert torch.equal(mix_styles(ws, other, 0.0, torch.Generator().manual_seed(0)), ws)


def test_round_seeds_are_distinct_and_stable():
    seeds = {
        round_seed(0, step, phase, r)
        for step in range(50)
        for phase in ("G_main", "D_main")
        for r in range(4)
    }
    assert len(seeds) == 400
    assert round_seed(3, 7, "D_r1", 1) == round_seed(3, 7, "D_r1", 1) < 2**63
