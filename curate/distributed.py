"""Several training processes under `torchrun`: which one this is, and the collectives training needs.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them there is one process and every call
here is a no-op, so single-process code paths stay as they are.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> World:
        """What torchrun says this process is (one process when it says nothing)."""
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size <= 1:
            return cls()
        return cls(int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0")))


def join(device: Any) -> tuple[World, Any]:
    """(this process's World, its device): under torchrun, the process group is set up (NCCL between
    GPUs, gloo on CPUs) and each process takes the GPU of its LOCAL_RANK."""
    import torch
    import torch.distributed as dist

    world = World.from_env()
    if world.size == 1:
        return world, device
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return world, device


def leave(world: World) -> None:
    """Wait for every process, then take the process group down (a no-op for one process)."""
    import torch.distributed as dist

    if world.size > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def gather_rows(rows: Any, world: World, capacity: int, fill: float | int = -1) -> Any:
    """Every process's `rows` (first dimension ≤ `capacity`), concatenated in rank order.

    Shorter tensors are padded with `fill` to `capacity` for the exchange and cut back after it.
    """
    import torch
    import torch.distributed as dist

    if world.size == 1:
        return rows
    count = torch.tensor([len(rows)], device=rows.device)
    counts = [torch.zeros_like(count) for _ in range(world.size)]
    dist.all_gather(counts, count)
    padded = torch.cat([rows, rows.new_full((capacity - len(rows), *rows.shape[1:]), fill)])
    parts = [torch.empty_like(padded) for _ in range(world.size)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[: int(n)] for part, n in zip(parts, counts, strict=True)])


def smallest(value: int, world: World, device: Any) -> int:
    """The smallest `value` over all processes, so they all take the same branch."""
    import torch
    import torch.distributed as dist

    if world.size == 1:
        return value
    tensor = torch.tensor([value], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return int(tensor.item())


def mean(value: float, world: World, device: Any) -> float:
    """The mean of `value` over all processes."""
    import torch
    import torch.distributed as dist

    if world.size == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item()) / world.size


def run_under_torchrun(processes: int, argv: list[str]) -> int:
    """Run `curate ARGV` in `processes` local processes under torchrun and return its exit status.

    This process only waits: Ctrl-C reaches torchrun's workers too (they share the terminal's process
    group), and they stop on their own after writing their snapshot.
    """
    import signal
    import subprocess
    import sys

    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
        "-m", "curate", *argv,
    ]  # fmt: skip
    child = subprocess.Popen(command)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return child.wait()
    finally:
        signal.signal(signal.SIGINT, previous)


def without_option(argv: list[str], name: str) -> list[str]:
    """`argv` less `name VALUE` and `name=VALUE`."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(f"{name}="):
            kept.append(arg)
    return kept
