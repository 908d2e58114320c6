"""Evaluation helpers shared by the objectives."""

from __future__ import annotations

import torch


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve (scikit-learn); NaN if one class is absent."""
    # imported here: it takes seconds, which a plain `import electra_kit` need not pay
    from sklearn.metrics import roc_auc_score

    labels = labels.flatten().bool().numpy()
    if labels.all() or not labels.any():
        return float("nan")
    return float(roc_auc_score(labels, scores.flatten().double().numpy()))


class MeanAccumulator:
    """Token-weighted means of per-batch metrics, summed on device and read once at the end."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.weights: dict[str, float] = {}

    def add(self, metrics: dict[str, torch.Tensor], weight: float = 1.0) -> None:
        for key, value in metrics.items():
            value = value.detach().float() * weight
            self.sums[key] = self.sums[key] + value if key in self.sums else value
            self.weights[key] = self.weights.get(key, 0.0) + weight

    def result(self) -> dict[str, float]:
        return {k: float(v) / self.weights[k] for k, v in self.sums.items() if self.weights[k] > 0}
