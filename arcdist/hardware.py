"""The machine a run is on: which device, which precision, which memory layout.

`train.mixed_precision=auto` and `train.channels_last=auto` (every variant's default) resolve here, once
per run, on the main process (the choice is broadcast, so all ranks agree):

- CUDA: bf16 autocast where the GPU supports it (`torch.cuda.is_bf16_supported()`), fp32 otherwise;
  channels_last with bf16 (tensor cores take NHWC), not with fp32.
- MPS and other non-CUDA accelerators: fp32, NCHW.
- CPU: fp32 when the CPU has no bf16 instructions (no `avx512_bf16` / `amx_bf16` / ARM `bf16` flag). Where it
  has them, a short probe times the run's own backbone (forward + backward on a random batch) in each
  candidate setting and keeps the fastest; bf16 must beat fp32 by `BF16_MIN_GAIN` and channels_last NCHW by
  `CL_MIN_GAIN`, because a slower bf16 is never worth its rounding. The probe honours oneDNN's and ATen's
  ISA limits (`ONEDNN_MAX_CPU_ISA`, `ATEN_CPU_CAPABILITY`), since it measures rather than reads flags.
  Results are cached per machine, torch build, ISA limit, thread count and backbone in
  `$ARCDIST_CACHE_DIR` (default `~/.cache/arcdist`), so the probe costs its seconds once.

An explicit value (`--mixed-precision`, `--set train.mixed_precision=...`, `--set train.channels_last=...`)
is never changed.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from arcdist import cluster
from arcdist.nodecache import cache_dir

if TYPE_CHECKING:
    from accelerate import Accelerator

    from arcdist.config import Config

BF16_MIN_GAIN = 1.15  # bf16 is chosen on a CPU only when the probe finds it this much faster than fp32
CL_MIN_GAIN = 1.05  # channels_last likewise against NCHW
PROBE_SECONDS = 0.25  # one timed window per candidate and round (after one warm-up step), at least 2 steps
PROBE_ROUNDS = 3  # interleaved windows per candidate; the best counts
PROBE_BATCH = 64  # images per probe step (at most the run's per-rank batch)
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # x86 AVX-512 BF16 / AMX; "bf16" is ARMv8.6's


@dataclass(frozen=True)
class Choice:
    """The resolved precision and layout, with how they were decided (stored in config.json and W&B)."""

    mixed_precision: str  # "no" (fp32), "bf16" or "fp16"
    channels_last: bool
    reason: str  # one line: why
    probe: dict = field(default_factory=dict)  # images/s per candidate ("fp32", "fp32+cl", "bf16", "bf16+cl")

    def label(self) -> str:
        return ("fp32" if self.mixed_precision == "no" else self.mixed_precision) + (" + channels_last" if self.channels_last else "")

    def to_dict(self) -> dict:
        return asdict(self)


def device_type(force_cpu: bool = False) -> str:
    """"cuda", "mps", "xpu" or "cpu": the device Accelerate will pick, unless the run asks for the CPU."""
    import torch

    if force_cpu:
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        return "xpu"
    return "cpu"


def cpu_flags() -> set[str]:
    """The CPU's feature flags (x86 'flags' or ARM 'Features' in /proc/cpuinfo); empty where unreadable."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_has_bf16(flags: set[str]) -> bool:
    return any(f in flags for f in CPU_BF16_FLAGS)


def _candidates(mixed_precision: str, channels_last, bf16: bool) -> list[tuple[str, bool]]:
    precisions = ["no", "bf16"] if mixed_precision == "auto" and bf16 else ["no" if mixed_precision == "auto" else mixed_precision]
    layouts = [False, True] if channels_last == "auto" else [bool(channels_last)]
    return [(p, c) for p in precisions for c in layouts]


def _key(p: str, c: bool) -> str:
    return ("fp32" if p == "no" else p) + ("+cl" if c else "")


def pick(probe: dict[str, float], candidates: list[tuple[str, bool]]) -> tuple[str, bool]:
    """The candidate a probe's images/s select: the fastest fp32 layout, replaced by bf16 only when its
    fastest layout is BF16_MIN_GAIN faster; channels_last only when CL_MIN_GAIN faster than NCHW."""
    def best_layout(p: str) -> bool | None:
        layouts = [c for q, c in candidates if q == p]
        if not layouts:
            return None
        if len(layouts) == 1:
            return layouts[0]
        return probe[_key(p, True)] >= CL_MIN_GAIN * probe[_key(p, False)]

    precisions = list(dict.fromkeys(p for p, _ in candidates))
    first = precisions[0]
    choice = (first, best_layout(first))
    for p in precisions[1:]:  # only "bf16" after "no"
        c = best_layout(p)
        if probe[_key(p, c)] >= BF16_MIN_GAIN * probe[_key(*choice)]:
            choice = (p, c)
    return choice


def resolve(mixed_precision: str, channels_last, device: str, probe_fn: Callable[[list], dict] | None = None,
            flags: set[str] | None = None, cuda_bf16: Callable[[], bool] | None = None) -> Choice:
    """Resolve "auto" values for `device`. `probe_fn(candidates) -> {key: images/s}` times the CPU candidates."""
    explicit = mixed_precision != "auto" and channels_last != "auto"
    if explicit:
        return Choice(mixed_precision, bool(channels_last), "set explicitly")
    if device == "cuda":
        if cuda_bf16 is None:
            import torch

            cuda_bf16 = torch.cuda.is_bf16_supported
        p = mixed_precision if mixed_precision != "auto" else ("bf16" if cuda_bf16() else "no")
        c = bool(channels_last) if channels_last != "auto" else p == "bf16"
        return Choice(p, c, "CUDA: bf16 autocast where the GPU supports it, channels_last with it")
    if device != "cpu":
        p = "no" if mixed_precision == "auto" else mixed_precision
        c = False if channels_last == "auto" else bool(channels_last)
        return Choice(p, c, f"{device}: fp32 and NCHW unless set")
    flags = cpu_flags() if flags is None else flags
    bf16 = cpu_has_bf16(flags)
    candidates = _candidates(mixed_precision, channels_last, bf16)
    no_bf16 = "" if bf16 or mixed_precision != "auto" else "CPU without bf16 instructions: fp32; "
    if len(candidates) == 1:
        p, c = candidates[0]
        return Choice(p, c, no_bf16.rstrip("; ") or "set explicitly")
    probe = probe_fn(candidates) if probe_fn is not None else {}
    p, c = pick(probe, candidates)
    shown = ", ".join(f"{k} {v:.0f}" for k, v in probe.items())
    return Choice(p, c, f"{no_bf16}CPU probe, images/s: {shown}", probe)


# -- the CPU probe ---------------------------------------------------------------------------------


def probe_key(model_cfg, batch: int, candidates: list) -> str:
    import torch

    parts = dict(version=2,  # 2: measured with tune_malloc's thresholds
                 cpu=cpu_model(), bf16=sorted(f for f in cpu_flags() if f in CPU_BF16_FLAGS or f.startswith("amx")),
                 torch=torch.__version__, onednn=os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
                 aten=os.environ.get("ATEN_CPU_CAPABILITY", ""), threads=torch.get_num_threads(),
                 model=repr(model_cfg), batch=batch, candidates=candidates)
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def probe_cpu(model_cfg, per_rank_batch: int, candidates: list[tuple[str, bool]]) -> dict[str, float]:
    """Images/s of forward + backward of this backbone on a random batch, per candidate (cached)."""
    batch = max(1, min(PROBE_BATCH, per_rank_batch))
    key = probe_key(model_cfg, batch, candidates)
    path = cache_dir() / "precision-probe.json"
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    if isinstance(cache.get(key), dict):
        return cache[key]
    steps = {(p, c): _candidate_step(model_cfg, batch, p, c) for p, c in candidates}
    result = {_key(p, c): 0.0 for p, c in candidates}
    for _ in range(PROBE_ROUNDS):  # interleaved rounds, best of each: a passing load hits every candidate alike
        for (p, c), step in steps.items():
            result[_key(p, c)] = max(result[_key(p, c)], _images_per_s(step, batch))
    try:  # a cache we cannot write only costs the next run its probe
        path.parent.mkdir(parents=True, exist_ok=True)
        cache[key] = result
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass
    return result


def _candidate_step(model_cfg, batch: int, precision: str, channels_last: bool) -> Callable[[], None]:
    """Forward + backward of a fresh backbone on a random batch in this setting (warmed up once)."""
    import torch

    from arcdist.model import build_backbone

    rng_state = torch.get_rng_state()  # the probe must not move the run's random stream
    try:
        net = build_backbone(model_cfg)
        x = torch.randn(batch, model_cfg.in_channels, model_cfg.image_size, model_cfg.image_size)
    finally:
        torch.set_rng_state(rng_state)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = net(x)
        out.float().square().mean().backward()

    step()
    return step


def _images_per_s(step: Callable[[], None], batch: int) -> float:
    n, t0 = 0, time.perf_counter()
    while n < 2 or time.perf_counter() - t0 < PROBE_SECONDS:
        step()
        n += 1
    return n * batch / (time.perf_counter() - t0)


# glibc's malloc, kept from handing a step's activations back to the kernel (mallopt's parameters, bytes)
MALLOC_MMAP_THRESHOLD = 32 << 20  # blocks above this come from mmap, fresh pages each time (glibc's maximum)
MALLOC_TRIM_THRESHOLD = 1 << 30  # free memory at the heap's top returned to the kernel only above this
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>


def tune_malloc() -> bool:
    """Keep freed activations in the process instead of returning them to the kernel (glibc only).

    A CPU step allocates and frees the same tensors every batch (A8's first layer: 6.4 M values, 13-26 MB).
    glibc serves a block that large with mmap, or trims it off the heap's top, so every step pays the
    kernel's page faults and zeroing: 3.8 M minor faults in a 25-second bench, and the element-wise ops on
    those tensors ran at a fraction of memory speed. With these thresholds: 0.2 M faults, A8's step 1.24x
    (bf16) and 1.14x (AVX2-limited fp32) as fast on a Zen 4 (bench/cpu_step.py). The cost: a process keeps up to
    MALLOC_TRIM_THRESHOLD of freed memory instead of returning it. A user's own MALLOC_*_ variables win.
    Returns whether the thresholds were set.
    """
    import ctypes

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD)
                and libc.mallopt(_M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD))


def configure_cpu(cfg: "Config") -> None:
    """Process-wide CPU settings that decide speed (measured in bench/throughput.py)."""
    import torch

    tune_malloc()
    torch.set_flush_denormal(True)  # MNIST's many exact zeros produce denormals that halve CPU speed
    # `accelerate launch` exports OMP_NUM_THREADS=1 by default, which halves a 2-core run
    local = cluster.current().launcher.local_world_size
    torch.set_num_threads(cfg.train.threads or max(1, len(os.sched_getaffinity(0)) // local))


def configure_cuda(cfg: "Config", env: dict = os.environ) -> None:
    """Process-wide CUDA settings, before the process group exists.

    - train.deterministic: deterministic kernels (torch.use_deterministic_algorithms, cuBLAS's fixed workspace,
      no cuDNN autotuning), what exact resume on a GPU needs; an op without a deterministic kernel then fails
      loudly instead of drifting (docs/guarantees.md says what is exact where).
    - NCCL's blocking wait: a collective that times out, or whose peer is gone, raises in the training thread
      (the one-line "lost contact" error, exit 4, as under gloo) instead of NCCL's watchdog aborting the process.
    """
    import torch

    env.setdefault("TORCH_NCCL_BLOCKING_WAIT", "1")
    if cfg.train.deterministic:
        env.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def setup_accelerator(cfg: "Config", log_with: str | None = None) -> tuple["Config", "Accelerator", Choice]:
    """Pick the device (CPU only when no accelerator is visible or train.cpu), resolve train.mixed_precision /
    train.channels_last "auto" on the main process (every rank gets its choice), build the Accelerator.

    Returns the config with the resolved values, the Accelerator, and the choice with its reason.
    """
    from datetime import timedelta

    import accelerate  # (its Accelerator looked up at call time: a test records the arguments it gets)
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    device = device_type(cfg.train.cpu)
    if device == "cpu":
        configure_cpu(cfg)
    elif device == "cuda":
        configure_cuda(cfg)
    # the process group, before the choice is broadcast; a collective that waits longer than
    # train.collective_timeout_s for a rank fails (and the job ends) instead of waiting forever
    state = PartialState(cpu=device == "cpu", timeout=timedelta(seconds=cfg.train.collective_timeout_s))
    choice = [None]
    if state.is_main_process:
        per_rank = max(1, cfg.data.batch_size // state.num_processes)
        choice[0] = resolve(cfg.train.mixed_precision, cfg.train.channels_last, device,
                                     probe_fn=lambda c: probe_cpu(cfg.model, per_rank, c)).to_dict()
    if state.num_processes > 1:
        broadcast_object_list(choice, from_process=0)
    resolved = Choice(**choice[0])
    cfg = replace(cfg, train=replace(cfg.train, mixed_precision=resolved.mixed_precision,
                                     channels_last=resolved.channels_last))
    accelerator = accelerate.Accelerator(cpu=device == "cpu", mixed_precision=resolved.mixed_precision,
                              step_scheduler_with_optimizer=False, log_with=log_with)
    accelerator.print(f"arcdist: {device}, {resolved.label()} ({resolved.reason})")
    return cfg, accelerator, resolved
