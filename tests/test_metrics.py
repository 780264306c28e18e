"""Separation metrics on features with known angles."""
import math

import pytest
import torch

from arcdist.metrics import separation_metrics


def polar(deg, r=1.0):
    return [r * math.cos(math.radians(deg)), r * math.sin(math.radians(deg))]


def test_known_geometry():
    centres = [36 * c for c in range(10)]
    feats, labels = [], []
    for c, a in enumerate(centres):
        for d, r in ((-4, 1.0), (4, 5.0)):  # two points 4 deg either side of the centre, any radius
            feats.append(polar(a + d, r))
            labels.append(c)
    feats.append(polar(36 * 3))  # a class-0 sample sitting on class 3's direction
    labels.append(0)
    w = torch.tensor([polar(a, 2.0) for a in centres])
    m = separation_metrics(torch.tensor(feats), torch.tensor(labels), w)
    assert m["accuracy"] == pytest.approx(20 / 21)
    assert m["min_weight_angle_deg"] == pytest.approx(36.0, abs=1e-4)
    assert m["worst_class"] == 0 and m["worst_class_accuracy"] == pytest.approx(2 / 3)  # class 0: 2 of its 3 right
    clean = separation_metrics(torch.tensor(feats[:-1]), torch.tensor(labels[:-1]), w)
    assert clean["accuracy"] == 1.0
    assert clean["intra_spread_deg"] == pytest.approx(4.0, abs=1e-4)
    assert clean["min_centre_angle_deg"] == pytest.approx(36.0, abs=1e-4)
    assert clean["worst_class_accuracy"] == 1.0


def test_worst_class_ignores_absent_classes():
    w = torch.tensor([polar(36 * c) for c in range(10)])
    feats = torch.tensor([polar(0), polar(36), polar(36), polar(72), polar(0)])  # classes 0, 1, 1, 2, 2 (one wrong)
    m = separation_metrics(feats, torch.tensor([0, 1, 1, 2, 2]), w)
    assert m["worst_class"] == 2 and m["worst_class_accuracy"] == 0.5 and m["accuracy"] == 0.8
