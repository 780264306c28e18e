#!/usr/bin/env bash
# The one-GPU run behind results/README.md's recipe table: arcdist's recipe rows, 3 seeds each, every
# run side by side on the same GPU (small MNIST nets leave most of a GPU idle; the grid shares it).
#
#   bash results/gpu-run.sh DATA_DIR [EPOCHS]     # EPOCHS: override every variant's own (a probe uses 2)
#
# Runs land in runs/gpu-*; then: python -m arcdist.report runs/gpu-mnist (and the others).
# The recorded run (results/README.md) also ran, on its own afterwards:
#   python3 -m arcdist.grid --grid-id gpu-a5-m035 --variants A5 --seeds 0,1,2 --jobs 3 --set head.margin=0.35 \
#       --data-dir DATA_DIR --wandb disabled --out runs -- --plot-every 1000
set -uo pipefail
data=${1:?usage: results/gpu-run.sh DATA_DIR [EPOCHS]}
epochs=${2:+--epochs $2}
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled
common=(--seeds 0,1,2 --data-dir "$data" --wandb disabled --out runs)
after=(-- --plot-every 1000)  # plots of the last epoch only
ring='head.order=(0,6,2,4,3,1,5,7,9,8)'

python3 -m arcdist.grid --grid-id gpu-mnist --variants A4,A5 --jobs 6 $epochs "${common[@]}" "${after[@]}" &
python3 -m arcdist.grid --grid-id gpu-fashion --datasets fashion-mnist --variants A4F,A5F --jobs 6 \
    $epochs "${common[@]}" "${after[@]}" &
python3 -m arcdist.grid --grid-id gpu-fashion-ring --datasets fashion-mnist --variants A4F --jobs 3 \
    --set "$ring" $epochs "${common[@]}" "${after[@]}" &
# Opt-in (not part of the recorded run, which had no time left for it): A3's own recipe, only longer,
# to tell what the new rows add beyond their 40 epochs.
if [ "${ARCDIST_GPU_CONTROL:-0}" = 1 ]; then
    python3 -m arcdist.grid --grid-id gpu-a3-long --variants A3 --jobs 3 \
        --epochs "${2:-40}" "${common[@]}" "${after[@]}" &
fi
wait
