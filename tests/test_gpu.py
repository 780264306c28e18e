"""The GPU path on a real CUDA device (marked `gpu`, skipped without one): bf16 and fp16 to a finished run with
plots, exact resume with deterministic kernels, a 96-px colour folder (its image pooled inside the model) run
twice to the same figures, the explorer, report and embed (features and predictions) of a GPU run, two processes
on one GPU.
bench/gpu-smoke.sh runs these first on a lent GPU; on a CPU they are skipped (the device rule itself is checked
on the CPU: tests/test_device.py)."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from helpers import PLOTS, ROOT, metric_rows, run_train, summary

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
GPU = ["--variant", "A8", "--no-progress", "--wandb", "disabled", "--limit-train", "4096", "--limit-test", "1000"]


def cuda_args(data, out, epochs, *extra):
    return [*GPU, "--epochs", str(epochs), "--data-dir", str(data), "--output-dir", str(out), *extra]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_one_process_trains_to_a_finished_run_with_plots(real_data, tmp_path, precision):
    out = tmp_path / precision
    run_train(cuda_args(real_data, out, 2, "--mixed-precision", precision, *PLOTS))
    config = json.loads((out / "config.json").read_text())
    assert config["device"].startswith("cuda") and config["config"]["train"]["mixed_precision"] == precision
    assert summary(out)["status"] == "finished" and summary(out)["final_accuracy"] > 0.5
    assert (out / "plots" / "test-circle-epoch-0002.png").is_file() and (out / "plots" / "test-raw.gif").is_file()
    assert np.load(out / "features.npz")["features"].shape == (1000, 2)


def test_resume_equals_the_uninterrupted_run_with_deterministic_kernels(real_data, tmp_path):
    whole, part = tmp_path / "whole", tmp_path / "part"
    run_train(cuda_args(real_data, whole, 2, "--mixed-precision", "no"))
    run_train(cuda_args(real_data, part, 1, "--mixed-precision", "no"))
    run_train(["--resume", str(part), "--epochs", "2", "--no-progress", "--wandb", "disabled",
               "--data-dir", str(real_data)])
    assert metric_rows(part) == metric_rows(whole)


def test_a_large_colour_folder_runs_twice_to_the_same_figures(real_data, tmp_path):
    """96-px tinted digits: the image pooled to 28 px inside the model (model.net_size, the matrix form: 96 is no
    multiple of 28), per image normalised and randomly cropped (data.crop: grid_sample on the device), under
    train.deterministic (the default) on CUDA."""
    spec = importlib.util.spec_from_file_location("image_folder", ROOT / "tools" / "image_folder.py")
    image_folder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(image_folder)
    folder = tmp_path / "colour96"
    image_folder.write_mixed(folder, names=["mnist"], data_dir=str(real_data), per_class=(100, 20), tinted=True,
                             size=96, fmt="jpg")
    runs = [tmp_path / "a", tmp_path / "b"]
    for out in runs:
        run_train(["--variant", "A8", "--no-progress", "--wandb", "disabled", "--dataset", "folder", "--data-dir",
                   str(folder), "--epochs", "2", "--output-dir", str(out), "--mixed-precision", "no",
                   "--set", "data.crop=0.5"])
    config = json.loads((runs[0] / "config.json").read_text())
    model = config["config"]["model"]
    assert config["device"].startswith("cuda") and config["config"]["train"]["deterministic"] is True
    assert (model["in_channels"], model["image_size"], model["net_size"], config["config"]["data"]["crop"]) == \
        (3, 96, 28, 0.5)
    assert summary(runs[0])["status"] == "finished" and metric_rows(runs[0]) == metric_rows(runs[1])


def test_explorer_report_and_embed_read_a_gpu_run(real_data, tmp_path):
    from arcdist import explore, report
    from arcdist.evaluation import embed

    grid = tmp_path / "g"
    run = grid / "A8-s0"
    run_train(cuda_args(real_data, run, 1, *PLOTS))
    (grid / "grid.json").write_text(json.dumps(dict(grid_id="g", jobs=[dict(
        index=0, variant="A8", seed=0, dataset="mnist", run_dir=str(run), status="finished")])))
    page = explore.build_page(run)
    assert page["panels"] >= 1 and page["path"].is_file()
    built = report.build_report(grid)
    assert [r["variant"] for r in built["variants"]] == ["A8"]
    # embed on the GPU in the run's precision: its saved features and its accuracy (a kernel's order may move one
    # borderline image)
    assert embed.main([str(run), "--out", str(tmp_path / "e.npz"), "--data-dir", str(real_data), "--no-progress",
                       ]) == 0
    got, saved = np.load(tmp_path / "e.npz"), np.load(run / "features.npz")
    np.testing.assert_allclose(got["features"][:1000], saved["features"], rtol=0, atol=1e-2)
    right = int((got["predicted"][:1000] == got["labels"][:1000]).sum())
    assert abs(right - round(summary(run)["final_accuracy"] * 1000)) <= 1


def test_two_processes_share_one_gpu(real_data, tmp_path):
    out = tmp_path / "two"
    run_train(cuda_args(real_data, out, 1, "--mixed-precision", "no"), world=2)
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
    assert np.load(out / "features.npz")["features"].shape == (1000, 2)
