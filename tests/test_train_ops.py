"""StyleGAN2's ops against direct computations, and the networks' sizes against the paper's table."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from train.discriminator import Discriminator, MinibatchStd
from train.generator import Generator
from train.ops import downsample2d, fir_kernel, modulated_conv2d, upsample2d

TAPS = np.array([1.0, 3.0, 3.0, 1.0])
FILTER = np.outer(TAPS, TAPS) / np.outer(TAPS, TAPS).sum()


def upfirdn(x: np.ndarray, kernel: np.ndarray, up: int, down: int, pad: tuple[int, int]) -> np.ndarray:
    """The textbook resampler on one [H, W] plane: insert up−1 zeros after every sample, zero-pad
    (before, after), convolve with the kernel, keep every `down`-th sample."""
    h, w = x.shape
    z = np.zeros((h * up, w * up))
    z[::up, ::up] = x
    z = np.pad(z, [pad, pad])
    k = kernel[::-1, ::-1]  # convolution, not correlation
    kh, kw = k.shape
    out = np.zeros((z.shape[0] - kh + 1, z.shape[1] - kw + 1))
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = (z[i : i + kh, j : j + kw] * k).sum()
    return out[::down, ::down]


def correlate_full(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Every position where the kernel overlaps the plane: output side H + k − 1."""
    k = w.shape[0]
    z = np.pad(x, k - 1)
    out = np.zeros((x.shape[0] + k - 1, x.shape[1] + k - 1))
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = (z[i : i + k, j : j + k] * w).sum()
    return out


def test_fir_upsampling_and_downsampling_match_the_textbook_resampler():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 6, 6))
    kernel = fir_kernel()
    assert np.allclose(kernel.numpy(), FILTER)
    up = upsample2d(torch.tensor(x, dtype=torch.float32), kernel).numpy()
    down = downsample2d(torch.tensor(x, dtype=torch.float32), kernel).numpy()
    assert up.shape == (2, 3, 12, 12) and down.shape == (2, 3, 3, 3)
    for n in range(2):
        for c in range(3):
            assert np.allclose(up[n, c], upfirdn(x[n, c], FILTER * 4, 2, 1, (2, 1)), atol=1e-5)
            assert np.allclose(down[n, c], upfirdn(x[n, c], FILTER, 1, 2, (1, 1)), atol=1e-5)
    flat = torch.ones(1, 1, 8, 8)  # a flat image keeps its level away from the border
    assert torch.allclose(upsample2d(flat, kernel)[..., 2:-2, 2:-2], torch.ones(1, 1, 12, 12))
    assert torch.allclose(downsample2d(flat, kernel)[..., 1:-1, 1:-1], torch.ones(1, 1, 2, 2))


@pytest.mark.parametrize("up", [False, True])
@pytest.mark.parametrize("demodulate", [True, False])
def test_modulated_convolution_equals_a_per_sample_loop(up, demodulate):
    torch.manual_seed(0)
    n, i, o, h = 3, 4, 5, 5
    x = torch.randn(n, i, h, h, dtype=torch.float64)
    weight = torch.randn(o, i, 3, 3, dtype=torch.float64)
    styles = torch.randn(n, i, dtype=torch.float64) + 1
    fir = fir_kernel().double()
    expected = []
    for sample in range(n):
        w = weight * styles[sample][None, :, None, None]
        if demodulate:
            w = w / (w.square().sum(dim=[1, 2, 3], keepdim=True) + 1e-8).sqrt()
        if not up:
            expected.append(F.conv2d(x[sample : sample + 1], w, padding=1)[0])
            continue
        # zero-insertion, every overlap of the 3×3 kernel, then the filter (gain 4) padded (1, 1)
        planes = []
        for out in range(o):
            y = sum(
                correlate_full(
                    upfirdn(x[sample, c].numpy(), np.ones((1, 1)), 2, 1, (0, 0)), w[out, c].numpy()
                )
                for c in range(i)
            )
            planes.append(upfirdn(y[:-1, :-1], FILTER * 4, 1, 1, (1, 1)))
        expected.append(torch.tensor(np.stack(planes)))
    expected = torch.stack(expected)
    for fused in (False, True):
        got = modulated_conv2d(x, weight, styles, demodulate=demodulate, up=up, fir=fir, fused=fused)
        assert got.shape == expected.shape == (n, o, 2 * h if up else h, 2 * h if up else h)
        assert torch.allclose(got, expected, atol=1e-9), (fused, (got - expected).abs().max())


def test_the_upsampling_convolution_is_a_convolution_of_the_upsampled_input_inside_the_border():
    torch.manual_seed(1)
    x, weight, styles = torch.randn(1, 2, 8, 8), torch.randn(3, 2, 3, 3), torch.ones(1, 2)
    fir = fir_kernel()
    fused = modulated_conv2d(x, weight, styles, demodulate=False, up=True, fir=fir)
    plain = F.conv2d(upsample2d(x, fir), weight, padding=1)
    assert torch.allclose(fused[..., 2:-2, 2:-2], plain[..., 2:-2, 2:-2], atol=1e-5)


def test_minibatch_std_matches_a_direct_computation():
    torch.manual_seed(2)
    x = torch.randn(8, 6, 4, 4)
    out = MinibatchStd(group_size=4)(x)
    assert out.shape == (8, 7, 4, 4) and torch.equal(out[:, :6], x)
    for sample in range(8):
        group = x[sample % 2 :: 2]  # groups interleave: sample n is in group n mod (8 / 4)
        expected = group.std(dim=0, unbiased=False).mean()
        assert torch.allclose(out[sample, 6], expected.expand(4, 4), atol=1e-5)


@pytest.mark.parametrize(
    ("c_dim", "g_params", "d_params"), [(59, 25_059_810, 24_030_843), (0, 24_767_458, 24_001_089)]
)
def test_networks_at_256_have_the_papers_parameter_counts(c_dim, g_params, d_params):
    with torch.device("meta"):
        G = Generator(c_dim=c_dim, resolution=256, channel_base=16384, channel_max=512)
        D = Discriminator(c_dim=c_dim, resolution=256, channel_base=16384, channel_max=512)
    assert sum(p.numel() for p in G.parameters()) == g_params
    assert sum(p.numel() for p in D.parameters()) == d_params
    assert G.num_ws == 14


def test_a_small_generator_and_discriminator_run_forward_and_backward():
    torch.manual_seed(3)
    G = Generator(
        z_dim=32, c_dim=3, w_dim=32, resolution=16, channel_base=256, channel_max=32, mapping_layers=2
    )
    D = Discriminator(c_dim=3, resolution=16, channel_base=256, channel_max=32, mbstd_group=2)
    z, c = torch.randn(4, 32), torch.eye(3)[[0, 1, 2, 0]]
    img = G(z, c)
    assert img.shape == (4, 3, 16, 16) and torch.isfinite(img).all()
    logits = D(img, c)
    assert logits.shape == (4,)
    logits.sum().backward()
    assert all(p.grad is not None for p in D.parameters())
    assert G.mapping.embed.grad is not None and G.synthesis.blocks[-1].torgb.weight.grad is not None
    # const noise is deterministic; fused and unfused convolutions agree
    a = G(z, c, noise_mode="const")
    b = G(z, c, noise_mode="const", fused=True)
    assert torch.allclose(a, b, atol=1e-5)
    # truncation 0 gives the tracked average w for every sample
    G.mapping.update_w_avg(torch.randn(32))
    ws = G.mapping(z, c, truncation=0.0)
    assert torch.allclose(ws, G.mapping.w_avg.expand_as(ws))


def test_bf16_top_blocks_stay_close_to_float32():
    torch.manual_seed(4)
    kwargs = dict(resolution=16, channel_base=256, channel_max=32, num_fp16_res=2)
    G = Generator(z_dim=32, w_dim=32, mapping_layers=2, **kwargs)
    D = Discriminator(mbstd_group=2, **kwargs)
    z = torch.randn(2, 32)
    full = G(z, noise_mode="const")
    half = G(z, noise_mode="const", half=torch.bfloat16)
    assert half.dtype == torch.float32
    assert (half - full).abs().max() < 0.1 * full.abs().max()
    assert torch.allclose(D(full, half=torch.bfloat16), D(full), atol=0.1, rtol=0.1)
