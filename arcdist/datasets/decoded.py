"""A folder's split decoded once per node into a file of the node's cache folder (`data.decoded_cache`): a split
that streams reads its batches from it each epoch instead of decoding every file every epoch (a 12-MP JPEG at
about 23 images/s per process, docs/known-limits.md), and a split held in memory is read from it at the start of
the node's later runs instead of decoded again.

The file is a NumPy .npy array (N, C, S, S) uint8, memory-mapped by every rank of the node that streams (one copy
in the page cache), named by the files' paths, sizes and modification times, the channels and the size
(`listing_id`): a changed folder is decoded again, and the file of the folder's earlier state is removed. It is
written under the node's lock, to a temporary name renamed into place once whole; where the disk lacks room it is
not written and the split is decoded as without it (`data.decoded_cache=false` asks for that).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np

from arcdist.datasets.folder import Decoder, file_loader, listing_id
from arcdist.errors import first_line
from arcdist.nodecache import cache_dir, node_lock

VERSION = 1  # of the decoding (Decoder): a change that alters pixels raises it, so old files are not read
SPARE = 1 << 30  # bytes of free disk left after the file is written


def cache_name(paths: tuple[str, ...], decode: Decoder, split: str) -> tuple[str, str]:
    """(the split's stem: its folder, which split, channels and size; the digest of its files), both hex."""
    where = dict(folder=os.path.commonpath([os.path.dirname(p) for p in paths]) if paths else "", split=split,
                 mode=decode.mode, size=decode.size, version=VERSION)
    stem = hashlib.sha256(json.dumps(where, sort_keys=True).encode()).hexdigest()[:16]
    return stem, hashlib.sha256(f"{stem}{listing_id(paths)}".encode()).hexdigest()[:32]


def size_text(nbytes: int) -> str:
    """A byte count in KB, MB or GB (binary units, as `du -h` gives them)."""
    for unit, scale in (("GB", 2 ** 30), ("MB", 2 ** 20)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes / 2 ** 10:.0f} KB"


def decoded_file(paths: tuple[str, ...], decode: Decoder, workers: int, split: str) -> tuple[Path | None, str]:
    """(the .npy of the `split` ("train", "test") decoded, written by the first process of the node to ask; or None
    where the disk lacks room, with the reason)."""
    stem, digest = cache_name(paths, decode, split)
    folder = cache_dir() / "decoded"
    path = folder / f"{stem}-{digest}.npy"
    need = len(paths) * decode.channels * decode.size ** 2
    with node_lock(folder / f"{stem}.lock"):
        if path.exists():
            return path, ""
        tmp = folder / f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp"  # (a cache folder nodes share)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for old in folder.glob(f"{stem}-*.npy"):  # the same split of the folder before it changed
                old.unlink(missing_ok=True)
            free = shutil.disk_usage(folder).free
            if free < need + SPARE:
                return None, (f"its decoded {split} split ({size_text(need)}) would leave less than "
                              f"{size_text(SPARE)} of the {size_text(free)} free in {folder}")
            array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                              shape=(len(paths), decode.channels, decode.size, decode.size))
            at = 0
            for x in file_loader(paths, decode, workers, batch_size=256):
                array[at:at + len(x)] = x.numpy()
                at += len(x)
            array.flush()
            del array
            os.replace(tmp, path)
        except OSError as e:  # a cache folder that cannot be written (read-only, full): the files are decoded instead
            return None, f"its decoded copy cannot be written in {folder} ({first_line(e)})"
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
    return path, ""
