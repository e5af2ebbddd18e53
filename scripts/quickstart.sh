#!/usr/bin/env bash
# The whole anatldm chain on built-in phantoms, on CPU, through the real `anatldm` commands:
# data -> autoencoder + segmenter -> register LDM + baseline LDM -> evaluation -> samples.
#   make quickstart            # skips stages whose outputs exist
#   make quickstart FORCE=1    # redoes every stage
# Independent fits run two at a time, each on half the cores (on 2 cores, two single-thread
# fits finish sooner than the same fits one after the other on 2 threads: small convolutions
# scale poorly across threads). A failing stage stops the chain with that stage's error.
set -euo pipefail
cd "$(dirname "$0")/.."
FORCE="${FORCE:-}"
RUNS=runs/quickstart
mkdir -p "$RUNS"
TIMES="$RUNS/stage_times.txt"
: > "$TIMES"
START=$SECONDS

stage() {  # stage NAME OUTPUT COMMAND...
  local name="$1" output="$2"; shift 2
  if [[ -z "$FORCE" && -e "$output" ]]; then
    echo "==> [$name] skipped: $output exists (FORCE=1 redoes it)"
    return
  fi
  echo "==> [$name] $*"
  local start=$SECONDS
  if ! "$@"; then
    echo "==> [$name] FAILED (the error is above)" >&2
    exit 1
  fi
  printf '%-13s %4d s\n' "$name" $((SECONDS - start)) | tee -a "$TIMES"
}

THREADS=$(( $(nproc 2>/dev/null || echo 2) / 2 )); (( THREADS >= 1 )) || THREADS=1
LOGS="$RUNS/logs"

fit_pair() {  # fit_pair NAME_A OUTPUT_A CONFIG_A NAME_B OUTPUT_B CONFIG_B: both `anatldm fit` at once
  local names=("$1" "$4") outputs=("$2" "$5") configs=("$3" "$6") todo=() pids=() failed=() k
  for k in 0 1; do
    if [[ -z "$FORCE" && -e "${outputs[$k]}" ]]; then
      echo "==> [${names[$k]}] skipped: ${outputs[$k]} exists (FORCE=1 redoes it)"
    else
      todo+=("$k")
    fi
  done
  if (( ${#todo[@]} < 2 )); then  # nothing to pair: run what is left as a plain stage
    for k in "${todo[@]}"; do stage "${names[$k]}" "${outputs[$k]}" anatldm fit --config "${configs[$k]}"; done
    return
  fi
  mkdir -p "$LOGS"
  local start=$SECONDS
  for k in 0 1; do
    echo "==> [${names[$k]}] anatldm fit --config ${configs[$k]}  ($THREADS thread(s), log: $LOGS/${names[$k]}.log)"
    (
      begin=$SECONDS
      if OMP_NUM_THREADS=$THREADS anatldm fit --config "${configs[$k]}" > "$LOGS/${names[$k]}.log" 2>&1; then rc=0; else rc=$?; fi
      echo $((SECONDS - begin)) > "$LOGS/${names[$k]}.seconds"
      exit "$rc"
    ) &
    pids+=("$!")
  done
  for k in 0 1; do wait "${pids[$k]}" || failed+=("$k"); done
  for k in "${failed[@]}"; do
    tail -n 25 "$LOGS/${names[$k]}.log" >&2
    echo "==> [${names[$k]}] FAILED (the error is above; whole log: $LOGS/${names[$k]}.log)" >&2
  done
  (( ${#failed[@]} == 0 )) || exit 1
  for k in 0 1; do
    printf '%-13s %4d s   (in parallel)\n' "${names[$k]}" "$(cat "$LOGS/${names[$k]}.seconds")" | tee -a "$TIMES"
  done
  printf '%-13s %4d s   (wall time of the pair)\n' "pair" $((SECONDS - start)) | tee -a "$TIMES"
}

if [[ -n "$FORCE" ]]; then  # a forced run retrains everything from scratch
  rm -rf "$RUNS/vae" "$RUNS/ldm" "$RUNS/ldm_baseline" "$RUNS/segmenter" "$RUNS/eval" "$RUNS/samples" "$LOGS"
fi
stage data         "$RUNS/data_preview.png" anatldm inspect --config configs/quickstart/vae.yaml --out "$RUNS/data_preview.png"
fit_pair autoencoder "$RUNS/vae/export/autoencoder.json" configs/quickstart/vae.yaml \
         segmenter   "$RUNS/segmenter/checkpoints/last.ckpt" configs/quickstart/segmenter.yaml
fit_pair ldm          "$RUNS/ldm/checkpoints/last.ckpt" configs/quickstart/ldm.yaml \
         ldm_baseline "$RUNS/ldm_baseline/checkpoints/last.ckpt" configs/quickstart/ldm_baseline.yaml
stage evaluation   "$RUNS/eval/report.md" anatldm test --config configs/quickstart/eval.yaml
stage samples      "$RUNS/samples/samples.png" anatldm predict --config configs/quickstart/sample.yaml
printf '%-13s %4d s\n' total $((SECONDS - START)) | tee -a "$TIMES"

echo
echo "== Report ($RUNS/eval/report.md) =="
cat "$RUNS/eval/report.md"
[ -f "$RUNS/eval/edits.md" ] && cat "$RUNS/eval/edits.md"
echo "== Stage wall times =="
cat "$TIMES"
echo "Data preview:            $RUNS/data_preview.png"
echo "Evaluation sample grids: $(ls "$RUNS"/eval/samples_*.png | tr '\n' ' ')"
echo "Samples + masks (NIfTI): $RUNS/samples/ (grid: $RUNS/samples/samples.png)"
echo "Register attention:      $RUNS/samples/sample_*_attention.png, association: $RUNS/samples/association.png"
echo "Register edits:          $RUNS/eval/edits_register_ldm.png"
echo "TensorBoard:             tensorboard --logdir $RUNS"
