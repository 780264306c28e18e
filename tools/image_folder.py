"""Write built-in datasets out as an image folder (torchvision's ImageFolder layout), one file per image:

    python tools/image_folder.py OUT [--dataset mnist] [--data-dir D] [--limit-train N] [--limit-test N]
    python tools/image_folder.py OUT --dataset mnist,fashion-mnist --per-class 300,100      # 20 classes
    python tools/image_folder.py OUT --classes 0,1,2,3,4 --per-class 300,100                # 5 digits
    python tools/image_folder.py OUT --tint --size 48 --format jpg --per-class 300,100      # colour digits, 48 px

OUT/train/<class name>/<index>.png and OUT/test/<class name>/<index>.png, index the image's position in its split
(zero-padded, so ImageFolder's file-name order is the split's order within each class). What arcdist's folder
dataset is tested on: `--dataset folder --data-dir OUT` must read back exactly these (image, label) pairs.
Several datasets put their classes side by side (their class names must differ); `--classes` keeps those named;
`--per-class TRAIN,TEST` keeps the first so many images of each class; `--tint` draws each grey image in a random
colour on a random background colour (seeded by its index: the same file every time), `--size` resizes (bilinear).
"""
from __future__ import annotations

import os
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from arcdist.datasets import dataset_spec, load_dataset  # noqa: E402


def write_folder(out: Path, name: str, data_dir: str, limit_train: int = 0, limit_test: int = 0) -> dict[str, int]:
    """Both splits of dataset `name` as PNGs under `out`; returns the image count per split."""
    spec = dataset_spec(name)
    splits = load_dataset(name, data_dir, download=False)
    counts = {}
    for split, x, y, limit in (("train", splits.train_x, splits.train_y, limit_train),
                               ("test", splits.test_x, splits.test_y, limit_test)):
        x, y = x[:limit or None].numpy(), y[:limit or None].numpy()
        for c in spec.classes:
            (out / split / c).mkdir(parents=True, exist_ok=True)
        for i, (img, label) in enumerate(zip(x, y)):
            pixels = img[0] if img.shape[0] == 1 else np.ascontiguousarray(img.transpose(1, 2, 0))
            Image.fromarray(pixels).save(out / split / spec.classes[label] / f"{i:05d}.png")
        counts[split] = len(y)
    return counts


def tint(grey: np.ndarray, seed: int) -> np.ndarray:
    """(H, W) uint8 -> (H, W, 3): a random foreground colour where the image is bright, a random background where
    it is dark (the two at least 100 apart in one channel, so the digit stays visible)."""
    rng = np.random.default_rng(seed)
    while True:
        fg, bg = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        if np.abs(fg - bg).max() >= 100:
            break
    a = grey.astype(np.float32)[..., None] / 255.0
    return np.rint(a * fg + (1 - a) * bg).astype(np.uint8)


def write_mixed(out: Path, names: list[str], data_dir: str, classes: list[str] | None = None,
                per_class: tuple[int, int] = (0, 0), tinted: bool = False, size: int = 0,
                fmt: str = "png") -> dict[str, int]:
    """The datasets `names` side by side as one folder (see the module docstring); returns the count per split."""
    counts = {"train": 0, "test": 0}
    for name in names:
        spec = dataset_spec(name)
        splits = load_dataset(name, data_dir, download=False)
        for split, x, y, limit in (("train", splits.train_x, splits.train_y, per_class[0]),
                                   ("test", splits.test_x, splits.test_y, per_class[1])):
            x, y = x.numpy(), y.numpy()
            seen: dict[int, int] = {}
            for i, (img, label) in enumerate(zip(x, y)):
                cls = spec.classes[label]
                if (classes and cls not in classes) or (limit and seen.get(label, 0) >= limit):
                    continue
                seen[label] = seen.get(label, 0) + 1
                pixels = img[0] if img.shape[0] == 1 else np.ascontiguousarray(img.transpose(1, 2, 0))
                if tinted and pixels.ndim == 2:
                    pixels = tint(pixels, zlib.crc32(f"{name}/{split}/{i}".encode()))
                picture = Image.fromarray(pixels)
                if size:
                    picture = picture.resize((size, size), Image.BILINEAR)
                (out / split / cls).mkdir(parents=True, exist_ok=True)
                picture.save(out / split / cls / f"{i:05d}.{fmt}")
                counts[split] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    from arcdist.cli import ArgumentParser  # a bad argument is one line, exit 2

    p = ArgumentParser(prog="tools/image_folder.py", description=__doc__)
    p.add_argument("out", type=Path)
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-dir", default=os.environ.get("ARCDIST_DATA_DIR", "./data"))
    p.add_argument("--limit-train", type=int, default=0)
    p.add_argument("--limit-test", type=int, default=0)
    p.add_argument("--classes", default="", help="comma-separated class names to keep (default: all)")
    p.add_argument("--per-class", default="", metavar="TRAIN,TEST", help="the first N images of each class per split")
    p.add_argument("--tint", action="store_true", help="grey images drawn in random colours (RGB)")
    p.add_argument("--size", type=int, default=0, help="resize every image to SIZE x SIZE pixels")
    p.add_argument("--format", choices=("png", "jpg"), default="png")
    a = p.parse_args(argv)
    names = a.dataset.split(",")
    try:
        per = tuple(int(v) for v in a.per_class.split(",")) if a.per_class else (0, 0)
    except ValueError:
        per = ()
    if len(per) != 2 or min(per) < 0:
        p.error(f"--per-class {a.per_class}: expected TRAIN,TEST (two counts, e.g. 300,100)")
    if a.size < 0 or 0 < a.size < 8:
        p.error(f"--size {a.size}: expected 8 pixels or more (0 keeps the dataset's size)")
    if a.classes:
        from arcdist.datasets import dataset_spec

        known = [c for n in names for c in dataset_spec(n).classes]
        unknown = [c for c in a.classes.split(",") if c not in known]
        if unknown:
            p.error(f"--classes: {', '.join(unknown)} not among {a.dataset}'s classes ({', '.join(known[:20])})")
    from arcdist.errors import BadInput

    try:
        if len(names) > 1 or a.classes or a.per_class or a.tint or a.size or a.format != "png":
            counts = write_mixed(a.out, names, a.data_dir, a.classes.split(",") if a.classes else None, per, a.tint,
                                 a.size, a.format)
        else:
            counts = write_folder(a.out, a.dataset, a.data_dir, a.limit_train, a.limit_test)
    except BadInput as e:  # no such dataset, its files missing
        p.error(str(e))
    print(f"wrote {counts['train']:,} train and {counts['test']:,} test images of {a.dataset} to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
