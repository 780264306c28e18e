#!/bin/bash
# One training run on one node or several, launched by torchrun with c10d rendezvous.
#
#   NPROC=4 launch/torchrun.sh --variant V1 --epochs 100                          # one node, 4 GPUs
#   NNODES=2 NPROC=8 HEAD=node1 PORT=29500 launch/torchrun.sh --variant V1       # run on every node
#   NPROC=2 launch/torchrun.sh --cpu --variant V2 --set data.batch_size=64      # 2 CPU processes (gloo)
#
# Several hosts, no Slurm: run the same command on every host, with the same NNODES, HEAD, PORT and RDZV_ID
# (c10d rendezvous: the agent on HEAD serves it; node ranks are assigned there, there is none to set). The
# run folder must be on a file system all hosts share. On the dev cluster (tests/infra/dev-cluster.sh up --nodes 2):
#   tests/infra/dev-cluster.sh on node1 env NNODES=2 NPROC=1 HEAD=node1 PORT=29400 launch/torchrun.sh --cpu --variant V2 &
#   tests/infra/dev-cluster.sh on node2 env NNODES=2 NPROC=1 HEAD=node1 PORT=29400 launch/torchrun.sh --cpu --variant V2
# HEAD must resolve on every host, and each host's own name must resolve to the address the others reach
# it at (gloo binds there; else set GLOO_SOCKET_IFNAME, or NCCL_SOCKET_IFNAME on GPUs). A host that does not
# join within torchrun's rendezvous join timeout (600 s) fails the others' start; once training runs, a
# rank that waits longer than train.collective_timeout_s (600 s) for the others fails with exit status 4.
#
# Arguments go to arcdist/train.py unchanged. Environment:
#   NNODES  nodes taking part, or MIN:MAX for elastic      (default 1)
#   NPROC   processes per node (GPUs per node)             (default: visible GPUs, else 1)
#   HEAD    rendezvous host, the same on every node        (default localhost)
#   PORT    rendezvous port on HEAD, the same everywhere   (default 29500)
#   RDZV_ID rendezvous id, the same on every node          (default $SLURM_JOB_ID or arcdist)
#   MAX_RESTARTS  restarts after a rank dies (default 1)
#   PYTHON  interpreter (default: the repository's .venv/bin/python if present, else python3)
# train.py picks the CPU (gloo) when no GPU is visible or with --cpu; CPU threads per process default
# to the node's cores / NPROC (--set train.threads=N to change).
set -euo pipefail
cd "$(dirname "$0")/.."
. slurm/lib.sh
arcdist_python
if [ -z "${NPROC:-}" ]; then
  NPROC=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
  [ "${NPROC:-0}" -gt 0 ] || NPROC=1
fi
# A failed rank restarts the whole worker group up to MAX_RESTARTS times; train.py then resumes from
# the run folder's last checkpoint. torch 2.14's agent-shared TCP store keeps the dead round's gloo
# addresses, so restarted workers could not connect: one store per round avoids that.
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}
exec "$PYTHON" -m torch.distributed.run --nnodes "${NNODES:-1}" --nproc_per_node "$NPROC" \
  --max-restarts "${MAX_RESTARTS:-1}" \
  --rdzv_backend c10d --rdzv_endpoint "${HEAD:-localhost}:${PORT:-29500}" --rdzv_id "${RDZV_ID:-${SLURM_JOB_ID:-arcdist}}" \
  arcdist/train.py "$@"
