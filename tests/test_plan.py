"""The memory plan (issue 20, item 3): ``relcache.plan`` / ``relcache plan`` count weights, cache
and activations on the meta device, and the cache they count is the one a real run reports."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import relcache
from relcache.cli import main
from relcache.evaluation.memory_plan import FusedAttention, LiveBytes, MemoryPlan, plan, table
from relcache.evaluation.presets import (
    PRESETS,
    Preset,
    build_model,
    geometry,
    model_inputs,
)
from relcache.sampling import generate
from relcache.shipped import load_generator

GRANULARITIES = {"module", "block", "stack"}


# ----- counting on the meta device -------------------------------------------------------------
def test_live_bytes_counts_allocations_until_they_are_freed() -> None:
    with LiveBytes() as tracker:
        a = torch.empty(1000, device="meta")  # 4000 B
        view = a.view(10, 100)  # a view: nothing new
        b = a * 2  # 4000 B
        torch.mul(a, 2, out=b)  # out=: nothing new
        del b
        c = torch.empty(10, device="meta")  # 40 B
    assert (tracker.peak, tracker.live) == (8000, 4040)
    del a, view, c
    assert tracker.live == 0


def test_attention_is_counted_as_a_fused_kernel() -> None:
    """No L x L score matrix: the output and a float32 log-sum-exp per query."""
    q = torch.empty(1, 2, 4096, 64, device="meta", dtype=torch.bfloat16)
    with LiveBytes() as tracker, FusedAttention():
        out = F.scaled_dot_product_attention(q, q, q)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert tracker.peak == q.numel() * 2  # the output; the log-sum-exp is freed before
    with LiveBytes() as unfused:
        F.scaled_dot_product_attention(q, q, q)
    assert unfused.peak > 2 * 4096 * 4096 * 2  # meta's own math path: the scores


# ----- the cache a plan counts is the one a real run reports ----------------------------------
@pytest.fixture(scope="module")
def shipped() -> torch.nn.Module:
    return load_generator()


def _generate(model: torch.nn.Module, config: relcache.CacheMethod) -> relcache.CacheStats:
    """A real run: 4 images, 50 steps, CFG 3 (the demo's sampler)."""
    with relcache.cached(model, config):
        generate(model, torch.arange(4), steps=50, cfg_scale=3.0, seed=0, progress=False)
        return relcache.stats(model)


@pytest.mark.parametrize(
    ("spec", "dtype"),
    [("rfc2:threshold=0.05", None), ("taylorseer2", None), ("rfe2:interval=4", "bfloat16")],
)
def test_shipped_model_cache_equals_a_real_run(shipped, spec: str, dtype: str | None) -> None:
    result = plan("dit-fm", method=spec, batch=4, factors_dtype=dtype)
    assert {r.granularity for r in result.rows} == GRANULARITIES
    assert {r.factors_dtype for r in result.rows} == {dtype or "float32"}
    for r in result.rows:
        config = relcache.build_method(spec, granularity=r.granularity, factors_dtype=dtype)
        st = _generate(shipped, config)
        assert st.nfc < 50  # cached steps ran
        assert st.peak_cache_bytes == r.cache_bytes, (r.granularity, r.factors_dtype)


def _tiny(name: str, **config: object) -> Preset:
    """A preset's family at toy size: 32x32 pixels (4x4 latents), 5 frames, 3 text tokens (not
    the image tokens' count: a block's two streams must differ in shape)."""
    p = PRESETS[name]
    frames = None if p.frames is None else 5
    return dataclasses.replace(
        p.with_config(**config), height=32, width=32, frames=frames, text_tokens=3
    )


TINY = {
    "wan2.1-14b": _tiny(
        "wan2.1-14b",
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=4,
        text_dim=8,
        freq_dim=8,
        ffn_dim=16,
        num_layers=2,
        rope_max_seq_len=32,
    ),
    "flux-dev": _tiny(
        "flux-dev",
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=8,
        pooled_projection_dim=8,
        in_channels=16,
        axes_dims_rope=(2, 2, 4),
    ),
    "sd3-medium": _tiny(
        "sd3-medium",
        sample_size=4,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=8,
        caption_projection_dim=16,
        pooled_projection_dim=8,
        pos_embed_max_size=8,
    ),
    "hunyuanvideo": _tiny(
        "hunyuanvideo",
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=8,
        num_layers=1,
        num_single_layers=2,
        num_refiner_layers=1,
        mlp_ratio=2.0,
        text_embed_dim=8,
        pooled_projection_dim=8,
        rope_axes_dim=(2, 2, 4),
    ),
    "pixart-sigma": _tiny(
        "pixart-sigma",
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,
        num_layers=2,
        cross_attention_dim=16,
        sample_size=4,
        caption_channels=8,
        norm_num_groups=2,
    ),
    "dit-xl-2": _tiny(
        "dit-xl-2",
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,
        num_layers=2,
        sample_size=4,
        norm_num_groups=2,
        num_embeds_ada_norm=10,
    ),
}
# one method per family, so that every method and every family is checked once (the rfc / rcs /
# budget schedules decide from the data in the real run)
TINY_METHODS = {
    "wan2.1-14b": "rfc2:threshold=0.5",
    "flux-dev": "taylorseer2:interval=2",
    "sd3-medium": "rfe2:interval=2",
    "hunyuanvideo": "rfc:threshold=0.5",  # the family's order 1 (relcache.method_for)
    "pixart-sigma": "budget2:nfc=4:steps=6",
    "dit-xl-2": "rcs2:threshold=0.5",
}


def _random(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Random floats, ones for integers and masks."""
    if dtype.is_floating_point:
        return torch.randn(shape).to(dtype)
    return torch.ones(shape, dtype=dtype)


def _real_run(preset: Preset, model: torch.nn.Module, config, batch: int) -> int:
    """Six steps on random inputs, called as the preset's pipeline calls; the peak cache."""
    geo = geometry(preset, preset.height, preset.width, preset.frames)
    rows = batch * (preset.cfg if preset.batched_cfg else 1)
    calls = 1 if preset.batched_cfg else preset.cfg
    torch.manual_seed(0)
    with torch.no_grad(), relcache.cached(model, config):
        for step in range(6):
            with relcache.at_step(model, step):
                for _ in range(calls):
                    model(**model_inputs(preset, geo, rows, _random))
        return relcache.stats(model).peak_cache_bytes


@pytest.mark.parametrize("name", list(TINY))
def test_tiny_configs_cache_equals_a_real_run(name: str) -> None:
    pytest.importorskip("diffusers")
    preset, spec = TINY[name], TINY_METHODS[name]
    result = plan(preset, method=spec, batch=2)
    assert {r.granularity for r in result.rows} == GRANULARITIES
    assert {r.factors_dtype for r in result.rows} == {"float32", "bfloat16"}
    model = build_model(preset, device="cpu")
    for r in result.rows:
        config = relcache.method_for(
            model, spec, granularity=r.granularity, factors_dtype=r.factors_dtype
        )
        measured = _real_run(preset, model, config, batch=2)
        assert measured == r.cache_bytes, (r.granularity, r.factors_dtype)


# ----- the presets at their real sizes ---------------------------------------------------------
PUBLIC_PARAMETERS = {  # the model cards' counts, billions
    "pixart-sigma": 0.61,
    "sd3-medium": 2.03,
    "flux-dev": 11.9,
    "hunyuanvideo": 12.8,
    "wan2.1-14b": 14.3,
}


@pytest.mark.parametrize("name", list(PUBLIC_PARAMETERS))
def test_preset_configs_have_the_published_sizes(name: str) -> None:
    pytest.importorskip("diffusers")
    model = build_model(PRESETS[name])
    billions = sum(p.numel() for p in model.parameters()) / 1e9
    assert billions == pytest.approx(PUBLIC_PARAMETERS[name], rel=0.01)


@pytest.fixture(scope="module")
def wan() -> MemoryPlan:
    pytest.importorskip("diffusers")
    return plan("wan2.1-14b", method="rfc2", gpu_memory=80)


def test_wan_720p_81_frames_has_an_rfc_configuration_that_fits_80gb(wan: MemoryPlan) -> None:
    first = wan.rows[0]
    assert (first.width, first.height, first.frames, first.tokens) == (1280, 720, 81, 75_600)
    assert (first.cfg_branches, first.cfg_batched) == (2, False)  # WanPipeline: two calls
    assert {(r.granularity, r.factors_dtype) for r in wan.rows} == {
        (g, d) for g in GRANULARITIES for d in ("float32", "bfloat16")
    }
    assert wan.fitting() and all(r.method_label.startswith("RFC") for r in wan.fitting())
    assert not any(r.fits for r in wan.rows if r.granularity == "module")  # the issue's ~280 GB
    by = {(r.granularity, r.factors_dtype): r for r in wan.rows}
    for dtype in ("float32", "bfloat16"):
        assert by["stack", dtype].cache_bytes <= by["module", dtype].cache_bytes / 8
    for r in wan.rows:
        assert r.total_bytes == r.weights_bytes + r.cache_bytes + r.activations_bytes
        assert r.fits == (r.total_bytes <= 80 * 2**30)


# ----- the command line ------------------------------------------------------------------------
def test_cli_json_rows(capsys) -> None:
    assert (
        main(["plan", "--model", "dit-fm", "--granularity", "stack", "--batch", "2", "--json"]) == 0
    )
    out = json.loads(capsys.readouterr().out)
    (row,) = out["rows"]
    assert row["model"] == "dit-fm" and row["granularity"] == "stack" and row["batch"] == 2
    for key in ("height", "width", "frames", "cfg_branches", "method", "factors_dtype"):
        assert key in row
    for key in ("weights_bytes", "cache_bytes", "activations_bytes", "total_bytes"):
        assert isinstance(row[key], int) and row[key] > 0
    assert row["fits"] is True and row["compute_dtype"] == "float32"


def test_cli_table_says_what_would_fit_when_nothing_does(capsys) -> None:
    every = plan("dit-fm", method="taylorseer2", batch=64)
    by = {r.granularity: r for r in every.rows}
    between = (by["stack"].total_bytes + by["module"].total_bytes) / 2 / 2**30
    argv = ["plan", "--model", "dit-fm", "--method", "taylorseer2", "--batch", "64"]
    assert main([*argv, "--granularity", "module", "--gpu-memory", str(between)]) == 0
    text = capsys.readouterr().out
    assert "GiB" in text or "MiB" in text
    assert "nothing fits" in text and "granularity=stack" in text
    assert main([*argv, "--gpu-memory", str(between)]) == 0
    assert "2 of 3 configurations fit" in capsys.readouterr().out


def test_cli_refuses_sizes_the_model_cannot_take(capsys) -> None:
    assert main(["plan", "--model", "wan2.1-14b", "--frames", "80"]) == 2
    assert "81" in capsys.readouterr().err  # the nearest frame counts that work
    assert main(["plan", "--model", "flux-dev", "--height", "1000"]) == 2
    assert "multiple of 16" in capsys.readouterr().err
    assert main(["plan", "--model", "sd3-medium", "--frames", "9"]) == 2
    assert "image model" in capsys.readouterr().err
    assert main(["plan", "--model", "sdxl"]) == 2
    assert "wan2.1-14b" in capsys.readouterr().err


def test_table_reads_in_gib() -> None:
    text = table(plan("dit-fm", method="fora", granularity="block"))
    assert text.splitlines()[0].startswith("dit-fm at 28x28 (49 tokens), batch 1")
    assert "verdict: 1 of 1 configurations fit" in text


def test_plan_is_a_lazy_export() -> None:
    code = (
        "import sys, relcache\n"
        "assert 'relcache.evaluation.memory_plan' not in sys.modules\n"
        "from relcache.evaluation.memory_plan import plan\n"
        "assert relcache.plan is plan\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
