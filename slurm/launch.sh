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
    # (the whole output: cutting the pipe early would kill ranks still in
    # MPI_Finalize and leave their shared-memory segment to the next step)
    size=$(timeout 120 "${srun[@]}" bash -c 'trap "" USR1; exec python -c "$1"' probe \
      'from mpi4py import MPI; c = MPI.COMM_WORLD; print(c.size) if c.rank == 0 else None' \
      2>/dev/null) || true
    size=${size%%$'\n'*}
    if [ "$size" = "$n" ]; then
      mode=srun
      echo "mpidsgd: launcher: srun --mpi=$mpi (probe: $n ranks in one MPI world)"
    else
      mode=mpiexec
      echo "mpidsgd: launcher: srun --mpi=$mpi cannot start this MPI's ranks" \
           "(probe saw world size '${size:-none}', not $n); using mpiexec inside the allocation"
    fi
  else
    echo "mpidsgd: launcher: $mode (MPIDSGD_LAUNCHER)"
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
# then requeue. The trap is set as soon as this file is sourced, since the
# warning may come at any time, even before the ranks have started (a
# requeued job can be warned at once). The ranks start with SIGUSR1 ignored
# (inherited SIG_IGN) until mpidsgd installs its handler, so a warning that
# comes too early is lost, never fatal; the trap repeats it every 10 s until
# the step ends. SIGTERM of preemption and of scancel goes to the job steps,
# i.e. straight to the ranks, which checkpoint and exit 0 (Slurm itself
# requeues a preempted job). Should SIGTERM reach this shell too (scancel
# --full), pass it on to mpiexec and wait; srun ends its step on SIGTERM by
# itself, so with srun use SIGUSR1 to the batch shell for a clean stop.
PREEMPTED=0
STEP=
LAUNCHER=
mpidsgd_forward_usr1() {
  [ -n "$STEP" ] || return 0
  if [ "$LAUNCHER" = srun ]; then
    scancel --signal=USR1 "$SLURM_JOB_ID" 2>/dev/null || true
  else
    kill -USR1 "$STEP" 2>/dev/null || true   # mpiexec passes SIGUSR1 on to the ranks
  fi
}
mpidsgd_on_usr1() {
  echo "mpidsgd: preemption warning; asking the ranks to checkpoint"
  PREEMPTED=1
  mpidsgd_forward_usr1
}
mpidsgd_on_term() {
  echo "mpidsgd: SIGTERM; waiting for the ranks' checkpoint"
  [ "$LAUNCHER" = srun ] || kill -TERM "$STEP" 2>/dev/null || true
}
trap mpidsgd_on_usr1 USR1
trap mpidsgd_on_term TERM

# the run stopped on the warning (not at the end of its budget): requeue it
mpidsgd_stopped_early() {
  local summary=${MPIDSGD_RUN_DIR:-}/summary.json
  [ -n "${MPIDSGD_RUN_DIR:-}" ] && [ -f "$summary" ] || return 0
  ! grep -q '"stopped_by": "budget"' "$summary"
}

# Slurm chose this job for preemption (SIGTERM to its steps)
mpidsgd_preempted() {
  scontrol -o show job "$SLURM_JOB_ID" 2>/dev/null | grep -q 'PreemptTime=[0-9]'
}

# mpidsgd_step PROGRAM ARGS...: run it on every rank; exit status of the
# step; requeue the job when it stopped on SIGUSR1 with exit 0
# (MPIDSGD_RUN_DIR: the run's out_dir, whose summary.json tells whether it
# stopped early or finished anyway)
mpidsgd_step() {
  local rc=0 t=0
  "${LAUNCH[@]}" bash -c 'trap "" USR1; exec "$@"' mpidsgd-rank "$@" &
  STEP=$!
  [ "$PREEMPTED" = 0 ] || mpidsgd_forward_usr1
  while kill -0 "$STEP" 2>/dev/null; do
    sleep 1 & wait $! || true               # the traps run here
    t=$((t + 1))
    if [ "$PREEMPTED" = 1 ] && [ $((t % 10)) = 0 ]; then mpidsgd_forward_usr1; fi
  done
  wait "$STEP" || rc=$?
  STEP=
  if [ "$rc" = 0 ] && [ "$PREEMPTED" = 1 ]; then
    if mpidsgd_stopped_early; then
      echo "mpidsgd: checkpoint written; requeueing ${SLURM_JOB_ID}"
      scontrol requeue "$SLURM_JOB_ID"
    else
      echo "mpidsgd: the run finished before the warning reached it; not requeued"
    fi
  elif [ "$rc" = 0 ] && mpidsgd_stopped_early && mpidsgd_preempted; then
    # Slurm requeues a preempted job only if it is still running at the end
    # of GraceTime; this one stopped cleanly before that
    echo "mpidsgd: preempted; checkpoint written; requeueing ${SLURM_JOB_ID}"
    scontrol requeue "$SLURM_JOB_ID"
  fi
  return "$rc"
}
