"""Your own images: `--dataset folder --data-dir DIR` with DIR/train/<class>/* and DIR/test/<class>/* (or, with
no test/, DIR/val/, valid/ or validation/: `test_dir`), or DIR/<class>/* with `data.test_fraction` of each class
held out as the test split (`held_out`).

torchvision's `ImageFolder` layout, read by torchvision (`ImageFolder`, its loader and transforms): the class
names are train/'s sub-folders in sorted order (label = index), test/ may hold a subset of them. Each image is
converted to the variant's channels (PIL mode "L" for 1 channel, "RGB" for 3) and size (shorter side resized
to `model.image_size`, bilinear with antialiasing, then the centre square cut out; an image already of that size
is kept as it is). The per-channel mean and std are measured on the decoded train split once, when a run starts,
and recorded in config.json (`data.mean`, `data.std`, `data.classes`), so a resume does not measure again.

Every file is checked before anything is written: a file that is not an image (by its ending: torchvision's, GIF's,
and AVIF's and HEIC's where PIL reads them, `image_extensions`; names starting with ".", __MACOSX, Thumbs.db and
desktop.ini are skipped; a class folder's sub-folders are read, as torchvision does), an image that does not
decode, an empty class folder, one of train/ and test/ without the other: each one line naming it, exit 2.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from arcdist.config import test_fraction_problem
from arcdist.datasets.base import DataError, Dataset, DatasetSpec, Splits, register_dataset
from arcdist.errors import first_line
from arcdist.nodecache import once_per_node

SPLITS = ("train", "test")
VALIDATION = ("val", "valid", "validation")  # the test split's folder where there is no test/ (ImageNet's layout)


@dataclass(frozen=True)
class Listing:
    """The files of one split, in ImageFolder's order (class, then file name), and their labels."""

    paths: tuple[str, ...]
    labels: torch.Tensor


# a macOS zip's resource forks (never a class); Windows Explorer's thumbnail caches and folder settings, which it
# writes into any folder of pictures (compared without case, as Windows names them)
SKIPPED = ("__macosx", "thumbs.db", "ehthumbs.db", "desktop.ini")
# a dataset as downloaded, and the command that unpacks it
ARCHIVES = {".zip": "unzip", ".7z": "7z x", ".rar": "unrar x",
            **{e: "tar -xf" for e in (".tar", ".tgz", ".gz", ".bz2", ".xz", ".zst")}}


@functools.cache
def register_plugins() -> None:
    """pillow-heif's reader of phones' HEIC photos registered with PIL where installed, once per process (a
    DataLoader worker that decodes registers it too)."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return
    register_heif_opener()


@functools.cache
def image_extensions() -> tuple[str, ...]:
    """The file endings read as images: torchvision's (`IMG_EXTENSIONS`), then GIF, JPEG's other endings, and AVIF
    and HEIC where this PIL reads them (AVIF from Pillow 11.2, HEIC with pillow-heif: `register_plugins`)."""
    from PIL import Image
    from torchvision.datasets.folder import IMG_EXTENSIONS

    register_plugins()
    readable = Image.registered_extensions()
    return IMG_EXTENSIONS + tuple(e for e in (".gif", ".jfif", ".jpe", ".avif", ".heic", ".heif") if e in readable)


def is_image(name: str) -> bool:
    """Whether a file name ends in one of `image_extensions` (any case)."""
    return name.lower().endswith(image_extensions())


def visible(name: str) -> bool:
    """False for what no dataset means to hold: names starting with "." (.DS_Store, macOS's ._ twins,
    .ipynb_checkpoints), __MACOSX, and Windows's Thumbs.db, ehthumbs.db and desktop.ini."""
    return not name.startswith(".") and name.lower() not in SKIPPED


def find_classes(split_dir: Path) -> list[str]:
    """The class folders of `split_dir` in sorted order (torchvision's `find_classes`, hidden names skipped)."""
    try:
        entries = list(os.scandir(split_dir))
    except (FileNotFoundError, NotADirectoryError) as e:
        raise DataError(f"{split_dir}: {first_line(e)}; the folder needs one sub-folder per class "
                        f"(DIR/train/<class>/* and DIR/test/<class>/*, or DIR/<class>/*)") from None
    classes = sorted(e.name for e in entries if e.is_dir() and visible(e.name))
    if classes:
        return classes
    images = sum(1 for e in entries if e.is_file() and visible(e.name))
    if images and split_dir.name in SPLITS[1:] + VALIDATION:
        raise DataError(f"{split_dir}: {images:,} files but no class folders, so no labels to judge by; put them "
                        f"in {split_dir}/<class>/*, or move {split_dir.name}/ away to hold out part of train/ "
                        f"(--data-dir {split_dir.parent / 'train'})")
    raise DataError(f"{split_dir}: no class folders; the folder needs one sub-folder per class "
                    f"(DIR/train/<class>/* and DIR/test/<class>/*, or DIR/<class>/*)")


def walk_files(folder: Path) -> list[Path]:
    """Every visible file under `folder`, sub-folders included, in torchvision's `make_dataset` order (the walk's
    folders sorted, then each one's names); hidden folders are not entered."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if visible(d)]  # (top-down: the walk does not enter what is removed here)
        found.append((root, sorted(f for f in files if visible(f))))
    return [Path(root) / f for root, files in sorted(found) for f in files]


def list_split(root: Path, split: str, classes: list[str]) -> Listing:
    """The split's images by torchvision's `make_dataset`, after checking every file in it (the module docstring)."""
    return list_classes(root / split, classes)


def list_classes(split_dir: Path, classes: list[str]) -> Listing:
    """The images of `split_dir`/<class>/** (sub-folders included, as torchvision reads them), checked file by file,
    labelled by their index in `classes`."""
    from torchvision.datasets.folder import make_dataset

    for name in find_classes(split_dir):
        folder = split_dir / name
        files = walk_files(folder)
        if not files:
            raise DataError(f"{folder}: empty class folder; add its images or remove the folder")
        for path in files:
            if not is_image(path.name):
                raise DataError(f"{path}: not an image file (images end in {', '.join(image_extensions())}); "
                                "move it out of the dataset folder")
    # hidden files and folders are skipped here too: torchvision would list macOS's ._name.jpg twins
    shown = lambda p: all(visible(part) for part in Path(p).relative_to(split_dir).parts) and \
        is_image(p)
    samples = make_dataset(str(split_dir), {c: i for i, c in enumerate(classes)}, is_valid_file=shown,
                           allow_empty=True)
    return Listing(tuple(p for p, _ in samples), torch.tensor([y for _, y in samples], dtype=torch.long))


def test_dir(root: Path) -> str | None:
    """The name of the test split's folder beside DIR/train/: "test", or where there is none "val", "valid" or
    "validation"; None for DIR/<class>/* (split by `held_out`). A DataError for no such folder, or for train/
    without a test split (or test/ without train/)."""
    if root.is_file():
        unpack = ARCHIVES.get(root.suffix.lower())
        fix = f"unpack it ({unpack} {root.name}) and point --data-dir at the folder it holds" if unpack else \
            "point --data-dir at a folder"
        raise DataError(f"{root}: a file, not a folder; {fix} (DIR/train/<class>/* and DIR/test/<class>/*, or "
                        "DIR/<class>/*)")
    if not root.is_dir():
        raise DataError(f"{root}: no such folder; a folder dataset is DIR/train/<class>/* and DIR/test/<class>/*, "
                        "or DIR/<class>/* (point --data-dir at DIR)")
    train, test = ((root / s).is_dir() for s in SPLITS)
    if train and not test:
        test = next((v for v in VALIDATION if (root / v).is_dir()), None)
        if test is None:
            raise DataError(f"{root}: no test/ (or val/) folder beside train/; a folder dataset is DIR/train/<class>/* "
                            f"and DIR/test/<class>/*, or DIR/<class>/* (--data-dir {root / 'train'} holds out "
                            "data.test_fraction of it)")
        return test
    if test and not train:
        raise DataError(f"{root}: no train/ folder; a folder dataset is DIR/train/<class>/* and "
                        f"DIR/test/<class>/*, or DIR/<class>/* (point --data-dir at DIR)")
    return SPLITS[1] if train else None


def _stamp(root: Path) -> tuple:
    """The modification times of the split folders and their class folders: what adding, removing or renaming a
    file or a class changes."""
    out, test = [], test_dir(root)
    for split in (("train", test) if test else ("",)):
        d = root / split
        out.append((split, d.stat().st_mtime_ns))
        out += [(split, e.name, e.stat().st_mtime_ns) for e in sorted(os.scandir(d), key=lambda e: e.name)
                if e.is_dir()]  # (a change deeper in a class folder is seen by a new process, not this one)
    return tuple(out)


def held_out(listing: Listing, classes: list[str], fraction: float, root: Path) -> tuple[Listing, Listing]:
    """(train, test) of the folder of classes `root`: round(fraction x n) of each class's n images (at least 1 while
    the class keeps one for training) are the test split, those first in the order of SHA-256 of "<class>/<path in
    the class folder>" (the same split on any machine, whatever the folder's path); each split in ImageFolder's
    order."""
    test = torch.zeros(len(listing.paths), dtype=torch.bool)
    for label, name in enumerate(classes):
        rows = (listing.labels == label).nonzero().flatten().tolist()
        k = min(max(round(fraction * len(rows)), 1), len(rows) - 1) if len(rows) > 1 else 0
        key = {i: hashlib.sha256(f"{name}/{Path(listing.paths[i]).relative_to(root / name).as_posix()}".encode())
               .hexdigest() for i in rows}
        test[sorted(rows, key=key.__getitem__)[:k]] = True
    pick = lambda mask: Listing(tuple(p for p, m in zip(listing.paths, mask.tolist()) if m), listing.labels[mask])
    return pick(~test), pick(test)


@functools.lru_cache(maxsize=4)
def _listing(root: Path, stamp: tuple, fraction: float) -> tuple[list[str], list[str], Listing, Listing]:
    test = test_dir(root)
    if test is None:
        classes = find_classes(root)
        return classes, classes, *held_out(list_classes(root, classes), classes, fraction, root)
    # the classes of both splits: a class in test/ only is one the run never trains on (arcdist.evaluation.openset)
    trained = find_classes(root / "train")
    classes = sorted(set(trained) | set(find_classes(root / test)))
    train, test = (list_split(root, s, classes) for s in ("train", test))
    return trained, classes, train, test


def listing(root: Path, fraction: float = 0.2) -> tuple[list[str], list[str], Listing, Listing]:
    """(train/'s classes, all classes, the train listing, the test listing), checked file by file: listed once per
    process while the folder is unchanged (a run's start asks for it three times: shape, statistics, loading).
    A folder of classes without train/ and test/ holds out `fraction` of each class as its test split."""
    root = Path(root).absolute()
    return _listing(root, _stamp(root), fraction)


class Decoder:
    """One file -> uint8 (C, S, S): torchvision's PIL loader, mode conversion, resize and centre crop."""

    def __init__(self, channels: int, size: int):
        if channels not in (1, 3):
            raise DataError(f"a folder dataset gives 1 (grey) or 3 (RGB) channels, not {channels}; "
                            "set model.in_channels to 1 or 3")
        self.channels, self.mode, self.size = channels, ("L" if channels == 1 else "RGB"), size

    def __call__(self, path: str) -> torch.Tensor:
        from PIL import Image
        from torchvision.transforms import v2

        register_plugins()

        try:
            with open(path, "rb") as f:
                img = Image.open(f)
                # a JPEG decodes at 1/2, 1/4 or 1/8 scale where that still covers the run's size: a 12-MP photo
                # for a 96-px run in a third of the time; other formats ignore it
                img.draft(img.mode, (self.size, self.size))
                img = to_mode(img, self.mode)
        except Image.DecompressionBombError as e:
            raise DataError(f"{path}: {first_line(e)}; shrink the image or remove the file") from None
        except (OSError, ValueError, SyntaxError) as e:  # PIL's UnidentifiedImageError is an OSError
            raise DataError(f"{path}: cannot decode the image ({first_line(e)}); replace or remove the file") from None
        if img.size != (self.size, self.size):
            img = v2.functional.center_crop(v2.functional.resize(img, self.size, antialias=True), self.size)
        return v2.functional.pil_to_tensor(img)


def to_mode(img, mode: str):
    """A PIL image of any mode as "L" or "RGB": EXIF orientation applied; 16- and 32-bit grey scaled to 8 bits (not
    clipped, as PIL's own conversion does); transparency (RGBA, LA, a palette's transparent entry) composited on
    black, the background of the built-in datasets."""
    from PIL import Image, ImageOps

    img = ImageOps.exif_transpose(img)
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        import numpy as np

        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        img = Image.fromarray(np.clip(np.rint(a * 255.0 / top), 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode in ("P", "L", "RGB") and "transparency" in img.info):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    return img.convert(mode)


class FileImages(torch.utils.data.Dataset):
    def __init__(self, paths: tuple[str, ...], decode: Decoder):
        self.paths, self.decode = paths, decode

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor | DataError:
        try:
            return self.decode(self.paths[i])
        except DataError as e:  # handed back, raised by `batches` in the main process: one line, not the worker's
            return e  # traceback that DataLoader would wrap it in


def stack(items: list) -> torch.Tensor | DataError:
    """A DataLoader's collate_fn: the images stacked, or the first file's DataError."""
    return next((x for x in items if isinstance(x, DataError)), None) or torch.stack(items)


def batches(loader) -> Iterator[torch.Tensor]:
    """The loader's batches; a file that did not decode (in a worker or here) raises its DataError here."""
    for x in loader:
        if isinstance(x, DataError):
            raise x
        yield x


def file_loader(paths: tuple[str, ...], decode: "Decoder", workers: int, **kwargs) -> Iterator[torch.Tensor]:
    """Decoded batches of `paths` by a DataLoader with `workers` processes (kwargs: batch_size or batch_sampler)."""
    return batches(torch.utils.data.DataLoader(FileImages(paths, decode), num_workers=workers, collate_fn=stack,
                                               **kwargs))


def decode_all(paths: tuple[str, ...], decode: Decoder, workers: int = 0, batch: int = 512) -> torch.Tensor:
    """Every file decoded, in order, (N, C, S, S) uint8, by a DataLoader with `workers` processes."""
    if not paths:
        return torch.zeros(0, decode.channels, decode.size, decode.size, dtype=torch.uint8)
    return torch.cat(list(file_loader(paths, decode, workers, batch_size=batch)))


@register_dataset("folder")
class ImageFolderDataset(Dataset):
    """DIR/train/<class>/* and DIR/test/<class>/* (see the module docstring); its spec comes from the folder and
    the variant (`spec_for`)."""

    spec = DatasetSpec("folder", channels=0, image_size=0, mean=(), std=(), classes=())

    def __init__(self, root: str | os.PathLike, download: bool = True, channels: int = 1, image_size: int = 28,
                 workers: int = 0, test_fraction: float = 0.2):
        super().__init__(root, download)
        if not 0 < test_fraction < 1:
            raise DataError(test_fraction_problem(test_fraction))
        self.decode, self.workers = Decoder(channels, image_size), workers
        self.trained, self.classes, self.train, self.test = listing(self.root, test_fraction)

    def read(self) -> Splits:
        return Splits(decode_all(self.train.paths, self.decode, self.workers), self.train.labels,
                      decode_all(self.test.paths, self.decode, self.workers), self.test.labels)

    def nbytes(self) -> int:
        """Bytes of both splits decoded (uint8)."""
        return (len(self.train.paths) + len(self.test.paths)) * self.decode.channels * self.decode.size ** 2

    @classmethod
    def settle(cls, data, model):
        """Class names and the train split's mean and std, measured once (a resume keeps the recorded ones)."""
        if data.classes:
            return data
        ds = cls(data.data_dir, channels=model.in_channels, image_size=model.image_size, workers=data.workers,
                 test_fraction=data.test_fraction)
        stats = once_per_node("folder-stats", dict(files=listing_id(ds.train.paths), channels=model.in_channels,
                                                   size=model.image_size),
                              lambda: dict(zip(("mean", "std"), measure_files(ds.train.paths, ds.decode,
                                                                              data.workers, copy=data.decoded_cache))))
        unseen = not data.train_classes and len(ds.trained) < len(ds.classes)  # test/ has classes train/ lacks
        return dataclasses.replace(data, classes=tuple(ds.classes), mean=tuple(stats["mean"]), std=tuple(stats["std"]),
                                   train_classes=tuple(ds.trained) if unseen else data.train_classes)

    @classmethod
    def shape(cls, data, model) -> tuple[int, int]:
        """(channels, size) of the folder's images: 3 when a sample of its train images holds colour, else 1; the
        median shorter side of the sample (images are resized to it and centre-cropped)."""
        ds = cls(data.data_dir, channels=1, image_size=28, test_fraction=data.test_fraction)
        return tuple(once_per_node("folder-shape", dict(files=listing_id(ds.train.paths)),
                                   lambda: list(image_shape(ds.train.paths))))

    @classmethod
    def spec_for(cls, data, model):
        if not data.classes:
            raise DataError("a folder dataset's classes, mean and std are measured when its run starts "
                            "(ImageFolderDataset.settle); this config has none: start the run with arcdist.train")
        return DatasetSpec("folder", model.in_channels, model.image_size, tuple(data.mean), tuple(data.std),
                           tuple(data.classes))


def listing_id(paths: tuple[str, ...]) -> str:
    """SHA-256 of the files' absolute paths, sizes and modification times: a changed folder is measured again."""
    h = hashlib.sha256()
    for p in paths:
        st = os.stat(p)
        h.update(f"{os.path.abspath(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


SHAPE_SAMPLE = 256  # train images whose modes and sizes decide a folder's channels and image size


def image_shape(paths: tuple[str, ...], sample: int = SHAPE_SAMPLE) -> tuple[int, int]:
    """(channels, size) of evenly spaced `sample` of `paths`: 3 if any holds colour (an RGB file of grey pixels is
    grey), else 1; the median of their shorter sides. A file PIL cannot open is a DataError naming it."""
    from PIL import Image

    picked = paths[:: max(1, len(paths) // sample)][:sample]
    colour, sides = False, []
    for path in picked:
        try:
            with Image.open(path) as img:
                sides.append(min(img.size))
                if not colour and img.mode not in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
                    small = to_mode(img, "RGB")
                    small.thumbnail((32, 32))
                    px = torch.frombuffer(bytearray(small.tobytes()), dtype=torch.uint8).view(-1, 3).int()
                    colour = bool((px.max(1).values - px.min(1).values).float().mean() > 2.0)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise DataError(f"{path}: cannot decode the image ({first_line(e)}); replace or remove the file") from None
    sides.sort()
    return (3 if colour else 1), (sides[len(sides) // 2] if sides else 28)


def measure_files(paths: tuple[str, ...], decode: Decoder, workers: int = 0, batch: int = 512, copy: bool = False
                  ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """`measure` of the decoded files, one batch at a time (a folder that streams never lies in memory whole); with
    `copy`, of the train split's decoded copy (arcdist.datasets.decoded), written now where the disk has room, so
    that the run reads it instead of decoding the files a second time (the same batches, the same figures)."""
    images = None
    if copy:
        import numpy as np

        from arcdist.datasets.decoded import decoded_file

        path = decoded_file(paths, decode, workers, "train")[0]
        if path is not None:
            array = np.load(path, mmap_mode="r")
            images = (torch.from_numpy(np.array(array[i:i + batch])) for i in range(0, len(array), batch))
    total = square = None
    count = 0
    for x in images if images is not None else file_loader(paths, decode, workers, batch_size=batch):
        v = x.transpose(0, 1).reshape(x.shape[1], -1).double() / 255.0
        total = v.sum(1) if total is None else total + v.sum(1)
        square = (v * v).sum(1) if square is None else square + (v * v).sum(1)
        count += v.shape[1]
    mean = total / count
    std = (square / count - mean * mean).clamp_min(0).sqrt()
    return tuple(round(m, 6) for m in mean.tolist()), tuple(round(s, 6) for s in std.tolist())
