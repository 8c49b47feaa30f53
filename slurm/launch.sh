# Sourced by the slurm/*.sbatch templates (from the submit directory):
# choose how to start MPI ranks inside the allocation, run one job step of
# mpidsgd, and turn a preemption warning into checkpoint, exit 0, requeue.
#
#   MPIDSGD_LAUNCHER  auto (default) | srun | mpiexec
#   MPIDSGD_SRUN_MPI  srun's --mpi plugin (default pmi2; pmix for an MPI built
#                     against PMIx)
#
# auto: a one-second probe step asks srun --mpi=$MPIDSGD_SRUN_MPI to start
# $SLURM_NTASKS ranks and checks that they form one MPI world of that size
# (the `mpich` wheel's PMI client speaks PMI-2, so srun works with it). If they
# do not (no PMI plugin, an MPI built without PMI support), mpiexec starts the
# ranks inside the allocation instead, and one line says so.

# sets LAUNCH (an array: the launcher command, before the program)
mpidsgd_launcher() {
  local mode=${MPIDSGD_LAUNCHER:-auto} mpi=${MPIDSGD_SRUN_MPI:-pmi2} size
  local n=${SLURM_NTASKS:?not inside a Slurm allocation}
  # Slurm 22.05 srun no longer takes --cpus-per-task from the job: pass it on
  local srun=(srun --mpi="$mpi" --ntasks="$n" --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}"
              --kill-on-bad-exit=1)
  if [ "$mode" = auto ]; then
    size=$(timeout 120 "${srun[@]}" python -c \
      'from mpi4py import MPI; c = MPI.COMM_WORLD; print(c.size) if c.rank == 0 else None' \
      2>/dev/null | head -n 1) || true
    if [ "$size" = "$n" ]; then
      mode=srun
      echo "mpidsgd: launcher: srun --mpi=$mpi (probe: $n ranks in one MPI world)"
    else
      mode=mpiexec
      echo "mpidsgd: launcher: srun --mpi=$mpi cannot start this MPI's ranks" \
           "(probe saw world size '${size:-none}', not $n); using mpiexec inside the allocation"
    fi
  fi
  if [ "$mode" = srun ]; then
    LAUNCH=("${srun[@]}")
  else
    LAUNCH=(mpiexec -n "$n")
  fi
  LAUNCHER=$mode
}

# SIGUSR1 reaches the batch shell (--signal=B:USR1@N before the time limit,
# or scancel --batch --signal=USR1): ask every rank to checkpoint and stop,
# then requeue. SIGTERM (preemption, scancel --full): the ranks got it too;
# wait for their checkpoint; Slurm itself requeues a preempted job.
mpidsgd_on_usr1() {
  echo "mpidsgd: preemption warning; asking the ranks to checkpoint"
  PREEMPTED=1
  if [ "$LAUNCHER" = srun ]; then
    scancel --signal=USR1 "$SLURM_JOB_ID"
  else
    kill -USR1 "$STEP" 2>/dev/null || true   # mpiexec passes SIGUSR1 on to the ranks
  fi
}
mpidsgd_on_term() {
  echo "mpidsgd: SIGTERM; waiting for the ranks' checkpoint"
  [ "$LAUNCHER" = srun ] || kill -TERM "$STEP" 2>/dev/null || true
}

# mpidsgd_step PROGRAM ARGS...: run it on every rank; exit status of the step;
# requeue the job when it stopped on SIGUSR1 with exit 0
mpidsgd_step() {
  local rc=0
  PREEMPTED=0
  trap mpidsgd_on_usr1 USR1
  trap mpidsgd_on_term TERM
  "${LAUNCH[@]}" "$@" &
  STEP=$!
  wait "$STEP" || rc=$?
  while kill -0 "$STEP" 2>/dev/null; do   # wait returned early for a trap
    rc=0; wait "$STEP" || rc=$?
  done
  trap - USR1 TERM
  if [ "$PREEMPTED" = 1 ] && [ "$rc" = 0 ]; then
    echo "mpidsgd: checkpoint written; requeueing ${SLURM_JOB_ID}"
    scontrol requeue "$SLURM_JOB_ID"
  fi
  return "$rc"
}
