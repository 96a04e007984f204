"""End to end through the real diffusers pipelines, called as a user calls them.

Each pipeline (DiT, PixArt-Sigma, SD3, FLUX, HunyuanVideo, Wan) is assembled offline from tiny
random components: the transformer, a tiny VAE (AutoencoderKL, AutoencoderKLHunyuanVideo,
AutoencoderKLWan) and tiny text encoders with offline tokenizers (``tests/tiny_text.py``), then
cast to bfloat16 and called as ``pipe(prompt, num_inference_steps=N, generator=..., ...)``:
prompt encoding, classifier-free guidance (batched or sequential), the scheduler and VAE
decoding all run. relcache is applied to ``pipe.transformer``; the reference is the same call
without it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch

import relcache
from relcache.caching.methods import fixed_schedule

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")
from tests import tiny_text  # noqa: E402 (needs transformers)

TEXT_DIM, POOLED_DIM = 16, 8  # the tiny transformers' text / pooled widths (test_diffusers.py)
STEPS = 8
PROMPT = "a photo of a cat"
INTERVAL, WARMUP = 3, 2
FIXED = fixed_schedule(STEPS, INTERVAL, WARMUP)  # [0, 1, 4, 7]
BUDGET = 5


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny tensors: a second intra-op thread only adds spin-wait time on a busy host."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----- tiny VAEs ------------------------------------------------------------------------------
def _vae(**extra: Any) -> Any:
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


def _hunyuan_vae() -> Any:
    """HunyuanVideo's causal 3D VAE: 8x spatial, 4x temporal compression, 4 latent channels."""
    return diffusers.AutoencoderKLHunyuanVideo(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        norm_num_groups=4,
        spatial_compression_ratio=8,
        temporal_compression_ratio=4,
        mid_block_add_attention=True,
    )


def _wan_vae() -> Any:
    """Wan's causal 3D VAE: 8x spatial, 4x temporal compression, 4 latent channels."""
    return diffusers.AutoencoderKLWan(
        base_dim=3,
        z_dim=4,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.0] * 4,
        latents_std=[1.0] * 4,
    )


# ----- tiny pipelines -------------------------------------------------------------------------
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
        transformer=transformer,
        vae=_vae(),
        scheduler=diffusers.DDIMScheduler(),
        id2label={3: "tiger shark, Galeocerdo cuvieri", 281: "tabby, tabby cat"},  # ImageNet's
    )


def _pixart() -> Any:
    tokenizer = tiny_text.t5_tokenizer()
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
    return diffusers.PixArtSigmaPipeline(
        tokenizer=tokenizer,
        text_encoder=tiny_text.t5_encoder(tokenizer, TEXT_DIM),
        vae=_vae(),
        transformer=transformer,
        scheduler=diffusers.DPMSolverMultistepScheduler(),
    )


def _sd3() -> Any:
    clip, t5 = tiny_text.clip_tokenizer(), tiny_text.t5_tokenizer()
    transformer = diffusers.SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=TEXT_DIM,  # T5's width; the two CLIPs' hidden states (2 x 8) padded
        caption_projection_dim=16,
        pooled_projection_dim=POOLED_DIM,  # the two CLIPs' projections, 2 x 4
        pos_embed_max_size=16,
        dual_attention_layers=(0,),  # SD3.5-style attn2 in block 0
    )
    return diffusers.StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),  # the released config
        vae=_vae(shift_factor=0.0),
        text_encoder=tiny_text.clip_text_encoder(clip, TEXT_DIM // 2, POOLED_DIM // 2, seed=1),
        tokenizer=clip,
        text_encoder_2=tiny_text.clip_text_encoder(clip, TEXT_DIM // 2, POOLED_DIM // 2, seed=2),
        tokenizer_2=clip,
        text_encoder_3=tiny_text.t5_encoder(t5, TEXT_DIM, seed=3),
        tokenizer_3=t5,
    )


def _flux() -> Any:
    clip, t5 = tiny_text.clip_tokenizer(), tiny_text.t5_tokenizer()
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
        guidance_embeds=True,  # FLUX.1-dev: guidance_scale is an input of the transformer
    )
    return diffusers.FluxPipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(  # the released config
            shift=3.0,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=4096,
        ),
        vae=_vae(shift_factor=0.0),
        text_encoder=tiny_text.clip_text_encoder(clip, POOLED_DIM, seed=1),
        tokenizer=clip,
        text_encoder_2=tiny_text.t5_encoder(t5, TEXT_DIM, seed=2),
        tokenizer_2=t5,
        transformer=transformer,
    )


def _hunyuan() -> Any:
    llama, clip = tiny_text.llama3_tokenizer(), tiny_text.clip_tokenizer()
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
        text_encoder=tiny_text.llama_encoder(llama, TEXT_DIM, seed=1),
        tokenizer=llama,
        transformer=transformer,
        vae=_hunyuan_vae(),
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=7.0),  # the released config
        text_encoder_2=tiny_text.clip_text_encoder(clip, POOLED_DIM, seed=2),
        tokenizer_2=clip,
    )


def _wan() -> Any:
    tokenizer = tiny_text.t5_tokenizer()
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
        tokenizer=tokenizer,
        text_encoder=tiny_text.umt5_encoder(tokenizer, TEXT_DIM),
        vae=_wan_vae(),
        scheduler=diffusers.UniPCMultistepScheduler(  # the released config (480p)
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
        ),
        transformer=transformer,
    )


@dataclass(frozen=True)
class Case:
    """A user's call of a pipeline: its builder, the call's own arguments, the transformer's
    calls per denoising step (sequential CFG: one branch per call)."""

    pipeline: Callable[[], Any]
    kwargs: dict = field(default_factory=dict)
    branches: tuple[str, ...] = ("call0",)
    output: str = "images"  # the output's field: images or frames


SEQUENTIAL = ("call0", "call1")
VIDEO = {"height": 32, "width": 32, "num_frames": 5}  # latents (1, 4, 2, 4, 4)
CASES = {
    # class-conditional: the "prompt" is an ImageNet label; batched CFG (2 rows per call)
    "dit": Case(_dit, {"guidance_scale": 4.0}),
    # batched CFG
    "pixart": Case(
        _pixart, {"height": 16, "width": 16, "guidance_scale": 4.5, "use_resolution_binning": False}
    ),
    "sd3": Case(_sd3, {"height": 16, "width": 16, "guidance_scale": 5.0}),
    # guidance-distilled (embedded guidance), optionally true CFG as a second sequential call
    "flux": Case(_flux, {"height": 16, "width": 16, "guidance_scale": 3.5}),
    "flux-true-cfg": Case(
        _flux,
        {"height": 16, "width": 16, "negative_prompt": "blurry", "true_cfg_scale": 2.0},
        SEQUENTIAL,
    ),
    "hunyuan": Case(_hunyuan, VIDEO, output="frames"),
    "hunyuan-true-cfg": Case(
        _hunyuan,
        {**VIDEO, "negative_prompt": "blurry", "true_cfg_scale": 2.0},
        SEQUENTIAL,
        output="frames",
    ),
    # WanPipeline always runs CFG as two sequential calls
    "wan": Case(_wan, {**VIDEO, "guidance_scale": 5.0}, SEQUENTIAL, output="frames"),
}

MAIN = ("dit", "pixart", "sd3", "flux", "hunyuan", "wan")  # one plain call per pipeline


def _cases(fast: tuple[str, ...] = MAIN) -> list:
    """Every case, those outside ``fast`` marked slow."""
    return [n if n in fast else pytest.param(n, marks=pytest.mark.slow) for n in CASES]


@functools.cache
def _pipe(pipeline: Callable[[], Any], dtype: torch.dtype) -> Any:
    torch.manual_seed(0)
    pipe = pipeline()
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()  # as from_pretrained leaves them (DiT drops labels in training mode)
    pipe.to(dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _generate(name: str, dtype: torch.dtype, steps: int = STEPS) -> np.ndarray:
    """One generation, called as a user calls the pipeline."""
    case = CASES[name]
    pipe = _pipe(case.pipeline, dtype)
    if name == "dit":
        prompt = {"class_labels": pipe.get_label_ids(["tabby cat"])}
    else:
        prompt = {"prompt": PROMPT}
    out = pipe(
        **prompt,
        **case.kwargs,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    )
    return np.asarray(getattr(out, case.output))


@functools.cache
def _reference(name: str, dtype: torch.dtype) -> np.ndarray:
    return _generate(name, dtype)


def _cached(name: str, dtype: torch.dtype, cfg: relcache.CacheMethod, steps: int = STEPS):
    """The output and stats of one generation with ``cfg`` on ``pipe.transformer``."""
    transformer = _pipe(CASES[name].pipeline, dtype).transformer
    with relcache.cached(transformer, cfg):
        out = _generate(name, dtype, steps)
        stats = relcache.stats(transformer)
    assert not relcache.is_applied(transformer)
    return out, stats


# ----- methods --------------------------------------------------------------------------------
FIXED_METHODS = {
    "fora": relcache.FORA(interval=INTERVAL, warmup=WARMUP),
    "taylorseer": relcache.TaylorSeer(interval=INTERVAL, warmup=WARMUP, order=2),
    "rfe": relcache.build_method("rfe2", interval=INTERVAL, warmup=WARMUP),
}
ADAPTIVE_METHODS = {  # RCS decides the full steps (a threshold) or meets a budget exactly
    "rfc": relcache.build_method("rfc2", threshold=0.3),
    "rcs": relcache.build_method("rcs2", threshold=0.3),
    "budget": relcache.build_method("budget2", nfc=BUDGET, steps=STEPS),
}
NEVER_CACHING = {
    "fora-interval-1": relcache.FORA(interval=1),
    "taylorseer-all-full": relcache.TaylorSeer(full_steps=tuple(range(STEPS))),
    "rfc-tiny-threshold": relcache.RFC(order=2, threshold=1e-9),  # RCS: every step crosses it
}
BF16, FP16 = torch.bfloat16, torch.float16
SLOW = pytest.mark.slow


def _finite_like(out: np.ndarray, ref: np.ndarray) -> None:
    assert out.shape == ref.shape
    assert np.isfinite(out).all()


def _fixed_checks(name: str, out: np.ndarray, ref: np.ndarray, stats: relcache.CacheStats):
    branches = CASES[name].branches
    _finite_like(out, ref)
    assert stats.steps == {b: STEPS for b in branches}
    assert stats.nfc == len(FIXED)
    assert stats.full_steps == {b: FIXED for b in branches}
    full, cached = len(FIXED) * len(branches), (STEPS - len(FIXED)) * len(branches)
    assert all(c == {"full": full, "cached": cached} for c in stats.module_calls.values())
    assert not np.array_equal(out, ref)  # the cached steps did change the result


# ----- tests ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", _cases())
def test_reference_generation_runs_in_bf16(name: str) -> None:
    pipe = _pipe(CASES[name].pipeline, BF16)
    assert all(
        p.dtype == BF16
        for c in pipe.components.values()
        if isinstance(c, torch.nn.Module)
        for p in c.parameters()
    )
    ref = _reference(name, BF16)
    assert ref.size > 0 and np.isfinite(ref).all()


@pytest.mark.parametrize("method", FIXED_METHODS)
@pytest.mark.parametrize("name", _cases())
def test_fixed_schedule_has_its_nfc(name: str, method: str) -> None:
    out, stats = _cached(name, BF16, FIXED_METHODS[method])
    _fixed_checks(name, out, _reference(name, BF16), stats)


@pytest.mark.parametrize("method", ADAPTIVE_METHODS)
@pytest.mark.parametrize("name", _cases())
def test_adaptive_schedule_runs(name: str, method: str) -> None:
    out, stats = _cached(name, BF16, ADAPTIVE_METHODS[method])
    _finite_like(out, _reference(name, BF16))
    assert stats.steps == {b: STEPS for b in CASES[name].branches}
    assert stats.nonfinite_errors == 0
    if method == "budget":
        assert stats.nfc == BUDGET
    else:
        assert WARMUP <= stats.nfc <= STEPS


@pytest.mark.parametrize(
    "method",
    ["fora-interval-1", "rfc-tiny-threshold", pytest.param("taylorseer-all-full", marks=SLOW)],
)
@pytest.mark.parametrize("name", _cases())
def test_never_caching_equals_no_caching(name: str, method: str) -> None:
    out, stats = _cached(name, BF16, NEVER_CACHING[method])
    assert stats.steps == {b: STEPS for b in CASES[name].branches}
    assert stats.nfc == STEPS
    np.testing.assert_array_equal(out, _reference(name, BF16))


@pytest.mark.parametrize("name", _cases(fast=("wan",)))
def test_apply_to_the_pipeline_and_back_to_back_generations(name: str) -> None:
    """relcache.apply(pipe): the same output as on pipe.transformer, generation after
    generation; remove() gives the uncached output back."""
    cfg = FIXED_METHODS["taylorseer"]
    on_transformer, _ = _cached(name, BF16, cfg)
    pipe = _pipe(CASES[name].pipeline, BF16)
    with relcache.cached(pipe, cfg):
        first = _generate(name, BF16)
        nfc = relcache.stats(pipe).nfc
        second = _generate(name, BF16)
        assert relcache.stats(pipe).nfc == nfc
    np.testing.assert_array_equal(first, on_transformer)
    np.testing.assert_array_equal(second, first)
    np.testing.assert_array_equal(_generate(name, BF16), _reference(name, BF16))


@pytest.mark.parametrize("name", ["dit", "pixart", "sd3"])
def test_rcs_pairs_the_rows_of_a_pipelines_batched_cfg(name: str) -> None:
    """The default scope="sample" recognises the pipeline's CFG-doubled batch (equal halves of
    latents): a sample's cond and uncond rows take one schedule."""
    transformer = _pipe(CASES[name].pipeline, BF16).transformer
    with relcache.cached(transformer, relcache.RFC(order=2, threshold=0.3)):
        _generate(name, BF16)
        (branch,) = relcache.api._engine(transformer).now.branches.values()
        rows = relcache.stats(transformer).schedules["call0"]
    assert branch.history.paired and len(rows) == 2 and rows[0] == rows[1]


@pytest.mark.parametrize("method", ["taylorseer", "budget", "rfc", "fora-interval-1"])
@pytest.mark.parametrize("name", _cases(fast=("sd3",)))
def test_float16(name: str, method: str) -> None:
    cfg = {**FIXED_METHODS, **ADAPTIVE_METHODS, **NEVER_CACHING}[method]
    ref = _reference(name, FP16)
    out, stats = _cached(name, FP16, cfg)
    _finite_like(out, ref)
    assert stats.nonfinite_errors == 0
    assert stats.steps == {b: STEPS for b in CASES[name].branches}
    if method == "taylorseer":
        _fixed_checks(name, out, ref, stats)
    elif method == "budget":
        assert stats.nfc == BUDGET
    elif method == "rfc":
        assert WARMUP <= stats.nfc <= STEPS
    else:
        assert stats.nfc == STEPS
        np.testing.assert_array_equal(out, ref)


# HunyuanVideoPipeline casts the timestep to the latents' dtype; with its released scheduler
# (shift 7) at its default 50 steps, steps 1 and 2 both read 996.0 in bfloat16. Before the
# latents comparison (caching/steps.py) the engine took step 2 for a CFG branch of step 1.
def test_hunyuan_released_scheduler_at_50_steps() -> None:
    """HunyuanVideo's bfloat16 timesteps of steps 1 and 2 are equal (996.0) at 50 steps, shift
    7: the second is the next step (other latents), not a CFG branch."""
    steps, cfg = 50, relcache.TaylorSeer(interval=4, warmup=2)
    out, stats = _cached("hunyuan", BF16, cfg, steps=steps)
    assert np.isfinite(out).all()
    assert stats.full_steps == {"call0": fixed_schedule(steps, 4, 2)}
    assert stats.nfc == len(fixed_schedule(steps, 4, 2))


# ----- the offline tokenizers -----------------------------------------------------------------
def test_tiny_tokenizers_do_what_the_pipelines_call() -> None:
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

    clip, t5, llama = (
        tiny_text.clip_tokenizer(),
        tiny_text.t5_tokenizer(),
        tiny_text.llama3_tokenizer(),
    )
    # CLIP: <|startoftext|> ... <|endoftext|>, padded with <|endoftext|>; truncation keeps the end
    ids = clip(
        [PROMPT, " ".join(["cat"] * 100)], padding="max_length", max_length=8, truncation=True
    )
    assert ids.input_ids[0] == [
        0,
        *clip.convert_tokens_to_ids(["a</w>", "photo</w>", "of</w>", "a</w>", "cat</w>"]),
        1,
        1,
    ]
    assert ids.input_ids[1][-1] == clip.eos_token_id and ids.attention_mask[0] == [1] * 7 + [0]
    assert clip.batch_decode(clip([PROMPT]).input_ids, skip_special_tokens=True) == [PROMPT]
    # T5: words, then </s>, padded with <pad> = 0 under a mask
    enc = t5(PROMPT, padding="max_length", max_length=8, truncation=True)
    assert enc.input_ids[5:] == [t5.eos_token_id, 0, 0] and enc.attention_mask == [1] * 6 + [0] * 2
    assert t5.batch_decode([enc.input_ids], skip_special_tokens=True) == [PROMPT]
    # Llama 3: the HunyuanVideo template's prefix is crop_start tokens long, as released
    template = DEFAULT_PROMPT_TEMPLATE["template"]
    prefix = llama(template.split("{}")[0]).input_ids
    assert len(prefix) == DEFAULT_PROMPT_TEMPLATE["crop_start"] == 95
    full = llama(template.format(PROMPT)).input_ids
    assert full[:95] == prefix
    assert llama.decode(full[95:]) == PROMPT + "<|eot_id|>"


def test_long_prompt_is_truncated_by_every_tokenizer() -> None:
    """A prompt past CLIP's 77 tokens and T5's max_sequence_length: the pipeline's truncation
    warnings decode the cut-off ids (batch_decode); caching runs on the truncated embeddings."""
    import logging

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # diffusers' loggers do not propagate to the root (caplog)
    logger = logging.getLogger("diffusers")
    logger.addHandler(handler)
    pipe = _pipe(CASES["sd3"].pipeline, BF16)
    try:
        with relcache.cached(pipe.transformer, FIXED_METHODS["taylorseer"]):
            out = pipe(
                prompt=" ".join([PROMPT] * 30),  # 150 words
                **CASES["sd3"].kwargs,
                max_sequence_length=32,
                num_inference_steps=STEPS,
                generator=torch.Generator().manual_seed(0),
                output_type="np",
            ).images
            stats = relcache.stats(pipe.transformer)
    finally:
        logger.removeHandler(handler)
    truncated = [r.getMessage() for r in records if "truncated" in r.getMessage()]
    assert len(truncated) == 3  # two CLIPs, one T5
    assert all("cat" in m for m in truncated)  # the decoded cut-off text
    assert stats.nfc == len(FIXED) and np.isfinite(out).all()
