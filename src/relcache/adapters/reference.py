"""The project's reference DiT (relcache.models.dit.DiT): attn and mlp of every block (§1)."""

from relcache.adapters import ModelAdapter, register_adapter

# pre-gate outputs of blocks.N.attn / blocks.N.mlp; inputs are modulate(norm(x))
register_adapter(
    ModelAdapter(
        name="reference-dit",
        class_names=("DiT",),
        patterns=(r"blocks\.\d+\.attn", r"blocks\.\d+\.mlp"),
        driver=r"blocks\.0\.attn",
        blocks=(r"blocks\.\d+",),  # DiTBlock(x, c) -> x: the carried stream is x
    )
)
