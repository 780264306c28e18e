"""The grid runner: jobs side by side, skip on rerun, failures recorded without stopping the rest."""
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from arcdist import grid, train
from helpers import ROOT, cli_env, make_tiny_mnist


def run_grid(args, check=True):
    proc = subprocess.run([sys.executable, "-m", "arcdist.grid", *args], cwd=ROOT, env=cli_env(),
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode not in (0, 1):
        raise AssertionError(proc.stdout + proc.stderr)
    return proc


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid")
    data = make_tiny_mnist(root / "data", n_train=256, n_test=50)
    # V1.2.4's batch of 512 exceeds the 256 training images: that job must fail, alone
    args = ["--grid-id", "g1", "--variants", "T0,T0.1,V1.2.4", "--seeds", "0", "--epochs", "1", "--out",
            str(root / "runs"), "--data-dir", str(data), "--jobs", "2", "--wandb", "disabled",
            "--set", "train.keep_checkpoints=1", "--set", "train.retrieval=false", "--set", "train.mixed_precision=no",
            "--set", "train.channels_last=false", "--", "--plot-every", "0"]
    first = run_grid(args)
    return root, args, first


@pytest.mark.slow
def test_jobs_complete_side_by_side_and_failure_is_recorded(grid_run):
    root, _, first = grid_run
    assert first.returncode == 1  # one job failed
    doc = json.loads((root / "runs" / "g1" / "grid.json").read_text())
    status = {j["variant"]: j for j in doc["jobs"]}
    assert status["T0"]["status"] == "finished" and status["T0.1"]["status"] == "finished"
    assert status["V1.2.4"]["status"] == "failed"
    assert "larger than the 256 training images" in status["V1.2.4"]["error"]
    for v in ("T0", "T0.1"):
        run = root / "runs" / "g1" / f"{v}-s0"
        assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
        assert status[v]["final_accuracy"] == json.loads((run / "summary.json").read_text())["final_accuracy"]
    assert "T0-s0" in first.stdout and "failed" in first.stdout  # the terminal summary table


def test_rerun_skips_finished_runs(grid_run):
    root, args, _ = grid_run
    log = root / "runs" / "g1" / "logs" / "T0-s0.log"
    before = log.read_text()
    again = run_grid(args)
    doc = json.loads((root / "runs" / "g1" / "grid.json").read_text())
    status = {j["variant"]: j["status"] for j in doc["jobs"]}
    assert status == {"T0": "skipped", "T0.1": "skipped", "V1.2.4": "failed"}
    assert log.read_text() == before
    assert again.returncode == 1


@pytest.mark.slow
def test_unfinished_run_is_resumed(grid_run):
    root, args, _ = grid_run
    more = [a if a != "1" else "2" for a in args]  # --epochs 2: both runs are now unfinished
    summary = root / "runs" / "g1" / "T0-s0" / "summary.json"
    summary.unlink()
    run_grid([*more[:more.index("--variants") + 1], "T0", *more[more.index("--variants") + 2:]])
    rows = (root / "runs" / "g1" / "T0-s0" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2]


def test_task_index_and_list():
    args = grid.parse_args(["--grid-id", "x", "--variants", "V0,T0", "--seeds", "0,1,2"])
    jobs = grid.build_jobs(args)
    assert [(j.index, j.variant, j.seed) for j in jobs] == [(0, "V0", 0), (1, "V0", 1), (2, "V0", 2),
                                                            (3, "T0", 0), (4, "T0", 1), (5, "T0", 2)]
    assert jobs[4].run_dir.endswith("x/T0-s1")
    with pytest.raises(ValueError, match="valid variants"):
        grid.build_jobs(grid.parse_args(["--grid-id", "x", "--variants", "V7"]))


def test_a_sweep_makes_a_row_per_value_and_its_setting_wins(tmp_path, capsys):
    """--sweep head.margin=0.2,0.5: a row per value (two sweeps: every combination, the first slowest), each run
    folder named by its settings, each command's sweep setting after the grid's --set; bad sweeps are one line."""
    args = grid.parse_args(["--grid-id", "m", "--variants", "T0,A8", "--seeds", "0,1", "--out", str(tmp_path),
                            "--set", "head.margin=0.3", "--sweep", "head.margin=0.2,0.5"])
    jobs = grid.build_jobs(args)
    assert [(j.variant, j.sets, j.seed) for j in jobs] == [
        (v, [f"head.margin={m}"], s) for v in ("T0", "A8") for m in ("0.2", "0.5") for s in (0, 1)]
    assert [Path(j.run_dir).name for j in jobs[:4]] == ["T0-head.margin=0.2-s0", "T0-head.margin=0.2-s1",
                                                        "T0-head.margin=0.5-s0", "T0-head.margin=0.5-s1"]
    cmd = grid.train_command(jobs[2], args)
    train_args = train.parse_args(cmd[cmd.index(str(grid.TRAIN_SCRIPT)) + 1:])
    assert [o for o in train_args.overrides if o.startswith("head.margin")] == ["head.margin=0.3", "head.margin=0.5"]
    assert train_args.sweep_sets == ["head.margin=0.5"]  # the row W&B names: A8-head.margin=0.5-s0, row "A8 ..."
    Path(jobs[2].run_dir).mkdir(parents=True)
    (Path(jobs[2].run_dir) / "config.json").write_text("{}")
    resumed = grid.train_command(jobs[2], args)  # a resume carries the row too (train.py checks it still holds)
    assert resumed[resumed.index("--resume") + 1] == jobs[2].run_dir and "--set" not in resumed
    assert [resumed[i + 1] for i, a in enumerate(resumed) if a == "--sweep-set"] == ["head.margin=0.5"]
    two = grid.sweep_rows(["head.margin=0.2,0.5", "train.epochs=3,6,9"])
    assert len(two) == 6 and two[1] == ["head.margin=0.2", "train.epochs=6"] and two[3][0] == "head.margin=0.5"
    assert grid.sweep_rows([]) == [[]]
    for bad, says in (("head.margin", "expected SECTION.FIELD=V1,V2"), ("head.margin=", "expected SECTION.FIELD"),
                      ("head.margin=0.2,0.2", "given twice"), ("head.margn=0.2,0.5", "--sweep head.margn: unknown"),
                      ("head.margin=wide", "--sweep head.margin=wide: expected a number")):
        argv = ["--grid-id", "m", "--variants", "A8", "--out", str(tmp_path / "bad"), "--sweep", bad, "--list"]
        assert grid.main(argv) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("arcdist.grid: error:") and says in lines[0], (bad, lines)
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("gpus,per_job,jobs,want", [
    ([0], 1, 3, ["0", "0", "0"]),  # small runs share one GPU
    ([0, 1], 1, 4, ["0", "1", "0", "1"]),  # round-robin over GPUs
    ([0, 1, 2, 3], 2, None, ["0,1", "2,3"]),  # default: one job per GPU group
    ([0, 1, 2], 2, 3, ["0,1", "0,1", "0,1"]),  # the odd GPU is left out, never half a group
    (["MIG-a1", "GPU-b2"], 1, 2, ["MIG-a1", "GPU-b2"]),  # MIG and UUID names pass through as named
])
def test_gpu_slots_share_gpus_round_robin(monkeypatch, gpus, per_job, jobs, want):
    monkeypatch.setattr(grid, "_gpu_ids", lambda: gpus)
    argv = ["--grid-id", "x", "--gpus-per-job", str(per_job)] + (["--jobs", str(jobs)] if jobs else [])
    assert [s["CUDA_VISIBLE_DEVICES"] for s in grid.plan_slots(grid.parse_args(argv))] == want


def test_more_gpus_per_job_than_the_node_has_is_an_error(monkeypatch):
    monkeypatch.setattr(grid, "_gpu_ids", lambda: [0])
    with pytest.raises(ValueError, match="has only 1 GPUs; lower --gpus-per-job"):
        grid.plan_slots(grid.parse_args(["--grid-id", "x", "--gpus-per-job", "2"]))


def test_cpu_slots_set_threads_unless_the_user_did(tmp_path):
    from arcdist.grid import build_jobs, parse_args, train_command

    def threads_of(*extra):
        args = parse_args(["--grid-id", "g", "--variants", "T0", "--out", str(tmp_path), *extra])
        cmd = train_command(build_jobs(args)[0], args, threads=2)
        return [cmd[i + 1] for i, a in enumerate(cmd) if a == "--set" and cmd[i + 1].startswith("train.threads=")]

    assert threads_of() == ["train.threads=2"]
    assert threads_of("--set", "train.threads=1") == ["train.threads=1"]


def test_a_started_run_is_resumed_even_before_its_first_checkpoint(tmp_path):
    """A job that died in its first epoch (config.json, no checkpoint) gets --resume, which trains it again;
    a fresh --output-dir there would be refused as a folder that already holds a run."""
    from arcdist.grid import build_jobs, parse_args, train_command

    args = parse_args(["--grid-id", "g", "--variants", "T0", "--out", str(tmp_path), "--set", "data.shift=1"])
    job = build_jobs(args)[0]
    assert train_command(job, args)[2:4] == ["--variant", "T0"] and "data.shift=1" in train_command(job, args)
    Path(job.run_dir).mkdir(parents=True)
    (Path(job.run_dir) / "config.json").write_text("{}")
    cmd = train_command(job, args)
    assert cmd[2:4] == ["--resume", job.run_dir] and "--variant" not in cmd and "data.shift=1" not in cmd


@pytest.mark.parametrize("gpus,argv,want", [
    ([0], ["--jobs-per-gpu", "4"], ["0"] * 4),  # the one-GPU grid: 4 runs side by side on it
    ([0, 1], ["--jobs-per-gpu", "3"], ["0", "1"] * 3),  # interleaved, so a short grid fills every GPU
    ([0, 1, 2, 3], ["--jobs-per-gpu", "2", "--gpus-per-job", "2"], ["0,1", "2,3", "0,1", "2,3"]),
    ([0], ["--jobs-per-gpu", "4", "--jobs", "2"], ["0", "0"]),  # --jobs, when given, decides
])
def test_jobs_per_gpu_multiplies_the_slots(monkeypatch, gpus, argv, want):
    monkeypatch.setattr(grid, "_gpu_ids", lambda: gpus)
    monkeypatch.setattr(grid.os, "sched_getaffinity", lambda pid: set(range(16)))
    slots = grid.plan_slots(grid.parse_args(["--grid-id", "x", *argv]))
    assert [s["CUDA_VISIBLE_DEVICES"] for s in slots] == want
    assert {s["OMP_NUM_THREADS"] for s in slots} == {str(16 // len(want))}  # the cores shared out


def test_jobs_per_gpu_is_checked_and_a_cpu_node_ignores_it(monkeypatch):
    monkeypatch.setattr(grid, "_gpu_ids", lambda: [0])
    with pytest.raises(ValueError, match="--jobs-per-gpu 0: expected 1 or more"):
        grid.plan_slots(grid.parse_args(["--grid-id", "x", "--jobs-per-gpu", "0"]))
    # a CPU-only node ignores --jobs-per-gpu: --jobs (default 2) processes with the cores split
    monkeypatch.setattr(grid, "_gpu_ids", lambda: [])
    monkeypatch.setattr(grid.os, "sched_getaffinity", lambda pid: {0, 1})
    slots = grid.plan_slots(grid.parse_args(["--grid-id", "x", "--jobs-per-gpu", "4"]))
    assert slots == [dict(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")] * 2


def test_a_full_disk_fails_the_jobs_it_touches_not_the_runner(tmp_path, capsys):
    """A log that cannot be opened fails its job (a rerun starts it again) and an unwritable grid.json is one
    warning: the runner neither dies nor leaves jobs orphaned. (Directories in the files' places stand in for
    ENOSPC: root ignores permissions.)"""
    out = tmp_path / "runs"
    (out / "full" / "logs" / "T0-s0.log").mkdir(parents=True)
    (out / "full" / "logs" / "T0-s1.log").mkdir()
    (out / "full" / ".grid.json.tmp").mkdir()
    status = grid.main(["--grid-id", "full", "--variants", "T0", "--seeds", "0,1", "--out", str(out), "--jobs", "2"])
    printed = capsys.readouterr()
    assert status == 1  # Exit.FAILED: jobs failed, the runner ended normally
    assert printed.out.count("error: cannot open") == 2
    assert "warning: cannot write" in printed.err and "Traceback" not in printed.err
    assert not (out / "full" / "T0-s0").exists() and not (out / "full" / "T0-s1").exists()  # nothing started


def test_each_variant_trains_on_its_own_dataset_unless_datasets_is_given():
    """A9F is a Fashion-MNIST recipe: a grid of it trains on Fashion-MNIST without --datasets (it trained on
    MNIST once, silently, when --datasets defaulted to mnist)."""
    jobs = grid.build_jobs(grid.parse_args(["--grid-id", "g", "--variants", "A9,A9F", "--seeds", "0"]))
    assert [(j.variant, j.dataset, Path(j.run_dir).name) for j in jobs] == [
        ("A9", "mnist", "A9-s0"), ("A9F", "fashion-mnist", "A9F-s0")]
    jobs = grid.build_jobs(grid.parse_args(["--grid-id", "g", "--variants", "A9F", "--datasets", "mnist"]))
    assert [j.dataset for j in jobs] == ["mnist"]


@pytest.mark.slow
def test_one_grid_has_one_runner_started_together_or_mid_grid(tmp_path):
    data = make_tiny_mnist(tmp_path / "data", n_train=256, n_test=50)
    args = [sys.executable, "-m", "arcdist.grid", "--grid-id", "g", "--variants", "T0", "--seeds", "0,1",
            "--epochs", "1", "--out", str(tmp_path / "runs"), "--data-dir", str(data), "--jobs", "1",
            "--wandb", "disabled", "--", "--mixed-precision", "no", "--plot-every", "0", "--set", "train.retrieval=false"]
    start = lambda: subprocess.Popen(args, cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
    together = [start(), start()]
    grid_json = tmp_path / "runs" / "g" / "grid.json"
    while not (grid_json.is_file() and '"running"' in grid_json.read_text()):  # a job is training: mid-grid
        assert all(p.poll() is None or p.returncode == 2 for p in together)
        time.sleep(0.2)
    late = start()
    outs = [p.communicate(timeout=600) for p in [*together, late]]
    codes = [p.returncode for p in [*together, late]]
    assert sorted(codes[:2]) == [0, 2] and codes[2] == 2, outs
    runner = together[codes.index(0)].pid
    for (out, err), code in zip(outs, codes):
        if code == 2:  # refused at once, in one line naming the runner
            assert err.strip().count("\n") == 0 and f"PID {runner} on {socket.gethostname()}" in err, err
            assert "[grid] start" not in out
    doc = json.loads(grid_json.read_text())
    assert [j["status"] for j in doc["jobs"]] == ["finished"] * 2
    for j in doc["jobs"]:  # each trained once: one row per epoch
        rows = [json.loads(line) for line in (Path(j["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in rows] == [1]
    third = subprocess.run(args, cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert third.returncode == 0 and third.stdout.count("skipped") == 2, third.stdout + third.stderr
    more = [*args[:args.index("--epochs") + 1], "2", *args[args.index("--epochs") + 2:]]
    more[more.index("--seeds") + 1] = "0"  # the grid rerun for more epochs resumes its finished job (it skipped it)
    fourth = subprocess.run(more, cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert fourth.returncode == 0 and "skipped" not in fourth.stdout, fourth.stdout + fourth.stderr
    rows = [json.loads(line) for line in (Path(doc["jobs"][0]["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    again = subprocess.run([sys.executable, "-m", "arcdist.train", "--resume", doc["jobs"][0]["run_dir"], "--epochs",
                            "2", "--no-progress", "--wandb", "disabled"], cwd=ROOT, env=cli_env(), capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0 and "has trained 2 epochs, --epochs asks for 2: nothing to train" in again.stdout


@pytest.mark.parametrize("extra, says", [
    (["--variants", "T0,T0"], "--variants: T0 given twice"), (["--seeds", "0,1,0"], "--seeds: 0 given twice"),
    (["--datasets", "mnist,mnist"], "--datasets: mnist given twice"),
    (["--sweep", "train.seed=5,6"], "--sweep train.seed=5,6: the grid sets train.seed from --seeds"),
    (["--set", "train.seed=3"], "--set train.seed=3: the grid sets train.seed from --seeds"),
    (["--set", "data.dataset=fashion-mnist"], "the grid sets data.dataset from --datasets"),
    (["--epochs", "1", "--set", "train.epochs=2"], "--set train.epochs=2: the grid sets train.epochs from --epochs"),
    (["--jobs", "-1"], "--jobs -1: expected 1 or more"), (["--jobs", "0"], "--jobs 0: expected 1 or more")])
def test_a_grid_refuses_two_values_for_one_field_and_jobs_that_share_a_folder(tmp_path, capsys, extra, says):
    """Two jobs in one run folder (a report then counted one seed twice), a swept seed that overrode --seeds (two
    folders of one seed: a false noise verdict), --jobs -1 (it hung): each one line, exit 2, nothing written."""
    argv = ["--grid-id", "g", "--out", str(tmp_path / "g"), *(["--variants", "T0"] if "--variants" not in extra
                                                              else []), *extra, "--list"]
    assert grid.main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], lines
    assert not (tmp_path / "g").exists()
    assert grid.main(["--grid-id", "g", "--variants", "T0", "--out", str(tmp_path / "g"), "--sweep", "train.epochs=1,2",
                      "--list"]) == 0  # epochs swept without --epochs: one value each
