"""One owner per run folder: a second train.py waits a bounded time, then refuses naming the holder."""
import json
import signal
import socket
import subprocess
import sys

import pytest

from arcdist.grid import Job, finish
from arcdist.runlock import BUSY, RunBusy, RunLock
from helpers import snapshot, ROOT, TINY, run_train, tiny_args

HOLD = "import sys, time; from arcdist.runlock import RunLock; RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(600)"


def hold(run_dir):
    """Another process holding run_dir's lock until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_lock_names_its_holder_and_a_killed_holder_leaves_nothing_stale(tmp_path):
    holder = hold(tmp_path)
    try:
        with pytest.raises(RunBusy, match=rf"{BUSY}: held by PID {holder.pid} on {socket.gethostname()} since "):
            RunLock(tmp_path).acquire(wait_s=0.2, poll_s=0.05)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = RunLock(tmp_path)
    lock.acquire(wait_s=0)  # the kernel released the dead holder's lock: no stale-lock cleanup needed
    assert json.loads((tmp_path / ".arcdist.lock").read_text())["pid"] != holder.pid
    lock.release()


@pytest.fixture(scope="module")
def finished_run(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("lock") / "run"
    run_train(tiny_args(tiny_data, out, 1, "--plot-every", "0"))
    return out


@pytest.mark.slow
def test_second_trainer_on_a_busy_folder_refuses_and_writes_nothing(finished_run, tiny_data):
    before = snapshot(finished_run)  # (the lock's holder line is not compared: the holder rewrote it)
    holder = hold(finished_run)
    try:
        proc = run_train([*TINY, "--resume", str(finished_run), "--epochs", "2", "--data-dir", str(tiny_data),
                          "--lock-wait", "0.5", "--plot-every", "0"], check=False)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"{BUSY}: held by PID {holder.pid}" in proc.stderr and "--resume" in proc.stderr
    assert snapshot(finished_run) == before
    # the holder gone, the same command continues the run
    run_train([*TINY, "--resume", str(finished_run), "--epochs", "2", "--data-dir", str(tiny_data), "--plot-every", "0"])
    assert json.loads((finished_run / "summary.json").read_text())["epochs"] == 2


def test_grid_records_a_busy_job_as_busy_not_failed(tmp_path):
    log = tmp_path / "job.log"
    log.write_text(f"arcdist: error: runs/x {BUSY}: held by PID 7 on n1 since 2026-01-01T00:00:00; wait\n")
    job = Job(index=0, variant="T0", seed=0, dataset="mnist", run_dir=str(tmp_path / "run"), log=str(log))
    finish(job, 2, 0.0)
    assert job.status == "busy"
    log.write_text("arcdist: error: something else\n")
    finish(job, 2, 0.0)
    assert job.status == "failed"


def test_a_start_killed_before_config_json_is_started_again(tiny_data, tmp_path):
    """A first start killed between taking the lock and writing config.json leaves only the lock file: the next
    start (a grid rerun passes --variant, as there is no config.json) trains it, instead of "already holds a run"
    forever (found by the chaos run)."""
    from arcdist.runlock import LOCK_FILE

    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_FILE).write_text("host 1 killed\n")
    run_train(tiny_args(tiny_data, run, 1))
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"


def test_a_new_run_refuses_a_folder_another_start_filled_while_it_waited_for_the_lock(tmp_path):
    """Two starts of one new folder at once both found it empty; the second to get the lock finds config.json and
    refuses in one line, lock released (both trained into one folder, two epoch-1 rows, before)."""
    from accelerate import Accelerator

    from arcdist import rundir
    from arcdist.config import ConfigError
    from arcdist.variants import get_variant

    run = tmp_path / "same"
    run.mkdir()
    (run / "config.json").write_text("{}")  # what the first start wrote after this one's checks
    with pytest.raises(ConfigError, match="already holds a run \\(another process started it meanwhile\\); pass "
                                          "--resume"):
        rundir.claim(run, Accelerator(cpu=True), get_variant("T0").config, resume=False, lock_wait=0, launch={})
    assert (run / "config.json").read_text() == "{}"
    lock = RunLock(run)
    lock.acquire(0)  # released by the refusal
    lock.release()
    assert sorted(p.name for p in run.iterdir()) == [".arcdist.lock", "config.json"]
