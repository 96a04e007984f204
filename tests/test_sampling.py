"""Tests of the DiT/ADM schedule, respacing, DDIM and the classifier-free guidance wrappers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from relcache.models import DiT, DiTConfig
from relcache.sampling import (
    cfg_model_fn,
    ddim_sample,
    ddim_schedule,
    generate,
    linear_beta_schedule,
    respace_betas,
    sequential_cfg_model_fn,
    space_timesteps,
)

TINY = DiTConfig(
    input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=4, num_classes=10
)


def _random_dit(seed: int = 0) -> DiT:
    """A tiny DiT with random (non-zero-init) weights."""
    model = DiT(TINY)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model.eval()


class LabelToy(nn.Module):
    """Output channel k of row n is ``(k + 1) * (y_n + 1)`` plus x; records every call's t."""

    num_classes = 10

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.calls: list[tuple[int, list[int]]] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls.append((len(x), t.tolist()))
        k = torch.arange(1, self.out_channels + 1, dtype=x.dtype).view(1, -1, 1, 1)
        base = k * (y.to(x.dtype) + 1).view(-1, 1, 1, 1)  # (N, C', 1, 1)
        return base + x[:, :1]  # (N, C', H, W)


def _adm_space_timesteps_by_hand() -> list[int]:
    """ADM's one-section rule for 1000 -> 50: accumulate (1000-1)/(50-1) and round."""
    stride, cur, out = 999 / 49, 0.0, []
    for _ in range(50):
        out.append(round(cur))
        cur += stride
    return out


def test_space_timesteps_matches_adm():
    steps = space_timesteps(1000, "50")
    assert steps == _adm_space_timesteps_by_hand()
    assert steps[:10] == [0, 20, 41, 61, 82, 102, 122, 143, 163, 183]
    assert steps[-3:] == [958, 979, 999] and len(steps) == 50
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert space_timesteps(1000, 50) == steps
    # Two sections of 500: 0..499 with 10 steps, 500..999 with 5 steps.
    two = space_timesteps(1000, "10,5")
    assert two[:3] == [0, 55, 111] and two[10:] == [500, 625, 750, 874, 999]
    assert space_timesteps(1000, "1000") == list(range(1000))


def test_space_timesteps_errors():
    with pytest.raises(ValueError, match="at most"):
        space_timesteps(10, "11")
    with pytest.raises(ValueError, match="integer"):
        space_timesteps(1000, "ddim37")


def test_linear_betas_and_respacing():
    betas = linear_beta_schedule(1000)
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    torch.testing.assert_close(respace_betas(betas, range(1000)), betas)
    sched = ddim_schedule(50)
    abar = torch.cumprod(1 - betas, 0)
    torch.testing.assert_close(sched.alphas_cumprod, abar[sched.timesteps])
    assert sched.alphas_cumprod_prev[0].item() == 1.0 and len(sched) == 50


def test_ddim_point_mass_oracle_is_exact():
    """Exact eps of data concentrated at m: every x0 estimate is m, and so is the result."""
    sched = ddim_schedule(50)
    abar_full = torch.cumprod(1 - linear_beta_schedule(1000), 0).float()
    m = torch.tensor([0.5, -0.25]).view(1, 2, 1, 1)

    def oracle(x, t):
        a = abar_full[t].view(-1, 1, 1, 1)
        return (x - a.sqrt() * m) / (1 - a).sqrt()

    noise = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    out = ddim_sample(oracle, noise, sched)
    torch.testing.assert_close(out, m.expand_as(out), atol=1e-4, rtol=0)


def _ddim_gain_by_hand(steps: int, s: float) -> float:
    """d x_0 / d x_T of DDIM for N(m, s^2) data: a product of per-step slopes (DDIM Eq. 12)."""
    sched, gain = ddim_schedule(steps), 1.0
    for a, a_prev in zip(
        sched.alphas_cumprod.tolist(), sched.alphas_cumprod_prev.tolist(), strict=True
    ):
        eps_slope = math.sqrt(1 - a) / (a * s**2 + 1 - a)
        x0_slope = (1 - math.sqrt(1 - a) * eps_slope) / math.sqrt(a)
        gain *= math.sqrt(a_prev) * x0_slope + math.sqrt(1 - a_prev) * eps_slope
    return gain


def test_ddim_gaussian_oracle_matches_data_distribution():
    """Exact eps of N(m, s^2) data: DDIM's deterministic linear map has the hand-computed gain."""
    sched = ddim_schedule(50)
    abar_full = torch.cumprod(1 - linear_beta_schedule(1000), 0)
    m, s = 0.3, 0.5

    def oracle(x, t):
        a = abar_full[t].view(-1, 1, 1, 1).to(x.dtype)
        return (1 - a).sqrt() * (x - a.sqrt() * m) / (a * s**2 + 1 - a)

    noise = torch.randn(20000, 1, 1, 1, generator=torch.Generator().manual_seed(0))
    out = ddim_sample(oracle, noise.double(), sched)
    assert out.mean().item() == pytest.approx(m, abs=0.02)
    assert out.std().item() == pytest.approx(_ddim_gain_by_hand(50, s), rel=0.02)
    assert _ddim_gain_by_hand(1000, s) == pytest.approx(s, rel=0.01)  # the ODE limit


def test_model_sees_original_timesteps_and_callback_steps():
    toy = LabelToy(out_channels=2)
    seen = []
    ddim_sample(
        lambda x, t: toy(x, t, torch.zeros(len(x), dtype=torch.long)),
        torch.zeros(2, 1, 2, 2),
        ddim_schedule(50),
        callback=lambda info: seen.append((info["i"], int(info["t"][0]))),
    )
    timesteps = [t[0] for _, t in toy.calls]
    assert timesteps == space_timesteps(1000, "50")[::-1]
    assert seen[0] == (0, 999) and seen[-1] == (49, 0) and len(seen) == 50


def test_cfg_guidance_channels():
    toy = LabelToy(out_channels=6)  # 3 eps channels + 3 sigma channels
    y = torch.tensor([2, 5])
    x = torch.zeros(4, 3, 1, 1)
    t = torch.full((4,), 7)
    scale = 4.0
    out = cfg_model_fn(toy, y, scale, guidance_channels=2)(x, t)
    k = torch.arange(1, 7, dtype=torch.float32).view(1, -1)
    cond = k * (y.view(-1, 1) + 1)  # (2, 6)
    uncond = (k * 11.0).expand(2, 6)  # null class 10 -> factor 11
    guided = uncond + scale * (cond - uncond)
    got = out[:, :, 0, 0]
    torch.testing.assert_close(got[:2, :2], guided[:, :2])
    torch.testing.assert_close(got[2:, :2], guided[:, :2])
    torch.testing.assert_close(got[:2, 2:], cond[:, 2:])  # unguided channels pass through per row
    torch.testing.assert_close(got[2:, 2:], uncond[:, 2:])
    all_eps = cfg_model_fn(toy, y, scale, guidance_channels=None)(x, t)[:, :, 0, 0]
    torch.testing.assert_close(all_eps[:2, :3], guided[:, :3])  # None = every eps channel
    torch.testing.assert_close(all_eps[:2, 3:], cond[:, 3:])  # sigma channels never guided
    with pytest.raises(ValueError, match="guidance_channels=None"):
        cfg_model_fn(toy, y, scale, guidance_channels=4)(x, t)


def test_sequential_cfg_equals_batched_cfg():
    model = _random_dit()
    y = torch.tensor([1, 7, 3])
    x = torch.randn(6, 4, 8, 8)
    t = torch.full((6,), 500)
    batched = cfg_model_fn(model, y, 1.5)(x, t)
    sequential = sequential_cfg_model_fn(model, y, 1.5)(x, t)
    torch.testing.assert_close(sequential, batched, atol=1e-5, rtol=1e-5)
    a = generate(model, [1, 7, 3], steps=5, seed=3, guidance_channels=3, progress=False)
    b = generate(
        model, [1, 7, 3], steps=5, seed=3, guidance_channels=3, sequential_cfg=True, progress=False
    )
    torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)  # float error grows over steps


def test_sequential_cfg_calls_model_twice_per_step():
    toy = LabelToy(out_channels=2)
    toy.config = DiTConfig(input_size=2, patch_size=1, in_channels=1, hidden_size=4, depth=1,
                           num_heads=1, num_classes=10)  # fmt: skip
    generate(toy, [0, 1], steps=4, seed=0, sequential_cfg=True, progress=False)
    assert [n for n, _ in toy.calls] == [2] * 8
    toy.calls.clear()
    generate(toy, [0, 1], steps=4, seed=0, progress=False)
    assert [n for n, _ in toy.calls] == [4] * 4
    toy.calls.clear()
    generate(toy, [0, 1], steps=4, seed=0, cfg_scale=1.0, progress=False)
    assert [n for n, _ in toy.calls] == [2] * 4


def test_generate_deterministic_and_shaped():
    model = _random_dit()
    model.train()
    a = generate(model, [0, 1], steps=4, seed=11, progress=False)
    b = generate(
        model, [0, 1], steps=4, generator=torch.Generator().manual_seed(11), progress=False
    )
    c = generate(model, [0, 1], steps=4, seed=12, progress=False)
    assert a.shape == (2, 4, 8, 8) and torch.isfinite(a).all()
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)
    assert model.training  # mode restored
    with pytest.raises(ValueError, match="class labels"):
        generate(model, [10], steps=2, progress=False)


def test_ddim_eta_uses_generator():
    model = _random_dit()
    kw = dict(steps=4, eta=1.0, cfg_scale=1.0, progress=False)
    a = generate(model, [3], seed=5, **kw)
    b = generate(model, [3], seed=5, **kw)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert math.isfinite(a.abs().max().item())
