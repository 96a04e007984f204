import math

import numpy as np
import pytest
import torch
from torch import nn

from relcache.evaluation.metrics import (
    class_accuracy,
    extract_features,
    fd_to_reference,
    fd_to_test_set,
    feature_statistics,
    frechet_distance,
    psnr,
    psnr_per_image,
    ssim,
)


class ToyClassifier(nn.Module):
    """Deterministic stand-in: features = fixed random projection of the pixels (N, 8)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(28 * 28, 8)
        self.head = nn.Linear(8, 10)

    def features(self, x):
        return torch.tanh(self.proj(x.flatten(1)))

    def forward(self, x):
        return self.head(self.features(x))


def images(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g) * 2 - 1


def test_identical_images():
    x = images(4, 0)
    assert psnr(x, x.clone()) == math.inf
    assert torch.isinf(psnr_per_image(x, x)).all()
    assert ssim(x, x.clone()) == pytest.approx(1.0, abs=1e-6)


def test_psnr_matches_hand_formula():
    x = torch.zeros(3, 1, 28, 28)
    ref = x + 0.1  # MSE = 0.01 for every image
    expected = 10 * math.log10(2.0**2 / 0.01)
    assert psnr(x, ref) == pytest.approx(expected, rel=1e-5)


def test_psnr_is_mean_over_images_and_inf_if_any_identical():
    x = torch.zeros(2, 1, 28, 28)
    ref = torch.stack([x[0] + 0.1, x[1] + 0.2])  # MSE 0.01 and 0.04
    per_image = [10 * math.log10(4 / 0.01), 10 * math.log10(4 / 0.04)]
    assert psnr(x, ref) == pytest.approx(sum(per_image) / 2, rel=1e-5)
    ref[1] = x[1]
    values = psnr_per_image(x, ref)
    assert values[0].item() == pytest.approx(per_image[0], rel=1e-5)
    assert values[1].item() == math.inf
    assert psnr(x, ref) == math.inf


def test_ssim_decreases_with_noise():
    x = images(4, 0).clamp(-0.5, 0.5)
    noisy = x + 0.1 * images(4, 1)
    assert ssim(x, noisy) < 1.0


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="same shape"):
        psnr(images(2, 0), images(3, 0))


def test_feature_statistics_is_float64_mean_and_unbiased_cov():
    f = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
    mu, sigma = feature_statistics(f)
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    np.testing.assert_allclose(mu, f.double().mean(0).numpy())
    np.testing.assert_allclose(sigma, np.cov(f.double().numpy(), rowvar=False))
    with pytest.raises(ValueError):
        feature_statistics(torch.randn(1, 4))


def test_fd_of_identical_stats_is_zero():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(5000, 16))
    mu, sigma = feature_statistics(f)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-8)


def test_fd_of_two_samples_of_one_gaussian_is_small():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(20000, 8)), rng.normal(size=(20000, 8))
    fd = frechet_distance(*feature_statistics(a), *feature_statistics(b))
    assert 0 <= fd < 0.01


def test_fd_diagonal_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    v1, v2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
    fd = frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2))
    assert fd == pytest.approx(expected, rel=1e-10)


def test_fd_equal_covariances_is_mean_distance():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(6, 6))
    sigma = a @ a.T + np.eye(6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    assert frechet_distance(mu1, sigma, mu2, sigma) == pytest.approx(
        np.sum((mu1 - mu2) ** 2), rel=1e-8
    )


def test_fd_singular_covariance_is_finite():
    rng = np.random.default_rng(2)
    f = np.zeros((100, 10))
    f[:, :3] = rng.normal(size=(100, 3))  # rank 3 covariance
    mu, sigma = feature_statistics(f)
    fd = frechet_distance(mu, sigma, mu + 1.0, sigma)
    assert np.isfinite(fd) and fd == pytest.approx(10.0, abs=1e-3)


def test_fd_shape_mismatch_raises():
    with pytest.raises(ValueError, match="inconsistent shapes"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_extract_features_batch_size_independent_and_deterministic():
    model, x = ToyClassifier(), images(37, 0)
    f1 = extract_features(x, model, batch_size=5)
    f2 = extract_features(x, model, batch_size=512)
    assert f1.shape == (37, 8) and f1.dtype == torch.float64
    torch.testing.assert_close(f1, f2, atol=1e-6, rtol=0)
    torch.testing.assert_close(f1, extract_features(x, model, batch_size=5), atol=0, rtol=0)


def test_fd_independent_of_batch_size():
    model, x, ref = ToyClassifier(), images(300, 0), images(300, 1)
    a = fd_to_reference(x, ref, model, batch_size=7)
    b = fd_to_reference(x, ref, model, batch_size=512)
    assert a == pytest.approx(b, rel=1e-5)


def test_fd_to_reference_of_same_images_is_zero():
    model, x = ToyClassifier(), images(200, 0)
    assert fd_to_reference(x, x.clone(), model) == pytest.approx(0.0, abs=1e-8)


def test_fd_to_test_set_with_explicit_stats():
    model, x, ref = ToyClassifier(), images(200, 0), images(200, 1)
    stats = feature_statistics(extract_features(ref, model))
    assert fd_to_test_set(x, model, stats=stats) == pytest.approx(
        fd_to_reference(x, ref, model), rel=1e-10
    )


def test_class_accuracy_and_uint8_input():
    model = ToyClassifier()
    x = (torch.rand(20, 28, 28, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    with torch.no_grad():
        preds = model(x.float().div(127.5).sub(1).unsqueeze(1)).argmax(1)
    assert class_accuracy(x, preds, model) == 1.0
    assert class_accuracy(x, (preds + 1) % 10, model) == 0.0
    with pytest.raises(ValueError, match="labels"):
        class_accuracy(x, preds[:5], model)
