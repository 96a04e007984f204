"""The shipped models, their training and their loading.

- ``loading.py``: the one loading path: shipped generator and classifier weights, checkpoints,
  random smoke-test DiTs (``load_model`` picks one for the bench).
- ``classifier.py``: the Fashion-MNIST feature classifier (definition and training).
- ``training.py``: DiT training (ADM losses, EMA, resumable checkpoints).
"""

from relcache.shipped.loading import (
    GENERATOR_PRESET,
    asset_path,
    classifier_path,
    generator_path,
    load_classifier,
    load_generator,
    load_model,
    random_dit,
    save_classifier,
)

__all__ = [
    "GENERATOR_PRESET",
    "asset_path",
    "classifier_path",
    "generator_path",
    "load_classifier",
    "load_generator",
    "load_model",
    "random_dit",
    "save_classifier",
]
