"""What the default model's recipe can learn: fine-tuning the shipped model on the eight gallery
avatars with the full objective must fit them better and reduce their colour cast
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
    # The default objective without LPIPS (no weights needed), batch 8 (the whole gallery), the
    # learning rate of a fine-tuning segment (a quarter of the default 0.002: the default's
    # step noise moves the global colour of the raw networks by up to +-0.15 between steps).
    cfg = TrainConfig(perceptual="none", batch_size=8, lr=0.0005, ema_rampup=0.0, workers=0,
                      val_images=0, log_every=0, iterations=200, amp="off")
    trainer = Trainer(init.config, cfg, data, None, dist_info=DistInfo(), init_weights=init)
    before = _errors(trainer.generator, trainer.encoder, x)
    for _ in range(cfg.iterations):
        trainer.train_step()
    after = _errors(trainer.generator, trainer.encoder, x)
    # Measured (AMD EPYC with AVX-512, float32, 2 threads): the first release's model went from
    # gallery MSE 0.113 to 0.071 and drift 0.047 to 0.032 under this recipe; the model shipped
    # after segment 3, already closer, from 0.0662 to 0.0601 (-9%) and drift 0.0298 to 0.0276,
    # mean signed errors within 0.024. The thresholds sit just above that.
    print("before", before, "after", after)
    assert after["mse"] < 0.93 * before["mse"], (before, after)
    assert after["drift"] < before["drift"], (before, after)
    assert max(abs(v) for v in after["signed"]) < 0.03, after
