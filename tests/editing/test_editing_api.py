"""The Python editing API: Editor (projection cache, one generator pass per edit),
refinement by optimization, semantic directions (and learning them from example files), the
demo, saved stylemap files."""

import pytest
import torch

from conftest import assert_close_to_scale, make_model, write_images
from stylemapgan.config import PRESETS
from stylemapgan.editing import operations as E
from stylemapgan.editing.demo import OUTPUTS, DemoRequest, run_demo
from stylemapgan.editing.directions import (
    Direction,
    DirectionRequest,
    accuracy,
    fit_direction,
    learn_direction,
    load_direction,
    objective,
    read_labels_csv,
    save_direction,
)
from stylemapgan.editing.editor import Editor, refine_stylemaps
from stylemapgan.errors import InputError
from stylemapgan.formats.stylemaps import load_stylemap, save_stylemap
from stylemapgan.imaging.placement import Placement

TINY = PRESETS["tiny-32"]


@pytest.fixture(scope="module")
def model():
    return make_model(TINY).requires_grad_(False)


@pytest.fixture
def editor(model):
    return Editor(model, batch_size=3)


def _images(n, seed=0):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# --------------------------------------------------------------------------- Editor
def test_project_runs_the_encoder_once_per_distinct_image(editor, model):
    x = _images(4)
    with torch.no_grad():
        expected = model.encoder(x)
    calls = []
    handle = model.encoder.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        w = editor.project(x)
        assert w.shape == (4, *TINY.stylemap_shape) and sum(calls) == 4
        assert_close_to_scale(w, expected, 1e-5, "one image at a time vs a batch")
        # Cached: the same pictures again (in another order, mixed with one new) cost one image.
        w2 = editor.project(torch.cat([x[[2, 0]], _images(1, seed=9)]))
        assert sum(calls) == 5 and editor.encoder_images == 5
        assert torch.equal(w2[0], w[2]) and torch.equal(w2[1], w[0])
        # Explicit keys (e.g. file checksums) work the same way.
        editor.project(x[:2], keys=["a", "b"])
        n = sum(calls)
        editor.project(x[:2], keys=["a", "b"])
        assert sum(calls) == n
        # Edits never touch the encoder.
        mask = torch.zeros(1, 1, 32, 32)
        mask[..., :16, :] = 1
        editor.local_edit(w[:1], w[1:2], mask)
        editor.local_edit(w[:1], w[1:2], mask, space="w", t=E.steps(3))
        editor.mix(w[:1], w[1:2], "coarse")
        editor.interpolate(w[:1], w[1:2], 5, space="wplus")
        editor.transplant(w[0], w[1:3], [E.Region(mask, 8, 0, 1)], alpha=E.steps(2))
        editor.apply_direction(w[:1], torch.randn(TINY.stylemap_shape), [0.0, 1.0], mask=mask)
        assert sum(calls) == n
    finally:
        handle.remove()


def test_cache_is_bounded(model):
    one = Editor(model)
    one.project(_images(1))
    entry = one.cache.nbytes  # bytes of one projection (w and its W+ pyramid)
    ed = Editor(model, cache_bytes=2 * entry + entry // 2)
    ed.project(_images(3))
    assert len(ed.cache) == 2 and ed.cache.nbytes <= 2.5 * entry
    ed.project(_images(3))
    assert ed.encoder_images == 4  # the first one was dropped, the last two were cached


def test_projection_does_not_depend_on_the_batch(model):
    """Each image is encoded alone: a stylemap is the same whether it was projected with
    others, alone, or came from the cache (batched convolutions differ in the last bits)."""
    x = _images(3, seed=5)
    together = Editor(model).project(x)
    alone = torch.cat([Editor(model).project(x[i: i + 1]) for i in range(3)])
    assert torch.equal(together, alone)
    ed = Editor(model)
    assert torch.equal(ed.pyramid(together)[0], torch.cat([ed.pyramid(w[None])[0] for w in together]))


def test_editor_edits_match_the_pure_functions(editor, model):
    g = model.generator
    w = editor.project(_images(2, seed=1))
    mask = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        ref_img = g.synthesize(E.local_edit_wplus(g.pyramid(w[:1]), g.pyramid(w[1:]), mask))
        ref_w = g(E.local_edit_w(w[:1], w[1:], mask, "max"))
    torch.testing.assert_close(editor.local_edit(w[0], w[1], mask), ref_img)
    torch.testing.assert_close(editor.local_edit(w[:1], w[1:], mask, space="w", mode="max"), ref_w)
    frames = editor.interpolate(w[:1], w[1:], 7)  # more frames than batch_size: chunked
    assert frames.shape == (7, 3, 32, 32)
    assert_close_to_scale(frames[[0, -1]], editor.render(w), 1e-5, "interpolation ends")
    with pytest.raises(InputError, match="must be"):
        editor.render(torch.randn(1, 4, 8, 8))
    with pytest.raises(InputError, match="space"):
        editor.local_edit(w[:1], w[1:], mask, space="z")


# --------------------------------------------------------------------------- refinement
def test_refine_lowers_the_mse_and_keeps_the_best(model):
    g = model.generator
    with torch.no_grad():
        target = g(g.mapping(torch.randn(2, 8, generator=torch.Generator().manual_seed(3))))
        w0 = model.encoder(target)
    before = [t.clone() for t in (target, w0)]
    res = refine_stylemaps(g, target, w0, steps=20, lr=0.1, mse_weight=1.0, lpips_weight=0.0)
    assert all(torch.equal(a, b) for a, b in zip(before, (target, w0), strict=True))
    assert len(res.history) == 20
    for i in range(2):
        assert res.final_mse[i] < 0.7 * res.initial_mse[i]
    with torch.no_grad():
        mse = (g(res.w) - target).square().flatten(1).mean(1)
    torch.testing.assert_close(mse, torch.tensor(res.final_mse), rtol=1e-4, atol=1e-6)
    # Images are optimized independently: refining one alone gives the same stylemap.
    alone = refine_stylemaps(g, target[1:], w0[1:], steps=20, lr=0.1)
    assert_close_to_scale(alone.w, res.w[1:], 1e-4, "refined alone vs in a batch")
    # The generator gets no gradients.
    assert all(p.grad is None for p in g.parameters())


def test_refine_with_lpips(model):
    from stylemapgan.nn.perceptual import LPIPS

    lp = LPIPS.random_init("tiny", seed=0)
    ed = Editor(model)
    x = _images(2, seed=4)
    res = ed.refine(x, steps=8, lr=0.1, lpips_weight=1.0, lpips=lp)
    for i in range(2):
        assert res.final_loss[i] < res.initial_loss[i]
    with torch.no_grad():
        out = model.generator(res.w)
        loss = (out - x).square().flatten(1).mean(1) + lp(out, x)
    torch.testing.assert_close(loss, torch.tensor(res.final_loss), rtol=1e-4, atol=1e-6)
    with pytest.raises(InputError, match="LPIPS"):
        ed.refine(x, steps=1, lpips_weight=1.0)
    with pytest.raises(InputError, match="both 0"):
        ed.refine(x, steps=1, mse_weight=0.0, lpips_weight=0.0)


# --------------------------------------------------------------------------- directions
@pytest.mark.parametrize("method", ["svm", "logistic"])
def test_fit_direction_recovers_a_planted_direction(method):
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(8, 4, 4, generator=gen)
    u = u / u.norm()
    x = torch.randn(300, 8, 4, 4, generator=gen)
    score = (x * u).flatten(1).sum(1)
    x = x + 1.5 * torch.sign(score)[:, None, None, None] * u + 0.7  # a margin along u, an offset
    pos, neg = x[score > 0], x[score <= 0]
    d = fit_direction(pos, neg, method=method, c=10.0)
    assert d.vector.shape == (8, 4, 4)
    assert d.vector.norm() == pytest.approx(1.0, abs=1e-5)
    assert float((d.vector * u).sum()) > 0.9
    assert d.info["train_accuracy"] == 1.0 and accuracy(d, pos, neg) == 1.0
    # The solution is the optimum of the plain objective: its gradient (autograd) vanishes.
    xs = torch.cat([pos, neg]).flatten(1).double()
    y = torch.cat([torch.ones(len(pos)), -torch.ones(len(neg))]).double()
    sw = torch.where(y > 0, len(xs) / (2.0 * len(pos)), len(xs) / (2.0 * len(neg))).double()
    scale = d.info["weight_norm"]
    v = (d.vector.double().flatten() * scale).requires_grad_()
    b = torch.tensor(d.bias * scale, dtype=torch.float64, requires_grad=True)
    gv, gb = torch.autograd.grad(objective(xs, y, sw, v, b, method, 10.0), [v, b])
    v0 = torch.zeros(v.shape, dtype=torch.float64, requires_grad=True)
    g_start = torch.autograd.grad(objective(xs, y, sw, v0, 0.0, method, 10.0), [v0])[0]
    assert gv.norm() < 1e-6 * g_start.norm() and abs(gb) < 1e-6 * g_start.norm()
    # Unbalanced classes (class weights) still find it.
    d2 = fit_direction(pos[:10], neg, method=method, c=10.0)
    assert float((d2.vector * u).sum()) > 0.7
    # score() is the signed distance: moving by s along the direction adds s.
    torch.testing.assert_close(d.score(pos[:3] + 2.0 * d.vector) - d.score(pos[:3]),
                               torch.full((3,), 2.0), atol=1e-4, rtol=0)


def test_direction_files_round_trip_and_refuse_others(tmp_path, tiny_model_file):
    d = Direction(torch.randn(8, 8, 8), 0.25, {"method": "svm", "name": "smile"})
    p = save_direction(d, tmp_path / "d.safetensors")
    back = load_direction(p)
    assert torch.equal(back.vector, d.vector) and back.bias == 0.25 and back.info["name"] == "smile"
    with pytest.raises(FileExistsError):
        save_direction(d, p)
    with pytest.raises(InputError, match="not a direction file"):
        load_direction(tiny_model_file)
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(InputError, match="junk.safetensors"):
        load_direction(tmp_path / "junk.safetensors")
    with pytest.raises(InputError, match="no such"):
        load_direction(tmp_path / "missing.safetensors")
    with pytest.raises(InputError, match="one positive and one negative"):
        fit_direction(torch.randn(3, 8, 8, 8), torch.randn(0, 8, 8, 8))


def test_read_labels_csv(tmp_path):
    (tmp_path / "imgs").mkdir()
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\n# a comment\nimgs/a.png, Yes\nimgs/b.png,0\n\nimgs/c.png,+1\n")
    pos, neg = read_labels_csv(csv)
    assert pos == [str(tmp_path / "imgs/a.png"), str(tmp_path / "imgs/c.png")]
    assert neg == [str(tmp_path / "imgs/b.png")]
    csv.write_text("imgs/a.png,1\nimgs/b.png,maybe\n")
    with pytest.raises(InputError, match=r"labels.csv:2: label 'maybe' is not"):
        read_labels_csv(csv)
    csv.write_text("imgs/a.png,1\nimgs/b.png\n")
    with pytest.raises(InputError, match=r"labels.csv:2: expected PATH,LABEL"):
        read_labels_csv(csv)
    with pytest.raises(InputError, match="no such CSV file"):
        read_labels_csv(tmp_path / "missing.csv")
    with pytest.raises(InputError, match="not a regular file"):
        read_labels_csv(tmp_path / "imgs")


def test_learn_direction_from_images_and_stylemaps(tmp_path, tiny_model_file):
    from stylemapgan.files import sha256_file

    pos = write_images(tmp_path / "pos", n=3, size=32)
    neg = write_images(tmp_path / "neg", n=2, size=36)
    w = torch.randn(1, *TINY.stylemap_shape)
    saved = save_stylemap(tmp_path / "n.stylemap.safetensors", w, config=TINY,
                          model_sha256=sha256_file(tiny_model_file))
    bars = []

    class Bar:
        def __init__(self, total, desc):
            bars.append([desc, total, 0, False])

        def update(self, n):
            bars[-1][2] += n

        def close(self):
            bars[-1][3] = True

    req = DirectionRequest(model=str(tiny_model_file), out=str(tmp_path / "d.safetensors"),
                           positive=[str(pos)], negative=[str(neg), str(saved)],
                           val_fraction=0.4, name="smile", batch_size=2, device="cpu")
    report = learn_direction(req, bar=Bar)
    assert (report.positives, report.negatives) == (3, 3)
    assert bars == [["project positive", 3, 3, True], ["project negative", 3, 3, True]]
    assert report.val_examples == 2 and 0 <= report.val_accuracy <= 1
    back = load_direction(report.out)
    assert torch.equal(back.vector, report.direction.vector)
    assert back.info["name"] == "smile" and back.info["val_accuracy"] == report.val_accuracy
    assert back.info["model_sha256"] == sha256_file(tiny_model_file)
    # The same request again: refused (nothing overwritten); with overwrite, the same bytes.
    before = report.out.read_bytes()
    with pytest.raises(FileExistsError, match="already exist"):
        learn_direction(req)
    learn_direction(DirectionRequest(**{**req.__dict__, "overwrite": True}))
    assert report.out.read_bytes() == before
    with pytest.raises(InputError, match="labeled both positive and negative"):
        learn_direction(DirectionRequest(**{**req.__dict__, "negative": [str(pos / "000.png")]}))
    with pytest.raises(InputError, match="examples of both kinds"):
        learn_direction(DirectionRequest(**{**req.__dict__, "negative": []}))


# --------------------------------------------------------------------------- demo
def test_run_demo_refuses_a_model_of_another_size(tmp_path, tiny_model_file):
    with pytest.raises(InputError, match="32 px images, the gallery is 64 px"):
        run_demo(DemoRequest(model=str(tiny_model_file), out=str(tmp_path / "demo"), device="cpu"))
    assert not (tmp_path / "demo").exists() or not any((tmp_path / "demo").iterdir())
    assert OUTPUTS[0] == "reconstruction.png" and len(OUTPUTS) == 5


# --------------------------------------------------------------------------- stylemap files
def test_stylemap_files_round_trip(tmp_path, tiny_model_file):
    w = torch.randn(1, *TINY.stylemap_shape)
    pl = Placement((60, 40), (0, 0, 60, 40), (10, 0, 50, 40), 32, "crop")
    p = save_stylemap(tmp_path / "a.stylemap.safetensors", w, config=TINY, model_sha256="ab" * 32,
                      source="/x/a.jpg", source_sha256="cd" * 32, placement=pl,
                      projection={"method": "encoder", "mse": 0.1})
    s = load_stylemap(p, TINY, "ab" * 32)
    assert torch.equal(s.w, w) and s.config == TINY and s.placement == pl
    assert s.source == "/x/a.jpg" and s.projection["mse"] == 0.1
    with pytest.raises(InputError, match="does not fit this model"):
        load_stylemap(p, PRESETS["tiny-32-light"])
    with pytest.raises(InputError, match="model file"):
        load_stylemap(tiny_model_file)
    with pytest.raises(InputError, match="one stylemap per file"):
        save_stylemap(tmp_path / "b.safetensors", torch.randn(2, 8, 8, 8))
