#!/usr/bin/env bash
# The recipe ablation (configs/ablation/README.md, pre-registered): register-arm variants of the
# claim's LDM, each judged by the claim harness against the claim's shared baseline arm.
#   make ablation ABLATION=v1                      # the screen: every variant, seeds 0 1, 500 samples
#   make ablation ABLATION=v1 VARIANTS=attention SEEDS="0 1 2" SAMPLES=1000 TAG=_confirm   # a full confirmation
# Its variants are copies of the first claim's register arm (scripts/claim_v1.sed); its models need the first
# claim's (make claim CLAIM=v1).
# Needs the claim's autoencoder, judge and baseline LDMs (make claim, or its first stages).
# Writes runs/ablation/<variant><TAG>/report.{json,md} and docs/results/ablation/<variant><TAG>.json.
set -euo pipefail
cd "$(dirname "$0")/.."
VARIANTS="${VARIANTS:-fixes timestep read_write attention}"
SEEDS="${SEEDS:-0 1}"
SAMPLES="${SAMPLES:-500}"
TAG="${TAG:-}"
RUNS=runs/ablation
mkdir -p "$RUNS/configs" docs/results/ablation
TIMES="$RUNS/stage_times.txt"
touch "$TIMES"

options() {  # the variant's options, as CLI overrides of configs/claim/ldm.yaml
  case "$1" in
    literal)    echo "" ;;  # no training: the claim run's register models (trained before the fixes)
    fixes)      echo "" ;;
    timestep)   echo "--model.init_args.anatomy_loss.timestep_weighting snr_cutoff --model.init_args.anatomy_loss.snr_cutoff 0.05" ;;
    read_write) echo "--model.init_args.denoiser.registers.mode read_write" ;;
    attention)  echo "--model.init_args.denoiser.registers.supervision attention --model.init_args.denoiser.registers.supervised_per_class 2" ;;
    combined)   [[ -n "${COMBINED:-}" ]] || { echo "ablation: COMBINED must hold the adopted options" >&2; exit 2; }
                echo "$COMBINED" ;;
    *) echo "unknown variant '$1' (literal, fixes, timestep, read_write, attention, combined)" >&2; exit 2 ;;
  esac
}

stage() {  # stage NAME OUTPUT COMMAND...
  local name="$1" output="$2"; shift 2
  if [[ -e "$output" ]]; then echo "==> [$name] skipped: $output exists"; return; fi
  echo "==> [$name] $*"
  local start=$SECONDS
  "$@" || { echo "==> [$name] FAILED (the error is above)" >&2; exit 1; }
  printf '%-28s %5d s\n' "$name" $((SECONDS - start)) | tee -a "$TIMES"
}

for need in runs/claim/vae/export/autoencoder.json runs/claim/judge/checkpoints/last.ckpt; do
  [[ -e "$need" ]] || { echo "ablation: $need is missing; run make claim first" >&2; exit 2; }
done
for variant in $VARIANTS; do
  opts=$(options "$variant")
  models="$RUNS/${variant}_seed"
  [[ "$variant" == literal ]] && models="runs/claim/ldm_seed"
  for s in $SEEDS; do
    [[ -e "runs/claim/ldm_baseline_seed$s/checkpoints/last.ckpt" ]] || {
      echo "ablation: runs/claim/ldm_baseline_seed$s is missing; run make claim first" >&2; exit 2; }
    [[ "$variant" == literal ]] && continue
    out="$RUNS/configs/${variant}_seed$s.yaml"
    sed -e "s#runs/claim/ldm_seed0#$RUNS/${variant}_seed$s#g" -e "s/^seed_everything: 0$/seed_everything: $s/" \
      -f scripts/claim_v1.sed configs/claim/ldm.yaml > "$out"  # the first claim's recipe
    # shellcheck disable=SC2086
    stage "${variant}_seed$s" "$RUNS/${variant}_seed$s/checkpoints/last.ckpt" anatldm fit --config "$out" $opts
  done
  eval_config="$RUNS/configs/eval_${variant}${TAG}.yaml"
  python - "$variant" "$eval_config" "$SAMPLES" "$TAG" "$models" $SEEDS <<'PY'
import sys
import yaml
variant, path, samples, tag, models, *seeds = sys.argv[1:]
config = yaml.safe_load(open("configs/claim/eval.yaml"))
args = config["model"]["init_args"]
args["generators"] = {
    "register_ldm": [f"{models}{s}/checkpoints/last.ckpt" for s in seeds],
    "baseline_ldm": [f"runs/claim/ldm_baseline_seed{s}/checkpoints/last.ckpt" for s in seeds]}
args["training_seeds"] = [int(s) for s in seeds]
args["early_checkpoints"] = {"register_ldm": [f"{models}{seeds[0]}/checkpoints/fraction-0.10.ckpt"]}
args["num_samples"] = int(samples)
args["output_dir"] = f"runs/ablation/{variant}{tag}"
args["edits"] = {"liver_x2": [{"operation": "scale", "classes": ["liver"], "factor": 2.0}],
                 "spleen_off": [{"operation": "ablate", "classes": ["spleen"]}]}
args["edit_generator"] = "register_ldm"
args["edit_samples"] = 200
config["trainer"]["default_root_dir"] = args["output_dir"]
open(path, "w").write(yaml.safe_dump(config, sort_keys=False))
PY
  stage "eval_${variant}${TAG}" "$RUNS/${variant}${TAG}/report.md" anatldm test --config "$eval_config"
  python scripts/ablation_summary.py "$variant$TAG" "$RUNS/${variant}${TAG}" "docs/results/ablation/${variant}${TAG}.json"
done
python scripts/ablation_summary.py --table docs/results/ablation docs/results/ablation.json
