"""The formulas on feature vectors: FID (pytorch-fid's), KID (Bińkowski et al. 2018) and precision/recall
(Kynkäänniemi et al. 2019), the latter two as stylegan2-ada computes them.
"""

from __future__ import annotations

import numpy as np

KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
PR_BATCH = 4096  # feature rows per distance block: 4096² float32 is 64 MB


class FeatureStats:
    """Running mean and covariance of feature rows (float64 sums, so 50k rows lose nothing)."""

    def __init__(self, dim: int):
        self.count = 0
        self.total = np.zeros(dim, np.float64)
        self.outer = np.zeros((dim, dim), np.float64)

    def add(self, features: np.ndarray) -> None:
        x = features.astype(np.float64)
        self.count += len(x)
        self.total += x.sum(axis=0)
        self.outer += x.T @ x

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """The mean and the unbiased covariance (N − 1), as pytorch-fid's np.cov gives them."""
        if self.count < 2:
            raise ValueError("a covariance needs at least 2 feature rows")
        mean = self.total / self.count
        cov = (self.outer - self.count * np.outer(mean, mean)) / (self.count - 1)
        return mean, cov


def fid(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance of two Gaussians, by pytorch-fid."""
    from pytorch_fid.fid_score import calculate_frechet_distance

    return float(calculate_frechet_distance(mu1, sigma1, mu2, sigma2))


def fid_of(features: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> float:
    """FID of feature rows against the reals' mean and covariance.

    With more rows than dimensions, pytorch-fid's formula as it is. With fewer (--metrics-n 300), the
    rows' covariance AᵀA is singular, where scipy's sqrtm is slow (seconds per 2048²) and inaccurate
    (LinAlgWarning); then tr √(AᵀA·Σ) comes from A·Σ·Aᵀ, which has the same non-zero eigenvalues."""
    rows, dim = features.shape
    stats = FeatureStats(dim)
    stats.add(features)
    mu, sigma = stats.mean_cov()
    if rows > dim:
        return fid(mu, sigma, mean, cov)
    a = (features.astype(np.float64) - mu) / np.sqrt(rows - 1)
    root_trace = np.sqrt(np.clip(np.linalg.eigvalsh(a @ cov @ a.T), 0, None)).sum()
    diff = mu - mean
    return float(diff @ diff + np.trace(sigma) + np.trace(cov) - 2 * root_trace)


def kid(
    real: np.ndarray,
    fake: np.ndarray,
    *,
    subsets: int = KID_SUBSETS,
    subset_size: int = KID_SUBSET_SIZE,
    seed: int = 0,
) -> float:
    """Unbiased MMD² with the kernel k(x, y) = (x·y / d + 1)³, averaged over random subsets of m rows."""
    d = real.shape[1]
    m = min(len(real), len(fake), subset_size)
    if m < 2:
        raise ValueError("KID needs at least 2 real and 2 generated feature rows")
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(subsets):
        x = fake[rng.choice(len(fake), m, replace=False)].astype(np.float64)
        y = real[rng.choice(len(real), m, replace=False)].astype(np.float64)
        within = (x @ x.T / d + 1) ** 3 + (y @ y.T / d + 1) ** 3
        across = (x @ y.T / d + 1) ** 3
        total += (within.sum() - np.diag(within).sum()) / (m - 1) - across.sum() * 2 / m
    return float(total / subsets / m)


def precision_recall(
    real: np.ndarray, fake: np.ndarray, *, nhood: int = 3, device: str = "cpu", batch: int = PR_BATCH
) -> tuple[float, float]:
    """(precision, recall): the share of fakes inside the reals' manifold (balls reaching each real's
    `nhood`-th nearest real), and of reals inside the fakes' manifold."""
    import torch

    # float16 reals stay float16 on the device (200k × 2048 is 0.8 GB); blocks are compared in float32
    reals = torch.from_numpy(np.ascontiguousarray(real)).to(device)
    fakes = torch.from_numpy(np.ascontiguousarray(fake)).to(device)
    precision = _inside(fakes, reals, _radii(reals, nhood, batch), batch).float().mean().item()
    recall = _inside(reals, fakes, _radii(fakes, nhood, batch), batch).float().mean().item()
    return precision, recall


def _radii(manifold, nhood: int, batch: int):
    """Distance from each row to its `nhood`-th nearest other row (a row's nearest is itself, at 0)."""
    import torch

    if len(manifold) <= nhood:
        raise ValueError(f"precision/recall with {nhood} neighbours needs more than {nhood} rows per set")
    radii = []
    for start in range(0, len(manifold), batch):
        rows = manifold[start : start + batch].float()
        nearest = None  # the nhood + 1 smallest distances seen so far, per row
        for col in range(0, len(manifold), batch):
            block = torch.cdist(rows, manifold[col : col + batch].float())
            both = block if nearest is None else torch.cat([nearest, block], dim=1)
            nearest = both.topk(min(nhood + 1, both.shape[1]), dim=1, largest=False).values
        radii.append(nearest[:, nhood])
    return torch.cat(radii)


def _inside(points, manifold, radii, batch: int):
    """For each point: whether some manifold row's ball holds it."""
    import torch

    found = []
    for start in range(0, len(points), batch):
        rows = points[start : start + batch].float()
        hit = torch.zeros(len(rows), dtype=torch.bool, device=rows.device)
        for col in range(0, len(manifold), batch):
            block = torch.cdist(rows, manifold[col : col + batch].float())
            hit |= (block <= radii[None, col : col + batch]).any(dim=1)
        found.append(hit)
    return torch.cat(found)
