#!/usr/bin/env bash
# A real single-machine Slurm (Debian's slurm-wlm + munge) for tests and workstation sweeps.
#
#   scripts/slurm_local.sh install       apt-get install slurm-wlm munge unless already there
#   scripts/slurm_local.sh start DIR     write DIR/slurm.conf, start munged, slurmctld, slurmd; wait for idle
#   scripts/slurm_local.sh start2 DIR    the same with two nodes, ponder-n1 and ponder-n2: each slurmd in its
#                                        own UTS and mount namespace (own hostname, own /etc/hosts naming
#                                        both nodes), at 127.0.0.2 / 127.0.0.3, own port, spool, pid and log
#   scripts/slurm_local.sh stop DIR      stop the daemons started above, by the PIDs in DIR
#
# Then point every client at the instance: `export SLURM_CONF=DIR/slurm.conf` (sbatch, squeue, submitit).
# Runs as root without systemd or cgroups (see docs/slurm-local.md for the measured facts).
# Everything lives under DIR: its own munge key and socket, free TCP ports, state, spool, logs, pidfiles,
# so it never touches a system Slurm or munge.
set -euo pipefail

die() { echo "slurm_local: $*" >&2; exit 1; }

install_slurm() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
     && command -v munged >/dev/null; then
    return 0
  fi
  [ "$(id -u)" = 0 ] || die "slurm-wlm/munge are missing and installing them needs root"
  command -v apt-get >/dev/null || die "slurm-wlm/munge are missing and there is no apt-get here"
  export DEBIAN_FRONTEND=noninteractive
  # The package lists may be stale or absent (fresh CI image): refresh once, then retry.
  apt-get install -y -q slurm-wlm munge >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q slurm-wlm munge >/dev/null; } \
    || die "apt-get install slurm-wlm munge failed"
}

free_port() {
  local port
  for _ in $(seq 50); do
    port=$((20000 + RANDOM % 20000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"; return 0
    fi
  done
  die "no free TCP port found"
}

# A daemon is stopped once its PID is gone or a zombie (PID 1 here may reap late; `kill -0` stays true).
is_running() {
  local state
  [ -r "/proc/$1/stat" ] || return 1
  state=$(sed -E 's/^[0-9]+ \(.*\) ([A-Za-z]).*/\1/' "/proc/$1/stat" 2>/dev/null) || return 1
  [ "$state" != Z ]
}

wait_pidfile() {  # wait_pidfile FILE NAME LOG: a daemonized process writes its pidfile after forking
  for _ in $(seq 100); do
    if [ -s "$1" ] && is_running "$(cat "$1")"; then return 0; fi
    sleep 0.1
  done
  die "$2 did not start; last lines of $3: $(tail -n 5 "$3" 2>/dev/null)"
}

start() {  # start DIR NODES
  local dir host cpus mem
  dir=$(mkdir -p "$1" && cd "$1" && pwd)
  install_slurm
  host=$(hostname -s)
  cpus=$(nproc)
  mem=$(( $(awk '/MemAvailable/ {print int($2 / 1024)}' /proc/meminfo) * 9 / 10 ))
  mkdir -p "$dir"/{state,spool,log,munge}

  # munge: our own key and socket; munged refuses to run as root, so it runs as the munge user.
  chown munge:munge "$dir/munge"
  chmod 755 "$dir"
  runuser -u munge -- test -x "$dir/munge" \
    || die "the munge user cannot reach $dir (a parent directory is private); pick a DIR under /tmp"
  chmod 755 "$dir/munge"  # munged wants its socket directory reachable by every client
  if [ ! -s "$dir/munge/munge.key" ]; then
    dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
  fi
  chown munge:munge "$dir/munge/munge.key"
  chmod 400 "$dir/munge/munge.key"
  runuser -u munge -- /usr/sbin/munged --key-file="$dir/munge/munge.key" \
    --socket="$dir/munge/munge.socket" --pid-file="$dir/munge/munged.pid" \
    --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/munged.seed"
  wait_pidfile "$dir/munge/munged.pid" munged "$dir/munge/munged.log"

  local nodes_conf
  if [ "${2:-1}" = 2 ]; then
    # Two nodes of one CPU each; slurmd finds its NodeName from its (namespaced) hostname.
    nodes_conf="SlurmdPidFile=$dir/slurmd-%n.pid
SlurmdSpoolDir=$dir/spool-%n
SlurmdLogFile=$dir/log/slurmd-%n.log
NodeName=ponder-n1 NodeAddr=127.0.0.2 NodeHostname=ponder-n1 Port=$(free_port) CPUs=$(( cpus / 2 > 0 ? cpus / 2 : 1 )) RealMemory=$(( mem / 2 )) State=UNKNOWN
NodeName=ponder-n2 NodeAddr=127.0.0.3 NodeHostname=ponder-n2 Port=$(free_port) CPUs=$(( cpus / 2 > 0 ? cpus / 2 : 1 )) RealMemory=$(( mem / 2 )) State=UNKNOWN
PartitionName=debug Nodes=ponder-n[1-2] Default=YES MaxTime=INFINITE State=UP"
  else
    nodes_conf="SlurmdPort=$(free_port)
SlurmdPidFile=$dir/slurmd.pid
SlurmdSpoolDir=$dir/spool
SlurmdLogFile=$dir/log/slurmd.log
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP"
  fi
  cat >"$dir/slurm.conf" <<EOF
ClusterName=ponder-local
SlurmctldHost=$host
SlurmctldPort=$(free_port)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire=5: a requeued job may start again after 5 s instead of the default 120 s.
AuthInfo=socket=$dir/munge/munge.socket,cred_expire=5
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SwitchType=switch/none
MpiDefault=none
MailProg=/bin/true
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
SchedulerParameters=bf_interval=1,sched_interval=2
StateSaveLocation=$dir/state
SlurmctldPidFile=$dir/slurmctld.pid
SlurmctldLogFile=$dir/log/slurmctld.log
$nodes_conf
EOF
  export SLURM_CONF="$dir/slurm.conf"
  slurmctld -c  # -c: a clean start, no state from an earlier instance in this DIR
  wait_pidfile "$dir/slurmctld.pid" slurmctld "$dir/log/slurmctld.log"
  local want=idle
  if [ "${2:-1}" = 2 ]; then
    { cat /etc/hosts; printf '127.0.0.2 ponder-n1\n127.0.0.3 ponder-n2\n'; } >"$dir/hosts"
    mkdir -p "$dir/spool-ponder-n1" "$dir/spool-ponder-n2"
    for n in 1 2; do
      # A private hostname and /etc/hosts for this slurmd and every job step it starts.
      unshare --uts --mount sh -c "hostname ponder-n$n && mount --bind '$dir/hosts' /etc/hosts && exec slurmd"
      wait_pidfile "$dir/slurmd-ponder-n$n.pid" "slurmd ponder-n$n" "$dir/log/slurmd-ponder-n$n.log"
    done
    want="idle
idle"
  else
    slurmd
    wait_pidfile "$dir/slurmd.pid" slurmd "$dir/log/slurmd.log"
  fi
  for _ in $(seq 100); do
    if [ "$(sinfo -h -N -o %t 2>/dev/null)" = "$want" ]; then
      echo "slurm_local: up (SLURM_CONF=$SLURM_CONF, node $host, $cpus CPUs, ${mem} MB)"
      return 0
    fi
    sleep 0.2
  done
  die "node $host never became idle: $(sinfo -N 2>&1 | tail -n 2); see $dir/log"
}

stop_pid() {  # stop_pid PIDFILE: TERM, then KILL after 10 s; return once it is gone or a zombie
  local pid
  [ -s "$1" ] || return 0
  pid=$(cat "$1")
  is_running "$pid" || { rm -f "$1"; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 100); do
    is_running "$pid" || { rm -f "$1"; return 0; }
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  for _ in $(seq 50); do
    is_running "$pid" || { rm -f "$1"; return 0; }
    sleep 0.1
  done
  die "PID $pid ($1) survived SIGKILL"
}

stop() {
  local dir=$1
  [ -d "$dir" ] || die "no such directory: $dir"
  stop_pid "$dir/slurmd.pid"
  stop_pid "$dir/slurmd-ponder-n1.pid"
  stop_pid "$dir/slurmd-ponder-n2.pid"
  stop_pid "$dir/slurmctld.pid"
  stop_pid "$dir/munge/munged.pid"
  echo "slurm_local: stopped ($dir)"
}

case "${1:-}" in
  install) install_slurm ;;
  start) [ $# = 2 ] || die "usage: $0 start DIR"; start "$2" 1 ;;
  start2) [ $# = 2 ] || die "usage: $0 start2 DIR"; start "$2" 2 ;;
  stop) [ $# = 2 ] || die "usage: $0 stop DIR"; stop "$2" ;;
  *) die "usage: $0 install | start DIR | start2 DIR | stop DIR" ;;
esac
