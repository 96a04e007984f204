"""Gaussian diffusion schedule (DiT/ADM), timestep respacing, DDIM sampling and CFG wrappers.

Conventions follow ADM's ``gaussian_diffusion.py`` / ``respace.py`` as used by DiT's ``sample.py``:
linear betas 1e-4..0.02 over 1000 steps, evenly strided respacing, eps prediction (the first
``C`` output channels; the rest are the learned variance, unused by DDIM), ``clip_denoised=False``
and the model called with the *original* 1000-scale timestep index of each respaced step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from relcache.sampling.hooks import run_hooks, step_hooks

__all__ = [
    "DDIMSchedule",
    "ModelFn",
    "cfg_model_fn",
    "conditional_model_fn",
    "ddim_sample",
    "ddim_schedule",
    "denoise",
    "generate",
    "linear_beta_schedule",
    "respace_betas",
    "sequential_cfg_model_fn",
    "space_timesteps",
]

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``model_fn(x, t) -> output``: x (N, C, H, W), t (N,) original timesteps, output (N, C', H, W)."""

NUM_TRAIN_TIMESTEPS = 1000


def linear_beta_schedule(num_timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """ADM's linear betas, 1e-4..0.02 scaled to ``num_timesteps`` (float64, (num_timesteps,))."""
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    scale = 1000.0 / num_timesteps
    return torch.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=torch.float64)


def space_timesteps(num_timesteps: int, section_counts: str | int | Sequence[int]) -> list[int]:
    """Timesteps kept by ADM's ``space_timesteps`` ("50", "10,15,20" or "ddim50"), ascending."""
    if isinstance(section_counts, int):
        section_counts = [section_counts]
    elif isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            desired_count = int(section_counts[len("ddim") :])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired_count:
                    return list(range(0, num_timesteps, stride))
            raise ValueError(
                f"cannot create exactly {desired_count} steps from {num_timesteps} with an integer "
                'stride; use the evenly strided form, e.g. "50" instead of "ddim50"'
            )
        section_counts = [int(x) for x in section_counts.split(",")]
    if not section_counts or any(c < 1 for c in section_counts):
        raise ValueError(f"section counts must be positive ints, got {section_counts!r}")
    size_per = num_timesteps // len(section_counts)
    extra = num_timesteps % len(section_counts)
    start_idx = 0
    all_steps: list[int] = []
    for i, section_count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < section_count:
            raise ValueError(
                f"cannot divide a section of {size} steps into {section_count}; ask for at most "
                f"{size} steps per section"
            )
        frac_stride = 1.0 if section_count <= 1 else (size - 1) / (section_count - 1)
        cur_idx = 0.0
        for _ in range(section_count):  # accumulated float stride, rounded, exactly as ADM
            all_steps.append(start_idx + round(cur_idx))
            cur_idx += frac_stride
        start_idx += size
    return sorted(set(all_steps))


def respace_betas(betas: torch.Tensor, use_timesteps: Sequence[int]) -> torch.Tensor:
    """Respaced betas ``1 - abar[t_k] / abar[t_{k-1}]`` (ADM ``SpacedDiffusion``)."""
    alphas_cumprod = torch.cumprod(1.0 - betas.to(torch.float64), dim=0)  # (T,)
    kept = torch.as_tensor(sorted(use_timesteps), dtype=torch.long)  # (S,)
    abar = alphas_cumprod[kept]  # (S,)
    abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])  # (S,)
    return 1.0 - abar / abar_prev  # (S,)


@dataclass(frozen=True)
class DDIMSchedule:
    """A respaced schedule: original timestep indices and cumulative alphas, step 0 = t_min."""

    timesteps: torch.Tensor  # (S,) long, original timestep index of each respaced step, ascending
    alphas_cumprod: torch.Tensor  # (S,) float64, of the respaced process

    def __post_init__(self) -> None:
        if self.timesteps.shape != self.alphas_cumprod.shape or self.timesteps.ndim != 1:
            raise ValueError("timesteps and alphas_cumprod must be 1-D tensors of the same length")

    def __len__(self) -> int:
        return int(self.timesteps.shape[0])

    @property
    def alphas_cumprod_prev(self) -> torch.Tensor:
        """Cumulative alphas of the previous respaced step (1 before the first)."""
        return torch.cat([self.alphas_cumprod.new_ones(1), self.alphas_cumprod[:-1]])  # (S,)


def ddim_schedule(
    steps: int | str = 50, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS
) -> DDIMSchedule:
    """The respaced linear schedule DiT samples with (``steps=50`` == respacing "50")."""
    section = str(steps) if isinstance(steps, int) else steps
    use = space_timesteps(num_train_timesteps, section)
    betas = respace_betas(linear_beta_schedule(num_train_timesteps), use)
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)  # (S,)
    return DDIMSchedule(torch.as_tensor(use, dtype=torch.long), alphas_cumprod)


def ddim_sample(
    model_fn: ModelFn,
    noise: torch.Tensor,
    schedule: DDIMSchedule,
    *,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    progress: bool = False,
    callback: Callable[[dict], None] | None = None,
    step_context: Callable[[int], AbstractContextManager] | None = None,
) -> torch.Tensor:
    """DDIM (Song et al., 2021, Eq. 12) from ``noise`` at t_max to x_0, as ADM's ``ddim_sample``.

    ``step_context(i)`` wraps the model call of step i (a cache told the step instead of reading
    the timestep: ``sampling.hooks``). No value is read back from the device.
    """
    x = noise
    c = noise.shape[1]
    abar_all = schedule.alphas_cumprod.tolist()
    abar_prev_all = schedule.alphas_cumprod_prev.tolist()
    timesteps = schedule.timesteps.to(x.device)  # (S,) one copy, not one per step
    indices = range(len(schedule) - 1, -1, -1)
    for i, index in enumerate(_progress(indices, progress)):
        t = timesteps[index].expand(x.shape[0])  # (N,)
        with step_context(i) if step_context is not None else nullcontext():
            out = model_fn(x, t)  # (N, C', H, W)
        model_eps = out[:, :c].to(x.dtype)  # (N, C, H, W)
        abar, abar_prev = abar_all[index], abar_prev_all[index]
        # ADM goes eps -> x0 -> eps with float32 coefficients; kept for numerical parity.
        recip, recipm1 = _f32(math.sqrt(1.0 / abar)), _f32(math.sqrt(1.0 / abar - 1.0))
        pred_xstart = recip * x - recipm1 * model_eps  # (N, C, H, W)
        eps = (recip * x - pred_xstart) / recipm1  # (N, C, H, W)
        sigma = eta * math.sqrt((1 - abar_prev) / (1 - abar)) * math.sqrt(1 - abar / abar_prev)
        mean = pred_xstart * _f32(math.sqrt(abar_prev)) + eps * _f32(
            math.sqrt(1 - abar_prev - sigma**2)
        )  # (N, C, H, W)
        if sigma > 0 and index > 0:
            gen_device = x.device if generator is None else generator.device
            z = torch.randn(x.shape, generator=generator, device=gen_device, dtype=x.dtype)
            mean = mean + _f32(sigma) * z.to(x.device)  # (N, C, H, W)
        x = mean
        if callback is not None:
            callback(
                {
                    "i": i,
                    "index": index,
                    "t": t,
                    "x": x,
                    "pred_xstart": pred_xstart,
                    "eps": eps,
                    "model_output": out,
                }
            )
    return x


def _f32(value: float) -> float:
    """Round a Python float to float32 (ADM extracts its float64 schedule arrays as float32)."""
    return float(np.float32(value))


def _progress(iterable: Sequence[int], enabled: bool) -> Sequence[int]:
    """Wrap ``iterable`` in a tqdm bar when enabled and stderr is a terminal (a per-step bar
    in a log file would write a line per update, nested in the caller's bars)."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc="DDIM", leave=False, disable=None)  # None: off when not a TTY


def _null_labels(model: nn.Module, y: torch.Tensor, null_class: int | None) -> torch.Tensor:
    """The null-class label batch (``num_classes``) matching ``y``."""
    if null_class is None:
        null_class = int(model.num_classes)
    return torch.full_like(y, null_class)


def _check_guidance(guidance_channels: int | None, eps_channels: int) -> int:
    """Resolve ``guidance_channels`` (None = all eps channels) and validate it."""
    if guidance_channels is None:
        return eps_channels
    if not 1 <= guidance_channels <= eps_channels:
        raise ValueError(
            f"guidance_channels={guidance_channels} but the model predicts {eps_channels} eps "
            f"channel(s); pass guidance_channels=None to guide all of them (3 only fits DiT's "
            f"4-channel latents)"
        )
    return guidance_channels


def _combine_cfg(
    cond: torch.Tensor, uncond: torch.Tensor, cfg_scale: float, g: int
) -> torch.Tensor:
    """DiT's ``forward_with_cfg`` combination of cond and uncond (N, ...) outputs into (2N, ...)."""
    half_eps = uncond[:, :g] + cfg_scale * (cond[:, :g] - uncond[:, :g])  # (N, g, H, W)
    eps = torch.cat([half_eps, half_eps], dim=0)  # (2N, g, H, W)
    rest = torch.cat([cond[:, g:], uncond[:, g:]], dim=0)  # (2N, C'-g, H, W)
    return torch.cat([eps, rest], dim=1)  # (2N, C', H, W)


def conditional_model_fn(model: nn.Module, y: torch.Tensor) -> ModelFn:
    """Plain class-conditional ``model_fn``: ``model(x, t, y)``."""

    def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model(x, t, y)

    return model_fn


def cfg_model_fn(
    model: nn.Module,
    y: torch.Tensor,
    cfg_scale: float,
    guidance_channels: int | None = 3,
    *,
    null_class: int | None = None,
) -> ModelFn:
    """DiT's ``forward_with_cfg`` on a 2N batch: one call on [cond; null] rows (Ho & Salimans)."""
    y_null = _null_labels(model, y, null_class)
    y_all = torch.cat([y, y_null], dim=0)  # (2N,)

    def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        g = _check_guidance(guidance_channels, x.shape[1])
        half = x[: len(x) // 2]  # (N, C, H, W)
        combined = torch.cat([half, half], dim=0)  # (2N, C, H, W)
        out = model(combined, t, y_all)  # (2N, C', H, W)
        cond, uncond = torch.split(out, len(out) // 2, dim=0)  # 2 x (N, C', H, W)
        return _combine_cfg(cond, uncond, cfg_scale, g)  # (2N, C', H, W)

    return model_fn


def sequential_cfg_model_fn(
    model: nn.Module,
    y: torch.Tensor,
    cfg_scale: float,
    guidance_channels: int | None = 3,
    *,
    null_class: int | None = None,
) -> ModelFn:
    """``cfg_model_fn`` with two model calls per step: the cond batch, then the null-class batch."""
    y_null = _null_labels(model, y, null_class)

    def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        g = _check_guidance(guidance_channels, x.shape[1])
        n = len(x) // 2
        half = x[:n]  # (N, C, H, W)
        cond = model(half, t[:n], y)  # (N, C', H, W)
        uncond = model(half, t[n:], y_null)  # (N, C', H, W)
        return _combine_cfg(cond, uncond, cfg_scale, g)  # (2N, C', H, W)

    return model_fn


def _model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter (CPU for parameterless modules)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def denoise(
    model: nn.Module,
    noise: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int | str,
    cfg_scale: float,
    guided: bool,
    guidance_channels: int | None = None,
    sequential_cfg: bool = False,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    progress: bool = False,
    callback: Callable[[dict], None] | None = None,
    step_context: Callable[[int], AbstractContextManager] | None = None,
) -> torch.Tensor:
    """DDIM from x_T = ``noise`` (N, C, H, W) to x_0 (N, C, H, W), with CFG iff ``guided``.

    The generation runs inside every registered run hook and, unless ``step_context(i)`` is
    given, step i's model call inside every registered step hook (``sampling.hooks``).
    """
    if guided:
        wrap = sequential_cfg_model_fn if sequential_cfg else cfg_model_fn
        model_fn = wrap(model, y, cfg_scale, guidance_channels)
        noise = torch.cat([noise, noise], dim=0)  # (2N, C, H, W): cond rows, then null rows
    else:
        model_fn = conditional_model_fn(model, y)
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else noise.dtype
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), run_hooks(model):  # e.g. a cache starts afresh with each generation
            x = ddim_sample(
                lambda x, t: model_fn(x.to(dtype), t).float(),  # latents stay float32
                noise,
                ddim_schedule(steps),
                eta=eta,
                generator=generator,
                progress=progress,
                callback=callback,
                step_context=step_context or (lambda i: step_hooks(model, i)),
            )  # (2N or N, C, H, W)
    finally:
        model.train(was_training)
    return x[: len(y)]  # (N, C, H, W)


def generate(
    model: nn.Module,
    class_labels: torch.Tensor | Sequence[int],
    *,
    steps: int | str = 50,
    cfg_scale: float = 1.5,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    guidance_channels: int | None = None,
    sequential_cfg: bool = False,
    eta: float = 0.0,
    progress: bool = True,
    device: str | torch.device | None = None,
    callback: Callable[[dict], None] | None = None,
) -> torch.Tensor:
    """Class-conditional DDIM samples (N, C, H, W) as DiT's ``sample.py`` (CFG iff scale != 1)."""
    # guidance_channels=None guides every eps channel; pass 3 for DiT-XL/2's protocol (sample.py).
    # seed=None means seed 0: generation is always reproducible unless a generator is passed.
    if seed is not None and generator is not None:
        raise ValueError("pass either seed or generator, not both")
    cfg = model.config
    device = _model_device(model) if device is None else torch.device(device)
    y = torch.as_tensor(class_labels, dtype=torch.long).reshape(-1).to(device)  # (N,)
    if y.numel() == 0:
        raise ValueError("class_labels is empty; pass at least one label")
    if int(y.min()) < 0 or int(y.max()) >= cfg.num_classes:
        raise ValueError(f"class labels must lie in [0, {cfg.num_classes}); got {y.tolist()}")
    if generator is None:
        generator = torch.Generator().manual_seed(0 if seed is None else seed)
    shape = (len(y), cfg.in_channels, cfg.input_size, cfg.input_size)
    # Noise is drawn on the CPU so a seed gives the same images on every device.
    z = torch.randn(shape, generator=generator, dtype=torch.float32).to(device)  # (N, C, H, W)
    return denoise(
        model,
        z,
        y,
        steps=steps,
        cfg_scale=cfg_scale,
        guided=cfg_scale != 1.0,
        guidance_channels=guidance_channels,
        sequential_cfg=sequential_cfg,
        eta=eta,
        generator=generator,
        progress=progress,
        callback=callback,
    )  # (N, C, H, W)
