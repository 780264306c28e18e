"""Embed images with a trained run: `arcdist embed RUN_DIR --out F.npz`.

    arcdist embed RUN_DIR --out test.npz                          # the run's own test split
    arcdist embed RUN_DIR --split train --out train.npz           # its train split
    arcdist embed RUN_DIR --dataset fashion-mnist --out f.npz     # another built-in dataset (same image shape)
    arcdist embed RUN_DIR --images DIR --out mine.npz             # any folder of images: DIR/<class>/* or DIR/*

The run's last checkpoint (or --epoch N's; the averaged backbone of a train.ema run) embeds the images converted
as the run converts its data (its channels, size and normalisation), in batches, on the GPU when one is visible.
The npz holds `features` (N, D) float32, `labels` (N,) int64 (the index into `classes`; -1 where an image has no
class folder), `classes`, and for files `paths`; and the run's prediction for each image: `predicted` (N,) int64,
the index into `run_classes` (the classes the run was trained to tell apart) of its head's best score, and
`score` (N,) float32, that score (the cosine to the class's direction for the angular heads, W x + b for softmax
and center loss). On the run's own test split the features equal the run's saved features of that epoch and
the predictions its own (tests/test_embed.py). `Embedder` is the model `arcdist export` writes.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch
from torch import nn

from arcdist import checkpoint, errors, rundir
from arcdist.cli import ArgumentParser
from arcdist.config import Config, ConfigError
from arcdist.data import normalise, pixel_scale, run_data_dir
from arcdist.errors import DataError, Exit

BATCH = 256  # images per forward pass
DECODED = 4096  # files decoded at a time: a folder of any size embeds in the memory of these, not of all its images


class Embedder(nn.Module):
    """Float images in [0, 1], (N, C, H, W) -> (N, D) features: the run's normalisation, then its backbone."""

    def __init__(self, backbone: nn.Module, mean: tuple[float, ...], std: tuple[float, ...], per_image: bool = False):
        super().__init__()
        self.backbone, self.per_image = backbone, per_image
        scale = pixel_scale(mean, std)  # as the training computes it (arcdist.data.DeviceData.normalise)
        self.register_buffer("mean", scale[0])
        self.register_buffer("inv_std", scale[1])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pixels(images * 255.0)

    def pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Features of images on the 0..255 scale (uint8 or float): the training's own arithmetic."""
        return self.backbone(normalise(x, self.mean, self.inv_std, self.per_image))


def checkpoint_of(run_dir: Path, epoch: int | None) -> Path:
    """The newest verified checkpoint, or epoch `epoch`'s; ConfigError naming what there is."""
    found = checkpoint.list_checkpoints(run_dir)
    if epoch is not None:
        found = [p for p in found if p.name == f"epoch-{epoch:04d}"]
        if not found:
            raise ConfigError(f"{run_dir} has no checkpoint of epoch {epoch}; the run kept "
                              f"{', '.join(p.name for p in checkpoint.list_checkpoints(run_dir)) or 'none'}")
    if not found:
        raise ConfigError(f"{run_dir} has no checkpoint; train it (or --resume it) first")
    why = checkpoint.verify(found[-1])
    if why is not None:
        raise ConfigError(f"checkpoint {found[-1]} fails its checksums ({why}); pass --epoch N of another")
    return found[-1]


def load_weights(module: nn.Module, path: Path, what: str, run_dir: Path, averaged: bool = False) -> None:
    """Load into `module` the file of checkpoint `path` whose tensors are the module's own (with `averaged`, the
    averaged backbone of a train.ema run: AveragedModel's module.*); ConfigError when no file fits."""
    from safetensors.torch import load_file

    want = set(module.state_dict())
    for f in sorted(path.glob("model*.safetensors")):
        state = load_file(str(f))
        if averaged:
            if "n_averaged" not in state:
                continue
            state = {k.removeprefix("module."): v for k, v in state.items() if k.startswith("module.")}
        if set(state) == want:
            module.load_state_dict(state)
            return
    raise ConfigError(f"checkpoint {path} holds no {what} of this run's shape; is {run_dir} an arcdist run?")


def load_embedder(run_dir: Path, epoch: int | None = None) -> tuple[Config, Embedder, Path]:
    """The run's config, its backbone with the checkpoint's weights (eval mode, CPU), and the checkpoint."""
    from arcdist.datasets import run_spec
    from arcdist.model import build_backbone

    run_dir = Path(run_dir)
    cfg = rundir.load_saved_config(run_dir, flag="")
    path = checkpoint_of(run_dir, epoch)
    backbone = build_backbone(cfg.model)
    load_weights(backbone, path, "backbone", run_dir, averaged=bool(cfg.train.ema))
    spec = run_spec(cfg.data, cfg.model)
    return cfg, Embedder(backbone, spec.mean, spec.std, spec.per_image).eval(), path


SCORED = ("W", "b", "sub_centers")  # the saved geometry the prediction rule reads (arcdist.heads.geometry_scores)


class Classifier(nn.Module):
    """Images in [0, 1] -> (features, scores): the Embedder, then the head's prediction rule on its geometry
    (`geometry_scores`: the cosine to each class's direction, or W x + b for softmax and center loss), one column
    per run class, so argmax is the predicted class; a class a `data.train_classes` run never saw scores -inf."""

    def __init__(self, embedder: Embedder, geometry: dict[str, torch.Tensor], rows: torch.Tensor | None,
                 num_classes: int):
        super().__init__()
        self.embedder, self.num_classes = embedder, num_classes
        self.names = [k for k in SCORED if geometry.get(k) is not None]
        for k in self.names:
            self.register_buffer(k, geometry[k].detach().float())
        place = unseen = None
        if rows is not None:  # head row r -> column rows[r]
            place = torch.zeros(len(rows), num_classes)
            place[torch.arange(len(rows)), rows] = 1.0
            unseen = torch.full((num_classes,), -math.inf)
            unseen[rows] = 0.0
        self.register_buffer("place", place)
        self.register_buffer("unseen", unseen)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.embedder(images)
        return features, self.scores(features)

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        from arcdist.heads import geometry_scores

        s = geometry_scores(features, {k: getattr(self, k) for k in self.names})
        return s if self.place is None else s @ self.place + self.unseen

    def trained(self) -> list[int] | None:
        """The labels of the classes the head has rows for (a data.train_classes run), None when it has all."""
        return None if self.unseen is None else torch.nonzero(self.unseen == 0).flatten().tolist()


def load_classifier(run_dir: Path, epoch: int | None = None) -> tuple[Config, Classifier, Path]:
    """`load_embedder`'s, with the checkpoint's head read into its prediction rule (`Classifier`)."""
    from arcdist.datasets import run_spec
    from arcdist.evaluation.openset import SeenClasses
    from arcdist.heads import build_head

    cfg, embedder, path = load_embedder(run_dir, epoch)
    head = build_head(cfg.head, cfg.model.feature_dim)
    load_weights(head, path, "head", run_dir)
    num_classes = run_spec(cfg.data, cfg.model).num_classes
    seen = SeenClasses.of(cfg.data.train_classes, num_classes)
    rows = None if seen is None else seen.labels
    return cfg, Classifier(embedder, head.geometry(), rows, num_classes).eval(), path


@torch.no_grad()
def predict(model: Classifier, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(predicted class, its score) of each feature, in float32."""
    score, best = model.scores(torch.from_numpy(features).float()).max(dim=1)
    return best.numpy().astype(np.int64), score.numpy().astype(np.float32)


def image_files(root: Path) -> tuple[list[str], list[int], list[str]]:
    """Every image under `root` (or `root` itself, one image file), sub-folders included, sorted: (paths, labels,
    classes); a file in `root` itself has
    label -1, one under root/<class>/ the index of <class> among the sub-folders (sorted); hidden names are
    skipped (`folder.visible`)."""
    from arcdist.datasets.folder import image_extensions, is_image, visible, walk_files

    if root.is_file() and is_image(root.name):  # one image: embedded alone, unlabelled
        return [str(root)], [-1], []
    if not root.is_dir():
        what = "not an image file" if root.is_file() else "no such folder"
        raise DataError(f"{root}: {what}; pass --images DIR with image files (or DIR/<class>/ folders), or one image")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and visible(d.name))
    loose = [f for f in sorted(root.iterdir()) if f.is_file() and visible(f.name)]
    paths, labels = [], []
    for label, files in [(-1, loose), *((i, walk_files(root / c)) for i, c in enumerate(classes))]:
        for f in files:
            if is_image(f.name):
                paths.append(str(f))
                labels.append(label)
    if not paths:
        raise DataError(f"{root}: no image files (images end in {', '.join(image_extensions())}); "
                        "pass a folder of images")
    return paths, labels, classes


@torch.no_grad()
def embed_pixels(model: Embedder, x: torch.Tensor, device: torch.device, progress: bool = True,
                 precision: str = "no", channels_last: bool = False) -> np.ndarray:
    """(N, C, H, W) images on the 0..255 scale -> (N, D) float32 features, BATCH at a time, in the run's
    `precision` (autocast bf16 / fp16, as its evaluation ran) and memory format, so that they equal its saved
    features (a bf16 run's differ from fp32's by up to ~2 % of a feature's length)."""
    from tqdm import tqdm

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.backbone.to(memory_format=fmt)
    out = []
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        for i in tqdm(range(0, len(x), BATCH), desc="embed", disable=not progress, leave=False):
            out.append(model.pixels(x[i:i + BATCH].to(device).contiguous(memory_format=fmt)).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, model.backbone[-1].out_features), np.float32)


def embed(run_dir: Path, out: Path, split: str = "test", dataset: str | None = None, data_dir: str | None = None,
          images: Path | None = None, epoch: int | None = None, progress: bool = True) -> dict:
    """Write the npz (module docstring); returns what it holds (counts, the checkpoint)."""
    from arcdist.datasets import dataset_spec, load_dataset, run_spec
    from arcdist.datasets.folder import SPLITS, Decoder, file_loader, listing, test_dir

    cfg, classifier, path = load_classifier(run_dir, epoch)
    model = classifier.embedder
    device = torch.device("cuda" if torch.cuda.is_available() and not cfg.train.cpu else "cpu")
    model.to(device)
    extra, x, paths = {}, None, None
    if images is not None:
        paths, labels, classes = image_files(Path(images))
        y, extra = torch.tensor(labels), dict(paths=np.array(paths))
    else:
        name = dataset or cfg.data.dataset
        if name == "folder":  # labelled by the run's own classes (a split may lack some; -1: not one of them)
            root = Path(data_dir or cfg.data.data_dir)
            test = test_dir(root)
            if test:
                paths, labels, found = image_files(root / (test if split == "test" else split))
            else:  # one folder of classes: the run's held-out split of it
                _, found, *splits = listing(root, cfg.data.test_fraction)
                chosen = splits[SPLITS.index(split)]
                paths, labels = list(chosen.paths), chosen.labels.tolist()
            classes = list(cfg.data.classes)
            labels = [classes.index(found[k]) if k >= 0 and found[k] in classes else -1 for k in labels]
            y, extra = torch.tensor(labels), dict(paths=np.array(paths))
        else:
            splits = load_dataset(name, run_data_dir(cfg.data.data_dir, data_dir) if name == cfg.data.dataset else
                                  (data_dir or os.environ.get("ARCDIST_DATA_DIR") or cfg.data.data_dir), download=False)
            x, y = (splits.test_x, splits.test_y) if split == "test" else (splits.train_x, splits.train_y)
            if tuple(x.shape[1:]) != (cfg.model.in_channels, cfg.model.image_size, cfg.model.image_size):
                raise ConfigError(f"{name} has {'x'.join(map(str, x.shape[1:]))} images, the run takes "
                                  f"{cfg.model.in_channels}x{cfg.model.image_size}x{cfg.model.image_size}; write "
                                  "them out as a folder (tools/image_folder.py) and pass --images DIR")
            classes = list(dataset_spec(name).classes)
    precision, channels_last = cfg.train.mixed_precision, cfg.train.channels_last is True
    if paths is None:
        feats = embed_pixels(model, x, device, progress, precision, channels_last)
    else:  # decoded DECODED files at a time
        from tqdm import tqdm

        decode = Decoder(cfg.model.in_channels, cfg.model.image_size)
        chunks = file_loader(tuple(paths), decode, cfg.data.workers, batch_size=DECODED)
        parts = [embed_pixels(model, chunk, device, False, precision, channels_last)
                 for chunk in tqdm(chunks, desc="embed", total=-(-len(paths) // DECODED), disable=not progress,
                                   leave=False)]
        feats = np.concatenate(parts) if parts else np.zeros((0, cfg.model.feature_dim), np.float32)
    predicted, score = predict(classifier.cpu(), feats)
    run_classes = list(run_spec(cfg.data, cfg.model).classes)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.npz")
    np.savez(tmp, features=feats.astype(np.float32), labels=y.numpy().astype(np.int64), classes=np.array(classes),
             predicted=predicted, score=score, run_classes=np.array(run_classes), **extra)
    os.replace(tmp, out)
    return dict(out=str(out), images=len(feats), dim=feats.shape[1], checkpoint=str(path),
                **agreement(y.numpy(), classes, predicted, run_classes, classifier.trained()))


def agreement(labels: np.ndarray, classes: list[str], predicted: np.ndarray, run_classes: list[str],
              trained: list[int] | None = None) -> dict:
    """How many images carry the name of one of the classes the run trained on (by their class folder or split;
    `trained`: the labels of a data.train_classes run's head rows, None for all) and how many of those the run
    predicts as that class (the run's own test accuracy on its split); `unseen`: images of its other classes."""
    named = {i: run_classes.index(c) for i, c in enumerate(classes) if c in run_classes}
    truth = np.array([named.get(int(k), -1) for k in labels], dtype=np.int64)
    seen = np.isin(truth, trained) if trained is not None else truth >= 0
    return dict(known=int(seen.sum()), right=int((predicted[seen] == truth[seen]).sum()),
                unseen=int(((truth >= 0) & ~seen).sum()))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(prog="arcdist embed", description=__doc__)
    p.add_argument("run_dir", help="a run folder (config.json, checkpoints/)")
    p.add_argument("--out", required=True, help="the npz to write")
    p.add_argument("--split", choices=("test", "train"), default="test")
    p.add_argument("--dataset", default=None, help="a built-in dataset (default: the run's)")
    p.add_argument("--data-dir", default=None, help="where the dataset is (default: the run's recorded folder while it "
                                                     "exists, else $ARCDIST_DATA_DIR)")
    p.add_argument("--images", default=None, metavar="DIR", help="a folder of images: DIR/<class>/* or DIR/*")
    p.add_argument("--epoch", type=int, default=None, help="the checkpoint of epoch N (default: the newest)")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        done = embed(Path(args.run_dir), Path(args.out), args.split, args.dataset, args.data_dir,
                     Path(args.images) if args.images else None, args.epoch, not args.no_progress)
    except errors.BadInput as e:
        print(f"arcdist embed: error: {e}", file=sys.stderr)
        return Exit.BAD_INPUT
    print(f"{done['images']:,} features of {done['dim']} dimensions by {done['checkpoint']} -> {done['out']}")
    if done["known"]:
        print(f"predicted: {done['right']:,} of the {done['known']:,} images of the run's classes right "
              f"({100 * done['right'] / done['known']:.2f} %)" + (f"; {done['unseen']:,} images of classes it never "
                                                                    "trained on left out" if done["unseen"] else ""))
    return Exit.OK


if __name__ == "__main__":
    sys.exit(main())
