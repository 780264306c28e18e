"""Retrieval figures of the gathered test features, by pytorch-metric-learning's `AccuracyCalculator`.

The test set is both the queries and the reference, each query's own row excluded (`ref_includes_query`); the
neighbours are by cosine similarity for the heads judged by angle and by Euclidean distance for those judged by
position (softmax, center loss), as `head.judged_by` says. k is the largest class's size (R-precision and MAP@R
need R neighbours per query). The k-nearest-neighbour search is PML's `CustomKNN`, batched (no faiss needed).
"""
from __future__ import annotations

import torch

METRICS = ("precision_at_1", "r_precision", "mean_average_precision_at_r")


def retrieval_metrics(features: torch.Tensor, labels: torch.Tensor, by: str = "angle",
                      batch_size: int = 2048) -> dict[str, float]:
    """{"precision_at_1", "r_precision", "mean_average_precision_at_r"} of `features` (N, D) against themselves."""
    from pytorch_metric_learning.distances import CosineSimilarity, LpDistance
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN

    distance = CosineSimilarity() if by == "angle" else LpDistance(normalize_embeddings=False)
    calc = AccuracyCalculator(include=METRICS, k="max_bin_count", device=torch.device("cpu"),
                              knn_func=CustomKNN(distance, batch_size=batch_size))
    x = features.detach().float().cpu()
    y = labels.detach().cpu()
    return {k: float(v) for k, v in calc.get_accuracy(x, y).items()}
