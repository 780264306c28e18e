#!/bin/bash
# The main command, timed as a user types it, one run at a time on an otherwise idle machine:
#   results/a8-runs/run.sh avx2 0 1 2 3 4     # ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 (no bf16 units)
#   results/a8-runs/run.sh native 0 1 2       # the CPU as it is
# Each run keeps config.json, metrics.jsonl and summary.json in $DEST/<kind>-s<seed>/ (DEST defaults to
# results/a8-runs) and one line in results/a8-runs/wall-times.txt; VARIANT (default A8) and EXTRA (more flags) too. Needs ARCDIST_DATA_DIR (the real MNIST files); W&B runs offline without credentials, as for a user.
set -euo pipefail
cd "$(dirname "$0")/../.."
kind=$1; shift
out=$(mktemp -d)
DEST=${DEST:-results/a8-runs}; VARIANT=${VARIANT:-A8}
# a fresh probe cache per invocation, as on a new machine: the first run of each invocation pays the probe
export ARCDIST_CACHE_DIR=${ARCDIST_CACHE_DIR:-$out/cache}
echo "# $(date -u +%F\ %H:%M) UTC, commit $(git rev-parse --short HEAD), $VARIANT ${EXTRA:-}, $kind, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) family $(grep -m1 'cpu family' /proc/cpuinfo | cut -d: -f2 | xargs) model $(grep -m1 '^model\s' /proc/cpuinfo | cut -d: -f2 | xargs)" >> results/a8-runs/wall-times.txt
for seed in "$@"; do
  if [ "$kind" = avx2 ]; then export ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2; fi
  start=$(date +%s.%N)
  accelerate launch arcdist/train.py --variant "$VARIANT" ${EXTRA:-} --seed "$seed" --output-dir "$out/$kind-s$seed" >"$out/$kind-s$seed.log" 2>&1
  end=$(date +%s.%N)
  dest=$DEST/$kind-s$seed
  mkdir -p "$dest"
  cp "$out/$kind-s$seed"/{config.json,metrics.jsonl,summary.json} "$dest/"
  cp "$out/$kind-s$seed.log" "$dest/train.log"
  acc=$(python3 -c "import json,sys; print(json.load(open('$dest/summary.json'))['final_accuracy'])")
  echo "$kind seed $seed: $(python3 -c "print(f'{$end - $start:.1f}')") s, final test accuracy $acc" | tee -a results/a8-runs/wall-times.txt
done
