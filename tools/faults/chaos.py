"""Chaos run: a small grid trained while a seeded schedule injects faults; the result must equal
an undisturbed run of the same grid exactly.

    python tools/faults/chaos.py --faults 100 --out /tmp/chaos          # needs ARCDIST_DATA_DIR (real MNIST) and root

1. The reference: the grid (JOBS seeds of A8, the main job's head, on LIMIT_TRAIN images for EPOCHS epochs, fp32,
   NCHW, one thread per job, PARALLEL jobs at a time) runs once, undisturbed, on the ordinary disk.
2. Chaos: the same grid runs in rounds on a small tmpfs (so that "disk full" is real). Faults come at random
   moments (exponential gaps, mean --gap seconds; all drawn from --seed), each of a kind drawn in turn from a
   shuffled deck of the kinds below. Whenever the grid runner has exited and a job is unfinished, the grid is simply
   run again (a "rerun"); when every job of a round has finished, the round is compared with the reference and a
   new round starts, until --faults faults have been injected.
3. Compared per job: every metrics.jsonl row (wall-clock fields left out) in order, none missing or extra, and
   every tensor of the final checkpoint's weights, bit for bit.

Fault kinds. Each is aimed at a target it can hit: torn-line at a rank whose run has a metrics file, flip-byte at
a rank whose run has two checkpoints or more. At each moment the kinds on the deck are tried from its top: the first
that finds a target is injected and leaves the deck; those that find none (no job running yet, no metrics file yet)
are counted as misses and stay on top for the next moment. When every kind left on the deck misses, the kinds not on
it are shuffled in beneath. So a kind that is rarely possible is injected at its first chance, and no kind blocks the
others:
    kill-rank     SIGKILL of one training process (a rank; its launcher ends the other)
    kill-job      SIGKILL of a job's whole process group (launcher and ranks)
    kill-launcher SIGKILL of a job's launcher alone (accelerate launch: its ranks die with it, PR_SET_PDEATHSIG)
    kill-runner   SIGKILL of the grid runner alone (its jobs run on, orphaned; a rerun finds them busy)
    sigterm       SIGTERM to a training process (the preemption path: checkpoint, exit)
    sigint        SIGINT to the grid runner (Ctrl-C: forwarded, every job checkpoints and stops)
    disk-full     the tmpfs filled to its last byte for 0.5-3 s, then freed
    torn-line     SIGKILL of a training process, then half a JSON row appended to its metrics.jsonl (a kill mid-append)
    flip-byte     SIGKILL of a training process, then one byte flipped in a file of its newest checkpoint

Prints the figures (faults by kind, reruns, rounds, rows compared, rows lost or duplicated, equality) and writes
them to OUT/chaos.json. Exit status 0 when every round equals the reference, 1 otherwise, 2 on bad input.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KINDS = ("kill-rank", "kill-job", "kill-launcher", "kill-runner", "sigterm", "sigint", "disk-full", "torn-line", "flip-byte")
VOLATILE = {"epoch_time_s", "images_per_s"}  # wall-clock fields of a metrics row
TORN_FRAGMENT = '{"epoch": 2, "train_loss": 1.2'
LAUNCHERS = ("accelerate.commands.launch", "torch.distributed.run")  # the module a launcher's command line runs


def grid_command(out: Path, grid_id: str, args: argparse.Namespace) -> list[str]:
    seeds = ",".join(str(s) for s in range(args.jobs))
    return [sys.executable, "-m", "arcdist.grid", "--grid-id", grid_id, "--variants", args.variant, "--seeds", seeds,
            "--epochs", str(args.epochs), "--out", str(out), "--jobs", str(args.parallel), "--wandb", "disabled",
            "--set", f"data.limit_train={args.limit_train}", "--set", f"data.limit_test={args.limit_test}",
            "--set", f"data.batch_size={args.batch}", "--set", "train.mixed_precision=no",
            "--set", "train.channels_last=false", "--set", "train.threads=1", "--gpus-per-job", str(args.ranks),
            "--", "--plot-every", "0"]


def run_dirs(root: Path, variant: str = "A8") -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(f"{variant}-s"))


def finished(run_dir: Path) -> bool:
    try:
        return json.loads((run_dir / "summary.json").read_text()).get("status") == "finished"
    except (OSError, json.JSONDecodeError):
        return False


def rows(run_dir: Path) -> list[dict]:
    """metrics.jsonl as the run's readers see it (a torn last line is not a row), wall-clock fields dropped."""
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        out.append({k: v for k, v in row.items() if k not in VOLATILE})
    return out


def final_weights(run_dir: Path) -> dict:
    from safetensors.numpy import load_file

    newest = max((run_dir / "checkpoints").glob("epoch-*"))
    return {f"{f.name}/{k}": v for f in sorted(newest.glob("*.safetensors")) for k, v in load_file(f).items()}


def compare(run_dir: Path, ref_dir: Path) -> dict:
    """Rows compared, lost, extra and whether rows and weights equal the reference exactly."""
    got, want = rows(run_dir), rows(ref_dir)
    count = lambda rs: collections.Counter(json.dumps(r, sort_keys=True) for r in rs)  # noqa: E731
    lost, extra = sum((count(want) - count(got)).values()), sum((count(got) - count(want)).values())
    a, b = final_weights(run_dir), final_weights(ref_dir)
    weights_equal = a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes()
                                                 for k in a)
    return dict(rows=len(want), lost=lost, extra=extra, rows_equal=got == want, weights_equal=weights_equal)


def training_pids(root: Path) -> list[int]:
    """Training processes (train.py ranks, not their launchers) whose command line names a folder under `root`."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        text = [c.decode(errors="replace") for c in cmd]
        launcher = any(t in LAUNCHERS for t in text)
        if not launcher and any(t.endswith("train.py") for t in text) and any(str(root) in t for t in text):
            pids.append(int(proc.name))
    return pids


def kill(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


def parent_of(pid: int) -> int | None:
    """The launcher of a rank: its parent, when that is accelerate launch or torchrun."""
    try:
        ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        cmd = Path(f"/proc/{ppid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return None
    return ppid if any(c.decode(errors="replace") in LAUNCHERS for c in cmd) else None


def run_dir_of(pid: int) -> Path | None:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    text = [c.decode(errors="replace") for c in cmd]
    for flag in ("--resume", "--output-dir"):
        if flag in text:
            return Path(text[text.index(flag) + 1])
    return None


def wait_gone(pid: int, timeout: float = 30.0) -> None:
    end = time.time() + timeout
    while time.time() < end and Path(f"/proc/{pid}").exists():
        try:  # reap it if it is ours
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.05)


def schedule_args(ap: argparse.ArgumentParser, faults: int, gap: float) -> None:
    """The fault schedule's flags, shared with tools/faults/chaos_nodes.py."""
    ap.add_argument("--faults", type=int, default=faults, help=f"faults to inject (default {faults})")
    ap.add_argument("--seed", type=int, default=0, help="seeds the fault schedule: moments, kinds, targets")
    ap.add_argument("--gap", type=float, default=gap, help=f"mean seconds between faults (default {gap:g})")
    ap.add_argument("--skip", default="", help="comma-separated fault kinds left out")


def unknown_kinds(args: argparse.Namespace, kinds: tuple[str, ...]) -> str | None:
    """Turns --skip into a set of kinds; returns the refusal line when it names a kind not in `kinds`."""
    args.skip = {k for k in args.skip.split(",") if k}
    if unknown := args.skip - set(kinds):
        return f"unknown fault kind {', '.join(sorted(unknown))}; use {', '.join(kinds)}"
    return None


class Chaos:
    KINDS = KINDS  # the deck's kinds (a subclass brings its own)

    def __init__(self, args: argparse.Namespace, disk: Path):
        self.args, self.disk = args, disk
        self.rng = random.Random(args.seed)
        self.injected: collections.Counter = collections.Counter()
        self.missed: collections.Counter = collections.Counter()
        self.deck: list[str] = []
        self.kinds = [k for k in self.KINDS if k not in args.skip]
        self.flipped: set[tuple[str, int]] = set()  # checkpoint folders (path, inode) this run has damaged

    def strike(self, runner: subprocess.Popen, root: Path) -> str | None:
        """One fault moment; returns the kind injected, or None when no kind on the deck found a target."""
        if not self.deck:
            self.deck = list(self.kinds)
            self.rng.shuffle(self.deck)
        pids = training_pids(root)  # (a kind that misses changes nothing: the same processes for the next)
        for i in range(len(self.deck) - 1, -1, -1):  # the top of the deck is its end
            kind = self.deck[i]
            done = self.inject(kind, runner, pids)
            if done:
                del self.deck[i]
                self.injected[done] += 1
                return done
            self.missed[kind] += 1
        fresh = [k for k in self.kinds if k not in self.deck]
        self.rng.shuffle(fresh)
        self.deck = fresh + self.deck
        return None

    def target(self, kind: str, pids: list[int]) -> int | None:
        """A training process that `kind` can hit: any, or one whose run has what the kind damages."""
        if kind == "torn-line":
            pids = [p for p in pids if (d := run_dir_of(p)) and (d / "metrics.jsonl").exists()]
        elif kind == "flip-byte":
            pids = [p for p in pids if (d := run_dir_of(p)) and self.flippable(d)]
        return self.rng.choice(pids) if pids else None

    def flippable(self, run_dir: Path) -> list[Path]:
        """The checkpoints of `run_dir` when a flip may damage its newest: two or more, none damaged before (with no
        undamaged one to fall back to, resume stops with exit 2, and no rerun could finish the job)."""
        folder = run_dir / "checkpoints"
        try:
            checkpoints = sorted(folder.glob("epoch-*")) if folder.exists() else []
            ids = [(str(c), c.stat().st_ino) for c in checkpoints]
        except OSError:  # (one was being replaced)
            return []
        return checkpoints if len(checkpoints) >= 2 and not any(i in self.flipped for i in ids) else []

    def inject(self, kind: str, runner: subprocess.Popen, pids: list[int]) -> str | None:
        """`kind` at a target among the training processes `pids` that it can hit: returns the kind done (kill-rank
        when a flip found nothing left to flip after its kill), or None with nothing done."""
        pid = self.target(kind, pids)
        if kind in ("kill-runner", "sigint"):
            if runner.poll() is not None:
                return None
            runner.send_signal(signal.SIGKILL if kind == "kill-runner" else signal.SIGINT)
            return kind
        if kind == "disk-full":
            ballast = self.disk / "ballast"
            try:
                with open(ballast, "wb") as f:
                    chunk = b"\0" * (1 << 20)
                    while True:
                        f.write(chunk)
            except OSError:
                pass
            try:
                with open(ballast, "ab", buffering=0) as f:  # the last bytes the MiB chunks left free
                    while True:
                        f.write(b"\0")
            except OSError:
                pass
            time.sleep(self.rng.uniform(0.5, 3.0))
            ballast.unlink(missing_ok=True)
            return kind
        if pid is None:
            return None
        if kind == "kill-launcher":
            launcher = parent_of(pid)
            return kind if launcher is not None and kill(launcher, signal.SIGKILL) else None
        if kind == "kill-job":
            try:
                os.killpg(os.getpgid(pid), signal.SIGKILL)
            except ProcessLookupError:
                return None
            return kind
        if kind == "sigterm":
            return kind if kill(pid, signal.SIGTERM) else None
        run_dir = run_dir_of(pid)
        if not kill(pid, signal.SIGKILL):
            return None
        if kind == "kill-rank":
            return kind
        wait_gone(pid)
        if run_dir is None:
            return "kill-rank"  # (the kill was done)
        if kind == "torn-line":
            metrics = run_dir / "metrics.jsonl"
            if not metrics.exists():
                return "kill-rank"  # (the kill was done)
            cut = self.rng.randint(1, len(TORN_FRAGMENT) - 1)
            with open(metrics, "a") as f:
                f.write(TORN_FRAGMENT[:cut])
            return kind
        checkpoints = self.flippable(run_dir)  # (again: the kill may have come as a checkpoint was written)
        files = [f for f in checkpoints[-1].iterdir() if f.is_file() and f.stat().st_size] if checkpoints else []
        if not files:
            return "kill-rank"  # (the kill was done)
        self.flipped.add((str(checkpoints[-1]), checkpoints[-1].stat().st_ino))
        target = self.rng.choice(files)
        data = bytearray(target.read_bytes())
        i = self.rng.randrange(len(data))
        data[i] ^= 1 << self.rng.randrange(8)
        target.write_bytes(bytes(data))
        return kind


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="reference, tmpfs mount point and chaos.json go here")
    schedule_args(ap, faults=100, gap=3.0)
    ap.add_argument("--variant", default="A8", help="what every job trains (default A8; the suite's short run: T0)")
    ap.add_argument("--jobs", type=int, default=8, help="jobs in the grid: seeds 0..N-1 of the variant (default 8)")
    ap.add_argument("--parallel", type=int, default=2, help="jobs at a time (default 2)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--limit-train", type=int, default=1024)
    ap.add_argument("--limit-test", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--ranks", type=int, default=2, help="processes per job (gloo; default 2)")
    ap.add_argument("--tmpfs-mb", type=int, default=256, help="size of the tmpfs the chaos rounds write to")
    ap.add_argument("--max-reruns", type=int, default=1000, help="give up after this many reruns")
    args = ap.parse_args()
    if why := unknown_kinds(args, KINDS):
        print(f"chaos: {why}", file=sys.stderr)
        return 2
    if not os.environ.get("ARCDIST_DATA_DIR"):
        print("chaos: set ARCDIST_DATA_DIR to a folder with MNIST in torchvision's layout", file=sys.stderr)
        return 2
    env = dict(os.environ, WANDB_MODE="disabled", PYTHONPATH=str(ROOT))
    env.pop("WANDB_API_KEY", None)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    reference = args.out / "reference"
    if not (reference / "chaos" / "grid.json").exists() or \
            not all(finished(d) for d in run_dirs(reference / "chaos", args.variant)):
        shutil.rmtree(reference, ignore_errors=True)
        subprocess.run(grid_command(reference, "chaos", args), env=env, cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
    ref_dirs = {d.name: d for d in run_dirs(reference / "chaos", args.variant)}
    if len(ref_dirs) != args.jobs or not all(finished(d) for d in ref_dirs.values()):
        print("chaos: the undisturbed reference grid did not finish; see OUT/reference/chaos/logs", file=sys.stderr)
        return 1
    reference_s = time.time() - started

    disk = args.out / "disk"
    disk.mkdir(exist_ok=True)
    if not os.path.ismount(disk):
        mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={args.tmpfs_mb}m", "tmpfs", str(disk)],
                               capture_output=True, text=True)
        if mount.returncode != 0:
            print(f"chaos: cannot mount a tmpfs at {disk} ({mount.stderr.strip()}); run as root, or pass "
                  "--skip disk-full and an --out on a disk of its own", file=sys.stderr)
            return 2
    chaos = Chaos(args, disk)
    results, reruns, rnd = [], 0, 0
    try:
        while sum(chaos.injected.values()) < args.faults:
            rnd += 1
            grid_id = f"round-{rnd:03d}"
            root = disk / grid_id
            runs = 0
            while True:
                runner = subprocess.Popen(grid_command(disk, grid_id, args), env=env, cwd=ROOT,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                runs += 1
                while runner.poll() is None:
                    gap = chaos.rng.expovariate(1.0 / args.gap)
                    end = time.time() + gap
                    while time.time() < end and runner.poll() is None:
                        time.sleep(0.05)
                    if runner.poll() is not None or sum(chaos.injected.values()) >= args.faults:
                        break
                    chaos.strike(runner, root)
                runner.wait()
                for pid in training_pids(root):  # orphans of a killed runner finish (or fail) on their own
                    wait_gone(pid, timeout=600)
                dirs = run_dirs(root, args.variant) if root.exists() else []
                if len(dirs) == args.jobs and all(finished(d) for d in dirs):
                    break
                if reruns >= args.max_reruns:
                    print(f"chaos: gave up after {reruns} reruns", file=sys.stderr)
                    return 1
                reruns += 1
            for d in run_dirs(root, args.variant):
                results.append(dict(round=rnd, job=d.name, runs=runs, **compare(d, ref_dirs[d.name])))
            shutil.rmtree(root, ignore_errors=True)
            done = sum(chaos.injected.values())
            print(f"round {rnd}: {runs} grid runs, faults so far {done}, equal "
                  f"{all(r['rows_equal'] and r['weights_equal'] for r in results)}", flush=True)
    finally:
        for pid in training_pids(disk):
            kill(pid, signal.SIGKILL)
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)

    equal = all(r["rows_equal"] and r["weights_equal"] for r in results)
    figures = dict(
        faults=sum(chaos.injected.values()), injected=dict(sorted(chaos.injected.items())),
        missed_no_target=dict(sorted(chaos.missed.items())), rounds=rnd, reruns=reruns, jobs_compared=len(results),
        rows_compared=sum(r["rows"] for r in results), rows_lost=sum(r["lost"] for r in results),
        rows_extra=sum(r["extra"] for r in results), weights_equal=all(r["weights_equal"] for r in results),
        equal=equal, seed=args.seed, reference_s=round(reference_s, 1), total_s=round(time.time() - started, 1),
        grid=dict(jobs=args.jobs, parallel=args.parallel, epochs=args.epochs, limit_train=args.limit_train),
        unequal=[r for r in results if not (r["rows_equal"] and r["weights_equal"])])
    (args.out / "chaos.json").write_text(json.dumps(figures, indent=1) + "\n")
    print(json.dumps({k: v for k, v in figures.items() if k != "unequal"}))
    return 0 if equal and figures["rows_lost"] == 0 and figures["rows_extra"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
