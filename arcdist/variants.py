"""The post's 12 variants (and ours) as rows of data.

Each row names its parent and says only what changed, via `dataclasses.replace`.
Add a variant by adding one `_add(...)` line. `python -m arcdist.variants` prints the table.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, replace

from arcdist.config import (Config, ConfigError, DataConfig, HeadConfig, ModelConfig, OptimConfig, TrainConfig,
                            head_of_kind)


@dataclass(frozen=True)
class Variant:
    name: str
    parent: str  # "" for a root
    changed: str  # what differs from the parent
    verdict: str  # the post's verdict ("" for our own rows)
    config: Config


def conv(cin: int, cout: int, k: int, s: int, p: int) -> tuple:
    """A ConvLayer entry: Conv2d(cin, cout, k, s, p, bias=False) -> BatchNorm2d -> PReLU."""
    return ("conv", cin, cout, k, s, p)


M = ("pool", 2, 2)  # MaxPool2d(2, 2); the post's V0 writes MaxPool2d(2), the same layer

ADAM = OptimConfig(net="adam", lr=0.001, momentum=0.0, gamma=1.0, head="adam", head_lr=0.001)


def sgd(lr: float) -> OptimConfig:
    """The post's SGD setting: net SGD(lr, momentum 0.9) + StepLR(20, 0.8), head SGD(0.5)."""
    return OptimConfig(net="sgd", lr=lr, momentum=0.9, step_size=20, gamma=0.8, head="sgd", head_lr=0.5)


VARIANTS: dict[str, Variant] = {}


def _add(name: str, parent: str, changed: str, verdict: str, config: Config) -> None:
    VARIANTS[name] = Variant(name, parent, changed, verdict, replace(config, variant=name))


def _from(parent: str, **changes) -> Config:
    """The parent's config with whole sections replaced."""
    return replace(VARIANTS[parent].config, **changes)


def _model(layers: tuple, fc: tuple) -> ModelConfig:
    return ModelConfig(layers=layers, fc=fc)


V1_LAYERS = (conv(1, 32, 5, 1, 2), conv(32, 64, 5, 1, 2), M, conv(64, 128, 5, 1, 2), conv(128, 256, 5, 1, 2), M,
             conv(256, 512, 5, 1, 2), conv(512, 512, 5, 1, 2), M, conv(512, 256, 5, 1, 2), conv(256, 128, 5, 1, 2),
             conv(128, 64, 5, 1, 2), M)
NARROW_LAYERS = (conv(1, 32, 5, 1, 2), conv(32, 32, 5, 1, 2), M, conv(32, 64, 5, 1, 2), conv(64, 64, 5, 1, 2), M,
                 conv(64, 128, 5, 1, 2), conv(128, 128, 5, 1, 2), M, conv(128, 256, 5, 1, 2),
                 conv(256, 128, 5, 1, 2), conv(128, 64, 5, 1, 2), M)
V122_LAYERS = (conv(1, 32, 5, 1, 2), conv(32, 32, 5, 1, 2), M, conv(32, 64, 5, 1, 2), conv(64, 64, 5, 1, 2), M,
               conv(64, 128, 5, 1, 2), conv(128, 128, 5, 1, 2), M)
C32 = conv(32, 32, 5, 1, 2)
V2_LAYERS = (conv(1, 32, 5, 1, 2), C32, M, C32, C32, M, C32, C32, C32, M, C32, C32, C32, M)

# name, parent, what changed, the post's verdict, config
_add("V0", "", "first try", "classes not separated; unstable mid-training, the plot explodes; no better after 100 epochs",
     Config(model=_model((conv(1, 16, 3, 1, 0), M, conv(16, 32, 3, 1, 0), conv(32, 64, 3, 1, 0),
                          conv(64, 128, 3, 1, 0), conv(128, 256, 3, 1, 0)), ("linear", 256 * 5 * 5)),
            optim=ADAM, data=DataConfig(batch_size=256)))
_add("V1", "V0", "deeper, 5x5 kernels", "loss stops falling after ~10 epochs",
     _from("V0", model=_model(V1_LAYERS, ("linear", 64))))
_add("V1.1", "V1", "Adam -> SGD", "best: clear separation, slower training",
     _from("V1", optim=sgd(0.001)))
_add("V1.1.2", "V1.1", "narrower", "good: clear separation, slower convergence",
     _from("V1.1", model=_model(NARROW_LAYERS, ("linear", 64))))
_add("V1.1.3", "V1.1.2", "fc -> conv", "classes overlap; worse than Linear",
     _from("V1.1.2", model=_model(NARROW_LAYERS, ("conv", 64, 5, 1, 2))))
_add("V1.1.4", "V1.1", "net lr 0.01", "classes overlap",
     _from("V1.1", optim=sgd(0.01)))
_add("V1.2", "V1.1", "fewer layers, 3x3 kernels", "trains faster per epoch, converges slower than the deep nets; overlap",
     _from("V1.1", model=_model((conv(1, 32, 3, 1, 1), conv(32, 64, 3, 1, 2), M, conv(64, 128, 3, 1, 1),
                                 conv(128, 256, 3, 1, 2), M, conv(256, 256, 3, 1, 1), conv(256, 128, 3, 1, 2), M),
                                ("linear", 128 * 5 * 5))))
_add("V1.2.2", "V1.2", "other widths, fewer parameters", "overlap",
     _from("V1.2", model=_model(V122_LAYERS, ("linear", 128 * 3 * 3))))
_add("V1.2.3", "V1.2.2", "net lr 0.01", "good: clear separation, converges fast",
     _from("V1.2.2", optim=sgd(0.01)))
_add("V1.2.4", "V1.2.3", "batch 512", "overlap",
     _from("V1.2.3", data=DataConfig(batch_size=512)))
_add("V2", "V1", "deeper and narrower (V1's optimizer)", "overlap",
     _from("V1", model=_model(V2_LAYERS, ("linear", 32))))
_add("V2.1", "V2", "optimizer SGD(0.01)", "overlap",
     _from("V2", optim=sgd(0.01)))

POST_VARIANTS = tuple(VARIANTS)  # the post's 12, in its order

# the test backbone: the smallest net that still takes every path of a run (a ConvLayer with its BatchNorm and
# PReLU, a pool, the fc, the head); the suite's runs check files, statuses and equality, not what a net learns
T0_LAYERS = (conv(1, 4, 3, 2, 1), M)
_add("T0", "V2", "test backbone: one 4-channel 3x3 stride-2 ConvLayer and a pool -> Linear(196, 2), "
     "about 7,500 multiply-adds per image, W evenly spread, Adam 1e-2 (the suite's runs)", "",
     _from("V2", model=_model(T0_LAYERS, ("linear", 4 * 7 * 7)), head=HeadConfig(init="even"),
           optim=replace(ADAM, lr=0.01, head_lr=0.01)))
_add("T0.1", "T0", "test backbone with V2.1's optimizer SGD(0.01)", "", _from("T0", optim=sgd(0.01)))

# arcdist's own rows
_add("A1", "V2", "CPU recipe: Adam 1e-3 / head Adam 1e-2, W evenly spread, cosine lr, 6 epochs", "",
     _from("V2", optim=replace(ADAM, head_lr=0.01, schedule="cosine", warmup_epochs=0.25),
           head=HeadConfig(init="even"), train=TrainConfig(epochs=6)))
_add("A2", "A1", "2-D recipe: A1 + random 2-pixel shifts, 15 epochs", "",
     _from("A1", data=DataConfig(shift=2),
           train=TrainConfig(epochs=15)))
_add("A3", "A2", "A2 on V1.2.2's wider backbone (32-64-128 channels, 128x3x3 -> Linear(1152, 2))", "",
     _from("A2", model=_model(V122_LAYERS, ("linear", 128 * 3 * 3))))
_add("A2F", "A2", "Fashion-MNIST: A2 + random horizontal flips", "",
     _from("A2", data=DataConfig(dataset="fashion-mnist", shift=2, flip=True)))
_add("A4", "A3", "class directions frozen at the even spread, random rotations up to 10 deg, 40 epochs", "",
     _from("A3", head=HeadConfig(init="even", freeze=True), data=DataConfig(shift=2, rotate=10.0),
           train=TrainConfig(epochs=40)))
W3_LAYERS = (conv(1, 64, 3, 1, 1), conv(64, 64, 3, 1, 1), M, conv(64, 128, 3, 1, 1), conv(128, 128, 3, 1, 1), M,
             conv(128, 256, 3, 1, 1), conv(256, 256, 3, 1, 1), M)
_add("A5", "A4", "wider 3x3 backbone (64-128-256 channels, 256x3x3 -> Linear(2304, 2))", "",
     _from("A4", model=_model(W3_LAYERS, ("linear", 256 * 3 * 3))))
# Fashion-MNIST: W frozen so that pullover and coat cannot merge (A2F: 1.3 deg apart); the order puts the
# classes that are confused with each other next to each other on the circle: tops, then dress, trousers, footwear, bag
FASHION_RING = (0, 6, 2, 4, 3, 1, 5, 7, 9, 8)  # T-shirt, shirt, pullover, coat, dress, trouser, sandal, sneaker, boot, bag
_add("A4F", "A4", "Fashion-MNIST: shifts and flips (no rotation), W frozen in label order", "",
     _from("A4", data=DataConfig(dataset="fashion-mnist", shift=2, flip=True)))
_add("A5F", "A5", "Fashion-MNIST: A4F's data on A5's backbone, W frozen with look-alike classes adjacent", "",
     _from("A5", data=DataConfig(dataset="fashion-mnist", shift=2, flip=True),
           head=HeadConfig(init="even", freeze=True, order=FASHION_RING)))
# the CPU recipe: a light 3x3 net whose 128x3x3 map goes through two ConvLayers to 256x1x1 before the 2-D fc (the
# small non-linear head places the angles better in short runs); with W frozen, digits that look alike sit next to
# each other on the circle (docs/training.md, "The CPU recipe")
DIGIT_RING = (4, 9, 7, 1, 2, 3, 5, 8, 0, 6)
CPU_LAYERS = (conv(1, 32, 3, 1, 1), M, conv(32, 64, 3, 1, 1), M, conv(64, 128, 3, 1, 1), M,
              conv(128, 256, 3, 1, 0), conv(256, 256, 1, 1, 0))
_add("A6", "A4", "CPU recipe: light 3x3 net with a 2-layer head (32-64-128, 256x1x1 x2 -> Linear(256, 2)), W frozen "
     "with look-alike digits adjacent, net lr 2e-3, 1-pixel shifts, no rotation, 9 epochs", "",
     _from("A4", model=_model(CPU_LAYERS, ("linear", 256)), optim=replace(VARIANTS["A4"].config.optim, lr=0.002),
           head=HeadConfig(init="even", freeze=True, order=DIGIT_RING), data=DataConfig(shift=1),
           train=TrainConfig(epochs=9)))
# A6 with the A-Softmax head, whose logits keep the feature's norm (|x| psi(theta)); results/cpu-recipe-search.md
_add("A7", "A6", "CPU recipe, SphereFace: A6 with the A-Softmax head (m = 4, the paper's lambda annealing), 5 epochs", "",
     _from("A6", head=head_of_kind(VARIANTS["A6"].config.head, "sphereface"), train=TrainConfig(epochs=5)))
# the main job and the no-flag default: ArcFace on A6's recipe with its logits scaled by the feature's own norm
# (s = |x|) instead of a fixed s: the net can lower the norm of ambiguous digits and let clean ones reach zero loss
# (docs/heads.md, "ArcFace first"); the epoch count is results/a8-runs' measurement; the margin the ArcFace
# paper's 0.5 rad since 2026-12-07 (the same on MNIST, tighter classes, better on every folder measured:
# results/folders, "The margin as A8's default")
_add("A8", "A6", "CPU recipe, ArcFace with s = |x| (the feature's own norm scales the logits), margin 0.5 rad, "
     "6 epochs", "", _from("A6", head=replace(VARIANTS["A6"].config.head, scale_by="norm", margin=0.5),
                          train=TrainConfig(epochs=6)))
# the long CPU recipe: A8 for 12 epochs (the cosine schedule over the 12) at the margin its figures were measured
# at (results/long-recipe; A8's before 2026-12-07)
_add("A9", "A8", "long CPU recipe: A8 for 12 epochs, margin 0.2 rad", "",
     _from("A8", head=replace(VARIANTS["A8"].config.head, margin=0.2), train=TrainConfig(epochs=12)))
# A9's errors sit deep in a neighbour's sector, not near a boundary a head could move: a deeper backbone instead
DEEP_LAYERS = (*CPU_LAYERS[:3], conv(64, 64, 3, 1, 1), *CPU_LAYERS[3:5], conv(128, 128, 3, 1, 1), *CPU_LAYERS[5:])
_add("A10", "A9", "long CPU recipe, deeper: A9 with a second 3x3 ConvLayer at 64 and at 128 channels", "",
     _from("A9", model=replace(VARIANTS["A9"].config.model, layers=DEEP_LAYERS)))
# the losses grid on A10's backbone (results/losses/README.md, "A deeper backbone"): W learned, the head's lr on
# the net's schedule, as that grid's ArcFace row; each row a new head
_A10_LEARNED = dict(head=replace(VARIANTS["A10"].config.head, freeze=False),
                    optim=replace(VARIANTS["A10"].config.optim, schedule_head=True))
_add("A10-subcenter", "A10", "losses grid on A10: sub-center ArcFace (K = 3, s = |x|), W learned, head lr scheduled", "",
     _from("A10", **_A10_LEARNED | dict(head=head_of_kind(_A10_LEARNED["head"], "subcenter").replace(scale_by="norm"))))
_add("A10-adacos", "A10", "losses grid on A10: AdaCos (adaptive s, no margin), W learned, head lr scheduled", "",
     _from("A10", **_A10_LEARNED | dict(head=head_of_kind(_A10_LEARNED["head"], "adacos"))))
_add("A10-arcface-easy", "A10", "losses grid on A10: ArcFace s = |x| with insightface's easy margin, W learned, head lr "
     "scheduled", "", _from("A10", **_A10_LEARNED | dict(head=_A10_LEARNED["head"].replace(easy_margin=True))))
_add("A9F", "A9", "Fashion-MNIST: A9 with 1-pixel shifts and flips, W frozen with look-alike classes adjacent", "",
     _from("A9", data=DataConfig(dataset="fashion-mnist", shift=1, flip=True),
           head=replace(VARIANTS["A9"].config.head, order=FASHION_RING)))
_add("A10F", "A10", "Fashion-MNIST: A10 with A9F's data (1-pixel shifts and flips) and ring (look-alike classes adjacent)",
     "", _from("A10", data=VARIANTS["A9F"].config.data, head=VARIANTS["A9F"].config.head))
# the losses grid (python -m arcdist.grid --variants losses): every head on A6's backbone and recipe, W learned from
# A6's even spread (frozen W would hide what each loss does to the class directions), 3 epochs to fit a 2-core CPU
_add("L-arcface", "A6", "losses grid: A6 with W learned (not frozen), 3 epochs", "",
     _from("A6", head=replace(VARIANTS["A6"].config.head, freeze=False), train=TrainConfig(epochs=3)))


def _head(kind: str) -> Config:
    return _from("L-arcface", head=head_of_kind(VARIANTS["L-arcface"].config.head, kind))


_add("L-softmax", "L-arcface", "head: softmax, W x + b", "", _head("softmax"))
_add("L-normface", "L-arcface", "head: NormFace, s cos, no margin", "", _head("normface"))
_add("L-sphereface", "L-arcface", "head: SphereFace (A-Softmax), m = 4, lambda annealed 5x faster than the paper's "
     "(gamma 0.6: at its minimum 5 after 1.4 epochs)", "",
     _from("L-arcface", head=replace(_head("sphereface").head, anneal=(1000.0, 0.6, 1.0, 5.0))))
_add("L-cosface", "L-arcface", "head: CosFace, s (cos - m), m = 0.1", "", _head("cosface"))
_add("L-combined", "L-arcface", "head: combined margin s (cos(m1 t + m2) - m3), (1, 0.1, 0.05)", "", _head("combined"))
_add("L-center", "L-arcface", "head: softmax + 0.1 x center loss, centers' rate alpha 0.5", "", _head("center"))
LOSS_VARIANTS = ("L-softmax", "L-normface", "L-sphereface", "L-cosface", "L-arcface", "L-combined", "L-center")
# the ArcFace family: L-arcface with one thing changed each; results/losses/README.md, "ArcFace first"
_add("L-arcface-norm", "L-arcface", "ArcFace with s = |x|: the feature's own norm scales the logits (margin kept)", "",
     _from("L-arcface", head=replace(VARIANTS["L-arcface"].config.head, scale_by="norm")))
_add("L-arcface-learned", "L-arcface", "ArcFace with one learned s (log s trained with the head, from 16)", "",
     _from("L-arcface", head=replace(VARIANTS["L-arcface"].config.head, scale_by="learned")))
_add("L-arcface-norm-frozen", "L-arcface-norm", "ArcFace with s = |x|, W frozen at A6's even spread (look-alike digits "
     "adjacent)", "", _from("L-arcface-norm", head=replace(VARIANTS["L-arcface-norm"].config.head, freeze=True)))
# the head's Adam keeps lr 1e-2 to the end while the net's decays to 0: a learned class direction keeps moving
# by Adam-sized steps, about as far as a class is wide (1.2 deg), while the net can no longer follow it
_add("L-arcface-norm-settled", "L-arcface-norm", "ArcFace with s = |x|, the head's lr on the net's cosine schedule "
     "(W settles as the net does)", "",
     _from("L-arcface-norm", optim=replace(VARIANTS["L-arcface-norm"].config.optim, schedule_head=True)))
ARCFACE_VARIANTS = ("L-arcface", "L-arcface-norm", "L-arcface-learned", "L-arcface-norm-frozen",
                    "L-arcface-norm-settled")
C3 = (conv(3, 64, 3, 1, 1), conv(64, 64, 3, 1, 1), M, conv(64, 128, 3, 1, 1), conv(128, 128, 3, 1, 1), M,
      conv(128, 256, 3, 1, 1), conv(256, 256, 3, 1, 1), M, conv(256, 256, 3, 1, 1), M)
_add("C1", "A1", "CIFAR-10: 3x32x32 input, VGG-style 3x3 blocks to 256x2x2, 30 epochs", "",
     _from("A1", model=ModelConfig(layers=C3, fc=("linear", 256 * 2 * 2), in_channels=3, image_size=32),
           data=DataConfig(dataset="cifar10"), train=TrainConfig(epochs=30)))
_add("R18", "A8", "photos: torchvision's ResNet-18 (random init; model.weights=imagenet or a state dict file to "
     "start from), global pooling, any size from 32 px", "", _from("A8", model=ModelConfig(arch="resnet18", in_channels=3,
                                                                            image_size=96)))
MAIN_VARIANT = "A8"  # the README's main command


def default_variant(cuda: bool | None = None) -> tuple[str, str]:
    """The row a plain `accelerate launch arcdist/train.py` trains, and the line that says why (printed).

    The main job on every machine: the post's best row, V1.1, is a 1.5-GFLOP net for 100 epochs (about a day on
    a 2-core CPU); a GPU has no measured figure yet that favours another row (README, "The no-flag default").
    """
    if cuda is None:
        import torch  # local: keep `arcdist.variants` torch-free to import

        cuda = torch.cuda.is_available()
    where, cfg = ("a GPU" if cuda else "a CPU"), VARIANTS[MAIN_VARIANT].config
    return MAIN_VARIANT, (f"arcdist: no --variant: training {MAIN_VARIANT}, the main job (ArcFace, s = |x|, "
                          f"margin {cfg.head.margin:g} rad, {cfg.train.epochs} epochs) "
                          f"on {where}; --variant V1.1 is the post's best, python -m arcdist.variants lists all")
GROUPS = {"post": POST_VARIANTS, "losses": LOSS_VARIANTS, "arcface": ARCFACE_VARIANTS}  # names that stand for several rows (grid --variants)


def get_variant(name: str) -> Variant:
    """The named variant, or a ConfigError listing the valid names."""
    if name not in VARIANTS:
        raise ConfigError(f"unknown variant {name!r}; valid variants: {', '.join(VARIANTS)}")
    return VARIANTS[name]


def table_rows() -> list[dict]:
    """One dict per variant: name, parent, changed, params, forward FLOPs/image, map shape before the head."""
    from arcdist import heads  # local imports: keep `arcdist.variants` torch-free to import
    from arcdist.model import describe

    rows = []
    for v in VARIANTS.values():
        info = describe(v.config.model)
        rows.append(dict(name=v.name, parent=v.parent or "-", changed=v.changed, params=info["params"],
                         flops=info["flops"], pre_head=info["pre_head_shape"], optim=_optim_label(v.config.optim),
                         batch=v.config.data.batch_size, verdict=v.verdict or "(arcdist)", head=v.config.head.kind,
                         head_settings=heads.head_settings(v.config.head)))
    return rows


def _optim_label(o: OptimConfig) -> str:
    if o.net == "adam" and o.head == "adam":
        return "Adam/Adam"
    return f"{o.net.upper()}({o.lr:g})/{o.head.upper()}({o.head_lr:g})"


def format_variants(rows: list[dict]) -> str:
    """A markdown table of `table_rows()`."""
    head = "| name | parent | what changed | params | MFLOPs/img (fwd) | map before head | optimizer | batch |"
    lines = [head, "|" + " --- |" * 8]
    for r in rows:
        shape = "x".join(map(str, r["pre_head"]))
        lines.append(f"| {r['name']} | {r['parent']} | {r['changed']} | {r['params']:,} | {r['flops'] / 1e6:,.1f} "
                     f"| {shape} | {r['optim']} | {r['batch']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from arcdist.cli import ArgumentParser
    from arcdist.errors import Exit

    ArgumentParser(prog="arcdist.variants", description=__doc__).parse_args(argv)  # --help; no options
    print(format_variants(table_rows()))
    return Exit.OK


if __name__ == "__main__":
    sys.exit(main())
