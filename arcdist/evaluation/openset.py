"""Classes never seen in training (`--set data.train_classes=0,1,2,3,4`): the protocol metric learning is judged by.

The run trains on the listed classes only: its head has one row per seen class (row r is class `seen[r]`), and no
image of another class reaches a training batch. Everything outside the training step keeps the dataset's labels:
the saved test features hold every class, and each epoch is judged both ways:

- closed set: accuracy (and the other separation figures) of the seen classes' test images by the head's rule;
- open set: retrieval (precision@1, R-precision, MAP@R, arcdist.evaluation.retrieval) among the unseen classes' test images
  only, saved as `unseen_precision_at_1`, `unseen_r_precision`, `unseen_mean_average_precision_at_r`; and
  `unseen_auroc`: how well the largest cosine to W's rows tells a seen test image (high) from an unseen one,
  P(seen scores above unseen), ties half; `unseen_auroc_norm` the same by the feature's length, the better score
  for heads whose logits scale with it (s = |x|, SphereFace) in 2-D (results/open-set: 97.6 against 88.5 %).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from arcdist.config import ConfigError
from arcdist.heads import cosines
from arcdist.evaluation.retrieval import retrieval_metrics
from arcdist.evaluation.verification import roc_auc

__all__ = ["SeenClasses", "resolve", "unseen_metrics"]


def resolve(wanted: tuple, names: tuple[str, ...]) -> tuple[int, ...]:
    """The labels (sorted) that `wanted` names: labels 0..C-1 or class names (a number that is a class's name means
    that class: a folder of classes 1, 2, 7 reads train_classes=1,2 as the folders 1 and 2, not labels 1 and 2);
    refused in one line when an item names no class, or when the list names every class (then nothing is unseen) or
    none."""
    n, labels = len(names), set()
    for item in wanted:
        if str(item) in names:
            labels.add(names.index(str(item)))
        elif isinstance(item, int) and 0 <= item < n:
            labels.add(item)
        else:
            shown = ", ".join(names[:12]) + (", ..." if n > 12 else "")
            raise ConfigError(f"--set data.train_classes: {item!r} is no class of this dataset (labels 0..{n - 1} "
                              f"or names: {shown}); list the classes to train on")
    if not labels or len(labels) == n:
        raise ConfigError(f"--set data.train_classes lists {len(labels)} of the {n} classes; list some but not all "
                          "(the others are the unseen classes), or drop the --set to train on all")
    return tuple(sorted(labels))


@dataclass(frozen=True)
class SeenClasses:
    """The seen classes of a run: `labels[r]` is head row r's dataset label; `lookup[label]` its row, or -1."""

    labels: torch.Tensor
    lookup: torch.Tensor

    @classmethod
    def of(cls, train_classes: tuple, num_classes: int) -> "SeenClasses | None":
        """None when every class trains (train_classes empty)."""
        if not train_classes:
            return None
        labels = torch.tensor(sorted(train_classes), dtype=torch.long)
        lookup = torch.full((num_classes,), -1, dtype=torch.long)
        lookup[labels] = torch.arange(len(labels))
        return cls(labels, lookup)

    def rows(self, labels: torch.Tensor) -> torch.Tensor:
        """Each dataset label's head row (-1: unseen), on the labels' device."""
        return self.lookup.to(labels.device)[labels.long()]

    def closed_set(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The seen classes' features and their head rows (what the closed-set figures are of)."""
        rows = self.rows(labels)
        keep = rows >= 0
        return features[keep.to(features.device)], rows[keep]

    def train_only(self, data):
        """`data` (a DeviceData / StreamData split) cut to the seen classes, labelled by head row."""
        keep = torch.nonzero(self.rows(data.y) >= 0).flatten()
        out = data.select(keep)
        out.y = self.rows(out.y)
        empty = torch.bincount(out.y.cpu(), minlength=len(self.labels)) == 0
        if empty.any():
            raise ConfigError(f"data.train_classes: class {int(self.labels[empty][0])} has no training images; list classes "
                              "that the training split holds (or raise --limit-train)")
        return out


def unseen_metrics(features: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, seen: SeenClasses,
                   by: str = "angle", retrieval: bool = True) -> dict[str, float]:
    """The open-set figures of test `features` with dataset `labels` (module docstring); retrieval ones only when
    `retrieval` (train.retrieval) and the unseen images number at least two classes' worth."""
    rows = seen.rows(labels.cpu())
    unseen = rows < 0
    host, seen_mask = features.float().cpu(), (~unseen).numpy()
    best = cosines(host, weight.float().cpu()).amax(1)
    out = dict(unseen_auroc=roc_auc(best.numpy().astype(np.float64), seen_mask),
               unseen_auroc_norm=roc_auc(host.norm(dim=1).numpy().astype(np.float64), seen_mask))
    away = labels[unseen.to(labels.device)]
    if retrieval and len(away.unique()) > 1:  # among one class every neighbour is right
        figures = retrieval_metrics(features[unseen.to(features.device)], away, by=by)
        out.update({f"unseen_{k}": v for k, v in figures.items()})
    return out
