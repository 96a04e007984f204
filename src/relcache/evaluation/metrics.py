"""Sample-quality metrics as small pure stages: images -> features -> statistics -> metric.

Images are float tensors (N, 1, 28, 28) in [-1, 1] (uint8 (N, 28, 28) is converted with
``relcache.data.to_model_range``). Features come from the project's Fashion-MNIST classifier
(``relcache.shipped.classifier``), whose 128-d penultimate layer replaces Inception's pool3:

- FD2FC  (``fd_to_reference``): Frechet distance between the features of cached samples and of the
  full-compute samples drawn from the same noise, i.e. how far caching moves the distribution.
- FD-test (``fd_to_test_set``): Frechet distance to the Fashion-MNIST test set, using the statistics
  shipped in ``relcache/assets/fashion_mnist_test_stats.npz`` (computed with the shipped weights).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

from relcache.data.fashion_mnist import to_model_range
from relcache.shipped.loading import asset_path

DATA_RANGE = 2.0  # images live in [-1, 1]
TEST_STATS_NAME = "fashion_mnist_test_stats.npz"


def _as_model_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) / float (N, 28, 28) / float (N, 1, 28, 28) -> float (N, 1, 28, 28)."""
    if images.dtype == torch.uint8:
        return to_model_range(images)
    if not images.is_floating_point():
        raise ValueError(f"images must be uint8 or float in [-1, 1], got {images.dtype}")
    if images.ndim == 3:
        images = images.unsqueeze(1)  # (N, 1, H, W)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, H, W) or (N, C, H, W), got {tuple(images.shape)}")
    return images.float()


def _check_pair(x: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x, ref = _as_model_input(x), _as_model_input(ref)
    if x.shape != ref.shape:
        raise ValueError(
            f"x and ref must have the same shape, got {tuple(x.shape)} and {tuple(ref.shape)}"
        )
    if x.shape[0] == 0:
        raise ValueError("x and ref are empty")
    return x, ref


# --- pixel metrics ------------------------------------------------------------------------------


def psnr_per_image(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """PSNR of each image pair in dB, data range 2; ``inf`` where the pair is identical. (N,)"""
    x, ref = _check_pair(x, ref)
    mse = (x - ref).pow(2).flatten(1).mean(1)  # (N,)
    values = peak_signal_noise_ratio(
        x, ref, data_range=DATA_RANGE, reduction="none", dim=(1, 2, 3)
    )  # (N,)
    return torch.where(mse == 0, torch.full_like(values, float("inf")), values)


def psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Mean over images of the per-image PSNR (dB, data range 2).

    An identical pair has PSNR ``inf``, so the mean is ``inf`` as soon as one pair is identical
    (e.g. a cache that never skips). Use ``psnr_per_image`` to inspect or filter such pairs.
    """
    return float(psnr_per_image(x, ref).mean())


def ssim(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Mean SSIM over images (Gaussian window 11, sigma 1.5, data range 2); 1.0 when identical."""
    x, ref = _check_pair(x, ref)
    return float(structural_similarity_index_measure(x, ref, data_range=DATA_RANGE))


# --- features and statistics --------------------------------------------------------------------


@torch.no_grad()
def extract_features(
    images: torch.Tensor, classifier: nn.Module, batch_size: int = 512
) -> torch.Tensor:
    """Classifier ``features`` of all images, batched, under ``no_grad``: (N, D) float64 on CPU."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    images = _as_model_input(images)
    device = next(classifier.parameters()).device
    was_training = classifier.training
    classifier.eval()
    try:
        chunks = [
            classifier.features(images[i : i + batch_size].to(device)).double().cpu()  # (B, D)
            for i in range(0, images.shape[0], batch_size)
        ]
    finally:
        classifier.train(was_training)
    return torch.cat(chunks)  # (N, D)


def feature_statistics(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), both float64."""
    f = np.asarray(features.detach().cpu() if torch.is_tensor(features) else features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be (N, D) with N >= 2, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Frechet distance of two Gaussians: |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)).

    Heusel et al. 2017 (FID), Eq. 6. Tr (S1 S2)^(1/2) is computed as the sum of square roots of
    the eigenvalues of the symmetric PSD matrix S1^(1/2) S2 S1^(1/2) (same spectrum as S1 S2),
    which stays real and stable for the rank-deficient covariances of small sample sets.
    """
    mu1, mu2 = (
        np.atleast_1d(np.asarray(mu1, np.float64)),
        np.atleast_1d(np.asarray(mu2, np.float64)),
    )
    s1, s2 = (
        np.atleast_2d(np.asarray(sigma1, np.float64)),
        np.atleast_2d(np.asarray(sigma2, np.float64)),
    )
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(
            f"inconsistent shapes: mu {mu1.shape} / {mu2.shape}, sigma {s1.shape} / {s2.shape}"
        )
    diff = mu1 - mu2  # (D,)
    root1 = _psd_sqrt(s1)  # (D, D)
    middle = root1 @ s2 @ root1  # (D, D) symmetric PSD
    eig = np.linalg.eigvalsh((middle + middle.T) / 2).clip(min=0.0)  # (D,)
    fd = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.sqrt(eig).sum()
    return float(max(fd, 0.0))  # round-off can make identical inputs slightly negative


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a PSD matrix (negative round-off eigenvalues clipped)."""
    w, v = np.linalg.eigh((s + s.T) / 2)  # (D,), (D, D)
    return (v * np.sqrt(w.clip(min=0.0))) @ v.T


# --- metrics on images --------------------------------------------------------------------------


def load_test_stats(path: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Shipped Fashion-MNIST test-set feature statistics ``(mu (128,), sigma (128, 128))``."""
    with np.load(asset_path(TEST_STATS_NAME) if path is None else path) as data:
        return data["mu"].astype(np.float64), data["sigma"].astype(np.float64)


def save_test_stats(path: str | Path, mu: np.ndarray, sigma: np.ndarray, n: int) -> None:
    """Write statistics in the format ``load_test_stats`` reads."""
    np.savez(path, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64), n=n)


def fd_to_reference(
    images: torch.Tensor, ref_images: torch.Tensor, classifier: nn.Module, batch_size: int = 512
) -> float:
    """FD2FC: Frechet distance between classifier features of ``images`` and ``ref_images``."""
    mu1, s1 = feature_statistics(extract_features(images, classifier, batch_size))
    mu2, s2 = feature_statistics(extract_features(ref_images, classifier, batch_size))
    return frechet_distance(mu1, s1, mu2, s2)


def fd_to_test_set(
    images: torch.Tensor,
    classifier: nn.Module,
    stats: tuple[np.ndarray, np.ndarray] | None = None,
    batch_size: int = 512,
) -> float:
    """Frechet distance to the test set; ``stats=None`` uses the shipped statistics, which are only
    meaningful with the shipped classifier (``load_classifier()``)."""
    mu_ref, s_ref = load_test_stats() if stats is None else stats
    mu, s = feature_statistics(extract_features(images, classifier, batch_size))
    return frechet_distance(mu, s, mu_ref, s_ref)


@torch.no_grad()
def class_accuracy(
    images: torch.Tensor, labels: torch.Tensor, classifier: nn.Module, batch_size: int = 512
) -> float:
    """Fraction of images the classifier assigns to ``labels`` (class-conditional fidelity)."""
    images = _as_model_input(images)
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
    device = next(classifier.parameters()).device
    was_training = classifier.training
    classifier.eval()
    try:
        preds = torch.cat(
            [
                classifier(images[i : i + batch_size].to(device)).argmax(1).cpu()  # (B,)
                for i in range(0, images.shape[0], batch_size)
            ]
        )
    finally:
        classifier.train(was_training)
    return float((preds == labels.cpu()).double().mean())
