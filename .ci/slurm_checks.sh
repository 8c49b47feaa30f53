# Sourced by .ci/slurm: the checks, run against the live cluster. Uses $W
# (job outputs) and $ROOT (the repository). Every wait is bounded.

PASSED=0
FAILED=0
pass() { PASSED=$((PASSED + 1)); echo "slurm: PASS $*"; }
fail() { FAILED=$((FAILED + 1)); echo "slurm: FAIL $*"; }

# the jobs override the templates' sizes: one node, 4 ranks, 1 core each
SIZE=(--nodes=1 --ntasks=4 --cpus-per-task=1)
# a synchronous algorithm at a constant step: a resumed run must end in the
# same parameters as an uninterrupted one, bit for bit
SYNC=(jobs/quickstart.toml --set "algo.name='sgd'" --set "algo.schedule='constant'"
      --set run.steps=400 --set checkpoint.every=100 --set run.eval_every=0
      --set run.progress=false)
# wall time only (sleeps between steps, never a number): long enough to be
# interrupted mid-run
SLOW=(--set "comm.emulate.compute='fixed'" --set comm.emulate.compute_s=0.15)
SLOWER=(--set "comm.emulate.compute='fixed'" --set comm.emulate.compute_s=0.2)

# submit NAME SBATCH_OPTIONS... SCRIPT ARGS...: prints the job id; the run
# folder is $W/NAME, the output $W/NAME.out
submit() {
  local name=$1; shift
  sbatch --parsable --job-name="$name" --output="$W/$name.out" \
    --export="ALL,MPIDSGD_OUT=$W/$name" "$@"
}

# field JOBID KEY: one value of `scontrol show job`
field() {
  timeout 10 scontrol -o show job "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n 1
}

# every wait also ends at ALL_END, so that failing checks (which wait out
# their timeouts) keep the script within its 8 minutes
ALL_END=$((SECONDS + 420))
deadline() { local e=$((SECONDS + $1)); echo $((e < ALL_END ? e : ALL_END)); }

# wait_end JOBID SECONDS: wait until the job has ended (not requeued or
# pending); prints its final state; cancels it on timeout
wait_end() {
  local jid=$1 t=$2 st end
  end=$(deadline "$2")
  while :; do                      # at least one look, even past the deadline
    st=$(field "$jid" JobState)
    case $st in
      COMPLETED|FAILED|CANCELLED|TIMEOUT|OUT_OF_MEMORY|NODE_FAIL|BOOT_FAIL|DEADLINE)
        echo "$st"; return 0;;
    esac
    [ "$SECONDS" -lt "$end" ] || break
    sleep 1
  done
  scancel "$jid" 2>/dev/null
  echo "TIMEOUT(waited ${t}s, state $st)"
  return 1
}

# wait_step DIR STEP SECONDS: until the run's metrics.jsonl records STEP
wait_step() {
  local f=$1/metrics.jsonl end
  end=$(deadline "$3")
  while [ "$SECONDS" -lt "$end" ]; do
    if [ -f "$f" ] && python - "$f" "$2" <<'EOF'
import json, sys
steps = [json.loads(l).get("step", 0) for l in open(sys.argv[1]) if l.strip().startswith("{")]
sys.exit(0 if steps and max(steps) >= int(sys.argv[2]) else 1)
EOF
    then return 0; fi
    sleep 1
  done
  return 1
}

# json DIR KEY: a value of DIR/summary.json
json() { python -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$1/summary.json" "$2" 2>/dev/null; }

# same_params A.h5 B.h5: bit-for-bit equal shared/params
same_params() {
  python - "$1" "$2" <<'EOF'
import sys, h5py, numpy as np
a, b = (h5py.File(p, "r")["shared/params"][()] for p in sys.argv[1:3])
print(f"params {a.shape} {a.dtype}: max |diff| {float(np.max(np.abs(a.astype(np.float64) - b))):.3g}")
sys.exit(0 if a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes() else 1)
EOF
}

# extend_after_requeue JOBID: when the job is requeued (pending again after a
# start), raise its time limit to 10 minutes; bounded by 300 s
extend_after_requeue() {
  local end
  end=$(deadline 300)
  while [ "$SECONDS" -lt "$end" ]; do
    if [ "$(field "$1" Restarts)" -ge 1 ] 2>/dev/null; then
      timeout 10 scontrol update JobId="$1" TimeLimit=10 && return 0
    fi
    sleep 1
  done
  return 1
}

# explain NAME: the end of the job's output, for a failed check
explain() { echo "--- $W/$1.out (last 15 lines)"; tail -n 15 "$W/$1.out" 2>/dev/null; echo "---"; }

# check 2: a preempted job checkpoints, exits 0, is requeued, resumes and
# ends in the reference's parameters; NAME JOBID LABEL [the template's
# requeue line]
check_requeued() {
  local name=$1 jid=$2 st d=$W/$1 why=""
  st=$(wait_end "$jid" 240)
  grep -q "${4:-^mpidsgd: checkpoint written; requeueing}" "$W/$name.out" || why="no requeue line"
  grep -q "resumed from .*ckpt-[0-9]*.h5 at step" "$W/$name.out" || why="$why; not resumed"
  [ "$st" = COMPLETED ] || why="$why; state $st"
  [ "$(field "$jid" Restarts)" -ge 1 ] 2>/dev/null || why="$why; Restarts=$(field "$jid" Restarts)"
  [ "$(json "$d" steps)" = 400 ] || why="$why; steps $(json "$d" steps)"
  same_params "$W/ref/checkpoints/ckpt-400.h5" "$d/checkpoints/ckpt-400.h5" || why="$why; params differ"
  if [ -z "$why" ]; then
    pass "$3: checkpoint, exit 0, requeue, resume, same params as uninterrupted ($(grep -o 'resumed from .*' "$W/$name.out" | head -n 1))"
  else
    fail "$3: ${why#; }"; explain "$name"
  fi
}

run_checks() {
  local q ref u b tm bad st why n arr mrg pre
  cd "$ROOT"
  # everything at once: 24 declared CPUs hold six 4-rank jobs
  q=$(submit quick "${SIZE[@]}" slurm/train.sbatch jobs/quickstart.toml --set run.steps=300)
  ref=$(submit ref "${SIZE[@]}" slurm/train.sbatch "${SYNC[@]}")
  u=$(submit usr1 "${SIZE[@]}" slurm/train.sbatch "${SYNC[@]}" "${SLOW[@]}")
  # time limit 4 min, SIGUSR1 to the batch shell 3 min before it: about 60 s
  # into each start (a run takes over 80 s); the resumed run finishes before
  # its own warning
  b=$(submit timelimit "${SIZE[@]}" --time=4 --signal=B:USR1@180 slurm/train.sbatch \
      "${SYNC[@]}" "${SLOWER[@]}")
  # once requeued, give the job a longer limit: Slurm warns a restarted job
  # sooner than the lead time says (up to a minute early; on a loaded VM a
  # restart then makes little progress before its own warning)
  extend_after_requeue "$b" &
  local extender=$!

  # 3. SIGTERM to every rank (scancel without --full: the job steps, not the
  # batch shell, whose srun would end the step on SIGTERM)
  tm=$(submit term "${SIZE[@]}" slurm/train.sbatch "${SYNC[@]}" "${SLOW[@]}")
  # 4. a bad config: exit code 2, one error line
  bad=$(submit bad "${SIZE[@]}" slurm/train.sbatch jobs/quickstart.toml --set algo.lr=-1)

  # 2a. scancel --batch --signal=USR1 mid-run
  if wait_step "$W/usr1" 120 240; then
    scancel --batch --signal=USR1 "$u"
  else
    echo "slurm: usr1 job never reached step 120"
  fi
  if wait_step "$W/term" 120 240; then
    scancel --signal=TERM "$tm"
  else
    echo "slurm: term job never reached step 120"
  fi

  # 1. quickstart
  st=$(wait_end "$q" 180)
  if [ "$st" = COMPLETED ] && [ "$(json "$W/quick" world_size)" = 4 ]; then
    pass "1 quickstart: COMPLETED, world_size 4 ($(grep -m1 'launcher:' "$W/quick.out"))"
  else
    fail "1 quickstart: state $st, world_size $(json "$W/quick" world_size)"; explain quick
  fi

  st=$(wait_end "$ref" 120)
  [ "$st" = COMPLETED ] || { fail "2 reference run: state $st"; explain ref; }
  check_requeued usr1 "$u" "2 scancel --batch --signal=USR1"

  # 3.
  st=$(wait_end "$tm" 180)
  why=""
  [ "$st" = COMPLETED ] || why="state $st"
  [ "$(field "$tm" ExitCode)" = 0:0 ] || why="$why; ExitCode $(field "$tm" ExitCode)"
  [ "$(field "$tm" Restarts)" = 0 ] || why="$why; requeued"
  [ "$(json "$W/term" stopped_by)" = signal ] || why="$why; stopped_by $(json "$W/term" stopped_by)"
  n=$(json "$W/term" steps)
  [ -f "$W/term/checkpoints/ckpt-$n.h5" ] && [ "$n" -lt 400 ] || why="$why; no checkpoint at step $n"
  if [ -z "$why" ]; then
    pass "3 scancel --signal=TERM: stopped at step $n with ckpt-$n.h5, COMPLETED, ExitCode 0:0"
  else
    fail "3 scancel --signal=TERM: ${why#; }"; explain term
  fi

  # 4.
  st=$(wait_end "$bad" 120)
  n=$(grep -c "^mpidsgd: error:" "$W/bad.out")
  if [ "$(field "$bad" ExitCode)" = 2:0 ] && [ "$n" = 1 ] && grep -q "algo.lr" "$W/bad.out"; then
    pass "4 bad config: ExitCode=2:0, $(grep '^mpidsgd: error:' "$W/bad.out")"
  else
    fail "4 bad config: state $st ExitCode $(field "$bad" ExitCode), $n error lines"; explain bad
  fi

  # 5. a suite as a job array, then the merge step
  local sel=(--only "sgd,localsgd H=32" --variants none --seeds 0 --set run.steps=100)
  n=$(python -m mpidsgd.bench train --suite local_sgd "${sel[@]}" --count)
  arr=$(MPIDSGD_OUT=$W/sweep sbatch --parsable --array=0-$((n - 1)) "${SIZE[@]}" \
        --output="$W/sweep-%a.out" slurm/sweep.sbatch local_sgd "${sel[@]}")
  mrg=$(MPIDSGD_OUT=$W/sweep sbatch --parsable --dependency=afterok:"$arr" --ntasks=1 \
        --output="$W/sweep-merge.out" slurm/sweep.sbatch --merge local_sgd "${sel[@]}")

  # GPU template: syntax and resources, against the count-only GRES
  if sbatch --test-only slurm/train-gpu.sbatch jobs/quickstart.toml > "$W/gpu.out" 2>&1 &&
     grep -q "to start at" "$W/gpu.out"; then
    pass "gpu template: sbatch --test-only: $(head -n 1 "$W/gpu.out")"
  else
    fail "gpu template: sbatch --test-only"; cat "$W/gpu.out"
  fi

  # 2b. --signal=B:USR1@180 before a 4-minute time limit
  wait "$extender"
  check_requeued timelimit "$b" "2 --signal=B:USR1@180 --time=4"

  # 3b. real preemption: a job of the urgent partition needs the whole node
  pre=$(submit preempt "${SIZE[@]}" slurm/train.sbatch "${SYNC[@]}" "${SLOW[@]}")

  st=$(wait_end "$mrg" 180)
  why=""
  [ "$st" = COMPLETED ] || why="merge state $st"
  for i in $(seq 0 $((n - 1))); do
    [ "$(field "${arr}_$i" JobState)" = COMPLETED ] || why="$why; task $i $(field "${arr}_$i" JobState)"
  done
  [ -f "$W/sweep/local_sgd/none/sgd/seed0/summary.json" ] || why="$why; no sgd out_dir"
  [ -f "$W/sweep/local_sgd/none/localsgd_H_32/seed0/summary.json" ] || why="$why; no localsgd out_dir"
  [ "$(grep -c '^| none |' "$W/sweep/local_sgd.md" 2>/dev/null)" = "$n" ] || why="$why; table rows"
  if [ -z "$why" ]; then
    pass "5 sweep: $n array tasks, own out_dirs, merged table $W/sweep/local_sgd.md"
    cat "$W/sweep/local_sgd.md"
  else
    fail "5 sweep: ${why#; }"; tail -n 5 "$W"/sweep-*.out
  fi

  # 3b. (PreemptMode=REQUEUE, GraceTime=60: SIGTERM to the job's steps; the
  # ranks stop before the grace time ends, so the template requeues)
  if wait_step "$W/preempt" 120 150; then
    sbatch --parsable --partition=urgent --ntasks=1 --cpus-per-task="$SLURM_CI_CPUS" \
      --job-name=urgent --output="$W/urgent.out" --wrap "echo ran" > /dev/null
  else
    echo "slurm: preempt job never reached step 120"
  fi
  check_requeued preempt "$pre" "3b preempted by an urgent-partition job (SIGTERM)" \
    "^mpidsgd: preempted; checkpoint written; requeueing"
}
