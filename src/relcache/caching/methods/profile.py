"""Fitted schedules as profile files: which steps run fully, for one model, sampler and budget.

A profile (JSON) records the model it was fitted on (name and a hash of its weights), the sampler
setting (steps, CFG scale), the budget (NFC), the full steps, the predictor (a method spec of the
registry, e.g. ``taylorseer2``), the score before and after the search and what the search cost.
``relcache calibrate`` / ``relcache.fit_schedule`` write one; :func:`from_profile` turns one into
the method config (§2: a fixed schedule given as an explicit ``full_steps`` list). A profile
fitted through a diffusers pipeline records its transformer's weights and, as the sampler, the
pipeline and scheduler classes (e.g. ``PixArtSigmaPipeline (DPMSolverMultistepScheduler)``).
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from relcache.caching.methods.base import CacheMethod
from relcache.caching.methods.registry import build_method, parse_method

FORMAT = 1  # the profile file's format version
SAMPLER = "ddim"  # relcache.sampling's DDIM (eta 0) with batched classifier-free guidance


def weights_hash(model: nn.Module | Any) -> str:
    """SHA-256 (first 16 hex digits) of the state dict: names, dtypes, shapes and bytes (of a
    diffusers pipeline's ``transformer``)."""
    module = model if isinstance(model, nn.Module) else getattr(model, "transformer", None)
    if not isinstance(module, nn.Module):
        raise TypeError(
            f"weights_hash takes an nn.Module or a diffusers pipeline with a .transformer, got "
            f"{type(model).__name__}"
        )
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Profile:
    """A fitted schedule and everything it depends on (one JSON file)."""

    model_name: str  # e.g. "shipped DiT-FM (Fashion-MNIST)"
    model_hash: str  # weights_hash of the model the schedule was fitted on
    steps: int  # sampler steps
    cfg_scale: float
    nfc: int  # the budget: len(full_steps)
    predictor: str  # a method spec without a schedule, e.g. "taylorseer2" or "rfe2:clamp=1.05"
    full_steps: tuple[int, ...]
    score: dict = field(default_factory=dict)  # metric, before, after, start_full_steps
    search: dict = field(default_factory=dict)  # algorithm, seeds, generations, seconds, ...
    sampler: str = SAMPLER  # a pipeline's: "PixArtSigmaPipeline (DPMSolverMultistepScheduler)"
    format: int = FORMAT

    def __post_init__(self) -> None:
        object.__setattr__(self, "full_steps", tuple(int(i) for i in self.full_steps))
        if len(self.full_steps) != self.nfc:
            raise ValueError(
                f"profile: nfc is {self.nfc} but full_steps has {len(self.full_steps)} steps "
                f"({list(self.full_steps)}); the file is damaged: fit it again (relcache calibrate)"
            )
        if self.full_steps and not 0 <= self.full_steps[-1] < self.steps:
            raise ValueError(
                f"profile: full step {self.full_steps[-1]} is outside 0..{self.steps - 1}; "
                "fit it again for this step count (relcache calibrate --steps)"
            )
        self.method()  # the predictor spec and the schedule must build a valid config

    def method(self) -> CacheMethod:
        """The method config: the predictor on the fitted ``full_steps``."""
        entry, _ = parse_method(self.predictor)
        if "full_steps" not in entry.knobs:
            raise ValueError(
                f"profile predictor {self.predictor!r} takes no explicit schedule; use a "
                "fixed-schedule method (fora, taylorseer, rfe)"
            )
        return build_method(self.predictor, full_steps=self.full_steps)

    @property
    def spec(self) -> str:
        """The method as one registry spec, e.g. ``taylorseer2:full_steps=0/1/7/15``."""
        return f"{self.predictor}:full_steps={'/'.join(map(str, self.full_steps))}"

    def matches(self, model: nn.Module | Any | str) -> bool:
        """Whether ``model`` (a pipeline: its transformer; or a weights_hash) is the model this
        profile was fitted on."""
        digest = model if isinstance(model, str) else weights_hash(model)
        return digest == self.model_hash


def save_profile(profile: Profile, path: str | Path) -> Path:
    """Write ``profile`` as JSON (atomically: a temporary file, then a rename)."""
    path = Path(path)
    data = {**asdict(profile), "full_steps": list(profile.full_steps), "method": profile.spec}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
    return path


def load_profile(path: str | Path) -> Profile:
    """The profile in the JSON file ``path``; errors say what is wrong and how to fix it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no profile at {path}; fit one with `relcache calibrate --nfc N --out {path}` or "
            f"pick a shipped one: {', '.join(p.name for p in shipped_profiles()) or 'none'}"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not a profile (invalid JSON: {err}); fit it again") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not a relcache profile of format {FORMAT}; fit it again with "
            "`relcache calibrate`"
        )
    data.pop("method", None)  # derived from predictor and full_steps
    known = set(Profile.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    missing = sorted(k for k in known - set(data) if k not in ("score", "search", "sampler"))
    if unknown or missing:
        raise ValueError(
            f"{path}: unknown fields {unknown} / missing fields {missing}; fit it again with "
            "`relcache calibrate`"
        )
    return Profile(**data)


def from_profile(path: str | Path, model: nn.Module | Any | None = None) -> CacheMethod:
    """The method config of the profile at ``path``; with ``model`` (or a diffusers pipeline),
    refused unless the profile was fitted on these weights."""
    profile = load_profile(path)
    if model is not None and not profile.matches(model):
        raise ValueError(
            f"{path} was fitted on {profile.model_name} (weights {profile.model_hash}), not on "
            f"this model (weights {weights_hash(model)}); fit a profile for it with "
            "`relcache calibrate`, or call from_profile(path) without model= to use it anyway"
        )
    return profile.method()


def shipped_profiles() -> list[Path]:
    """The profiles that ship in ``relcache/assets/profiles`` (fitted on the shipped DiT-FM)."""
    folder = Path(str(importlib.resources.files("relcache") / "assets" / "profiles"))
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def find_profile(
    model: nn.Module | str, nfc: int, steps: int = 50, cfg_scale: float | None = None
) -> Profile | None:
    """The shipped profile fitted on ``model`` (or its weights_hash) for this budget and step
    count (and CFG scale, when given), or None."""
    digest = model if isinstance(model, str) else weights_hash(model)
    for path in shipped_profiles():
        p = load_profile(path)
        same_cfg = cfg_scale is None or p.cfg_scale == cfg_scale
        if p.matches(digest) and p.nfc == nfc and p.steps == steps and same_cfg:
            return p
    return None
