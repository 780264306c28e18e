"""CIFAR-10: torchvision's python batches (five training pickles and a test pickle), read without running code."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch

from arcdist.datasets.base import DataError, DatasetSpec, Splits, TorchvisionFiles, register_dataset
from arcdist.errors import first_line


class _ArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays and plain containers only: a CIFAR batch file cannot run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing {module}.{name}")
        return super().find_class(module, name)


def read_cifar_batch(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """One CIFAR python batch file -> images (N, 3, 32, 32) uint8 and labels (N,) int64."""
    try:
        with open(path, "rb") as f:
            d = _ArraysOnly(f, encoding="bytes").load()
        x = torch.from_numpy(np.asarray(d[b"data"], dtype=np.uint8).copy())
        y = torch.as_tensor(list(d[b"labels"]), dtype=torch.long)
        x = x.reshape(-1, 3, 32, 32)
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError, RuntimeError) as e:
        raise DataError(f"{path}: not a CIFAR-10 batch ({first_line(e)}); replace it with the original file") from None
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{path}: {x.shape[0]} images but {y.shape[0]} labels; replace it with the original file")
    return x, y


@register_dataset("cifar10")
class CIFAR10(TorchvisionFiles):
    spec = DatasetSpec("cifar10", channels=3, image_size=32, mean=(0.4914, 0.4822, 0.4465),
                       std=(0.2470, 0.2435, 0.2616),
                       classes=("plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"))
    folder = "cifar-10-batches-py"
    files = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)  # the test batch last
    torchvision_class = "CIFAR10"

    def parse(self, paths: list[Path]) -> Splits:
        train = [read_cifar_batch(p) for p in paths[:-1]]
        test_x, test_y = read_cifar_batch(paths[-1])
        return Splits(torch.cat([x for x, _ in train]), torch.cat([y for _, y in train]), test_x, test_y)
