# Shell shared by slurm/*.sbatch and launch/*.sh: source it from the repository root (`. slurm/lib.sh`).

# PYTHON: as given, else the repository's .venv/bin/python if present, else python3
arcdist_python() {
  if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=$PWD/.venv/bin/python; else PYTHON=python3; fi
  fi
}

# the status in RUN_DIR/summary.json (finished, diverged, preempted, ...), or nothing without one
arcdist_run_status() {
  grep -o '"status": *"[a-z]*"' "$1/summary.json" 2>/dev/null | head -n1 | sed 's/.*"\([a-z]*\)"$/\1/'
}

# arcdist_wait PID [HOOK]: wait until PID exits and set RC to its status. `wait` returns early (status > 128)
# whenever a trapped signal arrives (the trap sets GOT_SIGNAL): wait again. HOOK runs before each wait.
arcdist_wait() {
  local r
  RC=0
  while :; do
    GOT_SIGNAL=""
    if [ -n "${2:-}" ]; then "$2"; fi
    wait "$1"
    r=$?
    [ "$r" = 127 ] && [ ! -e "/proc/$1" ] && break  # already collected: RC holds its status
    RC=$r
    [ -z "$GOT_SIGNAL" ] && break                   # the child exited: RC is its status
  done
}
