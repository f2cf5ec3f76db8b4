"""`curate train`: a StyleGAN2 trained on an export, from options to a ready training session.

One process, or several under torchrun (NCCL between GPUs, gloo on CPUs). A run folder with
snapshots continues from the newest, exactly (see train/loop.py), when its options allow it.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from curate import __version__
from curate.distributed import World
from curate.errors import InvalidArgument
from curate.manifest import now_utc
from train.config import Overrides, describe_networks, resolve
from train.runs import (
    OPTIONS_FILE,
    TrainOptions,
    changed_options,
    choose_run_folder,
    options_record,
    resume_point,
    run_files,
    run_name,
    set_aside,
    trim_metrics,
    write_json,
)
from train.session import TrainingSession, TrainReport


def overrides_of(options: TrainOptions) -> Overrides:
    """The preset overrides among the options (TrainOptions holds them flat, as the CLI gives them)."""
    return Overrides(**{f.name: getattr(options, f.name) for f in fields(Overrides)})


def describe(options: TrainOptions, resolution: int, c_dim: int, gpus: int = 1) -> dict:
    """Parameter counts of the networks `options` would train at this resolution and label count."""
    network, hyper = resolve(options.cfg, resolution, c_dim, gpus, overrides_of(options))
    return {**describe_networks(network), "hyperparameters": hyper.as_dict()}


def train_stylegan(options: TrainOptions) -> TrainReport:
    """Train (or continue) the run `options` describe; see the module docstring."""
    from curate.device import pick_device
    from curate.distributed import join, leave

    options.check()
    world, device = join(pick_device(options.device))
    try:
        return prepare_session(options, world, device).run()
    finally:
        leave(world)


def prepare_session(options: TrainOptions, world: World, device) -> TrainingSession:
    """Everything up to the first step: data checked, networks built or restored, the run folder ready."""
    import torch

    from train.dataset import open_dataset
    from train.loop import StepSettings, Trainer
    from train.snapshot import KEEP_RESUMABLE, is_resumable, load_snapshot

    if options.metrics and world.main:
        from train.quality import prepare_metrics

        prepare_metrics(options.metrics, device, options.metrics_n)  # now, not at the first snapshot
    data = _data_path(options)
    # rank 0 reads every header; the others take its checked TrainingSet (it pickles)
    dataset = _shared(open_dataset(data, progress=options.progress) if world.main else None, world)
    c_dim = dataset.label_dim if options.cond else 0
    network, hyper = resolve(options.cfg, dataset.resolution, c_dim, world.size, overrides_of(options))
    batch_gpu = options.batch_gpu or hyper.batch // world.size
    if hyper.batch % (batch_gpu * world.size):
        raise InvalidArgument(
            f"--batch {hyper.batch} is not a multiple of --batch-gpu {batch_gpu} × {world.size} processes"
        )
    if batch_gpu % min(network.mbstd_group, batch_gpu):
        raise InvalidArgument(f"--batch-gpu {batch_gpu} does not split into groups of {network.mbstd_group}")
    run = _run_folder(options, data, dataset, c_dim, world)
    start = _shared(_starting_point(options, run) if world.main else None, world)
    state = load_snapshot(start) if start is not None else None
    if state is not None:
        _check_resumable(state, options, dataset, start)
        if not is_resumable(state):
            raise InvalidArgument(
                f"{start} holds the networks only (older snapshots drop their optimiser state to save "
                f"disk; the newest {KEEP_RESUMABLE} keep it): resume from a newer snapshot"
            )
    report = TrainReport(run, 0, options.kimg, label_names=dataset.label_names[:c_dim] if c_dim else [])
    half = _half_precision(options.precision, device)
    settings = StepSettings(
        batch_gpu=batch_gpu,
        rounds=hyper.batch // (batch_gpu * world.size),
        seed=options.seed,
        half=half,
        compile=options.compile,
        ada_target=options.target,
    )
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    trainer = Trainer(
        network,
        hyper,
        settings,
        torch.from_numpy(dataset.labels[:, :c_dim]),
        device,
        world,
        augment=_augment_pipe(options),
    )
    if state is None and options.init is not None:
        from train.transfer import initialise

        report.initialised = initialise(trainer, Path(options.init).expanduser(), report.label_names)
    if state is not None:
        trainer.load_state_dict(state["trainer"])
        report.resumed_from = trainer.nimg
        if world.main and start.parent.resolve() == run:
            # going back to an older snapshot: the later ones leave the folder, so it holds one history
            set_aside(run, run_files(run, after_nimg=trainer.nimg), "abandoned")
        if world.main:
            trim_metrics(run, trainer.nimg)
    report.nimg = trainer.nimg
    if trainer.nimg >= options.kimg * 1000:
        report.up_to_date, report.snapshot = True, start
    elif world.main:
        _write_options(run, options, network, hyper, dataset, world, batch_gpu, fresh=state is None)
    session = TrainingSession(options, trainer, dataset, run, world, device, report)
    session.tick = int(state["tick"]) if state is not None else 0
    session.rng_state = state["rng"] if state is not None else None
    return session


def _data_path(options: TrainOptions) -> Path:
    from train.dataset import latest_export

    if options.data is not None:
        return Path(options.data).expanduser()
    if options.resume is not None and options.workspace is None:
        record = _resume_options(Path(options.resume))
        if record.get("data"):
            return Path(record["data"])
    if options.workspace is None:
        raise InvalidArgument("give --data (an export or a folder of images) or --workspace")
    return latest_export(Path(options.workspace).expanduser())


def _resume_options(path: Path) -> dict:
    from train.runs import read_options

    return read_options(path if path.is_dir() else path.parent) or {}


def _run_folder(options: TrainOptions, data: Path, dataset, c_dim: int, world) -> Path:
    """--out, or a folder under the workspace's runs/ (chosen by rank 0 and shared)."""
    if options.out is not None:
        run = Path(options.out).expanduser().resolve()
    elif options.resume is not None:
        resume = Path(options.resume).expanduser().resolve()
        run = resume if resume.is_dir() else resume.parent
    elif options.workspace is not None:
        from curate.workspace import Workspace

        root = Workspace.open(options.workspace).runs
        name = run_name(data, options.cfg, dataset.resolution, c_dim)
        run = choose_run_folder(root, name, options) if world.main else Path()
        run = _shared(run, world)
    else:
        raise InvalidArgument("give --out (the run folder) or --workspace")
    if world.main:
        run.mkdir(parents=True, exist_ok=True)
    return run


def _starting_point(options: TrainOptions, run: Path) -> Path | None:
    """The snapshot to continue from; --force first sets the run's files aside (nothing is deleted)."""
    if options.force:
        set_aside(run, run_files(run), "replaced")
        return None
    return resume_point(options, run)


def _shared(value, world):
    """Rank 0's value, in every process."""
    if world.size == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _check_resumable(state: dict, options: TrainOptions, dataset, start: Path) -> None:
    changed = changed_options(state["options"], options)
    if changed:
        raise InvalidArgument(
            f"{start} was trained with other options ({'; '.join(changed)}). Continue it with the same "
            "options, or start a new run: another --out, or --force to start this one again."
        )
    before, now = state["dataset"].get("fingerprint"), dataset.describe().get("fingerprint")
    if before != now:
        raise InvalidArgument(
            f"the data at {dataset.path} is not the data {start} was trained on (its images or labels "
            "changed): give the run's data, or start a new run"
        )


def _write_options(
    run: Path, options, network, hyper, dataset, world, batch_gpu: int, *, fresh: bool
) -> None:
    from train.grids import save_reals

    record = {
        "options": options_record(options),
        "network": network.as_dict(),
        "hyperparameters": hyper.as_dict(),
        "dataset": dataset.describe(),
        "label_names": dataset.label_names[: network.c_dim] if network.c_dim else [],
        "processes": world.size,
        "batch_gpu": batch_gpu,
        "curate_version": __version__,
        "written_at": now_utc().isoformat(),
    }
    write_json(run / OPTIONS_FILE, record)
    if fresh:
        import numpy as np

        count = min(64, len(dataset))
        save_reals(run / "reals.png", np.stack([dataset.image(i) for i in range(count)]))


def _augment_pipe(options: TrainOptions):
    if options.aug == "none":
        return None
    from train.augment import AugmentPipe

    pipe = AugmentPipe()
    if options.aug == "fixed":
        pipe.p.fill_(options.aug_p)
    pipe.adaptive = options.aug == "ada"
    return pipe


def _half_precision(precision: str, device):
    import torch

    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "fp16":
        return torch.float16
    return torch.bfloat16
