"""Device and precision choice (arcdist/hardware.py): each capability mocked, explicit values win."""
import json

import pytest
import torch

from arcdist import hardware
from arcdist.hardware import BF16_MIN_GAIN, resolve
from helpers import EXACT, run_train, tiny_args

AVX512_BF16 = {"avx2", "avx512f", "avx512_bf16"}
AVX2 = {"avx2", "fma"}


def probe_returning(**speeds):
    calls = []

    def probe(candidates):
        calls.append(candidates)
        return {hardware._key(p, c): speeds[hardware._key(p, c).replace("+", "_")] for p, c in candidates}

    probe.calls = calls
    return probe


def never(candidates):
    raise AssertionError("the probe must not run here")


@pytest.mark.parametrize("cuda,mps,xpu,force_cpu,want", [
    (True, False, False, False, "cuda"), (False, True, False, False, "mps"), (False, False, True, False, "xpu"),
    (False, False, False, False, "cpu"), (True, True, False, True, "cpu"), (False, True, False, True, "cpu"),
])
def test_device_is_cpu_only_without_any_accelerator_or_when_asked(monkeypatch, cuda, mps, xpu, force_cpu, want):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    if hasattr(torch, "xpu"):
        monkeypatch.setattr(torch.xpu, "is_available", lambda: xpu)
    elif xpu:
        pytest.skip("this torch has no torch.xpu")
    assert hardware.device_type(force_cpu) == want


def test_a_mac_gets_accelerates_mps_device_not_a_forced_cpu(monkeypatch):
    import accelerate

    import arcdist.train as train

    seen = {}

    class Recorder:
        def __init__(self, **kwargs):
            seen.update(kwargs)

        def print(self, *a):
            seen["printed"] = " ".join(map(str, a))

    monkeypatch.setattr(hardware, "device_type", lambda force_cpu=False: "cpu" if force_cpu else "mps")
    monkeypatch.setattr(accelerate, "Accelerator", Recorder)
    cfg, _, choice = train.setup_accelerator(train.get_variant("A1").config)
    assert seen["cpu"] is False and seen["mixed_precision"] == "no"
    assert (cfg.train.mixed_precision, cfg.train.channels_last) == ("no", False)
    assert "mps" in seen["printed"] and choice.reason.startswith("mps")


@pytest.mark.parametrize("bf16_ok,want", [(True, ("bf16", True)), (False, ("no", False))])
def test_cuda_takes_bf16_where_the_gpu_has_it(bf16_ok, want):
    choice = resolve("auto", "auto", "cuda", probe_fn=never, cuda_bf16=lambda: bf16_ok)
    assert (choice.mixed_precision, choice.channels_last) == want


def test_cpu_without_bf16_instructions_is_fp32_and_only_the_layout_is_probed():
    probe = probe_returning(fp32=100, fp32_cl=160)
    choice = resolve("auto", "auto", "cpu", probe_fn=probe, flags=AVX2)
    assert (choice.mixed_precision, choice.channels_last) == ("no", True)
    assert probe.calls == [[("no", False), ("no", True)]]  # bf16 never timed on such a CPU
    assert resolve("auto", False, "cpu", probe_fn=never, flags=AVX2).mixed_precision == "no"


@pytest.mark.parametrize("speeds,want", [
    (dict(fp32=400, fp32_cl=600, bf16=50, bf16_cl=60), ("no", True)),  # AVX2-limited oneDNN: bf16 7x slower
    (dict(fp32=400, fp32_cl=600, bf16=500, bf16_cl=600 * BF16_MIN_GAIN * 0.99), ("no", True)),  # not enough
    (dict(fp32=400, fp32_cl=600, bf16=500, bf16_cl=1200), ("bf16", True)),  # Zen 4 / Sapphire Rapids
    (dict(fp32=400, fp32_cl=390, bf16=1000, bf16_cl=1010), ("bf16", False)),  # NHWC not 5 % faster: NCHW
])
def test_cpu_with_bf16_instructions_follows_the_probe(speeds, want):
    choice = resolve("auto", "auto", "cpu", probe_fn=probe_returning(**speeds), flags=AVX512_BF16)
    assert (choice.mixed_precision, choice.channels_last) == want
    assert choice.probe == {k.replace("_", "+"): v for k, v in speeds.items()}
    assert "probe" in choice.reason


@pytest.mark.parametrize("device", ["cpu", "cuda", "mps"])
@pytest.mark.parametrize("mp,cl", [("bf16", False), ("no", True), ("fp16", False)])
def test_explicit_values_win_everywhere(device, mp, cl):
    choice = resolve(mp, cl, device, probe_fn=never, flags=AVX512_BF16, cuda_bf16=lambda: not mp == "no")
    assert (choice.mixed_precision, choice.channels_last, choice.reason) == (mp, cl, "set explicitly")


def test_explicit_precision_with_auto_layout_probes_only_that_precision():
    probe = probe_returning(bf16=100, bf16_cl=300)
    choice = resolve("bf16", "auto", "cpu", probe_fn=probe, flags=AVX2)  # the user's bf16 is kept, even here
    assert (choice.mixed_precision, choice.channels_last) == ("bf16", True)
    assert probe.calls == [[("bf16", False), ("bf16", True)]]


@pytest.mark.slow
def test_probe_times_every_candidate_once_then_reads_the_cache(monkeypatch, tmp_path):
    from arcdist.variants import get_variant

    monkeypatch.setenv("ARCDIST_CACHE_DIR", str(tmp_path))
    model = get_variant("V0").config.model
    candidates = [("no", False), ("no", True), ("bf16", False), ("bf16", True)]
    timed = []
    real = hardware._candidate_step
    monkeypatch.setattr(hardware, "_candidate_step", lambda *a: timed.append(a[2:]) or real(*a))
    rng = torch.get_rng_state()
    first = hardware.probe_cpu(model, 8, candidates)
    assert torch.equal(torch.get_rng_state(), rng)  # the run's random stream is untouched
    assert set(first) == {"fp32", "fp32+cl", "bf16", "bf16+cl"} and min(first.values()) > 0
    assert timed == candidates
    monkeypatch.setattr(hardware, "_candidate_step", lambda *a: pytest.fail("timed again"))
    assert hardware.probe_cpu(model, 8, candidates) == first
    assert len(json.loads((tmp_path / "precision-probe.json").read_text())) == 1


@pytest.mark.slow
def test_the_resolved_choice_is_printed_once_and_stored_in_config_json(tiny_data, tmp_path):
    out = tmp_path / "auto"
    proc = run_train(tiny_args(tiny_data, out, 1, "--plot-every", "0", auto=True))
    doc = json.loads((out / "config.json").read_text())
    train, precision = doc["config"]["train"], doc["precision"]
    assert train["mixed_precision"] in ("no", "bf16") and train["channels_last"] in (True, False)
    assert (precision["mixed_precision"], precision["channels_last"]) == (train["mixed_precision"], train["channels_last"])
    lines = [line for line in proc.stdout.splitlines() if line.startswith("arcdist: cpu, ")]
    assert len(lines) == 1 and precision["reason"] in lines[0]
    pinned = tmp_path / "pinned"
    run_train(tiny_args(tiny_data, pinned, 1, "--plot-every", "0", *EXACT))
    doc = json.loads((pinned / "config.json").read_text())
    assert (doc["config"]["train"]["mixed_precision"], doc["config"]["train"]["channels_last"]) == ("no", False)
    assert doc["precision"]["reason"] == "set explicitly"


FAULTS = """
import resource, sys, torch
from arcdist.hardware import tune_malloc
tuned = tune_malloc() if sys.argv[1] == "tune" else False
def rounds(n):
    for _ in range(n):
        ts = [torch.ones(5 << 20) for _ in range(3)]  # three 20 MB activations alive at once, then freed
        del ts
rounds(3)
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
rounds(20)
print(tuned, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 20)
"""


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="mallopt is glibc's")
@pytest.mark.parametrize("mode,env,want_tuned", [("tune", {}, True), ("plain", {}, False),
                                                 ("tune", {"MALLOC_TRIM_THRESHOLD_": "131072"}, False)])
def test_tune_malloc_keeps_freed_activations_off_the_page_fault_path(mode, env, want_tuned):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | env
    out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, env=env, check=True)
    tuned, faults = out.stdout.split()
    assert tuned == str(want_tuned)  # a user's MALLOC_* setting is left alone
    if want_tuned:  # 15,360 pages a round would fault if every block were fresh memory; glibc's own
        # thresholds fault 500-10,200 of them here (it depends on its dynamic threshold and the kernel's huge
        # pages, so no bound is asserted on them), the tuned ones 0-512
        assert float(faults) < 3 * (20 << 20) // 4096 / 10
