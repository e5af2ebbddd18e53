#!/usr/bin/env bash
# The whole anatldm chain on built-in phantoms, on CPU, through the real `anatldm` commands:
# data -> autoencoder -> register LDM -> baseline LDM -> segmenter -> evaluation -> samples.
#   make quickstart            # skips stages whose outputs exist
#   make quickstart FORCE=1    # redoes every stage
# A failing stage stops the chain with that stage's error.
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

if [[ -n "$FORCE" ]]; then  # a forced run retrains everything from scratch
  rm -rf "$RUNS/vae" "$RUNS/ldm" "$RUNS/ldm_baseline" "$RUNS/segmenter" "$RUNS/eval" "$RUNS/samples"
fi
stage data         "$RUNS/data_preview.png" anatldm inspect --config configs/quickstart/vae.yaml --out "$RUNS/data_preview.png"
stage autoencoder  "$RUNS/vae/export/autoencoder.json" anatldm fit --config configs/quickstart/vae.yaml
stage ldm          "$RUNS/ldm/checkpoints/last.ckpt" anatldm fit --config configs/quickstart/ldm.yaml
stage ldm_baseline "$RUNS/ldm_baseline/checkpoints/last.ckpt" anatldm fit --config configs/quickstart/ldm_baseline.yaml
stage segmenter    "$RUNS/segmenter/checkpoints/last.ckpt" anatldm fit --config configs/quickstart/segmenter.yaml
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
