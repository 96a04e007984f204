"""The full-compute reference of a bench, cached on disk under a hash of what it depends on."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence

import torch
from torch import nn

from relcache.evaluation import distributed as dist
from relcache.evaluation.runner import Generation
from relcache.evaluation.settings import BenchSettings


def reference_key(model: nn.Module, s: BenchSettings) -> str:
    """Hash of the weights, the sampler settings, the seeds and the device type."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    device = next(model.parameters()).device.type
    meta = {
        "config": dataclasses.asdict(model.config),
        "steps": s.steps,
        "cfg_scale": s.cfg_scale,
        "seed": s.seed,
        "samples": s.samples,
        "batch_size": s.batch_size,
        "device": device,
        "torch": torch.__version__,
    }
    h.update(json.dumps(meta, sort_keys=True).encode())
    return h.hexdigest()[:24]


def reference(
    model: nn.Module, s: BenchSettings, seeds: Sequence[int], labels: torch.Tensor
) -> tuple[Generation, dict]:
    """Full-compute samples for the bench's seeds, from ``s.cache_dir`` when already made."""
    path = None if s.cache_dir is None else s.cache_dir / f"reference-{reference_key(model, s)}.pt"
    hit = bool(dist.broadcast(path is not None and path.exists()))
    if hit:
        data = torch.load(path, map_location="cpu", weights_only=True)
        gen = Generation(data["images"], torch.full((s.samples,), float(s.steps)), 0.0, 0)
        gen.seconds = float(data["seconds"])
        return gen, {"cache_hit": True, "path": str(path), "hardware": data["hardware"]}
    gen = dist.run_sharded(
        model, None, seeds, labels, **s.run_kwargs(), desc="full compute (reference)"
    )
    if path is not None and dist.is_main():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        hardware = dist.hardware_summary(next(model.parameters()).device)
        torch.save({"images": gen.images, "seconds": gen.seconds, "hardware": hardware}, tmp)
        tmp.replace(path)
    return gen, {"cache_hit": False, "path": str(path) if path else None}
