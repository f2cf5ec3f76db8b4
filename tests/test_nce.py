"""Instance discrimination's maths on small tensors, against values worked out by hand."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from embed.nce import MemoryBank, NCELoss, paper_lr, softmax_loss, uses_full_softmax  # noqa: E402


def test_bank_update_mixes_with_momentum_and_renormalises():
    bank = MemoryBank(3, 2, momentum=0.5)
    bank.vectors = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    bank.update(torch.tensor([0, 2]), torch.tensor([[0.0, 1.0], [0.6, 0.8]]))
    half = 1 / math.sqrt(2)
    assert torch.allclose(bank.vectors, torch.tensor([[half, half], [0.0, 1.0], [0.6, 0.8]]), atol=1e-6)
    assert torch.allclose(bank.vectors.norm(dim=1), torch.ones(3))
    fresh = MemoryBank(100, 8, seed=3)
    assert torch.allclose(fresh.vectors.norm(dim=1), torch.ones(100), atol=1e-6)
    assert torch.equal(fresh.vectors, MemoryBank(100, 8, seed=3).vectors)


def test_exact_softmax_loss():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    features = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    loss = softmax_loss(features, torch.tensor([0, 1]), bank, temperature=0.5)
    # image 0: logits (2, 0); image 1: logits (1.2, 1.6)
    first = -math.log(math.exp(2) / (math.exp(2) + 1))
    second = -math.log(math.exp(1.6) / (math.exp(1.2) + math.exp(1.6)))
    assert loss.item() == pytest.approx((first + second) / 2, rel=1e-6)


def test_nce_loss_by_hand():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0]])
    features = torch.tensor([[0.8, 0.6]])
    noise = torch.tensor([[1, 3]])
    criterion = NCELoss(size=4, negatives=2, temperature=1.0, z=5.0)
    loss = criterion(features, torch.tensor([0]), bank, noise)
    pn, m, z = 1 / 4, 2, 5.0
    p_pos = math.exp(0.8) / z
    p_noise = [math.exp(0.6) / z, math.exp(-0.8) / z]
    expected = -math.log(p_pos / (p_pos + m * pn)) - sum(math.log(1 - p / (p + m * pn)) for p in p_noise)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_nce_estimates_z_once_from_the_first_batch():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0]])
    criterion = NCELoss(size=4, negatives=2, temperature=1.0)
    criterion(torch.tensor([[1.0, 0.0]]), torch.tensor([0]), bank, torch.tensor([[1, 2]]))
    assert criterion.z == pytest.approx(4 * (math.exp(0.0) + math.exp(0.6)) / 2)
    first = criterion.z
    criterion(torch.tensor([[0.0, 1.0]]), torch.tensor([1]), bank, torch.tensor([[3, 3]]))
    assert criterion.z == first
    drawn = NCELoss(size=4, negatives=7)(torch.tensor([[1.0, 0.0]]), torch.tensor([0]), bank)
    assert torch.isfinite(drawn)


def test_schedule_and_the_softmax_switch():
    assert [paper_lr(e, 10) for e in (0, 5, 6, 7, 8, 9)] == pytest.approx(
        [0.03, 0.03, 0.003, 0.003, 3e-4, 3e-4]
    )
    assert paper_lr(119, 200) == pytest.approx(0.03) and paper_lr(120, 200) == pytest.approx(0.003)
    assert uses_full_softmax(500, 4096) and not uses_full_softmax(100_000, 4096)
