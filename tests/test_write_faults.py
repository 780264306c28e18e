"""A full disk while training: one line, exit status 3, no partial files, the last checkpoint intact, resume works."""
import shutil
import subprocess
import uuid

import pytest

from arcdist.checkpoint import latest_checkpoint
from helpers import metric_rows as rows, EXACT, TINY, make_tiny_mnist, run_train, tiny_args

# the test backbone 16x wider and without its pool (~140,000 multiply-adds per image): its checkpoint (about 300 KB)
# is what fills the small disk, not the run's other files (T0's own is no larger than its features files)
WIDE = ["--set", "model.layers=(('conv', 1, 64, 3, 2, 1),)", "--set", "model.fc=('linear', 12544)"]


@pytest.fixture
def small_disk(tmp_path):
    """mount(size_bytes) -> a tmpfs of that size (remounted larger later); unmounted after the test."""
    mnt = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()

    def mount(size: int):
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size // 4096 * 4096}", "tmpfs", str(mnt)],
                              capture_output=True)
        if proc.returncode:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.decode().strip()}")
        return mnt

    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    yield mount
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.mark.slow
def test_full_disk_stops_cleanly_and_resume_continues_once_space_is_back(small_disk, tmp_path):
    data = make_tiny_mnist(tmp_path / "data", n_train=256, n_test=64, seed=2)
    def common(out):
        return tiny_args(data, out, 3, "--plot-every", "0", *EXACT, *WIDE, "--set", "train.keep_checkpoints=3")

    whole = tmp_path / "whole"
    run_train(common(whole))
    size = sum(f.stat().st_size for f in (whole / "checkpoints" / "epoch-0001").iterdir())
    disk = small_disk(int(1.5 * size))  # room for one checkpoint and the small files, not for two checkpoints
    out = disk / "run"
    proc = run_train(common(out), check=False)
    assert proc.returncode == 3, proc.stderr[-2000:]
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and f"--resume {out}" in err[0], err
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["epoch-0001"]  # the partial one removed
    assert (out / "metrics.jsonl").read_text().endswith("\n")  # no partial line
    subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
    run_train([*TINY, "--resume", str(out), "--data-dir", str(data), "--plot-every", "0"])
    assert rows(out) == rows(whole)
    assert latest_checkpoint(out).name == "epoch-0003"


@pytest.mark.slow
def test_disk_full_before_the_first_checkpoint_then_resume_trains_it_again(small_disk, tmp_path):
    """The model's safetensors file is the first to hit the full disk (safetensors raises its own error type);
    with no checkpoint to continue, --resume trains the run again from epoch 1 with its saved config."""
    data = make_tiny_mnist(tmp_path / "data", n_train=256, n_test=64, seed=2)
    whole = tmp_path / "whole"
    run_train(tiny_args(data, whole, 2, "--plot-every", "0", *WIDE))
    model = (whole / "checkpoints" / "epoch-0001" / "model.safetensors").stat().st_size
    disk = small_disk(model // 2)  # room for config, metrics and features, not for the model
    out = disk / "run"
    proc = run_train(tiny_args(data, out, 2, "--plot-every", "0", *WIDE), check=False)
    assert proc.returncode == 3, proc.stderr[-2000:]
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0], err
    assert "no checkpoint was complete yet" in err[0] and f"--resume {out} trains it again from epoch 1" in err[0], err
    assert list((out / "checkpoints").iterdir()) == []  # the partial one removed
    assert len(rows(out)) == 1 and (out / "metrics.jsonl").read_text().endswith("\n")
    subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
    proc = run_train(["--resume", str(out), "--data-dir", str(data), "--no-progress", "--wandb", "disabled",
                      "--plot-every", "0"])
    assert "holds no complete checkpoint: training it again from epoch 1" in proc.stderr
    assert rows(out) == rows(whole)  # the dead attempt's epoch-1 row replaced, not kept beside the new one
