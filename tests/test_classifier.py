import math

import numpy as np
import pytest
import torch

from relcache.data.fashion_mnist import DEFAULT_ROOT, load_fashion_mnist, to_model_range
from relcache.evaluation.metrics import class_accuracy, fd_to_test_set, load_test_stats
from relcache.shipped import classifier_path, load_classifier, save_classifier
from relcache.shipped.classifier import FashionClassifier, train_classifier

HAS_DATA = (DEFAULT_ROOT / "t10k-images-idx3-ubyte.gz").exists()
needs_data = pytest.mark.skipif(not HAS_DATA, reason="dataset-fashion-mnist not installed")


@pytest.fixture(scope="module")
def shipped():
    return load_classifier()


def test_shipped_weights_load_in_eval_mode(shipped):
    assert classifier_path().is_file()
    assert not shipped.training
    x = torch.zeros(3, 1, 28, 28)
    with torch.no_grad():
        assert shipped(x).shape == (3, 10)
        assert shipped.features(x).shape == (3, 128)


def test_rejects_wrong_input_shape(shipped):
    with pytest.raises(ValueError, match=r"\(N, 1, 28, 28\)"):
        shipped(torch.zeros(2, 28, 28))


def test_save_load_round_trip(tmp_path, shipped):
    save_classifier(shipped, tmp_path / "c.safetensors")
    again = load_classifier(tmp_path / "c.safetensors")
    for (k, a), b in zip(shipped.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_shipped_test_stats_shapes():
    mu, sigma = load_test_stats()
    assert mu.shape == (128,) and sigma.shape == (128, 128)
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    np.testing.assert_allclose(sigma, sigma.T)


def test_train_classifier_is_deterministic():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 28, 28, generator=g) * 2 - 1
    y = torch.randint(0, 10, (64,), generator=g)
    a = train_classifier(x, y, epochs=1, seed=3, batch_size=32, progress=False)
    b = train_classifier(x, y, epochs=1, seed=3, batch_size=32, progress=False)
    assert not a.training
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    with pytest.raises(ValueError, match="to_model_range"):
        train_classifier(x.squeeze(1), y, epochs=1, seed=0)
    assert isinstance(a, FashionClassifier)


@needs_data
def test_shipped_accuracy_on_test_images(shipped):
    x, y = load_fashion_mnist("test")
    assert class_accuracy(to_model_range(x[:1000]), y[:1000], shipped) >= 0.9


@needs_data
def test_shipped_stats_match_shipped_weights(shipped):
    x, _ = load_fashion_mnist("test")
    fd = fd_to_test_set(to_model_range(x), shipped)
    assert math.isfinite(fd) and fd < 1e-3
