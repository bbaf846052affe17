"""Affine transplantation (editing/transform.py): regions moved, scaled, rotated and mirrored
in stylemap space, and today's transplant as its special case."""

import math

import pytest
import torch

from conftest import assert_close_to_scale, make_model
from stylemapgan.config import PRESETS
from stylemapgan.editing import operations as E
from stylemapgan.editing.transform import (
    AffineRegion,
    Transform,
    placed_mask,
    region_pivot,
    transplant_affine,
    warp,
)
from stylemapgan.errors import InputError


@pytest.fixture(scope="module")
def tiny_pyramids():
    model = make_model(PRESETS["tiny-32"])
    z = torch.randn(3, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        w = model.generator.mapping(z)
        return model.generator.pyramid(w[:1]), model.generator.pyramid(w[1:])


def _box_mask(size, y0, y1, x0, x1):
    m = torch.zeros(1, 1, size, size)
    m[..., y0:y1, x0:x1] = 1
    return m


@pytest.mark.parametrize("mode", ["area", "max"])
def test_the_identity_transform_is_todays_transplant(tiny_pyramids, mode):
    src, refs = tiny_pyramids
    soft = _box_mask(32, 5, 21, 9, 27) * 0.7  # soft and unaligned to the cells
    soft[..., 10:12, 12:14] = 0.3
    for identity in (Transform(), Transform(angle=360), Transform(0, 0, pivot=(3.0, 4.0))):
        if mode == "area":  # today's transplant brings masks to the layers by area averaging
            today = E.transplant(src, refs, [E.Region(soft, reference=1)], 32, alpha=E.steps(3))
            new = transplant_affine(src, refs, [AffineRegion(soft, identity, reference=1)], 32,
                                    alpha=E.steps(3))
        else:  # by max pooling: today's local edit with --mask-mode max
            today = E.local_edit_wplus(src, [r[1:] for r in refs], soft, mode)
            new = transplant_affine(src, refs, [AffineRegion(soft, identity, reference=1)], 32,
                                    mode=mode)
        for a, b in zip(new, today, strict=True):
            assert torch.equal(a, b)
    # In W (one level) as well.
    w_today = E.transplant([src[0]], [refs[0]], [E.Region(soft)], 32)
    w_new = transplant_affine([src[0]], [refs[0]], [AffineRegion(soft)], 32)
    assert torch.equal(w_new[0], w_today[0])


def test_a_whole_cell_move_is_todays_move(tiny_pyramids):
    src, refs = tiny_pyramids
    mask = _box_mask(32, 4, 16, 8, 20)
    for dy, dx in ((4, -8), (8, 4), (-4, 0), (12, -12)):  # cells of 4 px on the 8x8 stylemap
        today = E.transplant(src, refs, [E.Region(mask, dy=dy, dx=dx, reference=1)], 32)
        new = transplant_affine(src, refs, [AffineRegion(mask, Transform(dx, dy), 1)], 32)
        plain = transplant_affine(src, refs, [E.Region(mask, dy=dy, dx=dx, reference=1)], 32)
        for a, b, c in zip(new, today, plain, strict=True):
            assert torch.equal(a, b) and torch.equal(c, b)
        assert not torch.equal(new[-1], src[-1])  # it did move something


@pytest.mark.parametrize("flip", ["h", "v", "hv"])
@pytest.mark.parametrize("pivot", [None, (13.0, 7.0)])
def test_two_mirrors_are_the_identity(flip, pivot):
    t = Transform(flip=flip, pivot=pivot)
    for res in (8, 16, 32):
        x = torch.randn(2, 3, res, res, generator=torch.Generator().manual_seed(res))
        p = pivot or (16.0, 16.0)
        once = warp(x, t, 32, p)
        assert not torch.equal(once, x)
        twice = warp(once, t, 32, p)
        if pivot is None:  # about the centre: a permutation of the cells
            assert torch.equal(twice, x)
        else:  # about another point: the cells that stay on the map come back
            kept = warp(warp(torch.ones(1, 1, res, res), t, 32, p), t, 32, p)[0, 0] > 0
            assert kept.any() and torch.equal(twice[..., kept], x[..., kept])
    # and through the whole edit, with the region mirrored twice about its own centre
    mask = _box_mask(32, 0, 32, 0, 32)
    ref = [torch.randn(1, 4, r, r) for r in (8, 16, 32)]
    src = [torch.zeros(1, 4, r, r) for r in (8, 16, 32)]
    once = transplant_affine(src, ref, [AffineRegion(mask, Transform(flip=flip))], 32)
    twice = transplant_affine(src, once, [AffineRegion(mask, Transform(flip=flip))], 32)
    for a, b in zip(twice, ref, strict=True):
        assert torch.equal(a, b)


def _pattern(res):
    """Symmetric about the vertical axis and nothing else: a T, so a rotation shows its
    direction."""
    x = torch.zeros(1, 2, res, res)
    q = res // 8
    x[..., q: 2 * q, q: res - q] = 1.0          # the bar
    x[..., 2 * q: res - q, 3 * q: res - 3 * q] = 2.0  # the stem
    x[:, 1] = -x[:, 0]
    assert torch.equal(x, x.flip(-1)) and not torch.equal(x, x.transpose(-1, -2))
    return x


@pytest.mark.parametrize("mode", ["area", "max"])
def test_a_quarter_turn_rotates_a_symmetric_pattern(mode):
    res_list = [8, 8, 16, 16, 32, 32]
    ref = [_pattern(r) for r in res_list]
    src = [torch.full_like(p, 5.0) for p in ref]
    mask = torch.ones(1, 1, 32, 32)
    for angle, k in ((90, 1), (-90, -1), (180, 2), (270, 3), (450, 1)):
        out = transplant_affine(src, ref, [AffineRegion(mask, Transform(angle=angle))], 32,
                                mode=mode)
        for o, p in zip(out, ref, strict=True):
            # counter-clockwise as seen: the T's bar, on top, goes to the left side
            assert torch.equal(o, torch.rot90(p, k, dims=(-2, -1))), (angle, o.shape)
    left = transplant_affine(src, ref, [AffineRegion(mask, Transform(angle=90))], 32)[-1]
    assert left[0, 0, 8:24, 4:8].eq(1).all()  # the bar now stands on the left


def test_scaling_resamples_bilinearly_or_nearest():
    # nearest: a 4x4 block at the centre of 16x16 doubles to 8x8
    block = torch.zeros(1, 1, 16, 16)
    block[..., 6:10, 6:10] = 1
    big = warp(block, Transform(scale=2), 16, (8.0, 8.0), "max")
    expect = torch.zeros(1, 1, 16, 16)
    expect[..., 4:12, 4:12] = 1
    assert torch.equal(big, expect)
    # bilinear reproduces a linear ramp: scaled by 2 about the centre, its slope halves
    ramp = (torch.arange(16.0) - 7.5)[None, None, None, :].expand(1, 1, 16, 16)
    half = warp(ramp, Transform(scale=2), 16, (8.0, 8.0), "area")
    assert_close_to_scale(half[..., 2:14], ramp[..., 2:14] / 2, 1e-5, "scaled ramp")
    # a free angle: the 45-degree turn of a radially symmetric bump is the bump
    yy, xx = torch.meshgrid(torch.arange(32.0) + 0.5, torch.arange(32.0) + 0.5, indexing="ij")
    bump = torch.exp(-((xx - 16) ** 2 + (yy - 16) ** 2) / 40.0)[None, None]
    turned = warp(bump, Transform(angle=45), 32, (16.0, 16.0))
    assert_close_to_scale(turned, bump, 0.02, "turned bump")


def test_scaled_region_and_its_placed_mask():
    mask = _box_mask(32, 8, 16, 8, 16)  # 8 px square, centre (12, 12)
    assert region_pivot(mask) == (12.0, 12.0)
    placed = placed_mask(mask, Transform(dx=8, dy=4, scale=2), 32, "max")
    ys, xs = torch.nonzero(placed[0, 0] > 0, as_tuple=True)
    # 16 px square about the centre moved to (20, 16)
    assert (int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())) == (12, 27, 8, 23)
    src = [torch.zeros(1, 2, r, r) for r in (8, 16, 32)]
    ref = [torch.ones(1, 2, r, r) for r in (8, 16, 32)]
    out = transplant_affine(src, ref, [AffineRegion(mask, Transform(dx=8, dy=4, scale=2))],
                            32, mode="max")
    assert torch.equal(out[-1][0, 0] > 0, placed[0, 0] > 0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(scale=0), r"^scale must be > 0"),
    (dict(scale=-1), r"^scale must be > 0"),
    (dict(scale=float("nan")), r"^scale must be a finite number"),
    (dict(scale=5), r"^scale 5 is out of range; use 0.25 to 4$"),
    (dict(scale=0.2), r"^scale 0.2 is out of range"),
    (dict(angle=float("inf")), r"^angle must be a finite number"),
    (dict(dx=float("nan")), r"^move dx must be a finite number"),
    (dict(flip="x"), r"^flip must be h, v or hv, got 'x'$"),
    (dict(pivot=(1.0,)), r"^pivot must be two numbers"),
])
def test_bad_values_are_one_line_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match) as exc:
        Transform(**kwargs)
    assert isinstance(exc.value, InputError) and "\n" not in str(exc.value)


def test_a_region_moved_off_the_image_is_an_error():
    src = [torch.zeros(1, 2, r, r) for r in (8, 16, 32)]
    ref = [torch.ones(1, 2, r, r) for r in (8, 16, 32)]
    mask = _box_mask(32, 0, 8, 0, 8)
    for t in (Transform(dx=-10, scale=0.5), Transform(dx=40, dy=0, angle=30),
              Transform(dy=-20, flip="v"), Transform(dx=32), Transform(dx=-8, dy=-8)):
        with pytest.raises(ValueError, match=r"^region 0: move=.* moves it entirely off the "
                                             r"32x32 image$"):
            transplant_affine(src, ref, [AffineRegion(mask, t)], 32)
    # partly off is fine
    out = transplant_affine(src, ref, [AffineRegion(mask, Transform(dx=-4, scale=0.5))], 32)
    assert out[-1].abs().sum() > 0
    with pytest.raises(ValueError, match="selects nothing"):
        transplant_affine(src, ref, [AffineRegion(torch.zeros(1, 1, 32, 32), Transform(scale=2))], 32)
    with pytest.raises(ValueError, match="mask mode"):
        transplant_affine(src, ref, [AffineRegion(mask)], 32, mode="nearest")


def test_records_and_params_round_trip():
    t = Transform(dx=3.5, dy=-2, scale=1.5, angle=-30, flip="vh", pivot=(10, 12))
    assert t.flip == "hv"
    assert Transform.from_dict(t.to_dict()) == t
    import json

    assert Transform.from_dict(json.loads(json.dumps(t.to_dict(), allow_nan=False))) == t
    p = Transform.from_params({"move": "2,-1", "scale": "0.5", "angle": "90", "flip": "h"}, unit=4)
    assert p == Transform(8, -4, 0.5, 90, "h")
    assert Transform.from_params({}) == Transform()
    with pytest.raises(InputError, match=r"^move=2: give DX,DY"):
        Transform.from_params({"move": "2"})
    with pytest.raises(InputError, match=r"^scale must be a finite number, got 'nan'"):
        Transform.from_params({"scale": "nan"})
    with pytest.raises(InputError, match="unknown transform field"):
        Transform.from_dict({"shear": 1})
    assert Transform(angle=90).linear().tolist() == [[0.0, 1.0], [-1.0, 0.0]]
    assert math.isclose(Transform(angle=30).linear()[0, 1], 0.5)


def test_low_precision_stylemaps_keep_their_dtype():
    """The --fast path's bfloat16 stylemaps: warped in float32, returned in bfloat16."""
    src = [torch.randn(1, 4, r, r, generator=torch.Generator().manual_seed(r)) for r in (8, 16, 32)]
    ref = [torch.randn(1, 4, r, r, generator=torch.Generator().manual_seed(r + 1)) for r in (8, 16, 32)]
    mask = _box_mask(32, 4, 20, 6, 22)
    for t in (Transform(dx=4, angle=90), Transform(scale=1.5, angle=10)):
        full = transplant_affine(src, ref, [AffineRegion(mask, t)], 32)
        with torch.inference_mode():
            low = transplant_affine([s.bfloat16() for s in src], [r.bfloat16() for r in ref],
                                    [AffineRegion(mask, t)], 32)
        for a, b in zip(low, full, strict=True):
            assert a.dtype == torch.bfloat16
            assert_close_to_scale(a.float(), b, 0.02, "bfloat16 transplant")
