"""Ctrl-C: the first stops at the next step with a checkpoint and the resume command; a second quits at once."""
import json
import signal
import subprocess
import sys
import time

import pytest

from arcdist.checkpoint import latest_checkpoint
from arcdist.errors import Exit
from helpers import metric_rows as rows, EXACT, ROOT, TINY, cli_env, make_tiny_mnist, run_train, tiny_args


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_tiny_mnist(tmp_path_factory.mktemp("int"), n_train=512, n_test=64, seed=5)


def args(data, out, epochs=3):
    return tiny_args(data, out, epochs, "--plot-every", "0", *EXACT, batch=32)


PAUSE = "2:3"  # rank 0 waits before step 3 of epoch 2 (after epoch 1's checkpoint) until the test lets it go


def start_paused(cmd, runs, popen: dict | None = None, **env):
    """Start `cmd` and return once every run folder in `runs` is paused at PAUSE (Faults: no timing luck)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=cli_env(ARCDIST_FAULT_PAUSE=PAUSE, **env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **(popen or {}))
    deadline = time.time() + 300
    while not all((r / "FAULT-PAUSED").exists() for r in runs) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    return proc


def release(runs):
    for r in runs:
        (r / "FAULT-PAUSED").unlink()


def checkpoint_at(run):
    state = json.loads((latest_checkpoint(run) / "trainer.json").read_text())
    return state["epoch"], state["step"]


@pytest.mark.parametrize("sig,status,says", [
    (signal.SIGINT, Exit.INTERRUPTED, "interrupted: checkpoint saved at epoch 2, step 4; resume with:"),
    (signal.SIGUSR1, 0, "preempted: checkpoint saved; resume with --resume"),  # a scheduler's warning, no SLURM
], ids=["ctrl-c", "sigusr1-outside-slurm"])
@pytest.mark.slow
def test_first_stop_signal_checkpoints_prints_the_resume_command_and_resume_matches(data, tmp_path, sig, status,
                                                                                     says):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    run_train(args(data, whole))
    no_slurm = {k: "" for k in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID")}
    proc = start_paused([sys.executable, str(ROOT / "arcdist" / "train.py"), *args(data, cut)], [cut], **no_slurm)
    proc.send_signal(sig)
    release([cut])
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == status, err
    assert "Traceback" not in err and says in out and f"--resume {cut}" in out, out
    summary = json.loads((cut / "summary.json").read_text())
    assert summary["status"] == "preempted" and summary["epochs"] == 1
    assert checkpoint_at(cut) == (1, 4)  # mid-epoch 2: step 3, the one under way at the Ctrl-C, was applied
    run_train([*TINY, "--resume", str(cut), "--data-dir", str(data), "--plot-every", "0"])
    assert rows(cut) == rows(whole)


@pytest.mark.slow
def test_second_ctrl_c_quits_at_once_and_keeps_the_last_checkpoint(data, tmp_path):
    out_dir = tmp_path / "twice"
    proc = start_paused([sys.executable, str(ROOT / "arcdist" / "train.py"), *args(data, out_dir, 200)], [out_dir])
    proc.send_signal(signal.SIGINT)
    assert "Ctrl-C" in proc.stderr.readline() + proc.stderr.readline()  # (a blank line, then the message)
    proc.send_signal(signal.SIGINT)  # still paused: the second one arrives before any step boundary
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == Exit.INTERRUPTED and "Traceback" not in err
    assert not list((out_dir / "checkpoints").glob(".tmp-*"))
    assert checkpoint_at(out_dir) == (1, 0)  # epoch 1's, the last complete one
    run_train([*TINY, "--resume", str(out_dir), "--epochs", "2", "--data-dir", str(data), "--plot-every", "0"])
    assert [r["epoch"] for r in rows(out_dir)] == [1, 2]


@pytest.mark.slow
def test_ctrl_c_stops_every_grid_job_with_a_checkpoint_and_a_rerun_finishes(data, tmp_path):
    cmd = [sys.executable, "-m", "arcdist.grid", "--grid-id", "g", "--variants", "T0", "--seeds", "0,1",
           "--epochs", "3", "--out", str(tmp_path), "--data-dir", str(data), "--jobs", "2", "--wandb", "disabled",
           "--set", "data.batch_size=32", "--set", "train.mixed_precision=no", "--set", "train.channels_last=false",
           "--set", "train.retrieval=false", "--", "--plot-every", "0"]
    runs = [tmp_path / "g" / f"T0-s{s}" for s in (0, 1)]
    proc = start_paused(cmd, runs)
    proc.send_signal(signal.SIGINT)
    release(runs)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == Exit.INTERRUPTED, out
    jobs = json.loads((tmp_path / "g" / "grid.json").read_text())["jobs"]
    assert [j["status"] for j in jobs] == ["interrupted", "interrupted"], out
    assert [checkpoint_at(r) for r in runs] == [(1, 4), (1, 4)]
    again = subprocess.run(cmd, cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout
    assert [json.loads((r / "summary.json").read_text())["status"] for r in runs] == ["finished", "finished"]
    assert [[r["epoch"] for r in rows(run)] for run in runs] == [[1, 2, 3], [1, 2, 3]]


def alive(pid: int) -> bool:
    """Running, not a zombie (a killed orphan stays a zombie until init reaps it)."""
    try:
        return "\nState:\tZ" not in open(f"/proc/{pid}/status").read()
    except OSError:
        return False


@pytest.mark.slow
def test_ranks_die_with_their_launcher_and_the_run_resumes(data, tmp_path):
    """SIGKILL of `accelerate launch` (a node's agent) takes its ranks with it (PR_SET_PDEATHSIG), instead of
    leaving them orphaned, waiting on the dead launcher's store and holding the run folder's lock."""
    from helpers import free_port

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), str(ROOT / "arcdist" / "train.py"), *args(data, run)]
    launcher = start_paused(cmd, [run])
    ranks = [int(p) for p in subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True,
                                            text=True).stdout.split()]
    assert len(ranks) == 2
    launcher.kill()
    launcher.communicate()
    deadline = time.time() + 30  # a bound: the kernel kills them at once
    while any(alive(p) for p in ranks) and time.time() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in ranks)
    release([run])
    run_train(["--resume", str(run), "--data-dir", str(data), "--no-progress"], world=2)  # not busy: resumes
    assert [r["epoch"] for r in rows(run)] == [1, 2, 3]


@pytest.mark.parametrize("argv0, says", [("/venv/bin/arcdist", "arcdist train --resume RUN"),
                                         ("/src/arcdist/__main__.py", "arcdist train --resume RUN"),
                                         ("arcdist/train.py", "NAME arcdist/train.py --resume RUN")])
def test_the_resume_command_is_the_one_the_run_was_started_with(monkeypatch, argv0, says):
    """`arcdist train` was told to resume with `python3 .../bin/arcdist --resume RUN`, which the arcdist command
    refuses (no such command)."""
    from pathlib import Path

    from arcdist.preempt import resume_command

    monkeypatch.setattr(sys, "argv", [argv0])
    assert resume_command(Path("RUN")) == says.replace("NAME", Path(sys.executable).name)
