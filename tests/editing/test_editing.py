"""Properties of the pure editing functions on tiny models: masks of all zeros / all ones,
receptive fields, interpolation endpoints, transplantation, directions, no mutation."""

import pytest
import torch

from conftest import assert_close_to_scale, make_model
from stylemapgan.config import PRESETS, ModelConfig
from stylemapgan.editing import operations as E
from stylemapgan.editing.regions import round_half_away
from stylemapgan.errors import InputError
from stylemapgan.imaging.masks import as_tensor, mask_from_box

TINY = PRESETS["tiny-32"]
# A 64 px model whose 8x8 cells are 8 px wide, so receptive fields leave room to test.
SMALL64 = ModelConfig(size=64, stylemap_size=8, stylemap_channels=8, mapping_layers=2, channel_cap=16)


def _stylemaps(model, n=2, seed=0):
    z = torch.randn(n, model.config.stylemap_channels, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.generator.mapping(z)


def _render(model, styles):
    with torch.no_grad():
        return model.generator.synthesize(list(styles))


def _batchnorm_model(config, seed=0):
    """Batch normalization in eval mode (running statistics): every op is local."""
    model = make_model(config.replace(normalization="batch"), seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(0.5 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(m.running_var.shape, generator=gen))
    return model.eval()


@pytest.fixture(scope="module")
def tiny():
    return make_model(TINY)


# --------------------------------------------------------------------------- local editing
@pytest.mark.parametrize("mode", ["area", "max"])
def test_zero_mask_gives_source_and_full_mask_gives_reference(tiny, mode):
    w = _stylemaps(tiny, 2, seed=1)
    src, ref = w[:1], w[1:]
    g = tiny.generator
    s_src, s_ref = g.pyramid(src), g.pyramid(ref)
    for value, expect_w, expect_styles in ((0.0, src, s_src), (1.0, ref, s_ref)):
        mask = torch.full((1, 1, 32, 32), value)
        assert torch.equal(E.local_edit_w(src, ref, mask, mode), expect_w)
        edited = E.local_edit_wplus(s_src, s_ref, mask, mode)
        for a, b in zip(edited, expect_styles, strict=True):
            assert torch.equal(a, b)
        assert torch.equal(_render(tiny, edited), _render(tiny, expect_styles))
        # Masks at any resolution (here: the stylemap's and a non-divisible one).
        for res in (8, 20):
            m = torch.full((1, 1, res, res), value)
            assert torch.equal(E.local_edit_w(src, ref, m, mode), expect_w)


def test_soft_mask_blends_linearly(tiny):
    w = _stylemaps(tiny, 2, seed=2)
    out = E.local_edit_w(w[:1], w[1:], torch.full((1, 1, 32, 32), 0.25))
    torch.testing.assert_close(out, 0.75 * w[:1] + 0.25 * w[1:])
    # A half-covered cell gets 0.5 in area mode and 1 in max mode.
    m = torch.zeros(1, 1, 32, 32)
    m[..., :4, :2] = 1  # half of cell (0, 0)
    area = E.resize_mask(m, 8, "area")
    assert area[0, 0, 0, 0] == 0.5 and area.sum() == 0.5
    assert E.resize_mask(m, 8, "max")[0, 0, 0, 0] == 1


def test_bad_masks_are_refused(tiny):
    w = _stylemaps(tiny, 2)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        E.local_edit_w(w[:1], w[1:], torch.full((1, 1, 8, 8), 2.0))
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        E.local_edit_w(w[:1], w[1:], torch.full((1, 1, 8, 8), float("nan")))
    with pytest.raises(InputError, match="shape"):
        E.local_edit_w(w[:1], w[1:], torch.ones(1, 3, 8, 8))
    with pytest.raises(InputError, match="do not match"):
        E.local_edit_w(w[:1], w[1:, :4], torch.ones(8, 8))


# --------------------------------------------------------------------------- receptive fields
def _edit_pair(model, mask, space, seed=0):
    g = model.generator
    w = _stylemaps(model, 2, seed=seed)
    s_src = g.pyramid(w[:1])
    with torch.no_grad():
        if space == "wplus":
            edited = E.local_edit_wplus(s_src, g.pyramid(w[1:]), mask)
        else:
            edited = g.pyramid(E.local_edit_w(w[:1], w[1:], mask))
        # Source and edit in one batch: identical arithmetic where inputs are identical.
        images = g.synthesize([torch.cat([a, b]) for a, b in zip(s_src, edited, strict=True)])
    return (images[0] - images[1]).abs().amax(0)


_BN_MODELS: dict = {}


@pytest.mark.parametrize(("config", "space", "box"), [
    (TINY, "wplus", "0,0,2,2"), (TINY, "wplus", "6,5,8,8"), (TINY, "w", "0,0,1,1"),
    (SMALL64, "wplus", "0,0,1,1"), (SMALL64, "w", "6,5,8,8"),
], ids=["tiny32-wplus", "tiny32-wplus-corner", "tiny32-w", "small64-wplus", "small64-w"])
def test_hard_mask_changes_nothing_outside_its_receptive_field(config, space, box):
    if config not in _BN_MODELS:
        _BN_MODELS[config] = _batchnorm_model(config)
    model = _BN_MODELS[config]
    mask = as_tensor(mask_from_box(box, config.size, units="cells", stylemap_size=config.stylemap_size))
    diff = _edit_pair(model, mask, space)
    footprint = E.edit_footprint(config, mask, space)[0, 0]
    assert not footprint.all(), "the test needs pixels outside the footprint"
    assert torch.equal(diff[~footprint], torch.zeros_like(diff[~footprint]))
    assert (diff[mask[0, 0] > 0] > 0).all()
    # The footprint is tight: the edit really reaches (almost) all of it.
    assert (diff[footprint] > 0).float().mean() > 0.99


def test_footprint_of_the_finest_layers_by_hand():
    """The last three W+ layers, derived from the architecture by hand (pixels past the
    cell's own footprint): to-RGB reads its stylemap through 3x3 gamma/beta convs (1 px);
    the last 3x3 styled conv adds its own 3x3 conv (2 px); the upsampling conv reads a
    half-resolution stylemap (+-1 cell = 2 px), its transposed 3x3 conv + 4-tap blur reach 2
    more pixels on each side, and the 3x3 conv after it 1 more (5 px)."""
    for name in ("tiny-32", "official-256", "official-1024-16x16-light"):
        assert E.influence_border(PRESETS[name])[-3:] == [5, 2, 1]
    # The one-axis computation agrees with the full 2-D footprint.
    res = TINY.style_resolutions()
    borders = []
    for k, r in enumerate(res):
        maps = [torch.zeros(1, 1, q, q) for q in res]
        maps[k][..., r // 2, r // 2] = 1
        xs = torch.nonzero(E.synthesis_footprint(TINY, maps)[0, 0].any(0)).flatten()
        px = 32 // r
        borders.append(int(max((r // 2) * px - xs.min(), xs.max() - (r // 2 + 1) * px + 1)))
    assert borders == E.influence_border(TINY)
    # A W edit passes through the resizer's 3x3 convs too: it reaches further than W+ layer 0.
    c = PRESETS["official-256"]
    assert E.influence_border(c, "w")[0] >= E.influence_border(c)[0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_layer_norm_changes_outside_far_less_than_inside(seed):
    """With layer normalization the per-sample statistics are global, so pixels outside the
    receptive field move too, but by far less than the edited region."""
    model = make_model(TINY, seed=seed)
    mask = as_tensor(mask_from_box("0,0,1,1", 32, units="cells", stylemap_size=8))
    diff = _edit_pair(model, mask, "wplus", seed=seed)
    footprint = E.edit_footprint(TINY, mask, "wplus")[0, 0]
    inside, outside = diff[mask[0, 0] > 0].mean(), diff[~footprint].mean()
    assert outside > 0  # not exactly local ...
    assert outside < 0.05 * inside  # ... but far smaller


# --------------------------------------------------------------------------- mixing, interpolation
def test_layer_selection():
    assert E.layer_selection("coarse", 6) == [2, 3, 4, 5]
    assert E.layer_selection("fine", 6) == [0, 1]
    assert E.layer_selection("colour", 8) == E.layer_selection("color", 8) == [6, 7]
    assert E.layer_selection("2:4", 6) == [2, 3]
    assert E.layer_selection(":2", 6) == [0, 1]
    assert E.layer_selection("5,1,1", 6) == [1, 5]
    for bad in ("9", "x", "4:2", "1,a"):
        with pytest.raises(InputError):
            E.layer_selection(bad, 6)
    # A range end past the model's layers is refused like a list entry, not cut short.
    assert E.layer_selection("4:6", 6) == [4, 5] and E.layer_selection("-2:", 6) == [4, 5]
    for bad in ("5:99", "6:12", "-9:"):
        with pytest.raises(InputError, match="out of range: this model has 6 W"):
            E.layer_selection(bad, 6)


def test_style_mix_takes_the_selected_layers(tiny):
    w = _stylemaps(tiny, 2, seed=3)
    a, b = tiny.generator.pyramid(w[:1]), tiny.generator.pyramid(w[1:])
    mixed = E.style_mix(a, b, [1, 4])
    for i, s in enumerate(mixed):
        assert s is (b[i] if i in (1, 4) else a[i])


@pytest.mark.parametrize("space", ["w", "wplus"])
def test_interpolation_endpoints_equal_the_inputs(tiny, space):
    w = _stylemaps(tiny, 2, seed=4)
    g = tiny.generator
    t = E.steps(5)
    assert t[0] == 0 and t[-1] == 1 and len(t) == 5
    if space == "w":
        out = E.interpolate_w(w[:1], w[1:], t)
        assert torch.equal(out[0], w[0]) and torch.equal(out[-1], w[1])
        torch.testing.assert_close(out[2], 0.5 * (w[0] + w[1]))
        styles = g.pyramid(out)
    else:
        a, b = g.pyramid(w[:1]), g.pyramid(w[1:])
        styles = E.interpolate_wplus(a, b, t)
        for s, sa, sb in zip(styles, a, b, strict=True):
            assert torch.equal(s[0], sa[0]) and torch.equal(s[-1], sb[0])
    images = _render(tiny, styles)
    ends = _render(tiny, g.pyramid(w))
    assert_close_to_scale(images[[0, -1]], ends, 1e-5, "interpolation ends")


# --------------------------------------------------------------------------- transplantation
def test_transplant_without_move_is_a_local_edit(tiny):
    w = _stylemaps(tiny, 2, seed=5)
    g = tiny.generator
    a, b = g.pyramid(w[:1]), g.pyramid(w[1:])
    mask = as_tensor(mask_from_box("1,2,5,6", 32, units="cells", stylemap_size=8))
    moved = E.transplant(a, b, [E.Region(mask)], 32)
    for x, y in zip(moved, E.local_edit_wplus(a, b, mask), strict=True):
        torch.testing.assert_close(x, y, atol=0, rtol=0)


def test_transplant_moves_the_reference_content():
    config = PRESETS["official-256-light"]  # geometry only: no weights are needed
    res = config.style_resolutions()
    src = [torch.randn(1, 4, r, r) for r in res]
    ref = [torch.randn(2, 4, r, r) for r in res]
    mask = torch.zeros(1, 1, 256, 256)
    mask[..., 32:96, 64:128] = 1  # cells (1..3, 2..4) at 8x8
    out = E.transplant(src, ref, [E.Region(mask, dy=64, dx=-32, reference=1)], 256)
    for r, s, f, o in zip(res, src, ref, out, strict=True):
        k = r // 8  # cells per 8x8 cell
        y0, y1, x0, x1 = 1 * k, 3 * k, 2 * k, 4 * k
        dy, dx = 2 * k, -1 * k
        assert torch.equal(o[..., y0 + dy: y1 + dy, x0 + dx: x1 + dx], f[1:, :, y0:y1, x0:x1])
        keep = torch.ones(r, r, dtype=torch.bool)
        keep[y0 + dy: y1 + dy, x0 + dx: x1 + dx] = False
        assert torch.equal(o[..., keep], s[..., keep])
    # Half-cell moves round the same way at every size (away from zero), not to even.
    assert [round_half_away(v) for v in (0.5, 1.5, 2.5, -0.5, -2.5)] == [1, 2, 3, -1, -3]


def test_transplant_steps_and_errors(tiny):
    w = _stylemaps(tiny, 2, seed=6)
    g = tiny.generator
    a, b = g.pyramid(w[:1]), g.pyramid(w[1:])
    mask = torch.ones(1, 1, 32, 32)
    out = E.transplant(a, b, [E.Region(mask)], 32, alpha=E.steps(3))
    assert out[0].shape[0] == 3
    assert torch.equal(out[0][0], a[0][0]) and torch.equal(out[0][2], b[0][0])
    with pytest.raises(InputError, match="reference 3"):
        E.transplant(a, b, [E.Region(mask, reference=3)], 32)
    with pytest.raises(InputError, match="at least one region"):
        E.transplant(a, b, [], 32)


# --------------------------------------------------------------------------- directions
def test_apply_direction_global_masked_and_swept():
    w = torch.randn(1, 8, 8, 8)
    d = torch.randn(8, 8, 8)
    d = d / d.norm()
    torch.testing.assert_close(E.apply_direction(w, d, 2.5), w + 2.5 * d)
    out = E.apply_direction(w, d, [0.0, 1.0, 3.0])
    assert out.shape == (3, 8, 8, 8) and torch.equal(out[0], w[0])
    mask = as_tensor(mask_from_box("2,2,4,5", 32, units="cells", stylemap_size=8))
    masked = E.apply_direction(w, d, 4.0, mask)
    inside = torch.zeros(8, 8, dtype=torch.bool)
    inside[2:5, 2:4] = True
    assert torch.equal(masked[..., ~inside], w[..., ~inside])
    torch.testing.assert_close(masked[..., inside], (w + 4 * d)[..., inside])
    with pytest.raises(InputError, match="another model"):
        E.apply_direction(w, torch.randn(4, 8, 8), 1.0)


# --------------------------------------------------------------------------- purity
def test_no_function_mutates_its_inputs(tiny):
    w = _stylemaps(tiny, 3, seed=7)
    g = tiny.generator
    a, b = g.pyramid(w[:1]), g.pyramid(w[1:])
    mask = torch.rand(1, 1, 32, 32)
    d = torch.randn(8, 8, 8)
    everything = [w, mask, d, *a, *b]
    before = [t.clone() for t in everything]
    E.local_edit_w(w[:1], w[1:2], mask)
    E.local_edit_wplus(a, [s[:1] for s in b], mask, "max")
    E.style_mix(a, b, [0])
    E.interpolate_w(w[:1], w[1:2], E.steps(4))
    E.interpolate_wplus(a, [s[:1] for s in b], 0.3)
    E.transplant(a, b, [E.Region(mask, 4, -8, 1), E.Region(mask, -3, 0, 0)], 32, E.steps(3))
    E.apply_direction(w, d, [1.0, 2.0, 3.0], mask)
    E.shift(w, 2, -3)
    E.edit_footprint(TINY, mask, "w")
    for t, t0 in zip(everything, before, strict=True):
        assert torch.equal(t, t0)


def test_one_region_type_moves_its_mask_the_same_way_everywhere():
    """editing.regions: the mask at image size (grid, paste-back) and at every W+ resolution
    (the edit) is moved by Region.move; a numpy mask and a tensor mask are the same region."""
    import numpy as np

    from stylemapgan.editing.regions import Region, moved_union, paste_mask

    m = np.zeros((32, 32), np.float32)
    m[4:12, 8:16] = 1  # whole 4 px cells at 8x8
    a, b = Region(m, dy=8, dx=-4, reference=1), Region(torch.from_numpy(m), dy=8, dx=-4, reference=1)
    assert a.moved and a.mask.shape == (1, 1, 32, 32) and torch.equal(a.mask, b.mask)
    union = moved_union([a], 32)
    want = np.zeros_like(m)
    want[12:20, 4:12] = 1
    assert np.array_equal(union, want)
    # At 8x8 cells the move is 2 cells down, 1 left: the same place, coarser.
    assert torch.equal(a.placed_mask(8, 32)[0, 0] > 0, torch.from_numpy(want[::4, ::4] > 0))
    assert not Region(m).moved and Region(np.zeros_like(m)).is_empty
    with pytest.raises(InputError):
        Region(m * 2)  # values outside [0, 1]
    # The paste area: the mask itself, or everything the edit can reach (far more).
    area = paste_mask(TINY, union, area="mask")
    reach = paste_mask(TINY, union, area="footprint", space="wplus")
    assert np.array_equal(area, union) and reach.sum() > area.sum() and (reach >= area).all()
    with pytest.raises(InputError, match="paste area"):
        paste_mask(TINY, union, area="everything")
