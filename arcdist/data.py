"""The datasets on the training device: each split one uint8 tensor there, a batch an index slice of it normalised
on the device. No DataLoader and no per-sample Python on the hot path.

What the datasets are lives in arcdist.datasets (one file each, a registry); which images a rank trains on at a
step, and their augmentation draws, in arcdist.datasets.order. This module serves them and re-exports the names
the rest of arcdist imports from here.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np
import torch

from arcdist import cluster
from arcdist.datasets import DataError, DatasetSpec, Order, Splits, dataset_spec, epoch_permutation, load_dataset
from arcdist.datasets import DATASETS as _CLASSES
from arcdist.datasets.augment import move as augment, rotate
from arcdist.datasets.mnist import read_idx
from arcdist.datasets.base import run_spec
from arcdist.datasets.cifar import read_cifar_batch
from arcdist.datasets.folder import ImageFolderDataset, decode_all, file_loader

if TYPE_CHECKING:
    from arcdist.config import DataConfig, ModelConfig

get_spec = dataset_spec
DATASETS: dict[str, DatasetSpec] = {name: cls.spec for name, cls in _CLASSES.items()}

__all__ = ["DATASETS", "DataError", "DatasetSpec", "DeviceData", "Order", "Splits", "augment", "epoch_permutation",
           "get_spec", "load_dataset", "load_to_device", "read_cifar_batch", "read_idx", "resolve_data_dir", "rotate",
           "shard_bounds", "train_batches"]


def resolve_data_dir(flag: str | None) -> str:
    """--data-dir, else $ARCDIST_DATA_DIR, else ./data."""
    return flag or os.environ.get("ARCDIST_DATA_DIR") or "./data"


def run_data_dir(recorded: str, flag: str | None) -> str:
    """Where a recorded run's data is (resume, evaluate, embed): --data-dir, else the folder the run recorded while
    it exists (a folder run's images are not in $ARCDIST_DATA_DIR, a machine's default for the built-in
    datasets), else $ARCDIST_DATA_DIR, else the recorded one."""
    if flag:
        return flag
    if Path(recorded).is_dir() or not os.environ.get("ARCDIST_DATA_DIR"):
        return recorded
    return os.environ["ARCDIST_DATA_DIR"]


def pixel_scale(mean: tuple[float, ...], std: tuple[float, ...],
                device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The dataset's per-channel mean and 1/std (0..1 scale) as `normalise` takes them: on the 0..255 scale,
    shaped (1, C, 1, 1)."""
    m = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255.0
    return m, 1.0 / (torch.tensor(std, device=device).view(1, -1, 1, 1) * 255.0)


def normalise(x: torch.Tensor, mean: torch.Tensor, inv_std: torch.Tensor, per_image: bool) -> torch.Tensor:
    """Pixels (N, C, H, W) on the 0..255 scale -> the model's input, in float32: (x - mean) * inv_std with the
    dataset's per-channel figures, then with `per_image` (data.normalize=image) each image's per-channel mean
    removed and its standard deviation over all its values scaled to 1 (a flat image gives zeros)."""
    out = (x.float() - mean) * inv_std
    if per_image:
        out = out - out.mean((2, 3), keepdim=True)
        out = out / (out.std((1, 2, 3), keepdim=True) + 1e-3)
    return out


class DeviceData:
    """A split resident on `device` as uint8, served as normalised float batches."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, spec: DatasetSpec, device: torch.device):
        self.x = x.to(device)
        self.y = y.to(device)
        self._place(spec, device)

    def _place(self, spec: DatasetSpec, device: torch.device) -> None:
        """The spec, the device and the normalisation of uint8 pixels (mean and 1/std, per channel, on 0..255)."""
        self.device, self.spec = device, spec
        self.mean, self.inv_std = pixel_scale(spec.mean, spec.std, device)

    def __len__(self) -> int:
        return self.x.shape[0]

    channels_last = False  # hand out NHWC batches (set by the trainer with train.channels_last)
    # a folder's split: the file of its decoded copy it was read from (arcdist.datasets.decoded), else why none
    decoded_path: Path | None = None
    why_not = ""

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        out = normalise(x, self.mean, self.inv_std, self.spec.per_image)
        return out.contiguous(memory_format=torch.channels_last) if self.channels_last else out

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.normalise(next(self.images([idx]))), self.y[idx]

    def images(self, batches: Iterable[torch.Tensor | slice]) -> Iterator[torch.Tensor]:
        """The uint8 images of each index batch (or slice), in order, on the device."""
        return (self.x[idx] for idx in batches)

    def select(self, idx: torch.Tensor) -> "DeviceData":
        """The images at `idx` (in that order) as a split of their own on the same device."""
        idx = idx.to(self.device)
        return DeviceData(self.x[idx], self.y[idx], self.spec, self.device)

    def in_memory(self) -> "DeviceData":
        """The split with every image resident (what moving all of them at once needs): itself."""
        return self


class StreamData(DeviceData):
    """A folder split left on disk: labels on the device, images read per batch from the split's decoded copy
    (`decoded`, memory-mapped; arcdist.datasets.decoded) or, without one, decoded per batch by DataLoader workers
    (`why_not` says why): the same index batches, hence the same images and draws, as DeviceData would serve."""

    def __init__(self, paths: tuple[str, ...], y: torch.Tensor, spec: DatasetSpec, device: torch.device,
                 decode, workers: int, decoded: "np.ndarray | None" = None, rows: "np.ndarray | None" = None,
                 why_not: str = ""):
        self.paths, self.decode, self.workers, self.why_not = tuple(paths), decode, workers, why_not
        # the split decoded once and memory-mapped (arcdist.datasets.decoded); image i is its row rows[i]
        self.decoded, self.rows = decoded, (np.arange(len(self.paths)) if rows is None else rows)
        self.decoded_path = None if decoded is None else Path(decoded.filename)
        self.y = y.to(device)
        self._place(spec, device)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def x(self) -> torch.Tensor:
        """Every image at once (what a test-time shift needs): read from the decoded copy, or decoded now."""
        if self.decoded is not None:
            return torch.from_numpy(self.decoded[self.rows]).to(self.device)
        return decode_all(self.paths, self.decode, self.workers).to(self.device)

    def images(self, batches: Iterable[torch.Tensor | slice]) -> Iterator[torch.Tensor]:
        n = len(self.paths)
        lists = [list(range(n))[b] if isinstance(b, slice) else b.tolist() for b in batches]
        cuda = self.device.type == "cuda"  # pinned host batches, copied while the GPU works on the last one
        if self.decoded is not None:
            rows = (torch.from_numpy(self.decoded[self.rows[idx]]) for idx in lists)
            return (x.pin_memory().to(self.device, non_blocking=True) if cuda else x for x in rows)
        loader = file_loader(self.paths, self.decode, self.workers, batch_sampler=lists, pin_memory=cuda)
        return (x.to(self.device, non_blocking=cuda) for x in loader)

    def select(self, idx: torch.Tensor) -> "StreamData":
        rows = idx.tolist()
        return StreamData(tuple(self.paths[i] for i in rows), self.y[idx.to(self.device)], self.spec, self.device,
                          self.decode, self.workers, self.decoded, self.rows[rows], self.why_not)

    def in_memory(self) -> DeviceData:
        """The split decoded once into a DeviceData, its batches laid out as these are."""
        resident = DeviceData(self.x, self.y, self.spec, self.device)
        resident.channels_last = self.channels_last
        return resident


def streams(cfg: "DataConfig", nbytes: int, ranks_on_node: int = 1) -> bool:
    """Whether a folder of `nbytes` decoded bytes streams from disk under cfg.stream and cfg.memory_budget_gb, a
    budget per node: each of the node's `ranks_on_node` processes would hold its own copy."""
    return cfg.stream is True or (cfg.stream == "auto" and nbytes * ranks_on_node > cfg.memory_budget_gb * 2 ** 30)


def load_to_device(cfg: "DataConfig", device: torch.device, splits: Splits | None = None,
                   model: "ModelConfig | None" = None) -> tuple[DeviceData, DeviceData]:
    """The train and test splits of `cfg.dataset` (read from cfg.data_dir unless given), cut to cfg.limit_train and
    cfg.limit_test (0: all), on `device`; a folder dataset streams from disk when `streams` says so."""
    from arcdist.config import ModelConfig

    model = model or ModelConfig()
    spec = run_spec(cfg, model)
    lt, le = cfg.limit_train or None, cfg.limit_test or None
    if cfg.dataset == "folder" and splits is None:
        folder = ImageFolderDataset(cfg.data_dir, channels=model.in_channels, image_size=model.image_size,
                                    workers=cfg.workers, test_fraction=cfg.test_fraction)
        if streams(cfg, folder.nbytes(), cluster.current().launcher.local_world_size):
            return tuple(stream_split(cfg, split, files, cut, spec, device, folder.decode)
                         for split, files, cut in (("train", folder.train, lt), ("test", folder.test, le)))
        return tuple(read_split(cfg, split, files, cut, spec, device, folder.decode)
                     for split, files, cut in (("train", folder.train, lt), ("test", folder.test, le)))
    splits = splits or load_dataset(cfg.dataset, cfg.data_dir, cfg.download)
    return (DeviceData(splits.train_x[:lt], splits.train_y[:lt], spec, device),
            DeviceData(splits.test_x[:le], splits.test_y[:le], spec, device))


def read_split(cfg: "DataConfig", split: str, files, cut: int | None, spec: DatasetSpec, device: torch.device,
               decode) -> DeviceData:
    """A folder's split in memory (its listing `files` cut to `cut` images): read from its decoded copy
    (`data.decoded_cache`, arcdist.datasets.decoded; written by the node's first run that needs it) where the disk
    has room, else decoded from the files."""
    from arcdist.datasets.decoded import decoded_file

    path, why_not = decoded_file(files.paths, decode, cfg.workers, split) if cfg.decoded_cache else (None, "")
    # only the first `cut` rows of the copy are read (data.limit_train on a large folder)
    x = torch.from_numpy(np.array(np.load(path, mmap_mode="r")[:cut])) if path else \
        decode_all(files.paths, decode, cfg.workers)[:cut]
    data = DeviceData(x, files.labels[:cut], spec, device)
    data.decoded_path, data.why_not = path, why_not
    return data


def stream_split(cfg: "DataConfig", split: str, files, cut: int | None, spec: DatasetSpec, device: torch.device,
                 decode) -> StreamData:
    """A folder's split that streams (its listing `files` cut to `cut` images): read from its decoded copy
    (`data.decoded_cache`, arcdist.datasets.decoded) where the disk has room, else decoded per batch."""
    from arcdist.datasets.decoded import decoded_file

    path, why_not = decoded_file(files.paths, decode, cfg.workers, split) if cfg.decoded_cache else \
        (None, "data.decoded_cache=false")
    return StreamData(files.paths[:cut], files.labels[:cut], spec, device, decode, cfg.workers,
                      None if path is None else np.load(path, mmap_mode="r"), why_not=why_not)


def folder_line(train: DeviceData, test: DeviceData) -> str | None:
    """The line a folder run prints about its images: streamed or in memory, read from their decoded copies or
    decoded (every epoch where they stream) and why; None for a folder read into memory as asked
    (data.decoded_cache=false)."""
    from arcdist.datasets.decoded import size_text

    streamed = isinstance(train, StreamData)
    how = "the folder streams from disk (data.memory_budget_gb, data.stream)" if streamed else \
        "the folder is held in memory"
    if train.decoded_path and test.decoded_path:
        size = lambda d: size_text(d.decoded_path.stat().st_size)
        return (f"arcdist: {how}, read from its copies decoded once per node in {train.decoded_path.parent} (train "
                f"{size(train)}, test {size(test)}; --set data.decoded_cache=false decodes every file "
                f"{'each epoch' if streamed else 'at each start'})")
    why = "; ".join(dict.fromkeys(d.why_not for d in (train, test) if not d.decoded_path and d.why_not))
    if not why and not streamed:
        return None
    return f"arcdist: {how}, every file decoded {'each epoch' if streamed else 'at each start'}: {why}"


def train_batches(data: DeviceData, order: Order, epoch: int, start_step: int = 0
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's share of each global batch of `epoch` from `start_step` on, augmented as `order` asks
    (arcdist.datasets.order says which images and which draws)."""
    n = len(data)
    perm = order.permutation(n, epoch).to(data.device)
    draws = [(a, value, d.to(data.device)) for a, value, d in order.draws(n, epoch)]  # once per epoch, not per step
    steps = range(start_step, order.steps(n))
    for step, x in zip(steps, data.images(perm[order.positions(step)] for step in steps)):
        at = order.positions(step)
        idx = perm[at]
        for a, value, d in draws:
            x = a.apply(x, d[at], value)
        yield data.normalise(x), data.y[idx]


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """Contiguous evaluation shard [lo, hi) of rank `rank`; shards cover 0..n once, sizes differ by at most 1."""
    base, extra = divmod(n, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)
