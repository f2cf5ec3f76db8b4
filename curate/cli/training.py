"""The generator: `curate train`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from curate import summaries
from curate.cli import options as opt
from curate.cli.options import out
from curate.cli.program import app
from curate.errors import InvalidArgument


def _preset(help: str, *names: str, **limits) -> object:
    """An optional number whose default comes from the --cfg preset."""
    return Annotated[Optional[float], typer.Option(*names, help=f"{help} Default: the preset's.", **limits)]  # noqa: UP045


def _preset_int(help: str, *names: str, **limits) -> object:
    return Annotated[Optional[int], typer.Option(*names, help=f"{help} Default: the preset's.", **limits)]  # noqa: UP045


@app.command()
def train(
    data: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="An export (NVlabs zip, Parquet, imagefolder) or a folder of images."),
    ] = None,
    workspace: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--workspace",
            "-w",
            envvar="CURATE_WORKSPACE",
            help="Train on its latest export; the run goes to WORKSPACE/runs/<name>.",
        ),
    ] = None,
    out_dir: opt.OutDir("The run folder (continued when it holds snapshots).") = None,
    cfg: Annotated[str, typer.Option(help="auto (NVlabs' rules), paper256 or cpu (a first try).")] = "auto",
    kimg: Annotated[float, typer.Option(min=0.001, help="Length: thousands of real images shown.")] = 25000,
    batch: _preset_int("Global batch.", "--batch", min=1) = None,
    batch_gpu: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(min=1, help="Images per process per pass (gradient accumulation, for memory)."),
    ] = None,
    gamma: _preset("R1 weight.", "--gamma", min=0) = None,
    lr: _preset("Learning rate of G and D.", "--lr", min=0) = None,
    ema: _preset("Half-life of G's EMA, kimg.", "--ema", min=0) = None,
    mapping_layers: _preset_int("Mapping network layers.", "--map", min=1) = None,
    channel_base: _preset_int("Channels are min(cbase / resolution, cmax).", "--cbase", min=1) = None,
    channel_max: _preset_int("Most channels of a layer.", "--cmax", min=1) = None,
    z_dim: _preset_int("Width of z and w.", "--z-dim", min=1) = None,
    mbstd_group: _preset_int("Minibatch-std group size.", "--mbstd-group", min=1) = None,
    style_mixing: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(min=0, max=1, help="Share of fakes made from two z. Default 0.9."),
    ] = None,
    pl_weight: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(min=0, help="Path-length regularisation weight; 0 turns it off. Default 2."),
    ] = None,
    cond: Annotated[bool, typer.Option(help="Condition on the data's labels when it has them.")] = True,
    mirror: Annotated[bool, typer.Option(help="Add x-flips of the reals.")] = False,
    aug: Annotated[str, typer.Option(help="ada (adaptive p), fixed (--aug-p) or none.")] = "ada",
    target: Annotated[float, typer.Option(help="ADA's target for E[sign(D(real))].")] = 0.6,
    aug_p: Annotated[float, typer.Option(help="Augmentation probability with --aug fixed.")] = 0.2,
    seed: opt.Seed("Seed of the weights, the image order and every random draw.") = 0,
    precision: Annotated[
        str, typer.Option(help="auto (bf16 in the top resolutions on CUDA), fp32, bf16 or fp16.")
    ] = "auto",
    compile: Annotated[bool, typer.Option(help="torch.compile the main passes (CUDA).")] = False,
    device: opt.Device = "auto",
    tick: Annotated[float, typer.Option(min=0.001, help="kimg between progress lines and metrics.")] = 4.0,
    snap: Annotated[int, typer.Option(min=1, help="Ticks between snapshots and sample grids.")] = 50,
    cache: Annotated[
        str, typer.Option(help="Decoded reals: auto, gpu, ram, or none (decode in workers every step).")
    ] = "auto",
    cache_gb: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(min=0, help="Largest decoded set held in memory; default a quarter of RAM, ≤ 8."),
    ] = None,
    workers: Annotated[int, typer.Option(min=0, help="Decoding processes.")] = 3,
    resume: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="Continue from this snapshot (or run folder's newest)."),
    ] = None,
    force: opt.Force("Start again in a run folder that has snapshots (its files are set aside).") = False,
    init: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            help="Start a new run from these weights: a curate snapshot, an NVlabs network-snapshot-*.pkl "
            "or a rosinality stylegan2-pytorch checkpoint."
        ),
    ] = None,
    metrics: Annotated[
        str, typer.Option(help="Measured at each snapshot: fid50k_full,kid50k_full,pr50k3_full.")
    ] = "",
    metrics_n: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(min=1, help="Generated images per metric instead of its own count (fid5k_full…)."),
    ] = None,
    gpus: Annotated[int, typer.Option(min=1, help="Start this many processes under torchrun.")] = 1,
    describe: Annotated[
        bool, typer.Option("--describe", help="Print G's and D's parameter counts as JSON; no training.")
    ] = False,
    res: Annotated[int, typer.Option(min=4, help="--describe: resolution, when no --data.")] = 256,
    cond_dim: Annotated[int, typer.Option(min=0, help="--describe: labels, when no --data.")] = 0,
    quiet: opt.Quiet = False,
) -> None:
    """Train a StyleGAN2 on an export, conditional on its labels; run it again to continue."""
    from curate.distributed import World, run_under_torchrun, without_option
    from train.runs import TrainOptions

    options = TrainOptions(
        data=data, workspace=workspace, out=out_dir, cfg=cfg, kimg=kimg, batch=batch, batch_gpu=batch_gpu,
        gamma=gamma, lr=lr, ema_kimg=ema, mapping_layers=mapping_layers, channel_base=channel_base,
        channel_max=channel_max, z_dim=z_dim, mbstd_group=mbstd_group, style_mixing=style_mixing,
        pl_weight=pl_weight, cond=cond, mirror=mirror, aug=aug, target=target, aug_p=aug_p, seed=seed,
        precision=precision, compile=compile, device=device, tick_kimg=tick, snap_ticks=snap, cache=cache,
        cache_gb=cache_gb, workers=workers, resume=resume, force=force, init=init,
        metrics=[m.strip() for m in metrics.split(",") if m.strip()], metrics_n=metrics_n, progress=not quiet,
    )  # fmt: skip
    if describe:
        out.print(json.dumps(_describe(options, res, cond_dim, gpus), indent=1), highlight=False)
        return
    if gpus > 1 and World.from_env().size == 1:
        raise typer.Exit(run_under_torchrun(gpus, without_option(sys.argv[1:], "--gpus")))
    if gpus > 1 and World.from_env().size != gpus:
        raise InvalidArgument(f"--gpus {gpus} under a torchrun of {os.environ.get('WORLD_SIZE')} processes")
    from train.stage import train_stylegan

    report = train_stylegan(options)
    if World.from_env().main:
        opt.show(summaries.train_summary(report))
    elif report.interrupted:
        raise typer.Exit(130)


def _describe(options, res: int, cond_dim: int, gpus: int) -> dict:
    from train.stage import describe

    if options.data is not None:
        from train.dataset import open_dataset

        dataset = open_dataset(options.data, progress=False)
        res, cond_dim = dataset.resolution, dataset.label_dim if options.cond else 0
    return describe(options, res, cond_dim, gpus)
