# Stages of the experiment scripts (sourced by scripts/claim.sh and scripts/ablation_v2.sh): the caller sets
# TIMES (the stage-times file) and JOBS (how many stages may run at the same time) before sourcing.
# shellcheck shell=bash
stage() {  # stage NAME OUTPUT COMMAND...: skipped when OUTPUT exists and TIMES records the stage as finished
  # (a fit killed at a session's end leaves its last.ckpt, but no line in TIMES: it is run again)
  local name="$1" output="$2"; shift 2
  if [[ -e "$output" ]] && grep -q "^$name " "$TIMES"; then
    echo "==> [$name] skipped: $output exists (FORCE=1 redoes everything)"
    return
  fi
  echo "==> [$name] $*"
  local start=$SECONDS
  if ! "$@"; then
    echo "==> [$name] FAILED (the error is above)" >&2
    exit 1
  fi
  printf '%-22s %5d s\n' "$name" $((SECONDS - start)) | tee -a "$TIMES"
}

PENDING=()
THREADS_PER_JOB=$(( $(nproc 2>/dev/null || echo 2) / JOBS )); (( THREADS_PER_JOB >= 1 )) || THREADS_PER_JOB=1
background() {  # background STAGE-ARGS...: run `stage` with at most JOBS at a time (`drain` waits for all),
  # each on its share of the cores when JOBS > 1 (small convolutions scale poorly across threads)
  if (( JOBS > 1 )); then (export OMP_NUM_THREADS=$THREADS_PER_JOB; stage "$@") & else stage "$@" & fi
  PENDING+=($!)
  if (( ${#PENDING[@]} >= JOBS )); then
    wait "${PENDING[0]}" || exit 1
    PENDING=("${PENDING[@]:1}")
  fi
}

drain() {
  local pid
  for pid in "${PENDING[@]}"; do wait "$pid" || exit 1; done
  PENDING=()
}
