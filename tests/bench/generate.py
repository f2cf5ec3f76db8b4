"""Benchmark `curate generate` against a bare G_ema forward, and the FID pipeline's images/s.

A 256² conditional generator (the `auto` preset's network, 59 labels, random weights) is saved as a
snapshot in the real format; then, in the same process and on the same device:
  - bare: G_ema(z, c) batch after batch, nothing else (the ceiling);
  - curate: `train.generate.generate` making the same number of images, PNGs and grid included, and
    its two halves alone (the generator's stream without files, the PNG writer without the generator),
    to tell which one holds it back;
  - fid: generated images through pytorch-fid's Inception (random weights in its file format), the
    path `curate metrics` and `train --metrics` take, and reals (uint8 arrays) through it alone.
Target: curate ≥ 90% of bare.

Run from the repo root:
  python tests/bench/generate.py            256² on the CPU (few images) or CUDA when present
  python tests/bench/generate.py --quick    a tiny smoke run (32²)
Prints one JSON line on stdout; progress goes to stderr. Exits 0 even when the target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path[:] = [p for p in sys.path if Path(p or os.curdir).resolve() != HERE]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tests.gan import random_inception  # noqa: E402
from train.config import Overrides, resolve  # noqa: E402
from train.generate import GenerateOptions, generate  # noqa: E402
from train.snapshot import save_snapshot  # noqa: E402

TARGET_SHARE = 0.9
LABELS = 59


def make_snapshot(folder: Path, resolution: int, quick: bool) -> tuple[Path, torch.nn.Module]:
    """A snapshot holding a randomly initialised G_ema, as training writes it."""
    tiny = Overrides(channel_base=256, channel_max=32, z_dim=32, mapping_layers=2)
    overrides = tiny if quick else Overrides()
    network, hyper = resolve("auto", resolution, LABELS, 1, overrides)
    torch.manual_seed(0)
    G, _ = network.build()
    state = {
        "trainer": {"step": 0, "G_ema": G.state_dict()},
        "network": network.as_dict(),
        "hyperparameters": hyper.as_dict(),
        "label_names": [f"tag_{i}" for i in range(LABELS)],
        "dataset": {},
    }
    return save_snapshot(folder / "snapshot-000000.pt", state), G.eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def bare_forward(G, count: int, batch: int, device: torch.device, half) -> float:
    """Images/s of G(z, c) alone."""
    z = torch.randn(count, G.z_dim, device=device)
    c = torch.zeros(count, LABELS, device=device)
    c[:, 0] = 1
    G(z[:batch], c[:batch], noise_mode="const", half=half)  # warm-up (cuDNN's choices)
    sync(device)
    start = time.perf_counter()
    for i in range(0, count, batch):
        G(z[i : i + batch], c[i : i + batch], noise_mode="const", half=half)
    sync(device)
    return count / (time.perf_counter() - start)


def curate_parts(
    snapshot: Path, count: int, batch: int, device: torch.device, out: Path
) -> tuple[float, float]:
    """Images/s of curate's two halves alone: the generator's stream (ws made per batch, pixels back
    on the CPU, no files) and the threaded PNG writer over those pixels (no generator)."""
    from train.inference import load_generator, seed_z
    from train.pngwriter import PngWriter

    gen = load_generator(snapshot, None, str(device))
    chunks = [list(range(start, min(start + batch, count))) for start in range(0, count, batch)]
    batches = ((gen.ws(seed_z(chunk, gen.z_dim), [[0]] * len(chunk)), chunk) for chunk in chunks)
    start = time.perf_counter()
    images = [image for pixels in gen.stream(batches) for image in pixels]
    render = count / (time.perf_counter() - start)
    out.mkdir()
    writer = PngWriter()
    start = time.perf_counter()
    for k, image in enumerate(images):
        writer.put(out / f"{k}.png", image)
    writer.close()
    return render, count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--n", type=int, default=None, help="images per measurement")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolution = 32 if args.quick else 256
    count = args.n or (16 if args.quick else 1024 if device.type == "cuda" else 16)
    batch = 32 if device.type == "cuda" else 8
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        snapshot, G = make_snapshot(folder, resolution, args.quick)
        G = G.to(device)
        # curate generate runs G in float32 (eval), as bare does here
        bare = bare_forward(G, count, batch, device, None)
        options = GenerateOptions(
            run=snapshot, out=folder / "out", n=count, tags="tag_0", batch=batch, device=str(device),
            progress=False,
        )  # fmt: skip
        generate(options)  # warm-up: the label set's mean w, cuDNN's choices, thread pool
        options.out, options.seed = folder / "out2", 10_000
        report = generate(options)
        curate = report.images_per_sec
        print(f"bare {bare:.1f} images/s, curate generate {curate:.1f} images/s", file=sys.stderr)
        render, png = curate_parts(snapshot, count, batch, device, folder / "parts")
        print(f"curate's parts alone: render {render:.1f}, PNG writer {png:.1f} images/s", file=sys.stderr)

        from train.inception import load_inception
        from train.quality import generated_features

        network = load_inception(random_inception(folder / "inception.pth"), device)
        labels = np.eye(LABELS, dtype=np.float32)
        fid_count = min(count, 8) if device.type == "cpu" else count
        generated_features(G, labels, network, batch, seed=0, batch=batch, progress=False)  # warm-up
        sync(device)
        start = time.perf_counter()
        generated_features(G, labels, network, fid_count, seed=1, batch=batch, progress=False)
        sync(device)
        fid_generated = fid_count / (time.perf_counter() - start)
        reals = np.random.default_rng(0).integers(0, 256, (fid_count, resolution, resolution, 3), np.uint8)
        start = time.perf_counter()
        for i in range(0, fid_count, batch):
            network(reals[i : i + batch])
        sync(device)
        fid_reals = fid_count / (time.perf_counter() - start)
    figures = {
        "bench": "generate",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "resolution": resolution,
        "images": count,
        "batch": batch,
        "bare_images_per_s": round(bare, 2),
        "curate_images_per_s": round(curate, 2),
        "curate_share_of_bare": round(curate / bare, 3),
        "render_images_per_s": round(render, 2),  # curate's generator path without files
        "png_images_per_s": round(png, 2),  # curate's PNG writer without the generator
        "target_share": TARGET_SHARE,
        "meets_target": curate / bare >= TARGET_SHARE,
        "fid_generated_images_per_s": round(fid_generated, 2),
        "fid_reals_images_per_s": round(fid_reals, 2),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
