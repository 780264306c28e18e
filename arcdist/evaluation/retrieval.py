"""Retrieval figures of the gathered test features, by pytorch-metric-learning's `AccuracyCalculator`.

The test set is both the queries and the reference, each query's own row excluded (`ref_includes_query`); the
neighbours are by cosine similarity for the heads judged by angle and by Euclidean distance for those judged by
position (softmax, center loss), as `head.judged_by` says. k is the largest class's size (R-precision and MAP@R
need R neighbours per query). The k-nearest-neighbour search is PML's `CustomKNN`, batched (no faiss needed),
except for 2-D features by angle: on the circle a point's k nearest lie within k places of it in angle order, so
`CircleKNN` takes each query's top k of its 2k + 1 angular neighbours instead of all N, in float64 (the
neighbours of CustomKNN in float64; in float32 the cosines of points closer than 3e-4 rad are all 1.0, and their
order is arbitrary); tests/test_metrics.py compares the two.

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
    """{"precision_at_1", "r_precision", "mean_average_precision_at_r"} of `features` (N, D) against themselves,
    over the queries whose class has another image here (PML leaves out the rest); {} when no class has two (a
    test split of one image per class: nothing to retrieve, no figure rather than NaN)."""
    from pytorch_metric_learning.distances import CosineSimilarity, LpDistance
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN

    x = features.detach().float().cpu()
    distance = CosineSimilarity() if by == "angle" else LpDistance(normalize_embeddings=False)
    knn = CustomKNN(distance, batch_size=batch_size)
    if by == "angle" and x.shape[1] == 2:
        knn = CircleKNN(knn, batch_size)
    calc = AccuracyCalculator(include=METRICS, k="max_bin_count", device=torch.device("cpu"), knn_func=knn)
    y = labels.detach().cpu()
    if len(y) == 0 or torch.unique(y, return_counts=True)[1].max() < 2:
        return {}
    if len(x) <= max_queries:
        return {k: float(v) for k, v in calc.get_accuracy(x, y).items()}
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))  # the sampled queries first: PML's
    x, y = x[order], y[order]  # ref_includes_query wants the queries as the reference's first rows
    return {k: float(v) for k, v in calc.get_accuracy(x[:max_queries], y[:max_queries], x, y, True).items()}


class CircleKNN:
    """PML's knn_func for 2-D features by cosine when the queries are the reference's first rows
    (`ref_includes_query`): the k nearest of each query among its 2k + 1 neighbours in angle order, which hold all
    of them (cosine falls with the angle between two points). Anything else goes to `fallback` (CustomKNN)."""

    def __init__(self, fallback, batch_size: int = 1024):
        self.fallback, self.batch_size = fallback, batch_size

    def __call__(self, query: torch.Tensor, k: int, reference: torch.Tensor, ref_includes_query: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(reference)
        if not ref_includes_query or query.shape[1] != 2 or 2 * k + 1 > n:
            return self.fallback(query, k, reference, ref_includes_query)
        ref = torch.nn.functional.normalize(reference.double(), dim=1)
        order = torch.argsort(torch.atan2(ref[:, 1], ref[:, 0]))
        place = torch.empty_like(order)
        place[order] = torch.arange(n)
        ring = torch.cat([order[-k:], order, order[:k]])  # angle order, wrapped: row p + k is place p
        windows = ring.unfold(0, 2 * k + 1, 1)  # (n, 2k + 1): place p's k neighbours either side, itself in the middle
        points = ref[ring].T.unfold(1, 2 * k + 1, 1)  # (2, n, 2k + 1): their coordinates
        distances = torch.empty(len(query), k, dtype=torch.float64)
        indices = torch.empty(len(query), k, dtype=torch.long)
        for start in range(0, len(query), self.batch_size):
            rows = slice(start, min(start + self.batch_size, len(query)))  # ref holds more rows than the queries
            at = place[rows]
            sims = torch.einsum("bd,dbc->bc", ref[rows], points[:, at])
            sims[:, k] = -2.0  # the query itself (a query is the reference row of its index): never a neighbour
            distances[rows], best = torch.topk(sims, k, dim=1)
            indices[rows] = windows[at].gather(1, best)
        return distances, indices
