"""Work done once per node: the first process of a node does it under a file lock while the others wait, then they
read what it left (downloaded files, or a small JSON answer in the node's cache folder).

No process group is needed (the data is prepared before the run's group exists), only a file system the node's
processes share: accelerate's `main_process_first()` by file lock. A lock that cannot be taken (a read-only folder)
is skipped: each process then does the work itself, as before.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

COUNTER_ENV = "ARCDIST_COUNT_WORK"  # tests: a file each computed (not cached) answer appends its key to


def cache_dir() -> Path:
    return Path(os.environ.get("ARCDIST_CACHE_DIR") or Path.home() / ".cache" / "arcdist")


@contextlib.contextmanager
def node_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (created) for the block; no lock where it cannot be created."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # (closing releases the lock)


def once_per_node(kind: str, key: dict, compute: Callable[[], dict]) -> dict:
    """`compute()`'s JSON answer for `key`: computed by the first process of the node to ask, read by the others
    (and by later runs with the same key) from the node's cache folder."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    path = cache_dir() / kind / f"{digest}.json"
    with node_lock(path.with_suffix(".lock")):
        try:
            return json.loads(path.read_text())["answer"]
        except (OSError, ValueError, KeyError):
            pass
        answer = compute()
        if os.environ.get(COUNTER_ENV):
            with open(os.environ[COUNTER_ENV], "a") as f:
                f.write(f"{kind}\n")
        try:
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(dict(key=key, answer=answer)))
            os.replace(tmp, path)
        except OSError:
            pass  # an unwritable cache: the answer is still right, the next process computes it again
        return answer
