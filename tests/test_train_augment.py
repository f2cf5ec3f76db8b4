"""ADA's augmentation pipe: exactness of the blits, probabilities, colour algebra, geometry conventions,
the twice-differentiable grid sample (R1 through the pipe), and the controller."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from curate.errors import InvalidArgument
from train import augment
from train.augment import AUGMENTATIONS, AugmentPipe, affine_resample
from train.gridsample import grid_sample


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(n: int = 8, size: int = 16, seed: int = 1, dtype=torch.float32, width: int | None = None):
    return torch.rand(n, 3, size, width or size, generator=gen(seed), dtype=dtype) * 2 - 1


def only(name: str, p: float = 1.0) -> AugmentPipe:
    return AugmentPipe({name: 1.0}, p=p)


# --- identity, exact blits ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_p_zero_is_the_identity_bit_for_bit(dtype):
    x = images(dtype=dtype)
    assert torch.equal(AugmentPipe("bgc", p=0.0)(x, gen()), x)


def test_nothing_on_returns_the_input_itself():
    pipe = AugmentPipe({})
    x = images()
    assert not pipe.enabled and pipe(x) is x
    assert AugmentPipe("").enabled is False and AugmentPipe().enabled


def test_xflip_gives_each_image_or_its_mirror():
    x = images(n=32)
    y = only("xflip")(x, gen())
    same = (y == x).flatten(1).all(1)
    mirrored = (y == x.flip(3)).flatten(1).all(1)
    assert (same | mirrored).all()
    assert same.any() and mirrored.any()


def test_rotate90_is_an_exact_quarter_turn():
    x = images(n=32)
    y = only("rotate90")(x, gen())
    turns = torch.stack([(y == torch.rot90(x, k, dims=(2, 3))).flatten(1).all(1) for k in range(4)], 1)
    assert (turns.sum(1) == 1).all()  # each image is exactly one of its four turns
    assert turns.any(0).all()  # and every turn occurs


def test_integer_translation_moves_whole_pixels():
    size, max_shift = 32, round(0.125 * 32)
    x = images(n=24, size=size)
    y = only("xint")(x, gen())
    moved = 0
    for out, src in zip(y, x, strict=True):
        found = []
        for dy in range(-max_shift, max_shift + 1):
            for dx in range(-max_shift, max_shift + 1):
                # out[r, c] == src[r − dy, c − dx] wherever both lie inside the image
                o = out[:, max(dy, 0) : size + min(dy, 0), max(dx, 0) : size + min(dx, 0)]
                s = src[:, max(-dy, 0) : size + min(-dy, 0), max(-dx, 0) : size + min(-dx, 0)]
                if torch.equal(o, s):
                    found.append((dy, dx))
        assert len(found) == 1, found
        moved += found[0] != (0, 0)
        assert torch.isin(out, src).all()  # the padding reflects pixels of the image too
    assert moved > len(x) // 2


# --- probabilities and randomness --------------------------------------------------------------------
# P(the drawn parameter is not the identity): flips draw i ∈ {0, 1}, rotate90 k ∈ {0..3}, and at 16
# pixels an integer shift rounds to 0 on an axis with probability 1/4.
NOT_IDENTITY = {"xflip": 1 / 2, "rotate90": 3 / 4, "xint": 1 - 1 / 16, "lumaflip": 1 / 2}


@pytest.mark.parametrize("name", AUGMENTATIONS)
def test_each_augmentation_touches_about_p_of_the_images(name):
    p, n = 0.3, 1000
    x = images(n=n, size=16)
    y = only(name, p)(x, gen(7))
    difference = (y - x).abs().flatten(1).amax(1)
    changed = difference > 1e-5
    assert ((difference == 0) | changed).all()  # an image is untouched bit for bit, or clearly changed
    expected = p * NOT_IDENTITY.get(name, 1.0)
    assert abs(changed.float().mean().item() - expected) < 0.05


def test_the_same_seed_repeats_and_another_differs():
    pipe = AugmentPipe("bgc", p=0.5)
    x = images()
    assert torch.equal(pipe(x, gen(3)), pipe(x, gen(3)))
    assert not torch.equal(pipe(x, gen(3)), pipe(x, gen(4)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_shape_and_dtype_are_kept(dtype):
    x = images(n=4, size=12, dtype=torch.float32).to(dtype)
    y = AugmentPipe("bgc", p=0.7)(x, gen())
    assert y.shape == x.shape and y.dtype == dtype and torch.isfinite(y).all()
    rect = images(n=4, size=12, width=20)
    assert AugmentPipe("gc", p=0.7)(rect, gen()).shape == rect.shape
    with pytest.raises(InvalidArgument, match="square"):
        AugmentPipe("b", p=0.7)(rect, gen())


def test_bad_input_and_options_are_clear_errors():
    with pytest.raises(InvalidArgument, match="bgc"):
        AugmentPipe("bgx")
    with pytest.raises(InvalidArgument, match="unknown"):
        AugmentPipe({"cutout": 1.0})
    with pytest.raises(InvalidArgument, match="multipliers"):
        AugmentPipe({"hue": -1.0})
    with pytest.raises(InvalidArgument, match=r"\[N, 3, H, W\]"):
        AugmentPipe()(torch.zeros(2, 1, 8, 8))


# --- colour -----------------------------------------------------------------------------------------
def test_brightness_adds_one_constant_per_image():
    x = images(n=64)
    shift = only("brightness")(x, gen()) - x
    per_image = shift.flatten(1).mean(1)
    assert torch.allclose(shift, per_image.view(-1, 1, 1, 1).expand_as(shift), atol=1e-6)
    assert 0.15 < per_image.std().item() < 0.25  # N(0, 0.2²)


def test_contrast_scales_each_image_about_mid_grey():
    x = images(n=16)
    y = only("contrast")(x, gen())
    scale = (y / x).flatten(1).median(1).values
    assert torch.allclose(y, x * scale.view(-1, 1, 1, 1), atol=1e-5)
    assert (scale > 0).all() and not torch.allclose(scale, torch.ones(16))


@pytest.mark.parametrize("name", ["hue", "saturation"])
def test_hue_and_saturation_keep_the_luma(name):
    x = images(n=16)
    y = only(name)(x, gen())
    assert torch.allclose(y.mean(1), x.mean(1), atol=1e-5)
    assert ((y - x).abs().flatten(1).amax(1) > 1e-3).all()


def test_luma_flip_negates_luma_and_keeps_chroma():
    x = images(n=32)
    y = only("lumaflip")(x, gen())
    luma = x.mean(1, keepdim=True)
    flipped = (y - (x - 2 * luma)).abs().flatten(1).amax(1) < 1e-5
    same = (y == x).flatten(1).all(1)
    assert (flipped ^ same).all() and flipped.any() and same.any()


# --- geometry ---------------------------------------------------------------------------------------
def matrices(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64).view(-1, 3, 3)


IDENTITY = (1, 0, 0, 0, 1, 0, 0, 0, 1)


def test_identity_resampling_is_the_known_filter_round_trip():
    # [1,3,3,1] up then down is [3, 10, 3]/16 per axis, at the original pixel positions (no shift)
    x = images(n=2, size=10, dtype=torch.float64, width=14)
    y = affine_resample(x, matrices(IDENTITY, IDENTITY))
    taps = torch.tensor([3.0, 10.0, 3.0], dtype=torch.float64) / 16
    expected = F.pad(x, [1, 1, 1, 1], mode="replicate").reshape(6, 1, 12, 16)
    expected = F.conv2d(expected, torch.outer(taps, taps).view(1, 1, 3, 3)).view_as(x)
    assert torch.allclose(y, expected, atol=1e-12)


def test_resampling_a_quarter_turn_matches_rot90():
    x = images(n=1, size=12, dtype=torch.float64)
    turned = affine_resample(x, matrices((0, -1, 0, 1, 0, 0, 0, 0, 1)))
    reference = torch.rot90(affine_resample(x, matrices(IDENTITY)), 1, dims=(2, 3))
    assert torch.allclose(turned, reference, atol=1e-12)


def test_resampling_follows_the_matrix_on_a_linear_ramp():
    # bilinear sampling and the FIR round trip are exact on linear functions, so away from the edges
    # the output at q is the ramp at inverse·q (pixel units about the centre, x right, y down)
    size = 32
    centres = torch.arange(size, dtype=torch.float64) + 0.5 - size / 2
    ys, xs = torch.meshgrid(centres, centres, indexing="ij")
    ramp = (0.03 * xs - 0.05 * ys + 0.2).expand(1, 3, size, size)
    angle, scale, shift = 0.4, 1.15, (2.5, -1.25)
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    inverse = matrices((cos, -sin, shift[0], sin, cos, shift[1], 0, 0, 1))
    y = affine_resample(ramp, inverse)
    source_x = cos * xs - sin * ys + shift[0]
    source_y = sin * xs + cos * ys + shift[1]
    inside = (source_x.abs() < size / 2 - 3) & (source_y.abs() < size / 2 - 3)
    expected = 0.03 * source_x - 0.05 * source_y + 0.2
    assert inside.sum() > 200
    assert torch.allclose(y[0, 0][inside], expected[inside], atol=1e-10)


def test_fractional_translation_moves_content_the_drawn_way():
    # a geometric-only pipe at p = 1 with just 'xfrac': the matrix is a translation; check the blob moves
    x = torch.zeros(64, 3, 32, 32)
    x[:, :, 14:18, 14:18] = 1.0
    y = only("xfrac")(x, gen())
    grid = torch.arange(32.0)
    mass = y[:, 0].clamp_min(0)
    centre_x = (mass.sum(1) * grid).sum(1) / mass.sum((1, 2))
    assert centre_x.std() > 2.0  # N(0, (0.125·32)²) pixels
    assert (mass.sum((1, 2)) > 10).all()


# --- double backward --------------------------------------------------------------------------------
def test_grid_sample_matches_torch_and_is_twice_differentiable():
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64, generator=gen(), requires_grad=True)
    grid = torch.rand(2, 5, 4, 2, dtype=torch.float64, generator=gen(1)) * 3 - 1.5  # some far outside
    reference = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    assert torch.equal(grid_sample(x, grid), reference)
    assert torch.autograd.gradcheck(lambda t: grid_sample(t, grid), (x,))
    assert torch.autograd.gradgradcheck(lambda t: grid_sample(t, grid), (x,))


def test_grid_sample_refuses_a_grid_that_needs_grad():
    with pytest.raises(InvalidArgument, match="grid must not require grad"):
        grid_sample(torch.zeros(1, 1, 4, 4), torch.zeros(1, 2, 2, 2, requires_grad=True))


def test_the_whole_pipe_is_twice_differentiable():
    # every op (gather, edge padding, FIR convolutions, grid sample, colour matmul, where) in one check;
    # fast mode checks random projections of the Jacobians, which keeps this to seconds
    x = images(n=2, size=6, dtype=torch.float64).requires_grad_(True)
    pipe = AugmentPipe("bgc", p=1.0)
    assert torch.autograd.gradgradcheck(lambda t: pipe(t, gen(5)), (x,), fast_mode=True)


def gather_grid_sample(images: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Reference: bilinear, reflection padding, align_corners=False, written with gather (plainly twice
    differentiable: the grid is constant, the output linear in the images)."""
    n, c, h, w = images.shape

    def source(coordinate, size):
        position = ((coordinate + 1) * size - 1) / 2
        distance = (position + 0.5).abs()  # reflect about the edges −0.5 and size − 0.5
        flips, extra = torch.div(distance, size, rounding_mode="floor"), torch.remainder(distance, size)
        position = torch.where(flips % 2 == 0, extra - 0.5, size - extra - 0.5)
        return position.clamp(0, size - 1)

    sx, sy = source(grid[..., 0], w), source(grid[..., 1], h)
    x0, y0 = sx.floor(), sy.floor()
    wx, wy = (sx - x0).unsqueeze(1), (sy - y0).unsqueeze(1)
    x0, y0 = x0.long(), y0.long()
    x1, y1 = (x0 + 1).clamp(max=w - 1), (y0 + 1).clamp(max=h - 1)
    flat = images.reshape(n, c, h * w)

    def pick(row, column):
        index = (row * w + column).reshape(n, 1, -1).expand(n, c, -1)
        return flat.gather(2, index).view(n, c, *grid.shape[1:3])

    top = pick(y0, x0) * (1 - wx) + pick(y0, x1) * wx
    bottom = pick(y1, x0) * (1 - wx) + pick(y1, x1) * wx
    return top * (1 - wy) + bottom * wy


def r1_weight_gradients(sampler, monkeypatch) -> list[torch.Tensor]:
    """∂/∂θ of ‖∂D(aug(x))/∂x‖² for a tiny conv D, through the whole pipe at p = 1 with `sampler`."""
    monkeypatch.setattr(augment, "grid_sample", sampler)
    torch.manual_seed(0)
    D = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Softplus(), torch.nn.Conv2d(4, 1, 3, stride=2)
    ).double()
    x = images(n=3, size=12, dtype=torch.float64).requires_grad_(True)
    logits = D(AugmentPipe("bgc", p=1.0)(x, gen(11))).flatten(1).sum(1)
    (grad_x,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
    penalty = grad_x.square().sum()
    # the last bias does not move ∂D/∂x: its gradient is zero (materialised) for both samplers
    return torch.autograd.grad(penalty, list(D.parameters()), materialize_grads=True)


def test_r1_through_the_pipe_matches_a_plainly_differentiable_sampler(monkeypatch):
    ours = r1_weight_gradients(grid_sample, monkeypatch)
    reference = r1_weight_gradients(gather_grid_sample, monkeypatch)
    for a, b in zip(ours, reference, strict=True):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)
    assert sum(a.abs().sum() for a in ours) > 0


def native_grid_sample(images, grid):
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def test_r1_agrees_with_torchs_own_second_derivative_where_it_has_one(monkeypatch):
    # PyTorch differentiates grid_sampler_2d_backward only since pytorch/pytorch#177487 (2026)
    try:
        native = r1_weight_gradients(native_grid_sample, monkeypatch)
    except RuntimeError as error:
        assert "not implemented" in str(error)
        pytest.skip(f"this PyTorch ({torch.__version__}) has no second derivative of grid_sample")
    ours = r1_weight_gradients(grid_sample, monkeypatch)
    for a, b in zip(ours, native, strict=True):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


# --- the controller ---------------------------------------------------------------------------------
def test_p_is_a_float32_buffer_saved_in_the_state_dict():
    pipe = AugmentPipe(p=0.25)
    assert pipe.p.dtype == torch.float32 and pipe.p.ndim == 0
    assert set(pipe.state_dict()) == {"p"} and pipe.p_value() == 0.25  # constants are not persistent
    other = AugmentPipe()
    other.load_state_dict(pipe.state_dict())
    assert other.p_value() == 0.25


def test_the_controller_steps_up_and_down_and_never_below_zero():
    pipe = AugmentPipe()
    step = 64 / (500 * 1000)
    for k in range(1, 4):  # every sign +1: r = 1 > 0.6
        pipe.adjust(torch.tensor(64.0), 64)
        assert pipe.p_value() == pytest.approx(k * step, rel=1e-5)
    pipe.adjust(torch.tensor(64.0 * 0.5), torch.tensor(64))  # r = 0.5 < 0.6 (tensor count)
    assert pipe.p_value() == pytest.approx(2 * step, rel=1e-5)
    for _ in range(5):  # every sign −1
        pipe.adjust(torch.tensor(-64.0), 64)
    assert pipe.p_value() == 0.0
    pipe.adjust(torch.tensor(32.0), 32, target=0.6, ada_kimg=0.001)  # a huge step stops at 1
    assert pipe.p_value() == 1.0


# On CUDA these wait for the device: reading a value (.item(), bool(), a Python `if`), data-dependent shapes,
# and a tensor made from host data (torch.tensor(...) copies from pageable memory and syncs).
SYNCING_OPS = {"aten._local_scalar_dense", "aten.is_nonzero", "aten.item", "aten.nonzero"}
SYNCING_OPS |= {"aten.masked_select", "aten.lift_fresh", "aten.lift_fresh_copy"}


class RecordOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def test_a_training_step_through_the_pipe_uses_no_syncing_op():
    pipe = AugmentPipe("bgc", p=0.5)
    x = images(n=4).requires_grad_(True)
    D = torch.nn.Conv2d(3, 1, 3)
    generator, signs = gen(), torch.zeros([])
    with RecordOps() as recorded:
        logits = D(pipe(x, generator)).flatten(1).sum(1)
        (grad_x,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
        grad_x.square().sum().backward()
        signs += logits.detach().sign().sum()
        pipe.adjust(signs, 4)
    assert "aten.grid_sampler_2d" in recorded.ops  # the recorder sees the pipe's ops
    assert not recorded.ops & SYNCING_OPS


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_host_sync_on_cuda():
    device = torch.device("cuda")
    pipe = AugmentPipe("bgc", p=0.5).to(device)
    x = images(n=8, size=32).to(device).requires_grad_(True)
    D = torch.nn.Conv2d(3, 1, 3).to(device)
    generator = torch.Generator(device).manual_seed(0)
    signs, count = torch.zeros([], device=device), 8
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        logits = D(pipe(x, generator)).flatten(1).sum(1)
        (grad_x,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
        grad_x.square().sum().backward()
        signs += logits.detach().sign().sum()
        pipe.adjust(signs, count)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert 0 <= pipe.p_value() <= 1
