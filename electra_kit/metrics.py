"""Evaluation helpers shared by the objectives."""

from __future__ import annotations

import torch


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties averaged); NaN if one class is absent."""
    scores, labels = scores.flatten().double(), labels.flatten().bool()
    n_pos = int(labels.sum())
    n_neg = labels.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = scores.argsort()
    sorted_scores = scores[order]
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, scores.numel() + 1, dtype=torch.double)
    # average the ranks of tied scores
    uniq, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    if len(uniq) < scores.numel():
        ends = counts.cumsum(0).double()
        mean_rank = ends - (counts.double() - 1) / 2
        ranks[order] = mean_rank[inverse]
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


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
