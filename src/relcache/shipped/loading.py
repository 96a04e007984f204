"""The one way models are loaded: shipped assets, checkpoints and random smoke-test DiTs."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from relcache.models import DiT, create_dit, load_dit_checkpoint, load_dit_weights
from relcache.shipped.classifier import FashionClassifier

GENERATOR_PRESET = "DiT-FM"
GENERATOR_FILE = "dit_fm.safetensors"
GENERATOR_NAME = "shipped DiT-FM (Fashion-MNIST)"
CLASSIFIER_FILE = "classifier.safetensors"


def asset_path(name: str) -> Path:
    """Path of a file in ``relcache/assets`` inside the installed package."""
    return Path(str(importlib.resources.files("relcache") / "assets" / name))


def generator_path() -> Path:
    """Path of the shipped generator weights inside the installed package."""
    return asset_path(GENERATOR_FILE)


def classifier_path() -> Path:
    """Path of the shipped classifier weights inside the installed package."""
    return asset_path(CLASSIFIER_FILE)


def load_generator(path: str | Path | None = None, device: str | torch.device = "cpu") -> DiT:
    """The shipped class-conditional DiT-FM (EMA weights), in eval mode."""
    path = Path(path) if path is not None else generator_path()
    if not path.exists():
        raise FileNotFoundError(
            f"generator weights not found at {path}; reinstall relcache (the weights ship in "
            "relcache/assets) or train them with scripts/train_generator.py"
        )
    return load_dit_checkpoint(create_dit(GENERATOR_PRESET), path).to(device).eval()


def load_classifier(
    path: str | Path | None = None, device: str | torch.device = "cpu"
) -> FashionClassifier:
    """Load weights (default: the shipped asset) into a ``FashionClassifier`` in eval mode."""
    model = FashionClassifier()
    model.load_state_dict(load_file(str(classifier_path() if path is None else path)))
    return model.to(device).eval()


def save_classifier(
    model: FashionClassifier, path: str | Path, metadata: dict[str, str] | None = None
) -> None:
    """Save the state dict as safetensors, with optional string metadata."""
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata=metadata)


def random_dit(preset: str, seed: int = 0, **overrides: object) -> DiT:
    """A DiT with random weights for smoke tests, in eval mode. DiT zero-initialises its adaLN
    and output layers (every method would then give identical images), so those get N(0, 0.02)."""
    torch.manual_seed(seed)
    model = create_dit(preset, **overrides)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2 and not p.any():
                p.normal_(0.0, 0.02)
    return model.eval()


def load_model(
    checkpoint: str | Path | None = None,
    preset: str | None = None,
    overrides: dict[str, object] | None = None,
    init_seed: int = 0,
    device: str | torch.device = "cpu",
) -> tuple[DiT, str]:
    """The DiT to evaluate and its name: a checkpoint, a random preset, or the shipped DiT-FM."""
    if checkpoint is not None and preset is not None:
        raise ValueError("pass a checkpoint or a preset, not both")
    if overrides and preset is None:
        raise ValueError("--preset-overrides needs --preset NAME")
    if checkpoint is not None:
        return load_dit_weights(checkpoint, device=device), str(checkpoint)
    if preset is not None:
        model = random_dit(preset, init_seed, **(overrides or {})).to(device)
        return model, f"{preset} (random weights, seed {init_seed})"
    return load_generator(device=device), GENERATOR_NAME
