"""Benchmark `curate train`'s step: s/kimg, images/s, peak memory, and the share of the hardware's peak.

The training FLOPs of a step are counted once (torch's FlopCounterMode over a step of each kind: G and
D main passes every step, path length every 4th, R1 every 16th, averaged at those rates) and divided by
the measured time per step; the hardware's peak is a dense matmul timed in the same run (bf16 on CUDA,
float32 on the CPU), so `mfu` is the fraction of what this machine can do that training reaches. Reals
are random uint8 images held on the device, as the cached loader holds a set that fits.

Run from the repo root:
  python tests/bench/train.py            a small config on the CPU (32², cpu preset, batch 16)
  python tests/bench/train.py --gpu      on CUDA: 256² at batch 32 (auto) and 64 (paper256), eager and
                                         compiled, as the README's table (--compile off|on: half of it)
  python tests/bench/train.py --quick    a tiny smoke run
Prints one JSON line on stdout; progress goes to stderr. Exits 0 even when the target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path[:] = [p for p in sys.path if Path(p or os.curdir).resolve() != HERE]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils.flop_counter import flop_registry  # noqa: E402

from curate.distributed import World  # noqa: E402
from train.config import Overrides, resolve  # noqa: E402
from train.loop import StepSettings, Trainer  # noqa: E402

TARGET_S_PER_KIMG_256 = 2.5  # one H200, 256², against stylegan2-ada-pytorch's 12.5 on an A100


def matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of a large dense matmul: the best this device does at this precision."""
    n = 8192 if device.type == "cuda" else 1536
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    _sync(device)
    repeats = 20 if device.type == "cuda" else 4
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_trainer(cfg: str, res: int, batch: int, device: torch.device, *, compile: bool, quick: bool):
    overrides = (
        Overrides(batch=batch, channel_base=256, channel_max=32, z_dim=32)
        if quick
        else Overrides(batch=batch)
    )
    network, hyper = resolve(cfg, res, 0, 1, overrides)
    half = torch.bfloat16 if device.type == "cuda" else None
    settings = StepSettings(batch_gpu=batch, rounds=1, half=half, compile=compile)
    from train.augment import AugmentPipe

    pipe = AugmentPipe()
    pipe.p.fill_(0.2)  # augmentation on, as an ADA run is once p has grown
    trainer = Trainer(network, hyper, settings, torch.zeros(1, 0), device, World(), augment=pipe)
    trainer.augment.adaptive = False
    reals = [
        (
            torch.randint(0, 256, (batch, 3, res, res), dtype=torch.uint8, device=device),
            torch.zeros(batch, 0, device=device),
        )
    ]
    return trainer, reals


class FlopCount(TorchDispatchMode):
    """FLOPs of every op torch's flop counter knows (matmuls, convolutions and their backwards).

    torch's FlopCounterMode tracks modules with backward hooks that refuse `autograd.grad` on leaves,
    which R1 needs; its per-op formulas (`flop_registry`) are used here without the module tracking.
    """

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        count = flop_registry.get(func._overloadpacket)
        if count is not None:
            self.total += count(*args, **kwargs, out_val=out)
        return out


def step_flops(trainer: Trainer, reals) -> float:
    """Average FLOPs of one step: steps 1 (main), 4 (main + path length) and 16 (main + both regularisers)."""
    counts = {}
    for step in (1, 4, 16):
        trainer.step = step
        with FlopCount() as counter:
            trainer.run_step(reals)
        counts[step] = counter.total
    main, pl, both = counts[1], counts[4] - counts[1], counts[16] - counts[1]
    r1 = both - pl
    return main + pl / 4 + r1 / 16


def measure(
    cfg: str, res: int, batch: int, device: torch.device, *, compile: bool, steps: int, quick: bool
) -> dict:
    began = time.perf_counter()

    def phase(name: str) -> None:  # where the time goes, should a run hit its time limit
        print(f"  {name} at {time.perf_counter() - began:.1f} s", file=sys.stderr, flush=True)

    trainer, reals = make_trainer(cfg, res, batch, device, compile=compile, quick=quick)
    phase("counting FLOPs")
    flops = step_flops(trainer, reals)
    trainer.step = 0
    warmup = 16 if not quick else 2  # a whole regularisation cycle, and compilation
    phase("warming up")
    for _ in range(warmup):
        trainer.run_step(reals)
    _sync(device)
    phase("timing")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.run_step(reals)
    trainer.take_stats()  # the tick's one host sync
    _sync(device)
    seconds = (time.perf_counter() - start) / steps
    peak = (
        torch.cuda.max_memory_allocated(device) / 2**30
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    )
    images_per_s = batch / seconds
    return {
        "cfg": cfg,
        "resolution": res,
        "batch": batch,
        "compile": compile,
        "s_per_kimg": round(1000 / images_per_s, 3),
        "images_per_s": round(images_per_s, 2),
        "peak_memory_gb": round(peak, 3),
        "train_gflops_per_step": round(flops / 1e9, 2),
        "achieved_tflops": round(flops / seconds / 1e12, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run")
    parser.add_argument("--gpu", action="store_true", help="the 256² table on CUDA")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument(
        "--compile", choices=("both", "off", "on"), default="both", help="--gpu: eager, compiled, or both"
    )
    args = parser.parse_args()
    device = torch.device("cuda" if args.gpu else "cpu")
    if args.gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        runs = [
            ("auto", 256, 32, False),
            ("auto", 256, 32, True),
            ("paper256", 256, 64, False),
            ("paper256", 256, 64, True),
        ]
        runs = [r for r in runs if args.compile == "both" or r[3] == (args.compile == "on")]
        steps = args.steps or 48
    elif args.quick:
        runs, steps = [("cpu", 16, 8, False)], args.steps or 3
    else:
        runs, steps = [("cpu", 32, 16, False)], args.steps or 16
    peak_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = matmul_peak(device, peak_dtype)
    results = []
    for cfg, res, batch, compile in runs:
        print(f"training {cfg} {res}² batch {batch}{' compiled' if compile else ''} …", file=sys.stderr)
        figures = measure(cfg, res, batch, device, compile=compile, steps=steps, quick=args.quick)
        figures["mfu"] = round(figures["achieved_tflops"] * 1e12 / peak, 4)
        results.append(figures)
        print(f"  {figures}", file=sys.stderr)
    best_256 = min((r["s_per_kimg"] for r in results if r["resolution"] == 256), default=None)
    print(
        json.dumps(
            {
                "bench": "train",
                "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "threads": torch.get_num_threads(),
                "matmul_peak_tflops": round(peak / 1e12, 3),
                "matmul_dtype": str(peak_dtype).removeprefix("torch."),
                "runs": results,
                "target_s_per_kimg_256": TARGET_S_PER_KIMG_256 if args.gpu else None,
                "met_targets": best_256 <= TARGET_S_PER_KIMG_256
                if args.gpu and best_256 is not None
                else None,
            }
        )
    )


if __name__ == "__main__":
    main()
