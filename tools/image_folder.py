"""Write a built-in dataset out as an image folder (torchvision's ImageFolder layout), one PNG per image:

    python tools/image_folder.py OUT [--dataset mnist] [--data-dir D] [--limit-train N] [--limit-test N]

OUT/train/<class name>/<index>.png and OUT/test/<class name>/<index>.png, index the image's position in its split
(zero-padded, so ImageFolder's file-name order is the split's order within each class). What arcdist's folder
dataset is tested on: `--dataset folder --data-dir OUT` must read back exactly these (image, label) pairs.
"""
from __future__ import annotations

import argparse
import os
import sys
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tools/image_folder.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-dir", default=os.environ.get("ARCDIST_DATA_DIR", "./data"))
    p.add_argument("--limit-train", type=int, default=0)
    p.add_argument("--limit-test", type=int, default=0)
    a = p.parse_args(argv)
    counts = write_folder(a.out, a.dataset, a.data_dir, a.limit_train, a.limit_test)
    print(f"wrote {counts['train']:,} train and {counts['test']:,} test images of {a.dataset} to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
