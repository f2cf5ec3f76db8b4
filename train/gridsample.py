"""Bilinear grid sampling that can be differentiated twice with respect to the image.

R1 through ADA's geometric augmentations differentiates the gradient of D(aug(x)) with respect to x
again (with respect to D's weights). PyTorch gave `grid_sampler_2d_backward` a derivative only in 2026
(pytorch/pytorch#177487); on the older releases we support it raises "derivative ... not implemented".

Sampling is linear in the image: y = A(grid) x. So ∂L/∂x = Aᵀ g for an incoming gradient g, and the
derivative of that with respect to g is A again: the double backward applies the forward sampling
(same grid) to the incoming grad-grad. The grid comes from random augmentation parameters, never from a
network, so it never needs a gradient; a grid that requires one is refused.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from curate.errors import InvalidArgument

# aten's enum values (GridSamplerInterpolation::Bilinear, GridSamplerPadding::Reflection)
_BILINEAR = 0
_REFLECTION = 2


def grid_sample(images: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """`F.grid_sample(images, grid, "bilinear", "reflection", align_corners=False)`, twice differentiable
    with respect to `images` on every PyTorch release; `grid` ([N, H, W, 2], x then y) takes no gradient."""
    if grid.requires_grad:
        raise InvalidArgument(
            "grid_sample: the grid must not require grad (augmentation grids come from random parameters; "
            "only the images are differentiated)"
        )
    if images.ndim != 4 or grid.ndim != 4 or grid.shape[-1] != 2 or grid.shape[0] != images.shape[0]:
        raise InvalidArgument(
            f"grid_sample: expected images [N, C, H, W] and grid [N, H', W', 2], got "
            f"{tuple(images.shape)} and {tuple(grid.shape)}"
        )
    return _GridSample.apply(images, grid)


class _GridSample(torch.autograd.Function):
    """y = A(grid) x; backward gives Aᵀ g through `_GridSampleTranspose`, which is itself differentiable."""

    @staticmethod
    def forward(ctx, images: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(images, grid)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        images, grid = ctx.saved_tensors
        grad_images = None
        if ctx.needs_input_grad[0]:
            grad_images = _GridSampleTranspose.apply(grad_output, images, grid)
        return grad_images, None


class _GridSampleTranspose(torch.autograd.Function):
    """g ↦ Aᵀ g. Linear in g with derivative A (the forward sampling). It does not depend on the images'
    values: aten's kernel wants them only for the grid's gradient, which it computes and we drop."""

    @staticmethod
    def forward(ctx, grad_output: torch.Tensor, images: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(grid)
        grad_images, _ = torch.ops.aten.grid_sampler_2d_backward(
            grad_output, images, grid, _BILINEAR, _REFLECTION, False, [True, False]
        )
        return grad_images

    @staticmethod
    def backward(ctx, grad_grad: torch.Tensor):
        (grid,) = ctx.saved_tensors
        return _GridSample.apply(grad_grad, grid), None, None
