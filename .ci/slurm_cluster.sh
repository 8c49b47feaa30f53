# Sourced by .ci/slurm: a one-node Slurm cluster on the loopback interface.
#
# Everything lives in $SLURM_CI_DIR (config, state, spool, logs, munge key and
# socket), on private ports, so nothing of a system-wide Slurm or munge is used
# or touched; cluster_down stops exactly the daemons cluster_up started (by
# their pid files) and is safe to call more than once.

SLURM_CI_NODE=ci
SLURM_CI_CPUS=24       # declared; the machine may have fewer (ranks oversubscribe)
SLURM_CI_GPUS=4        # count-only GRES, for `sbatch --test-only` of the GPU template

# apt-get install slurm-wlm and munge when missing (root only); returns 1 with
# the reason on stdout when the cluster cannot be set up here
cluster_install() {
  local missing=0 cmd
  for cmd in munged slurmctld slurmd sbatch; do
    command -v "$cmd" >/dev/null 2>&1 || missing=1
  done
  [ "$missing" = 0 ] && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "slurm-wlm/munge are not installed and this is not root (cannot apt-get install)"
    return 1
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "slurm-wlm/munge are not installed and there is no apt-get"
    return 1
  fi
  echo "slurm: installing slurm-wlm and munge with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  timeout 300 apt-get update -qq >&2 &&
    timeout 600 apt-get install -y -qq --no-install-recommends slurm-wlm munge >&2 || {
      echo "apt-get install slurm-wlm munge failed"; return 1; }
}

# write slurm.conf, gres.conf and a fresh munge key under $SLURM_CI_DIR
cluster_config() {
  local d=$SLURM_CI_DIR host i
  host=$(hostname -s)
  mkdir -p "$d/state" "$d/spool/$SLURM_CI_NODE" "$d/log" "$d/munge"
  chmod 755 "$d"
  # munged insists on a private key and socket folder owned by its user
  dd if=/dev/urandom of="$d/munge/munge.key" bs=1024 count=1 status=none
  chown -R munge:munge "$d/munge" 2>/dev/null || true
  chmod 700 "$d/munge"; chmod 600 "$d/munge/munge.key"
  cat > "$d/slurm.conf" <<EOF
ClusterName=mpidsgd-ci
# job ids unique to this cluster's run: MPICH names its shared-memory segment
# after the job, so a segment left in /dev/shm by a killed job of an earlier
# run must not meet a new job with the same id
FirstJobId=$(( ($(date +%s) % 600000) * 100 + 1000 ))
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=${SLURM_CI_PORT:-16817}
SlurmdPort=$(( ${SLURM_CI_PORT:-16817} + 1 ))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# a requeued job waits cred_expire seconds before it may start (default 120)
AuthInfo=socket=$d/munge/munge.socket,cred_expire=10
StateSaveLocation=$d/state
SlurmdSpoolDir=$d/spool/%n
SlurmctldPidFile=$d/slurmctld.pid
SlurmdPidFile=$d/slurmd.pid
SlurmctldLogFile=$d/log/slurmctld.log
SlurmdLogFile=$d/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups in a container: track processes by parent pid, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# jobs may be requeued (scontrol requeue, --requeue); a job of the urgent
# partition preempts one of ci: SIGTERM, GraceTime seconds, then requeue
JobRequeue=1
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
ReturnToService=2
SlurmdParameters=config_overrides
GresTypes=gpu
KillWait=10
MinJobAge=600
InactiveLimit=0
NodeName=$SLURM_CI_NODE NodeHostname=$host NodeAddr=127.0.0.1 CPUs=$SLURM_CI_CPUS Boards=1 SocketsPerBoard=1 CoresPerSocket=$SLURM_CI_CPUS ThreadsPerCore=1 RealMemory=4000 Gres=gpu:$SLURM_CI_GPUS State=UNKNOWN
PartitionName=ci Nodes=$SLURM_CI_NODE Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime=60
PartitionName=urgent Nodes=$SLURM_CI_NODE MaxTime=INFINITE State=UP PriorityTier=2 PreemptMode=OFF
EOF
  # GPUs for `sbatch --test-only`: Slurm drops a gpu GRES without device
  # files, so the files are character devices like /dev/null
  for i in $(seq 0 $(( SLURM_CI_GPUS - 1 ))); do
    mknod "$d/gpu$i" c 1 3 2>/dev/null || touch "$d/gpu$i"
  done
  echo "NodeName=$SLURM_CI_NODE Name=gpu File=$d/gpu[0-$(( SLURM_CI_GPUS - 1 ))]" > "$d/gres.conf"
  export SLURM_CONF=$d/slurm.conf
}

# start munged, slurmctld, slurmd; wait (bounded) until the node is idle
cluster_up() {
  local d=$SLURM_CI_DIR i
  cluster_config
  runuser -u munge -- munged --force --socket="$d/munge/munge.socket" \
    --key-file="$d/munge/munge.key" --pid-file="$d/munge/munged.pid" \
    --log-file="$d/munge/munged.log" --seed-file="$d/munge/munged.seed" || return 1
  slurmctld -f "$SLURM_CONF" || return 1
  slurmd -f "$SLURM_CONF" -N "$SLURM_CI_NODE" || return 1
  # a deadline, not a count: a client call can block while a daemon is down
  local end=$((SECONDS + 60))
  while [ "$SECONDS" -lt "$end" ]; do
    if [ "$(timeout 5 sinfo -h -n "$SLURM_CI_NODE" -o %t 2>/dev/null)" = idle ]; then
      return 0
    fi
    [ $((end - SECONDS)) -lt 55 ] && for i in slurmctld slurmd; do
      kill -0 "$(cat "$d/$i.pid" 2>/dev/null)" 2>/dev/null || {
        echo "slurm: $i is not running (port in use? see $d/log/$i.log)" >&2; return 1; }
    done
    sleep 1
  done
  echo "slurm: node not idle after 60 s: $(sinfo -h -N -o '%N %t %E' 2>&1)" >&2
  return 1
}

# stop what cluster_up started, by pid file; bounded waits, then SIGKILL
cluster_down() {
  local d=${SLURM_CI_DIR:-} f pid i jobs
  [ -n "$d" ] && [ -d "$d" ] || return 0
  # jobs first, so no rank outlives the cluster
  if [ -s "$d/slurmctld.pid" ]; then
    jobs=$(timeout 10 squeue -h -o %A 2>/dev/null | sort -u)
    [ -z "$jobs" ] || timeout 10 scancel $jobs 2>/dev/null || true
    i=$((SECONDS + 30))
    while [ "$SECONDS" -lt "$i" ]; do
      [ -z "$(timeout 5 scontrol listpids 2>/dev/null | tail -n +2)" ] && break
      sleep 1
    done
  fi
  for f in "$d/slurmd.pid" "$d/slurmctld.pid" "$d/munge/munged.pid"; do
    [ -s "$f" ] || continue
    pid=$(cat "$f")
    rm -f "$f"
    kill "$pid" 2>/dev/null || continue
    for i in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
  done
}
