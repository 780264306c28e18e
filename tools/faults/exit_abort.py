"""Count the aborts at exit of the smallest 2-rank run.

Runs `accelerate launch --multi_gpu --num_processes 2 arcdist/train.py` (gloo, CPU) on a few hundred MNIST images
for one epoch, N times in a row, and counts how each run ended: exit 0, "terminate called ..." with SIGABRT, other.
A run that aborts keeps its stderr (and, with --cores, its core files and a gdb backtrace of every thread) under
--out. Optional --load K keeps K busy-looping processes beside the runs: the abort was seen under a loaded CI.

    python tools/faults/exit_abort.py --runs 200 --out /tmp/abort-before        # needs ARCDIST_DATA_DIR (real MNIST)
    python tools/faults/exit_abort.py --program gloo-teardown --runs 100 --out /tmp/gloo   # the mechanism alone

Prints one line per 10 runs and a summary: runs, exit statuses by count, aborts, seconds per run.
"""
from __future__ import annotations

import argparse
import collections
import json
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from arcdist.grid import free_port  # noqa: E402

ABORT_TEXT = "terminate called"


def command(out: Path, program: str = "train") -> list[str]:
    if program != "train":  # tools/faults/gloo_exit.py: the mechanism without arcdist (teardown) and with its way out
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                str(free_port()), str(ROOT / "tools" / "faults" / "gloo_exit.py"), program.removeprefix("gloo-")]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(free_port()), str(ROOT / "arcdist" / "train.py"),
            "--variant", "T0", "--epochs", "1", "--limit-train", "256", "--limit-test", "64", "--no-progress",
            "--wandb", "disabled", "--mixed-precision", "no", "--set", "train.channels_last=false",
            "--set", "data.batch_size=64", "--output-dir", str(out)]


def spin() -> None:
    while True:
        pass


def backtraces(folder: Path) -> str:
    """gdb's `thread apply all bt` of every core file in `folder` (python's own binary as the executable)."""
    text = []
    for core in sorted(folder.glob("core*")):
        bt = subprocess.run(["gdb", "-batch", "-ex", "thread apply all bt 60", sys.executable, str(core)],
                            capture_output=True, text=True, timeout=300)
        text.append(f"== {core.name}\n{bt.stdout[-20000:]}")
    return "\n".join(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--out", type=Path, required=True, help="summary.json and the aborted runs' stderr go here")
    ap.add_argument("--load", type=int, default=0, help="busy-looping processes kept beside the runs")
    ap.add_argument("--program", choices=("train", "gloo-teardown", "gloo-arcdist"), default="train",
                    help="train: arcdist's smallest 2-rank run; gloo-*: tools/faults/gloo_exit.py, the mechanism alone")
    ap.add_argument("--cores", action="store_true", help="keep core files of aborted runs and their gdb backtraces")
    args = ap.parse_args()
    if not os.environ.get("ARCDIST_DATA_DIR"):
        print("exit_abort: set ARCDIST_DATA_DIR to a folder with MNIST in torchvision's layout", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("WANDB_API_KEY", None)
    spinners = [multiprocessing.Process(target=spin, daemon=True) for _ in range(args.load)]
    for p in spinners:
        p.start()
    ends: collections.Counter = collections.Counter()
    aborts, start = [], time.time()

    def allow_cores() -> None:
        if args.cores:
            resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))

    try:
        for i in range(args.runs):
            work = Path(tempfile.mkdtemp(prefix="abort-"))
            proc = subprocess.run(command(work / "run", args.program), cwd=work, env=env, capture_output=True,
                                  text=True, timeout=600, preexec_fn=allow_cores)
            aborted = ABORT_TEXT in proc.stderr
            ends["abort" if aborted else f"exit {proc.returncode}"] += 1
            if aborted or proc.returncode != 0:
                (args.out / f"run-{i:04d}.stderr").write_text(proc.stderr)
                if aborted:
                    aborts.append(i)
                    if args.cores and list(work.glob("core*")):
                        (args.out / f"run-{i:04d}.gdb").write_text(backtraces(work))
            shutil.rmtree(work, ignore_errors=True)
            if (i + 1) % 10 == 0:
                print(f"{i + 1} runs: {dict(ends)}", flush=True)
    finally:
        for p in spinners:
            p.terminate()
    seconds = time.time() - start
    summary = dict(runs=sum(ends.values()), ends=dict(ends), aborts=len(aborts), aborted_runs=aborts,
                   seconds_per_run=round(seconds / max(1, sum(ends.values())), 2), load=args.load,
                   program=args.program)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
