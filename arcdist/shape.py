"""The data decides the shape: a run's channels, image size and class count come from its dataset unless set.

`fit_model` runs before the dataset is settled (a folder's mean and std are measured on images decoded to the
run's channels and size), `fit_head` after (a folder's classes are known then). A value given with `--set`
wins where it is a conversion the data allows (a colour folder read as grey, any folder at another size); one
that contradicts the data (a head of 5 classes on 10, 3 channels of MNIST's 1) is a ConfigError naming both.
A variant's class order (head.order, the look-alike digits side by side) belongs to its own dataset: on
other data, or another class count, the natural order is used unless set.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from arcdist.evaluation import openset
from arcdist.config import Config, ConfigError, ModelConfig
from arcdist.datasets import Order, dataset_class, dataset_spec, run_spec
from arcdist.datasets.folder import SPLITS, listing, test_dir
from arcdist.model import smallest_image, takes_net_size, written_size
from arcdist.variants import get_variant


def explicit_keys(overrides: list[str]) -> set[str]:
    """The SECTION.FIELD names set on the command line."""
    return {o.partition("=")[0].strip() for o in overrides}


PHOTO_SIZE = 224  # pixels: a folder's image size unless set is at most this, the size torchvision's ImageNet
# models train and are measured at; a phone's 3,000-px photo decoded whole is 27 MB, at 224 px 150 KB (a JPEG is
# decoded at a reduced scale that still covers it: bench/decode.py)


def fit_model(cfg: Config, explicit: set[str]) -> Config:
    """model.in_channels and model.image_size from the dataset's images unless set (a folder: at least the layer
    list's smallest size, smaller images are enlarged; at most PHOTO_SIZE, larger ones are shrunk), and a folder's
    model.net_size (`auto_net_size`)."""
    cls = dataset_class(cfg.data.dataset)
    channels, size = cls.shape(cfg.data, cfg.model)
    model = cfg.model
    if cfg.data.dataset == "folder":
        size = max(min(size, PHOTO_SIZE), smallest_image(replace(model, in_channels=channels)))
        model = replace(model, in_channels=model.in_channels if "model.in_channels" in explicit else channels,
                        image_size=model.image_size if "model.image_size" in explicit else size)
        if "model.net_size" not in explicit:
            own = get_variant(cfg.variant).config.data.dataset
            written_for = dataset_spec(own).image_size if own != "folder" else 0
            model = replace(model, net_size=auto_net_size(model, written_for or written_size(model)))
    else:  # a fixed dataset's loader neither converts nor resizes
        for key, have, want in (("model.in_channels", model.in_channels, channels),
                                ("model.image_size", model.image_size, size)):
            if key in explicit and have != want:
                raise ConfigError(f"--set {key}={have}: {cfg.data.dataset} has {want}; drop the --set "
                                  f"(or write the images out as a folder: tools/image_folder.py)")
        model = replace(model, in_channels=channels, image_size=size)
    return replace(cfg, model=model)


def auto_net_size(model: ModelConfig, written_for: int) -> int:
    """A folder's model.net_size unless set: a layer list computes at the size it was written for (`written_for`,
    its variant's own dataset's: 28 px for the post's and A6-A10's lists; kept inside the sizes the list takes to
    its fc's map unpooled, `smallest_image`..`written_size`) when the images are larger than it takes unpooled,
    else at the image size (0). A8's list on 96-px images: 60.7 % at 96 px, 80.3 % at 28 (results/folders)."""
    if not takes_net_size(model):
        return 0
    top = written_size(model)
    return min(max(written_for, smallest_image(model)), top) if model.image_size > top else 0


MIN_STEPS = 128  # a folder run's epoch takes at least this many steps unless its batch or passes are set
# (auto_batch, auto_repeats; results/folders)


def auto_batch(n: int, batch: int) -> int:
    """A folder's data.batch_size unless set: the variant's, halved while an epoch of `n` training images would take
    fewer than MIN_STEPS steps, not below 16: about the steps an epoch the variant's recipe was written for (A8's
    256 is MNIST's 234 steps an epoch). A folder of 3,000 images took 11 at 256 (results/folders: tinted 48-px
    digits 76.7 % at 256, 88.6 % at 64 (46 steps), 93.5 % at 16 (187), as at 64 for twice the epochs); at most `n`."""
    while batch // 2 >= 16 and n // batch < MIN_STEPS:
        batch //= 2
    return max(1, min(batch, n))  # a folder of fewer images than 16: one batch of all of them


def auto_repeats(n: int, batch: int) -> int:
    """A folder's data.repeats unless set: the passes over its `n` training images an epoch that give at least
    MIN_STEPS steps at `batch` (1 from 2,048 images at 16). What the batch rule cannot give a small folder: 200
    images at 16 are 12 steps a pass, 72 in A8's 6 epochs (results/folders: 63 % there, 82 % in 24 epochs)."""
    steps = max(n // batch, 1)
    return max(1, -(-MIN_STEPS // steps))


def train_images(cfg: Config) -> int:
    """The number of images a folder run trains on: its train split, cut to data.limit_train, of the classes it
    trains on (data.train_classes, resolved)."""
    labels = listing(Path(cfg.data.data_dir), cfg.data.test_fraction)[2].labels[:cfg.data.limit_train or None]
    if cfg.data.train_classes:
        labels = labels[torch.isin(labels, torch.tensor(cfg.data.train_classes))]
    return len(labels)


def split_batch(batch: int, world: int) -> int:
    """`batch` rounded down to a multiple of the process count, at least one image a process (256 on 3: 255)."""
    return max(world, batch // world * world)


def single_batch(cfg: Config) -> int:
    """The batch of one process with data.batch_size unset: the variant's; a folder's from its size (`auto_batch`)."""
    own = get_variant(cfg.variant).config.data.batch_size
    return auto_batch(train_images(cfg), own) if cfg.data.dataset == "folder" else own


def fit_batch(cfg: Config, explicit: set[str], world: int = 1) -> Config:
    """data.batch_size unless set: a folder's from its size (`auto_batch`), split evenly over `world` processes
    (`split_batch`); then data.repeats unless set: 1, a folder's from its size at that batch (`auto_repeats`). A
    batch given with --set is kept; one that does not split is refused by the trainer."""
    if "data.batch_size" not in explicit:
        cfg = replace(cfg, data=replace(cfg.data, batch_size=split_batch(single_batch(cfg), world)))
    if "data.repeats" not in explicit:
        repeats = auto_repeats(train_images(cfg), cfg.data.batch_size) if cfg.data.dataset == "folder" else 1
        cfg = replace(cfg, data=replace(cfg.data, repeats=repeats))
    return cfg


def notes(cfg: Config, world: int = 1) -> list[str]:
    """The lines a run prints about choices the data and the launch made: a folder's images enlarged to the smallest
    size the net takes or shrunk to PHOTO_SIZE, a layer list computing at a smaller size than the images', a
    folder's smaller batch and its passes an epoch, a batch rounded to split over `world` processes, a folder's
    test split (val/, or held out by `data.test_fraction`)."""
    out, m = [], cfg.model
    if cfg.data.dataset == "folder" and m.image_size in (smallest_image(m), PHOTO_SIZE):  # (own size: node-cached)
        own = dataset_class("folder").shape(cfg.data, m)[1]
        if own < m.image_size:
            other = "ResNet-18's" if m.arch == "resnet18" else f"{cfg.variant}'s layer list"
            out.append(f"arcdist: {own}-px images, enlarged to {m.image_size} px when decoded, the smallest "
                       f"{other} takes")
        elif own > m.image_size:
            out.append(f"arcdist: {own}-px images, shrunk to {m.image_size} px when decoded (a folder's largest "
                       f"size unless set; --set model.image_size={own} keeps theirs)")
    if m.net_size and m.net_size < m.image_size:
        out.append(f"arcdist: {m.image_size}-px images, pooled to {m.net_size} px for {cfg.variant}'s layer list "
                   f"(model.net_size={m.net_size}; --set model.net_size=0 for the full size, or --variant R18)")
    single = single_batch(cfg)
    own = get_variant(cfg.variant).config.data.batch_size if cfg.data.dataset == "folder" else 0
    smaller, repeats = cfg.data.batch_size < own and single < own, max(1, cfg.data.repeats)
    if smaller or repeats > 1:
        n = train_images(cfg)
        theirs = f"would take {n // own}; --set data.batch_size={own} keeps it" if n >= own else \
            f"is more than the {n:,} images"
        steps = Order.of(cfg).steps(n)
        epoch = f"{repeats} passes an epoch, {steps} steps (--set data.repeats=1 for one)" if repeats > 1 else \
            f"{steps} steps an epoch"
        why = f" ({cfg.variant}'s {own} {theirs})" if smaller else ""
        out.append(f"arcdist: {n:,} training images: batch {cfg.data.batch_size}{why}, {epoch}")
    if world > 1 and single % world and cfg.data.batch_size == split_batch(single, world):
        out.append(f"arcdist: batch {cfg.data.batch_size} ({cfg.data.batch_size // world} on each of {world} "
                   f"processes): {single} does not split over {world}; --set data.batch_size=N, a multiple of "
                   f"{world}, sets it")
    test = test_dir(Path(cfg.data.data_dir)) if cfg.data.dataset == "folder" else SPLITS[1]
    if test is None:
        out.append(f"arcdist: {cfg.data.data_dir} has no train/ and test/: {cfg.data.test_fraction:.0%} of each "
                   f"class's images are the test split, chosen by file name (data.test_fraction="
                   f"{cfg.data.test_fraction})")
    elif test != SPLITS[1]:
        out.append(f"arcdist: {cfg.data.data_dir} has no test/: its {test}/ is the test split")
    return out


def fit_head(cfg: Config, explicit: set[str], own_dataset: str) -> Config:
    """head.num_classes from the dataset's classes, or the classes it trains on (data.train_classes, resolved to
    sorted labels; a --set that differs is refused); head.order kept only on the variant's own dataset
    (`own_dataset`) with that many classes, or when set."""
    spec = run_spec(cfg.data, cfg.model)
    n, head, data = spec.num_classes, cfg.head, cfg.data
    what = f"{cfg.data.dataset} in {cfg.data.data_dir} has {n} classes"
    if data.train_classes:
        data = replace(data, train_classes=openset.resolve(data.train_classes, spec.classes))
        n, what = len(data.train_classes), f"data.train_classes lists {len(data.train_classes)} classes"
    if n < 2:
        names = ", ".join(str(spec.classes[i]) for i in data.train_classes) if data.train_classes else \
            ", ".join(map(str, spec.classes)) or "none"
        more = "list 2 or more in data.train_classes" if "data.train_classes" in explicit else \
            "add a class (a sub-folder of its images)"
        raise ConfigError(f"{cfg.data.dataset} in {cfg.data.data_dir}: {n} class to train on ({names}); a "
                          f"classifier needs at least 2: {more}")
    if "head.num_classes" in explicit and head.num_classes != n:
        raise ConfigError(f"--set head.num_classes={head.num_classes}: {what}; drop the --set")
    order = head.order
    if "head.order" not in explicit and (cfg.data.dataset != own_dataset or len(order) != n or data.train_classes):
        order = ()
    return replace(cfg, data=data, head=head.replace(num_classes=n, order=order))
