"""Configuration as data: one frozen dataclass tree per run, every field with its unit.

A variant (see variants.py) is a named `Config`; a run is that config plus command-line
overrides (`--set head.margin=0.3`), each checked against the field's declared type.
"""
from __future__ import annotations

import ast
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

# A backbone is a tuple of layer entries:
#   ("conv", in_ch, out_ch, kernel, stride, padding)  -> ConvLayer (Conv2d no bias, BN, PReLU)
#   ("pool", kernel, stride)                          -> MaxPool2d
# The feature head ("fc") is one entry:
#   ("linear", in_features)                           -> Flatten, Linear(in_features, 2)
#   ("conv", in_ch, kernel, stride, padding)          -> Conv2d(in_ch, 2, ...), Flatten
Layer = tuple
Layers = tuple[tuple, ...]


class ConfigError(ValueError):
    """Bad user input: the message names the problem and the fix (exit status 2)."""


def first_line(e: BaseException) -> str:
    """An exception as one line, for one-line error messages."""
    return str(e).splitlines()[0] if str(e) else type(e).__name__


@dataclass(frozen=True)
class ModelConfig:
    layers: Layers = ()
    fc: tuple = ("linear", 64)
    feature_dim: int = 2  # the post's 2-D feature
    in_channels: int = 1
    image_size: int = 28  # pixels, square


HeadKind = Literal["softmax", "normface", "sphereface", "cosface", "arcface", "combined", "center"]


@dataclass(frozen=True)
class HeadConfig:
    """The classifier on the 2-D feature. `kind` picks the loss; the defaults are ArcFace's for 10 classes in 2-D
    (README, 'Head defaults'). `--set head.kind=K` also sets K's own defaults (declared by its class in
    arcdist.heads) before the other --set."""

    kind: HeadKind = "arcface"
    scale: float = 16.0  # s, logit scale (normface, cosface, arcface, combined; sphereface and softmax use |x|)
    # how those four scale their logits: "fixed" s; "norm": the feature's own norm |x| (s unused; the net sets a
    # per-sample confidence, as SphereFace and softmax do); "learned": one s trained with the head, starting at `scale`
    scale_by: Literal["fixed", "norm", "learned"] = "fixed"
    # the kind's margin: arcface additive angle m (radians; 0.2 rad = 11.5 deg); cosface cosine margin m;
    # sphereface multiplicative angle m (an integer); unused by softmax, normface, center, combined (see margins)
    margin: float = 0.2
    margins: tuple = ()  # combined only: (m1, m2, m3) of s*(cos(m1*theta + m2) - m3)
    margin_warmup_epochs: float = 1.0  # margins grow linearly from 0 to their value over this many epochs
    # sphereface only: lambda = max(min, base * (1 + gamma * iteration) ** -power) mixes softmax into the margin
    # logit, (lambda*cos + psi) / (1 + lambda); the SphereFace release's schedule
    anneal: tuple = (1000.0, 0.12, 1.0, 5.0)  # (base, gamma, power, min)
    center_weight: float = 0.0  # center only: lambda of softmax + lambda * center loss
    center_alpha: float = 0.5  # center only: the centers' own learning rate (Wen et al.'s alpha)
    num_classes: int = 10
    init: Literal["xavier", "even"] = "xavier"  # W init; "even": class directions 360/C degrees apart (2-D)
    order: tuple = ()  # "even" only: class at each position around the circle, e.g. (0, 6, 2, ...); () = 0..C-1
    freeze: bool = False  # keep W at its init (not trained): the class directions cannot collapse


def head_of_kind(head: "HeadConfig", kind: str) -> "HeadConfig":
    """`head` switched to `kind` with that kind's defaults (init, order, freeze and num_classes are kept)."""
    from arcdist.heads import head_class  # the kinds declare their own defaults (heads imports this module)

    return dataclasses.replace(head, kind=kind, **head_class(kind).defaults)


@dataclass(frozen=True)
class OptimConfig:
    """Two optimizers, as in the post: one for the backbone ('net'), one for the head ('arc')."""

    net: Literal["adam", "sgd"] = "sgd"
    lr: float = 0.001  # backbone learning rate
    momentum: float = 0.9  # SGD only
    weight_decay: float = 0.0
    schedule: Literal["step", "cosine"] = "step"  # step: the post's StepLR; cosine: warm-up then cosine to 0
    step_size: int = 20  # epochs between StepLR decays (the post's SGD setting)
    gamma: float = 0.8  # StepLR factor; 1.0 disables the schedule
    warmup_epochs: float = 0.0  # cosine only: linear warm-up length
    schedule_head: bool = False  # apply the schedule to the head's lr too (the post schedules only the net)
    head: Literal["adam", "sgd"] = "sgd"
    head_lr: float = 0.5
    head_momentum: float = 0.0


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "mnist"
    data_dir: str = "./data"
    batch_size: int = 256  # global batch (images per step, summed over ranks)
    limit_train: int = 0  # use only the first N training images (0 = all)
    limit_test: int = 0  # use only the first N test images (0 = all)
    download: bool = True  # try torchvision's download when files are missing
    shift: int = 0  # augmentation: random translation of each training image by up to this many pixels (x and y)
    flip: bool = False  # augmentation: random horizontal flip of training images (Fashion-MNIST, CIFAR-10; not digits)
    rotate: float = 0.0  # augmentation: random rotation of each training image by up to this many degrees (+-)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 100  # the post's length
    seed: int = 0
    # "auto": resolved for the machine at start (arcdist/hardware.py): bf16 on a CUDA GPU that has it, on a CPU only
    # where a probe finds it faster than fp32; the resolved value is what config.json stores
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"
    channels_last: bool | Literal["auto"] = "auto"  # NHWC activations; "auto": where the probe finds them faster
    cpu: bool = False  # force CPU even when a GPU is present
    threads: int = 0  # CPU threads per process; 0 = this node's cores / its processes (overrides OMP_NUM_THREADS)
    # images per forward pass at evaluation, per rank. 256, not 1000: on a 2-core CPU A8's net evaluates 1.9x faster
    # per image at 256 than at 1000 (the activations of a batch above ~512 leave the L2 cache): 6 s of each epoch
    eval_batch_size: int = 256
    # newest K complete checkpoints are kept; K >= 2 is what lets --resume fall back to the one before when the
    # newest fails its checksums or cannot be loaded (it is moved aside as failed-epoch-N, never deleted)
    keep_checkpoints: int = 2
    ema: float = 0.0  # per-step decay of an exponential moving average of the backbone (e.g. 0.999); 0 = off.
    # With it, evaluation, plots and metrics use the averaged backbone; training continues on the live one.
    on_diverge: Literal["stop", "rollback"] = "stop"
    max_rollbacks: int = 3  # with on_diverge=rollback: lr halved and retried up to N times
    # seconds a rank waits in one collective (all-reduce, gather, barrier) for the others before it fails:
    # bounds a run whose peer rank or node is gone without a closed connection (frozen, cut off). It must
    # exceed the longest time one rank works alone (rank 0's checkpoint and plots). NCCL's default is 600
    collective_timeout_s: float = 600.0
    # steps between host reads of the divergence / preemption flags (each read waits for the device); 0 = automatic:
    # 1 on a CPU (its steps are synchronous, a read costs nothing), 50 on a GPU. Between reads the flags stay on the
    # device; a window holding a non-finite step is undone and replayed step by step, so results and the reported
    # divergence equal sync_every=1's; a stop request is noticed up to sync_every - 1 steps late. fp16: always 1.
    sync_every: int = 0
    # torch.compile of the backbone, in place (checkpoints keep their keys): "default" (inductor); on a GPU also
    # "reduce-overhead" (CUDA graphs) or "max-autotune". Off: no measurement on a GPU supports it yet, and on
    # the CPUs measured it gained nothing (README, Performance)
    compile: Literal["off", "default", "reduce-overhead", "max-autotune"] = "off"
    fused_optim: bool = False  # torch's fused Adam / SGD kernels (fused=True), CUDA and CPU; off until measured


@dataclass(frozen=True)
class Config:
    variant: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return to_dict(self)


def to_dict(cfg: Any) -> dict:
    """JSON-ready dict (tuples become lists)."""
    return dataclasses.asdict(cfg)


def _tupleize(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tupleize(v) for v in value)
    return value


def from_dict(d: dict) -> Config:
    """Inverse of `to_dict`: rebuilds a Config from its JSON form."""
    sections = {}
    for f in dataclasses.fields(Config):
        if f.name == "variant":
            continue
        cls = typing.get_type_hints(Config)[f.name]
        raw = d.get(f.name, {})
        sections[f.name] = cls(**{k: _tupleize(v) for k, v in raw.items()})
    return Config(variant=d.get("variant", ""), **sections)


def _coerce(text: str, tp: Any, key: str) -> Any:
    """Parse `text` as a value of type `tp`, or raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if text not in choices:
            raise ConfigError(f"--set {key}={text}: expected one of {', '.join(map(str, choices))}")
        return text
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and text.lower() in ("none", "null"):
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(text, arg, key)
            except ConfigError:
                pass
        names = ", ".join(str(c) for a in args for c in (typing.get_args(a) or (getattr(a, "__name__", a),)))
        raise ConfigError(f"--set {key}={text}: expected one of: {names}")
    if tp is bool:
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"--set {key}={text}: expected a boolean (true/false)")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"--set {key}={text}: expected an integer") from None
    if tp is float:
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"--set {key}={text}: expected a number") from None
        if not math.isfinite(value):
            raise ConfigError(f"--set {key}={text}: expected a finite number")
        return value
    if tp is str:
        return text
    if origin is tuple or tp is tuple:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise ConfigError(f"--set {key}={text}: expected a Python tuple literal, e.g. ((\"pool\", 2, 2),)") from None
        if not isinstance(value, (tuple, list)):
            raise ConfigError(f"--set {key}={text}: expected a tuple")
        return _tupleize(list(value)) if isinstance(value, list) else value
    raise ConfigError(f"--set {key}: fields of type {tp} cannot be set from the command line")


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply "section.field=value" strings, each parsed to the field's declared type.

    head.kind is applied first, with the kind's defaults, so that `--set head.margin=...` refines it in any order.
    """
    kinds = [o for o in overrides if o.partition("=")[0].strip() == "head.kind"]
    overrides = kinds + [o for o in overrides if o not in kinds]
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or "." not in key:
            raise ConfigError(f"--set {item!r}: expected SECTION.FIELD=VALUE, e.g. head.margin=0.3")
        section, name = key.split(".", 1)
        hints = typing.get_type_hints(Config)
        if section not in hints or section == "variant":
            valid = ", ".join(n for n in hints if n != "variant")
            raise ConfigError(f"--set {key}: unknown section {section!r}; valid sections: {valid}")
        sub = getattr(cfg, section)
        sub_hints = typing.get_type_hints(type(sub))
        if name not in sub_hints:
            raise ConfigError(f"--set {key}: unknown field {name!r}; valid fields of {section}: {', '.join(sub_hints)}")
        value = _coerce(text.strip(), sub_hints[name], key)
        if key == "head.kind":
            cfg = dataclasses.replace(cfg, head=head_of_kind(sub, value))
            continue
        cfg = dataclasses.replace(cfg, **{section: dataclasses.replace(sub, **{name: value})})
    return cfg


def validate(cfg: Config) -> None:
    """Reject values that cannot train; each message says how to fix it."""
    checks = [
        (cfg.train.epochs > 0, f"epochs must be > 0 (got {cfg.train.epochs}); pass --epochs N with N >= 1"),
        (cfg.optim.lr > 0, f"optim.lr must be > 0 (got {cfg.optim.lr}); pass --set optim.lr=0.001"),
        (cfg.optim.head_lr > 0, f"optim.head_lr must be > 0 (got {cfg.optim.head_lr}); pass --set optim.head_lr=0.5"),
        (cfg.data.batch_size > 0, f"batch size must be > 0 (got {cfg.data.batch_size}); pass --set data.batch_size=256"),
        (cfg.train.eval_batch_size > 0, "train.eval_batch_size must be > 0; pass --set train.eval_batch_size=256"),
        *_head_checks(cfg.head),
        (cfg.optim.step_size > 0, "optim.step_size must be > 0; pass --set optim.step_size=20"),
        (cfg.data.limit_train >= 0 and cfg.data.limit_test >= 0, "--limit-train/--limit-test must be >= 0 (0 = all)"),
        (0 <= cfg.data.shift < cfg.model.image_size // 2,
         f"data.shift must be 0..{cfg.model.image_size // 2 - 1} pixels (got {cfg.data.shift}); try --set data.shift=2"),
        (0 <= cfg.data.rotate <= 180, f"data.rotate must be 0..180 degrees (got {cfg.data.rotate}); try --set data.rotate=10"),
        (not cfg.head.order or sorted(cfg.head.order) == list(range(cfg.head.num_classes)),
         f"head.order must list each class 0..{cfg.head.num_classes - 1} once (got {cfg.head.order}); "
         "pass --set head.order=() for the natural order"),
        (not cfg.head.order or cfg.head.init == "even",
         "head.order places the evenly spread class directions; add --set head.init=even"),
        (0 <= cfg.train.ema < 1, f"train.ema must be in [0, 1) (got {cfg.train.ema}); try --set train.ema=0.999"),
        (cfg.train.keep_checkpoints >= 1, "train.keep_checkpoints must be >= 1"),
        (cfg.train.threads >= 0, "train.threads must be >= 0 (0 = automatic)"),
        (cfg.train.collective_timeout_s > 0, "train.collective_timeout_s must be > 0; try --set train.collective_timeout_s=600"),
        (cfg.train.sync_every >= 0, "train.sync_every must be >= 0 (0 = automatic: 1 on a CPU, 50 on a GPU)"),
        (cfg.optim.warmup_epochs >= 0, "optim.warmup_epochs must be >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def _head_checks(h: HeadConfig) -> list[tuple[bool, str]]:
    """The kind's own checks, declared by its class in arcdist.heads."""
    from arcdist.heads import head_class

    return head_class(h.kind).checks(h)
