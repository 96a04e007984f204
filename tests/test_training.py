"""Tests of the DiT training loop, its losses, checkpoints and the training script."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest
import torch

from relcache.models import DiT, DiTConfig, load_dit_weights
from relcache.shipped.training import (
    DiffusionTerms,
    TrainConfig,
    diffusion_loss,
    images_to_model_range,
    q_sample,
    train,
)

TINY = DiTConfig(
    input_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=2, num_heads=4, num_classes=3
)
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_generator.py"


def _dataset(n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes of structured 8x8 images in [-1, 1]: stripes, blocks, checkers."""
    labels = torch.arange(n) % 3
    grid = torch.arange(8)
    patterns = torch.stack(
        [
            (grid.view(1, 8) % 2).expand(8, 8),
            (grid.view(8, 1) < 4).expand(8, 8),
            (grid.view(8, 1) + grid.view(1, 8)) % 2,
        ]
    ).float()  # (3, 8, 8)
    images = patterns[labels].unsqueeze(1) * 2 - 1  # (n, 1, 8, 8)
    return images, labels


def _eval_loss(model: DiT, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Loss on a fixed set of timesteps and noise."""
    gen = torch.Generator().manual_seed(123)
    terms = DiffusionTerms()
    t = torch.randint(0, 1000, (len(images),), generator=gen)
    noise = torch.randn(images.shape, generator=gen)
    x_t = q_sample(images, t, noise, terms)
    model.eval()
    with torch.no_grad():
        return diffusion_loss(model(x_t, t, labels), images, x_t, t, noise, terms)["mse"].mean()


def test_train_config_validation():
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(ema_decay=1.0)
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)


def test_images_to_model_range():
    raw = torch.tensor([[[0, 255], [127, 128]]], dtype=torch.uint8)
    out = images_to_model_range(raw)
    assert out.shape == (1, 1, 2, 2) and out.min() == -1.0 and out.max() == 1.0
    with pytest.raises(ValueError, match="uint8"):
        images_to_model_range(raw.float())


def test_vb_term_trains_only_sigma_channels():
    terms = DiffusionTerms()
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    t = torch.tensor([0, 1, 500, 999])
    noise = torch.randn_like(x0)
    x_t = q_sample(x0, t, noise, terms)
    out = torch.randn(4, 2, 8, 8, requires_grad=True)
    losses = diffusion_loss(out, x0, x_t, t, noise, terms)
    torch.testing.assert_close(losses["mse"], ((noise - out[:, :1]) ** 2).mean((1, 2, 3)))
    assert torch.isfinite(losses["vb"]).all() and (losses["vb"] > -1e-6).all()
    losses["vb"].sum().backward()
    assert torch.count_nonzero(out.grad[:, :1]) == 0 and torch.count_nonzero(out.grad[:, 1:]) > 0


def test_loss_decreases_on_tiny_dataset():
    images, labels = _dataset()
    model = _seeded_dit()
    before = _eval_loss(model, images, labels)
    cfg = TrainConfig(steps=80, batch_size=24, lr=3e-3, warmup_steps=5, seed=0)
    result = train(model, images, labels, cfg, device="cpu", progress=False)
    after = _eval_loss(result.model, images, labels)
    assert after < 0.7 * before
    assert result.stats["step"] == 80 and result.stats["hardware"].startswith("CPU")


def _seeded_dit(seed: int = 0) -> DiT:
    """A freshly initialised tiny DiT; model init draws from the global RNG."""
    torch.manual_seed(seed)
    return DiT(TINY)


def test_resume_continues_identically(tmp_path):
    images, labels = _dataset()
    cfg = TrainConfig(steps=6, batch_size=8, warmup_steps=2, ema_decay=0.9, seed=7)
    straight = train(_seeded_dit(), images, labels, cfg, device="cpu", progress=False)
    ckpt = tmp_path / "ckpt.pt"
    half = TrainConfig(**{**cfg.__dict__, "steps": 3})
    train(_seeded_dit(), images, labels, half, device="cpu", checkpoint_path=ckpt, progress=False)
    resumed = train(_seeded_dit(1), images, labels, cfg, device="cpu", resume=ckpt, progress=False)
    for a, b in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(straight.ema.parameters(), resumed.ema.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert resumed.stats["step"] == 6 and resumed.stats["this_run_steps"] == 3
    assert load_dit_weights(ckpt).config == TINY  # the checkpoint's "ema" loads as DiT weights


def test_training_does_not_touch_global_rng():
    images, labels = _dataset()
    model = DiT(TINY)
    torch.manual_seed(99)
    expected = torch.rand(3)
    torch.manual_seed(99)
    cfg = TrainConfig(steps=2, batch_size=4, seed=1)
    train(model, images, labels, cfg, device="cpu", progress=False)
    torch.testing.assert_close(torch.rand(3), expected)


def test_time_limit_stops_and_saves(tmp_path):
    images, labels = _dataset()
    cfg = TrainConfig(steps=1000, batch_size=4, max_minutes=1e-9)
    result = train(
        DiT(TINY), images, labels, cfg, device="cpu", checkpoint_path=tmp_path / "c.pt",
        progress=False,
    )  # fmt: skip
    assert result.stats["stopped_by_time"] and result.stats["step"] < 1000
    assert (tmp_path / "c.pt").is_file()


def test_bad_image_shape_raises():
    with pytest.raises(ValueError, match="images_to_model_range"):
        train(DiT(TINY), torch.zeros(4, 8, 8), torch.zeros(4, dtype=torch.long), TrainConfig())


def test_train_generator_script(tmp_path, monkeypatch):
    fake = types.ModuleType("relcache.data.fashion_mnist")
    gen = torch.Generator().manual_seed(0)

    def load_fashion_mnist(split, root=None):
        assert split == "train"
        images = torch.randint(0, 256, (16, 28, 28), generator=gen, dtype=torch.uint8)
        return images, torch.arange(16) % 10

    fake.load_fashion_mnist = load_fashion_mnist
    monkeypatch.setitem(sys.modules, "relcache.data.fashion_mnist", fake)
    spec = importlib.util.spec_from_file_location("train_generator", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "run"
    args = ["--steps", "2", "--batch-size", "4", "--out", str(out), "--device", "cpu"]
    assert script.main([*args, "--no-progress"]) == 0
    stats = json.loads((out / "train_stats.json").read_text())
    assert stats["step"] == 2 and stats["preset"] == "DiT-FM" and "hardware" in stats
    model = load_dit_weights(out / "ema.safetensors")
    assert model.config.num_classes == 10 and model.config.input_size == 28
