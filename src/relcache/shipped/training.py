"""Train a DiT on an in-memory image tensor, as DiT's ``train.py`` (eps MSE + learned-sigma VLB).

The loss is ADM's ``training_losses`` with ``LossType.MSE`` and learned range variance, which is
what DiT uses: ``mse(eps) + vb``, where ``vb`` is the variational bound term in bits/dim computed
with the eps prediction detached, so it trains only the sigma channels (Nichol & Dhariwal, 2021).
Everything random (batches, timesteps, noise, flips, label dropout) comes from torch's RNG, seeded
inside a forked RNG scope and stored in checkpoints, so a resumed run continues bit-identically.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from relcache.models.dit import DiT, DiTConfig
from relcache.sampling.ddim import NUM_TRAIN_TIMESTEPS, linear_beta_schedule

__all__ = [
    "DiffusionTerms",
    "TrainConfig",
    "TrainResult",
    "diffusion_loss",
    "hardware_string",
    "images_to_model_range",
    "load_training_checkpoint",
    "q_sample",
    "save_training_checkpoint",
    "train",
    "update_ema",
]


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings; ``steps`` is the total target, counted across resumes."""

    steps: int = 10_000
    batch_size: int = 256
    lr: float = 3e-4
    weight_decay: float = 0.0
    warmup_steps: int = 200
    grad_clip: float | None = 1.0
    ema_decay: float = 0.9995
    hflip: bool = True
    seed: int = 0
    bf16: bool = True
    compile: bool = False
    max_minutes: float | None = None
    log_every: int = 50
    checkpoint_every: int | None = None

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"TrainConfig.steps must be >= 0, got {self.steps}")
        if self.batch_size < 1:
            raise ValueError(f"TrainConfig.batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be > 0 (DiT uses 1e-4), got {self.lr}")
        if self.warmup_steps < 0:
            raise ValueError(f"TrainConfig.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"TrainConfig.grad_clip must be > 0 or None, got {self.grad_clip}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(
                f"TrainConfig.ema_decay must be in [0, 1), got {self.ema_decay}; "
                "use ~0.999 for runs of a few thousand steps, 0.9999 for long runs"
            )
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"TrainConfig.max_minutes must be > 0 or None, got {self.max_minutes}")
        if self.log_every < 1:
            raise ValueError(f"TrainConfig.log_every must be >= 1, got {self.log_every}")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise ValueError(
                f"TrainConfig.checkpoint_every must be >= 1 or None, got {self.checkpoint_every}"
            )


class DiffusionTerms:
    """ADM's per-timestep float32 coefficients of the 1000-step linear schedule, on a device."""

    def __init__(
        self, num_timesteps: int = NUM_TRAIN_TIMESTEPS, device: torch.device | str = "cpu"
    ) -> None:
        betas = linear_beta_schedule(num_timesteps)  # (T,) float64
        alphas = 1.0 - betas
        abar = torch.cumprod(alphas, dim=0)
        abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
        post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
        terms = {
            "sqrt_alphas_cumprod": abar.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - abar).sqrt(),
            "sqrt_recip_alphas_cumprod": (1.0 / abar).sqrt(),
            "sqrt_recipm1_alphas_cumprod": (1.0 / abar - 1.0).sqrt(),
            "log_betas": betas.log(),
            "posterior_log_variance_clipped": torch.cat([post_var[1:2], post_var[1:]]).log(),
            "posterior_mean_coef1": betas * abar_prev.sqrt() / (1.0 - abar),
            "posterior_mean_coef2": (1.0 - abar_prev) * alphas.sqrt() / (1.0 - abar),
        }
        self.num_timesteps = num_timesteps
        for name, value in terms.items():
            setattr(self, name, value.to(device=device, dtype=torch.float32))

    def at(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """Coefficient ``name`` at (N,) timesteps, shaped (N, 1, 1, 1) for broadcasting."""
        return getattr(self, name)[t].view(-1, 1, 1, 1)  # (N, 1, 1, 1)


def q_sample(
    x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, terms: DiffusionTerms
) -> torch.Tensor:
    """Forward process ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` (DDPM Eq. 4)."""
    return (
        terms.at("sqrt_alphas_cumprod", t) * x_start
        + terms.at("sqrt_one_minus_alphas_cumprod", t) * noise
    )  # (N, C, H, W)


def _mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over all but the batch dimension."""
    return x.mean(dim=tuple(range(1, x.ndim)))  # (N,)


def _normal_kl(
    mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor
) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (
        -1.0
        + logvar2
        - logvar1
        + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def _approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """ADM's tanh approximation of the standard normal CDF."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def _discretized_gaussian_log_likelihood(
    x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor
) -> torch.Tensor:
    """Log-likelihood of [-1, 1] images discretised to 256 bins under a Gaussian, elementwise."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = _approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = _approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(
        x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta)
    )


def diffusion_loss(
    model_output: torch.Tensor,
    x_start: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    terms: DiffusionTerms,
) -> dict[str, torch.Tensor]:
    """Per-sample ADM losses: "mse" on eps, "vb" (bits/dim, sigma only) and their sum "loss"."""
    c = x_start.shape[1]
    eps = model_output[:, :c]  # (N, C, H, W)
    mse = _mean_flat((noise - eps) ** 2)  # (N,)
    if model_output.shape[1] == c:
        return {"loss": mse, "mse": mse}
    var_values = model_output[:, c : 2 * c]  # (N, C, H, W)
    frac = (var_values + 1.0) / 2.0
    min_log = terms.at("posterior_log_variance_clipped", t)
    max_log = terms.at("log_betas", t)
    model_log_var = frac * max_log + (1.0 - frac) * min_log  # (N, C, H, W)
    # The VLB must not move the mean: it sees the eps prediction detached.
    pred_xstart = (
        terms.at("sqrt_recip_alphas_cumprod", t) * x_t
        - terms.at("sqrt_recipm1_alphas_cumprod", t) * eps.detach()
    )  # (N, C, H, W)
    coef1, coef2 = terms.at("posterior_mean_coef1", t), terms.at("posterior_mean_coef2", t)
    model_mean = coef1 * pred_xstart + coef2 * x_t  # (N, C, H, W)
    true_mean = coef1 * x_start + coef2 * x_t  # (N, C, H, W)
    true_log_var = min_log.expand_as(true_mean)
    kl = _mean_flat(_normal_kl(true_mean, true_log_var, model_mean, model_log_var)) / math.log(2.0)
    nll = -_discretized_gaussian_log_likelihood(x_start, model_mean, 0.5 * model_log_var)
    decoder_nll = _mean_flat(nll) / math.log(2.0)  # (N,)
    vb = torch.where(t == 0, decoder_nll, kl)  # (N,)
    return {"loss": mse + vb, "mse": mse, "vb": vb}


def images_to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, H, W) or (N, C, H, W) to float32 (N, C, H, W) in [-1, 1]."""
    if images.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images, got {images.dtype}; scale floats yourself")
    if images.ndim == 3:
        images = images.unsqueeze(1)  # (N, 1, H, W)
    return images.float() / 127.5 - 1.0  # (N, C, H, W)


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * model`` over trainable parameters."""
    ema_params = [
        p for p, q in zip(ema.parameters(), model.parameters(), strict=True) if q.requires_grad
    ]
    params = [q.detach() for q in model.parameters() if q.requires_grad]
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)


def hardware_string(device: torch.device) -> str:
    """A human-readable description of the training device."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"CPU {platform.processor() or platform.machine()} x{os.cpu_count()} threads"


@dataclass
class TrainResult:
    """The trained model, its EMA copy, and run statistics (JSON-serialisable)."""

    model: DiT
    ema: DiT
    stats: dict = field(default_factory=dict)


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """Torch RNG states to checkpoint (CPU, plus the CUDA device when training there)."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    """Restore RNG states saved by ``_rng_state``."""
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save_training_checkpoint(
    path: str | os.PathLike[str],
    model: DiT,
    ema: DiT,
    optimizer: torch.optim.Optimizer,
    step: int,
    *,
    extra: dict | None = None,
) -> None:
    """Save model, EMA, optimizer, step and RNG state (``ema`` first, so DiT loaders take it)."""
    device = next(model.parameters()).device
    payload = {
        "ema": ema.state_dict(),
        "model": model.state_dict(),
        "opt": optimizer.state_dict(),
        "step": step,
        "rng": _rng_state(device),
        "dit_config": dataclasses.asdict(model.config),
        "extra": extra or {},
    }
    directory = os.path.dirname(os.fspath(path))
    if directory:
        os.makedirs(directory, exist_ok=True)
    tmp = f"{os.fspath(path)}.tmp"
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_training_checkpoint(
    path: str | os.PathLike[str], model: DiT, ema: DiT, optimizer: torch.optim.Optimizer
) -> tuple[int, dict]:
    """Restore a checkpoint from ``save_training_checkpoint``; returns (step, extra)."""
    device = next(model.parameters()).device
    payload = torch.load(path, map_location="cpu", weights_only=True)
    saved = DiTConfig(**payload["dit_config"])
    if saved != model.config:
        raise ValueError(
            f"checkpoint {os.fspath(path)!r} was trained with {saved}, but the model is "
            f"{model.config}; build the model with that config (or the matching --preset)"
        )
    model.load_state_dict(payload["model"])
    ema.load_state_dict(payload["ema"])
    optimizer.load_state_dict(payload["opt"])
    _set_rng_state(payload["rng"], device)
    return int(payload["step"]), dict(payload.get("extra", {}))


def _resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/"auto" -> CUDA when available, else CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def train(
    model: DiT,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: TrainConfig,
    *,
    device: str | torch.device | None = None,
    resume: str | os.PathLike[str] | None = None,
    checkpoint_path: str | os.PathLike[str] | None = None,
    progress: bool = True,
    log: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train ``model`` on float images (N, C, H, W) in [-1, 1] with labels (N,); returns EMA too."""
    mcfg = model.config
    expected = (mcfg.in_channels, mcfg.input_size, mcfg.input_size)
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
        raise ValueError(
            f"images must be (N, {expected[0]}, {expected[1]}, {expected[2]}) for this model, "
            f"got {tuple(images.shape)}; convert uint8 data with images_to_model_range()"
        )
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must be ({images.shape[0]},), got {tuple(labels.shape)}")
    if int(labels.min()) < 0 or int(labels.max()) >= mcfg.num_classes:
        raise ValueError(f"labels must lie in [0, {mcfg.num_classes})")
    device = _resolve_device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    with torch.random.fork_rng(devices=[device.index] if device.type == "cuda" else []):
        return _train(model, images, labels, config, device, resume, checkpoint_path, progress, log)


def _train(
    model: DiT,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: TrainConfig,
    device: torch.device,
    resume: str | os.PathLike[str] | None,
    checkpoint_path: str | os.PathLike[str] | None,
    progress: bool,
    log: Callable[[dict], None] | None,
) -> TrainResult:
    """The training loop of ``train`` (inside a forked RNG scope)."""
    torch.manual_seed(config.seed)
    model = model.to(device).train()
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    images = images.to(device=device, dtype=torch.float32)  # (N, C, H, W), all on device
    labels = labels.to(device=device, dtype=torch.long)  # (N,)
    terms = DiffusionTerms(device=device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=config.lr, weight_decay=config.weight_decay, fused=device.type == "cuda"
    )
    step, extra = 0, {}
    if resume is not None:
        step, extra = load_training_checkpoint(resume, model, ema, optimizer)
    use_bf16 = config.bf16 and device.type == "cuda"

    def compute_loss(
        x0: torch.Tensor, y: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        x_t = q_sample(x0, t, noise, terms)  # (B, C, H, W)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
            out = model(x_t, t, y)  # (B, C_out, H, W)
        return diffusion_loss(out.float(), x0, x_t, t, noise, terms)["loss"].mean()

    # Compiling forward and loss together fuses the many small VLB ops (the run is overhead-bound).
    loss_fn = torch.compile(compute_loss) if config.compile else compute_loss
    start_step, t_start = step, time.perf_counter()
    prior_wall = float(extra.get("wall_time_s", 0.0))
    loss_ema = torch.tensor(float(extra.get("loss_ema", math.nan)), device=device)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.steps, initial=step, desc="train", dynamic_ncols=True)

    def snapshot(last_loss: float | None) -> dict:
        elapsed = time.perf_counter() - t_start
        return {
            "step": step,
            "target_steps": config.steps,
            "loss_ema": float(loss_ema),
            "last_loss": last_loss,
            "wall_time_s": prior_wall + elapsed,
            "this_run_wall_time_s": elapsed,
            "this_run_steps": step - start_step,
            "samples_per_s": (step - start_step) * config.batch_size / max(elapsed, 1e-9),
        }

    def save() -> None:
        if checkpoint_path is not None:
            save_training_checkpoint(
                checkpoint_path, model, ema, optimizer, step, extra=snapshot(None)
            )

    stopped_by_time = False
    last = None
    while step < config.steps:
        if (
            config.max_minutes is not None
            and time.perf_counter() - t_start > 60 * config.max_minutes
        ):
            stopped_by_time = True
            break
        lr = config.lr * min(1.0, (step + 1) / max(1, config.warmup_steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, images.shape[0], (config.batch_size,), device=device)  # (B,)
        x0, y = images[idx], labels[idx]  # (B, C, H, W), (B,)
        if config.hflip:
            flip = torch.rand(config.batch_size, device=device) < 0.5  # (B,)
            x0 = torch.where(flip.view(-1, 1, 1, 1), x0.flip(-1), x0)  # (B, C, H, W)
        t = torch.randint(0, terms.num_timesteps, (config.batch_size,), device=device)  # (B,)
        noise = torch.randn_like(x0)  # (B, C, H, W)
        loss = loss_fn(x0, y, t, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        update_ema(ema, model, min(config.ema_decay, (1 + step) / (10 + step)))
        step += 1
        detached = loss.detach()
        loss_ema = torch.where(torch.isnan(loss_ema), detached, 0.98 * loss_ema + 0.02 * detached)
        if step % config.log_every == 0 or step == config.steps:
            last = float(detached)
            info = snapshot(last)
            if bar is not None:
                bar.update(step - bar.n)
                bar.set_postfix(loss=f"{info['loss_ema']:.4f}", lr=f"{lr:.1e}")
            if log is not None:
                log(info)
        if config.checkpoint_every is not None and step % config.checkpoint_every == 0:
            save()
    if bar is not None:
        bar.update(step - bar.n)
        bar.close()
    save()
    stats = snapshot(last)
    stats.update(
        stopped_by_time=stopped_by_time,
        hardware=hardware_string(device),
        torch_version=torch.__version__,
        bf16=use_bf16,
        compiled=config.compile,
        train_config=dataclasses.asdict(config),
        dit_config=dataclasses.asdict(model.config),
        num_params=sum(p.numel() for p in model.parameters()),
    )
    return TrainResult(model=model, ema=ema, stats=stats)
