"""One owner per run folder: an OS lock held by the main process for the run's whole life.

`flock` on `RUN_DIR/.arcdist.lock`: the kernel releases it when the process dies, so a `kill -9` or a lost
node leaves nothing stale to clean up. The file also records the holder (host, PID, since when) so that a
second `train.py` on the same folder can name it. A requeued SLURM job may start while its previous
incarnation is still exiting, hence the bounded wait (`--lock-wait`, seconds) before refusing.
(On NFS, Linux emulates flock with POSIX byte-range locks, which NFSv4 servers honour.)
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from arcdist.config import ConfigError

LOCK_FILE = ".arcdist.lock"
BUSY = "is busy"  # in the refusal line; the grid runner records such a job as "busy", not "failed"


class RunBusy(ConfigError):
    """Another live process owns the run folder (exit status 2)."""


class RunLock:
    """Exclusive, process-lifetime ownership of a run folder."""

    def __init__(self, run_dir: Path, name: str = LOCK_FILE):
        self.path = Path(run_dir) / name
        self._fd: int | None = None

    def who(self) -> str:
        """The holder as the refusals name it."""
        h = self.holder()
        return (f"held by PID {h.get('pid', '?')} on {h.get('host', '?')} since {h.get('since', '?')}"
                if h else "held by another process")

    def holder(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def acquire(self, wait_s: float = 0.0, poll_s: float = 0.5) -> None:
        """Take the lock, waiting up to `wait_s` seconds for a current holder to exit; else raise RunBusy."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise RunBusy(f"{self.path.parent} {BUSY}: {self.who()}; wait for that run to end (or stop it), "
                                  f"then --resume {self.path.parent}; --lock-wait SECONDS waits longer") from None
                time.sleep(poll_s)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(dict(host=socket.gethostname(), pid=os.getpid(),
                                      since=time.strftime("%Y-%m-%dT%H:%M:%S%z"))).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
