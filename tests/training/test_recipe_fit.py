"""What the default model's recipe can learn: fine-tuning the shipped model on the eight gallery
avatars with the full objective, weighted as the default model was trained, must fit them
better and reduce their colour cast
(the default-model issue's probe, `benchmarks/recon_probe.py`, kept as a test).

Slow: about 200 training iterations of the 64 px model (minutes on two CPU cores).
"""

import pytest
import torch

from stylemapgan.data import open_dataset
from stylemapgan.formats.checkpoint import default_model_path
from stylemapgan.metrics import colour_errors
from stylemapgan.training import DistInfo, TrainConfig, Trainer
from stylemapgan.training.init import read_initial_weights


@torch.no_grad()
def _errors(g, e, x):
    return colour_errors(x, g(e(x)).float().clamp(-1, 1))


@pytest.mark.slow
def test_fine_tuning_the_shipped_model_fits_the_gallery_and_reduces_the_cast():
    from importlib import resources

    torch.set_num_threads(2)
    gallery = resources.files("stylemapgan") / "assets" / "gallery" / "test"
    data = open_dataset(str(gallery), 64)
    x = torch.stack([data[i] for i in range(len(data))])
    assert len(x) == 8
    init = read_initial_weights(default_model_path())
    # The default model's recipe (segment 4) without LPIPS (no weights needed): the pixel MSE
    # weighted 24 times, the segment's learning rate 0.0002, batch 8 (the whole gallery).
    cfg = TrainConfig(perceptual="none", batch_size=8, lr=0.0002, lambda_x_rec=24.0,
                      ema_rampup=0.0, workers=0, val_images=0, log_every=0, iterations=200,
                      amp="off")
    trainer = Trainer(init.config, cfg, data, None, dist_info=DistInfo(), init_weights=init)
    before = _errors(trainer.generator, trainer.encoder, x)
    for _ in range(cfg.iterations):
        trainer.train_step()
    after = _errors(trainer.generator, trainer.encoder, x)
    # Measured (AMD EPYC with AVX-512, float32, 2 threads) on the model shipped after segment 4:
    # gallery MSE 0.0474 -> 0.0300 (-37%), drift 0.0249 -> 0.0170 (-32%), mean signed errors
    # within 0.017. The paper's equal weights at lr 0.0005 (this test's recipe up to segment 3)
    # pull the same model away instead: MSE 0.0474 -> 0.0564, drift 0.025 -> 0.042, a cast of
    # -0.04 to -0.045 on every channel. The thresholds sit just above the measurement.
    print("before", before, "after", after)
    assert after["mse"] < 0.68 * before["mse"], (before, after)
    assert after["drift"] < 0.75 * before["drift"], (before, after)
    assert max(abs(v) for v in after["signed"]) < 0.02, after
