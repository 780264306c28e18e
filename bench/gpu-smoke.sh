#!/usr/bin/env bash
# The GPU smoke run, first on any lent GPU (at most 4 minutes on one H100; installs nothing from the network):
#   1. the `gpu` tests (tests/test_gpu.py: bf16 and fp16 runs with plots, exact resume with deterministic kernels,
#      the explorer and report of a GPU run, two processes on one GPU);
#   2. the main command as a user types it (A8, 6 epochs) on the GPU, W&B offline;
# its log, nvidia-smi, summary.json, metrics.jsonl and plots in $OUT (default runs/gpu-smoke).
#
#   bash bench/gpu-smoke.sh                       # on the GPU machine
#   TINY=1 bash bench/gpu-smoke.sh                # the CPU dry run (tests/test_scripts.py): the same steps, the
#                                                 # gpu tests skipped, the main command as T0 for 1 epoch on 512 images
# With the device tool (MNIST travels in the ignored folder .gpu-data, named in `carry`):
#   mkdir -p .gpu-data/MNIST/raw && cp "$ARCDIST_DATA_DIR"/MNIST/raw/*.gz .gpu-data/MNIST/raw/
#   run(command="bash bench/gpu-smoke.sh", carry=[".gpu-data"], timeout_s=300)   # as bench/gpu-lease.sh
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PY=${PYTHON:-python3}
OUT=${OUT:-$ROOT/runs/gpu-smoke}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/smoke.log") 2>&1
export PYTHONUNBUFFERED=1 WANDB_MODE=offline WANDB_SILENT=true PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if [ -z "${ARCDIST_DATA_DIR:-}" ] && [ -d "$ROOT/.gpu-data/MNIST/raw" ]; then export ARCDIST_DATA_DIR=$ROOT/.gpu-data; fi
: "${ARCDIST_DATA_DIR:?set ARCDIST_DATA_DIR to a folder holding MNIST/raw (or copy it to .gpu-data)}"
status=0
step() { echo "== $(date -u +%H:%M:%S) $*"; }

step "machine"
(nvidia-smi || echo "no nvidia-smi") > "$OUT/nvidia-smi.txt" 2>&1
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" | tee "$OUT/torch.txt"

step "gpu tests"
"$PY" -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider --junitxml "$OUT/gpu-tests.xml" || status=1

step "main command"
if [ -n "${TINY:-}" ]; then
    MAIN=(--variant T0 --epochs 1 --limit-train 512 --limit-test 256 --set data.batch_size=64 --cpu)
else
    MAIN=()
fi
rm -rf "$OUT/main"  # a retry starts the run again
start=$(date +%s)
"$PY" arcdist/train.py "${MAIN[@]}" --no-progress --output-dir "$OUT/main" || status=1
echo "main command: $(( $(date +%s) - start )) s whole"
cp "$OUT/main/summary.json" "$OUT/main/metrics.jsonl" "$OUT/" 2>/dev/null || status=1
step "done (status $status)"
exit $status
