"""What the post judged by eye, as numbers: from gathered (features, labels, W)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from arcdist.heads import geometry_scores


def _angles_deg(cos: torch.Tensor) -> torch.Tensor:
    return torch.rad2deg(torch.acos(cos.clamp(-1.0, 1.0)))


def class_centres(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Unit mean direction of each class's normalised features (num_classes, D); zero rows for absent classes."""
    x = F.normalize(features.double(), dim=1)
    sums = torch.zeros(num_classes, x.shape[1], dtype=x.dtype).index_add_(0, labels, x)
    return F.normalize(sums, dim=1)


def separation_metrics(features: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor,
                       bias: torch.Tensor | None = None, scores: torch.Tensor | None = None) -> dict[str, float]:
    """Test accuracy by the head's prediction rule, intra-class spread and smallest centre angle.

    - accuracy: fraction whose highest cosine to the rows of W is their own class (the angular heads), or, with a
      `bias` (softmax, center loss), whose highest W x + b is; or, given the head's own `scores` (N, C), their argmax;
    - intra_spread_deg: mean over classes of the mean angle between a feature and its class centre (angles are of
      the feature directions, for every head), over the classes with at least two images (one image is its own
      centre: a spread of 0 that says nothing);
    - min_centre_angle_deg: smallest angle between two class centres (the centre is the mean direction);
    - min_weight_angle_deg: smallest angle between two rows of W;
    - worst_class, worst_class_accuracy: the class with the lowest accuracy among those present, and that accuracy;
    - balanced_accuracy: the mean of the present classes' accuracies (scikit-learn's balanced_accuracy_score): what
      accuracy says on a test split of unequal classes, a folder's (held out by a share of each class);
    - min_mean_gap: separation by position, for heads that pull classes to points (center loss): the smallest
      distance between two class means over the sum of their RMS radii (the RMS distance of a class's features
      to its mean); above 1 the two classes' RMS discs do not touch. Classes with one image have no radius and
      are left out.
    A value with too few classes to define it (a spread with no class of two images, an angle with one class) is
    absent, as the retrieval metrics are: no NaN reaches metrics.jsonl.
    """
    features, labels, weight = features.detach().cpu(), labels.detach().cpu().long(), weight.detach().cpu()
    num_classes = weight.shape[0]
    x = F.normalize(features.double(), dim=1)
    w = F.normalize(weight.double(), dim=1)
    if scores is None:  # the rule from the geometry (arcdist.heads.geometry_scores)
        scores = geometry_scores(features, dict(W=weight, b=None if bias is None else bias.detach().cpu()))
    scores = scores.detach().cpu()
    right = scores.argmax(1).eq(labels).double()
    accuracy = right.mean().item()
    centres = class_centres(features, labels, num_classes)
    counts = torch.bincount(labels, minlength=num_classes)
    present = counts > 0
    own = _angles_deg((x * centres[labels]).sum(1))
    several = counts > 1
    per_class = torch.zeros(num_classes, dtype=torch.float64).index_add_(0, labels, own)
    per_class = per_class[several] / counts[several]
    class_acc = torch.zeros(num_classes, dtype=torch.float64).index_add_(0, labels, right) / counts.clamp_min(1)
    class_acc[~present] = math.inf
    worst = int(class_acc.argmin())
    out = dict(
        worst_class=worst,
        worst_class_accuracy=class_acc[worst].item(),
        accuracy=accuracy,
        balanced_accuracy=class_acc[present].mean().item(),
        intra_spread_deg=per_class.mean().item() if len(per_class) else math.nan,
        min_centre_angle_deg=_min_pairwise_angle(centres[present]),
        min_weight_angle_deg=_min_pairwise_angle(w),
        min_mean_gap=mean_gap(features, labels, num_classes),
    )
    return {k: v for k, v in out.items() if not (isinstance(v, float) and math.isnan(v))}


def mean_gap(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """min over class pairs of |mu_i - mu_j| / (r_i + r_j), r the RMS distance to the class mean, over the classes
    with at least two images (nan: fewer than 2 such classes)."""
    x = features.detach().cpu().double()
    counts = torch.bincount(labels, minlength=num_classes)
    present = counts > 1
    means = torch.zeros(num_classes, x.shape[1], dtype=x.dtype).index_add_(0, labels, x) / counts.clamp_min(1)[:, None]
    sq = torch.zeros(num_classes, dtype=x.dtype).index_add_(0, labels, (x - means[labels]).pow(2).sum(1))
    radius = (sq / counts.clamp_min(1)).sqrt()[present]
    means = means[present]
    if means.shape[0] < 2:
        return math.nan
    gap = torch.cdist(means, means) / (radius[:, None] + radius[None, :]).clamp_min(1e-12)
    gap.fill_diagonal_(math.inf)
    return gap.min().item()


def _min_pairwise_angle(directions: torch.Tensor) -> float:
    if directions.shape[0] < 2:
        return math.nan
    angles = _angles_deg(directions @ directions.t())
    angles.fill_diagonal_(math.inf)
    return angles.min().item()
