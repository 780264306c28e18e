"""IDX files -> uint8 tensors, the dataset registry, and device-resident batches.

The whole dataset lives on the training device as one uint8 tensor; a batch is an index slice
normalised on the device. No DataLoader and no per-sample Python on the hot path.

Order (fixed for a given seed and world size): each epoch draws a permutation of the training set
from a generator seeded with (seed, epoch); global batch i is perm[i*B:(i+1)*B] (the last partial
batch is dropped); rank r takes the r-th contiguous chunk of B/world images of it.
Augmentation (data.shift, data.flip, data.rotate) draws each image's shift, flip and angle from
generators seeded with (seed, epoch), for the whole global epoch at once: the same image gets the same
draw for any world size, and a resumed epoch replays it exactly.
"""
from __future__ import annotations

import gzip
import math
import os
import pickle
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from arcdist.config import ConfigError, first_line

IDX_DTYPE_UBYTE = 0x08


class DataError(ConfigError):
    """Missing or malformed data files."""


@dataclass(frozen=True)
class DatasetSpec:
    folder: str  # torchvision's folder under the data dir that holds the files
    files: tuple[str, ...]  # idx: train images, train labels, test images, test labels; cifar: batches, test last
    mean: tuple[float, ...]  # per-channel, on the 0..1 scale
    std: tuple[float, ...]
    torchvision_class: str
    channels: int = 1
    image_size: int = 28
    classes: tuple[str, ...] = tuple(str(d) for d in range(10))
    format: str = "idx"  # "idx" (MNIST family) or "cifar" (torchvision's python batches)


MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec("MNIST/raw", MNIST_FILES, (0.1307,), (0.3081,), "MNIST"),
    "fashion-mnist": DatasetSpec("FashionMNIST/raw", MNIST_FILES, (0.2860,), (0.3530,), "FashionMNIST",
                                 classes=("T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                                          "Sneaker", "Bag", "Boot")),
    "cifar10": DatasetSpec("cifar-10-batches-py", CIFAR_FILES, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                           "CIFAR10", channels=3, image_size=32, format="cifar",
                           classes=("plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")),
}


def get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}")
    return DATASETS[name]


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


def _find(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _network_reachable(host: str = "ossci-datasets.s3.amazonaws.com", timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _download(spec: DatasetSpec, root: Path) -> None:
    import torchvision

    getattr(torchvision.datasets, spec.torchvision_class)(root=str(root), train=True, download=True)
    getattr(torchvision.datasets, spec.torchvision_class)(root=str(root), train=False, download=True)


@dataclass
class Splits:
    train_x: torch.Tensor  # (N, C, H, W) uint8
    train_y: torch.Tensor  # (N,) int64
    test_x: torch.Tensor
    test_y: torch.Tensor


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


def _read_cifar(paths: list[Path]) -> tuple[torch.Tensor, ...]:
    train = [read_cifar_batch(p) for p in paths[:-1]]
    test_x, test_y = read_cifar_batch(paths[-1])
    return torch.cat([x for x, _ in train]), torch.cat([y for _, y in train]), test_x, test_y


def _read_idx(name: str, paths: list[Path]) -> tuple[torch.Tensor, ...]:
    train_x, train_y, test_x, test_y = (read_idx(p) for p in paths)
    for x, y, split in ((train_x, train_y, "train"), (test_x, test_y, "test")):
        if x.ndim != 3 or y.ndim != 1:
            raise DataError(f"{name} {split}: expected images (N, H, W) and labels (N,), got {tuple(x.shape)} and "
                            f"{tuple(y.shape)}; replace the files with the originals")
        if x.shape[0] != y.shape[0]:
            raise DataError(f"{name} {split}: {x.shape[0]} images but {y.shape[0]} labels; "
                            "replace the files with the originals")
    return train_x[:, None], train_y.long(), test_x[:, None], test_y.long()


def load_dataset(name: str, data_dir: str | os.PathLike, download: bool = True) -> Splits:
    """The files of `name` under `data_dir/<folder>/` as uint8 images (N, C, H, W) and int64 labels."""
    spec = get_spec(name)
    raw = Path(data_dir) / spec.folder
    paths = [_find(raw, f) for f in spec.files]
    if None in paths and download and _network_reachable():
        try:
            _download(spec, Path(data_dir))
        except Exception as e:  # noqa: BLE001 - any download failure becomes the one-line error below
            print(f"warning: download of {name} failed: {e}")
        paths = [_find(raw, f) for f in spec.files]
    if None in paths:
        missing = [f for f, p in zip(spec.files, paths) if p is None]
        raise DataError(f"{name}: missing {', '.join(missing)} in {raw} (expects {', '.join(spec.files)}"
                        f"{', raw or .gz' if spec.format == 'idx' else ''}); "
                        f"point --data-dir or ARCDIST_DATA_DIR at a folder holding {spec.folder}/")
    return Splits(*(_read_cifar(paths) if spec.format == "cifar" else _read_idx(name, paths)))


def resolve_data_dir(flag: str | None) -> str:
    """--data-dir, else $ARCDIST_DATA_DIR, else ./data."""
    return flag or os.environ.get("ARCDIST_DATA_DIR") or "./data"


class DeviceData:
    """A split resident on `device` as uint8, served as normalised float batches."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, spec: DatasetSpec, device: torch.device):
        self.x = x.to(device)
        self.y = y.to(device)
        self.device = device
        self.mean = torch.tensor(spec.mean, device=device).view(1, -1, 1, 1) * 255.0
        self.inv_std = 1.0 / (torch.tensor(spec.std, device=device).view(1, -1, 1, 1) * 255.0)

    def __len__(self) -> int:
        return self.x.shape[0]

    channels_last = False  # hand out NHWC batches (set by the trainer with train.channels_last)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        out = (x.float() - self.mean) * self.inv_std
        return out.contiguous(memory_format=torch.channels_last) if self.channels_last else out

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.normalise(self.x[idx]), self.y[idx]


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The epoch's shuffled order; a pure function of (seed, epoch) so resume replays it exactly."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def augment_plan(n: int, seed: int, epoch: int, shift: int, flip: bool) -> torch.Tensor | None:
    """Per position of the epoch's order: (dy, dx, flip) as an (n, 3) int tensor; None without augmentation."""
    if not shift and not flip:
        return None
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 7_919)  # independent of the order's stream
    plan = torch.zeros(n, 3, dtype=torch.long)
    if shift:
        plan[:, :2] = torch.randint(-shift, shift + 1, (n, 2), generator=g)
    if flip:
        plan[:, 2] = torch.randint(0, 2, (n,), generator=g)
    return plan


def augment(x: torch.Tensor, plan: torch.Tensor, shift: int) -> torch.Tensor:
    """Mirror each (N, C, H, W) image where plan's flip is 1, then shift it by plan's (dy, dx) with zero fill.

    Content moves down/right for positive dy/dx. One gather on the device, any dtype.
    """
    n, c, h, w = x.shape
    plan = plan.to(x.device)
    padded = torch.nn.functional.pad(x, (shift, shift, shift, shift)) if shift else x
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = shift + ar_h - plan[:, 0, None]  # (N, H): padded source row of each output row
    cols = ar_w - plan[:, 1, None]  # (N, W): source column, then mirrored for flipped images
    cols = shift + torch.where(plan[:, 2, None].bool(), w - 1 - cols, cols)
    return padded[torch.arange(n, device=x.device)[:, None, None, None], torch.arange(c, device=x.device)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


def rotation_plan(n: int, seed: int, epoch: int, degrees: float) -> torch.Tensor | None:
    """Per position of the epoch's order: a rotation angle in radians, uniform in +-degrees; None when 0."""
    if not degrees:
        return None
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 15_485_863)  # its own stream: shifts stay as they were
    return (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1) * math.radians(degrees)


def rotate(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate each (N, C, H, W) image by its angle (radians, counter-clockwise on screen) about its centre.

    Bilinear, zero fill (raw pixel space, so the fill is the background); returns float32.
    """
    cos, sin = angles.cos().float(), angles.sin().float()
    # grid_sample's theta maps output to input coordinates (x right, y down): the inverse rotation
    theta = torch.stack([torch.stack([cos, -sin, torch.zeros_like(cos)], 1),
                         torch.stack([sin, cos, torch.zeros_like(cos)], 1)], 1).to(x.device)
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    return torch.nn.functional.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def steps_per_epoch(n: int, batch_size: int) -> int:
    return n // batch_size


def train_batches(data: DeviceData, batch_size: int, seed: int, epoch: int, rank: int, world: int,
                  start_step: int = 0, shift: int = 0, flip: bool = False, degrees: float = 0.0
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's share of each global batch of the epoch (see the module docstring for the order).

    Augmentation, when asked for: flip and shift (exact pixel moves), then rotation (bilinear).
    """
    per_rank = batch_size // world
    perm = epoch_permutation(len(data), seed, epoch).to(data.device)
    plan = augment_plan(len(data), seed, epoch, shift, flip)
    plan = None if plan is None else plan.to(data.device)  # once per epoch, not per step
    angles = rotation_plan(len(data), seed, epoch, degrees)
    angles = None if angles is None else angles.to(data.device)
    for step in range(start_step, steps_per_epoch(len(data), batch_size)):
        lo = step * batch_size + rank * per_rank
        idx = perm[lo:lo + per_rank]
        x = data.x[idx] if plan is None else augment(data.x[idx], plan[lo:lo + per_rank], shift)
        if angles is not None:
            x = rotate(x, angles[lo:lo + per_rank])
        yield data.normalise(x), data.y[idx]


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """Contiguous evaluation shard [lo, hi) of rank `rank`; shards cover 0..n once, sizes differ by at most 1."""
    base, extra = divmod(n, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)
