"""Run a grid of variants x seeds x datasets side by side: one GPU (or k) per job, or CPU threads split.

    python -m arcdist.grid --grid-id study --variants V1.2.2,V2 --seeds 0,1 --epochs 5
    python -m arcdist.grid --grid-id m --variants A8 --seeds 0,1,2 --sweep head.margin=0.2,0.5   # a row per value
    python -m arcdist.grid --grid-id study --list              # job index -> run folder
    python -m arcdist.grid --grid-id study --task-index 3      # one job in the foreground (SLURM arrays)

Runs land in OUT/<grid-id>/<variant>-s<seed>/ (with the dataset in front when the grid has several, and a
sweep's settings after the variant: A8-head.margin=0.5-s0). `--sweep` makes a row of every value (several
sweeps: every combination); the report compares each row with the first by the seed noise.
Rerunning skips finished runs and resumes unfinished ones. A failing run is recorded with its error
in grid.json and does not stop the others. W&B runs are grouped by the grid id.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from arcdist import cluster, preempt, runinfo
from arcdist.cli import ArgumentParser
from arcdist.config import ConfigError, apply_overrides
from arcdist.data import get_spec
from arcdist.errors import BadInput, Exit
from arcdist.runlock import BUSY, RunBusy, RunLock
from arcdist.status import ENDED, RunStatus
from arcdist.tracking import WANDB_MODES
from arcdist.variants import GROUPS, POST_VARIANTS, get_variant

GRID_LOCK = ".arcdist-grid.lock"  # the runner's, in the grid folder (each run folder has its own .arcdist.lock)

TRAIN_SCRIPT = Path(__file__).resolve().parent / "train.py"


@dataclass
class Job:
    index: int
    variant: str
    seed: int
    dataset: str
    run_dir: str
    status: RunStatus = RunStatus.PENDING
    returncode: int | None = None
    error: str | None = None
    final_accuracy: float | None = None
    best_accuracy: float | None = None
    wall_time_s: float | None = None
    log: str | None = None
    devices: list[str] = field(default_factory=list)  # its CUDA_VISIBLE_DEVICES entries (indices, MIG-/GPU- ids)
    sets: list[str] = field(default_factory=list)  # its row's --sweep settings, applied after the grid's --set


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(prog="arcdist.grid", description=__doc__)
    p.add_argument("--grid-id", required=True, help="names the grid folder and the W&B group")
    p.add_argument("--variants", default=",".join(POST_VARIANTS), help="comma-separated names or groups: post (the post's 12, the default), "
                                                             "losses (one row per head kind, L-*)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    p.add_argument("--datasets", default=None,
                   help="comma-separated datasets (default: each variant's own, e.g. fashion-mnist for A9F)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default: each variant's)")
    p.add_argument("--out", default="runs", help="parent of the grid folder (default runs/)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--jobs", type=int, default=None,
                   help="jobs side by side (default: GPUs // gpus-per-job, or 2 on a CPU-only node); "
                        "more jobs than GPUs share them round-robin")
    p.add_argument("--gpus-per-job", type=int, default=1)
    p.add_argument("--jobs-per-gpu", type=int, default=1,
                   help="jobs side by side on each GPU (group) when --jobs is not given (default 1); small MNIST "
                        "runs leave most of a GPU idle. With CUDA MPS running (nvidia-cuda-mps-control -d) their "
                        "kernels share the GPU at once instead of taking turns: bench/gpu-lease.sh measures both")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    p.add_argument("--sweep", dest="sweeps", action="append", default=[], metavar="SECTION.FIELD=V1,V2",
                   help="a row of the grid per value (repeatable: every combination), e.g. head.margin=0.2,0.5")
    p.add_argument("--wandb", choices=WANDB_MODES, default=None)
    p.add_argument("--list", action="store_true", help="print the job table and exit")
    p.add_argument("--task-index", type=int, default=None, help="run only this job, in the foreground")
    p.add_argument("train_args", nargs="*", help="extra arguments for train.py after --")
    return p.parse_args(argv)


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def sweep_rows(sweeps: list[str]) -> list[list[str]]:
    """The settings of each row a sweep makes: ["head.margin=0.2,0.5"] -> [["head.margin=0.2"], ["head.margin=0.5"]];
    several sweeps make every combination, the first varying slowest; no sweep: one row without settings."""
    rows: list[list[str]] = [[]]
    for sweep in sweeps:
        key, sep, values = sweep.partition("=")
        items = _split(values)
        if not sep or "." not in key or not items:
            raise ConfigError(f"--sweep {sweep!r}: expected SECTION.FIELD=V1,V2,..., e.g. head.margin=0.2,0.5")
        if len(set(items)) < len(items):
            raise ConfigError(f"--sweep {sweep!r}: a value is given twice; give each once")
        rows = [[*row, f"{key.strip()}={v}"] for row in rows for v in items]
    return rows


def run_name(variant: str, seed: int, sets=(), dataset: str | None = None) -> str:
    """A job's run folder: [dataset-]variant[-settings]-s<seed>, e.g. A8-head.margin=0.5-s0 (the dataset in front
    only in a grid of several)."""
    return "-".join([*([dataset] if dataset else []), variant, *sets, f"s{seed}"])


def build_jobs(args: argparse.Namespace) -> list[Job]:
    """Every dataset x variant x sweep row x seed (the seed innermost); validates every name and setting first."""
    variants = [v for name in _split(args.variants) for v in GROUPS.get(name, (name,))]
    datasets = _split(args.datasets) if args.datasets else [None]  # None: the variant's own
    try:
        seeds = [int(s) for s in _split(args.seeds)]
    except ValueError:
        raise ConfigError(f"--seeds {args.seeds!r}: expected comma-separated integers, e.g. 0,1,2") from None
    for v in variants:
        get_variant(v)
    for d in datasets:
        if d is not None:
            get_spec(d)
    if not variants or not seeds or not datasets:
        raise ConfigError("the grid is empty; give at least one variant, seed and dataset")
    for flag, items in (("--variants", variants), ("--seeds", seeds), ("--datasets", datasets)):
        twice = sorted({str(v) for v in items if items.count(v) > 1})
        if twice:  # two jobs would share one run folder (and a report count one seed twice)
            why = " (a group and its member count)" if flag == "--variants" else ""
            raise ConfigError(f"{flag}: {', '.join(twice)} given twice{why}; give each once")
    for flag, given in (("--jobs", args.jobs), ("--gpus-per-job", args.gpus_per_job)):
        if given is not None and given < 1:
            raise ConfigError(f"{flag} {given}: expected 1 or more")
    for flag, item in [*(("--set", o) for o in args.overrides), *(("--sweep", s) for s in args.sweeps)]:
        key = item.partition("=")[0].strip()
        own = {"train.seed": "--seeds", "data.dataset": "--datasets"}.get(key)
        if own or (key == "train.epochs" and args.epochs is not None):  # two values for one field: which one won
            # was silent (a sweep of train.seed gave two folders the same seed: a false noise verdict)
            raise ConfigError(f"{flag} {item}: the grid sets {key} from {own or '--epochs'}; give it there, once")
    rows = sweep_rows(args.sweeps)
    for variant in variants:  # each row's settings must apply to each variant (a one-line error names which)
        cfg = apply_overrides(get_variant(variant).config, args.overrides)
        for sets in rows:
            try:
                apply_overrides(cfg, sets)
            except ConfigError as e:
                raise ConfigError(str(e).replace("--set ", "--sweep ", 1)) from None
    root = Path(args.out) / args.grid_id
    jobs = []
    for dataset in datasets:
        for variant in variants:
            for sets in rows:
                for seed in seeds:
                    name = run_name(variant, seed, sets, dataset if len(datasets) > 1 else None)
                    own = dataset or get_variant(variant).config.data.dataset
                    jobs.append(Job(len(jobs), variant, seed, own, str(root / name), sets=list(sets)))
    return jobs


def train_command(job: Job, args: argparse.Namespace, port: int | None = None, threads: int = 0) -> list[str]:
    """The command that runs one job: plain python for one process, `accelerate launch` for k GPUs (the launcher
    class in `cluster` forms it)."""
    run_dir = Path(job.run_dir)
    if (run_dir / runinfo.CONFIG).exists():  # started: from its checkpoint, or again if it died before one
        cmd = ["--resume", str(run_dir)]
        if args.epochs is not None:
            cmd += ["--epochs", str(args.epochs)]
    else:
        cmd = ["--variant", job.variant, "--seed", str(job.seed), "--dataset", job.dataset,
               "--output-dir", str(run_dir)]
        if args.epochs is not None:
            cmd += ["--epochs", str(args.epochs)]
        for item in args.overrides:
            cmd += ["--set", item]
    for item in job.sets:  # the row's settings, applied after --set (a resume checks they still hold)
        cmd += ["--sweep-set", item]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    if args.wandb:
        cmd += ["--wandb", args.wandb]
    cmd += ["--group", args.grid_id, "--no-progress", *args.train_args]
    if threads and not any(item.startswith("train.threads=") for item in args.overrides):  # the user's wins
        cmd += ["--set", f"train.threads={threads}"]
    return cluster.job_command(str(TRAIN_SCRIPT), cmd, args.gpus_per_job, port, launcher=cluster.Accelerate)


def is_finished(summary: dict, epochs: int | None = None) -> bool:
    """Whether a job whose summary.json holds `summary` ended (finished, diverged); a finished one asked for more
    `epochs` (the grid rerun with a larger --epochs) has not: it resumes to them."""
    if summary.get("status") not in ENDED:
        return False
    return not (epochs is not None and summary.get("status") == RunStatus.FINISHED
                and summary.get("epochs", 0) < epochs)


def free_port() -> int:
    """A TCP port that is free on this machine now (for a job's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gpu_ids() -> list[str]:
    """The GPUs a job may be given, as CUDA_VISIBLE_DEVICES names them (indices, GPU-/MIG- UUIDs)."""
    visible = cluster.current().visible_devices
    if visible is not None:
        return list(visible)
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        return []


def plan_slots(args: argparse.Namespace) -> list[dict]:
    """One dict of environment settings per slot: GPUs per job, or an equal share of the CPU threads.

    GPU slots also get an equal share of the cores as OMP_NUM_THREADS (their CPU-side work: metrics, plots),
    so that a dozen jobs on one GPU node do not each start a thread per core.
    """
    if args.jobs_per_gpu < 1:
        raise ConfigError(f"--jobs-per-gpu {args.jobs_per_gpu}: expected 1 or more")
    gpus = _gpu_ids()
    if gpus:
        k = args.gpus_per_job
        groups = [gpus[i * k:(i + 1) * k] for i in range(len(gpus) // k)]
        if not groups:
            raise ConfigError(f"--gpus-per-job {k}: this node has only {len(gpus)} GPUs; lower --gpus-per-job")
        # more jobs than GPU groups: small runs share a GPU round-robin (one MNIST run leaves most of it idle)
        n = args.jobs or len(groups) * args.jobs_per_gpu
        threads = str(max(1, len(os.sched_getaffinity(0)) // n))
        return [dict(CUDA_VISIBLE_DEVICES=",".join(map(str, groups[i % len(groups)])), OMP_NUM_THREADS=threads)
                for i in range(n)]
    n = args.jobs or 2
    threads = max(1, len(os.sched_getaffinity(0)) // n)
    return [dict(OMP_NUM_THREADS=str(threads), CUDA_VISIBLE_DEVICES="") for _ in range(n)]


def finish(job: Job, returncode: int, started: float) -> None:
    """Fill a job's status from its exit code, summary.json and log."""
    job.returncode, job.wall_time_s = returncode, round(time.time() - started, 1)
    summary = runinfo.read_summary(Path(job.run_dir))
    job.final_accuracy, job.best_accuracy = summary.get("final_accuracy"), summary.get("best_accuracy")
    if returncode == Exit.OK and summary.get("status") in (*ENDED, RunStatus.PREEMPTED):
        job.status, job.error = RunStatus(summary["status"]), None
        return
    if returncode == Exit.INTERRUPTED and summary.get("status") == RunStatus.PREEMPTED:  # Ctrl-C: checkpoint saved
        job.status, job.error = RunStatus.INTERRUPTED, None
        return
    tail = Path(job.log).read_text(errors="replace").strip().splitlines() if job.log else []
    errors = [line for line in tail if "error" in line.lower()]
    job.error = (errors or tail or [f"exit status {returncode}"])[-1][-500:]
    # another process owns the run folder (a grid rerun over a running job): not a failure of this job
    job.status = RunStatus.BUSY if returncode == Exit.BAD_INPUT and BUSY in job.error else RunStatus.FAILED


def write_grid_json(root: Path, args: argparse.Namespace, jobs: list[Job]) -> None:
    doc = dict(grid_id=args.grid_id, updated=time.strftime("%Y-%m-%dT%H:%M:%S"), epochs=args.epochs,
               overrides=args.overrides, sweeps=args.sweeps, datasets=_split(args.datasets or ""),
               jobs=[asdict(j) for j in jobs])
    try:
        root.mkdir(parents=True, exist_ok=True)
        runinfo.atomic_write(root / "grid.json", json.dumps(doc, indent=1))
    except OSError as e:  # a view of the runs' own summary.json files: a full disk must not orphan the jobs
        print(f"[grid] warning: cannot write {root / 'grid.json'} ({e.strerror}); the jobs go on, and the next "
              "write or a rerun brings it up to date", file=sys.stderr, flush=True)


def run_grid(args: argparse.Namespace, jobs: list[Job]) -> list[Job]:
    """Run every unfinished job, `len(slots)` at a time; never stops on a failure."""
    root = Path(args.out) / args.grid_id
    try:
        (root / "logs").mkdir(parents=True, exist_ok=True)
    except OSError as e:  # before any job: nothing started
        raise ConfigError(f"cannot create {root / 'logs'} ({e.strerror or e}); choose a writable --out") from None
    lock = RunLock(root, GRID_LOCK)  # one runner per grid, for its whole life (the kernel drops it if it dies)
    try:
        lock.acquire(0)
    except RunBusy:
        raise ConfigError(f"grid {root} already has a runner ({lock.who()}); it trains every job once and keeps "
                          "grid.json: wait for it to end (or stop it), then rerun the same command") from None
    queue = []
    for job in jobs:
        summary = runinfo.read_summary(Path(job.run_dir))
        if is_finished(summary, args.epochs):
            job.status = RunStatus.SKIPPED
            job.final_accuracy, job.best_accuracy = summary.get("final_accuracy"), summary.get("best_accuracy")
        else:
            queue.append(job)
    slots = plan_slots(args)
    free = list(range(len(slots)))
    running: dict[int, tuple[Job, subprocess.Popen, float, object]] = {}
    interrupts = []

    def on_interrupt(count: int) -> None:
        # the jobs run in their own sessions, so the terminal's Ctrl-C reaches only this process: pass it on
        # once per Ctrl-C (the first stops each job at its next step with a checkpoint, a second quits them)
        interrupts.append(count)
        queue.clear()
        print(f"[grid] Ctrl-C: {'stopping' if count == 1 else 'quitting'} {len(running)} running job(s)", flush=True)
        for _, proc, _, _ in running.values():
            proc.send_signal(preempt.signal.SIGINT)

    with preempt.forwarding_interrupts(on_interrupt):
        _run_queue(root, args, jobs, queue, slots, free, running)
    write_grid_json(root, args, jobs)
    if interrupts:
        raise KeyboardInterrupt
    return jobs


def print_outcome(job: Job) -> None:
    """The runner's line for a job that ended: its status, final accuracy and error, where it has them."""
    print(f"[grid] {job.status:9s} {Path(job.run_dir).name}"
          + (f"  test acc {job.final_accuracy:.4f}" if job.final_accuracy is not None else "")
          + (f"  error: {job.error}" if job.error else ""), flush=True)


def _run_queue(root: Path, args: argparse.Namespace, jobs: list[Job], queue: list[Job], slots: list[dict],
               free: list[int], running: dict) -> None:
    while queue or running:
        while queue and free:
            job, slot = queue.pop(0), free.pop(0)
            job.log = str(root / "logs" / f"{Path(job.run_dir).name}.log")
            try:
                log = open(job.log, "a")
            except OSError as e:  # (a full disk) recorded like a job that failed; a rerun starts it again
                job.status, job.error, job.log = RunStatus.FAILED, f"cannot open {job.log}: {e.strerror}", None
                free.append(slot)
                print_outcome(job)
                continue
            env = dict(os.environ, **slots[slot])
            cpu_slot = slots[slot].get("CUDA_VISIBLE_DEVICES") == ""  # (a GPU job's threads stay automatic)
            cmd = train_command(job, args, free_port(), int(slots[slot]["OMP_NUM_THREADS"]) if cpu_slot else 0)
            job.status = RunStatus.RUNNING
            job.devices = [i for i in slots[slot].get("CUDA_VISIBLE_DEVICES", "").split(",") if i]  # as named
            print(f"[grid] start {Path(job.run_dir).name} (slot {slot})", flush=True)
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            running[slot] = (job, proc, time.time(), log)
            write_grid_json(root, args, jobs)
        time.sleep(0.5)
        for slot, (job, proc, started, log) in list(running.items()):
            if proc.poll() is None:
                continue
            log.close()
            finish(job, proc.returncode, started)
            print_outcome(job)
            del running[slot]
            free.append(slot)
            write_grid_json(root, args, jobs)


def run_task(args: argparse.Namespace, jobs: list[Job]) -> int:
    """Run job `--task-index` in this process's place (exec), so signals reach training directly."""
    if not 0 <= args.task_index < len(jobs):
        raise ConfigError(f"--task-index {args.task_index}: the grid has jobs 0..{len(jobs) - 1}")
    job = jobs[args.task_index]
    if is_finished(runinfo.read_summary(Path(job.run_dir)), args.epochs):
        print(f"[grid] {Path(job.run_dir).name} already finished; nothing to do")
        return Exit.OK
    Path(job.run_dir).parent.mkdir(parents=True, exist_ok=True)
    cmd = train_command(job, args, free_port())
    print(f"[grid] task {job.index}: {' '.join(cmd)}", flush=True)
    os.execv(cmd[0], cmd)
    return Exit.OK  # not reached


def format_jobs(jobs: list[Job]) -> str:
    """The grid's table, its columns as wide as their longest entry (a sweep's run names, "interrupted")."""
    w = max([24, *(len(Path(j.run_dir).name) for j in jobs)])
    s = max([9, *(len(str(j.status)) for j in jobs)])
    lines = [f"{'run':{w}s} {'status':{s}s} {'final acc':>9s} {'best acc':>9s} {'time s':>8s}  error"]
    for j in jobs:
        acc = f"{j.final_accuracy:.4f}" if j.final_accuracy is not None else "-"
        best = f"{j.best_accuracy:.4f}" if j.best_accuracy is not None else "-"
        wall = f"{j.wall_time_s:.0f}" if j.wall_time_s is not None else "-"
        lines.append(f"{Path(j.run_dir).name:{w}s} {str(j.status):{s}s} {acc:>9s} {best:>9s} {wall:>8s}  {j.error or ''}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        jobs = build_jobs(args)
        if args.list:
            for j in jobs:
                print(f"{j.index}\t{j.variant}\t{j.seed}\t{j.dataset}\t{j.run_dir}")
            return Exit.OK
        if args.task_index is not None:
            return run_task(args, jobs)
        run_grid(args, jobs)
    except BadInput as e:
        print(f"arcdist.grid: error: {e}", file=sys.stderr)
        return Exit.BAD_INPUT
    except KeyboardInterrupt:  # every job stopped with a checkpoint (or quit on a second Ctrl-C)
        print(format_jobs(jobs))
        print(f"interrupted; rerun the same command to resume. grid.json: {Path(args.out) / args.grid_id / 'grid.json'}")
        return Exit.INTERRUPTED
    print(format_jobs(jobs))
    print(f"grid.json: {Path(args.out) / args.grid_id / 'grid.json'}")
    return Exit.FAILED if any(j.status == RunStatus.FAILED for j in jobs) else Exit.OK


if __name__ == "__main__":
    sys.exit(main())
