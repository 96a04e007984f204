"""Datasets: Fashion-MNIST from local IDX files."""

from relcache.data.fashion_mnist import (
    CLASS_NAMES,
    load_fashion_mnist,
    to_model_range,
    to_uint8,
)

__all__ = ["CLASS_NAMES", "load_fashion_mnist", "to_model_range", "to_uint8"]
