#!/bin/bash
# A Slurm cluster on this machine, for trying slurm/*.sbatch and for tests/test_slurm.py and
# tests/test_multinode.py: one node (this host), or N nodes that are separate hosts on this machine.
#
#   sudo tests/infra/dev-cluster.sh up       # install (apt) if missing, configure, start, wait until the node is idle
#   sudo tests/infra/dev-cluster.sh status   # daemons and node state; exit 0 when the node takes jobs
#   sudo tests/infra/dev-cluster.sh down     # cancel jobs, stop the daemons that `up` started (nothing else)
#
#   sudo tests/infra/dev-cluster.sh up --nodes 2      # nodes node1, node2; prints `export SLURM_CONF=...`
#   sudo tests/infra/dev-cluster.sh status --nodes 2  # exit 0 when every node takes jobs
#   sudo tests/infra/dev-cluster.sh down --nodes 2    # cancel its jobs, stop its daemons, remove its namespaces
#   sudo tests/infra/dev-cluster.sh on node2 CMD...   # run CMD on node2 (its network, hostname and /etc/hosts)
#
# With --nodes N (N >= 2) each slurmd runs in a network namespace of its own (arcdist-multi-nodeI) with
# its own hostname (nodeI, a UTS namespace) and address ($DEV_CLUSTER_NET.(I+1), default 10.77.0.I+1) on a
# veth pair attached to a bridge (arcdist-br0, 10.77.0.1 on this host), and a mount namespace whose
# /etc/hosts names all nodes. slurmctld and a munged of its own run on this host. Jobs run inside their
# node's namespaces, so traffic between ranks on different nodes is real TCP between two addresses.
# All nodes share this machine's CPUs and file system (a "shared file system" for free). That cluster
# lives beside the one-node one (its own slurm.conf in /etc/slurm/arcdist-multi/, slurmctld port 6827,
# munge socket, state, PID and log files under /run, /var/spool, /var/log/slurm/arcdist-multi): clients
# use it with `export SLURM_CONF=/etc/slurm/arcdist-multi/slurm.conf`. Needs root, iproute2, unshare and
# nsenter (util-linux); works in containers that allow network namespaces.
#
# Debian/Ubuntu (tested on Debian 12, Slurm 22.05), as root, no systemd, no cgroups. Idempotent: `up`
# on a running cluster changes nothing unless the generated slurm.conf differs. Daemons are started
# and stopped by PID file only. The node is given its real CPUs/memory (as `slurmd -C` sees them) and,
# when `nvidia-smi -L` lists GPUs, `Gres=gpu:N` so that `--gres=gpu:1` jobs can run.
# Exit status: 0 ok; 1 a daemon or the node did not come up; 3 not root, or Slurm cannot be installed.
# Settings that matter for the grid's requeue path:
#   AuthInfo=cred_expire=10  a requeued job may start again after ~10 s (default 120 s)
#   DefMemPerCPU=1024        otherwise each job gets the node's whole memory and jobs run one at a time
#   MailProg=/bin/true       no mail program in containers
#   bf_interval=1            (several nodes only) a requeued job, held ~cred_expire s, starts within a
#                            second after that instead of at the next 30 s backfill pass
set -uo pipefail

RUN=/run/slurm
CONF=/etc/slurm/slurm.conf
STARTED=$RUN/dev-cluster.started   # names of the daemons this script started (for `down`)
PART=debug
H=$(hostname -s)

die() { echo "dev-cluster: $*" >&2; exit 1; }
cannot_install() { echo "dev-cluster: $*" >&2; exit 3; }  # exit 3: Slurm cannot be installed here
# alive PIDFILE NAME -> true if PIDFILE names a live process whose comm is NAME
alive() { [ -s "$1" ] && local p && p=$(cat "$1") && [ -d "/proc/$p" ] && [ "$(cat "/proc/$p/comm" 2>/dev/null)" = "$2" ]; }
waitfor() { local n=$1 i; shift; for ((i = 0; i < n * 5; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done; return 1; }
mark() { mkdir -p "$RUN"; grep -qx "$1" "$STARTED" 2>/dev/null || echo "$1" >>"$STARTED"; }
node_state() { sinfo -h -N -n "$H" -o %T 2>/dev/null | head -n1; }

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
     && command -v munged >/dev/null; then
    return 0
  fi
  command -v apt-get >/dev/null || cannot_install "Slurm is not installed and there is no apt-get; install slurmctld slurmd slurm-client munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || cannot_install "apt-get update failed"
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null \
    || cannot_install "apt-get install slurmctld slurmd slurm-client munge failed"
}

start_key() {
  if [ ! -s /etc/munge/munge.key ]; then  # the Debian package normally creates it
    install -d -o munge -g munge -m 0700 /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
  fi
  [ -d /var/lib/munge ] || install -d -o munge -g munge -m 0711 /var/lib/munge
  [ -d /var/log/munge ] || install -d -o munge -g munge -m 0700 /var/log/munge
}

start_munge() {
  start_key
  install -d -o munge -g munge -m 0755 /run/munge
  if ! alive /run/munge/munged.pid munged; then
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged || die "munged did not start"
    mark munged
  fi
  waitfor 10 bash -c 'munge -n | unmunge' || die "munged is not working"
}

shared_conf() {  # the slurm.conf lines both clusters share: root daemons, munge, no accounting, fast timeouts
  cat <<CONF
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
MailProg=/bin/true
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
ReturnToService=2
SlurmdPort=6818
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=5
Waittime=0
CONF
}

install_conf() {  # install_conf NEW DEST: DEST becomes NEW; prints 1 when it changed, else 0
  if cmp -s "$1" "$2"; then
    rm -f "$1"
    echo 0
  else
    install -m 0644 "$1" "$2"
    rm -f "$1"
    echo 1
  fi
}

write_conf() {  # prints 1 when slurm.conf changed
  local node mem gpus new gres_line="" gres_types=""
  node=$(slurmd -C | head -n1)  # NodeName=<h> CPUs=.. Boards=.. ... RealMemory=..
  mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node")
  node=$(sed "s/RealMemory=[0-9]*/RealMemory=$((mem * 95 / 100))/" <<<"$node")
  gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
  if [ "${gpus:-0}" -gt 0 ]; then
    gres_types="GresTypes=gpu"
    gres_line="Gres=gpu:$gpus"
    printf 'NodeName=%s Name=gpu File=/dev/nvidia[0-%d]\n' "$H" $((gpus - 1)) >/etc/slurm/gres.conf
  fi
  mkdir -p /etc/slurm /var/log/slurm /var/spool/slurmctld /var/spool/slurmd "$RUN"
  new=$(mktemp)
  {
    echo "# generated by arcdist tests/infra/dev-cluster.sh: one node, for development and tests"
    cat <<CONF
ClusterName=local
SlurmctldHost=${H}(127.0.0.1)
AuthInfo=cred_expire=10
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldPort=6817
${gres_types}
${node} ${gres_line} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=${PART} Nodes=${H} Default=YES MaxTime=INFINITE State=UP
CONF
    shared_conf
  } >"$new"
  install_conf "$new" "$CONF"
}

stop_pidfile() {  # stop_pidfile PIDFILE NAME: the process PIDFILE names, if it is a live NAME: TERM, then KILL
  local p i
  if alive "$1" "$2"; then
    p=$(cat "$1")
    kill "$p"
    for ((i = 0; i < 100; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$p" 2>/dev/null && kill -9 "$p"
    echo "stopped $2 ($p)"
  fi
  rm -f "$1"
}

stop_daemon() {  # stop_daemon NAME: a daemon of the one-node cluster, by its PID file
  case "$1" in munged) stop_pidfile /run/munge/munged.pid munged ;; *) stop_pidfile "$RUN/$1.pid" "$1" ;; esac
}

up() {
  [ "$(id -u)" = 0 ] || cannot_install "must run as root"
  install_packages
  start_munge
  local changed d
  changed=$(write_conf) || die "could not write $CONF"
  if [ "$changed" = 1 ]; then  # restart running daemons so that they read the new config
    for d in slurmd slurmctld; do
      alive "$RUN/$d.pid" "$d" && stop_daemon "$d" >/dev/null
    done
  fi
  if ! alive "$RUN/slurmctld.pid" slurmctld; then
    rm -f "$RUN/slurmctld.pid"
    slurmctld || die "slurmctld did not start; see /var/log/slurm/slurmctld.log"
    mark slurmctld
  fi
  waitfor 30 bash -c 'scontrol ping | grep -q "is UP"' || die "slurmctld not up; see /var/log/slurm/slurmctld.log"
  if ! alive "$RUN/slurmd.pid" slurmd; then
    rm -f "$RUN/slurmd.pid"
    slurmd || die "slurmd did not start; see /var/log/slurm/slurmd.log"
    mark slurmd
  fi
  local i st=""
  for ((i = 0; i < 120; i++)); do
    st=$(node_state)
    case "$st" in
      idle* | mixed* | allocated* | completing*) sinfo; return 0 ;;
      down* | drain* | fail*) scontrol update nodename="$H" state=resume 2>/dev/null || true ;;
    esac
    sleep 0.5
  done
  scontrol show node "$H" >&2
  die "node $H not idle (state: ${st:-?}); see /var/log/slurm/slurmd.log"
}

down() {
  [ "$(id -u)" = 0 ] || die "must run as root"
  local started="" ids i d
  [ -f "$STARTED" ] && started=$(cat "$STARTED")
  if grep -qx slurmctld <<<"$started" && alive "$RUN/slurmctld.pid" slurmctld; then
    ids=$(squeue -h -o %A 2>/dev/null)
    if [ -n "$ids" ]; then
      scancel $ids
      for ((i = 0; i < 50; i++)); do [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.2; done
    fi
  fi
  for d in slurmd slurmctld munged; do
    grep -qx "$d" <<<"$started" && stop_daemon "$d"
  done
  rm -f "$STARTED"
  return 0
}

status() {
  local d pidfile ok=0
  for d in munged slurmctld slurmd; do
    case "$d" in munged) pidfile=/run/munge/munged.pid ;; *) pidfile=$RUN/$d.pid ;; esac
    if alive "$pidfile" "$d"; then echo "$d: running (pid $(cat "$pidfile"))"; else echo "$d: stopped"; ok=1; fi
  done
  if [ "$ok" = 0 ]; then
    local st
    st=$(node_state)
    echo "node $H: ${st:-unknown}"
    case "$st" in idle* | mixed* | allocated* | completing*) ;; *) ok=1 ;; esac
    squeue 2>/dev/null
  fi
  return $ok
}

# --- several nodes: one network namespace (own hostname, own address on a bridge) per slurmd -------------
# A separate cluster beside the one-node one: its own slurm.conf, ports, munged, state and PID files, so
# that either can run (and be taken down) without touching the other. Clients pick it with SLURM_CONF.
M_NAME=arcdist-multi
M_ETC=/etc/slurm/$M_NAME
M_CONF=$M_ETC/slurm.conf
M_RUN=/run/$M_NAME
M_SOCK=$M_RUN/munge/munge.socket.2
M_STARTED=$M_RUN/dev-cluster.started
M_SPOOL=/var/spool/$M_NAME
M_LOG=/var/log/slurm/$M_NAME
M_NET=${DEV_CLUSTER_NET:-10.77.0}   # the bridge is $M_NET.1 (this host, slurmctld), node i is $M_NET.(i+1)
M_BRIDGE=arcdist-br0
M_CTLD_PORT=6827                    # the one-node cluster's slurmctld has 6817 on this host
M_NODE_PREFIX=node

m_nodes() { local i; for ((i = 1; i <= $1; i++)); do echo "$M_NODE_PREFIX$i"; done; }
m_ns() { echo "$M_NAME-$1"; }                      # network namespace of node $1
m_ip() { echo "$M_NET.$((${1#"$M_NODE_PREFIX"} + 1))"; }
m_mark() { mkdir -p "$M_RUN"; grep -qx "$1" "$M_STARTED" 2>/dev/null || echo "$1" >>"$M_STARTED"; }
m_count() { local c; c=$(grep -c "^NodeName=$M_NODE_PREFIX" "$M_CONF" 2>/dev/null); echo "${c:-0}"; }
msinfo() { SLURM_CONF=$M_CONF sinfo "$@"; }

m_on() {  # m_on NODE CMD...: run CMD on NODE: its network namespace, its hostname (a UTS namespace), and a
  # mount namespace where /etc/hosts names every node (not `ip netns exec`: it remounts /sys without the
  # cgroup mounts slurmd wants)
  local node=$1 ns
  shift
  ns=$(m_ns "$node")
  [ -e "/run/netns/$ns" ] || die "no node $node (is the cluster up? tests/infra/dev-cluster.sh up --nodes N)"
  nsenter --net="/run/netns/$ns" unshare --uts --mount --propagation private /bin/sh -c \
    'mount --bind "$1" /etc/hosts && hostname "$2" && shift 2 && exec "$@"' sh "/etc/netns/$ns/hosts" "$node" "$@"
}

m_munge() {  # a munged of its own (its socket in $M_RUN): the one-node cluster's `down` cannot stop it
  start_key
  install -d -o munge -g munge -m 0755 "$M_RUN/munge"
  if ! alive "$M_RUN/munge/munged.pid" munged; then
    rm -f "$M_RUN/munge/munged.pid"
    runuser -u munge -- /usr/sbin/munged --num-threads=10 --socket="$M_SOCK" --pid-file="$M_RUN/munge/munged.pid" \
      --log-file="/var/log/munge/$M_NAME.log" --seed-file="/var/lib/munge/$M_NAME.seed" \
      || die "munged ($M_SOCK) did not start; see /var/log/munge/$M_NAME.log"
    m_mark munged
  fi
  waitfor 10 bash -c "munge -S '$M_SOCK' -n | unmunge -S '$M_SOCK'" || die "munged ($M_SOCK) is not working"
}

m_network() {  # m_network N: bridge on this host, per node a namespace with a veth on the bridge
  local node ns i hosts
  if ! ip link show "$M_BRIDGE" >/dev/null 2>&1; then
    ip link add "$M_BRIDGE" type bridge || die "cannot create bridge $M_BRIDGE (network namespaces need root and CAP_NET_ADMIN)"
    m_mark "bridge"
  fi
  ip addr show dev "$M_BRIDGE" | grep -q "inet $M_NET.1/" || ip addr add "$M_NET.1/24" dev "$M_BRIDGE"
  ip link set "$M_BRIDGE" up
  hosts=$(printf '127.0.0.1 localhost\n%s.1 %s\n' "$M_NET" "$H"; for node in $(m_nodes "$1"); do echo "$(m_ip "$node") $node"; done)
  for node in $(m_nodes "$1"); do
    ns=$(m_ns "$node")
    # `ip netns exec` bind-mounts /etc/netns/NS/hosts over /etc/hosts: nodes resolve each other by name
    mkdir -p "/etc/netns/$ns"
    echo "$hosts" >"/etc/netns/$ns/hosts"
    if ! ip netns list | grep -qw "^$ns"; then
      ip netns add "$ns" || die "ip netns add $ns failed"
      i=${node#"$M_NODE_PREFIX"}
      ip link add "arcv$i" type veth peer name eth0 netns "$ns" || die "cannot create a veth pair for $node"
      ip link set "arcv$i" master "$M_BRIDGE" up
      ip -n "$ns" addr add "$(m_ip "$node")/24" dev eth0
      ip -n "$ns" link set eth0 up
      ip -n "$ns" link set lo up
      m_mark "netns $ns"
    fi
  done
}

m_write_conf() {  # m_write_conf N; prints 1 when slurm.conf changed
  local n=$1 node hw mem new
  hw=$(slurmd -C | head -n1)  # NodeName=<h> CPUs=.. Boards=.. ... RealMemory=..
  mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
  hw=$(sed -e "s/RealMemory=[0-9]*/RealMemory=$((mem * 90 / 100 / n))/" -e 's/^NodeName=[^ ]* //' \
         -e 's/ *UpTime=.*//' <<<"$hw")
  mkdir -p "$M_ETC" "$M_LOG" "$M_SPOOL/ctld" "$M_RUN"
  new=$(mktemp)
  {
    echo "# generated by arcdist tests/infra/dev-cluster.sh up --nodes $n: $n nodes, each a network namespace on this machine"
    cat <<CONF
ClusterName=arcdist-multi
SlurmctldHost=${H}($M_NET.1)
AuthInfo=socket=$M_SOCK,cred_expire=10
StateSaveLocation=$M_SPOOL/ctld
SlurmdSpoolDir=$M_SPOOL/slurmd-%n
SlurmctldPidFile=$M_RUN/slurmctld.pid
SlurmdPidFile=$M_RUN/slurmd-%n.pid
SlurmctldLogFile=$M_LOG/slurmctld.log
SlurmdLogFile=$M_LOG/slurmd-%n.log
SlurmctldPort=$M_CTLD_PORT
CONF
    for node in $(m_nodes "$n"); do
      echo "NodeName=$node NodeAddr=$(m_ip "$node") $hw State=UNKNOWN"
    done
    echo "PartitionName=$PART Nodes=$M_NODE_PREFIX[1-$n] Default=YES MaxTime=INFINITE State=UP"
    shared_conf
  } >"$new"
  install_conf "$new" "$M_CONF"
}

m_up() {
  local n=$1 changed node ns i st idle
  [ "$(id -u)" = 0 ] || cannot_install "must run as root"
  [ "$n" -ge 2 ] 2>/dev/null || { echo "dev-cluster: --nodes takes a number >= 2 (without it: one node)" >&2; exit 2; }
  command -v ip >/dev/null && command -v unshare >/dev/null || cannot_install "needs ip (iproute2) and unshare (util-linux)"
  install_packages
  # a cluster of another size: take it down first (its namespaces and daemons)
  if [ -f "$M_CONF" ] && [ "$(m_count)" != "$n" ] && [ -f "$M_STARTED" ]; then m_down >/dev/null; fi
  m_network "$n"
  m_munge
  changed=$(m_write_conf "$n") || die "could not write $M_CONF"
  if [ "$changed" = 1 ]; then  # restart running daemons so that they read the new config
    for node in $(m_nodes "$n"); do stop_pidfile "$M_RUN/slurmd-$node.pid" slurmd >/dev/null; done
    stop_pidfile "$M_RUN/slurmctld.pid" slurmctld >/dev/null
  fi
  if ! alive "$M_RUN/slurmctld.pid" slurmctld; then
    rm -f "$M_RUN/slurmctld.pid"
    slurmctld -f "$M_CONF" || die "slurmctld did not start; see $M_LOG/slurmctld.log"
    m_mark slurmctld
  fi
  waitfor 30 bash -c "SLURM_CONF='$M_CONF' scontrol ping | grep -q 'is UP'" || die "slurmctld not up; see $M_LOG/slurmctld.log"
  for node in $(m_nodes "$n"); do
    alive "$M_RUN/slurmd-$node.pid" slurmd && continue
    rm -f "$M_RUN/slurmd-$node.pid"
    mkdir -p "$M_SPOOL/slurmd-$node"
    # on the node (see m_on); job steps are slurmd's children and stay there: their TCP between nodes
    # crosses the veths and the bridge
    m_on "$node" slurmd -f "$M_CONF" -N "$node" \
      || die "slurmd $node did not start; see $M_LOG/slurmd-$node.log"
    m_mark "slurmd $node"
  done
  for ((i = 0; i < 120; i++)); do
    idle=0
    for node in $(m_nodes "$n"); do
      st=$(msinfo -h -N -n "$node" -o %T 2>/dev/null | head -n1)
      case "$st" in
        idle* | mixed* | allocated* | completing*) idle=$((idle + 1)) ;;
        down* | drain* | fail*) SLURM_CONF=$M_CONF scontrol update nodename="$node" state=resume 2>/dev/null || true ;;
      esac
    done
    if [ "$idle" = "$n" ]; then
      msinfo
      echo "dev-cluster: $n nodes up; use this cluster with: export SLURM_CONF=$M_CONF"
      return 0
    fi
    sleep 0.5
  done
  SLURM_CONF=$M_CONF scontrol show nodes >&2
  die "not all $n nodes idle; see $M_LOG/slurmd-*.log"
}

m_down() {
  [ "$(id -u)" = 0 ] || die "must run as root"
  local started="" ids i node ns p
  [ -f "$M_STARTED" ] && started=$(cat "$M_STARTED")
  if grep -qx slurmctld <<<"$started" && alive "$M_RUN/slurmctld.pid" slurmctld; then
    ids=$(SLURM_CONF=$M_CONF squeue -h -o %A 2>/dev/null)
    if [ -n "$ids" ]; then
      SLURM_CONF=$M_CONF scancel $ids
      for ((i = 0; i < 50; i++)); do [ -z "$(SLURM_CONF=$M_CONF squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.2; done
    fi
  fi
  for node in $(sed -n 's/^slurmd //p' <<<"$started"); do
    stop_pidfile "$M_RUN/slurmd-$node.pid" slurmd
  done
  grep -qx slurmctld <<<"$started" && stop_pidfile "$M_RUN/slurmctld.pid" slurmctld
  grep -qx munged <<<"$started" && stop_pidfile "$M_RUN/munge/munged.pid" munged
  for ns in $(sed -n 's/^netns //p' <<<"$started"); do
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done  # leftovers of jobs
    ip netns del "$ns" 2>/dev/null
    rm -rf "/etc/netns/$ns"
    node=${ns#"$M_NAME-"}
    ip link del "arcv${node#"$M_NODE_PREFIX"}" 2>/dev/null  # (a deleted namespace may leave its peer behind)
    echo "removed network namespace $ns"
  done
  grep -qx bridge <<<"$started" && ip link del "$M_BRIDGE" 2>/dev/null && echo "removed bridge $M_BRIDGE"
  rm -f "$M_STARTED"
  return 0
}

m_status() {
  local n node ok=0 st
  n=$(m_count)
  [ "$n" -ge 2 ] || { echo "no multi-node cluster configured ($M_CONF)"; return 1; }
  if alive "$M_RUN/munge/munged.pid" munged; then echo "munged: running"; else echo "munged: stopped"; ok=1; fi
  if alive "$M_RUN/slurmctld.pid" slurmctld; then echo "slurmctld: running"; else echo "slurmctld: stopped"; ok=1; fi
  for node in $(m_nodes "$n"); do
    if alive "$M_RUN/slurmd-$node.pid" slurmd; then
      st=$(msinfo -h -N -n "$node" -o %T 2>/dev/null | head -n1)
      echo "slurmd $node ($(m_ip "$node"), netns $(m_ns "$node")): running, ${st:-unknown}"
      case "$st" in idle* | mixed* | allocated* | completing*) ;; *) ok=1 ;; esac
    else
      echo "slurmd $node: stopped"; ok=1
    fi
  done
  [ "$ok" = 0 ] && echo "export SLURM_CONF=$M_CONF"
  return $ok
}

if [ "${1:-}" = on ]; then  # on NODE CMD...: run CMD on a node of the multi-node cluster
  [ $# -ge 3 ] || { echo "usage: $0 on NODE CMD [ARG...]" >&2; exit 2; }
  shift
  m_on "$@"
  exit $?
fi
NODES=1
CMD=${1:-}
shift || true
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) NODES=${2:-}; shift 2 || { echo "dev-cluster: --nodes needs a number" >&2; exit 2; } ;;
    --nodes=*) NODES=${1#--nodes=}; shift ;;
    *) echo "usage: $0 up|down|status [--nodes N]" >&2; exit 2 ;;
  esac
done
[[ "$NODES" =~ ^[0-9]+$ ]] && [ "$NODES" -ge 1 ] || { echo "dev-cluster: --nodes takes a number >= 1" >&2; exit 2; }
if [ "$NODES" = 1 ]; then
  case "$CMD" in
    up) up ;;
    down) down ;;
    status) status ;;
    *) echo "usage: $0 up|down|status [--nodes N]" >&2; exit 2 ;;
  esac
else
  case "$CMD" in
    up) m_up "$NODES" ;;
    down) m_down ;;
    status) m_status ;;
    *) echo "usage: $0 up|down|status [--nodes N]" >&2; exit 2 ;;
  esac
fi
