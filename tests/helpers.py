"""Test helpers: tiny synthetic IDX datasets, running the real entry points, reading what they wrote."""
from __future__ import annotations

import gzip
import hashlib
import json
import multiprocessing
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from arcdist.grid import free_port
from arcdist.variants import VARIANTS

ROOT = Path(__file__).resolve().parent.parent
REAL_DATA = Path(os.environ.get("ARCDIST_DATA_DIR", ROOT.parent / "shared" / "data"))


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> Path:
    """Write `array` (uint8) as an IDX ubyte file, gzip-compressed when `gz`."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path = path.with_name(path.name + ".gz") if gz else path
    path.parent.mkdir(parents=True, exist_ok=True)
    (gzip.open if gz else open)(path, "wb").write(payload)
    return path


def make_tiny_mnist(root: Path, n_train: int = 512, n_test: int = 101, seed: int = 0, gz: bool = True) -> Path:
    """A learnable MNIST-shaped set: class c is a bright bar at row/column 2c+4 plus noise."""
    rng = np.random.default_rng(seed)

    def split(n):
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
        for i, c in enumerate(y):
            if c < 5:
                x[i, 4 + 4 * c: 6 + 4 * c, 4:24] = 255
            else:
                x[i, 4:24, 4 + 4 * (c - 5): 6 + 4 * (c - 5)] = 255
        return x, y

    raw = root / "MNIST" / "raw"
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x, y = split(n)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", x, gz)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", y, gz)
    return root


def write_cifar(root: Path, n_per_batch: int = 8, seed: int = 0) -> Path:
    """torchvision's cifar-10-batches-py layout with tiny batches (pickled dicts of numpy arrays)."""
    import pickle

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
             b"labels": [int(v) for v in rng.integers(0, 10, n_per_batch)]}
        (folder / name).write_bytes(pickle.dumps(d))
    return root


def cli_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "WANDB_API_KEY"}
    # ARCDIST_STRICT_PLOTS: a plot that fails fails the run (arcdist.recorder), not a warning a test would miss
    return dict(env, WANDB_MODE="disabled", WANDB_SILENT="true", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT),
                ARCDIST_STRICT_PLOTS="1", **extra)


TRAIN_SCRIPT = ROOT / "arcdist" / "train.py"
# trainings fork from a server that imported torch and arcdist once (multiprocessing's forkserver: a fresh interpreter
# that has run no OpenMP region, so its forks are safe): each process skips the 4-5 s of imports
_FORKS = multiprocessing.get_context("forkserver")
_FORKS.set_forkserver_preload(["arcdist.train", "arcdist.figures", "torch._dynamo"])  # torch._dynamo: the optimizers import it


def _run_script(argv: list[str], env: dict, out: str, err: str) -> None:
    """In the forked child: `python arcdist/train.py ARGS` with `env`, stdout and stderr to files."""
    import atexit
    import runpy

    os.environ.clear()
    os.environ.update(env)
    os.chdir(ROOT)
    for fd, name in ((1, out), (2, err)):
        os.dup2(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
    sys.argv = [str(TRAIN_SCRIPT), *argv]
    try:
        runpy.run_path(str(TRAIN_SCRIPT), run_name="__main__")  # exits with the run's status, as the script does
    finally:
        atexit._run_exitfuncs()  # what the interpreter's exit runs (W&B's teardown); a forked child skips them


def rank_env(env: dict, rank: int, world: int, port: int) -> dict:
    """What `accelerate launch --multi_gpu --num_processes WORLD --mixed_precision no --dynamo_backend no` gives a
    rank on one machine, less its elastic agent's (no agent store, no launcher to die with)."""
    return dict(env, RANK=str(rank), LOCAL_RANK=str(rank), ROLE_RANK=str(rank), WORLD_SIZE=str(world),
                LOCAL_WORLD_SIZE=str(world), ROLE_WORLD_SIZE=str(world), ROLE_NAME="default", GROUP_RANK="0",
                GROUP_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
                ACCELERATE_MIXED_PRECISION="no", ACCELERATE_DYNAMO_BACKEND="NO")


def _stop(children: list, signal_first: str) -> None:
    """End the children still running: `signal_first` ("terminate" or "kill"), then SIGKILL after 30 s."""
    for c in children:
        if c.exitcode is None:
            getattr(c, signal_first)()
    for c in children:
        c.join(30)
        if c.exitcode is None:
            c.kill()
            c.join()


def _forked_train(args: list[str], envs: list[dict], timeout: int) -> subprocess.CompletedProcess:
    """One forked process per environment; as a launcher does, the first to fail ends the others (SIGTERM).
    stdout and stderr are the ranks' in rank order; the status is the first failure's, else 0."""
    with tempfile.TemporaryDirectory() as tmp:
        files = [(os.path.join(tmp, f"out{i}"), os.path.join(tmp, f"err{i}")) for i in range(len(envs))]
        children = [_FORKS.Process(target=_run_script, args=(list(args), env, *f)) for env, f in zip(envs, files)]
        for child in children:
            child.start()
        deadline = time.monotonic() + timeout
        while True:
            done = all(c.exitcode is not None for c in children)  # (read first: a status, once set, stays)
            failed = next((c.exitcode for c in children if c.exitcode not in (None, 0)), None)
            if done or failed is not None:
                break
            if time.monotonic() > deadline:
                _stop(children, "kill")
                raise subprocess.TimeoutExpired(["train.py", *args], timeout)
            time.sleep(0.05)
        _stop(children, "terminate")  # the others of a failed run (nothing left after a clean one)
        read = lambda name: Path(name).read_text() if os.path.exists(name) else ""
        return subprocess.CompletedProcess(["train.py", *args], failed or 0, "".join(read(o) for o, _ in files),
                                           "".join(read(e) for _, e in files))


def run_train(args: list[str], world: int = 1, timeout: int = 600, env: dict | None = None,
              check: bool = True) -> subprocess.CompletedProcess:
    """Run arcdist/train.py as `python arcdist/train.py` does (1 process) or as `accelerate launch --multi_gpu`
    starts its ranks (gloo), each process forked from a server that has the imports done; the script itself runs as
    __main__. The launchers themselves are tested with real processes (test_interrupt, test_slurm, test_reliability)."""
    env = env or cli_env()
    port = free_port()
    envs = [env] if world == 1 else [rank_env(env, rank, world, port) for rank in range(world)]
    proc = _forked_train(args, envs, timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


EXACT = ["--mixed-precision", "no", "--set", "train.channels_last=false"]  # no machine-dependent "auto" choice
# tests compare runs exactly, so they pin fp32 / NCHW: "auto" rests on a timing probe (tests/test_hardware.py)
# the suite's runs train T0, the test backbone (arcdist.variants: ~7,500 multiply-adds per image), one pass an epoch,
# without plots or retrieval metrics: they check files, statuses and equality; a test about plots adds PLOTS, one
# about the retrieval metrics RETRIEVAL, one about what a net learns names a real variant
ONE_PASS = ["--set", "data.repeats=1"]  # a small test folder would make up to 128 passes an epoch (data.repeats)
TINY_AUTO = ["--variant", "T0", "--no-progress", "--wandb", "disabled", "--plot-every", "0",
             "--set", "train.retrieval=false", *ONE_PASS]
TINY = [*TINY_AUTO, *EXACT]
PLOTS = ["--plot-every", "1"]
RETRIEVAL = ["--set", "train.retrieval=true"]
# T0's layers under a grid of other variants (their heads and recipes on the test backbone)
T0_BACKBONE = ["--set", f"model.layers={VARIANTS['T0'].config.model.layers!r}",
               "--set", f"model.fc={VARIANTS['T0'].config.model.fc!r}"]


def tiny_args(data: Path, out: Path, epochs: int, *extra: str, batch: int = 64, auto: bool = False) -> list[str]:
    """A tiny T0 run into `out`: no W&B, plots, retrieval metrics or progress bar, fp32 / NCHW unless `auto`,
    `extra` arguments last (PLOTS, RETRIEVAL turn those on)."""
    return [*(TINY_AUTO if auto else TINY), "--epochs", str(epochs), "--data-dir", str(data), "--output-dir", str(out),
            "--set", f"data.batch_size={batch}", *extra]


VOLATILE = {"epoch_time_s", "images_per_s"}  # wall-clock fields: never compared between runs


def metric_rows(run_dir: Path) -> list[dict]:
    """metrics.jsonl without its wall-clock fields."""
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]


def snapshot(*roots: Path) -> dict:
    """Every file's hash, except the run-folder lock's content: it names the folder's last holder (host, PID),
    which a refused resume that got as far as taking the lock rewrites; its presence is still compared."""
    out = {}
    for root in roots:
        for p in sorted(Path(root).rglob("*")):
            if p.name == ".arcdist.lock":
                out[str(p)] = "lock"
            else:
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def summary(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text())
