"""What every head shares: `HeadConfig`, the registry of kinds, and the `Head` base class.

A kind is one file in this package: a `Head` subclass decorated with `@register_head("name")` whose `Config` (a
frozen dataclass of `KindConfig`) holds its own fields with their units. `HeadConfig` holds what every kind shares
(classes, W's init, order, freeze) and the kind's config in `params`; `cfg.margin` reads through to it, and
`HeadConfig(kind="cosface", margin=0.3)` or `--set head.margin=0.3` resolve a field by the kind.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from arcdist.directions import circle, spread
from arcdist.errors import ConfigError

Check = tuple[bool, str]  # (the value is fine, the one line that says how to fix it)
SHARED = ("kind", "num_classes", "init", "order", "freeze")


@dataclass(frozen=True)
class KindConfig:
    """A kind's own fields (subclassed by each kind as its `Config`); `checks` give the one-line fixes."""

    def checks(self) -> list[Check]:
        return []


@dataclass(frozen=True)
class ScaledConfig(KindConfig):
    """The s of a head whose logits are s times a cosine."""

    scale: float = 16.0  # s, the logit scale (the starting s when learned)
    # "fixed": s = scale; "norm": the feature's own norm |x| per sample; "learned": one s trained with the head
    scale_by: Literal["fixed", "norm", "learned"] = "fixed"

    def checks(self) -> list[Check]:
        return [(self.scale > 0, f"head.scale must be > 0 (got {self.scale}); pass --set head.scale=16")]


@dataclass(frozen=True)
class WarmupConfig(ScaledConfig):
    """A scaled head whose margin grows linearly from 0 over `margin_warmup_epochs`."""

    margin_warmup_epochs: float = 1.0  # epochs

    def checks(self) -> list[Check]:
        return super().checks() + [(self.margin_warmup_epochs >= 0, "head.margin_warmup_epochs must be >= 0; "
                                                                    "pass --set head.margin_warmup_epochs=1")]

    def fraction(self, epoch_progress: float) -> float:
        """Fraction of the margin in force after `epoch_progress` epochs."""
        if self.margin_warmup_epochs <= 0:
            return 1.0
        return min(1.0, epoch_progress / self.margin_warmup_epochs)


HEADS: dict[str, type["Head"]] = {}


def register_head(kind: str):
    """Class decorator: the head answers to `head.kind=<kind>`."""
    def add(cls: type[Head]) -> type[Head]:
        cls.kind = kind
        HEADS[kind] = cls
        return cls
    return add


def head_class(kind: str) -> type["Head"]:
    """The class of `kind`; an unknown kind is a ConfigError naming the known ones."""
    if kind not in HEADS:
        raise ConfigError(f"unknown head kind {kind!r}; expected one of {', '.join(HEADS)}")
    return HEADS[kind]


def field_names(config_type: type) -> list[str]:
    return [f.name for f in dataclasses.fields(config_type)]


@dataclass(frozen=True, init=False)
class HeadConfig:
    """The classifier on the feature: the fields every kind shares, and the kind's own config in `params`.
    Any other keyword is a field of the kind's config; a field the kind lacks is a ConfigError."""

    kind: str = "arcface"  # the head (arcdist.heads): arcface, cosface, sphereface, softmax, center, ...
    num_classes: int = 10  # rows of W; from the dataset's classes unless set
    init: Literal["xavier", "even"] = "xavier"  # W init; "even": class directions 360/C degrees apart (2-D)
    order: tuple = ()  # "even" only: class at each position around the circle, e.g. (0, 6, 2, ...); () = 0..C-1
    freeze: bool = False  # keep W at its init (not trained): the class directions cannot collapse
    params: Any = None  # the kind's Config; None: its defaults

    def __init__(self, kind: str = "arcface", num_classes: int = 10, init: str = "xavier", order: tuple = (),
                 freeze: bool = False, params: Any = None, **fields: Any):
        cls = head_class(kind)
        if isinstance(params, dict):
            fields, params = {**params, **fields}, None
        if not isinstance(params, cls.Config):  # a new kind starts from its own defaults
            params = cls.Config()
        own = field_names(cls.Config)
        for name in fields:
            if name not in own:
                raise ConfigError(not_a_field(kind, name))
        params = dataclasses.replace(params, **fields)
        for name, value in zip(SHARED + ("params",), (kind, num_classes, init, tuple(order), freeze, params)):
            object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name == "params":
            raise AttributeError(name)
        try:
            return getattr(object.__getattribute__(self, "params"), name)
        except AttributeError:
            raise AttributeError(f"head kind {self.kind!r} has no field {name!r}") from None

    def replace(self, **changes: Any) -> "HeadConfig":
        """A copy with shared or kind fields changed (a changed kind starts from its defaults)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Flat JSON form: the shared fields, then the kind's (config.json's `head`)."""
        return {**{k: getattr(self, k) for k in SHARED}, **dataclasses.asdict(self.params)}

    @classmethod
    def from_dict(cls, d: dict) -> "HeadConfig":
        """Inverse of `to_dict`; fields of other kinds (written by older versions, one flat list) are dropped."""
        kind = d.get("kind", "arcface")
        own = set(field_names(head_class(kind).Config))
        return cls(**{k: v for k, v in d.items() if k in SHARED or k in own})


def not_a_field(kind: str, name: str) -> str:
    """The one line for a field that `kind` does not have, naming the kinds that do and `kind`'s own."""
    others = [k for k, h in HEADS.items() if name in field_names(h.Config)]
    where = f"it belongs to {', '.join(others)}" if others else "no head kind has it"
    return (f"head.{name} is not a field of the {kind} head ({where}); {kind}'s fields: "
            f"{', '.join(SHARED + tuple(field_names(head_class(kind).Config)))}")


def head_of_kind(head: HeadConfig, kind: str) -> HeadConfig:
    """`head` switched to `kind` with that kind's defaults (init, order, freeze and num_classes are kept)."""
    return dataclasses.replace(head, kind=kind, params=None)


def slots(cfg: HeadConfig) -> torch.Tensor:
    """slots(cfg)[c]: the slot of class c in the even spread (`head.order` lists the classes slot by slot)."""
    slot = torch.empty(cfg.num_classes, dtype=torch.long)
    slot[list(cfg.order or range(cfg.num_classes))] = torch.arange(cfg.num_classes)
    return slot


def cosines(features: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """cos(theta_j) between each feature and each row of W, (N, C); a zero feature has cosine 0."""
    x = F.normalize(features.float(), dim=1, eps=1e-6)
    w = F.normalize(weight.float(), dim=1, eps=1e-6)
    return (x @ w.t()).clamp(-1.0, 1.0)


def geometry_scores(features: torch.Tensor, geometry: dict) -> torch.Tensor:
    """The prediction rule from a head's saved geometry (features files, the explorer, `arcdist evaluate`), float32
    (N, C): argmax W x + b where the head has b (softmax, center loss); the cosine to the nearest sub-centre where it
    has them (sub-center ArcFace); else the cosine to each row of W (SphereFace's |x| cos has the same argmax).
    Equal in argmax to the live head's `scores` (tests/test_heads.py)."""
    x = torch.as_tensor(features).float()
    W = torch.as_tensor(geometry["W"]).float()
    if geometry.get("b") is not None:
        return F.linear(x, W, torch.as_tensor(geometry["b"]).float())
    if geometry.get("sub_centers") is not None:
        sub = torch.as_tensor(geometry["sub_centers"]).float()
        return cosines(x, sub).unflatten(1, (W.shape[0], -1)).amax(dim=2)  # (no batch size: export keeps it free)
    return cosines(x, W)


def predicted_labels(features: torch.Tensor, geometry: dict) -> torch.Tensor:
    """The dataset label each feature is predicted as: the best row by `geometry_scores`, through the geometry's
    `rows` (a run trained on some classes only: row r is class rows[r]) where it has them."""
    best = geometry_scores(features, geometry).argmax(1)
    rows = geometry.get("rows")
    return best if rows is None else torch.as_tensor(rows).long()[best]


def even_directions(positions: torch.Tensor, slots: int) -> torch.Tensor:
    """Unit 2-D vectors at `positions` x 360/slots degrees."""
    return circle(positions, slots)


class Head(nn.Module):
    """Class vectors W and the kind's training logits. A kind sets `Config` and overrides `train_logits`, and where
    it differs `predict`, `loss`, `after_step`, `margin_now`, `wedge` and `caption`.

    What figures and reports need is declared as data: `judged_by` (separation by "angle" between directions or by
    "position" of class means), `baseline` (the reference row of a losses table), `drawn` (geometry beyond W).
    """

    kind: ClassVar[str] = ""
    Config: ClassVar[type[KindConfig]] = KindConfig
    judged_by: ClassVar[Literal["angle", "position"]] = "angle"
    baseline: ClassVar[bool] = False
    drawn: ClassVar[dict[str, str]] = {}  # geometry name -> attribute, beyond W (b, centers)

    @classmethod
    def rows(cls, cfg: HeadConfig) -> int:
        """Rows of W: one per class (sub-center ArcFace: K per class)."""
        return cfg.num_classes

    def __init__(self, cfg: HeadConfig, feature_dim: int = 2, steps_per_epoch: int = 1):
        super().__init__()
        self.cfg, self.opts, self.steps_per_epoch = cfg, cfg.params, steps_per_epoch
        self.weight = nn.Parameter(torch.empty(self.rows(cfg), feature_dim))
        if cfg.init == "even":
            with torch.no_grad():
                self.weight.copy_(self.even_init(cfg, feature_dim))
        else:
            nn.init.xavier_uniform_(self.weight)
        # frozen W has no gradient: the head optimizer skips it, and the trainer keeps a head with nothing to train
        # out of DDP
        self.weight.requires_grad_(not cfg.freeze)

    def even_init(self, cfg: HeadConfig, feature_dim: int) -> torch.Tensor:
        """W evenly spread (`arcdist.directions.spread`), class `order[p]` in slot p."""
        return spread(cfg.num_classes, feature_dim)[slots(cfg)]

    def forward(self, features: torch.Tensor, labels: torch.Tensor, epoch_progress: float) -> torch.Tensor:
        """Training logits (margin applied) after `epoch_progress` epochs, fp32 even under bf16/fp16 autocast."""
        with torch.autocast(device_type=features.device.type, enabled=False):
            return self.train_logits(features.float(), labels, epoch_progress)

    def train_logits(self, x: torch.Tensor, labels: torch.Tensor, epoch_progress: float) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """The prediction rule's scores (N, C) float32 (no margin; argmax is the predicted class), on the features'
        device, whichever device the head is on (the device rule, docs/guarantees.md: evaluation hands back host
        tensors, and a CUDA head predicts for them on its own device)."""
        device = next(self.parameters()).device
        return self.scores(features.to(device)).float().to(features.device)

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """The kind's prediction rule on features on the head's device: cosine to each row of W."""
        return cosines(features, self.weight)

    def loss(self, logits: torch.Tensor, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The training loss from this head's logits: cross-entropy (center loss adds its term)."""
        return F.cross_entropy(logits, labels)

    def after_step(self) -> None:
        """Called once an optimizer step was applied (the center rule moves the centers here)."""

    def margin_now(self, epoch_progress: float) -> float:
        """The kind's margin in its own unit after `epoch_progress` epochs (metrics.jsonl's `margin`); 0: none."""
        return 0.0

    def wedge(self, epoch_progress: float) -> float:
        """Half-width (radians) of the angular margin drawn around each W direction; 0 when not angular."""
        return 0.0

    def caption(self, epoch_progress: float) -> str:
        """One line under the circle plot: the head and its margin at `epoch_progress` epochs."""
        return f"{self.kind}, no margin"

    def geometry(self) -> dict[str, torch.Tensor]:
        """What the plots and metrics need: W (one row per class), and b / centers where the head has them."""
        drawn = dict(W="weight", **self.drawn)
        return {name: getattr(self, attr).detach().float().cpu() for name, attr in drawn.items()}

    @classmethod
    def extra_params(cls, cfg: HeadConfig, feature_dim: int) -> int:
        """Learned numbers beyond W."""
        return 0

    @staticmethod
    def settings(cfg: HeadConfig) -> str:
        """The kind's configured settings in a few words (variant table, reports); `caption` is the live state."""
        return ""


class ScaledHead(Head):
    """A head whose logits are s times a cosine: s fixed, the feature's own norm, or learned (log s)."""

    Config = ScaledConfig

    def __init__(self, cfg: HeadConfig, feature_dim: int = 2, steps_per_epoch: int = 1):
        super().__init__(cfg, feature_dim, steps_per_epoch)
        self.scale = cfg.scale
        if cfg.scale_by == "learned":  # log s: s stays positive, and Adam's steps are relative
            self.log_scale = nn.Parameter(torch.tensor(math.log(cfg.scale)))

    def logit_scale(self, x: torch.Tensor) -> float | torch.Tensor:
        """s: the fixed number, |x| per sample (N, 1), or the learned scalar."""
        if self.opts.scale_by == "norm":
            return x.norm(dim=1, keepdim=True)
        if self.opts.scale_by == "learned":
            return self.log_scale.float().exp()
        return self.scale

    def scale_text(self) -> str:
        """The live s for captions: 's = 16', 's = |x|' or 's = 12.3 (learned)'."""
        if self.opts.scale_by == "norm":
            return "s = |x|"
        if self.opts.scale_by == "learned":
            return f"s = {self.log_scale.detach().float().exp().item():.1f} (learned)"
        return f"s = {self.scale:g}"

    def caption(self, epoch_progress: float) -> str:
        return f"{self.kind}, {self.scale_text()}, no margin"

    @classmethod
    def extra_params(cls, cfg: HeadConfig, feature_dim: int) -> int:
        return int(cfg.scale_by == "learned")

    @staticmethod
    def settings(cfg: HeadConfig) -> str:
        return {"norm": "s = |x|", "learned": f"s learned from {cfg.scale:g}"}.get(cfg.scale_by, f"s {cfg.scale:g}")


def head_settings(cfg: HeadConfig) -> str:
    """The head's kind-specific settings in a few words, with the margin warm-up and a frozen W."""
    warmup = getattr(cfg.params, "margin_warmup_epochs", 0)
    return (head_class(cfg.kind).settings(cfg) + (f", warm-up {warmup:g} ep" if warmup else "")
            + (", W frozen" if cfg.freeze else ""))


def build_head(cfg: HeadConfig, feature_dim: int = 2, steps_per_epoch: int = 1) -> Head:
    """The head of kind `cfg.kind`."""
    return head_class(cfg.kind)(cfg, feature_dim, steps_per_epoch)


def param_count(cfg: HeadConfig, feature_dim: int = 2) -> int:
    """Learned numbers of the head: W, plus what the kind adds (a learned s, b, the centers)."""
    cls = head_class(cfg.kind)
    return cls.rows(cfg) * feature_dim + cls.extra_params(cfg, feature_dim)
