"""What several training processes exchange: gradients, statistics and the starting weights.

Gradients are summed with one flat all-reduce per optimiser step rather than through
`DistributedDataParallel`: R1 and path-length regularisation differentiate twice (`create_graph`),
which DDP's reducer does not support, and each phase updates only one of G or D. The same function
sums any extra statistics in the same call, so a step costs one collective per phase.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from curate.distributed import World


def sum_across(tensors: Sequence[torch.Tensor], world: World) -> None:
    """Replace each tensor by its sum over all processes, in place, with one all-reduce."""
    if world.size == 1 or not tensors:
        return
    import torch.distributed as dist

    flat = torch.cat([t.reshape(-1).float() for t in tensors])
    dist.all_reduce(flat)
    offset = 0
    for tensor in tensors:
        count = tensor.numel()
        tensor.copy_(flat[offset : offset + count].view_as(tensor))
        offset += count


def reduce_gradients(
    params: Iterable[torch.nn.Parameter], world: World, extras: Sequence[torch.Tensor] = ()
) -> None:
    """Average the parameters' gradients over the processes, and sum `extras` alongside."""
    grads = [p.grad for p in params if p.grad is not None]
    if world.size == 1:
        return
    sum_across([*grads, *extras], world)
    for grad in grads:
        grad.div_(world.size)


def broadcast_module(module: torch.nn.Module, world: World) -> None:
    """Give every process rank 0's parameters and buffers."""
    if world.size == 1:
        return
    import torch.distributed as dist

    for tensor in [*module.parameters(), *module.buffers()]:
        dist.broadcast(tensor.data, src=0)


def any_across(flag: bool, world: World, device: torch.device) -> bool:
    """Whether any process raised `flag` (a host sync: call it every few steps, not every one)."""
    if world.size == 1:
        return flag
    import torch.distributed as dist

    tensor = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())
