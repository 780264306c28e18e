"""What data a run was trained on: a fingerprint recorded in config.json and checked by --resume, evaluate and
the report.

Its kind: SHA-256 of the decoded data as the run sees it, train then test (uint8 images in their (N, C, H, W)
layout and int64 labels, after --limit-train / --limit-test), so the same images under another path, or gzipped,
give the same fingerprint, and any changed pixel or label another. A folder that streams from disk is not decoded
up front: its fingerprint hashes each file's bytes with its path relative to the split and its label instead
(kind "files"), which costs one read of the files. Measured costs are in docs/guarantees.md.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from arcdist.errors import ConfigError

KEY = "data_fingerprint"


def _update_tensor(h, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.numpy().tobytes())


def of_splits(train, test) -> str:
    """The fingerprint of two splits (arcdist.data.DeviceData or StreamData); two streamed splits' file reads are
    done once per node (arcdist.nodecache), keyed by the files' paths, sizes and modification times."""
    if all(getattr(split, "paths", None) is not None for split in (train, test)):
        from arcdist.datasets.folder import listing_id
        from arcdist.nodecache import once_per_node

        labels = hashlib.sha256()
        for split in (train, test):
            _update_tensor(labels, split.y)
        key = dict(train=listing_id(train.paths), test=listing_id(test.paths), labels=labels.hexdigest())
        return once_per_node("fingerprint", key, lambda: dict(id=_of_splits(train, test)))["id"]
    return _of_splits(train, test)


def _of_splits(train, test) -> str:
    h = hashlib.sha256()
    kind = "tensors"
    for split in (train, test):
        paths = getattr(split, "paths", None)
        if paths is None:
            _update_tensor(h, split.x)
        else:
            kind = "files"
            root = Path(paths[0]).parent.parent if paths else Path(".")
            for p in paths:
                h.update(str(Path(p).relative_to(root)).encode() + b"\0")
                h.update(Path(p).read_bytes())
        _update_tensor(h, split.y)
    return f"{kind}:sha256:{h.hexdigest()}"


def recorded(run_dir: Path) -> str | None:
    """The fingerprint config.json holds (None: written before fingerprints, or unreadable)."""
    try:
        return json.loads((Path(run_dir) / "config.json").read_text()).get(KEY)
    except (OSError, ValueError):
        return None


def check(run_dir: Path, current: str, what: str, fix: str, warn: bool = True) -> bool:
    """ConfigError when the run recorded other data; False (and, if `warn`, a one-line warning) when it recorded
    none."""
    saved = recorded(run_dir)
    if saved is None:
        if warn:
            print(f"arcdist: warning: {run_dir} was written before runs recorded their data; {what} goes on without "
                  f"checking it (its fingerprint is now {current[:32]}...)", flush=True)
        return False
    if saved != current:
        raise ConfigError(f"{what}: {run_dir} was trained on other data (fingerprint {saved[:32]}..., this data "
                          f"{current[:32]}...); {fix}")
    return True
