"""Run one caching method over a fixed set of (seed, class) pairs and record what it cost."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

import relcache
from relcache.caching.methods import CacheMethod
from relcache.sampling.ddim import cfg_model_fn, ddim_sample, ddim_schedule


@dataclass
class Generation:
    """Samples of one method and their costs."""

    images: torch.Tensor  # (N, C, H, W) in [-1, 1]
    nfc_per_image: torch.Tensor  # (N,) mean NFC of each image's cond and uncond rows
    seconds: float
    peak_cache_bytes: int


class Stopwatch:
    """Wall-clock seconds of a block: CUDA events on a GPU, ``time.perf_counter`` otherwise."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.seconds = 0.0

    def __enter__(self) -> Stopwatch:
        if self.cuda:
            self._events = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
            self._events[0].record()
        else:
            self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            self._events[1].record()
            self._events[1].synchronize()
            self.seconds = self._events[0].elapsed_time(self._events[1]) / 1e3
        else:
            self.seconds = time.perf_counter() - self._t0


def per_sample_noise(seeds: Sequence[int], shape: tuple[int, ...]) -> torch.Tensor:
    """x_T for each seed, drawn on the CPU: a sample does not depend on its batch. (N, *shape)"""
    return torch.stack(
        [torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds]
    )


def sample_batch(
    model: nn.Module,
    noise: torch.Tensor,
    labels: torch.Tensor,
    *,
    steps: int,
    cfg_scale: float,
    guidance_channels: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """DDIM with batched CFG from ``noise`` (N, C, H, W); returns x_0 (N, C, H, W)."""
    dev = next(model.parameters()).device
    y = labels.to(dev)
    z = torch.cat([noise, noise]).to(dev)  # (2N, C, H, W): cond rows, then null-class rows
    fn = cfg_model_fn(model, y, cfg_scale, guidance_channels)
    with torch.no_grad():
        x = ddim_sample(lambda x, t: fn(x, t).float(), z, ddim_schedule(steps), progress=progress)
    return x[: len(labels)].cpu()


def run_method(
    model: nn.Module,
    config: CacheMethod | None,
    seeds: Sequence[int],
    labels: torch.Tensor,
    *,
    steps: int = 50,
    cfg_scale: float = 1.5,
    batch_size: int = 64,
    progress: bool = True,
    desc: str = "",
) -> Generation:
    """Generate one image per (seed, label) with ``config`` (None = full compute)."""
    cfg = model.config
    noise = per_sample_noise(seeds, (cfg.in_channels, cfg.input_size, cfg.input_size))
    images, nfc, peak, seconds = [], [], 0, 0.0
    if config is not None:
        relcache.apply(model, config)
    try:
        starts = range(0, len(seeds), batch_size)
        bar = tqdm(total=len(seeds), desc=desc or "sampling", unit="img", disable=not progress)
        for s in starts:
            n = len(seeds[s : s + batch_size])
            with Stopwatch(next(model.parameters()).device) as watch:
                if config is not None:
                    relcache.reset(model)
                images.append(
                    sample_batch(
                        model,
                        noise[s : s + n],
                        labels[s : s + n],
                        steps=steps,
                        cfg_scale=cfg_scale,
                        progress=progress,
                    )
                )
            seconds += watch.seconds
            nfc.append(_image_nfc(model, config, n, steps))
            peak = max(peak, relcache.stats(model).peak_cache_bytes if config else 0)
            bar.update(n)
        bar.close()
    finally:
        if config is not None:
            relcache.remove(model)
    return Generation(torch.cat(images), torch.cat(nfc), seconds, peak)


def _image_nfc(model: nn.Module, config: CacheMethod | None, n: int, steps: int) -> torch.Tensor:
    """Per image: the mean NFC of its cond row i and uncond row n + i. (n,)"""
    if config is None:
        return torch.full((n,), float(steps))
    rows = torch.tensor(relcache.stats(model).nfc_per_sample["call0"])  # (2n,)
    return (rows[:n] + rows[n:]) / 2
