"""Reference DiT (Peebles & Xie, 2023) with the original facebookresearch/DiT state-dict layout.

Every sub-module name matches the official ``models.py`` (and timm's ``PatchEmbed``, ``Attention``
and ``Mlp``), so official checkpoints load without key remapping. Each ``DiTBlock`` calls its
``attn`` and ``mlp`` children with one tensor and applies the adaLN gates outside them, which is the
contract the caching engine relies on (it wraps ``blocks.N.attn`` / ``blocks.N.mlp`` by name).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DiT",
    "DiTBlock",
    "DiTConfig",
    "FinalLayer",
    "LabelEmbedder",
    "PatchEmbed",
    "TimestepEmbedder",
    "get_2d_sincos_pos_embed",
    "modulate",
]


@dataclass(frozen=True)
class DiTConfig:
    """Architecture of one DiT; defaults are DiT-XL/2 at 256x256 (latent 32x32x4)."""

    input_size: int = 32
    patch_size: int = 2
    in_channels: int = 4
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    class_dropout_prob: float = 0.1
    num_classes: int = 1000
    learn_sigma: bool = True

    def __post_init__(self) -> None:
        for name in ("input_size", "patch_size", "in_channels", "hidden_size", "depth"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"DiTConfig.{name} must be a positive int, got {value!r}")
        if not isinstance(self.num_heads, int) or self.num_heads < 1:
            raise ValueError(f"DiTConfig.num_heads must be a positive int, got {self.num_heads!r}")
        if not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise ValueError(
                f"DiTConfig.num_classes must be a positive int, got {self.num_classes!r}"
            )
        if self.input_size % self.patch_size != 0:
            nearest = self.input_size - self.input_size % self.patch_size
            raise ValueError(
                f"DiTConfig.input_size={self.input_size} is not divisible by "
                f"patch_size={self.patch_size}; pick an input_size that is a multiple of "
                f"{self.patch_size} (e.g. {max(self.patch_size, nearest)})"
            )
        if self.hidden_size % self.num_heads != 0:
            raise ValueError(
                f"DiTConfig.hidden_size={self.hidden_size} is not divisible by "
                f"num_heads={self.num_heads}; choose num_heads dividing hidden_size "
                f"(head dim 64 means num_heads={max(1, self.hidden_size // 64)})"
            )
        if self.hidden_size % 4 != 0:
            raise ValueError(
                f"DiTConfig.hidden_size={self.hidden_size} must be a multiple of 4 for the 2D "
                f"sin-cos position embedding; use {self.hidden_size + (-self.hidden_size) % 4}"
            )
        if not self.mlp_ratio > 0:
            raise ValueError(f"DiTConfig.mlp_ratio must be > 0, got {self.mlp_ratio!r}")
        if not 0.0 <= self.class_dropout_prob < 1.0:
            raise ValueError(
                f"DiTConfig.class_dropout_prob must be in [0, 1), got {self.class_dropout_prob!r}; "
                "use 0.1 (the DiT default) to train for classifier-free guidance"
            )

    @property
    def out_channels(self) -> int:
        """Output channels: eps, plus the variance interpolation when ``learn_sigma``."""
        return self.in_channels * 2 if self.learn_sigma else self.in_channels

    @property
    def grid_size(self) -> int:
        """Tokens per side of the patch grid."""
        return self.input_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """Number of tokens T."""
        return self.grid_size**2


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation ``x * (1 + scale) + shift`` broadcast over tokens."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)  # (N, T, D)


class PatchEmbed(nn.Module):
    """Image to patch tokens with one strided conv (timm ``PatchEmbed`` layout: ``proj``)."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_size = patch_size
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed (N, C, H, W) images as (N, T, D) tokens."""
        x = self.proj(x)  # (N, D, H/p, W/p)
        return x.flatten(2).transpose(1, 2)  # (N, T, D)


class Attention(nn.Module):
    """Multi-head self-attention (timm ``Attention`` layout: ``qkv``, ``proj``)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over tokens of one (N, T, D) tensor."""
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.num_heads, self.head_dim)  # (N, T, 3, H, Dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (N, H, T, Dh)
        x = F.scaled_dot_product_attention(q, k, v)  # (N, H, T, Dh)
        x = x.transpose(1, 2).reshape(n, t, d)  # (N, T, D)
        return self.proj(x)  # (N, T, D)


class Mlp(nn.Module):
    """Two-layer MLP with tanh-approximate GELU (timm ``Mlp`` layout: ``fc1``, ``fc2``)."""

    def __init__(self, in_features: int, hidden_features: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply fc1 -> GELU -> fc2 to one (N, T, D) tensor."""
        x = self.act(self.fc1(x))  # (N, T, D_mlp)
        return self.fc2(x)  # (N, T, D)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding of (N,) timesteps as [cos, sin] (the DiT/ADM convention)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )  # (half,)
    args = t[:, None].float() * freqs[None]  # (N, half)
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (N, 2*half)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)  # (N, dim)
    return embedding


class TimestepEmbedder(nn.Module):
    """Scalar timesteps to vectors: sinusoidal features then a 2-layer SiLU MLP."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256) -> None:
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Embed (N,) timesteps as (N, D)."""
        t_freq = timestep_embedding(t, self.frequency_embedding_size)  # (N, F)
        return self.mlp(t_freq.to(self.mlp[0].weight.dtype))  # (N, D)


class LabelEmbedder(nn.Module):
    """Class labels to vectors, with label dropout to the null class ``num_classes`` for CFG."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float) -> None:
        super().__init__()
        use_cfg_embedding = int(dropout_prob > 0)
        self.embedding_table = nn.Embedding(num_classes + use_cfg_embedding, hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def token_drop(
        self, labels: torch.Tensor, force_drop_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Replace dropped labels by the null class (random, or where ``force_drop_ids == 1``)."""
        if force_drop_ids is None:
            drop_ids = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
        else:
            drop_ids = force_drop_ids == 1
        return torch.where(drop_ids, self.num_classes, labels)  # (N,)

    def forward(
        self, labels: torch.Tensor, train: bool, force_drop_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Embed (N,) labels as (N, D), dropping some while training."""
        use_dropout = self.dropout_prob > 0
        if (train and use_dropout) or (force_drop_ids is not None):
            labels = self.token_drop(labels, force_drop_ids)
        return self.embedding_table(labels)  # (N, D)


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero conditioning."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads=num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Update (N, T, D) tokens given the (N, D) conditioning vector."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(
            c
        ).chunk(6, dim=1)  # 6 x (N, D)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x  # (N, T, D)


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm and a linear map from tokens to patch pixels."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Map (N, T, D) tokens to (N, T, p*p*C_out)."""
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)  # 2 x (N, D)
        x = modulate(self.norm_final(x), shift, scale)  # (N, T, D)
        return self.linear(x)  # (N, T, p*p*C_out)


class DiT(nn.Module):
    """Diffusion transformer: ``forward(x, t, y)`` maps noisy (N, C, H, W) to (N, C_out, H, W)."""

    def __init__(self, config: DiTConfig | None = None) -> None:
        super().__init__()
        config = DiTConfig() if config is None else config
        self.config = config
        self.learn_sigma = config.learn_sigma
        self.in_channels = config.in_channels
        self.out_channels = config.out_channels
        self.patch_size = config.patch_size
        self.num_heads = config.num_heads
        self.num_classes = config.num_classes

        d = config.hidden_size
        self.x_embedder = PatchEmbed(config.input_size, config.patch_size, config.in_channels, d)
        self.t_embedder = TimestepEmbedder(d)
        self.y_embedder = LabelEmbedder(config.num_classes, d, config.class_dropout_prob)
        # Fixed sin-cos embedding; a frozen Parameter as in the original, so it is in state_dict.
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_patches, d), requires_grad=False)
        self.blocks = nn.ModuleList(
            [DiTBlock(d, config.num_heads, mlp_ratio=config.mlp_ratio) for _ in range(config.depth)]
        )
        self.final_layer = FinalLayer(d, config.patch_size, self.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Xavier linears, sin-cos positions, and adaLN-Zero (zeroed modulation and output)."""

        def _basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)

        self.apply(_basic_init)
        pos_embed = get_2d_sincos_pos_embed(self.pos_embed.shape[-1], self.config.grid_size)
        self.pos_embed.data.copy_(pos_embed.unsqueeze(0))  # (1, T, D)

        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        nn.init.constant_(self.x_embedder.proj.bias, 0)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.constant_(block.adaLN_modulation[-1].weight, 0)
            nn.init.constant_(block.adaLN_modulation[-1].bias, 0)
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].weight, 0)
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].bias, 0)
        nn.init.constant_(self.final_layer.linear.weight, 0)
        nn.init.constant_(self.final_layer.linear.bias, 0)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """Fold (N, T, p*p*C_out) patch outputs back into (N, C_out, H, W) images."""
        c = self.out_channels
        p = self.patch_size
        h = w = self.config.grid_size
        assert h * w == x.shape[1], "token count does not match the configured grid"
        x = x.reshape(x.shape[0], h, w, p, p, c)  # (N, h, w, p, p, C)
        x = torch.einsum("nhwpqc->nchpwq", x)  # (N, C, h, p, w, p)
        return x.reshape(x.shape[0], c, h * p, w * p)  # (N, C, H, W)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Predict (N, C_out, H, W) from noisy (N, C, H, W) images, (N,) timesteps, (N,) labels."""
        x = self.x_embedder(x) + self.pos_embed  # (N, T, D)
        t = self.t_embedder(t)  # (N, D)
        y = self.y_embedder(y, self.training)  # (N, D)
        c = t + y  # (N, D)
        for block in self.blocks:
            x = block(x, c)  # (N, T, D)
        x = self.final_layer(x, c)  # (N, T, p*p*C_out)
        return self.unpatchify(x)  # (N, C_out, H, W)


def get_1d_sincos_pos_embed_from_grid(embed_dim: int, pos: torch.Tensor) -> torch.Tensor:
    """1D sin-cos embedding of positions: (M,) -> (M, embed_dim) as [sin, cos]."""
    omega = torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega  # (D/2,)
    out = pos.reshape(-1).to(torch.float64)[:, None] * omega[None]  # (M, D/2)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)  # (M, D)


def get_2d_sincos_pos_embed(embed_dim: int, grid_size: int) -> torch.Tensor:
    """2D sin-cos embedding (MAE/DiT): first half encodes the column, second half the row."""
    coords = torch.arange(grid_size, dtype=torch.float32)
    grid_row, grid_col = torch.meshgrid(coords, coords, indexing="ij")  # 2 x (G, G)
    emb_w = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid_col)  # (G*G, D/2)
    emb_h = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid_row)  # (G*G, D/2)
    return torch.cat([emb_w, emb_h], dim=1).float()  # (G*G, D)
