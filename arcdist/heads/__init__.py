"""The classifier heads, one file per `head.kind`: the margin-loss family side by side.

    softmax     W x + b (the post's "before")
    normface    s cos(theta_j)                                   (Wang et al. 2017)
    sphereface  |x| psi(theta_y), psi(t) = (-1)^k cos(m t) - 2k   (Liu et al. 2017, A-Softmax, lambda annealing)
    cosface     s (cos(theta_y) - m)                             (Wang et al. 2018)
    arcface     s cos(theta_y + m)                               (Deng et al. 2019; the post's ArcMargin)
    subcenter   ArcFace on the nearest of K sub-centres per class (Deng et al. 2020)
    adacos      s cos(theta_j), s adapted to each batch          (Zhang et al. 2019)
    combined    s (cos(m1 theta_y + m2) - m3)                    (insightface's combined margin)
    center      softmax + lambda/2 |x - c_y|^2                   (Wen et al. 2016)

Every head holds class vectors W and returns its training logits (margin applied) for cross-entropy; `predict` is
its prediction rule (the logits without margin), which the metrics use. The margin arithmetic runs in fp32 even
under autocast. A new kind is a new file here (base.py says what it declares); every module of this package is
imported, so its `@register_head` runs.
"""
import importlib
import pkgutil

from arcdist.heads.base import (HEADS, Head, HeadConfig, KindConfig, ScaledConfig, ScaledHead, WarmupConfig,
                                build_head, cosines, geometry_scores, head_class, head_settings, head_of_kind,
                                param_count, predicted_labels, register_head)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["HEADS", "Head", "HeadConfig", "KindConfig", "ScaledConfig", "ScaledHead", "WarmupConfig", "build_head",
           "cosines", "geometry_scores", "head_class", "head_settings", "head_of_kind", "param_count",
           "predicted_labels", "register_head"]
