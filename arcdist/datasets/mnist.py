"""MNIST and Fashion-MNIST: four IDX files each (raw or .gz), in torchvision's folders."""
from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import torch

from arcdist.datasets.base import DIGITS, DataError, DatasetSpec, Splits, TorchvisionFiles, register_dataset

IDX_DTYPE_UBYTE = 0x08
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def read_idx(path: str | os.PathLike) -> torch.Tensor:
    """Read an IDX file (raw or .gz) of unsigned bytes into a uint8 tensor of its declared shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read ({e}); replace the file with a good copy") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != IDX_DTYPE_UBYTE:
        raise DataError(f"{path}: not an IDX ubyte file (bad magic number {data[:4].hex()}); "
                        "replace it with the original dataset file")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise DataError(f"{path}: truncated IDX header; replace it with the original dataset file")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(torch.tensor(shape).prod())
    if len(data) != expected:
        raise DataError(f"{path}: truncated or padded: {len(data)} bytes, header says {expected}; "
                        "replace it with the original dataset file")
    return torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8).reshape(shape)


class IdxDataset(TorchvisionFiles):
    """Grey 28x28 images and their labels in IDX files: train images, train labels, test images, test labels."""

    files = IDX_FILES
    files_hint = ", raw or .gz"

    def parse(self, paths: list[Path]) -> Splits:
        train_x, train_y, test_x, test_y = (read_idx(p) for p in paths)
        for x, y, split in ((train_x, train_y, "train"), (test_x, test_y, "test")):
            if x.ndim != 3 or y.ndim != 1:
                raise DataError(f"{self.name} {split}: expected images (N, H, W) and labels (N,), got "
                                f"{tuple(x.shape)} and {tuple(y.shape)}; replace the files with the originals")
            if x.shape[0] != y.shape[0]:
                raise DataError(f"{self.name} {split}: {x.shape[0]} images but {y.shape[0]} labels; "
                                "replace the files with the originals")
        return Splits(train_x[:, None], train_y.long(), test_x[:, None], test_y.long())


@register_dataset("mnist")
class MNIST(IdxDataset):
    spec = DatasetSpec("mnist", channels=1, image_size=28, mean=(0.1307,), std=(0.3081,), classes=DIGITS)
    folder = "MNIST/raw"
    torchvision_class = "MNIST"


@register_dataset("fashion-mnist")
class FashionMNIST(IdxDataset):
    spec = DatasetSpec("fashion-mnist", channels=1, image_size=28, mean=(0.2860,), std=(0.3530,),
                       classes=("T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                                "Bag", "Boot"))
    folder = "FashionMNIST/raw"
    torchvision_class = "FashionMNIST"
