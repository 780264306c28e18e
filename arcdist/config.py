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

from arcdist.errors import ConfigError, first_line  # noqa: F401  (re-exported: the config's own error)
from arcdist.heads import HEADS, HeadConfig, head_of_kind
from arcdist.heads.base import not_a_field

# A backbone is a tuple of layer entries:
#   ("conv", in_ch, out_ch, kernel, stride, padding)  -> ConvLayer (Conv2d no bias, BN, PReLU)
#   ("pool", kernel, stride)                          -> MaxPool2d
# The feature head ("fc") is one entry:
#   ("linear", in_features)                           -> Flatten, Linear(in_features, 2)
#   ("conv", in_ch, kernel, stride, padding)          -> Conv2d(in_ch, 2, ...), Flatten
Layer = tuple
Layers = tuple[tuple, ...]


@dataclass(frozen=True)
class ModelConfig:
    layers: Layers = ()  # the ConvLayer/pool list, e.g. (("conv", 1, 32, 3, 1, 1), ("pool", 2, 2)): conv in, out, kernel, stride, padding; pool kernel, stride
    fc: tuple = ("linear", 64)  # the feature layer: ("linear", in_features) or ("conv", in_ch, kernel, stride, pad)
    feature_dim: int = 2  # the post's 2-D feature
    in_channels: int = 1  # image channels (1 grey, 3 colour); from the dataset unless set
    image_size: int = 28  # pixels, square; from the dataset unless set (a folder's: 224 at most, arcdist.shape)
    arch: Literal["layers", "resnet18"] = "layers"  # "layers": the list above; "resnet18": torchvision's, for photos
    # resnet18, a new run: the weights to start from, a torchvision state dict file or "imagenet" (torchvision's
    # IMAGENET1K_V1, downloaded once into torch.hub's cache); the fc is left out, a grey run sums conv1's filters
    weights: str = ""
    # resnet18: its first layers. "imagenet": torchvision's (a 7x7 convolution of stride 2 and a 3x3 max pool: 32 px
    # down to a 1x1 map at layer4); "small": a 3x3 convolution of stride 1 and no max pool (CIFAR's ResNet: 4x4 at
    # layer4 for 32 px, images from 8 px), at about 2.4x the time (results/folders: no gain at 28 px in 6 epochs)
    stem: Literal["imagenet", "small"] = "imagenet"
    # where a larger image's map is pooled to the written size: "layout" before the layer that takes it to 1x1 (it
    # keeps the image's layout), "end" at the fc (a mean of local windows; arcdist 0.1's, results/folders)
    pool: Literal["layout", "end"] = "layout"
    # the size the layer list computes at: a larger image is average-pooled to net_size x net_size before the first
    # ConvLayer (the list then runs at the scale it was written for); 0: the image's own size. Unless given, a folder
    # of images larger than the list takes unpooled gets the size it was written for (28 px for the post's and
    # A6-A10's lists; arcdist.shape.auto_net_size; results/folders), the built-in datasets 0
    net_size: int = 0


@dataclass(frozen=True)
class OptimConfig:
    """Two optimizers, as in the post: one for the backbone ('net'), one for the head ('arc')."""

    net: Literal["adam", "sgd"] = "sgd"  # the backbone's optimizer
    lr: float = 0.001  # backbone learning rate
    momentum: float = 0.9  # SGD only
    weight_decay: float = 0.0  # L2 penalty of the backbone's optimizer
    schedule: Literal["step", "cosine"] = "step"  # step: the post's StepLR; cosine: warm-up then cosine to 0
    step_size: int = 20  # epochs between StepLR decays (the post's SGD setting)
    gamma: float = 0.8  # StepLR factor; 1.0 disables the schedule
    warmup_epochs: float = 0.0  # cosine only: linear warm-up length
    schedule_head: bool = False  # apply the schedule to the head's lr too (the post schedules only the net)
    head: Literal["adam", "sgd"] = "sgd"  # the head's optimizer (the post's "ArcLoss" optimizer)
    head_lr: float = 0.5  # the head's learning rate
    head_momentum: float = 0.0  # the head's SGD momentum


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "mnist"  # mnist, fashion-mnist, cifar10 or folder (--dataset)
    data_dir: str = "./data"  # where the dataset is (--data-dir; $ARCDIST_DATA_DIR)
    # global batch (images per step, summed over ranks); a folder's, unless set: halved from the variant's while an
    # epoch would take fewer than 128 steps, not below 16 (arcdist.shape.auto_batch; results/folders); unset, rounded
    # down to a multiple of the process count (256 on 3 ranks: 255)
    batch_size: int = 256
    # passes over the training images an epoch; 0: one for the built-in datasets, and for a folder as many as give
    # an epoch at least 128 steps at its batch (arcdist.shape.auto_repeats: a folder under 2,048 images; 200 images
    # at 16: 11 passes, 137 steps), recorded at start; a resume of a run without it makes one pass
    repeats: int = 0
    limit_train: int = 0  # use only the first N training images (0 = all)
    limit_test: int = 0  # use only the first N test images (0 = all)
    download: bool = True  # try torchvision's download when files are missing
    # (augmentations: arcdist/datasets/augment.py reads each by its field name; 0 / false = off)
    shift: int = 0  # augmentation: random translation of each training image by up to this many pixels (x and y)
    flip: bool = False  # augmentation: random horizontal flip of training images (Fashion-MNIST, CIFAR-10; not digits)
    rotate: float = 0.0  # augmentation: random rotation of each training image by up to this many degrees (+-)
    # augmentation: random resized crop, a box of this fraction of the image's area up to all of it (aspect 3:4 to
    # 4:3, anywhere inside) resized back to the whole image; torchvision's RandomResizedCrop, whose ImageNet
    # default is 0.08; 0: off
    crop: float = 0.0
    # a folder dataset (--dataset folder): what was measured of it when the run started (class names from the
    # folder names; mean and std per channel of the decoded train split, 0..1 scale); empty: the dataset's own
    classes: tuple = ()  # class names, by label
    mean: tuple = ()  # per channel, 0..1 scale
    std: tuple = ()  # per channel, 0..1 scale
    # a folder dataset streams from disk (DataLoader workers) instead of living on the device when its decoded
    # splits (uint8) exceed memory_budget_gb GiB ("auto"), or always (true) or never (false)
    stream: bool | Literal["auto"] = "auto"
    memory_budget_gb: float = 4.0  # GiB of decoded images per node (divided over its ranks) before streaming
    # a folder is decoded once per node into the node's cache folder (ARCDIST_CACHE_DIR, default
    # ~/.cache/arcdist/decoded; N x C x S x S bytes, where the disk has room) and read from there: each epoch where
    # it streams, at the start of later runs where it is held in memory; false: its files decoded every epoch where
    # it streams, at every start where not (arcdist/datasets/decoded.py)
    decoded_cache: bool = True
    workers: int = 2  # DataLoader processes that decode a folder's images (0: in the training process)
    # train on these classes only (labels or a folder's class names, e.g. 0,1,2,3,4); the other classes are unseen:
    # their test images are judged each epoch by retrieval (unseen_* metrics, arcdist/evaluation/openset.py); () = all classes
    train_classes: tuple[int | str, ...] = ()
    # "dataset": (x - mean) / std with the dataset's per-channel figures; "image": then each image's own per-channel
    # mean removed and its std (over its pixels and channels) scaled to 1, for images whose colour, brightness and
    # contrast vary from image to image (results/folders: tinted digits from chance to 71 %); "auto": "image" for a
    # folder, "dataset" for the built-in datasets, resolved at start (config.json stores the resolved value)
    normalize: Literal["auto", "dataset", "image"] = "auto"
    # a folder of classes without train/ and test/ (DIR/<class>/*): this fraction of each class's images is its test
    # split, picked by a hash of "<class>/<file name>" (the same split on any machine; arcdist/datasets/folder.py)
    test_fraction: float = 0.2


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 100  # the post's length
    seed: int = 0  # seeds the weights, the batch order and the augmentation draws (--seed)
    # "auto": resolved for the machine at start (arcdist/hardware.py): bf16 on a CUDA GPU that has it, on a CPU only
    # where a probe finds it faster than fp32; the resolved value is what config.json stores
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"
    channels_last: bool | Literal["auto"] = "auto"  # NHWC activations; "auto": where the probe finds them faster
    cpu: bool = False  # force CPU even when a GPU is present
    # on a GPU: deterministic kernels (arcdist.hardware.configure_cuda), what exact resume needs there; a CPU's
    # kernels are deterministic already. Off: cuDNN may pick faster, run-to-run varying kernels
    deterministic: bool = True
    threads: int = 0  # CPU threads per process; 0 = this node's cores / its processes (overrides OMP_NUM_THREADS)
    # images per forward pass at evaluation, per rank. 256, not 1000: on a 2-core CPU A8's net evaluates 1.9x faster
    # per image at 256 than at 1000 (the activations of a batch above ~512 leave the L2 cache): 6 s of each epoch
    eval_batch_size: int = 256
    # newest K complete checkpoints are kept; K >= 2 is what lets --resume fall back to the one before when the
    # newest fails its checksums or cannot be loaded (it is moved aside as failed-epoch-N, never deleted)
    keep_checkpoints: int = 2
    # per-step decay of an exponential moving average of the backbone (e.g. 0.999); 0 = off. With it, evaluation,
    # plots and metrics use the averaged backbone; training continues on the live one
    ema: float = 0.0
    # a non-finite loss or gradient: stop the run (status diverged), or roll back to the last checkpoint (before
    # the first one: to the start) and go on with the learning rates halved (max_rollbacks times at most)
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
    # the CPUs measured it gained nothing (docs/performance.md)
    compile: Literal["off", "default", "reduce-overhead", "max-autotune"] = "off"
    fused_optim: bool = False  # torch's fused Adam / SGD kernels (fused=True), CUDA and CPU; off until measured
    # gradient clipping: the L2 norm of all trainable gradients, backbone and head together, is capped at this
    # (torch's clip_grad_norm_; under fp16 of the unscaled gradients); 0 = off. The norm before clipping is logged
    # per epoch as grad_norm_mean / grad_norm_max
    clip_grad_norm: float = 0.0
    # precision@1, R-precision and MAP@R of the test features each epoch (arcdist.evaluation.retrieval, on the main process):
    # about 3-14 s an epoch for 10,000 test features on a 2-core CPU (docs/performance.md); False leaves them out
    retrieval: bool = True


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
    """JSON-ready dict; the head flat (its shared fields, then its kind's)."""
    d = dataclasses.asdict(cfg)
    if isinstance(cfg, Config):
        d["head"] = cfg.head.to_dict()
    return d


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
        raw = {k: _tupleize(v) for k, v in d.get(f.name, {}).items()}
        if f.name == "model" and "model" in d:
            raw.setdefault("pool", "end")  # a config.json from before model.pool was trained with "end"
        if f.name == "data" and "data" in d:
            raw.setdefault("normalize", "dataset")  # and one from before data.normalize with the dataset's figures
        sections[f.name] = HeadConfig.from_dict(raw) if cls is HeadConfig else cls(**raw)
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
    if origin is tuple and _flat(tp):  # a list of plain values: 0,1,2 or cat,dog (quotes optional)
        return tuple(_scalar(t.strip().strip("'\"")) for t in text.strip("()[] ").split(",") if t.strip())
    if origin is tuple or tp is tuple:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise ConfigError(f"--set {key}={text}: expected a Python tuple literal, e.g. ((\"pool\", 2, 2),)") from None
        if not isinstance(value, (tuple, list)):
            raise ConfigError(f"--set {key}={text}: expected a tuple")
        return _tupleize(list(value)) if isinstance(value, list) else value
    raise ConfigError(f"--set {key}: fields of type {tp} cannot be set from the command line")


def _flat(tp: Any) -> bool:
    """tuple[X, ...] of plain values (not of tuples)."""
    args = typing.get_args(tp)
    return len(args) == 2 and args[1] is Ellipsis and typing.get_origin(args[0]) is not tuple and args[0] is not tuple


def _scalar(text: str) -> int | str:
    try:
        return int(text)
    except ValueError:
        return text


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
        if section == "head":
            cfg = dataclasses.replace(cfg, head=_set_head(sub, name, text.strip(), key))
            continue
        sub_hints = typing.get_type_hints(type(sub))
        if name not in sub_hints:
            raise ConfigError(f"--set {key}: unknown field {name!r}; valid fields of {section}: {', '.join(sub_hints)}")
        value = _coerce(text.strip(), sub_hints[name], key)
        cfg = dataclasses.replace(cfg, **{section: dataclasses.replace(sub, **{name: value})})
    return cfg


def _set_head(head: HeadConfig, name: str, text: str, key: str) -> HeadConfig:
    """One head field set from text: a shared field, the kind (with its defaults), or a field of the kind's config."""
    if name == "kind":
        return head_of_kind(head, _coerce(text, Literal[tuple(HEADS)], key))
    shared = {k: v for k, v in typing.get_type_hints(HeadConfig).items() if k not in ("kind", "params")}
    own = typing.get_type_hints(type(head.params))
    if name not in shared and name not in own:
        if any(name in typing.get_type_hints(h.Config) for h in HEADS.values()):
            raise ConfigError(f"--set {key}: {not_a_field(head.kind, name)}")
        raise ConfigError(f"--set {key}: unknown field {name!r}; valid fields of head ({head.kind}): "
                          f"{', '.join([*shared, *own])}")
    return head.replace(**{name: _coerce(text, shared.get(name) or own[name], key)})


def test_fraction_problem(value: float) -> str:
    """The one line for a data.test_fraction outside (0, 1): checked by `validate`, and by a folder dataset, which
    a run lists before `validate` and the explorer and embed build from a recorded config."""
    return f"data.test_fraction must be between 0 and 1 (got {value}); try --set data.test_fraction=0.2"


def validate(cfg: Config) -> None:
    """Reject values that cannot train; each message says how to fix it."""
    checks = [
        (cfg.train.epochs > 0, f"epochs must be > 0 (got {cfg.train.epochs}); pass --epochs N with N >= 1"),
        (cfg.optim.lr > 0, f"optim.lr must be > 0 (got {cfg.optim.lr}); pass --set optim.lr=0.001"),
        (cfg.optim.head_lr > 0, f"optim.head_lr must be > 0 (got {cfg.optim.head_lr}); pass --set optim.head_lr=0.5"),
        (cfg.data.batch_size > 0, f"batch size must be > 0 (got {cfg.data.batch_size}); pass --set data.batch_size=256"),
        (cfg.data.repeats >= 0, f"data.repeats must be >= 0 (got {cfg.data.repeats}); pass --set data.repeats=1"),
        (cfg.train.eval_batch_size > 0, "train.eval_batch_size must be > 0; pass --set train.eval_batch_size=256"),
        (cfg.model.feature_dim >= 2, f"model.feature_dim must be >= 2 (got {cfg.model.feature_dim}); "
         "try --set model.feature_dim=3"),
        *_head_checks(cfg.head),
        (not cfg.model.weights or cfg.model.arch == "resnet18", f"model.weights={cfg.model.weights}: only "
         "model.arch=resnet18 (--variant R18) starts from weights; drop the --set or use --variant R18"),
        (not cfg.model.weights or cfg.model.stem != "small", f"model.weights={cfg.model.weights}: torchvision's "
         "weights have a 7x7 first convolution, model.stem=small a 3x3 one; drop one of the two --set"),
        (cfg.optim.step_size > 0, "optim.step_size must be > 0; pass --set optim.step_size=20"),
        (cfg.optim.gamma > 0, f"optim.gamma must be > 0 (got {cfg.optim.gamma}; 1.0 keeps the lr); pass --set "
                              "optim.gamma=0.8"),
        (cfg.train.max_rollbacks >= 0, f"train.max_rollbacks must be >= 0 (got {cfg.train.max_rollbacks}); pass "
                                       "--set train.max_rollbacks=3"),
        (cfg.data.limit_train >= 0 and cfg.data.limit_test >= 0, "--limit-train/--limit-test must be >= 0 (0 = all)"),
        (0 <= cfg.data.shift < cfg.model.image_size // 2,
         f"data.shift must be 0..{cfg.model.image_size // 2 - 1} pixels (got {cfg.data.shift}); try --set data.shift=2"),
        (0 < cfg.data.test_fraction < 1, test_fraction_problem(cfg.data.test_fraction)),
        (0 <= cfg.data.crop <= 1, f"data.crop must be 0 (off) or the smallest area fraction of a crop, at most 1 "
         f"(got {cfg.data.crop}); try --set data.crop=0.35"),
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
        (cfg.train.clip_grad_norm >= 0, "train.clip_grad_norm must be >= 0 (0 = off); try --set train.clip_grad_norm=1"),
        (cfg.optim.warmup_epochs >= 0, "optim.warmup_epochs must be >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def _head_checks(h: HeadConfig) -> list[tuple[bool, str]]:
    """The kind's own checks, declared by its config."""
    return h.params.checks()
