"""Metric math on constructed data (no pretrained weights needed)."""

import math

import numpy as np
import pytest
import torch

from stylemapgan import metrics
from stylemapgan.errors import InputError
from stylemapgan.metrics import reconstruction, runtime
from stylemapgan.nn.perceptual import LPIPS, InceptionFeatures


def _stats(mu, sigma, n=1000):
    return metrics.GaussianStats(torch.as_tensor(mu, dtype=torch.float64),
                                 torch.as_tensor(sigma, dtype=torch.float64), n)


# --------------------------------------------------------------------------- Frechet distance
def test_frechet_identical_sets_is_zero():
    torch.manual_seed(0)
    f = torch.randn(300, 20) @ torch.randn(20, 20)
    s = metrics.gaussian_stats(f)
    assert metrics.frechet_distance(s, s) == pytest.approx(0.0, abs=1e-8)


def test_frechet_diagonal_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    v1, v2 = np.array([1.0, 4.0, 0.25]), np.array([2.0, 1.0, 0.25])
    expected = ((mu1 - mu2) ** 2).sum() + (v1 + v2 - 2 * np.sqrt(v1 * v2)).sum()
    got = metrics.frechet_distance(_stats(mu1, np.diag(v1)), _stats(mu2, np.diag(v2)))
    assert got == pytest.approx(expected, rel=1e-12)


def test_frechet_general_case_matches_eigenvalue_formula():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    s1, s2 = a @ a.T + 0.1 * np.eye(6), b @ b.T
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    # tr((S1 S2)^(1/2)) = sum of square roots of the (real, non-negative) eigenvalues of S1 S2
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvals(s1 @ s2).real, 0, None)).sum()
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert metrics.frechet_distance(_stats(mu1, s1), _stats(mu2, s2)) == pytest.approx(expected, rel=1e-9)


def test_frechet_paths_agree():
    # factors (few samples), Cholesky (full rank) and the symmetric square root give one value
    torch.manual_seed(0)
    few_a, few_b = metrics.gaussian_stats(torch.randn(12, 30)), metrics.gaussian_stats(torch.randn(9, 30) + 0.3)
    many = metrics.gaussian_stats(torch.randn(200, 30) * 1.5)
    assert few_a.factor is not None and many.factor is None
    torch.testing.assert_close(few_a.factor @ few_a.factor.T, few_a.sigma)
    strip = lambda s: metrics.GaussianStats(s.mu, s.sigma, s.count)  # noqa: E731
    for a, b in ((few_a, few_b), (few_a, many), (many, few_b)):
        ref = metrics.frechet_distance(a, b)
        assert metrics.frechet_distance(strip(a), strip(b)) == pytest.approx(ref, rel=1e-6)
        assert metrics.frechet_distance(b, a) == pytest.approx(ref, rel=1e-7)
        assert metrics.frechet_distance(strip(b), a) == pytest.approx(ref, rel=1e-7)


def test_streaming_stats_match_numpy_and_errors():
    torch.manual_seed(0)
    f = 1000.0 + torch.randn(257, 5, dtype=torch.float64)  # large offset: precision kept
    acc = metrics.StatsAccumulator()
    for chunk in f.split(50):
        acc.update(chunk)
    s = acc.finalize()
    np.testing.assert_allclose(s.mu.numpy(), f.numpy().mean(0), rtol=1e-12)
    np.testing.assert_allclose(s.sigma.numpy(), np.cov(f.numpy(), rowvar=False), rtol=1e-9, atol=1e-12)
    assert s.count == 257
    one = metrics.StatsAccumulator()
    one.update(f[:1])
    with pytest.raises(InputError, match="at least 2"):
        one.finalize()
    with pytest.raises(InputError, match="at least 2"):
        metrics.frechet_distance(_stats([0.0], [[1.0]], n=1), _stats([0.0], [[1.0]]))
    assert metrics.small_sample_note(s) is None
    assert "rank-deficient" in metrics.small_sample_note(_stats(np.zeros(8), np.eye(8), n=5))


# --------------------------------------------------------------------------- FID stats cache
def test_dataset_stats_cache_keyed_by_content(tmp_path):
    ext = InceptionFeatures.random_init("tiny", seed=0)
    torch.manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 32, 32)) / 127.5 - 1  # as decoded from 8-bit files
    calls = []

    def batches(imgs):
        def make():
            calls.append(1)
            return list(imgs.split(4))
        return make

    s1, info1 = metrics.dataset_stats(batches(images), ext, cache_dir=tmp_path)
    assert info1["cache"] == "miss" and len(calls) == 2  # hash pass + feature pass
    s2, info2 = metrics.dataset_stats(batches(images), ext, cache_dir=tmp_path)
    assert info2["cache"] == "hit" and len(calls) == 3 and info2["key"] == info1["key"]
    torch.testing.assert_close(s1.sigma, s2.sigma, rtol=0, atol=0)
    changed = images.clone()
    changed[0, 0, 0, 0] = -0.5 if changed[0, 0, 0, 0] != -0.5 else 0.5  # one pixel differs: another key
    _, info3 = metrics.dataset_stats(batches(changed), ext, cache_dir=tmp_path)
    assert info3["cache"] == "miss" and info3["key"] != info1["key"]
    other = InceptionFeatures.random_init("tiny", seed=1)  # another network: another key
    _, info4 = metrics.dataset_stats(batches(images), other, cache_dir=tmp_path)
    assert info4["key"] != info1["key"]
    # same content, different batching and float noise below 8-bit precision: same key
    jitter = (images + 1e-4).clamp(-1, 1)
    assert metrics.content_hash(jitter.split(3))[0] == metrics.content_hash(images.split(4))[0]


# --------------------------------------------------------------------------- local editing errors
def test_masked_errors_on_constructed_images():
    src = torch.zeros(2, 3, 4, 4)
    ref = torch.ones(2, 3, 4, 4)
    mask = torch.zeros(2, 1, 4, 4)
    mask[:, :, :, :2] = 1  # left half from the reference
    edited = torch.zeros(2, 3, 4, 4)
    edited[:, :, :, :2] = 1.0        # perfect inside
    edited[1, :, :, 2:] = 0.5        # image 1: error 0.25 outside
    edited[1, :, :, :2] = 0.0        # image 1: error 1.0 inside
    mse_src, mse_ref = metrics.masked_errors(edited, src, ref, mask)
    torch.testing.assert_close(mse_src, torch.tensor([0.0, 0.25], dtype=torch.float64))
    torch.testing.assert_close(mse_ref, torch.tensor([0.0, 1.0], dtype=torch.float64))
    # normalized by area: a smaller region with the same per-pixel error gives the same value
    small = torch.zeros(1, 1, 4, 4)
    small[..., 0, 0] = 1
    _, r = metrics.masked_errors(torch.zeros(1, 3, 4, 4), src[:1], ref[:1], small)
    assert float(r) == pytest.approx(1.0)
    # empty mask: no MSE_ref
    s, r = metrics.masked_errors(edited[:1], src[:1], ref[:1], torch.zeros(1, 1, 4, 4))
    assert math.isnan(float(r)) and float(s) == pytest.approx(2 * 3 * 4 / (3 * 16))


def test_local_editing_identity_model_and_parts(tiny_model):
    torch.manual_seed(0)
    src = torch.rand(4, 3, 32, 32) * 2 - 1
    ref = torch.rand(4, 3, 32, 32) * 2 - 1
    mask = torch.zeros(4, 1, 32, 32)
    mask[:, :, :16] = 1
    batch = metrics.EditBatch(src, ref, mask, ["hair", "hair", "mouth", "mouth"])
    ext = InceptionFeatures.random_init("tiny", seed=0)
    out = metrics.local_editing(tiny_model, [batch], extractor=ext)
    edited = metrics.edit_images(tiny_model, src, ref, mask)
    s, r = metrics.masked_errors(edited, src, ref, mask)
    assert out["mse_src"] == pytest.approx(float(s.mean()))
    assert out["mse_ref"] == pytest.approx(float(r.mean()))
    assert set(out["per_part"]) == {"hair", "mouth"}
    assert out["per_part"]["hair"]["mse_src"] == pytest.approx(float(s[:2].mean()))
    assert out["_real_features"].shape == out["_edited_features"].shape == (4, ext.dim)
    out_w = metrics.local_editing(tiny_model, [batch], space="w")
    assert out_w["mse_src"] != pytest.approx(out["mse_src"])
    with pytest.raises(InputError, match="masks must be"):
        metrics.local_editing(tiny_model, [metrics.EditBatch(src, ref, mask[:, :, :8])])


# --------------------------------------------------------------------------- detectability
def test_average_precision_constructed():
    ap = metrics.average_precision
    assert ap(torch.tensor([0.9, 0.8, 0.2, 0.1]), torch.tensor([1, 1, 0, 0])) == pytest.approx(1.0)
    # scikit-learn's documented example
    assert ap(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])) == pytest.approx(0.8333333333)
    # ties form one threshold: all-equal scores give the positive fraction
    assert ap(torch.zeros(5), torch.tensor([1, 0, 0, 1, 0])) == pytest.approx(0.4)
    assert ap(torch.tensor([0.1, 0.9]), torch.tensor([1, 0])) == pytest.approx(0.5)
    with pytest.raises(InputError):
        ap(torch.zeros(3), torch.zeros(3))


def test_detectability_separable_and_inseparable():
    gen = torch.Generator().manual_seed(0)
    real = torch.randn(40, 8, generator=gen)
    fake = torch.randn(40, 8, generator=gen) + 3.0
    out = metrics.detectability(real, fake)
    assert out["ap"] > 99 and "proxy" in out["method"] and "CNNDetection" in out["method"]
    same = metrics.detectability(real, torch.randn(40, 8, generator=gen))
    assert 20 < same["ap"] < 80
    with pytest.raises(InputError, match="at least 4"):
        metrics.detectability(real[:3], fake)


# --------------------------------------------------------------------------- model-level metrics
def test_reconstruction_and_fids(tiny_model):
    torch.manual_seed(0)
    images = torch.rand(6, 3, 32, 32) * 2 - 1
    lp = LPIPS.random_init("tiny", seed=0)
    out = reconstruction.reconstruction(tiny_model, images.split(4), lp)
    with torch.no_grad():
        rec = tiny_model.reconstruct(images).clamp(-1, 1)
        assert out["mse"] == pytest.approx(float((rec - images).square().mean()), rel=1e-5)
        assert out["lpips"] == pytest.approx(float(lp(images, rec).mean()), rel=1e-5)
    assert out["count"] == 6

    ext = InceptionFeatures.random_init("tiny", seed=0)
    real = metrics.features_stats(images.split(4), ext)
    seen = []
    g1 = metrics.fid_generation(tiny_model, ext, real, 5, batch_size=2, progress=seen.append)
    g2 = metrics.fid_generation(tiny_model, ext, real, 5, batch_size=5)
    assert g1["fid"] == pytest.approx(g2["fid"], rel=1e-6)  # independent of batching
    assert sum(seen) == 5 and g1["num_samples"] == 5 and g1["note"]
    lerp = metrics.fid_lerp(tiny_model, images.split(4), ext, real, 7, batch_size=3)
    assert lerp["fid_lerp"] > 0 and lerp["num_samples"] == 7 and lerp["num_projected"] == 6


def test_lerp_pairs_are_distinct_and_lambda_uniform(tiny_model):
    w = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 8, 8, 8).contiguous()
    calls = []

    class Recorder(torch.nn.Module):
        def forward(self, w):
            calls.append(w)
            return torch.zeros(w.shape[0], 3, 32, 32)

    class M:
        generator = Recorder()

    list(metrics.lerp_batches(M(), w, 2000, batch_size=500, seed=0))
    vals = torch.cat(calls)[:, 0, 0, 0]
    assert len(vals) == 2000 and (vals >= 0).all() and (vals <= 2).all()
    # not concentrated at the endpoints (a == b would give integers only)
    assert ((vals - vals.round()).abs() > 0.01).float().mean() > 0.9


def test_runtime_reports_median_and_device(tiny_model):
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    mask = torch.zeros(1, 1, 32, 32)
    out = runtime.runtime(tiny_model, x, repeats=3, warmup=1, reference=x.flip(-1), mask=mask)
    assert out["seconds"] > 0 and out["edit_seconds"] > 0 and out["device"].startswith("cpu")


def test_gaussian_stats_files(tmp_path):
    from safetensors.torch import save_file

    a = metrics.gaussian_stats(torch.randn(12, 30, dtype=torch.float64))
    p = tmp_path / "s.safetensors"
    a.save(p)
    b = metrics.GaussianStats.load(p)
    assert b.count == 12 and torch.equal(b.mu, a.mu) and torch.equal(b.sigma, a.sigma)
    assert (a.factor is None) == (b.factor is None)
    # The untagged files of earlier versions are still read.
    old = tmp_path / "old.safetensors"
    save_file({"mu": a.mu, "sigma": a.sigma}, str(old), metadata={"count": "12"})
    c = metrics.GaussianStats.load(old)
    assert c.count == 12 and c.factor is None and torch.equal(c.sigma, a.sigma)
    # Other files are refused with one line naming the file.
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other), metadata={"format": "stylemapgan-model",
                                                           "format_version": "1"})
    with pytest.raises(InputError, match=r"other\.safetensors .*not a FID statistics file"):
        metrics.GaussianStats.load(other)
    (tmp_path / "cut.safetensors").write_bytes(p.read_bytes()[:100])
    with pytest.raises(InputError, match=r"cut\.safetensors: not a readable FID statistics "
                                         r"file.*delete it"):
        metrics.GaussianStats.load(tmp_path / "cut.safetensors")
    save_file({"mu": a.mu}, str(old), metadata={"count": "12"})
    with pytest.raises(InputError, match="damaged FID statistics file"):
        metrics.GaussianStats.load(old)


def test_colour_errors_measure_casts_and_per_image_drift():
    from stylemapgan.metrics import colour_errors

    g = torch.Generator().manual_seed(0)
    real = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1
    shift = torch.tensor([[0.1, -0.2, 0.0], [-0.1, 0.2, 0.3], [0.0, 0.0, 0.0], [0.2, 0.2, -0.3]])
    rec = real + shift[:, :, None, None]
    out = colour_errors(real, rec)
    # Image-wise opposite casts cancel in the signed mean, not in the drift.
    assert out["signed"] == pytest.approx(shift.double().mean(0).tolist(), abs=1e-6)
    assert out["drift"] == pytest.approx(shift.double().abs().mean().item(), abs=1e-6)
    assert out["mse"] == pytest.approx(shift.double().square().mean(1).mean().item(), abs=1e-6)
    with pytest.raises(Exception, match="shapes"):
        colour_errors(real, rec[:2])
