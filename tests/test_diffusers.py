"""diffusers adapters: tiny offline pipelines for DiT, PixArt, SD3, FLUX, HunyuanVideo and Wan.

Every pipeline is built from random tiny configs with its text encoders left out (the tests pass
prompt embeddings), so nothing is downloaded. Outputs are compared through the transformer's own
outputs at every step, recorded by a forward hook on the root.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import relcache
from relcache.adapters.diffusers_models import FUSED
from relcache.caching.methods import fixed_schedule
from relcache.caching.steps import FIRST

diffusers = pytest.importorskip("diffusers")

TEXT_LEN, TEXT_DIM, POOLED_DIM = 6, 16, 8


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny tensors: a second intra-op thread only adds spin-wait time (100x on a busy host)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----- tiny pipelines -------------------------------------------------------------------------
def _vae(**extra: Any) -> nn.Module:
    """A one-level AutoencoderKL (scale factor 1): latent size = image size."""
    return diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(8,),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
        **extra,
    )


def _embeds(*shape: int, seed: int = 1) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _text(batch: int, negative: bool = True, pooled: bool = True, mask: bool = False) -> dict:
    """Prompt (and negative prompt) embeddings, one row per sample."""
    kw = {"prompt_embeds": _embeds(batch, TEXT_LEN, TEXT_DIM)}
    if negative:
        kw["negative_prompt_embeds"] = _embeds(batch, TEXT_LEN, TEXT_DIM, seed=2)
    if pooled:
        kw["pooled_prompt_embeds"] = _embeds(batch, POOLED_DIM, seed=3)
        if negative:
            kw["negative_pooled_prompt_embeds"] = _embeds(batch, POOLED_DIM, seed=4)
    if mask:
        kw["prompt_attention_mask"] = torch.ones(batch, TEXT_LEN)
        if negative:
            kw["negative_prompt_attention_mask"] = torch.ones(batch, TEXT_LEN)
    return kw


def _dit() -> Any:
    transformer = diffusers.DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,
        num_layers=2,
        sample_size=8,
        norm_num_groups=8,
    )
    return diffusers.DiTPipeline(
        transformer=transformer, vae=_vae(), scheduler=diffusers.DDIMScheduler()
    )


def _dit_call(pipe: Any, steps: int, batch: int, size: int, sequential: bool) -> Any:
    return pipe(
        class_labels=list(range(batch)),
        guidance_scale=4.0,  # batched CFG
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    )


def _pixart() -> Any:
    transformer = diffusers.PixArtTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,
        num_layers=2,
        sample_size=8,
        cross_attention_dim=16,
        caption_channels=TEXT_DIM,
        norm_num_groups=8,
    )
    return diffusers.PixArtAlphaPipeline(
        tokenizer=None,
        text_encoder=None,
        vae=_vae(),
        transformer=transformer,
        scheduler=diffusers.DDIMScheduler(),
    )


def _pixart_call(pipe: Any, steps: int, batch: int, size: int, sequential: bool) -> Any:
    return pipe(
        negative_prompt=None,
        **_text(batch, pooled=False, mask=True),
        height=size,
        width=size,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
        use_resolution_binning=False,
    )


def _sd3() -> Any:
    transformer = diffusers.SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=TEXT_DIM,
        caption_projection_dim=16,
        pooled_projection_dim=POOLED_DIM,
        pos_embed_max_size=16,
        dual_attention_layers=(0,),  # SD3.5-style attn2 in block 0
    )
    return diffusers.StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(),
        vae=_vae(shift_factor=0.0),
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        text_encoder_3=None,
        tokenizer_3=None,
    )


def _sd3_call(pipe: Any, steps: int, batch: int, size: int, sequential: bool) -> Any:
    return pipe(
        **_text(batch),
        height=size,
        width=size,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
    )


def _flux() -> Any:
    transformer = diffusers.FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=TEXT_DIM,
        pooled_projection_dim=POOLED_DIM,
        axes_dims_rope=(2, 2, 4),
    )
    return diffusers.FluxPipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(),
        vae=_vae(shift_factor=0.0),
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        transformer=transformer,
    )


def _flux_call(pipe: Any, steps: int, batch: int, size: int, sequential: bool) -> Any:
    return pipe(
        **_text(batch, negative=sequential),
        true_cfg_scale=2.0 if sequential else 1.0,  # true CFG = two sequential calls
        height=size,
        width=size,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
    )


def _hunyuan() -> Any:
    transformer = diffusers.HunyuanVideoTransformer3DModel(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=8,
        num_layers=2,
        num_single_layers=2,
        num_refiner_layers=1,
        patch_size=1,
        patch_size_t=1,
        text_embed_dim=TEXT_DIM,
        pooled_projection_dim=POOLED_DIM,
        rope_axes_dim=(2, 2, 4),
    )
    return diffusers.HunyuanVideoPipeline(
        text_encoder=None,
        tokenizer=None,
        transformer=transformer,
        vae=None,
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(),
        text_encoder_2=None,
        tokenizer_2=None,
    )


def _hunyuan_call(pipe: Any, steps: int, batch: int, size: int, sequential: bool) -> Any:
    return pipe(
        **_text(batch, negative=sequential, mask=True),
        true_cfg_scale=2.0 if sequential else 1.0,
        height=size,
        width=size,
        num_frames=5,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
    )


def _wan() -> Any:
    transformer = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=4,
        text_dim=TEXT_DIM,
        freq_dim=16,
        ffn_dim=32,
        num_layers=2,
        rope_max_seq_len=32,
    )
    return diffusers.WanPipeline(
        tokenizer=None,
        text_encoder=None,
        vae=None,
        scheduler=diffusers.UniPCMultistepScheduler(),
        transformer=transformer,
    )


def _wan_call(pipe: Any, steps: int, batch: int, size: int, sequential: bool) -> Any:
    return pipe(
        **_text(batch, pooled=False),
        guidance_scale=5.0,  # WanPipeline always runs CFG as two sequential calls
        height=size,
        width=size,
        num_frames=5,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
    )


@dataclass(frozen=True)
class Case:
    """One model family: tiny pipeline, how to call it, expected module and feature counts."""

    build: Callable[[], Any]
    call: Callable[[Any, int, int, int, bool], Any]
    tiny: tuple[int, int]  # (modules, features) of the tiny transformer
    real: tuple[int, int]  # (modules, features) of the released config
    real_config: dict = field(default_factory=dict)
    joint: str | None = None  # modules returning (image, text): two features each
    sequential: bool = False  # whether the pipeline can run CFG as two calls per step
    branches: tuple[str, ...] = ("call0",)  # branches of a plain call
    size: int = 16


CASES = {
    # DiT: 2 blocks x (attn1, ff); DiT-XL/2: 28 x 2
    "dit": Case(_dit, _dit_call, (4, 4), (56, 56), size=8),
    # PixArt: 2 blocks x (attn1, attn2, ff); PixArt-alpha: 28 x 3
    "pixart": Case(_pixart, _pixart_call, (6, 6), (84, 84)),
    # SD3: attn x2 (img, txt), attn2 in block 0, ff x2, ff_context in block 0 (block 1 is
    # context_pre_only); SD3-medium: 24 attn (48) + 24 ff + 23 ff_context
    "sd3": Case(
        _sd3,
        _sd3_call,
        (6, 8),
        (71, 95),
        {"num_layers": 24},
        joint=r"transformer_blocks\.\d+\.attn",
    ),
    # FLUX: 2 double x (attn (img, txt), ff, ff_context) + 2 fused singles; FLUX.1: 19 x 4 + 38
    "flux": Case(
        _flux,
        _flux_call,
        (8, 10),
        (95, 114),
        joint=r"transformer_blocks\.\d+\.attn",
        sequential=True,
    ),
    # HunyuanVideo: as FLUX; released: 20 x 4 + 40
    "hunyuan": Case(
        _hunyuan,
        _hunyuan_call,
        (8, 10),
        (100, 120),
        joint=r"transformer_blocks\.\d+\.attn",
        sequential=True,
    ),
    # Wan: 2 blocks x (attn1, attn2, ffn); Wan2.1-14B: 40 x 3
    "wan": Case(_wan, _wan_call, (6, 6), (120, 120), branches=("call0", "call1")),
}
CLASSES = {
    "dit": "DiTTransformer2DModel",
    "pixart": "PixArtTransformer2DModel",
    "sd3": "SD3Transformer2DModel",
    "flux": "FluxTransformer2DModel",
    "hunyuan": "HunyuanVideoTransformer3DModel",
    "wan": "WanTransformer3DModel",
}
STEPS = 8
BLOCK_CHILD = re.compile(r"(?:transformer_blocks|single_transformer_blocks|blocks)\.\d+\.(\w+)\..*")
HEAVY = {"attn", "attn1", "attn2", "ff", "ff_context", "ffn", "proj_mlp", "proj_out"}


def _pipe(name: str) -> Any:
    torch.manual_seed(0)
    pipe = CASES[name].build()
    pipe.transformer.eval()  # DiT's label embedding drops labels in training mode
    pipe.set_progress_bar_config(disable=True)
    return pipe


@contextlib.contextmanager
def _recording(pipe: Any) -> Iterator[list[Tensor]]:
    """Collect the transformer's output at every call."""
    outs: list[Tensor] = []

    def hook(module: nn.Module, args: tuple, out: Any) -> None:
        outs.append((out[0] if isinstance(out, tuple) else out.sample).detach().clone())

    handle = pipe.transformer.register_forward_hook(hook)
    try:
        yield outs
    finally:
        handle.remove()


def _run(name: str, pipe: Any, batch: int = 1, size: int | None = None, seq: bool = False):
    """Every transformer output of one generation."""
    case = CASES[name]
    with _recording(pipe) as outs, torch.no_grad():
        case.call(pipe, STEPS, batch, size or case.size, seq)
    return outs


def _same(a: list[Tensor], b: list[Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def _clean(model: nn.Module) -> bool:
    """No relcache trace: no instance forwards, no fused modules, no swapped classes, no hooks."""
    return (
        all("forward" not in m.__dict__ for m in model.modules())
        and not any(n.endswith(FUSED) for n, _ in model.named_modules())
        and not any(type(m).__name__.startswith("Relcache") for m in model.modules())
        and not model._forward_pre_hooks
        and not model._forward_hooks
    )


# ----- per-model checks -----------------------------------------------------------------------
@pytest.mark.parametrize("name", CASES)
def test_never_caching_and_remove_are_bit_identical(name: str) -> None:
    pipe = _pipe(name)
    ref = _run(name, pipe)
    relcache.apply(pipe, relcache.FORA(interval=1))
    assert _same(_run(name, pipe), ref)
    assert relcache.stats(pipe).nfc == STEPS
    relcache.remove(pipe)
    assert _same(_run(name, pipe), ref)
    assert _clean(pipe.transformer)
    assert "_relcache_base" not in vars(type(pipe))


@pytest.mark.parametrize("name", CASES)
def test_taylorseer_nfc_is_the_official_schedule(name: str) -> None:
    pipe = _pipe(name)
    relcache.apply(pipe, relcache.TaylorSeer(interval=3, warmup=2, order=2))
    calls: Counter[str] = Counter()
    linears = {
        n: m.register_forward_hook(lambda *_, n=n: calls.update([n]))
        for n, m in pipe.transformer.named_modules()
        if isinstance(m, nn.Linear) and BLOCK_CHILD.match(n)
    }
    outs = _run(name, pipe)
    for handle in linears.values():
        handle.remove()
    schedule = fixed_schedule(STEPS, 3, 2)  # [0, 1, 4, 7]
    stats = relcache.stats(pipe)
    branches = CASES[name].branches
    assert len(outs) == STEPS * len(branches)
    assert sorted(stats.full_steps) == sorted(branches)
    assert all(stats.full_steps[b] == schedule for b in branches)
    assert stats.nfc == len(schedule)
    modules, features = CASES[name].tiny
    assert len(stats.module_calls) == modules
    n_full, n_cached = len(schedule) * len(branches), (STEPS - len(schedule)) * len(branches)
    assert all(c == {"full": n_full, "cached": n_cached} for c in stats.module_calls.values())
    engine = pipe.transformer._relcache_engine
    predictor = engine.now.branches[FIRST].predictor
    assert sum(len(st.factors) for st in predictor.modules.values()) == features
    assert all(torch.isfinite(o).all() for o in outs)
    # cached steps run only the blocks' modulation; attention / MLP / fused linears stay idle
    for n in linears:
        if BLOCK_CHILD.match(n).group(1) in HEAVY:
            assert calls[n] == n_full, n
        else:  # DiT also calls block 0's label embedding for its final layer
            assert calls[n] in (STEPS * len(branches), 2 * STEPS * len(branches)), n


@pytest.mark.parametrize("name", CASES)
def test_rcs_nfc_responds_to_threshold(name: str) -> None:
    pipe = _pipe(name)
    nfc = {}
    for tau in (1e-4, 0.3, 1e3):
        relcache.apply(pipe, relcache.RFC(order=2, threshold=tau))
        _run(name, pipe, batch=2)
        nfc[tau] = relcache.stats(pipe).nfc
        relcache.remove(pipe)
    assert nfc[1e-4] == STEPS  # every step crosses a tiny threshold
    assert nfc[1e-4] > nfc[0.3] > nfc[1e3] == 2  # a huge one leaves only the warmup


@pytest.mark.parametrize("name", CASES)
def test_consecutive_calls_have_no_stale_state(name: str) -> None:
    case, cfg = CASES[name], relcache.RFC(order=2, threshold=0.3)
    pipe = relcache.apply(_pipe(name), cfg)
    first = _run(name, pipe)
    assert relcache.stats(pipe).nfc < STEPS  # something was cached
    assert _same(_run(name, pipe), first)
    changes = [{"batch": 2}] if name == "dit" else [{"size": 2 * case.size}, {"batch": 2}]
    for change in changes:
        again = _run(name, pipe, **change)
        fresh = relcache.apply(_pipe(name), cfg)
        assert _same(again, _run(name, fresh, **change)), change


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.sequential])
def test_sequential_cfg_keeps_branches_apart(name: str) -> None:
    pipe = relcache.apply(_pipe(name), relcache.TaylorSeer(interval=3, warmup=2))
    outs = _run(name, pipe, seq=True)
    stats = relcache.stats(pipe)
    assert len(outs) == 2 * STEPS
    assert sorted(stats.full_steps) == ["call0", "call1"]
    assert all(s == fixed_schedule(STEPS, 3, 2) for s in stats.full_steps.values())
    assert stats.steps == {"call0": STEPS, "call1": STEPS}


@pytest.mark.parametrize("name", CASES)
def test_module_count_of_released_config(name: str) -> None:
    case = CASES[name]
    with torch.device("meta"):
        model = getattr(diffusers, CLASSES[name])(**case.real_config)
    relcache.apply(model, relcache.TaylorSeer())
    names = model._relcache_engine.names
    joint = sum(bool(case.joint and re.fullmatch(case.joint, n)) for n in names)
    assert (len(names), len(names) + joint) == case.real
    relcache.remove(model)
    assert _clean(model)


def test_hunyuan_token_replace_blocks_are_refused_untouched() -> None:
    with torch.device("meta"):
        model = diffusers.HunyuanVideoTransformer3DModel(
            num_layers=1, num_single_layers=1, image_condition_type="token_replace"
        )
    with pytest.raises(ValueError, match="TokenReplace"):
        relcache.apply(model, relcache.FORA())
    assert _clean(model) and not relcache.is_applied(model)


def test_unsupported_model_error_lists_the_diffusers_classes() -> None:
    with pytest.raises(ValueError, match="no adapter") as err:
        relcache.apply(nn.Linear(2, 2), relcache.FORA())
    assert all(c in str(err.value) for c in CLASSES.values())


# ----- direct transformer calls (DiT) ---------------------------------------------------------
def _dit_loop(model: nn.Module, steps: int = STEPS, batch: int = 2, calls: int = 1) -> list[Tensor]:
    """A DDIM-like loop calling the transformer ``calls`` times per step (sequential CFG)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 4, 8, 8, generator=gen)  # (B, C, H, W)
    labels = torch.arange(batch)
    outs = []
    with torch.no_grad():
        for t in torch.linspace(999, 0, steps).long():
            preds = [
                model(
                    x, timestep=t.expand(batch), class_labels=labels if c == 0 else labels + 5
                ).sample[:, :4]
                for c in range(calls)
            ]  # (B, 4, H, W) each
            outs.extend(preds)
            x = x - 0.05 * preds[0]
    return outs


def test_dit_transformer_sequential_cfg_and_back_to_back_trajectories() -> None:
    model = _pipe("dit").transformer
    relcache.apply(model, relcache.TaylorSeer(interval=3, warmup=2))
    first = _dit_loop(model, calls=2)
    stats = relcache.stats(model)
    assert stats.full_steps == {b: fixed_schedule(STEPS, 3, 2) for b in ("call0", "call1")}
    alone = relcache.apply(_pipe("dit").transformer, relcache.TaylorSeer(interval=3, warmup=2))
    assert _same(first[0::2], _dit_loop(alone))  # the uncond calls leave cond's state alone
    assert _same(_dit_loop(model, calls=2), first)  # timestep went up: a new trajectory
    assert _same(
        _dit_loop(model, batch=3),
        _dit_loop(
            relcache.apply(_pipe("dit").transformer, relcache.TaylorSeer(interval=3, warmup=2)),
            batch=3,
        ),
    )


# ----- independent check: diffusers' own TaylorSeer hook --------------------------------------
def _flux_loop(model: nn.Module, context: bool, steps: int = 10) -> list[Tensor]:
    gen = torch.Generator().manual_seed(0)
    b, n = 2, 16
    x = torch.randn(b, n, 16, generator=gen)  # (B, N, C) packed latents
    kw = {
        "encoder_hidden_states": torch.randn(b, TEXT_LEN, TEXT_DIM, generator=gen),
        "pooled_projections": torch.randn(b, POOLED_DIM, generator=gen),
        "img_ids": torch.stack(
            torch.meshgrid(torch.zeros(1), *[torch.arange(4.0)] * 2, indexing="ij"), -1
        ).reshape(n, 3),
        "txt_ids": torch.zeros(TEXT_LEN, 3),
        "return_dict": False,
    }
    outs = []
    ctx = model.cache_context("cond") if context else contextlib.nullcontext()
    with torch.no_grad(), ctx:
        for t in torch.linspace(1.0, 0.1, steps):
            out = model(x, timestep=t.expand(b), **kw)[0]  # (B, N, C)
            outs.append(out)
            x = x - 0.1 * out
    return outs


def test_taylorseer_matches_diffusers_hook_on_its_schedule() -> None:
    from diffusers.hooks import TaylorSeerCacheConfig, apply_taylorseer_cache

    modules = [
        r"transformer_blocks\.\d+\.(attn|ff|ff_context)",
        r"single_transformer_blocks\.\d+\.attn",
    ]
    warmup, interval, order, steps = 3, 3, 2, 10
    theirs = _pipe("flux").transformer
    apply_taylorseer_cache(
        theirs,
        TaylorSeerCacheConfig(
            cache_interval=interval,
            disable_cache_before_step=warmup,
            max_order=order,
            taylor_factors_dtype=torch.float32,
            cache_identifiers=modules,
        ),
    )
    expected = _flux_loop(theirs, context=True, steps=steps)
    # diffusers refreshes at B+1, B+1+N, ...; the official schedule at W-1+N, W-1+2N, ...
    diffusers_full = [i for i in range(steps) if i < warmup or (i - warmup - 1) % interval == 0]
    assert diffusers_full == [0, 1, 2, 4, 7]
    assert fixed_schedule(steps, interval, warmup) == [0, 1, 2, 5, 8]
    ours = relcache.apply(
        _pipe("flux").transformer,
        relcache.TaylorSeer(order=order, full_steps=tuple(diffusers_full)),
        patterns=modules,
    )
    got = _flux_loop(ours, context=False, steps=steps)
    assert relcache.stats(ours).full_steps == {"call0": diffusers_full}
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# ----- torch.compile --------------------------------------------------------------------------
def test_compiled_transformer_matches_eager() -> None:
    cfg = relcache.TaylorSeer(interval=3, warmup=2)
    eager = _dit_loop(relcache.apply(_pipe("dit").transformer, cfg))
    model = relcache.apply(_pipe("dit").transformer, cfg)
    torch._dynamo.reset()
    try:
        got = _dit_loop(torch.compile(model, backend="eager"))
    finally:
        torch._dynamo.reset()
    for a, b in zip(got, eager, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert relcache.stats(model).full_steps == {"call0": fixed_schedule(STEPS, 3, 2)}


@pytest.mark.parametrize("name", CASES)
def test_relcache_compile_runs_rcs_in_two_graphs(name: str) -> None:
    """Per-row RCS through a pipeline under relcache.compile: two graphs, no graph break, the
    eager schedules and outputs (partial steps run their full rows as a sub-batch, or wholly
    eagerly where the adapter forbids it: rounding only)."""
    from torch._dynamo.utils import counters

    pipe, cfg = _pipe(name), relcache.RFC(order=2, threshold=0.3)
    with relcache.cached(pipe, cfg):
        ref, ref_stats = _run(name, pipe, batch=2), relcache.stats(pipe)
    torch._dynamo.reset()
    counters.clear()
    try:
        with relcache.cached(pipe, cfg):
            relcache.compile(pipe, backend="eager")  # fullgraph: a graph break would raise
            out, stats = _run(name, pipe, batch=2), relcache.stats(pipe)
        graphs = counters["stats"]["unique_graphs"]
    finally:
        torch._dynamo.reset()
    assert graphs == 2 and stats.schedules == ref_stats.schedules
    for a, b in zip(out, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# ----- relcache generate ----------------------------------------------------------------------
def test_generate_command_on_a_saved_dit_pipeline(tmp_path: Path, monkeypatch) -> None:
    from relcache.commands import generate

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _pipe("dit").save_pretrained(tmp_path / "dit")
    parser = argparse.ArgumentParser()
    generate.register(parser.add_subparsers())
    args = parser.parse_args(
        [
            "generate",
            "--model",
            str(tmp_path / "dit"),
            "--class-label",
            "1",
            "3",
            "--method",
            "taylorseer",
            "--nfc",
            "4",
            "--steps",
            "8",
            "--out",
            str(tmp_path / "out"),
            "--device",
            "cpu",
        ]
    )
    assert args.func(args) == 0
    pngs = sorted((tmp_path / "out").glob("*.png"))
    assert len(pngs) == 2
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["nfc"] == 4 and stats["full_steps"] == {"call0": [0, 1, 4, 7]}
    assert stats["method"] == "TaylorSeer N=3 m=2" and stats["images"] == ["000.png", "001.png"]


def test_generate_command_runs_rfc_in_bfloat16(tmp_path: Path, monkeypatch) -> None:
    """`relcache generate --dtype bfloat16 --method rfc` (crashed in RCS's cdist before)."""
    from relcache.commands import generate

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _pipe("dit").save_pretrained(tmp_path / "dit")
    parser = argparse.ArgumentParser()
    generate.register(parser.add_subparsers())
    argv = ["generate", "--model", str(tmp_path / "dit"), "--class-label", "1", "3"]
    argv += ["--method", "rfc", "--threshold", "0.3", "--steps", "8", "--dtype", "bfloat16"]
    args = parser.parse_args([*argv, "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert args.func(args) == 0
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert 2 <= stats["nfc"] <= 8 and len(list((tmp_path / "out").glob("*.png"))) == 2
