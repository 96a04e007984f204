"""Quality of cached samples: against full compute (PSNR, SSIM, FD2FC) and the data (FD, accuracy).

Shared by the demo and the bench; the reference's feature statistics are computed once.
"""

from __future__ import annotations

import torch
from torch import nn

from relcache.evaluation.runner import Generation


class Quality:
    """Quality against full compute (PSNR, SSIM, FD2FC) and data (FD to test set, accuracy)."""

    def __init__(self, ref: Generation, labels: torch.Tensor, classifier: nn.Module | None):
        from relcache.evaluation import metrics

        self.m, self.ref, self.labels = metrics, ref, labels
        fits = classifier is not None and tuple(ref.images.shape[1:]) == (1, 28, 28)
        self.classifier = classifier if fits else None
        if self.classifier is not None:
            feats = metrics.extract_features(ref.images, self.classifier)
            self.ref_stats = metrics.feature_statistics(feats)
            self.test_stats = metrics.load_test_stats()

    def __call__(self, images: torch.Tensor) -> dict:
        m, row = self.m, {}
        row["psnr"] = m.psnr(images, self.ref.images)
        row["ssim"] = m.ssim(images, self.ref.images)
        if self.classifier is None:  # no feature space for this image shape
            return {**row, "fd2fc": None, "fd": None, "class_accuracy": None}
        stats = m.feature_statistics(m.extract_features(images, self.classifier))
        row["fd2fc"] = m.frechet_distance(*stats, *self.ref_stats)
        row["fd"] = m.frechet_distance(*stats, *self.test_stats)
        row["class_accuracy"] = m.class_accuracy(images, self.labels, self.classifier)
        return row
