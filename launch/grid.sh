#!/bin/bash
# The variant grid on this machine: `python -m arcdist.grid` from the repository root.
#
#   launch/grid.sh --grid-id study --variants V1.2.2,V2 --seeds 0,1 --epochs 5
#   launch/grid.sh --grid-id study --list
#
# PYTHON picks the interpreter (default: the repository's .venv/bin/python if present, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
. slurm/lib.sh
arcdist_python
exec "$PYTHON" -m arcdist.grid "$@"
