"""Chaos across two nodes: a 2-node training job and a grid array spread over both nodes of the
dev cluster, trained while a seeded schedule injects node-level faults; every run must equal an undisturbed one.

    python tools/faults/chaos_nodes.py --faults 50 --out /tmp/chaos-nodes    # root, ARCDIST_DATA_DIR (real MNIST)

The cluster is tests/infra/dev-cluster.sh's two nodes (each slurmd in a network, UTS and mount namespace of its own,
linked by a bridge): started here when it is not up, and taken down again at the end when it was started here.

1. A round is three Slurm jobs in the folder OUT/rounds/round-NNN: `slurm/multinode.sbatch` on both nodes (one rank
   per node, gloo over the bridge) and the two tasks of a `slurm/grid.sbatch` array (seeds 0 and 1, one rank each,
   wherever Slurm puts them), all the same small run (VARIANT, LIMIT_TRAIN images, EPOCHS epochs, fp32, NCHW, one
   thread per process). The undisturbed round 0 is the reference.
2. While a round runs, faults come at random moments (exponential gaps between faults, mean --gap seconds; a moment
   with no target is tried again half a second later; all drawn from --seed),
   each of a kind drawn in turn from a shuffled deck (tools/faults/chaos.py's deck: a kind with no target yet stays
   on top). Whenever a job has left the queue and its run is not finished, it is submitted again, the same
   submission a user would repeat ("a resubmission"); a job that Slurm requeues itself is left to do so.
3. When every run of a round has finished, each is compared with its reference: every metrics.jsonl row (wall-clock
   fields left out) in order, none lost or duplicated, and every tensor of the final weights, bit for bit; and
   nothing may be left behind: no training process, no process on a node but its slurmd, no run or grid lock held.

Fault kinds (the first five are the nodes', the last three today's one-node kinds, aimed the same way):
    node-kill  every process of one node (its slurmd, the job steps, the ranks) SIGKILLed and the node set down (as
               slurmctld would after SlurmdTimeout: its jobs end, requeueable ones requeue); it comes back 1-3 s
               later (tests/infra/dev-cluster.sh up: a fresh slurmd, the node resumed)
    partition  one node's link to the bridge down for 1 s to twice the collective timeout, then up again
    freeze     every process of one node SIGSTOPped for the collective timeout plus 1-4 s, then SIGCONTinued
    requeue    `scontrol requeue` of a running job (Slurm ends it and starts it again)
    preempt    SIGUSR1 to a running job's batch shell (Slurm's time-limit warning: checkpoint, requeue itself)
    kill-rank  SIGKILL of one training process
    torn-line  SIGKILL of a training process, then half a JSON row appended to its run's metrics.jsonl
    flip-byte  SIGKILL of a training process, then one bit flipped in a file of its run's newest checkpoint

Prints the figures (faults by kind, resubmissions, rounds, rows compared, lost or duplicated, equality, leftovers)
and writes them to OUT/chaos-nodes.json. Exit status 0 when every round equals the reference and nothing is left
behind, 1 otherwise, 2 on bad input (or when the cluster cannot be made here).
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import chaos as one_node  # noqa: E402  (the one-node chaos run: its deck, comparisons and process finders)

ROOT = one_node.ROOT
CLUSTER = ROOT / "tests" / "infra" / "dev-cluster.sh"
SLURM_CONF = "/etc/slurm/arcdist-multi/slurm.conf"
NODES = ("node1", "node2")
NODE_KINDS = ("node-kill", "partition", "freeze", "requeue", "preempt")
KINDS = NODE_KINDS + ("kill-rank", "torn-line", "flip-byte")
LOCKS = (".arcdist.lock", ".arcdist-grid.lock")


def slurm_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "WANDB_API_KEY"}
    return dict(env, SLURM_CONF=SLURM_CONF, PYTHON=sys.executable, PYTHONPATH=str(ROOT), WANDB_MODE="disabled",
                WANDB_SILENT="true", OMP_NUM_THREADS="1")


def sh(*cmd, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout,
                          env=env or slurm_env())


def queued() -> set[str]:
    """Job ids in the queue, array tasks as JOB_TASK."""
    out = sh("squeue", "-h", "-r", "-o", "%i").stdout
    return {line.strip() for line in out.splitlines() if line.strip()}


def node_namespace(node: str) -> str:
    return f"arcdist-multi-{node}"


def node_pids(node: str) -> list[int]:
    """Every process of `node`: those in its network namespace."""
    out = sh("ip", "netns", "pids", node_namespace(node)).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def environ_of(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return {}
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


def comm_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def run_status(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "summary.json").read_text()).get("status")
    except (OSError, json.JSONDecodeError):
        return None


@dataclass
class Job:
    """One run of a round and the submission that trains it."""
    name: str
    run_dir: Path
    sbatch: list[str]
    env: dict
    array_task: int | None = None
    job: str | None = None  # the id in the queue (JOB_TASK for an array task)
    submissions: int = 0
    done: bool = False

    def submit(self) -> None:
        proc = sh("sbatch", "--parsable", *self.sbatch, env=self.env)
        if proc.returncode != 0:
            raise RuntimeError(f"sbatch {self.name}: {proc.stderr.strip()}")
        job = proc.stdout.strip().split(";")[0]
        self.job = f"{job}_{self.array_task}" if self.array_task is not None else job
        self.submissions += 1


def round_jobs(root: Path, args: argparse.Namespace) -> list[Job]:
    (root / "logs").mkdir(parents=True, exist_ok=True)
    data = dict(ARCDIST_CPU="1", EPOCHS=str(args.epochs), DATA_DIR=os.environ["ARCDIST_DATA_DIR"])
    limits = (f"--set data.batch_size={args.batch} --set data.limit_train={args.limit_train} "
              f"--set data.limit_test={args.limit_test}")
    train = (f"--plot-every 0 --mixed-precision no --set train.channels_last=false "
             f"--set train.collective_timeout_s={args.collective_timeout}")
    common = [f"--chdir={ROOT}", "--gres=none", "--cpus-per-task=1", "--mem=1G"]
    jobs = [Job("multinode", root / "multinode",
                [*common, "--nodes=2", f"--output={root}/logs/multinode-%j.out", str(ROOT / "slurm" / "multinode.sbatch")],
                slurm_env() | data | dict(GPUS_PER_NODE="1", VARIANT=args.variant, RUN_DIR=str(root / "multinode"),
                                          TRAIN_ARGS=f"--wandb disabled {limits} --set train.threads=1 {train}"))]
    for task in () if args.no_grid else (0, 1):
        jobs.append(Job(f"grid-{task}", root / "grid" / f"{args.variant}-s{task}",
                        [*common, f"--array={task}", f"--output={root}/logs/grid-%A_%a.out",
                         str(ROOT / "slurm" / "grid.sbatch")],
                        slurm_env() | data | dict(GRID_ID="grid", VARIANTS=args.variant, SEEDS="0,1", OUT=str(root),
                                                  EXTRA=f"--wandb disabled {limits}", TRAIN_ARGS=train),
                        array_task=task))
    return jobs


class NodeChaos(one_node.Chaos):
    """The one-node deck with the nodes' kinds; `inject` aims them at a node, a job or a rank."""
    KINDS = KINDS

    def __init__(self, args: argparse.Namespace):
        super().__init__(args, disk=args.out)
        self.node_restarts = 0

    def nodes_training(self, pids: list[int]) -> list[str]:
        return sorted({environ_of(p).get("SLURMD_NODENAME", "") for p in pids} & set(NODES))

    def inject(self, kind: str, runner, pids: list[int]) -> str | None:
        if kind not in NODE_KINDS:
            return super().inject(kind, runner, pids)
        if kind in ("requeue", "preempt"):
            jobs = sorted({environ_of(p).get("SLURM_JOB_ID", "") for p in pids} - {""})
            if not jobs:
                return None
            job = self.rng.choice(jobs)
            cmd = (["scontrol", "requeue", job] if kind == "requeue" else
                   ["scancel", "--signal=USR1", "--batch", job])
            return kind if sh(*cmd).returncode == 0 else None
        nodes = self.nodes_training(pids)
        if not nodes:
            return None
        node = self.rng.choice(nodes)
        if kind == "node-kill":
            for pid in node_pids(node):
                one_node.kill(pid, signal.SIGKILL)
            for pid in node_pids(node):
                one_node.wait_gone(pid, timeout=30)
            # what slurmctld does when a node stops answering pings (SlurmdTimeout, 30 s here), said at once: the
            # node is down, its jobs end (NODE_FAIL) and the requeueable ones go back to the queue
            sh("scontrol", "update", f"nodename={node}", "state=down", "reason=chaos: node killed")
            time.sleep(self.rng.uniform(1.0, 3.0))
            up = sh(CLUSTER, "up", "--nodes", "2", timeout=300)
            if up.returncode != 0:
                raise RuntimeError(f"{node} did not come back: {up.stderr.strip()}")
            self.node_restarts += 1
        elif kind == "partition":
            link = f"arcv{node.removeprefix('node')}"
            sh("ip", "link", "set", link, "down")
            try:
                time.sleep(self.rng.uniform(1.0, 2.0 * self.args.collective_timeout))
            finally:
                sh("ip", "link", "set", link, "up")
        else:  # freeze
            frozen = node_pids(node)
            for pid in frozen:
                one_node.kill(pid, signal.SIGSTOP)
            try:
                time.sleep(self.args.collective_timeout + self.rng.uniform(1.0, 4.0))
            finally:
                for pid in frozen:
                    one_node.kill(pid, signal.SIGCONT)
        return kind


def held_locks(root: Path) -> list[str]:
    """Run and grid locks under `root` that some process still holds."""
    held = []
    for name in LOCKS:
        for path in root.rglob(name):
            fd = os.open(path, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)
            except BlockingIOError:
                held.append(str(path))
            finally:
                os.close(fd)
    return held


def leftovers(root: Path) -> dict:
    """What a finished round must not leave: training processes, processes on the nodes besides slurmd, held locks."""
    deadline = time.time() + 60
    while time.time() < deadline and (one_node.training_pids(root) or queued()):
        time.sleep(0.5)
    strays = {n: sorted({comm_of(p) for p in node_pids(n)} - {"slurmd", ""}) for n in NODES}
    return dict(training=len(one_node.training_pids(root)), queued=len(queued()),
                node_processes={n: s for n, s in strays.items() if s}, locks_held=held_locks(root),
                stop_files=[str(p) for p in root.rglob("PREEMPT")] + [str(p) for p in root.rglob("FAULT-*")])


def run_round(root: Path, args: argparse.Namespace, chaos: NodeChaos | None, deadline: float) -> list[Job]:
    """Train one round to the end: submit, strike (when `chaos`), resubmit whatever left the queue unfinished."""
    jobs = round_jobs(root, args)
    for job in jobs:
        job.submit()
    next_fault = time.time() + (chaos.rng.expovariate(1.0 / args.gap) if chaos else float("inf"))
    while not all(job.done for job in jobs):
        if time.time() > deadline:
            raise RuntimeError(f"{root.name}: not finished in time; jobs {[(j.name, j.job) for j in jobs]}")
        in_queue = queued()
        for job in jobs:
            if job.done or job.job in in_queue:
                continue
            status = run_status(job.run_dir)
            if status == "finished":
                job.done = True
            elif job.submissions > args.max_resubmits:
                raise RuntimeError(f"{job.name}: {job.submissions} submissions and not finished; see {root}/logs")
            else:
                job.submit()
        if chaos and time.time() >= next_fault and sum(chaos.injected.values()) < args.faults:
            # a moment that found no target (the job between attempts, training not started) is tried again
            # at the next poll: the gaps are between faults, not between tries
            if chaos.strike(None, root):
                next_fault = time.time() + chaos.rng.expovariate(1.0 / args.gap)
        time.sleep(0.5)
    return jobs


def cannot_run_here() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, the dev cluster's daemons)"
    for tool in ("ip", "unshare", "nsenter", "sbatch"):
        if shutil.which(tool) is None:
            return f"needs {tool} (iproute2, util-linux, slurm-client: bash .ci/system-deps installs them)"
    if not os.environ.get("ARCDIST_DATA_DIR"):
        return "set ARCDIST_DATA_DIR to a folder with MNIST in torchvision's layout"
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="rounds and chaos-nodes.json go here")
    one_node.schedule_args(ap, faults=50, gap=6.0)
    ap.add_argument("--variant", default="V2")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--limit-train", type=int, default=512)
    ap.add_argument("--limit-test", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32, help="global batch (default 32)")
    ap.add_argument("--collective-timeout", type=float, default=8.0,
                    help="train.collective_timeout_s of every run: a freeze lasts longer (default 8)")
    ap.add_argument("--no-grid", action="store_true", help="rounds of the 2-node job alone (the suite's short run)")
    ap.add_argument("--max-resubmits", type=int, default=40, help="give up on a job after this many submissions")
    ap.add_argument("--round-timeout", type=float, default=1200, help="give up on a round after this many seconds")
    args = ap.parse_args()
    if why := one_node.unknown_kinds(args, KINDS):
        print(f"chaos_nodes: {why}", file=sys.stderr)
        return 2
    if why := cannot_run_here():
        print(f"chaos_nodes: {why}", file=sys.stderr)
        return 2
    was_up = sh(CLUSTER, "status", "--nodes", "2").returncode == 0
    if not was_up:
        up = sh(CLUSTER, "up", "--nodes", "2", timeout=600)
        if up.returncode != 0:
            print(f"chaos_nodes: the 2-node dev cluster did not come up: {(up.stderr or up.stdout).strip()}",
                  file=sys.stderr)
            return 2
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    results, rounds, left = [], [], []
    reference_s = 0.0
    chaos = NodeChaos(args)
    try:
        reference = args.out / "rounds" / "reference"
        shutil.rmtree(reference, ignore_errors=True)
        ref_jobs = run_round(reference, args, None, time.time() + args.round_timeout)
        reference_s = time.time() - started
        rnd = 0
        while sum(chaos.injected.values()) < args.faults:
            rnd += 1
            root = args.out / "rounds" / f"round-{rnd:03d}"
            shutil.rmtree(root, ignore_errors=True)
            t0, before = time.time(), dict(chaos.injected)
            jobs = run_round(root, args, chaos, time.time() + args.round_timeout)
            left.append(dict(round=rnd, **leftovers(root)))
            for job, ref in zip(jobs, ref_jobs):
                results.append(dict(round=rnd, job=job.name, submissions=job.submissions,
                                    **one_node.compare(job.run_dir, ref.run_dir)))
            faults = {k: v - before.get(k, 0) for k, v in chaos.injected.items() if v - before.get(k, 0)}
            rounds.append(dict(round=rnd, seconds=round(time.time() - t0, 1), faults=faults,
                               resubmissions=sum(j.submissions - 1 for j in jobs)))
            equal = all(r["rows_equal"] and r["weights_equal"] for r in results if r["round"] == rnd)
            print(f"round {rnd}: {rounds[-1]['seconds']} s, faults {faults}, resubmissions "
                  f"{rounds[-1]['resubmissions']}, equal {equal}, leftovers {left[-1]}", flush=True)
            if equal and not any(v for k, v in left[-1].items() if k != "round"):
                shutil.rmtree(root, ignore_errors=True)
    except RuntimeError as e:
        print(f"chaos_nodes: {e}", file=sys.stderr)
        results.append(dict(round=-1, job=str(e), rows_equal=False, weights_equal=False, rows=0, lost=0, extra=0))
    finally:
        for pid in one_node.training_pids(args.out):
            one_node.kill(pid, signal.SIGKILL)
        for link in ("arcv1", "arcv2"):
            sh("ip", "link", "set", link, "up")
        ids = queued()
        if ids:
            sh("scancel", "--signal=KILL", *ids)
            sh("scancel", *ids)
        if not was_up:
            sh(CLUSTER, "down", "--nodes", "2", timeout=300)

    clean = not any(v for entry in left for k, v in entry.items() if k != "round")
    equal = bool(results) and all(r["rows_equal"] and r["weights_equal"] for r in results)
    figures = dict(
        faults=sum(chaos.injected.values()), injected=dict(sorted(chaos.injected.items())),
        missed_no_target=dict(sorted(chaos.missed.items())), rounds=len(rounds),
        resubmissions=sum(r["resubmissions"] for r in rounds), node_restarts=chaos.node_restarts,
        jobs_compared=len(results), rows_compared=sum(r["rows"] for r in results),
        rows_lost=sum(r["lost"] for r in results), rows_extra=sum(r["extra"] for r in results),
        weights_equal=all(r["weights_equal"] for r in results), equal=equal, nothing_left=clean,
        seed=args.seed, reference_s=round(reference_s, 1), total_s=round(time.time() - started, 1),
        setup=dict(variant=args.variant, epochs=args.epochs, limit_train=args.limit_train, batch=args.batch,
                   collective_timeout_s=args.collective_timeout, gap_s=args.gap),
        per_round=rounds, leftovers=[entry for entry in left if any(v for k, v in entry.items() if k != "round")],
        unequal=[r for r in results if not (r["rows_equal"] and r["weights_equal"])])
    (args.out / "chaos-nodes.json").write_text(json.dumps(figures, indent=1) + "\n")
    print(json.dumps({k: v for k, v in figures.items() if k not in ("unequal", "per_round", "leftovers")}))
    return 0 if equal and clean and figures["rows_lost"] == 0 and figures["rows_extra"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
