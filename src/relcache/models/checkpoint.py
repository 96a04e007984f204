"""Load and save DiT weights in the original facebookresearch/DiT state-dict layout."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Mapping

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from relcache.models.dit import DiT, DiTConfig

__all__ = [
    "CheckpointKeyError",
    "infer_dit_config",
    "load_dit_checkpoint",
    "load_dit_weights",
    "read_state_dict",
    "save_dit_weights",
]

_CONFIG_METADATA_KEY = "relcache.dit_config"
_WRAPPER_KEYS = ("ema", "model", "state_dict")
_STRIPPED_PREFIXES = ("module.", "_orig_mod.")
_SHOWN_KEYS = 5


class CheckpointKeyError(KeyError):
    """Missing or unexpected state-dict keys; prints its message unquoted (unlike KeyError)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a DiT state dict from ``.safetensors`` or ``.pt`` (raw, or under "ema"/"model")."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint file at {path!r}")
    try:
        state = _read_file(path)
    except Exception as err:  # torch.load / safetensors raise many types on a non-weights file
        raise _unreadable(path, err) from err
    if not path.endswith(".safetensors") and isinstance(state, Mapping):
        for key in _WRAPPER_KEYS:  # DiT's train.py stores {"model", "ema", "opt", "args"}
            if key in state and isinstance(state[key], Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(
            f"{path!r} does not hold a state dict of tensors; save one with save_dit_weights() "
            "or torch.save(model.state_dict(), path)"
        )
    return {_strip_prefixes(k): v for k, v in state.items()}


def _unreadable(path: str, err: Exception) -> ValueError:
    """The error for a file that torch.load / safetensors cannot read (EOFError, pickle, ...)."""
    return ValueError(
        f"{path!r} is not a readable checkpoint ({type(err).__name__}: {err}); pass DiT "
        "weights saved as .safetensors or with torch.save(model.state_dict(), path)"
    )


def _read_file(path: str) -> object:
    """The raw content of a ``.safetensors`` or ``torch.save`` file (tensors only)."""
    if path.endswith(".safetensors"):
        return load_file(path, device="cpu")
    return torch.load(path, map_location="cpu", weights_only=True)


def _strip_prefixes(key: str) -> str:
    """Drop DDP / torch.compile wrapper prefixes from a key."""
    changed = True
    while changed:
        changed = False
        for prefix in _STRIPPED_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def infer_dit_config(state_dict: Mapping[str, torch.Tensor]) -> DiTConfig:
    """Recover the ``DiTConfig`` a DiT state dict was saved from (heads from a matching preset)."""
    from relcache.models import DIT_PRESETS  # the registry imports this module

    try:
        proj = state_dict["x_embedder.proj.weight"]  # (D, C, p, p)
        num_patches = state_dict["pos_embed"].shape[1]
        table_rows = state_dict["y_embedder.embedding_table.weight"].shape[0]
        final_out = state_dict["final_layer.linear.weight"].shape[0]  # p*p*C_out
    except KeyError as err:
        raise CheckpointKeyError(
            f"not a DiT state dict in the original layout: key {err.args[0]!r} is missing"
        ) from None
    hidden, in_channels, patch = int(proj.shape[0]), int(proj.shape[1]), int(proj.shape[2])
    depth = 1 + max(
        (int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k))),
        default=-1,
    )
    input_size = math.isqrt(int(num_patches)) * patch
    learn_sigma = final_out == patch * patch * in_channels * 2
    mlp_hidden = state_dict["blocks.0.mlp.fc1.weight"].shape[0] if depth else 4 * hidden
    matches = [
        c
        for c in DIT_PRESETS.values()
        if (c.hidden_size, c.depth, c.patch_size) == (hidden, depth, patch)
    ]
    num_heads = matches[0].num_heads if matches else max(1, hidden // 64)
    # With CFG dropout the table has one extra (null) row; assume dropout when the count is odd
    # relative to a matching preset, else fall back to "has a null row" (the DiT default).
    preset_classes = {c.num_classes for c in matches}
    if table_rows in preset_classes:
        num_classes, dropout = table_rows, 0.0
    else:
        num_classes, dropout = table_rows - 1, 0.1
    return DiTConfig(
        input_size=input_size,
        patch_size=patch,
        in_channels=in_channels,
        hidden_size=hidden,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=mlp_hidden / hidden,
        class_dropout_prob=dropout,
        num_classes=max(1, num_classes),
        learn_sigma=learn_sigma,
    )


def _describe_match(state_dict: Mapping[str, torch.Tensor]) -> str:
    """One sentence naming the preset and input_size the file most likely belongs to."""
    from relcache.models import DIT_PRESETS

    try:
        cfg = infer_dit_config(state_dict)
    except (KeyError, ValueError, IndexError):
        return "the file does not look like a DiT checkpoint in the original layout"
    names = [
        name
        for name, c in DIT_PRESETS.items()
        if (c.hidden_size, c.depth, c.patch_size, c.in_channels)
        == (cfg.hidden_size, cfg.depth, cfg.patch_size, cfg.in_channels)
    ]
    what = f"preset {names[0]!r}" if names else "no registered preset"
    fix = f'create_dit("{names[0]}", input_size={cfg.input_size})' if names else f"DiT({cfg})"
    return (
        f"the file looks like {what} with input_size={cfg.input_size} (hidden={cfg.hidden_size}, "
        f"depth={cfg.depth}, patch={cfg.patch_size}, classes={cfg.num_classes}); "
        f"build the model with {fix}"
    )


def _few(keys: list[str]) -> str:
    """A short listing of some keys."""
    shown = ", ".join(sorted(keys)[:_SHOWN_KEYS])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > _SHOWN_KEYS else "")


def load_dit_checkpoint(model: DiT, path: str | os.PathLike[str]) -> DiT:
    """Load an original-layout DiT checkpoint (.pt or .safetensors) into ``model``, strictly."""
    state = read_state_dict(path)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_few(unexpected)}")
        raise CheckpointKeyError(
            f"{os.fspath(path)!r} does not fit this model ({'; '.join(parts)}); "
            + _describe_match(state)
        )
    bad = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if state[k].shape != v.shape
    ]
    if bad:
        raise ValueError(
            f"{os.fspath(path)!r} has tensors of other shapes ({'; '.join(bad[:_SHOWN_KEYS])}); "
            + _describe_match(state)
        )
    model.load_state_dict(state, strict=True)
    return model


def save_dit_weights(model: DiT, path: str | os.PathLike[str]) -> None:
    """Save ``model``'s weights as safetensors in the original layout, with its config."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    metadata = {_CONFIG_METADATA_KEY: json.dumps(dataclasses.asdict(model.config))}
    directory = os.path.dirname(os.fspath(path))
    if directory:
        os.makedirs(directory, exist_ok=True)
    save_file(state, os.fspath(path), metadata=metadata)


def load_dit_weights(
    path: str | os.PathLike[str], *, device: str | torch.device | None = None
) -> DiT:
    """A DiT built from the file's stored (or inferred) config with its weights, in eval mode.

    To load into a model you built, use ``load_dit_checkpoint(model, path)``.
    """
    config = _stored_config(path)
    if config is None:
        config = infer_dit_config(read_state_dict(path))
    model = load_dit_checkpoint(DiT(config), path)
    if device is not None:
        model = model.to(device)
    return model.eval()


def _stored_config(path: str | os.PathLike[str]) -> DiTConfig | None:
    """The ``DiTConfig`` stored with the weights (safetensors metadata or a training checkpoint)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint file at {path!r}")
    if path.endswith(".safetensors"):
        try:
            with safe_open(path, framework="pt") as f:
                raw = (f.metadata() or {}).get(_CONFIG_METADATA_KEY)
        except Exception as err:  # not a safetensors file
            raise _unreadable(path, err) from err
        return None if raw is None else DiTConfig(**json.loads(raw))
    try:
        payload = _read_file(path)
    except Exception as err:  # torch.load raises many types on a non-weights file
        raise _unreadable(path, err) from err
    stored = payload.get("dit_config") if isinstance(payload, Mapping) else None
    return DiTConfig(**stored) if isinstance(stored, Mapping) else None
