"""Exact conversion of the reference DiT (original layout) to diffusers' ``DiTTransformer2DModel``.

``to_diffusers(model)`` builds a ``DiTTransformer2DModel`` whose forward equals the reference's
``model(x, t, y)`` up to float rounding (fp32: ~1e-6), and ``DiffusersDiT`` wraps it with the
reference call signature so the project's sampler (``relcache.sampling.generate``) runs on it.

The module maps, reference -> diffusers (``D`` = hidden size, ``N`` = block index):

- ``x_embedder.proj`` -> ``pos_embed.proj``; the fixed ``pos_embed`` -> ``pos_embed.pos_embed``
  (a non-persistent buffer in diffusers, so it is copied by ``to_diffusers``, not in the dict);
- ``t_embedder.mlp.{0,2}`` -> ``transformer_blocks.N.norm1.emb.timestep_embedder.linear_{1,2}``
  and ``y_embedder.embedding_table`` -> ``transformer_blocks.N.norm1.emb.class_embedder...``: one
  copy per block (diffusers recomputes the conditioning ``c = t + y`` in every block);
- ``blocks.N.adaLN_modulation.1`` -> ``transformer_blocks.N.norm1.linear`` (6D rows in the same
  order: shift/scale/gate for attention, then for the MLP);
- ``blocks.N.attn.qkv`` -> ``attn1.to_q`` / ``to_k`` / ``to_v`` (the fused rows split in three;
  heads are contiguous Dh-row slices of each, as in the reference reshape), ``attn.proj`` ->
  ``attn1.to_out.0``; ``blocks.N.mlp.fc{1,2}`` -> ``ff.net.0.proj`` / ``ff.net.2``;
- ``final_layer.adaLN_modulation.1`` -> ``proj_out_1`` (shift, then scale, as in the reference),
  ``final_layer.linear`` -> ``proj_out_2``.

Two things are not weights:

- **Timestep features.** diffusers' DiT embeds timesteps with ``downscale_freq_shift=1``
  (frequencies ``10000^(-k/(half-1))``); the original DiT uses ``10000^(-k/half)``. With shift 1
  the converted model is *not* the trained one (on the shipped DiT-FM the eps differ by up to
  0.13, against 0 with the fix), so ``to_diffusers`` sets every block's
  ``norm1.emb.time_proj.downscale_freq_shift`` to 0 (``flip_sin_to_cos=True`` already gives the
  reference's [cos, sin] order). This is a module attribute, not in diffusers' config: after
  ``save_pretrained`` / ``from_pretrained`` call :func:`use_reference_timestep_embedding` again
  (``DiffusersDiT`` does it by default).
- **Null class.** diffusers' ``CombinedTimestepLabelEmbeddings`` always has a null row (label
  dropout 0.1); a reference DiT trained without dropout gets a zero row appended, never used in
  eval mode. Each block's ``class_embedder.dropout_prob`` is set to the reference's probability.

diffusers cannot express ``mlp_ratio != 4`` (no MLP width in its config): such models raise.
The per-block embedder copies cost memory (DiT-XL/2: 750M parameters in diffusers, 675M here).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from relcache.models.checkpoint import CheckpointKeyError
from relcache.models.dit import DiT, DiTConfig

if TYPE_CHECKING:  # diffusers is an optional extra, imported only when a model is built
    from diffusers import DiTTransformer2DModel

__all__ = [
    "DiffusersDiT",
    "convert_state_dict",
    "diffusers_config",
    "dit_config_from_diffusers",
    "to_diffusers",
    "use_reference_timestep_embedding",
]

_FREQ_CHANNELS = 256  # TimestepEmbedder.frequency_embedding_size == diffusers' Timesteps(256)
_DIFFUSERS_CLASS_DROPOUT = 0.1  # fixed in diffusers' CombinedTimestepLabelEmbeddings


def diffusers_config(config: DiTConfig) -> dict[str, Any]:
    """``DiTTransformer2DModel`` keyword arguments for a reference ``DiTConfig``."""
    mlp_hidden = int(config.hidden_size * config.mlp_ratio)
    if mlp_hidden != 4 * config.hidden_size:
        raise ValueError(
            f"DiTConfig.mlp_ratio={config.mlp_ratio} gives an MLP of width {mlp_hidden}, but "
            f"diffusers' DiTTransformer2DModel always uses 4 x hidden ({4 * config.hidden_size}); "
            "only mlp_ratio=4.0 models can be converted"
        )
    return dict(
        num_attention_heads=config.num_heads,
        attention_head_dim=config.hidden_size // config.num_heads,
        in_channels=config.in_channels,
        out_channels=config.out_channels,
        num_layers=config.depth,
        dropout=0.0,
        attention_bias=True,
        sample_size=config.input_size,  # latent pixels per side, not tokens
        patch_size=config.patch_size,
        activation_fn="gelu-approximate",  # the reference's GELU(approximate="tanh")
        num_embeds_ada_norm=config.num_classes,
        upcast_attention=False,
        norm_type="ada_norm_zero",
        norm_elementwise_affine=False,
        norm_eps=1e-6,  # norm3 (before the MLP) takes it; norm1 and norm_out are fixed at 1e-6
    )


def dit_config_from_diffusers(config: Mapping[str, Any]) -> DiTConfig:
    """The reference ``DiTConfig`` of a ``DiTTransformer2DModel`` config (its shapes only)."""
    in_channels = int(config["in_channels"])
    out_channels = config.get("out_channels") or in_channels
    if out_channels not in (in_channels, 2 * in_channels):
        raise ValueError(
            f"out_channels={out_channels} is neither in_channels ({in_channels}) nor twice it "
            "(learned sigma); the reference DiT cannot describe this model"
        )
    heads = int(config["num_attention_heads"])
    return DiTConfig(
        input_size=int(config["sample_size"]),
        patch_size=int(config["patch_size"]),
        in_channels=in_channels,
        hidden_size=heads * int(config["attention_head_dim"]),
        depth=int(config["num_layers"]),
        num_heads=heads,
        mlp_ratio=4.0,
        class_dropout_prob=_DIFFUSERS_CLASS_DROPOUT,
        num_classes=int(config["num_embeds_ada_norm"]),
        learn_sigma=out_channels == 2 * in_channels,
    )


def _block_map(n: int) -> dict[str, str]:
    """Reference -> diffusers names of block ``n``'s own tensors (the fused qkv is split apart)."""
    src, dst = f"blocks.{n}.", f"transformer_blocks.{n}."
    pairs = {
        "adaLN_modulation.1": "norm1.linear",
        "attn.proj": "attn1.to_out.0",
        "mlp.fc1": "ff.net.0.proj",
        "mlp.fc2": "ff.net.2",
    }
    return {
        src + a + suffix: dst + b + suffix
        for a, b in pairs.items()
        for suffix in (".weight", ".bias")
    }


_SHARED_MAP = {  # reference tensor -> its diffusers name inside each block's norm1.emb
    "t_embedder.mlp.0.weight": "timestep_embedder.linear_1.weight",
    "t_embedder.mlp.0.bias": "timestep_embedder.linear_1.bias",
    "t_embedder.mlp.2.weight": "timestep_embedder.linear_2.weight",
    "t_embedder.mlp.2.bias": "timestep_embedder.linear_2.bias",
    "y_embedder.embedding_table.weight": "class_embedder.embedding_table.weight",
}

_TOP_MAP = {
    "x_embedder.proj.weight": "pos_embed.proj.weight",
    "x_embedder.proj.bias": "pos_embed.proj.bias",
    "final_layer.adaLN_modulation.1.weight": "proj_out_1.weight",
    "final_layer.adaLN_modulation.1.bias": "proj_out_1.bias",
    "final_layer.linear.weight": "proj_out_2.weight",
    "final_layer.linear.bias": "proj_out_2.bias",
}


def convert_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: DiTConfig
) -> dict[str, torch.Tensor]:
    """A reference (original-layout) DiT state dict as ``DiTTransformer2DModel`` weights.

    Pure: tensors are sliced or shared, never modified. ``pos_embed`` is checked for its shape
    and left out (diffusers keeps it as a non-persistent buffer; ``to_diffusers`` copies it).
    """
    diffusers_config(config)  # refuses what diffusers cannot express
    expected = {"pos_embed", *_TOP_MAP, *_SHARED_MAP}
    for n in range(config.depth):
        expected |= {*_block_map(n), f"blocks.{n}.attn.qkv.weight", f"blocks.{n}.attn.qkv.bias"}
    missing = sorted(expected - set(state_dict))
    unexpected = sorted(set(state_dict) - expected)
    if missing or unexpected:
        raise CheckpointKeyError(
            f"not a reference DiT state dict for {config}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    expected_pos = (1, config.num_patches, config.hidden_size)
    if tuple(state_dict["pos_embed"].shape) != expected_pos:
        raise ValueError(
            f"pos_embed has shape {tuple(state_dict['pos_embed'].shape)}, expected {expected_pos} "
            f"for input_size={config.input_size}, patch_size={config.patch_size}"
        )

    out: dict[str, torch.Tensor] = {dst: state_dict[src] for src, dst in _TOP_MAP.items()}
    table = state_dict["y_embedder.embedding_table.weight"]  # (classes [+ 1], D)
    if table.shape[0] == config.num_classes:  # trained without label dropout: no null row
        table = torch.cat([table, table.new_zeros(1, table.shape[1])])  # (classes + 1, D)
    for n in range(config.depth):
        for src, dst in _block_map(n).items():
            out[dst] = state_dict[src]
        emb = f"transformer_blocks.{n}.norm1.emb."
        for src, dst in _SHARED_MAP.items():
            out[emb + dst] = state_dict[src]
        out[emb + _SHARED_MAP["y_embedder.embedding_table.weight"]] = table
        for suffix in ("weight", "bias"):
            fused = state_dict[f"blocks.{n}.attn.qkv.{suffix}"]  # (3D, D) or (3D,): [q; k; v]
            for name, part in zip(("to_q", "to_k", "to_v"), fused.chunk(3, dim=0), strict=True):
                out[f"transformer_blocks.{n}.attn1.{name}.{suffix}"] = part  # (D, D) or (D,)
    return out


def use_reference_timestep_embedding(transformer: nn.Module) -> nn.Module:
    """Make a ``DiTTransformer2DModel`` embed timesteps as the original DiT (freq shift 0)."""
    for block in transformer.transformer_blocks:
        proj = block.norm1.emb.time_proj
        if proj.num_channels != _FREQ_CHANNELS or not proj.flip_sin_to_cos:
            raise ValueError(
                f"unexpected timestep projection {proj.num_channels} channels, "
                f"flip_sin_to_cos={proj.flip_sin_to_cos}; expected {_FREQ_CHANNELS}, True"
            )
        proj.downscale_freq_shift = 0
    return transformer


def to_diffusers(model: DiT, *, reference_timesteps: bool = True) -> DiTTransformer2DModel:
    """A ``DiTTransformer2DModel`` computing what ``model`` computes, on its device and dtype.

    ``reference_timesteps=False`` keeps diffusers' own timestep features (frequency shift 1,
    as the hub's ``facebook/DiT-XL-2-*`` transformers run): then the outputs differ.
    Works on the meta device (shapes only). The result is in eval mode.
    """
    try:
        from diffusers import DiTTransformer2DModel
    except ImportError as err:
        raise ImportError(
            "to_diffusers needs diffusers: pip install 'relcache[diffusers]'"
        ) from err

    config = model.config
    state = model.state_dict()
    converted = convert_state_dict(state, config)
    pos_embed = state["pos_embed"]  # (1, T, D)
    with torch.device(pos_embed.device):
        transformer = DiTTransformer2DModel(**diffusers_config(config))  # float32
    if pos_embed.dtype != torch.float32:
        transformer = transformer.to(dtype=pos_embed.dtype)
    transformer.load_state_dict(converted, strict=True)  # checks every shape, also on meta
    with torch.no_grad():
        transformer.pos_embed.pos_embed.copy_(pos_embed)  # (1, T, D): the checkpoint's own
    for block in transformer.transformer_blocks:
        block.norm1.emb.class_embedder.dropout_prob = config.class_dropout_prob
    if reference_timesteps:
        use_reference_timestep_embedding(transformer)
    return transformer.eval()


class DiffusersDiT(nn.Module):
    """A ``DiTTransformer2DModel`` called like the reference DiT: ``model(x, t, y)``.

    ``config`` is the equivalent reference ``DiTConfig`` (what ``relcache.sampling.generate``
    reads). To cache it with relcache, apply relcache to ``.transformer`` (the registered
    diffusers DiT adapter); the engine then takes each step from the timestep it is called with.
    """

    def __init__(
        self,
        transformer: DiTTransformer2DModel,
        config: DiTConfig | None = None,
        *,
        reference_timesteps: bool = True,
    ) -> None:
        super().__init__()
        self.transformer = transformer
        if reference_timesteps:
            use_reference_timestep_embedding(transformer)
        self.config = dit_config_from_diffusers(transformer.config) if config is None else config
        self.in_channels = self.config.in_channels
        self.out_channels = self.config.out_channels
        self.learn_sigma = self.config.learn_sigma
        self.patch_size = self.config.patch_size
        self.num_classes = self.config.num_classes

    @classmethod
    def from_dit(cls, model: DiT) -> DiffusersDiT:
        """Convert a reference DiT (``to_diffusers``) and wrap the result."""
        return cls(to_diffusers(model), model.config)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Predict (N, C_out, H, W) from noisy (N, C, H, W) images, (N,) timesteps, (N,) labels."""
        return self.transformer(x, timestep=t, class_labels=y, return_dict=False)[0]
