"""The Fashion-MNIST feature classifier: its definition and training (the FD feature space).

No Inception weights are available offline, so the project trains this network itself
(``scripts/train_classifier.py``) and ships the weights as
``relcache/assets/classifier.safetensors`` (loaded with ``relcache.shipped.load_classifier``).
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

FEATURE_DIM = 128
NUM_CLASSES = 10


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class FashionClassifier(nn.Module):
    """Three conv blocks (32-64-64 channels) -> 128-d feature -> 10 logits; inputs in [-1, 1]."""

    def __init__(self, dropout: float = 0.2):
        super().__init__()
        self.blocks = nn.Sequential(
            _conv_block(1, 32),  # (N, 32, 14, 14)
            _conv_block(32, 64),  # (N, 64, 7, 7)
            _conv_block(64, 64),  # (N, 64, 3, 3)
        )
        self.embed = nn.Linear(64 * 3 * 3, FEATURE_DIM)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 28, 28) in [-1, 1] -> (N, 128) penultimate activations (post-ReLU)."""
        if x.ndim != 4 or x.shape[1:] != (1, 28, 28):
            raise ValueError(f"expected input of shape (N, 1, 28, 28), got {tuple(x.shape)}")
        h = self.blocks(x)  # (N, 64, 3, 3)
        return F.relu(self.embed(h.flatten(1)))  # (N, 128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 28, 28) in [-1, 1] -> (N, 10) logits."""
        return self.head(self.dropout(self.features(x)))  # (N, 10)


def _augment(x: torch.Tensor, generator: torch.Generator, max_shift: int) -> torch.Tensor:
    """Random horizontal flip per image and one random translation per batch (light)."""
    flip = torch.rand(x.shape[0], generator=generator) < 0.5  # (N,)
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)  # (N, 1, 28, 28)
    if max_shift > 0:
        dx, dy = torch.randint(-max_shift, max_shift + 1, (2,), generator=generator).tolist()
        x = F.pad(x, (max_shift,) * 4, value=-1.0)  # background is -1 in model range
        h, w = x.shape[-2] - 2 * max_shift, x.shape[-1] - 2 * max_shift
        x = x[..., max_shift + dy : max_shift + dy + h, max_shift + dx : max_shift + dx + w]
    return x


def train_classifier(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int,
    seed: int,
    batch_size: int = 128,
    lr: float = 3e-3,
    weight_decay: float = 5e-4,
    augment: bool = True,
    max_shift: int = 2,
    progress: bool = True,
) -> FashionClassifier:
    """Train a ``FashionClassifier`` (AdamW, one-cycle LR schedule); returns it in eval mode.

    ``images`` are float (N, 1, 28, 28) in [-1, 1] (see ``relcache.data.to_model_range``);
    ``labels`` are int64 (N,) in 0..9.
    """
    if images.ndim != 4 or images.shape[1:] != (1, 28, 28) or not images.is_floating_point():
        raise ValueError(
            f"images must be float (N, 1, 28, 28) in [-1, 1], got {images.dtype} "
            f"{tuple(images.shape)}; convert uint8 data with relcache.data.to_model_range"
        )
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = FashionClassifier()
    steps_per_epoch = math.ceil(images.shape[0] / batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.2
    )
    labels = labels.long()
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(images.shape[0], generator=generator)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{epochs}", disable=not progress)
        start, total_loss, correct = time.perf_counter(), 0.0, 0
        for step in bar:
            idx = order[step * batch_size : (step + 1) * batch_size]
            x, y = images[idx], labels[idx]  # (B, 1, 28, 28), (B,)
            if augment:
                x = _augment(x, generator, max_shift)
            logits = model(x)  # (B, 10)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += loss.item() * y.shape[0]
            correct += int((logits.argmax(1) == y).sum())
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        if progress:
            n = images.shape[0]
            tqdm.write(
                f"epoch {epoch + 1}: loss {total_loss / n:.4f}, train acc {correct / n:.4f}, "
                f"{time.perf_counter() - start:.1f}s"
            )
    return model.eval()
