"""Model presets for the memory plan (``relcache plan``): a transformer class, its config written
out here, its compute dtype, default resolution, text tokens and how its pipeline runs guidance.

Every config below is the model's public ``transformer/config.json`` (the Hugging Face
repository named in ``source``), copied field by field; the latent geometry (VAE downsampling,
patchification, text tokens) is the one its diffusers pipeline uses. Nothing is downloaded: the
models are built on the meta device from these dicts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

Factory = Callable[[tuple[int, ...], torch.dtype], Tensor]  # (shape, dtype) -> a tensor


@dataclass(frozen=True)
class Preset:
    """One model as the plan builds and calls it."""

    name: str  # the CLI name, e.g. "wan2.1-14b"
    label: str  # a readable name, e.g. "Wan2.1-T2V-14B"
    family: str  # the diffusers class name, or "DiT" (relcache's reference DiT)
    config: Mapping[str, Any]  # the class's constructor arguments
    source: str  # where the config comes from
    height: int  # default resolution, pixels
    width: int
    frames: int | None = None  # video: default frame count (None: an image model)
    dtype: str = "bfloat16"  # compute dtype
    spatial: int = 8  # VAE spatial downsampling (1: pixel space)
    temporal: int = 4  # VAE temporal downsampling (video)
    text_tokens: int = 0  # text-encoder tokens the transformer attends to
    cfg: int = 2  # guidance branches per sample (1: guidance-distilled, no CFG)
    batched_cfg: bool = True  # the pipeline doubles the batch (False: two calls per step)

    @property
    def torch_dtype(self) -> torch.dtype:
        """The compute dtype as a torch dtype."""
        return getattr(torch, self.dtype)

    def with_config(self, **changes: Any) -> Preset:
        """The same preset with some config fields changed (tiny test models)."""
        return dataclasses.replace(self, config={**self.config, **changes})


# ----- the presets -------------------------------------------------------------------------------
PRESETS: dict[str, Preset] = {}


def register_preset(preset: Preset) -> Preset:
    """Add ``preset`` under its (lowercase) name."""
    PRESETS[preset.name.lower()] = preset
    return preset


# facebook/DiT-XL-2-256, transformer/config.json (diffusers' DiTPipeline: batched CFG, class
# labels, latents 32x32x4 at 256px: 8x VAE)
register_preset(
    Preset(
        name="dit-xl-2",
        label="DiT-XL/2",
        family="DiTTransformer2DModel",
        config=dict(
            num_attention_heads=16,
            attention_head_dim=72,
            in_channels=4,
            out_channels=8,
            num_layers=28,
            dropout=0.0,
            norm_num_groups=32,
            attention_bias=True,
            sample_size=32,
            patch_size=2,
            activation_fn="gelu-approximate",
            num_embeds_ada_norm=1000,
            upcast_attention=False,
            norm_type="ada_norm_zero",
            norm_elementwise_affine=False,
            norm_eps=1e-5,
        ),
        source="facebook/DiT-XL-2-256 transformer/config.json",
        height=256,
        width=256,
    )
)

# PixArt-alpha/PixArt-Sigma-XL-2-1024-MS, transformer/config.json (PixArtSigmaPipeline: batched
# CFG, T5 prompt of 300 tokens, 8x VAE)
register_preset(
    Preset(
        name="pixart-sigma",
        label="PixArt-Sigma-XL-2-1024-MS",
        family="PixArtTransformer2DModel",
        config=dict(
            num_attention_heads=16,
            attention_head_dim=72,
            in_channels=4,
            out_channels=8,
            num_layers=28,
            dropout=0.0,
            norm_num_groups=32,
            cross_attention_dim=1152,
            attention_bias=True,
            sample_size=128,
            patch_size=2,
            activation_fn="gelu-approximate",
            num_embeds_ada_norm=1000,
            upcast_attention=False,
            norm_type="ada_norm_single",
            norm_elementwise_affine=False,
            norm_eps=1e-6,
            interpolation_scale=2,
            use_additional_conditions=False,
            caption_channels=4096,
            attention_type="default",
        ),
        source="PixArt-alpha/PixArt-Sigma-XL-2-1024-MS transformer/config.json",
        height=1024,
        width=1024,
        text_tokens=300,
    )
)

# stabilityai/stable-diffusion-3-medium-diffusers, transformer/config.json (StableDiffusion3
# Pipeline: batched CFG, 77 CLIP + 256 T5 tokens, 16-channel 8x VAE)
register_preset(
    Preset(
        name="sd3-medium",
        label="Stable Diffusion 3 Medium",
        family="SD3Transformer2DModel",
        config=dict(
            sample_size=128,
            patch_size=2,
            in_channels=16,
            num_layers=24,
            attention_head_dim=64,
            num_attention_heads=24,
            joint_attention_dim=4096,
            caption_projection_dim=1536,
            pooled_projection_dim=2048,
            out_channels=16,
            pos_embed_max_size=192,
        ),
        source="stabilityai/stable-diffusion-3-medium-diffusers transformer/config.json",
        height=1024,
        width=1024,
        text_tokens=77 + 256,
    )
)

# black-forest-labs/FLUX.1-dev, transformer/config.json (FluxPipeline: guidance-distilled, one
# branch; T5 prompt of 512 tokens; 16-channel 8x VAE latents packed 2x2 -> 4096 tokens of 64
# channels at 1024px)
register_preset(
    Preset(
        name="flux-dev",
        label="FLUX.1-dev",
        family="FluxTransformer2DModel",
        config=dict(
            patch_size=1,
            in_channels=64,
            num_layers=19,
            num_single_layers=38,
            attention_head_dim=128,
            num_attention_heads=24,
            joint_attention_dim=4096,
            pooled_projection_dim=768,
            guidance_embeds=True,
            axes_dims_rope=(16, 56, 56),
        ),
        source="black-forest-labs/FLUX.1-dev transformer/config.json",
        height=1024,
        width=1024,
        text_tokens=512,
        cfg=1,
    )
)

# hunyuanvideo-community/HunyuanVideo, transformer/config.json (HunyuanVideoPipeline: guidance-
# distilled, one branch; LLaVA-Llama prompt of 256 tokens; VAE 8x spatial, 4x temporal: 720p, 129
# frames -> 33 x 90 x 160 latents, patch 1x2x2 -> 118,800 tokens)
register_preset(
    Preset(
        name="hunyuanvideo",
        label="HunyuanVideo",
        family="HunyuanVideoTransformer3DModel",
        config=dict(
            in_channels=16,
            out_channels=16,
            num_attention_heads=24,
            attention_head_dim=128,
            num_layers=20,
            num_single_layers=40,
            num_refiner_layers=2,
            mlp_ratio=4.0,
            patch_size=2,
            patch_size_t=1,
            qk_norm="rms_norm",
            guidance_embeds=True,
            text_embed_dim=4096,
            pooled_projection_dim=768,
            rope_theta=256.0,
            rope_axes_dim=(16, 56, 56),
        ),
        source="hunyuanvideo-community/HunyuanVideo transformer/config.json",
        height=720,
        width=1280,
        frames=129,
        text_tokens=256,
        cfg=1,
    )
)

# Wan-AI/Wan2.1-T2V-14B-Diffusers, transformer/config.json (dim 5120 = 40 heads x 128, 40 layers,
# ffn 13824, patch (1, 2, 2), text_dim 4096; the official wan/configs/wan_t2v_14B.py agrees).
# WanPipeline: CFG as two calls per step (cond, then uncond), umT5 prompt of 512 tokens, VAE 8x
# spatial, 4x temporal: 1280x720, 81 frames -> 21 x 90 x 160 latents -> 75,600 tokens
register_preset(
    Preset(
        name="wan2.1-14b",
        label="Wan2.1-T2V-14B",
        family="WanTransformer3DModel",
        config=dict(
            patch_size=(1, 2, 2),
            num_attention_heads=40,
            attention_head_dim=128,
            in_channels=16,
            out_channels=16,
            text_dim=4096,
            freq_dim=256,
            ffn_dim=13824,
            num_layers=40,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            eps=1e-6,
            image_dim=None,
            added_kv_proj_dim=None,
            rope_max_seq_len=1024,
        ),
        source="Wan-AI/Wan2.1-T2V-14B-Diffusers transformer/config.json",
        height=720,
        width=1280,
        frames=81,
        text_tokens=512,
        batched_cfg=False,
    )
)

# relcache's shipped DiT-FM (relcache.shipped.load_generator: the reference DiT's "DiT-FM" preset,
# float32, Fashion-MNIST pixels 28x28x1, no VAE), sampled as relcache's DDIM does: batched CFG
register_preset(
    Preset(
        name="dit-fm",
        label="shipped DiT-FM",
        family="DiT",
        config=dict(preset="DiT-FM"),
        source="relcache.models DIT_PRESETS['DiT-FM'] (the shipped generator's architecture)",
        height=28,
        width=28,
        dtype="float32",
        spatial=1,
    )
)


def find_preset(name: str | Preset) -> Preset:
    """The preset called ``name`` (case and '/', '_' insensitive), or ``name`` itself."""
    if isinstance(name, Preset):
        return name
    key = name.strip().lower().replace("/", "-").replace("_", "-")
    if key not in PRESETS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[key]


# ----- building a model on the meta device ----------------------------------------------------
def build_model(preset: Preset, device: str | torch.device = "meta") -> nn.Module:
    """The preset's transformer in its compute dtype (random weights unless on meta), eval mode;
    the modules its class keeps in float32 (diffusers' ``_keep_in_fp32_modules``) stay float32,
    as ``from_pretrained(torch_dtype=...)`` loads them."""
    with torch.device(device):
        model = _construct(preset)
    cast(model, preset.torch_dtype)
    return model.eval()


def _construct(preset: Preset) -> nn.Module:
    """An instance of the preset's class from its config (on the current default device)."""
    if preset.family == "DiT":
        from relcache.models import create_dit

        config = dict(preset.config)
        return create_dit(config.pop("preset"), **config)
    try:
        import diffusers
    except ImportError as err:  # pragma: no cover - diffusers is installed with the tests
        raise ValueError(
            f"the {preset.name} preset needs diffusers (pip install 'relcache[diffusers]')"
        ) from err
    return getattr(diffusers, preset.family).from_config(dict(preset.config))


def cast(model: nn.Module, dtype: torch.dtype) -> None:
    """Floating-point parameters and buffers to ``dtype``, except the modules the class keeps in
    float32 (matched by name part, as diffusers' loader does)."""
    keep = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, module in model.named_modules():
        target = torch.float32 if keep and set(name.split(".")) & set(keep) else dtype
        own = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
        for key, t in own:
            if t.is_floating_point() and t.dtype != target:
                _replace(module, key, t.to(target))


def _replace(module: nn.Module, key: str, value: Tensor) -> None:
    """Set parameter or buffer ``key`` of ``module`` (its own, not a child's) to ``value``."""
    is_parameter = isinstance(getattr(module, key), nn.Parameter)
    setattr(module, key, nn.Parameter(value, requires_grad=False) if is_parameter else value)


# ----- geometry and inputs --------------------------------------------------------------------
@dataclass(frozen=True)
class Geometry:
    """The latent a resolution gives: (frames,) height, width and channels."""

    frames: int | None  # latent frames (video)
    height: int
    width: int

    @property
    def dims(self) -> tuple[int, ...]:
        """(T, H, W) for video, (H, W) for images."""
        return (self.height, self.width) if self.frames is None else (self.frames, *self.hw)

    @property
    def hw(self) -> tuple[int, int]:
        return self.height, self.width


def geometry(preset: Preset, height: int, width: int, frames: int | None) -> Geometry:
    """The latent of a ``height`` x ``width`` (x ``frames``) generation; refuses sizes the VAE
    or the patchification cannot take (the message names the nearest ones that work)."""
    step = preset.spatial * _patch(preset)
    for what, value in (("height", height), ("width", width)):
        if value < step or value % step:
            lower = max(step, value - value % step)
            raise ValueError(
                f"{preset.name}: --{what} must be a multiple of {step} (VAE {preset.spatial}x, "
                f"patch {_patch(preset)}), got {value}; e.g. {lower} or {lower + step}"
            )
    if preset.frames is None:
        if frames is not None:
            raise ValueError(f"{preset.name} is an image model; drop --frames")
        return Geometry(None, height // preset.spatial, width // preset.spatial)
    frames = preset.frames if frames is None else frames
    if frames < 1 or (frames - 1) % preset.temporal:
        lower = max(1, frames - (frames - 1) % preset.temporal)
        raise ValueError(
            f"{preset.name}: --frames must be 1 + a multiple of {preset.temporal} (the VAE's "
            f"temporal downsampling), got {frames}; e.g. {lower} or {lower + preset.temporal}"
        )
    latent_frames = (frames - 1) // preset.temporal + 1
    return Geometry(latent_frames, height // preset.spatial, width // preset.spatial)


def _patch(preset: Preset) -> int:
    """The spatial patch size (FLUX packs 2x2 latents itself; the reference DiT's patch)."""
    if preset.family == "FluxTransformer2DModel":
        return 2
    if preset.family == "DiT":
        from relcache.models import dit_config

        return dit_config(preset.config["preset"]).patch_size
    patch = preset.config.get("patch_size", 1)
    return patch[-1] if isinstance(patch, (tuple, list)) else patch


def tokens(preset: Preset, geo: Geometry) -> int:
    """Image / video tokens per sample."""
    patch = _patch(preset)
    spatial = (geo.height // patch) * (geo.width // patch)
    return spatial * (geo.frames or 1)


def meta_factory(shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """An empty tensor on the meta device."""
    return torch.empty(shape, dtype=dtype, device="meta")


def model_inputs(
    preset: Preset, geo: Geometry, rows: int, new: Factory = meta_factory
) -> dict[str, Any]:
    """Keyword arguments of one transformer call on ``rows`` batch rows, as the preset's
    pipeline passes them; ``new(shape, dtype)`` makes each tensor."""
    return _INPUTS[preset.family](preset, geo, rows, new)


def _dit(p: Preset, g: Geometry, b: int, new: Factory) -> dict[str, Any]:
    """relcache's reference DiT: model(x, t, y)."""
    from relcache.models import dit_config

    channels = dit_config(p.config["preset"]).in_channels
    return dict(
        x=new((b, channels, *g.hw), torch.float32),
        t=new((b,), torch.float32),
        y=new((b,), torch.long),
    )


def _diffusers_dit(p: Preset, g: Geometry, b: int, new: Factory) -> dict[str, Any]:
    """DiTTransformer2DModel: latents, timestep, class labels."""
    return dict(
        hidden_states=new((b, p.config["in_channels"], *g.hw), p.torch_dtype),
        timestep=new((b,), torch.long),
        class_labels=new((b,), torch.long),
        return_dict=False,
    )


def _pixart(p: Preset, g: Geometry, b: int, new: Factory) -> dict[str, Any]:
    """PixArtTransformer2DModel: latents, T5 prompt and its mask, timestep."""
    return dict(
        hidden_states=new((b, p.config["in_channels"], *g.hw), p.torch_dtype),
        encoder_hidden_states=new((b, p.text_tokens, p.config["caption_channels"]), p.torch_dtype),
        encoder_attention_mask=new((b, p.text_tokens), torch.long),
        timestep=new((b,), torch.float32),
        added_cond_kwargs={"resolution": None, "aspect_ratio": None},
        return_dict=False,
    )


def _sd3(p: Preset, g: Geometry, b: int, new: Factory) -> dict[str, Any]:
    """SD3Transformer2DModel: latents, CLIP + T5 prompt, pooled CLIP embedding, timestep."""
    c = p.config
    return dict(
        hidden_states=new((b, c["in_channels"], *g.hw), p.torch_dtype),
        encoder_hidden_states=new((b, p.text_tokens, c["joint_attention_dim"]), p.torch_dtype),
        pooled_projections=new((b, c["pooled_projection_dim"]), p.torch_dtype),
        timestep=new((b,), torch.float32),
        return_dict=False,
    )


def _flux(p: Preset, g: Geometry, b: int, new: Factory) -> dict[str, Any]:
    """FluxTransformer2DModel: 2x2-packed latent tokens, T5 prompt, pooled CLIP, guidance."""
    c, n = p.config, tokens(p, g)
    return dict(
        hidden_states=new((b, n, c["in_channels"]), p.torch_dtype),
        encoder_hidden_states=new((b, p.text_tokens, c["joint_attention_dim"]), p.torch_dtype),
        pooled_projections=new((b, c["pooled_projection_dim"]), p.torch_dtype),
        timestep=new((b,), p.torch_dtype),
        img_ids=new((n, 3), p.torch_dtype),
        txt_ids=new((p.text_tokens, 3), p.torch_dtype),
        guidance=new((b,), torch.float32),
        return_dict=False,
    )


def _hunyuan(p: Preset, g: Geometry, b: int, new: Factory) -> dict[str, Any]:
    """HunyuanVideoTransformer3DModel: video latents, prompt and mask, pooled CLIP, guidance."""
    c = p.config
    return dict(
        hidden_states=new((b, c["in_channels"], *g.dims), p.torch_dtype),
        timestep=new((b,), torch.float32),
        encoder_hidden_states=new((b, p.text_tokens, c["text_embed_dim"]), p.torch_dtype),
        encoder_attention_mask=new((b, p.text_tokens), torch.bool),
        pooled_projections=new((b, c["pooled_projection_dim"]), p.torch_dtype),
        guidance=new((b,), torch.float32),
        return_dict=False,
    )


def _wan(p: Preset, g: Geometry, b: int, new: Factory) -> dict[str, Any]:
    """WanTransformer3DModel: video latents, timestep, umT5 prompt."""
    c = p.config
    return dict(
        hidden_states=new((b, c["in_channels"], *g.dims), p.torch_dtype),
        timestep=new((b,), torch.float32),
        encoder_hidden_states=new((b, p.text_tokens, c["text_dim"]), p.torch_dtype),
        return_dict=False,
    )


_INPUTS: dict[str, Callable[[Preset, Geometry, int, Factory], dict[str, Any]]] = {
    "DiT": _dit,
    "DiTTransformer2DModel": _diffusers_dit,
    "PixArtTransformer2DModel": _pixart,
    "SD3Transformer2DModel": _sd3,
    "FluxTransformer2DModel": _flux,
    "HunyuanVideoTransformer3DModel": _hunyuan,
    "WanTransformer3DModel": _wan,
}
