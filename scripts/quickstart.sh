#!/usr/bin/env bash
# The whole anatldm chain on built-in phantoms, on CPU, through the real `anatldm` commands.
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

stage() {  # stage NAME OUTPUT COMMAND...
  local name="$1" output="$2"; shift 2
  if [[ -z "$FORCE" && -e "$output" ]]; then
    echo "==> [$name] skipped: $output exists (FORCE=1 redoes it)"
    return
  fi
  echo "==> [$name] $*"
  local start=$SECONDS
  if ! "$@"; then
    echo "==> [$name] FAILED (see the error above)" >&2
    exit 1
  fi
  echo "$name $((SECONDS - start)) s" | tee -a "$TIMES"
}

stage data "$RUNS/data_preview.png" anatldm inspect --config configs/quickstart/vae.yaml --out "$RUNS/data_preview.png"
stage autoencoder "$RUNS/vae/export/autoencoder.json" anatldm fit --config configs/quickstart/vae.yaml
stage ldm "$RUNS/ldm/checkpoints/last.ckpt" anatldm fit --config configs/quickstart/ldm.yaml
stage ldm_baseline "$RUNS/ldm_baseline/checkpoints/last.ckpt" anatldm fit --config configs/quickstart/ldm_baseline.yaml
stage samples "$RUNS/samples/samples.png" anatldm predict --config configs/quickstart/sample.yaml

echo
echo "Stage wall times:"; cat "$TIMES"
echo "Data preview:        $RUNS/data_preview.png"
echo "Samples with masks:  $RUNS/samples/samples.png (NIfTI pairs beside it)"
echo "TensorBoard:         tensorboard --logdir $RUNS"
