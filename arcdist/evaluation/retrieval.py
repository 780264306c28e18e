"""Retrieval figures of the gathered test features, by pytorch-metric-learning's `AccuracyCalculator`.

The test set is both the queries and the reference, each query's own row excluded (`ref_includes_query`); the
neighbours are by cosine similarity for the heads judged by angle and by Euclidean distance for those judged by
position (softmax, center loss), as `head.judged_by` says. k is the largest class's size (R-precision and MAP@R
need R neighbours per query). The k-nearest-neighbour search is PML's `CustomKNN`, batched (no faiss needed).

Large test sets: above MAX_QUERIES images, a seeded sample of MAX_QUERIES of them are the queries (each still
against the whole test set as reference), so memory is MAX_QUERIES x k, not N x k: the figures are then estimates
with a sampling error of about sqrt(p (1 - p) / MAX_QUERIES) (0.1 % at P@1 = 99 %). Up to MAX_QUERIES (MNIST's
10,000 test images) every image is a query, exactly as before.
"""
from __future__ import annotations

import torch

METRICS = ("precision_at_1", "r_precision", "mean_average_precision_at_r")
MAX_QUERIES = 10_000


def retrieval_metrics(features: torch.Tensor, labels: torch.Tensor, by: str = "angle",
                      batch_size: int = 1024, max_queries: int = MAX_QUERIES) -> dict[str, float]:
    """{"precision_at_1", "r_precision", "mean_average_precision_at_r"} of `features` (N, D) against themselves."""
    from pytorch_metric_learning.distances import CosineSimilarity, LpDistance
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN

    distance = CosineSimilarity() if by == "angle" else LpDistance(normalize_embeddings=False)
    calc = AccuracyCalculator(include=METRICS, k="max_bin_count", device=torch.device("cpu"),
                              knn_func=CustomKNN(distance, batch_size=batch_size))
    x = features.detach().float().cpu()
    y = labels.detach().cpu()
    if len(x) <= max_queries:
        return {k: float(v) for k, v in calc.get_accuracy(x, y).items()}
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))  # the sampled queries first: PML's
    x, y = x[order], y[order]  # ref_includes_query wants the queries as the reference's first rows
    return {k: float(v) for k, v in calc.get_accuracy(x[:max_queries], y[:max_queries], x, y, True).items()}
