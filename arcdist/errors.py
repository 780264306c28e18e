"""Exit statuses, in one table, and the classification of the exceptions that end a command by their type.

Every command (train, grid, report, explore) ends with one of `Exit`; a failure prints one line that names the
problem and the fix (`one_line`), and nothing already on disk is damaged.
"""
from __future__ import annotations

import errno
import os
import re
import socket
import sys
from enum import IntEnum

from arcdist import cluster


class BadInput(ValueError):
    """The input cannot work; the message names the problem and the fix. A command ends with Exit.BAD_INPUT (2)."""


class ConfigError(BadInput):
    """A flag, --set value or config field that cannot work."""


class DataError(BadInput):
    """Missing or malformed data files, or data other than the run's."""


class CheckpointError(BadInput):
    """A checkpoint that cannot be used for resume; `reason` says why without naming it ("is unreadable (...)")."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason or message


class WriteError(Exception):
    """The run folder could not be written (no space, read-only file system, I/O error): Exit.WRITE_FAILED (3)."""


def first_line(e: BaseException) -> str:
    """An exception as one line, for one-line error messages."""
    return str(e).splitlines()[0] if str(e) else type(e).__name__


class Exit(IntEnum):
    OK = 0
    FAILED = 1  # the grid: a job failed (its error is in grid.json); anything unexpected (a traceback)
    BAD_INPUT = 2  # the input cannot work: the line says what to change (config.ConfigError and the commands' own)
    WRITE_FAILED = 3  # the run folder could not be written (full disk, read-only, I/O error); --resume after
    LOST_CONTACT = 4  # a rank lost contact with the others (a rank or node died or froze); --resume after
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, the shell's convention); the checkpoint is kept


WRITE_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EIO, errno.EDQUOT)  # an OSError that is the disk's, not a bug


def multi_process() -> bool:
    """Whether this process is a rank of a run of several (the launcher's WORLD_SIZE)."""
    return cluster.current().multi_process


OTHER_RANKS_WAIT_S = 5.0  # how long a node's other ranks leave the launcher to stop them before saying it too


def say_bad_input(line: str) -> None:
    """Print a bad-input `line` once per node rather than once per rank: the node's first rank says it; the
    others wait up to OTHER_RANKS_WAIT_S for the launcher, which stops every rank when the first exits (SIGTERM:
    here a quiet exit 2, also when it came before, while the rank was still on its way to the error), and say it
    themselves only if still running then (the first rank met no such error)."""
    env = cluster.current()
    if env.multi_process and env.launcher.local_rank > 0:
        import signal
        import time

        from arcdist import preempt

        signal.signal(signal.SIGTERM, lambda *_: os._exit(Exit.BAD_INPUT))
        if preempt.requested():  # the launcher's SIGTERM came before this rank met the error (taken for a stop)
            os._exit(Exit.BAD_INPUT)
        time.sleep(OTHER_RANKS_WAIT_S)
    print(line, file=sys.stderr, flush=True)


def end_process(status: int) -> None:
    """Exit with `status`. A rank of a multi-process run (the group destroyed, W&B finished, files closed: run()'s
    end) leaves by os._exit, without the interpreter's teardown: there a gloo thread still alive could drop the
    last reference to a tensor and ask for the GIL of a finalizing interpreter, which ends that thread with
    pthread_exit and the process with "terminate called without an active exception" (SIGABRT) after a run
    that had finished and written everything (torch: pytorch/pytorch#190489, the abandoned atexit fix
    pytorch/pytorch#179291). A single process exits normally."""
    if not multi_process():
        sys.exit(status)
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(int(status))


def is_write_failure(e: BaseException) -> bool:
    """An OSError of the storage (full, read-only, failing): the run stops with Exit.WRITE_FAILED."""
    return isinstance(e, OSError) and e.errno in WRITE_ERRNOS


def is_collective_failure(e: BaseException) -> bool:
    """An error of the process group's transport: a peer rank's connection broke, or a collective timed out.

    torch raises `DistError` for some and a bare RuntimeError for gloo's and NCCL's, whose text is all that says
    what they are: those are recognised by it, here only."""
    if not multi_process():  # (run()'s end_training has destroyed the group by now)
        return False
    import torch  # local: the launchers import this module and stay light
    if isinstance(e, getattr(torch.distributed, "DistError", ())):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and any(
        mark in text for mark in ("/gloo/", "NCCL", "Connection reset by peer", "Connection closed by peer",
                                  "Timed out waiting", "Application timeout caused pair closure"))


def collective_line(e: BaseException, timeout: float | None, advice: str) -> str:
    """One line: which rank on which host lost contact, the transport's words (and the peer's host), the fix."""
    text = first_line(e)
    text = re.sub(r"^\[[^\]]*\]\s*", "", text).split(". This is typically")[0]  # gloo's source path and advice
    peer = re.search(r"\[(\d+\.\d+\.\d+\.\d+)\]", text)
    if peer:
        try:
            text += f" (peer {socket.gethostbyaddr(peer.group(1))[0]})"
        except OSError:
            pass
    rank = cluster.current().rank
    bound = f" (a collective waits at most train.collective_timeout_s = {timeout:g} s)" if timeout else ""
    return (f"rank {rank} on {socket.gethostname()} lost contact with the other ranks: {text}; a rank or node "
            f"died or stopped responding{bound}; {advice}")


__all__ = ["Exit", "WRITE_ERRNOS", "collective_line", "is_collective_failure", "is_write_failure", "multi_process"]
