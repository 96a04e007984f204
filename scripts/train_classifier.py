"""Train the Fashion-MNIST feature classifier and write the shipped assets.

Writes to ``--out-dir`` (default ``src/relcache/assets``):
  classifier.safetensors           weights (+ metadata: test accuracy, epochs, seed)
  fashion_mnist_test_stats.npz     mean (128,) and covariance (128, 128), float64, of the 10k
                                   test images' ``features``
  classifier_card.md               model card: data, epochs, time, hardware, accuracy, command

Usage:
  OMP_NUM_THREADS=1 python scripts/train_classifier.py --epochs 15 --seed 0
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from relcache.data import load_fashion_mnist, to_model_range
from relcache.evaluation.metrics import (
    TEST_STATS_NAME,
    class_accuracy,
    extract_features,
    feature_statistics,
    save_test_stats,
)
from relcache.shipped.classifier import train_classifier
from relcache.shipped.loading import CLASSIFIER_FILE, save_classifier

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "relcache" / "assets"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _card(args: argparse.Namespace, acc: float, train_s: float, n_train: int, n_params: int) -> str:
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    augment = (
        f"random horizontal flip + per-batch shift of up to {args.max_shift} px"
        if args.augment
        else "none"
    )
    optimiser = (
        f"AdamW, lr {args.lr} (one-cycle), weight decay {args.weight_decay}, "
        f"batch {args.batch_size}"
    )
    return f"""# Fashion-MNIST feature classifier

Feature extractor for the project's FD metrics (stand-in for Inception, which is not available
offline). `relcache.shipped.classifier.FashionClassifier`: three conv blocks (3x3 conv,
BatchNorm, ReLU, 2x2 max-pool; 32-64-64 channels) -> linear 576->128 + ReLU (the **128-d
feature** returned by `features(x)`) -> dropout 0.2 -> linear 128->10.
Inputs: (N, 1, 28, 28) in [-1, 1]. {n_params:,} parameters.

| | |
|---|---|
| Data | Fashion-MNIST (Debian `dataset-fashion-mnist`), train split, {n_train:,} images |
| Augmentation | {augment} |
| Optimiser | {optimiser} |
| Epochs / seed | {args.epochs} / {args.seed} |
| Training time | {train_s:.0f} s ({train_s / 60:.1f} min) |
| Hardware | {_cpu_name()}, {torch.get_num_threads()} torch threads, torch {torch.__version__} |
| **Test accuracy** | **{acc:.4f}** on the 10,000 test images |

`{TEST_STATS_NAME}` holds the mean (128,) and covariance (128, 128), float64, of `features` over
the 10,000 test images, computed with these weights; FD-to-test-set values are only comparable
when both come from the same training run.

Command:

```
{command}
```
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--max-shift", type=int, default=2)
    parser.add_argument("--no-augment", dest="augment", action="store_false")
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    train_x, train_y = load_fashion_mnist("train", args.data_root)
    test_x, test_y = load_fashion_mnist("test", args.data_root)
    start = time.perf_counter()
    model = train_classifier(
        to_model_range(train_x),
        train_y,
        epochs=args.epochs,
        seed=args.seed,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        augment=args.augment,
        max_shift=args.max_shift,
    )
    train_s = time.perf_counter() - start
    test_images = to_model_range(test_x)  # (10000, 1, 28, 28)
    acc = class_accuracy(test_images, test_y, model)
    print(f"test accuracy {acc:.4f}, training {train_s:.0f} s")

    args.out_dir.mkdir(parents=True, exist_ok=True)
    metadata = {"test_accuracy": f"{acc:.4f}", "epochs": str(args.epochs), "seed": str(args.seed)}
    save_classifier(model, args.out_dir / CLASSIFIER_FILE, metadata=metadata)
    mu, sigma = feature_statistics(extract_features(test_images, model))
    save_test_stats(args.out_dir / TEST_STATS_NAME, mu, sigma, n=test_images.shape[0])
    n_params = sum(p.numel() for p in model.parameters())
    card = _card(args, acc, train_s, train_x.shape[0], n_params)
    (args.out_dir / "classifier_card.md").write_text(card)
    print(f"wrote {CLASSIFIER_FILE}, {TEST_STATS_NAME}, classifier_card.md to {args.out_dir}")


if __name__ == "__main__":
    main()
