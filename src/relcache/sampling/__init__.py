"""Diffusion sampling: DiT/ADM Gaussian schedule, respacing, DDIM and classifier-free guidance."""

from relcache.sampling.ddim import (
    DDIMSchedule,
    ModelFn,
    cfg_model_fn,
    conditional_model_fn,
    ddim_sample,
    ddim_schedule,
    denoise,
    generate,
    linear_beta_schedule,
    respace_betas,
    sequential_cfg_model_fn,
    space_timesteps,
)

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
