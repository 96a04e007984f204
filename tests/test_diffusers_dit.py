"""The reference DiT converted to diffusers' DiTTransformer2DModel computes the same thing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import Tensor

import relcache
from relcache.models import DIT_PRESETS, DiT, create_dit, dit_config
from relcache.models.checkpoint import CheckpointKeyError
from relcache.models.diffusers_dit import (
    DiffusersDiT,
    convert_state_dict,
    diffusers_config,
    dit_config_from_diffusers,
    to_diffusers,
)
from relcache.models.dit import get_2d_sincos_pos_embed, timestep_embedding
from relcache.sampling import generate
from relcache.shipped.loading import load_generator, random_dit

diffusers = pytest.importorskip("diffusers")

TINY = dict(depth=2, hidden_size=64, num_heads=4)
CASES = {  # name: (preset, overrides); every patch size, both output widths, the null-row cases
    "S2-sigma": ("DiT-S/2", dict(TINY, input_size=16)),
    "B4-eps-only": ("DiT-B/4", dict(TINY, input_size=16, learn_sigma=False)),
    "L8-3ch": ("DiT-L/8", dict(TINY, input_size=16, in_channels=3)),
    "FM-geometry": ("DiT-FM", TINY),  # 28x28x1, patch 4: 7x7 tokens
    "FM-no-null-row": ("DiT-FM", dict(TINY, class_dropout_prob=0.0)),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny tensors: a second intra-op thread only adds spin-wait time on a busy host."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _inputs(model: DiT, batch: int = 4, seed: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    """Noisy images (B, C, H, W), timesteps across [0, 999] and labels incl. the null class."""
    cfg = model.config
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_channels, cfg.input_size, cfg.input_size, generator=gen)
    t = torch.tensor([0, 333, 667, 999])[:batch]  # (B,)
    top = cfg.num_classes + int(cfg.class_dropout_prob > 0)  # the null row, when there is one
    y = torch.arange(batch) * (top - 1) // max(1, batch - 1)  # (B,): 0 ... last row
    return x, t, y


def _rel_err(a: Tensor, b: Tensor) -> float:
    """max |a - b| relative to max(1, max |a|)."""
    return float((a - b).abs().max()) / max(1.0, float(a.abs().max()))


@pytest.mark.parametrize("case", list(CASES))
def test_converted_model_gives_the_same_eps(case: str) -> None:
    preset, overrides = CASES[case]
    model = random_dit(preset, **overrides)
    converted = to_diffusers(model)
    x, t, y = _inputs(model)
    with torch.no_grad():
        ref = model(x, t, y)  # (B, C_out, H, W)
        out = converted(x, timestep=t, class_labels=y).sample  # (B, C_out, H, W)
        wrapped = DiffusersDiT(converted, model.config)(x, t, y)
    assert out.shape == ref.shape == (4, model.config.out_channels, *x.shape[-2:])
    assert _rel_err(ref, out) < 1e-5  # measured: 0.0 (bit for bit) on torch 2.13 CPU
    assert torch.equal(wrapped, out)


def test_float64_model_converts_in_its_dtype() -> None:
    model = random_dit("DiT-FM", **TINY).double()
    converted = to_diffusers(model)
    assert {p.dtype for p in converted.parameters()} == {torch.float64}
    x, t, y = _inputs(model)
    with torch.no_grad():
        assert _rel_err(model(x.double(), t, y), converted(x.double(), t, y).sample) < 1e-12


def test_timestep_features_are_the_reference_ones() -> None:
    """diffusers' DiT uses frequency shift 1; the conversion sets 0, which is DiT's embedding."""
    converted = to_diffusers(random_dit("DiT-FM", **TINY))
    t = torch.tensor([0, 1, 17, 500, 999])
    proj = converted.transformer_blocks[1].norm1.emb.time_proj
    assert torch.equal(proj(t), timestep_embedding(t, 256))
    stock = to_diffusers(random_dit("DiT-FM", **TINY), reference_timesteps=False)
    stock_proj = stock.transformer_blocks[0].norm1.emb.time_proj
    assert (stock_proj(t) - timestep_embedding(t, 256)).abs().max() > 0.1


@pytest.mark.parametrize("grid", [7, 8, 16])
def test_pos_embed_equals_diffusers_own_sincos(grid: int) -> None:
    """The copied pos_embed is what diffusers recomputes after save/load (non-persistent)."""
    ours = get_2d_sincos_pos_embed(64, grid)  # (G*G, 64)
    theirs = diffusers.models.embeddings.get_2d_sincos_pos_embed(64, grid, base_size=grid)
    assert (ours - theirs.float()).abs().max() < 1e-6


def test_generate_gives_the_same_samples() -> None:
    """The project's DDIM + CFG on the reference and on the wrapped conversion."""
    model = random_dit("DiT-FM", **TINY)
    wrapped = DiffusersDiT.from_dit(model)
    labels = [0, 5, 9]
    for kw in (dict(cfg_scale=4.0), dict(cfg_scale=4.0, sequential_cfg=True), dict(cfg_scale=1.0)):
        ref = generate(model, labels, steps=6, seed=3, progress=False, **kw)
        out = generate(wrapped, labels, steps=6, seed=3, progress=False, **kw)
        assert _rel_err(ref, out) < 1e-5, kw  # measured: 0.0


def test_shipped_dit_fm_converts_exactly() -> None:
    model = load_generator()
    wrapped = DiffusersDiT.from_dit(model)
    x, t, y = _inputs(model)
    with torch.no_grad():
        assert _rel_err(model(x, t, y), wrapped(x, t, y)) < 1e-5  # measured: 0.0
    labels = [1, 7]
    ref = generate(model, labels, steps=4, cfg_scale=3.0, seed=0, progress=False)
    out = generate(wrapped, labels, steps=4, cfg_scale=3.0, seed=0, progress=False)
    assert _rel_err(ref, out) < 1e-5


@pytest.mark.parametrize(
    "method",
    [relcache.TaylorSeer(interval=3), relcache.RFC(order=2, rcs=False, interval=3)],
    ids=["taylorseer", "rfe"],
)
def test_caching_the_conversion_matches_caching_the_reference(method: Any) -> None:
    """relcache on the reference (blocks.N.attn / .mlp) and, through the registered diffusers
    adapter, on the conversion (transformer_blocks.N.attn1 / .ff): the same modules with the same
    inputs (modulated norms) and pre-gate outputs, so the same cached samples. The reference is
    told each step by the sampler (``at_step``); the converted transformer sits inside the
    wrapper, so its engine takes the step from the timestep instead: same schedule either way.
    The shipped DiT-FM: a trained model, whose samples stay in range."""
    model = load_generator()
    wrapped = DiffusersDiT.from_dit(model)
    labels = [2, 4]
    full = generate(model, labels, steps=8, cfg_scale=4.0, seed=5, progress=False)
    with relcache.cached(model, method):
        ref = generate(model, labels, steps=8, cfg_scale=4.0, seed=5, progress=False)
        ref_stats = relcache.stats(model)
    with relcache.cached(wrapped.transformer, method):
        out = generate(wrapped, labels, steps=8, cfg_scale=4.0, seed=5, progress=False)
        out_stats = relcache.stats(wrapped.transformer)
    assert ref_stats.full_steps == out_stats.full_steps == {"call0": [0, 1, 4, 7]}
    assert ref_stats.nfc == out_stats.nfc == 4
    assert len(out_stats.module_calls) == len(ref_stats.module_calls) == 2 * model.config.depth
    assert _rel_err(full, ref) > 1e-3  # caching changed the samples ...
    assert _rel_err(ref, out) < 1e-5  # ... identically in both models (measured: 0.0)


@pytest.mark.parametrize("preset", list(DIT_PRESETS))
def test_every_preset_converts_on_meta(preset: str) -> None:
    """Shapes of every registered size (DiT-XL/2 included), without allocating weights."""
    with torch.device("meta"):
        model = create_dit(preset)
    converted = to_diffusers(model)  # load_state_dict(strict=True) checks every shape
    cfg = model.config
    assert dit_config_from_diffusers(converted.config) == cfg
    assert len(converted.transformer_blocks) == cfg.depth
    assert converted.proj_out_2.out_features == cfg.patch_size**2 * cfg.out_channels
    table = converted.transformer_blocks[-1].norm1.emb.class_embedder.embedding_table
    assert table.num_embeddings == cfg.num_classes + 1  # the null class
    assert converted.pos_embed.pos_embed.shape == (1, cfg.num_patches, cfg.hidden_size)


def test_dit_xl2_matches_the_hub_transformer_config() -> None:
    """DiT-XL/2 maps to the architecture of facebook/DiT-XL-2-256's transformer."""
    expected = dict(
        num_attention_heads=16,
        attention_head_dim=72,
        in_channels=4,
        out_channels=8,
        num_layers=28,
        sample_size=32,
        patch_size=2,
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_zero",
        activation_fn="gelu-approximate",
    )
    got = diffusers_config(dit_config("DiT-XL/2"))
    assert {k: got[k] for k in expected} == expected
    assert got["norm_eps"] == 1e-6


def test_refuses_what_diffusers_cannot_express() -> None:
    model = random_dit("DiT-FM", **TINY)
    with pytest.raises(ValueError, match="mlp_ratio"):
        to_diffusers(random_dit("DiT-FM", **TINY, mlp_ratio=2.0))
    state = model.state_dict()
    del state["blocks.1.attn.qkv.weight"]
    with pytest.raises(CheckpointKeyError, match="blocks.1.attn.qkv.weight"):
        convert_state_dict(state, model.config)
