#!/usr/bin/env bash
# The post's whole study on one GPU within one device lease: a probe that sizes the run, then the
# post's 12 variants x 100 epochs with the grid runner, the report, and the results and final weights in $OUT.
#
#   PROBE=1 bash bench/gpu-lease.sh    # about 3 min: the environment, bench/throughput.py --grid-estimate before
#                                      # (flags read every step, no compile) and after (this script's settings),
#                                      # then 2 short epochs of the whole grid at once, with and without CUDA MPS;
#                                      # prints the main run's settings (also left in $RUNS/probe-choice.env)
#   bash bench/gpu-lease.sh            # main, at most GRID_S (default 480) s of grid: 12 variants x 100 epochs,
#                                      # SEEDS (default 0; the probe suggests how many fit), the report, $OUT
#   FETCH=1 bash bench/gpu-lease.sh    # the next 4 parts of the final weights (same machine, still warm); FETCH=2 ...
#   TINY=1 PYTHON=.venv/bin/python bash bench/gpu-lease.sh   # on a CPU: every phase at toy size (2 variants,
#                                      # 1-2 epochs of 512 images), to show the script runs end to end
#
# With the device tool (the MNIST files travel in the ignored folder .gpu-data, named in `carry`):
#   mkdir -p .gpu-data/MNIST/raw && cp $ARCDIST_DATA_DIR/MNIST/raw/*.gz .gpu-data/MNIST/raw/
#   run(command="PROBE=1 bash bench/gpu-lease.sh", carry=[".gpu-data"], timeout_s=300)
#   run(command="MPS=1 SEEDS=0 bash bench/gpu-lease.sh", carry=[".gpu-data"], timeout_s=590)   # as the probe says
#
# Settings (environment): SYNC_EVERY (train.sync_every, default 0 = 50 on a GPU), COMPILE (train.compile, off),
# FUSED (train.fused_optim, false), EVAL_BATCH (train.eval_batch_size, 10000), MPS (0/1), SEEDS (0),
# JOBS_PER_GPU (default: every run at once), EPOCHS (100), GRID_S (480), VARIANTS (the post's 12), RUNS (run
# folders: /dev/shm/arcdist-runs where it has room, else runs/), DATA_DIR, PYTHON (python3).
# Nothing here was run on a GPU yet: TINY=1 on a CPU is all that has been tried.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled WANDB_SILENT=true PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-$ROOT/runs/gpu-lease-out}
mkdir -p "$OUT"
LOG="$OUT/lease.log"
exec > >(tee -a "$LOG") 2>&1

if [ -z "${DATA_DIR:-}" ]; then
    if [ -d "$ROOT/.gpu-data/MNIST/raw" ]; then DATA_DIR=$ROOT/.gpu-data
    else DATA_DIR=${ARCDIST_DATA_DIR:-$ROOT/../shared/data}; fi
fi
if [ -z "${RUNS:-}" ]; then
    RUNS=$ROOT/runs
    if [ "${TINY:-0}" != 1 ] && [ -w /dev/shm ] && [ "$(df -Pk /dev/shm | awk 'NR==2 {print $4}')" -gt 20000000 ]; then
        RUNS=/dev/shm/arcdist-runs  # checkpoints every epoch (V1: 180 MB each): memory, not the disk
    fi
fi
mkdir -p "$RUNS"
[ -f "$RUNS/probe-choice.env" ] && [ -z "${PROBE:-}" ] && . "$RUNS/probe-choice.env"  # a warm machine's probe

TINY=${TINY:-0}
if [ "$TINY" = 1 ]; then
    VARIANTS=${VARIANTS:-V2,V2.1} EPOCHS=${EPOCHS:-1} GRID_S=${GRID_S:-600} EST=(--grid-variants "$VARIANTS" --steps 2)
    LIMIT=(--limit-train 512 --limit-test 256) PROBE_LIMIT=(--limit-train 512 --limit-test 256) PARTS_MAIN=1 PARTS_FETCH=1
    SPLIT=200k
else
    EST=(--steps 60)
    LIMIT=() PROBE_LIMIT=(--limit-train 10240 --limit-test 2000) PARTS_MAIN=3 PARTS_FETCH=4 SPLIT=16m
fi
VARIANTS=${VARIANTS:-V0,V1,V1.1,V1.1.2,V1.1.3,V1.1.4,V1.2,V1.2.2,V1.2.3,V1.2.4,V2,V2.1}
SEEDS=${SEEDS:-0} EPOCHS=${EPOCHS:-100} GRID_S=${GRID_S:-480} MPS=${MPS:-0}
SYNC_EVERY=${SYNC_EVERY:-0} COMPILE=${COMPILE:-off} FUSED=${FUSED:-false} EVAL_BATCH=${EVAL_BATCH:-10000}
GRID_ID=${GRID_ID:-post-gpu}
n_runs() { echo $(( $(tr ',' '\n' <<<"$VARIANTS" | grep -c .) * $(tr ',' '\n' <<<"$SEEDS" | grep -c .) )); }
JOBS_PER_GPU=${JOBS_PER_GPU:-$(n_runs)}
SETS=(--set "train.sync_every=$SYNC_EVERY" --set "train.compile=$COMPILE" --set "train.fused_optim=$FUSED"
      --set "train.eval_batch_size=$EVAL_BATCH" --set train.keep_checkpoints=1)
have_gpu() { command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; }

environment() {
    echo "== environment $(date -u +%FT%TZ)"
    uname -a; nproc; free -g | head -2; df -h "$RUNS" "$ROOT" | sed 1d
    have_gpu && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    "$PY" - <<'EOF'
import torch, accelerate, sys
print("python", sys.version.split()[0], "torch", torch.__version__, "accelerate", accelerate.__version__,
      "cuda", torch.version.cuda, "device", torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")
EOF
    echo "mps control: $(command -v nvidia-cuda-mps-control || echo absent); data $DATA_DIR; runs $RUNS"
    echo "settings: SYNC_EVERY=$SYNC_EVERY COMPILE=$COMPILE FUSED=$FUSED EVAL_BATCH=$EVAL_BATCH MPS=$MPS SEEDS=$SEEDS" \
         "JOBS_PER_GPU=$JOBS_PER_GPU EPOCHS=$EPOCHS GRID_S=$GRID_S VARIANTS=$VARIANTS"
}

mps_start() {
    export CUDA_MPS_PIPE_DIRECTORY=/tmp/arcdist-mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/arcdist-mps-log
    mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
    if command -v nvidia-cuda-mps-control >/dev/null && nvidia-cuda-mps-control -d; then
        echo "MPS: control daemon started"; return 0
    fi
    echo "MPS: could not start (no nvidia-cuda-mps-control, or it failed): runs share the GPU by time slices"
    return 1
}

mps_stop() {
    if [ -n "${CUDA_MPS_PIPE_DIRECTORY:-}" ]; then
        echo "MPS servers: $(echo get_server_list | nvidia-cuda-mps-control 2>&1 | tr '\n' ' ')"
        echo quit | nvidia-cuda-mps-control; sleep 1
        unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
    fi
}

estimate() {  # LABEL, then --set arguments
    local label=$1; shift
    echo "== grid estimate, $label: bench/throughput.py --grid-estimate $*"
    "$PY" bench/throughput.py --data-dir "$DATA_DIR" --modes none --grid-estimate "${EST[@]}" "$@" \
        | tee "$OUT/estimate-$label.txt"
}

grid() {  # GRID_ID EPOCHS SECONDS, then train.py arguments; the grid stops (Ctrl-C: checkpoints) after SECONDS
    local id=$1 epochs=$2 seconds=$3; shift 3
    local t0=$SECONDS
    timeout --signal=INT --kill-after=90 "$seconds" "$PY" -m arcdist.grid --grid-id "$id" --variants "$VARIANTS" \
        --seeds "$SEEDS" --epochs "$epochs" --out "$RUNS" --data-dir "$DATA_DIR" --jobs-per-gpu "$JOBS_PER_GPU" \
        --wandb disabled "${SETS[@]}" -- --plot-every 1000 "$@"
    local rc=$?
    echo "grid $id: exit $rc, wall $((SECONDS - t0)) s$( [ $rc = 130 ] && echo ' (stopped at the time limit)')"
}

rates() {  # GRID_DIR [EPOCH]: images/s of every run in that epoch (default: the mean over its epochs)
    "$PY" - "$@" <<'EOF'
import json, sys
from pathlib import Path
root, epoch = Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else None
jobs = json.loads((root / "grid.json").read_text())["jobs"]
worst = 0.0
for j in jobs:
    rows = [json.loads(l) for l in (Path(j["run_dir"]) / "metrics.jsonl").read_text().splitlines()] \
        if (Path(j["run_dir"]) / "metrics.jsonl").exists() else []
    rows = [r for r in rows if "images_per_s" in r and (epoch is None or r["epoch"] == epoch)]
    rate = sum(r["images_per_s"] for r in rows) / len(rows) if rows else float("nan")
    hundred = 100 * 60000 / rate if rows else float("inf")
    worst = max(worst, hundred)
    print(f"  {Path(j['run_dir']).name:14s} {j['status']:11s} epochs {len(rows):3d}  {rate:9.0f} images/s"
          f"  -> 100 epochs of 60,000 at this rate: {hundred:7.0f} s  final acc {j.get('final_accuracy')}")
print(f"  slowest run at these rates: 100 epochs in {worst:.0f} s (all runs at once, full contention)")
print(f"WORST_S={worst:.0f}")
EOF
}

probe() {
    environment
    estimate before --set train.sync_every=1 --set train.compile=off --set train.fused_optim=false
    estimate after --set "train.sync_every=$SYNC_EVERY" --set "train.compile=$COMPILE" --set "train.fused_optim=$FUSED"
    local best_s=999999 best_mps=0 modes="0" worst
    have_gpu && modes="0 1"
    for mps in $modes; do
        echo "== probe: the whole grid at once, 2 short epochs, MPS=$mps"
        rm -rf "$RUNS/probe-mps$mps"
        if [ "$mps" = 1 ]; then mps_start || continue; fi
        grid "probe-mps$mps" 2 150 "${PROBE_LIMIT[@]}"
        [ "$mps" = 1 ] && mps_stop
        worst=$(rates "$RUNS/probe-mps$mps" 2 | tee /dev/stderr | sed -n 's/^WORST_S=//p')
        if [ -n "$worst" ] && [ "$worst" -lt "$best_s" ]; then best_s=$worst best_mps=$mps; fi
    done
    # seeds side by side cost about as much GPU as one after another: as many as the slowest run's time allows
    local seeds=$(( GRID_S * 9 / 10 / (best_s > 0 ? best_s : 1) ))
    [ "$seeds" -lt 1 ] && seeds=1
    [ "$seeds" -gt 3 ] && seeds=3
    local list=$(seq -s, 0 $((seeds - 1)))
    echo "== probe's choice: MPS=$best_mps SEEDS=$list (slowest run ~${best_s} s for 100 epochs at full contention;" \
         "under ${GRID_S} s the main run may not finish: it stops with checkpoints and the report shows what ran)"
    printf 'MPS=${MPS:-%s}\nSEEDS=${SEEDS:-%s}\n' "$best_mps" "$list" >"$RUNS/probe-choice.env"
    cp "$RUNS/probe-choice.env" "$OUT/"
    echo "next: MPS=$best_mps SEEDS=$list bash bench/gpu-lease.sh"
}

pack() {  # $OUT may take 8 files of at most 16 MiB, 64 MiB in all: lease.log, results, as many weight parts as fit
    local dir="$RUNS/$GRID_ID"
    echo "== pack: results and final weights"
    cp "$OUT/rates.txt" "$dir/" 2>/dev/null
    "$PY" - "$RUNS" "$GRID_ID" "$OUT/results.tgz" <<'EOF'
import re, sys, tarfile
from pathlib import Path
runs, grid, out = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
epoch = re.compile(r"features/(test|train)-epoch-(\d{4})\.npz$")
last = {}
for p in (runs / grid).rglob("features/*-epoch-*.npz"):
    last[p.parent.relative_to(runs)] = max(last.get(p.parent.relative_to(runs), 0), int(epoch.search(str(p)).group(2)))

def keep(info):  # no checkpoints (the weights travel apart); per-epoch features of epochs 1, 25, 50, ... and the last
    if "/checkpoints" in info.name:
        return None
    m = epoch.search(info.name)
    if m and not (int(m.group(2)) in (1, last.get(Path(info.name).parent, 0)) or int(m.group(2)) % 25 == 0):
        return None
    return info

with tarfile.open(out, "w:gz") as tar:
    tar.add(runs / grid, arcname=grid, filter=keep)
EOF
    local results=$(stat -c %s "$OUT/results.tgz") mib=$((1024 * 1024))
    if [ "$results" -gt $((16 * mib)) ]; then
        (cd "$OUT" && split -b 16m -d -a 2 results.tgz results.tgz.part- && rm results.tgz)
        echo "results: $((results / mib)) MiB in parts of 16 MiB (rejoin: cat results.tgz.part-* > results.tgz)"
    fi
    local list=() files=() p f run
    for run in "$dir"/*/; do
        p=$(ls -d "$run"checkpoints/epoch-* 2>/dev/null | tail -1)
        [ -n "$p" ] && list+=("${p#$RUNS/}")
    done
    rm -f "$RUNS"/weights.part-*
    [ ${#list[@]} -gt 0 ] || return 0
    for p in "${list[@]}"; do
        for f in model.safetensors model_1.safetensors trainer.json; do [ -f "$RUNS/$p/$f" ] && files+=("$p/$f"); done
    done
    tar cf "$RUNS/weights.tar" -C "$RUNS" "${files[@]}"
    (cd "$RUNS" && sha256sum weights.tar >weights.sha256 && split -b "$SPLIT" -d -a 2 weights.tar weights.part-)
    cp "$RUNS/weights.sha256" "$OUT/"
    local used=$(du -cb "$OUT"/results.tgz* | tail -1 | cut -f1) count=$(ls "$OUT"/results.tgz* | wc -l)
    local fit=$(( (60 * mib - used) / (16 * mib) ))
    [ "$fit" -gt $((6 - count)) ] && fit=$((6 - count))  # 8 files: lease.log, weights.sha256, results, parts
    [ "$TINY" = 1 ] && fit=$PARTS_MAIN
    echo "PARTS_MAIN=$fit" >"$RUNS/parts.env"
    echo "weights: ${#list[@]} runs' last checkpoints, $(du -h "$RUNS/weights.tar" | cut -f1), $(ls "$RUNS"/weights.part-* | wc -l)" \
         "parts of $SPLIT; this call returns parts 00-$(printf %02d $((fit - 1))), FETCH=k the next $PARTS_FETCH each;" \
         "rejoin: cat weights.part-* > weights.tar && sha256sum -c weights.sha256"
    for i in $(seq 0 $((fit - 1))); do
        f="$RUNS/weights.part-$(printf %02d "$i")"
        [ -f "$f" ] && cp "$f" "$OUT/"
    done
}

fetch() {
    local k=$1 i
    [ -f "$RUNS/parts.env" ] && . "$RUNS/parts.env"
    local first=$((PARTS_MAIN + (k - 1) * PARTS_FETCH))
    for i in $(seq "$first" $((first + PARTS_FETCH - 1))); do
        local f="$RUNS/weights.part-$(printf %02d "$i")"
        [ -f "$f" ] && cp "$f" "$OUT/" && echo "fetched $(basename "$f")"
    done
    ls "$OUT"
}

main() {
    environment
    [ "$MPS" = 1 ] && { mps_start || MPS=0; }
    echo "== main: $VARIANTS x seeds $SEEDS x $EPOCHS epochs, $JOBS_PER_GPU jobs per GPU, at most $GRID_S s"
    grid "$GRID_ID" "$EPOCHS" "$GRID_S" "${LIMIT[@]}"
    [ "$MPS" = 1 ] && mps_stop
    rates "$RUNS/$GRID_ID" >"$OUT/rates.txt"; cat "$OUT/rates.txt"
    echo "== report"
    "$PY" -m arcdist.report "$RUNS/$GRID_ID" | tail -40
    pack
    rm -f "$OUT/rates.txt"  # (in results.tgz)
    echo "== \$OUT: $(ls "$OUT" | tr '\n' ' ')"
}

if [ -n "${FETCH:-}" ]; then
    fetch "$FETCH"
elif [ "${PROBE:-0}" = 1 ]; then
    probe
elif [ "$TINY" = 1 ]; then  # every phase, at toy size
    probe && . "$RUNS/probe-choice.env" && main && fetch 1
else
    main
fi
