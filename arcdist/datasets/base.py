"""What a dataset declares: its spec, its reader, and the registry that `--dataset NAME` looks it up in.

A dataset is one file in this package: a `Dataset` subclass decorated with `@register_dataset("name")` whose
`spec` (a `DatasetSpec`) says what its images are and whose `read()` returns its train and test splits as CPU
tensors. Where the tensors go next (all onto the device: arcdist.data.DeviceData) is not the reader's business,
and neither is the order of the batches (arcdist.datasets.order, the same for every dataset).
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import torch

from arcdist.errors import ConfigError, DataError
from arcdist.nodecache import COUNTER_ENV, node_lock

if TYPE_CHECKING:
    from arcdist.config import DataConfig, ModelConfig



@dataclass(frozen=True)
class DatasetSpec:
    """What the model and the pages need to know of a dataset's images."""

    name: str
    channels: int
    image_size: int  # pixels, square
    mean: tuple[float, ...]  # per channel, on the 0..1 scale
    std: tuple[float, ...]
    classes: tuple[str, ...]  # the class names, by label
    per_image: bool = False  # data.normalize=image: each image's own mean and std too (arcdist.data.normalise)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


DIGITS = tuple(str(d) for d in range(10))


@dataclass
class Splits:
    train_x: torch.Tensor  # (N, C, H, W) uint8
    train_y: torch.Tensor  # (N,) int64
    test_x: torch.Tensor
    test_y: torch.Tensor


class Dataset:
    """A registered dataset: its `spec` and a reader of the files under `root`."""

    name: ClassVar[str]
    spec: ClassVar[DatasetSpec]

    def __init__(self, root: str | os.PathLike, download: bool = True):
        self.root, self.download = Path(root), download

    def read(self) -> Splits:
        """Both splits as uint8 images (N, C, H, W) and int64 labels (N,); DataError when the files are bad."""
        raise NotImplementedError

    @classmethod
    def settle(cls, data: "DataConfig", model: "ModelConfig") -> "DataConfig":
        """`data` with what a run must record of this dataset before it starts (a folder: classes, mean, std);
        the cheap check that its files are there comes here too (before the precision probe and the run folder)."""
        cls(data.data_dir, data.download).check()
        return data

    def check(self) -> None:
        """DataError when the files are missing (reading them is `read`'s job)."""

    @classmethod
    def shape(cls, data: "DataConfig", model: "ModelConfig") -> tuple[int, int]:
        """(channels, image size in pixels) of the dataset's images, what a run takes unless it sets its own."""
        return cls.spec.channels, cls.spec.image_size

    @classmethod
    def spec_for(cls, data: "DataConfig", model: "ModelConfig") -> DatasetSpec:
        """The spec of the run's images (a fixed dataset: its own)."""
        return cls.spec


DATASETS: dict[str, type[Dataset]] = {}


def register_dataset(name: str):
    """Class decorator: the dataset answers to `--dataset <name>`; its spec must carry the same name."""
    def add(cls: type[Dataset]) -> type[Dataset]:
        if cls.spec.name != name:
            raise TypeError(f"{cls.__name__}: registered as {name!r} but its spec is named {cls.spec.name!r}")
        cls.name = name
        DATASETS[name] = cls
        return cls
    return add


def dataset_class(name: str) -> type[Dataset]:
    """The class of `name`; an unknown name is a ConfigError naming the known ones."""
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}")
    return DATASETS[name]


def dataset_spec(name: str) -> DatasetSpec:
    return dataset_class(name).spec


def run_spec(data: "DataConfig", model: "ModelConfig") -> DatasetSpec:
    """The spec of a run's images: the dataset's, or what a folder dataset recorded in config.json."""
    spec = dataset_class(data.dataset).spec_for(data, model)
    return replace(spec, per_image=normalization(data) == "image")


def normalization(data: "DataConfig") -> str:
    """data.normalize resolved: "auto" is "image" for a folder (its images' colour and contrast may vary from
    image to image), "dataset" for a built-in dataset."""
    if data.normalize != "auto":
        return data.normalize
    return "image" if data.dataset == "folder" else "dataset"


def load_dataset(name: str, data_dir: str | os.PathLike, download: bool = True) -> Splits:
    """The splits of dataset `name` read from `data_dir` (torchvision's layout), downloaded first if allowed."""
    return dataset_class(name)(data_dir, download).read()


class TorchvisionFiles(Dataset):
    """A dataset kept as torchvision keeps it: fixed `files` in `root/folder`, which torchvision can download."""

    folder: ClassVar[str]  # torchvision's folder under the data dir
    files: ClassVar[tuple[str, ...]]
    torchvision_class: ClassVar[str]
    files_hint: ClassVar[str] = ""  # added to the list of expected files in the missing-files error

    def parse(self, paths: list[Path]) -> Splits:
        """The splits from the files, found in the order of `files`."""
        raise NotImplementedError

    def check(self) -> None:
        self.locate()

    def read(self) -> Splits:
        return self.parse(self.locate())

    def locate(self) -> list[Path]:
        """The files, downloaded first when missing and allowed; DataError naming the missing ones."""
        raw = self.root / self.folder
        paths = [_find(raw, f) for f in self.files]
        if None in paths and self.download and _network_reachable():
            with node_lock(self.root / f".{self.name}.download.lock"):  # one download per node; the others wait
                paths = [_find(raw, f) for f in self.files]  # and find what the first downloaded
                if None in paths:
                    try:
                        self._download()
                        if os.environ.get(COUNTER_ENV):
                            with open(os.environ[COUNTER_ENV], "a") as f:
                                f.write(f"download {self.name}\n")
                    except Exception as e:  # noqa: BLE001 - any download failure becomes the one-line error below
                        print(f"warning: download of {self.name} failed: {e}")
                    paths = [_find(raw, f) for f in self.files]
        if None in paths:
            missing = [f for f, p in zip(self.files, paths) if p is None]
            raise DataError(f"{self.name}: missing {', '.join(missing)} in {raw} (expects {', '.join(self.files)}"
                            f"{self.files_hint}); point --data-dir or ARCDIST_DATA_DIR at a folder holding "
                            f"{self.folder}/")
        return paths

    def _download(self) -> None:
        import torchvision

        for train in (True, False):
            getattr(torchvision.datasets, self.torchvision_class)(root=str(self.root), train=train, download=True)


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
