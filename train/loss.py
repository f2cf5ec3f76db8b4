"""StyleGAN2's objectives: the non-saturating logistic loss, R1, and path-length regularisation."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating logistic loss of the generator, per sample: softplus(−D(G(z)))."""
    return F.softplus(-fake_logits)


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Logistic loss of the discriminator, per sample: softplus(D(G(z))) + softplus(−D(x))."""
    return F.softplus(fake_logits) + F.softplus(-real_logits)


def r1_penalty(real_images: torch.Tensor, real_logits: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al. 2018) per sample: ‖∂D(x)/∂x‖², kept in the graph so it can be minimised.

    `real_images` must require grad and `real_logits` come from them (through any augmentation).
    """
    (grads,) = torch.autograd.grad(real_logits.sum(), real_images, create_graph=True)
    return grads.square().sum(dim=[1, 2, 3])


def path_lengths(images: torch.Tensor, ws: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """‖J_wᵀ y‖ per sample, with y = `noise` scaled by 1/√(H·W) (Karras et al. 2020, eq. 4).

    The norm is over w's dimension and averaged over the num_ws copies of w, as StyleGAN2 does, so it
    does not grow with the resolution.
    """
    height, width = images.shape[2:]
    projection = (images * noise / math.sqrt(height * width)).sum()
    (grads,) = torch.autograd.grad(projection, ws, create_graph=True)
    return grads.square().sum(dim=2).mean(dim=1).sqrt()


def path_length_penalty(lengths: torch.Tensor, pl_mean: torch.Tensor) -> torch.Tensor:
    """(‖J_wᵀ y‖ − a)² per sample, with a the running mean of the lengths."""
    return (lengths - pl_mean).square()
