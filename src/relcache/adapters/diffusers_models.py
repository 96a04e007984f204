"""Adapters for diffusers transformers: DiT, PixArt, SD3, FLUX, HunyuanVideo, Wan (§1).

Every cached module returns its value *before* the block's gate, and its input is the modulated,
normalised hidden state that the block computes anyway. FLUX and HunyuanVideo single-stream blocks
run attention and the MLP inside the block, so ``prepare`` swaps each such block to a subclass that
routes ``proj_out(cat(attn(x), mlp(x)))`` through one submodule, ``relcache_fused``, which is then
cached as a whole; ``restore`` undoes the swap exactly. Nothing here imports diffusers: the adapters
match class names, and the surgery only reuses the blocks' own submodules.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from relcache.adapters import ModelAdapter, register_adapter
from relcache.caching.structure import first_tensor

FUSED = "relcache_fused"  # name of the submodule the surgery adds to a single-stream block


# ----- module inputs --------------------------------------------------------------------------
def hidden_states_input(name: str, args: tuple, kwargs: dict) -> Tensor:
    """I = the ``hidden_states`` argument (keyword or first positional) of a cached module."""
    x = kwargs.get("hidden_states")
    if not isinstance(x, Tensor):
        x = first_tensor(args, {})
    if x is None:
        raise TypeError(f"module {name!r} was called without hidden states")
    return x


def joint_inputs(name: str, args: tuple, kwargs: dict) -> Tensor | tuple[Tensor, Tensor]:
    """I = (image stream, text stream) for joint attention, else the hidden states alone."""
    x = hidden_states_input(name, args, kwargs)
    ctx = kwargs.get("encoder_hidden_states")
    return (x, ctx) if isinstance(ctx, Tensor) else x


def _streams(name: str, args: tuple, kwargs: dict) -> tuple[Tensor, Tensor]:
    """A joint block's (image, text) hidden states, keyword or positional."""
    x = hidden_states_input(name, args, kwargs)
    ctx = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
    if not isinstance(ctx, Tensor):
        raise TypeError(f"block {name!r} was called without encoder_hidden_states")
    return x, ctx


def text_then_image(name: str, args: tuple, kwargs: dict) -> tuple[Tensor, Tensor]:
    """A joint block's carried streams in its output order (SD3, FLUX): (text, image)."""
    x, ctx = _streams(name, args, kwargs)
    return ctx, x


def image_then_text(name: str, args: tuple, kwargs: dict) -> tuple[Tensor, Tensor]:
    """A joint block's carried streams in its output order (HunyuanVideo): (image, text)."""
    return _streams(name, args, kwargs)


# ----- single-stream surgery (FLUX, HunyuanVideo) ---------------------------------------------
class _Fused(nn.Module):
    """The pre-gate output of one single-stream block; owns no parameters (the block does)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "block", block)  # a plain reference: no duplicated parameters


class FluxFused(_Fused):
    """proj_out(cat(attn(x), gelu(proj_mlp(x)))) of a FluxSingleTransformerBlock."""

    def forward(
        self, norm_hidden_states: Tensor, image_rotary_emb: Any = None, attn_kwargs: Any = None
    ) -> Tensor:
        b = self.block
        mlp = b.act_mlp(b.proj_mlp(norm_hidden_states))  # (B, L+N, 4D)
        attn = b.attn(
            hidden_states=norm_hidden_states,
            image_rotary_emb=image_rotary_emb,
            **(attn_kwargs or {}),
        )  # (B, L+N, D)
        return b.proj_out(torch.cat([attn, mlp], dim=2))  # (B, L+N, D)


def _flux_single_forward(
    self: nn.Module,
    hidden_states: Tensor,
    encoder_hidden_states: Tensor,
    temb: Tensor,
    image_rotary_emb: Any = None,
    joint_attention_kwargs: dict | None = None,
) -> tuple[Tensor, Tensor]:
    """FluxSingleTransformerBlock.forward with attention + MLP + proj_out behind one module."""
    text_seq_len = encoder_hidden_states.shape[1]
    hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)  # (B, L+N, D)
    residual = hidden_states
    norm_hidden_states, gate = self.norm(hidden_states, emb=temb)
    out = getattr(self, FUSED)(norm_hidden_states, image_rotary_emb, joint_attention_kwargs)
    hidden_states = residual + gate.unsqueeze(1) * out
    if hidden_states.dtype == torch.float16:
        hidden_states = hidden_states.clip(-65504, 65504)
    return hidden_states[:, :text_seq_len], hidden_states[:, text_seq_len:]


class HunyuanFused(_Fused):
    """proj_out(cat(attn(x_img, x_txt), gelu(proj_mlp(x)))) of a HunyuanVideo single block."""

    def forward(
        self,
        norm_hidden_states: Tensor,
        text_seq_length: int,
        attention_mask: Tensor | None = None,
        image_rotary_emb: Any = None,
    ) -> Tensor:
        b = self.block
        mlp = b.act_mlp(b.proj_mlp(norm_hidden_states))  # (B, N+L, 4D)
        attn, ctx = b.attn(
            hidden_states=norm_hidden_states[:, :-text_seq_length],
            encoder_hidden_states=norm_hidden_states[:, -text_seq_length:],
            attention_mask=attention_mask,
            image_rotary_emb=image_rotary_emb,
        )  # (B, N, D), (B, L, D)
        return b.proj_out(torch.cat([torch.cat([attn, ctx], dim=1), mlp], dim=2))  # (B, N+L, D)


def _hunyuan_single_forward(
    self: nn.Module,
    hidden_states: Tensor,
    encoder_hidden_states: Tensor,
    temb: Tensor,
    attention_mask: Tensor | None = None,
    image_rotary_emb: Any = None,
    *args: Any,
    **kwargs: Any,
) -> tuple[Tensor, Tensor]:
    """HunyuanVideoSingleTransformerBlock.forward with the fused pre-gate output as one module."""
    text_seq_length = encoder_hidden_states.shape[1]
    hidden_states = torch.cat([hidden_states, encoder_hidden_states], dim=1)  # (B, N+L, D)
    residual = hidden_states
    norm_hidden_states, gate = self.norm(hidden_states, emb=temb)
    out = getattr(self, FUSED)(
        norm_hidden_states, text_seq_length, attention_mask, image_rotary_emb
    )
    hidden_states = gate.unsqueeze(1) * out + residual
    return hidden_states[:, :-text_seq_length], hidden_states[:, -text_seq_length:]


_SWAPPED: dict[tuple[type, Any], type] = {}


def _swapped_class(base: type, forward: Any) -> type:
    """A subclass of ``base`` whose forward is ``forward``; one per (base, forward)."""
    key = (base, forward)
    if key not in _SWAPPED:
        attrs = {"forward": forward, "_relcache_base": base, "__module__": __name__}
        _SWAPPED[key] = type(f"Relcache{base.__name__}", (base,), attrs)
    return _SWAPPED[key]


def _single_stream_surgery(block_class: str, fused: type, forward: Any):
    """prepare/restore that expose each ``single_transformer_blocks.N`` output as one module."""

    def blocks(model: nn.Module) -> list[nn.Module]:
        found = list(getattr(model, "single_transformer_blocks", []))
        wrong = {type(b).__name__ for b in found} - {block_class, f"Relcache{block_class}"}
        if wrong:
            raise ValueError(
                f"relcache's {type(model).__name__} adapter supports {block_class} single blocks, "
                f"found {sorted(wrong)}; pass patterns= to cache other modules"
            )
        return found

    def prepare(model: nn.Module) -> None:
        for block in blocks(model):
            if "_relcache_base" in type(block).__dict__:
                raise ValueError("relcache surgery is already applied to this model")
        for block in blocks(model):
            block.__class__ = _swapped_class(type(block), forward)
            block.add_module(FUSED, fused(block))

    def restore(model: nn.Module) -> None:
        for block in blocks(model):
            base = type(block).__dict__.get("_relcache_base")
            if base is not None:
                del block._modules[FUSED]
                block.__class__ = base

    return prepare, restore


_flux_prepare, _flux_restore = _single_stream_surgery(
    "FluxSingleTransformerBlock", FluxFused, _flux_single_forward
)
_hunyuan_prepare, _hunyuan_restore = _single_stream_surgery(
    "HunyuanVideoSingleTransformerBlock", HunyuanFused, _hunyuan_single_forward
)

# ----- the adapters ---------------------------------------------------------------------------
# BasicTransformerBlock (ada_norm_zero): attn1 and ff before gate_msa/gate_mlp; DiT-XL/2: 28 x 2 =
# 56
register_adapter(
    ModelAdapter(
        name="diffusers-dit",
        class_names=("DiTTransformer2DModel",),
        patterns=(r"transformer_blocks\.\d+\.attn1", r"transformer_blocks\.\d+\.ff"),
        driver=r"transformer_blocks\.0\.attn1",
        inputs=hidden_states_input,
        blocks=(r"transformer_blocks\.\d+",),
        block_inputs=hidden_states_input,
    )
)

# relcache's DiffusersDiT (models/diffusers_dit.py): the same transformer called as model(x, t, y)
register_adapter(
    ModelAdapter(
        name="relcache-diffusers-dit",
        class_names=("DiffusersDiT",),
        patterns=(
            r"transformer\.transformer_blocks\.\d+\.attn1",
            r"transformer\.transformer_blocks\.\d+\.ff",
        ),
        driver=r"transformer\.transformer_blocks\.0\.attn1",
        inputs=hidden_states_input,
        blocks=(r"transformer\.transformer_blocks\.\d+",),
        block_inputs=hidden_states_input,
    )
)

# BasicTransformerBlock (ada_norm_single): attn1 and ff before their gates, and the ungated
# cross-attention attn2 (input: the residual stream); PixArt-alpha: 28 x 3 = 84
register_adapter(
    ModelAdapter(
        name="diffusers-pixart",
        class_names=("PixArtTransformer2DModel",),
        patterns=(
            r"transformer_blocks\.\d+\.attn1",
            r"transformer_blocks\.\d+\.attn2",
            r"transformer_blocks\.\d+\.ff",
        ),
        driver=r"transformer_blocks\.0\.attn1",
        inputs=hidden_states_input,
        blocks=(r"transformer_blocks\.\d+",),
        block_inputs=hidden_states_input,
    )
)

# JointTransformerBlock: joint attn -> (img, txt), attn2 (SD3.5 dual-attention layers), ff,
# ff_context (absent in the last, context_pre_only block)
register_adapter(
    ModelAdapter(
        name="diffusers-sd3",
        class_names=("SD3Transformer2DModel",),
        patterns=(
            r"transformer_blocks\.\d+\.attn",
            r"transformer_blocks\.\d+\.attn2",
            r"transformer_blocks\.\d+\.ff",
            r"transformer_blocks\.\d+\.ff_context",
        ),
        driver=r"transformer_blocks\.0\.attn",
        inputs=joint_inputs,
        blocks=(r"transformer_blocks\.\d+",),
        block_inputs=text_then_image,
    )
)

# FLUX and HunyuanVideo share the MMDiT layout: double-stream blocks + fused single-stream blocks
MMDIT_PATTERNS = (
    r"transformer_blocks\.\d+\.attn",
    r"transformer_blocks\.\d+\.ff",
    r"transformer_blocks\.\d+\.ff_context",
    rf"single_transformer_blocks\.\d+\.{FUSED}",
)
MMDIT = dict(
    patterns=MMDIT_PATTERNS,
    driver=r"transformer_blocks\.0\.attn",
    inputs=joint_inputs,
    slice_batch=False,  # rotary embeddings (S, D) reach the attention modules
    blocks=(r"transformer_blocks\.\d+", r"single_transformer_blocks\.\d+"),
)

# The paper's FLUX runs (official TaylorSeer FLUX code, RFC_SPEC §2): warm-up W = 3 (N = 4 -> NFC
# 14, N = 9 -> 8), FORA refreshing when i mod N == 0 (W = 1: N = 3 -> NFC 17, N = 7 -> 8)
FLUX_DEFAULTS = {
    "fora": {"warmup": 1},
    **{name: {"warmup": 3} for name in ("taylorseer", "rfe", "rfc", "rcs", "budget")},
}
# HunyuanVideo: W = 1, m = 1 (N = 5, 6, 8 -> NFC 10, 9, 7); RFE needs two full steps (W = 2)
HUNYUAN_DEFAULTS = {
    "fora": {"warmup": 1},
    "taylorseer": {"warmup": 1, "order": 1},
    "rcs": {"warmup": 1, "order": 1},
    **{name: {"order": 1} for name in ("rfe", "rfc", "budget")},
}

# double blocks: attn -> (img_attn, txt_attn), ff, ff_context; single blocks: fused
# proj_out(cat(attn, mlp)); FLUX.1: 19 x 4 + 38 = 114 features in 95 modules
register_adapter(
    ModelAdapter(
        name="diffusers-flux",
        class_names=("FluxTransformer2DModel",),
        prepare=_flux_prepare,
        restore=_flux_restore,
        defaults=FLUX_DEFAULTS,
        block_inputs=text_then_image,
        **MMDIT,
    )
)

# like FLUX: 20 x 4 + 40 = 120 features in 100 modules; token-replace (I2V) blocks are not
# supported
register_adapter(
    ModelAdapter(
        name="diffusers-hunyuanvideo",
        class_names=("HunyuanVideoTransformer3DModel",),
        prepare=_hunyuan_prepare,
        restore=_hunyuan_restore,
        defaults=HUNYUAN_DEFAULTS,
        block_inputs=image_then_text,
        **MMDIT,
    )
)

# WanTransformerBlock: attn1 and ffn before their gates, ungated cross-attention attn2; Wan2.1-14B:
# 40 x 3 = 120. Wan2.2's transformer_2 is not cached
register_adapter(
    ModelAdapter(
        name="diffusers-wan",
        class_names=("WanTransformer3DModel",),
        patterns=(r"blocks\.\d+\.attn1", r"blocks\.\d+\.attn2", r"blocks\.\d+\.ffn"),
        driver=r"blocks\.0\.attn1",
        inputs=hidden_states_input,
        blocks=(r"blocks\.\d+",),
        block_inputs=hidden_states_input,
    )
)
