"""Running one method over a fixed sample set: noise per seed, timing, NFC and memory."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

import relcache
from relcache.caching.methods import CacheMethod
from relcache.sampling.ddim import denoise


@dataclass
class Generation:
    """Samples of one method and their costs."""

    images: torch.Tensor  # (N, C, H, W) in [-1, 1]
    nfc_per_image: torch.Tensor  # (N,) mean NFC of each image's cond and uncond rows
    seconds: float
    peak_cache_bytes: int
    full_steps: list[list[int]] | None = None  # per image: its cond row's full steps
    gflops: float | None = None  # per image, counted (run_method's count_flops)

    @property
    def mean_nfc(self) -> float:
        """NFC averaged over images."""
        return float(self.nfc_per_image.mean())

    def schedule_share(self, steps: int) -> list[float] | None:
        """Per step: the fraction of images whose cond row ran it fully (None: not recorded)."""
        return None if self.full_steps is None else schedule_share(self.full_steps, steps)


def schedule_share(full_steps: Sequence[Sequence[int]], steps: int) -> list[float]:
    """Per step i < ``steps``: the fraction of schedules that contain i (0 for none given)."""
    counts = [0] * steps
    for schedule in full_steps:
        for i in schedule:
            counts[i] += 1
    return [c / max(len(full_steps), 1) for c in counts]


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


def sample_set(seed: int, samples: int, num_classes: int) -> tuple[list[int], torch.Tensor]:
    """The evaluation set: image i has noise seed ``seed + i`` and class ``i % num_classes``."""
    return [seed + i for i in range(samples)], torch.arange(samples) % num_classes


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
    progress: bool = False,
    step_context: Callable[[int], AbstractContextManager] | None = None,
) -> torch.Tensor:
    """DDIM with batched CFG (always, even at scale 1) from ``noise`` (N, C, H, W); x_0 on CPU.
    ``step_context(i)`` wraps step i's model call (default: ``relcache.at_step``)."""
    dev = next(model.parameters()).device
    x = denoise(
        model, noise.to(dev), labels.to(dev), steps=steps, cfg_scale=cfg_scale, guided=True,
        progress=progress, step_context=step_context,
    )  # fmt: skip
    return x.cpu()  # (N, C, H, W)


def warm_up(model: nn.Module, cfg_scale: float) -> None:
    """One 3-step generation, so first-call overheads (allocator, kernels) stay out of timings."""
    c = model.config
    noise = torch.zeros(1, c.in_channels, c.input_size, c.input_size)
    sample_batch(model, noise, torch.zeros(1, dtype=torch.long), steps=3, cfg_scale=cfg_scale)


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
    count_flops: bool = False,
) -> Generation:
    """Generate one image per (seed, label) with ``config`` (None = full compute);
    ``count_flops``: see :func:`timed_batches`."""
    cfg = model.config
    noise = per_sample_noise(seeds, (cfg.in_channels, cfg.input_size, cfg.input_size))
    nfc, full, peak = [], [], 0

    def run_batch(rows: slice) -> torch.Tensor:
        nonlocal peak
        if config is not None:
            relcache.reset(model)
        images = sample_batch(model, noise[rows], labels[rows], steps=steps, cfg_scale=cfg_scale,
                              progress=progress)  # fmt: skip
        n = len(images)
        nfc.append(_image_nfc(model, config, n, steps))
        full.extend(_image_schedules(model, config, n, steps))
        peak = max(peak, relcache.stats(model).peak_cache_bytes if config else 0)
        return images

    with relcache.cached(model, config):
        images, seconds, gflops = timed_batches(len(seeds), batch_size, run_batch, model,
                                                count_flops, progress, desc)  # fmt: skip
    return Generation(images, torch.cat(nfc), seconds, peak, full, gflops)


def timed_batches(
    total: int,
    batch_size: int,
    run_batch: Callable[[slice], torch.Tensor],
    model: nn.Module,
    count_flops: bool,
    progress: bool,
    desc: str,
) -> tuple[torch.Tensor, float, float | None]:
    """``run_batch`` over consecutive slices of ``total`` rows: the images, the seconds and,
    with ``count_flops``, GFLOPs per image counted by FlopCounterMode on the first batch. That
    batch is then left out of the timing (the counter slows a step by ~20%) and the seconds are
    scaled from the other batches to all ``total`` images."""
    tty = sys.stderr.isatty()  # in a log file: an update every 10 s at most, not every batch
    bar = tqdm(total=total, desc=desc or "sampling", unit="img", disable=not progress,
               mininterval=0.1 if tty else 10.0)  # fmt: skip
    device = next(model.parameters()).device
    images, seconds, timed, gflops = [], 0.0, 0, None
    for index, start in enumerate(range(0, total, batch_size)):
        rows = slice(start, min(start + batch_size, total))
        counting = count_flops and index == 0
        with FlopCounterMode(display=False) if counting else nullcontext() as counter:
            with Stopwatch(device) as watch:
                images.append(run_batch(rows))
        n = rows.stop - rows.start
        if counting:
            gflops, first = counter.get_total_flops() / n / 1e9, watch.seconds
        else:
            seconds, timed = seconds + watch.seconds, timed + n
        bar.update(n)
    bar.close()
    if count_flops:
        seconds = seconds * total / timed if timed else first
    return torch.cat(images), seconds, gflops


def _image_nfc(model: nn.Module, config: CacheMethod | None, n: int, steps: int) -> torch.Tensor:
    """Per image: the mean NFC of its cond row i and uncond row n + i. (n,)"""
    if config is None:
        return torch.full((n,), float(steps))
    rows = torch.tensor(relcache.stats(model).row_nfc)  # (2n,)
    return (rows[:n] + rows[n:]) / 2


def _image_schedules(
    model: nn.Module, config: CacheMethod | None, n: int, steps: int
) -> list[list[int]]:
    """Per image: the full steps of its cond row (row i of the CFG-doubled batch)."""
    if config is None:
        return [list(range(steps)) for _ in range(n)]
    return [list(rows) for rows in relcache.stats(model).row_schedules[:n]]


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory window on a GPU (process RSS has no reset)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> tuple[float, float | None]:
    """This process's peak resident memory and peak GPU memory (None on CPU), in MiB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    gpu = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return rss, gpu


def sampling_kwargs(settings: Any) -> dict:
    """``run_method`` keywords from any settings with steps / cfg_scale / batch_size / progress."""
    return dict(
        steps=settings.steps,
        cfg_scale=settings.cfg_scale,
        batch_size=settings.batch_size,
        progress=settings.progress,
    )
