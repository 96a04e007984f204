"""Tests of the reference DiT, the preset registry and checkpoint I/O."""

from __future__ import annotations

import pytest
import torch

from relcache.models import (
    DIT_PRESETS,
    DiT,
    DiTConfig,
    create_dit,
    dit_config,
    infer_dit_config,
    load_dit_checkpoint,
    load_dit_weights,
    save_dit_weights,
)
from relcache.models.dit import get_2d_sincos_pos_embed

TINY = DiTConfig(
    input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=1, num_heads=4, num_classes=10
)

# Key names of the original facebookresearch/DiT state dict, for depth 1.
ORIGINAL_KEYS = {
    "pos_embed",
    "x_embedder.proj.weight",
    "x_embedder.proj.bias",
    "t_embedder.mlp.0.weight",
    "t_embedder.mlp.0.bias",
    "t_embedder.mlp.2.weight",
    "t_embedder.mlp.2.bias",
    "y_embedder.embedding_table.weight",
    "blocks.0.attn.qkv.weight",
    "blocks.0.attn.qkv.bias",
    "blocks.0.attn.proj.weight",
    "blocks.0.attn.proj.bias",
    "blocks.0.mlp.fc1.weight",
    "blocks.0.mlp.fc1.bias",
    "blocks.0.mlp.fc2.weight",
    "blocks.0.mlp.fc2.bias",
    "blocks.0.adaLN_modulation.1.weight",
    "blocks.0.adaLN_modulation.1.bias",
    "final_layer.linear.weight",
    "final_layer.linear.bias",
    "final_layer.adaLN_modulation.1.weight",
    "final_layer.adaLN_modulation.1.bias",
}


def _randomise(model: DiT, seed: int = 0) -> DiT:
    """Give every trainable weight random values (the zero-init makes outputs trivially zero)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


def test_presets_match_original_sizes():
    xl = dit_config("DiT-XL/2")
    assert (xl.hidden_size, xl.depth, xl.num_heads, xl.patch_size) == (1152, 28, 16, 2)
    assert (xl.input_size, xl.in_channels, xl.num_classes, xl.learn_sigma) == (32, 4, 1000, True)
    assert dit_config("DiT-XL/4").patch_size == 4
    assert (dit_config("DiT-L/2").hidden_size, dit_config("DiT-L/2").depth) == (1024, 24)
    assert (dit_config("DiT-B/2").hidden_size, dit_config("DiT-B/2").num_heads) == (768, 12)
    assert (dit_config("DiT-S/2").hidden_size, dit_config("DiT-S/2").num_heads) == (384, 6)
    fm = dit_config("DiT-FM")
    assert (fm.input_size, fm.in_channels, fm.num_classes, fm.patch_size) == (28, 1, 10, 4)
    assert fm.num_patches == 49
    assert {"DiT-XL/2", "DiT-XL/4", "DiT-L/2", "DiT-B/2", "DiT-S/2", "DiT-FM"} <= set(DIT_PRESETS)


def test_preset_aliases_and_errors():
    assert dit_config("dit-xl-2") is dit_config("DiT-XL/2")
    assert dit_config("dit-fm") is dit_config("DiT-FM")
    with pytest.raises(ValueError, match="DiT-XL/2"):
        dit_config("DiT-XXL/2")
    with pytest.raises(ValueError, match="valid overrides"):
        create_dit("DiT-S/8", hidden_sise=64)


def test_config_validation_messages():
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        DiTConfig(input_size=30, patch_size=4)
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        DiTConfig(hidden_size=100, num_heads=16)
    with pytest.raises(ValueError, match="positive int"):
        DiTConfig(depth=0)


def test_create_dit_overrides_input_size():
    model = create_dit("DiT-S/8", input_size=64, depth=1)
    assert model.config.input_size == 64 and model.pos_embed.shape == (1, 64, 384)


@pytest.mark.parametrize("learn_sigma", [True, False])
def test_forward_shapes(learn_sigma):
    cfg = DiTConfig(**{**TINY.__dict__, "learn_sigma": learn_sigma})
    model = _randomise(DiT(cfg)).eval()
    x = torch.randn(3, 4, 8, 8)
    out = model(x, torch.tensor([0, 500, 999]), torch.tensor([1, 2, 10]))
    assert out.shape == (3, 8 if learn_sigma else 4, 8, 8)


def test_zero_init_gives_zero_output():
    model = DiT(TINY).eval()
    out = model(torch.randn(2, 4, 8, 8), torch.tensor([3, 4]), torch.tensor([0, 1]))
    assert torch.count_nonzero(out) == 0


def test_state_dict_layout_matches_original():
    model = DiT(TINY)
    assert set(model.state_dict()) == ORIGINAL_KEYS
    assert model.y_embedder.embedding_table.weight.shape == (11, 32)  # num_classes + null row
    assert not model.pos_embed.requires_grad
    no_drop = DiT(DiTConfig(**{**TINY.__dict__, "class_dropout_prob": 0.0}))
    assert no_drop.y_embedder.embedding_table.weight.shape == (10, 32)


def test_block_children_take_one_tensor():
    model = _randomise(DiT(TINY))
    block = model.blocks[0]
    h = torch.randn(2, 16, 32)
    assert block.attn(h).shape == (2, 16, 32) and block.mlp(h).shape == (2, 16, 32)


def test_pos_embed_matches_mae_convention():
    emb = get_2d_sincos_pos_embed(8, 3)  # (9, 8): first half from the column, second the row
    omega = 1.0 / 10000 ** (torch.arange(2, dtype=torch.float64) / 2.0)
    token = 5  # row 1, col 2
    col = torch.cat([torch.sin(2 * omega), torch.cos(2 * omega)])
    row = torch.cat([torch.sin(1 * omega), torch.cos(1 * omega)])
    torch.testing.assert_close(emb[token], torch.cat([col, row]).float())


def test_label_dropout_forced():
    emb = DiT(TINY).y_embedder
    labels = torch.tensor([1, 2, 3])
    dropped = emb.token_drop(labels, force_drop_ids=torch.tensor([0, 1, 0]))
    assert dropped.tolist() == [1, 10, 3]


def test_checkpoint_round_trip_pt_and_safetensors(tmp_path):
    model = _randomise(DiT(TINY))
    torch.save(model.state_dict(), tmp_path / "raw.pt")
    torch.save({"ema": model.state_dict(), "opt": {}}, tmp_path / "wrapped.pt")
    save_dit_weights(model, tmp_path / "w.safetensors")
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([10, 20]), torch.tensor([0, 1])
    expected = model.eval()(x, t, y)
    for name in ("raw.pt", "wrapped.pt", "w.safetensors"):
        other = load_dit_checkpoint(DiT(TINY), tmp_path / name).eval()
        torch.testing.assert_close(other(x, t, y), expected, rtol=0, atol=0)
    rebuilt = load_dit_weights(tmp_path / "w.safetensors")  # config from the file's metadata
    assert rebuilt.config == TINY and not rebuilt.training


def test_checkpoint_missing_keys_raise_keyerror(tmp_path):
    state = DiT(TINY).state_dict()
    del state["blocks.0.attn.qkv.weight"]
    torch.save(state, tmp_path / "broken.pt")
    with pytest.raises(KeyError, match=r"missing keys: blocks\.0\.attn\.qkv\.weight"):
        load_dit_checkpoint(DiT(TINY), tmp_path / "broken.pt")


def test_checkpoint_depth_mismatch_names_preset(tmp_path):
    small = create_dit("DiT-S/8", input_size=16)
    torch.save(small.state_dict(), tmp_path / "s8.pt")
    with pytest.raises(KeyError, match=r"'DiT-S/8' with input_size=16"):
        load_dit_checkpoint(create_dit("DiT-S/8", input_size=16, depth=2), tmp_path / "s8.pt")


def test_checkpoint_shape_mismatch_raises_valueerror(tmp_path):
    save_dit_weights(DiT(TINY), tmp_path / "tiny.safetensors")
    bigger = DiT(DiTConfig(**{**TINY.__dict__, "input_size": 16}))
    with pytest.raises(ValueError, match="input_size=8"):
        load_dit_checkpoint(bigger, tmp_path / "tiny.safetensors")


def test_infer_config_round_trip():
    cfg = infer_dit_config(DiT(TINY).state_dict())
    assert (cfg.input_size, cfg.patch_size, cfg.hidden_size, cfg.depth) == (8, 2, 32, 1)
    assert (cfg.num_classes, cfg.learn_sigma, cfg.mlp_ratio) == (10, True, 4.0)
