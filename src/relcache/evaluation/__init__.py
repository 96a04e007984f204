"""Evaluation: the Fashion-MNIST feature classifier and sample-quality metrics."""
