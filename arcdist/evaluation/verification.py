"""Verification: are two images of one class? Seeded pairs of a split, their similarity, and the figures face
recognition reports (insightface's eval/verification.py protocol): 10-fold accuracy with each fold's threshold
fitted on the other nine, ROC AUC, TAR at FAR 1e-3 and 1e-2, and the threshold to use (fitted on all pairs).

The score is the cosine of the two features (the angular heads' similarity; for softmax and center loss too, as
the common choice). `arcdist evaluate RUN_DIR --pairs N` runs it on the test split.
"""
from __future__ import annotations

import numpy as np

FARS = (1e-3, 1e-2)
FOLDS = 10


def make_pairs(labels: np.ndarray, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`n` pairs (i, j), i != j, of indices into `labels`: the first n // 2 of one class, the rest of two classes,
    then shuffled; drawn by `seed`. Returns i, j, same (bool)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    by_class = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
    pairable = [c for c, idx in by_class.items() if len(idx) >= 2]
    if not pairable or len(by_class) < 2:
        raise ValueError("pairs need a class with two images and at least two classes")
    n_same = n // 2
    cls = rng.choice(pairable, n_same)
    same = np.array([rng.choice(by_class[c], 2, replace=False) for c in cls]).reshape(-1, 2)
    diff = []
    while len(diff) < n - n_same:
        i, j = rng.integers(0, len(labels), 2)
        if labels[i] != labels[j]:
            diff.append((i, j))
    ij = np.concatenate([same, np.array(diff, dtype=np.int64).reshape(-1, 2)])
    flags = np.concatenate([np.ones(n_same, bool), np.zeros(n - n_same, bool)])
    order = rng.permutation(n)
    return ij[order, 0], ij[order, 1], flags[order]


def cosine_scores(features: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    x = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    return np.sum(x[i] * x[j], axis=1)


def best_threshold(scores: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """(threshold, accuracy): "same" when score > threshold, the threshold among the scores' midpoints (and the
    ends) that classifies the most pairs right."""
    order = np.argsort(scores, kind="stable")
    s, y = scores[order], same[order]
    # predicting "same" above position k (exclusive): right = different ones at or below k + same ones above
    diff_below = np.concatenate([[0], np.cumsum(~y)])
    same_above = np.concatenate([[y.sum()], y.sum() - np.cumsum(y)])
    right = diff_below + same_above
    valid = np.concatenate([[True], s[1:] > s[:-1], [True]])  # a cut between equal scores is not a threshold
    k = int(np.argmax(np.where(valid, right, -1)))
    cut = s[0] - 1.0 if k == 0 else s[-1] + 1.0 if k == len(s) else (s[k - 1] + s[k]) / 2
    return float(cut), float(right[k] / len(s))


def roc_auc(scores: np.ndarray, same: np.ndarray) -> float:
    """P(a same-class pair scores above a different-class pair), ties counted half (Mann-Whitney)."""
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    n_pos, n_neg = int(same.sum()), int((~same).sum())
    return float((ranks[same].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def tar_at_far(scores: np.ndarray, same: np.ndarray, far: float) -> float:
    """The fraction of same-class pairs accepted at the lowest threshold whose false accepts are at most `far`
    of the different-class pairs."""
    neg = np.sort(scores[~same])[::-1]
    allowed = int(np.floor(far * len(neg)))  # false accepts allowed
    threshold = neg[allowed] if allowed < len(neg) else -np.inf  # accept only scores above it
    return float(np.mean(scores[same] > threshold))


def verify(scores: np.ndarray, same: np.ndarray, folds: int = FOLDS) -> dict:
    """The figures of the module docstring for fixed scores."""
    n = len(scores)
    fold_of = np.arange(n) % folds
    accs = []
    for f in range(folds):
        test = fold_of == f
        threshold, _ = best_threshold(scores[~test], same[~test])
        accs.append(float(np.mean((scores[test] > threshold) == same[test])))
    threshold, _ = best_threshold(scores, same)
    return dict(pairs=n, same_pairs=int(same.sum()), accuracy=float(np.mean(accs)), accuracy_std=float(np.std(accs)),
                roc_auc=roc_auc(scores, same), threshold=threshold,
                **{f"tar_at_far_{far:g}": tar_at_far(scores, same, far) for far in FARS})
