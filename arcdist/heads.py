"""The classifier heads on the 2-D feature, one per `head.kind`: the margin-loss family side by side.

    softmax     W x + b (the post's "before")
    normface    s cos(theta_j)                                   (Wang et al. 2017)
    sphereface  |x| psi(theta_y), psi(t) = (-1)^k cos(m t) - 2k   (Liu et al. 2017, A-Softmax, lambda annealing)
    cosface     s (cos(theta_y) - m)                             (Wang et al. 2018)
    arcface     s cos(theta_y + m)                               (Deng et al. 2019; the post's ArcMargin)
    combined    s (cos(m1 theta_y + m2) - m3)                    (insightface's combined margin)
    center      softmax + lambda/2 |x - c_y|^2, centers moved by their own rule with rate alpha (Wen et al. 2016)

Every head holds class vectors W (C x D) and returns its training logits (margin applied) for cross-entropy;
`predict` is its prediction rule (the logits without margin: the cosine for the angular heads, W x + b for
softmax and center), which the metrics use. The margin arithmetic runs in fp32 even under autocast.

The four s-scaled heads (normface, cosface, arcface, combined) take their s from `head.scale_by`: a fixed s
(the papers'), the feature's own norm |x| (each sample its own s: arcface-norm, the main command's head), or one
s learned with the head (log s trained, starting at `head.scale`).
"""
from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from arcdist.config import ConfigError, HeadConfig
from arcdist.margins import (arc_margin_logits, combined_target, cosines, margin_at, scale_setting, sphere_lambda,
                             sphere_psi, warmup_fraction)

# -- heads ---------------------------------------------------------------------------------------------
Check = tuple[bool, str]  # (the value is fine, the one line that says how to fix it)


class Head(nn.Module):
    """Class vectors W (num_classes x feature_dim) and the kind's logits. Subclasses set `train_logits`.

    Each kind declares what config.py needs to know of it: its `defaults` for 10 classes in 2-D (README, 'Head
    defaults'; `--set head.kind=K` applies them before the other --set), its `checks`, whether its logits are s times
    a cosine (`scaled`: head.scale_by applies) and whether its margin warms up. A new kind is a class here and its
    name in config.HeadKind.
    """

    kind = ""
    defaults: ClassVar[dict] = {}
    scaled: ClassVar[bool] = False  # logits s times a cosine: head.scale_by applies
    warms_up: ClassVar[bool] = False  # its margin grows over head.margin_warmup_epochs

    @classmethod
    def checks(cls, cfg: HeadConfig) -> list[Check]:
        """The kind's own checks (margin in its own unit, its other fields) and the ones every kind shares."""
        return [(cfg.scale > 0, f"head.scale must be > 0 (got {cfg.scale}); pass --set head.scale=16"),
                (cfg.scale_by == "fixed" or cls.scaled,
                 f"head.scale_by={cfg.scale_by} applies to {', '.join(k for k, h in HEADS.items() if h.scaled)} only "
                 f"({cfg.kind} scales by {'|x|' if cfg.kind == 'sphereface' else 'W x + b'}); "
                 "pass --set head.scale_by=fixed"),
                (cfg.margin_warmup_epochs >= 0,
                 "head.margin_warmup_epochs must be >= 0; pass --set head.margin_warmup_epochs=1")]

    @classmethod
    def extra_params(cls, cfg: HeadConfig, feature_dim: int) -> int:
        """Learned numbers beyond W (and the learned s)."""
        return 0

    def __init__(self, cfg: HeadConfig, feature_dim: int = 2, steps_per_epoch: int = 1):
        super().__init__()
        self.cfg, self.scale, self.steps_per_epoch = cfg, cfg.scale, steps_per_epoch
        self.weight = nn.Parameter(torch.empty(cfg.num_classes, feature_dim))
        if cfg.init == "even" and feature_dim == 2:
            position = torch.empty(cfg.num_classes)  # position[c]: slot of class c around the circle
            position[list(cfg.order or range(cfg.num_classes))] = torch.arange(cfg.num_classes, dtype=torch.float)
            angles = position * (2 * math.pi / cfg.num_classes)
            with torch.no_grad():
                self.weight.copy_(torch.stack([angles.cos(), angles.sin()], dim=1))
        else:
            nn.init.xavier_uniform_(self.weight)
        # frozen W has no gradient: the head optimizer skips it, and the trainer keeps a head with nothing to train
        # out of DDP
        self.weight.requires_grad_(not cfg.freeze)
        if cfg.scale_by == "learned":  # log s: s stays positive, and Adam's steps are relative
            self.log_scale = nn.Parameter(torch.tensor(math.log(cfg.scale)))

    def logit_scale(self, x: torch.Tensor) -> float | torch.Tensor:
        """s for the s-scaled kinds: the fixed number, |x| per sample (N, 1), or the learned scalar."""
        if self.cfg.scale_by == "norm":
            return x.norm(dim=1, keepdim=True)
        if self.cfg.scale_by == "learned":
            return self.log_scale.float().exp()
        return self.scale

    def scale_text(self) -> str:
        """The live s for captions: 's = 16', 's = |x|' or 's = 12.3 (learned)'."""
        if self.cfg.scale_by == "norm":
            return "s = |x|"
        if self.cfg.scale_by == "learned":
            return f"s = {self.log_scale.detach().float().exp().item():.1f} (learned)"
        return f"s = {self.scale:g}"

    def forward(self, features: torch.Tensor, labels: torch.Tensor, epoch_progress: float) -> torch.Tensor:
        """Training logits (margin applied) after `epoch_progress` epochs, fp32 even under bf16/fp16 autocast."""
        with torch.autocast(device_type=features.device.type, enabled=False):
            return self.train_logits(features.float(), labels, epoch_progress)

    def train_logits(self, x: torch.Tensor, labels: torch.Tensor, epoch_progress: float) -> torch.Tensor:
        raise NotImplementedError

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """The prediction rule's scores (no margin): argmax is the predicted class."""
        return cosines(features, self.weight)

    def loss(self, logits: torch.Tensor, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The training loss from this head's logits: cross-entropy (center loss adds its term)."""
        return F.cross_entropy(logits, labels)

    def after_step(self) -> None:
        """Called once an optimizer step was applied (the center rule moves the centers here)."""

    drawn: ClassVar[dict[str, str]] = {}  # geometry name -> attribute, beyond W (b, centers)

    def geometry(self) -> dict[str, torch.Tensor]:
        """What the plots and metrics need: W, and b / centers where the head has them (CPU, fp32)."""
        drawn = dict(W="weight", **self.drawn)
        return {name: getattr(self, attr).detach().float().cpu() for name, attr in drawn.items()}

    def wedge(self, epoch_progress: float) -> float:
        """Half-width (radians) of the angular margin drawn around each W direction; 0 when not angular."""
        return 0.0

    def caption(self, epoch_progress: float) -> str:
        """One line under the circle plot: the head and its margin at `epoch_progress` epochs."""
        return f"{self.kind}, {self.scale_text()}, no margin"

    @staticmethod
    def settings(cfg: HeadConfig) -> str:
        """The kind's configured settings in a few words (variant table, reports); `caption` is the live state."""
        return scale_setting(cfg)


class SoftmaxHead(Head):
    """Linear classifier W x + b on the 2-D feature: the post's "before"."""

    kind = "softmax"
    drawn = dict(b="bias")
    defaults = dict(scale=1.0, scale_by="fixed", margin=0.0, margins=(), margin_warmup_epochs=0.0, center_weight=0.0)

    @classmethod
    def extra_params(cls, cfg, feature_dim):
        return cfg.num_classes  # b

    def __init__(self, cfg: HeadConfig, feature_dim: int = 2, steps_per_epoch: int = 1):
        super().__init__(cfg, feature_dim, steps_per_epoch)
        self.bias = nn.Parameter(torch.zeros(cfg.num_classes))

    def train_logits(self, x, labels, epoch_progress):
        return self.predict(x)

    def predict(self, features):
        return F.linear(features.float(), self.weight.float(), self.bias.float())

    def caption(self, epoch_progress):
        return f"{self.kind}: W x + b, no margin"

    @staticmethod
    def settings(cfg):
        return "W x + b"


class NormFaceHead(Head):
    kind = "normface"
    defaults = dict(scale=16.0, scale_by="fixed", margin=0.0, margins=(), margin_warmup_epochs=0.0, center_weight=0.0)
    scaled = True

    def train_logits(self, x, labels, epoch_progress):
        return self.logit_scale(x) * cosines(x, self.weight)


class SphereFaceHead(Head):
    """A-Softmax: W normalised, no bias, logits |x| cos(theta_j); the target |x| (lambda cos + psi) / (1 + lambda)."""

    kind = "sphereface"
    defaults = dict(scale=1.0, scale_by="fixed", margin=4.0, margins=(), margin_warmup_epochs=0.0, center_weight=0.0)

    @classmethod
    def checks(cls, cfg):
        m = cfg.margin
        return super().checks(cfg) + [
            (m >= 1 and m == int(m) and m <= 8,
             f"head.margin must be an integer 1..8 for sphereface (got {m}); pass --set head.margin=4"),
            (len(cfg.anneal) == 4 and all(v >= 0 for v in cfg.anneal),
             f"head.anneal must be (base, gamma, power, min) >= 0 (got {cfg.anneal}); "
             "pass --set head.anneal=(1000,0.12,1,5)")]

    def lam(self, epoch_progress: float) -> float:
        """The annealing's lambda after `epoch_progress` epochs (it counts iterations)."""
        return sphere_lambda(self.cfg.anneal, epoch_progress * self.steps_per_epoch)

    def train_logits(self, x, labels, epoch_progress):
        cos = cosines(x, self.weight)
        norm = x.norm(dim=1, keepdim=True)
        cos_y = cos.gather(1, labels[:, None])
        lam = self.lam(epoch_progress)
        target = (lam * cos_y + sphere_psi(cos_y, int(self.cfg.margin))) / (1.0 + lam)
        return self.scale * norm * cos.scatter(1, labels[:, None], target)

    def predict(self, features):
        return features.float().norm(dim=1, keepdim=True) * cosines(features, self.weight)

    def caption(self, epoch_progress):
        return f"sphereface: m = {int(self.cfg.margin)} (times theta), lambda = {self.lam(epoch_progress):.1f}"

    @staticmethod
    def settings(cfg):
        base, gamma, power, low = cfg.anneal
        return f"m {int(cfg.margin)}, lambda max({low:g}, {base:g} (1 + {gamma:g} i)^-{power:g})"


class MarginHead(Head):
    """CosFace and ArcFace: s times the cosines, the target's with the kind's one margin (warmed up)."""

    unit = ""  # the margin's unit in `settings`
    scaled = warms_up = True

    def margin_words(self, margin: float) -> str:
        raise NotImplementedError

    def caption(self, epoch_progress):
        return f"{self.kind}: {self.scale_text()}, {self.margin_words(margin_at(self.cfg, epoch_progress))}"

    @classmethod
    def settings(cls, cfg):
        return f"{scale_setting(cfg)}, m {cfg.margin:g}{cls.unit}"


class CosFaceHead(MarginHead):
    kind = "cosface"
    defaults = dict(scale=16.0, scale_by="fixed", margin=0.1, margins=(), margin_warmup_epochs=1.0, center_weight=0.0)

    @classmethod
    def checks(cls, cfg):
        return super().checks(cfg) + [(0 <= cfg.margin < 1, f"head.margin must be in [0, 1) for cosface, a cosine "
                                                            f"margin (got {cfg.margin}); pass --set head.margin=0.1")]

    def train_logits(self, x, labels, epoch_progress):
        cos = cosines(x, self.weight)
        return self.logit_scale(x) * (cos - margin_at(self.cfg, epoch_progress) * F.one_hot(labels, cos.shape[1]))

    def margin_words(self, margin):
        return f"cosine margin {margin:.2f}"


class ArcFaceHead(MarginHead):
    """The post's ArcMargin head (additive angular margin)."""

    kind = "arcface"
    unit = " rad"
    defaults = dict(scale=16.0, scale_by="fixed", margin=0.2, margins=(), margin_warmup_epochs=1.0, center_weight=0.0)

    @classmethod
    def checks(cls, cfg):
        return super().checks(cfg) + [(0 <= cfg.margin < math.pi / 2,
                                       f"head.margin must be in [0, pi/2) radians for arcface (got {cfg.margin}); "
                                       "pass --set head.margin=0.2")]

    def train_logits(self, x, labels, epoch_progress):
        return arc_margin_logits(x, self.weight, labels, self.logit_scale(x), margin_at(self.cfg, epoch_progress))

    def wedge(self, epoch_progress):
        return margin_at(self.cfg, epoch_progress)

    def margin_words(self, margin):
        return f"margin {math.degrees(margin):.1f} deg"


class CombinedHead(Head):
    kind = "combined"
    defaults = dict(scale=16.0, scale_by="fixed", margin=0.0, margins=(1.0, 0.1, 0.05), margin_warmup_epochs=1.0,
                    center_weight=0.0)
    scaled = warms_up = True

    @classmethod
    def checks(cls, cfg):
        m = cfg.margins
        return super().checks(cfg) + [
            (len(m) == 3 and m[0] >= 1 and 0 <= m[1] < math.pi / 2 and 0 <= m[2] < 1,
             f"head.margins must be (m1 >= 1, m2 in [0, pi/2), m3 in [0, 1)) for combined (got {m}); "
             "pass --set head.margins=(1.0,0.1,0.05)")]

    def margins(self, epoch_progress: float) -> tuple[float, float, float]:
        """(m1, m2, m3) with the warm-up: each moves linearly from no margin (1, 0, 0)."""
        f = warmup_fraction(self.cfg, epoch_progress)
        m1, m2, m3 = self.cfg.margins
        return 1.0 + (m1 - 1.0) * f, m2 * f, m3 * f

    def train_logits(self, x, labels, epoch_progress):
        cos = cosines(x, self.weight)
        target = combined_target(cos.gather(1, labels[:, None]), *self.margins(epoch_progress))
        return self.logit_scale(x) * cos.scatter(1, labels[:, None], target)

    def wedge(self, epoch_progress):
        m1, m2, _ = self.margins(epoch_progress)
        return m2 if m1 == 1.0 else 0.0

    def caption(self, epoch_progress):
        m1, m2, m3 = self.margins(epoch_progress)
        return f"combined: {self.scale_text()}, (m1, m2, m3) = ({m1:.2f}, {m2:.2f}, {m3:.2f})"

    @staticmethod
    def settings(cfg):
        return f"{scale_setting(cfg)}, (m1, m2, m3) = ({', '.join(f'{m:g}' for m in cfg.margins)})"


class CenterLossHead(SoftmaxHead):
    """Softmax plus lambda times the center loss 1/2 |x_i - c_{y_i}|^2 (mean over the batch, as the paper's layer).

    The centers are not trained by backpropagation: after each applied step they move by the paper's rule,
    c_j <- c_j - alpha * sum_{i: y_i = j} (c_j - x_i) / (1 + n_j), over the global batch (sums and counts are
    summed over ranks, so every rank holds the same centers). They start at 0 and are saved with the model.
    """

    kind = "center"
    drawn = dict(b="bias", centers="centers")
    defaults = dict(scale=1.0, scale_by="fixed", margin=0.0, margins=(), margin_warmup_epochs=0.0, center_weight=0.1,
                    center_alpha=0.5)

    @classmethod
    def checks(cls, cfg):
        return super().checks(cfg) + [
            (cfg.center_weight >= 0, f"head.center_weight must be >= 0 (got {cfg.center_weight}); "
                                     "pass --set head.center_weight=0.1"),
            (0 < cfg.center_alpha <= 1, f"head.center_alpha must be in (0, 1] (got {cfg.center_alpha}); "
                                        "pass --set head.center_alpha=0.5")]

    @classmethod
    def extra_params(cls, cfg, feature_dim):
        return super().extra_params(cfg, feature_dim) + cfg.num_classes * feature_dim  # b and the centers

    def __init__(self, cfg: HeadConfig, feature_dim: int = 2, steps_per_epoch: int = 1):
        super().__init__(cfg, feature_dim, steps_per_epoch)
        self.register_buffer("centers", torch.zeros(cfg.num_classes, feature_dim))
        self.pending: torch.Tensor | None = None  # the next update, computed with this step's loss

    def loss(self, logits, features, labels):
        return super().loss(logits, features, labels) + self.center_loss(features, labels)

    def center_loss(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """lambda/2 mean |x_i - c_{y_i}|^2; also computes the centers' next update (applied by after_step)."""
        x = features.float()
        loss = 0.5 * self.cfg.center_weight * (x - self.centers[labels]).pow(2).sum(1).mean()
        with torch.no_grad():
            sums = torch.zeros_like(self.centers).index_add_(0, labels, self.centers[labels] - x)
            counts = torch.bincount(labels, minlength=self.centers.shape[0]).to(sums.dtype)
            both = torch.cat([sums.flatten(), counts])
            if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
                torch.distributed.all_reduce(both)
            sums, counts = both[:sums.numel()].view_as(sums), both[sums.numel():]
            self.pending = sums / (1.0 + counts[:, None])
        return loss

    def after_step(self):
        if self.pending is not None:
            self.centers.sub_(self.cfg.center_alpha * self.pending)
            self.pending = None

    def caption(self, epoch_progress):
        return f"center: W x + b and {self.cfg.center_weight:g} x center loss (centers drawn in the raw plot)"

    @staticmethod
    def settings(cfg):
        return f"lambda {cfg.center_weight:g}, alpha {cfg.center_alpha:g}"


HEADS: dict[str, type[Head]] = {h.kind: h for h in (SoftmaxHead, NormFaceHead, SphereFaceHead, CosFaceHead,
                                                     ArcFaceHead, CombinedHead, CenterLossHead)}
ArcMarginHead = ArcFaceHead  # the post's name


def describe(cfg: HeadConfig) -> str:
    """The head's kind-specific settings in a few words, with the margin warm-up and a frozen W."""
    warmup = cfg.margin_warmup_epochs and HEADS[cfg.kind].warms_up
    return (HEADS[cfg.kind].settings(cfg) + (f", warm-up {cfg.margin_warmup_epochs:g} ep" if warmup else "")
            + (", W frozen" if cfg.freeze else ""))


def head_class(kind: str) -> type[Head]:
    """The class of `kind`; an unknown kind is a ConfigError naming the known ones."""
    if kind not in HEADS:
        raise ConfigError(f"unknown head kind {kind!r}; use one of {', '.join(HEADS)}")
    return HEADS[kind]


def build_head(cfg: HeadConfig, feature_dim: int = 2, steps_per_epoch: int = 1) -> Head:
    """The head of kind `cfg.kind`."""
    return head_class(cfg.kind)(cfg, feature_dim, steps_per_epoch)


def param_count(cfg: HeadConfig, feature_dim: int = 2) -> int:
    """Learned numbers of the head: W, the learned s, plus b (softmax, center) and the centers (center)."""
    extra = head_class(cfg.kind).extra_params(cfg, feature_dim)
    return cfg.num_classes * feature_dim + (cfg.scale_by == "learned") + extra
