"""What a bench's results.json must match to be continued (``--resume``) or replaced
(``--overwrite``): the settings its numbers depend on and the model that made its rows."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from relcache.evaluation.settings import BenchSettings, flag

RESULTS = "results.json"

# result-key field -> the flag that sets it, for the mismatch message
FLAGS = {
    **{name: flag(name) for name in BenchSettings.RESULT_FIELDS},
    "model": "--checkpoint / --preset / --preset-overrides / --init-seed",
    "device": "--device",
}


def model_fingerprint(model: nn.Module) -> str:
    """Hash of the model's class, config, and every weight with its dtype and shape."""
    h = hashlib.sha256(type(model).__name__.encode())
    config = getattr(model, "config", None)
    if dataclasses.is_dataclass(config):
        h.update(json.dumps(dataclasses.asdict(config), sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def results_key(s: BenchSettings, model: nn.Module) -> dict:
    """Everything a run row's numbers depend on: settings, model weights, device type."""
    device = next(model.parameters()).device.type
    return {**s.result_key(), "model": model_fingerprint(model), "device": device}


def model_record(s: BenchSettings, model: nn.Module) -> dict:
    """How results.json names its model (for the mismatch message; not compared)."""
    return {"name": s.model_name, "args": s.model_args, "class": type(model).__name__}


def check_out(s: BenchSettings) -> dict | None:
    """Refuse a filled ``--out`` unless resuming or overwriting; with ``resume``, the old
    results (None when there are none yet), checked against the settings alone."""
    path = s.out / RESULTS
    if not path.exists() or s.overwrite:
        return None
    if not s.resume:
        raise ValueError(
            f"--out {s.out} already holds a bench ({path}, {_count_runs(path)}); pass --resume "
            "to continue it, --overwrite to replace it, or a new --out folder"
        )
    old = read_results(path)
    check_key(path, old, s.result_key())
    return old


def _count_runs(path: Path) -> str:
    """'N runs' from a results.json, or a word on why not."""
    try:
        return f"{len(json.loads(path.read_text()).get('runs') or {})} run(s)"
    except (OSError, ValueError, AttributeError):
        return "unreadable"


def read_results(path: Path) -> dict:
    """A results.json's content; a clear error when it is not one."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(
            f"{path} cannot be resumed ({type(err).__name__}: {err}); pass --overwrite to "
            "start over, or a new --out folder"
        ) from None
    if not isinstance(old, dict) or not isinstance(old.get("runs"), dict):
        raise ValueError(
            f"{path} is not a relcache bench's results (no 'runs'); pass --overwrite to start "
            "over, or a new --out folder"
        )
    return old


def check_key(path: Path, old: dict, key: dict, model: dict | None = None) -> None:
    """Raise, saying what differs and what to do, unless ``old`` was made with ``key``
    (``model``: this run's :func:`model_record`, named in the message)."""
    stored = old.get("settings") if isinstance(old.get("settings"), dict) else {}
    missing = [f"{k} ({FLAGS.get(k, k)})" for k in key if k not in stored]
    diffs = [_difference(k, stored, key[k], old, model) for k in key if k in stored]
    diffs = [d for d in diffs if d]
    if missing:
        diffs.append(f"{', '.join(missing)} not recorded there (an older relcache wrote it)")
    if diffs:
        raise ValueError(
            f"{path} was written with other settings, so its rows cannot be mixed with this "
            f"run's: {'; '.join(diffs)}. Rerun with the same flags to continue it, pass "
            "--overwrite (without --resume) to replace it, or use a new --out folder"
        )


def _difference(k: str, stored: dict, now: object, old: dict, model: dict | None) -> str:
    """One line of the mismatch message ("" when ``k`` matches)."""
    flag = FLAGS.get(k, k)
    if stored[k] == now:
        return ""
    if k == "model":
        return (
            f"model ({flag}): its rows came from weights {stored[k]} ({_named(old.get('model'))})"
            f", this run's model has weights {now} ({_named(model)})"
        )
    return f"{k} ({flag}): {stored[k]!r} there, {now!r} now"


def _named(record: dict | None) -> str:
    """A model record as 'name, flags'."""
    record = record or {}
    return f"{record.get('name', '?')}, {record.get('args') or 'no model flags'}"
