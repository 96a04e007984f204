"""The models shipped in the repo: the Fashion-MNIST DiT generator and its feature classifier."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import torch

GENERATOR_PRESET = "DiT-FM"
GENERATOR_FILE = "dit_fm.safetensors"


def generator_path() -> Path:
    """Path of the shipped generator weights inside the installed package."""
    return Path(str(importlib.resources.files("relcache") / "assets" / GENERATOR_FILE))


def load_generator(path: str | Path | None = None, device: str | torch.device = "cpu"):
    """The shipped class-conditional DiT-FM (EMA weights), in eval mode."""
    from relcache.models import create_dit, load_dit_weights

    path = Path(path) if path is not None else generator_path()
    if not path.exists():
        raise FileNotFoundError(
            f"generator weights not found at {path}; reinstall relcache (the weights ship in "
            "relcache/assets) or train them with scripts/train_generator.py"
        )
    model = load_dit_weights(path, create_dit(GENERATOR_PRESET))
    return model.to(device).eval()
