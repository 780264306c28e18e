"""Separation metrics on features with known angles."""
import math

import pytest
import torch

from arcdist.evaluation.metrics import separation_metrics


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


def test_a_class_of_one_test_image_has_no_spread_and_no_radius():
    """One image is its own centre: a spread of 0 and a mean gap of |mu_i - mu_j| / 0 said nothing (a 1,000-class
    folder with one test image a class printed "spread 0.0 deg" and a gap of 3.5e9). Such classes are left out;
    with none of two images, the figures are absent (never NaN)."""
    w = torch.tensor([polar(36 * c) for c in range(10)])
    pairs = [polar(a) for c in range(3) for a in (36 * c - 4, 36 * c + 4)]  # classes 0-2: two images 4 deg apart
    singles = [polar(36 * c + 10) for c in range(3, 10)]  # classes 3-9: one image each, 10 deg off
    labels = torch.tensor([0, 0, 1, 1, 2, 2, *range(3, 10)])
    m = separation_metrics(torch.tensor(pairs + singles), labels, w)
    only_pairs = separation_metrics(torch.tensor(pairs), labels[:6], w)
    assert m["intra_spread_deg"] == pytest.approx(4.0, abs=1e-4) == only_pairs["intra_spread_deg"]
    assert m["min_mean_gap"] == pytest.approx(only_pairs["min_mean_gap"])
    assert m["min_centre_angle_deg"] == pytest.approx(26.0, abs=1e-4)  # a lone image still has a direction
    alone = separation_metrics(torch.tensor(singles), torch.arange(3, 10), w)
    assert alone["accuracy"] == 1.0 and alone["min_centre_angle_deg"] == pytest.approx(36.0, abs=1e-4)
    assert "intra_spread_deg" not in alone and "min_mean_gap" not in alone
    assert all(not math.isnan(v) for v in alone.values())


def test_retrieval_on_a_large_test_set_samples_its_queries_seeded():
    from pytorch_metric_learning.distances import CosineSimilarity
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN

    from arcdist.evaluation.retrieval import METRICS, retrieval_metrics

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(3000) % 20
    feats = torch.nn.functional.one_hot(labels, 20).float() + 0.9 * torch.randn(3000, 20, generator=g)
    exact = retrieval_metrics(feats, labels)  # up to MAX_QUERIES: every image a query, as PML computes it
    pml = AccuracyCalculator(include=METRICS, k="max_bin_count", knn_func=CustomKNN(CosineSimilarity())
                             ).get_accuracy(feats, labels)
    assert exact == pytest.approx({k: float(v) for k, v in pml.items()}, abs=1e-6)
    sampled = retrieval_metrics(feats, labels, max_queries=1000)
    assert sampled == retrieval_metrics(feats, labels, max_queries=1000)  # seeded
    for k in METRICS:  # an estimate of the exact figure: within 4 sampling errors of 1,000 queries
        assert abs(sampled[k] - exact[k]) < 4 * (exact[k] * (1 - exact[k]) / 1000) ** 0.5 + 1e-3, k
    assert sampled != exact


def test_retrieval_leaves_out_lone_queries_and_gives_no_figure_when_every_class_is_alone():
    """A test split of one image per class has nothing to retrieve: no figure (it was NaN, written into the JSON
    files as a bare NaN); with some classes of one image, the figures are over the other classes' queries."""
    from arcdist.evaluation.retrieval import retrieval_metrics

    g = torch.Generator().manual_seed(1)
    assert retrieval_metrics(torch.randn(50, 8, generator=g), torch.arange(50)) == {}
    assert retrieval_metrics(torch.randn(0, 2), torch.zeros(0, dtype=torch.long)) == {}
    pairs = torch.arange(40) // 2  # 20 classes of two images
    feats = torch.nn.functional.one_hot(pairs, 30).float() + 0.05 * torch.randn(40, 30, generator=g)
    lone = torch.nn.functional.one_hot(torch.arange(20, 30), 30).float()  # 10 classes of one image
    both = retrieval_metrics(torch.cat([feats, lone]), torch.cat([pairs, torch.arange(20, 30)]))
    assert both == pytest.approx(retrieval_metrics(feats, pairs)) and both["precision_at_1"] == 1.0


@pytest.mark.parametrize("n,classes,max_queries", [(4000, 10, 4000), (4000, 10, 1500), (600, 2, 600)])
def test_circle_knn_finds_pml_custom_knns_neighbours_in_2d(n, classes, max_queries):
    """2-D by angle: the same neighbours and the same metrics as PML's CustomKNN in float64 (every query, sampled
    queries, and 2 classes whose k is too large for the window, where it falls back to CustomKNN)."""
    from pytorch_metric_learning.distances import CosineSimilarity
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN

    from arcdist.evaluation.retrieval import METRICS, CircleKNN, retrieval_metrics

    g = torch.Generator().manual_seed(n + classes)
    labels = torch.arange(n) % classes
    angle = labels * (2 * math.pi / classes) + 0.5 * torch.randn(n, generator=g)  # overlapping classes
    feats = torch.stack([angle.cos(), angle.sin()], 1) * (0.5 + torch.rand(n, 1, generator=g))
    reference = CustomKNN(CosineSimilarity(), batch_size=1024)
    k = int(torch.bincount(labels).max())
    got_d, got_i = CircleKNN(reference, batch_size=700)(feats[:max_queries], k, feats, True)
    falls_back = 2 * (k + 1) + 1 > n
    f64 = feats if falls_back else feats.double()
    want_d, want_i = reference(f64[:max_queries], k, f64, True)
    assert got_i.shape == want_i.shape == (max_queries, k)
    assert torch.equal(got_i, want_i)
    torch.testing.assert_close(got_d.double(), want_d.double(), atol=1e-6, rtol=0)
    def reference64(q, k, r, includes):  # get_accuracy hands its knn_func float32
        return reference(q, k, r, includes) if falls_back else reference(q.double(), k, r.double(), includes)

    pml = AccuracyCalculator(include=METRICS, k="max_bin_count", knn_func=reference64).get_accuracy(
        feats[:max_queries], labels[:max_queries], feats, labels, True)
    ours = AccuracyCalculator(include=METRICS, k="max_bin_count", knn_func=CircleKNN(reference)).get_accuracy(
        feats[:max_queries], labels[:max_queries], feats, labels, True)
    assert ours == pytest.approx({m: float(v) for m, v in pml.items()}, abs=1e-9)
    if max_queries == n:
        assert retrieval_metrics(feats, labels) == pytest.approx(ours, abs=1e-9)


def test_many_directions_spread_once_per_node(tmp_path, monkeypatch):
    import math

    from arcdist import directions

    monkeypatch.setenv("ARCDIST_CACHE_DIR", str(tmp_path))
    n, dim = 100, 16  # the float32 path of above directions.SMALL, at a size a test affords
    u = directions._large(n, dim)
    assert u.shape == (n, dim) and torch.allclose(u.norm(dim=1), torch.ones(n), atol=1e-5)
    start = torch.nn.functional.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(0)), dim=1)
    assert directions.min_angle_deg(u) > directions.min_angle_deg(start) + 10  # spread further than at random
    assert [f.name for f in (tmp_path / "directions").glob("*.pt")] == [f"{n}x{dim}-v{directions.LARGE_VERSION}.pt"]
    assert torch.equal(directions._large(n, dim), u)  # the second process reads the node's copy
    assert math.isclose(directions.min_angle_deg(directions.spread(10, 3)), 66.12, abs_tol=0.05)  # small: as before


def test_metric_rows_and_the_summary_are_strict_json(tmp_path):
    """A non-finite figure (a grad norm with no finite step) is written as null: Python's bare NaN is not JSON to jq
    or a browser."""
    import json

    from arcdist import runinfo

    runinfo.append_metrics(tmp_path, dict(epoch=1, test_accuracy=0.5, grad_norm_mean=math.nan,
                                          grad_norm_max=math.inf, curve=[1.0, -math.inf]))
    line = (tmp_path / "metrics.jsonl").read_text()
    assert json.loads(line, parse_constant=lambda c: pytest.fail(c)) == dict(
        epoch=1, test_accuracy=0.5, grad_norm_mean=None, grad_norm_max=None, curve=[1.0, None])
    state = dict(status="finished", epoch=1, best_accuracy=math.nan, best_epoch=1)
    summary = json.loads((tmp_path / "summary.json").read_text() if runinfo.write_summary(tmp_path, state) else "",
                         parse_constant=lambda c: pytest.fail(c))
    assert summary["best_accuracy"] is None and summary["final_accuracy"] == 0.5


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")  # class 4, predicted, never present
def test_balanced_accuracy_equals_scikit_learns_on_unequal_classes():
    """A folder's test split holds a share of each class, so its classes are as unequal as the folder's: the mean
    of the classes' accuracies, as scikit-learn computes it (classes absent from the split left out)."""
    from sklearn.metrics import balanced_accuracy_score

    g = torch.Generator().manual_seed(3)
    counts = [400, 100, 20, 3, 0, 1]  # class 4 absent from the test split
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    w = torch.tensor([polar(60 * c) for c in range(6)])
    feats = w[labels] + 0.9 * torch.randn(len(labels), 2, generator=g)
    m = separation_metrics(feats, labels, w)
    predicted = (torch.nn.functional.normalize(feats, dim=1) @ torch.nn.functional.normalize(w, dim=1).T).argmax(1)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels.numpy(), predicted.numpy()))
    assert abs(m["balanced_accuracy"] - m["accuracy"]) > 0.02  # unequal classes: the two differ here
