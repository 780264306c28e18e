"""Verification figures (arcdist.evaluation.verification) against brute force on fixed scores; the pairs it draws."""
from __future__ import annotations

import numpy as np
import pytest

from arcdist.evaluation import verification as v


def brute_auc(scores, same):
    pos, neg = scores[same], scores[~same]
    return float(np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg]))


def brute_tar(scores, same, far):
    best = 0.0
    for t in [-np.inf, *np.unique(scores)]:  # accept score > t
        if np.mean(scores[~same] > t) <= far:
            best = max(best, float(np.mean(scores[same] > t)))
    return best


def brute_accuracy(scores, same):
    cuts = [-np.inf, *np.unique(scores)]
    return max(float(np.mean((scores > t) == same)) for t in cuts)


@pytest.mark.parametrize("seed", range(4))
def test_roc_auc_tar_and_threshold_equal_brute_force(seed):
    rng = np.random.default_rng(seed)
    same = rng.random(400) < 0.5
    scores = np.round(rng.normal(same * 0.8, 1.0), 1)  # rounded: ties, as cosines of close features have
    assert v.roc_auc(scores, same) == pytest.approx(brute_auc(scores, same), abs=1e-12)
    for far in (1e-3, 1e-2, 0.1, 0.3):
        assert v.tar_at_far(scores, same, far) == pytest.approx(brute_tar(scores, same, far), abs=1e-12), far
    threshold, acc = v.best_threshold(scores, same)
    assert acc == pytest.approx(brute_accuracy(scores, same), abs=1e-12)
    assert np.mean((scores > threshold) == same) == pytest.approx(acc, abs=1e-12)


def test_ten_folds_fit_each_threshold_on_the_other_nine():
    same = np.arange(200) % 2 == 0
    scores = np.where(same, 0.9, 0.1) + np.linspace(0, 0.05, 200)  # separable: every fold is right
    got = v.verify(scores, same)
    assert got["accuracy"] == 1.0 and got["accuracy_std"] == 0.0 and got["roc_auc"] == 1.0
    assert 0.15 < got["threshold"] < 0.9 and got["tar_at_far_0.001"] == 1.0 and got["pairs"] == 200
    flipped = v.verify(-scores, same)  # a score that says the opposite: every held-out fold wrong
    assert flipped["roc_auc"] == 0.0 and flipped["accuracy"] <= 0.5


def test_pairs_are_seeded_half_same_and_never_an_image_with_itself():
    labels = np.repeat(np.arange(10), 30)
    i, j, same = v.make_pairs(labels, 600, seed=3)
    assert len(i) == 600 and same.sum() == 300 and np.all(i != j)
    assert np.array_equal(labels[i] == labels[j], same)
    again = v.make_pairs(labels, 600, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((i, j, same), again))
    assert not np.array_equal(i, v.make_pairs(labels, 600, seed=4)[0])
