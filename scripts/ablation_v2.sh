#!/usr/bin/env bash
# Ablation v2 at claim size (configs/ablation/README.md, "Ablation v2 at claim size", pre-registered): issue 22's
# training options on the claim's register arms, 3 training seeds each, evaluated in one `anatldm test` call
# beside their parents (the claim's own models) against the compute-matched baseline, unguided.
#   make ablation                                   # every variant, seeds 0 1 2, 500 samples per model
#   make ablation VARIANTS=anatomy SEEDS="0 1"      # a subset (a screen: say so)
#   make ablation ABLATION=v1                       # the first ablation (scripts/ablation.sh)
# Needs the claim's autoencoder, judge and LDMs (make claim). JOBS=2 fits two variants at a time.
# Writes runs/ablation_v2/{configs,<variant>_seed<s>,report.{json,md}} and docs/results/ablation_v2.{json,md}.
set -euo pipefail
cd "$(dirname "$0")/.."
read -r -a VARIANTS <<< "${VARIANTS:-balance anatomy v2_anatomy}"
read -r -a SEEDS <<< "${SEEDS:-0 1 2}"
SAMPLES="${SAMPLES:-500}"
JOBS="${JOBS:-1}"
CLAIM_RUNS="${CLAIM_RUNS:-runs/claim}"
RUNS="${RUNS:-runs/ablation_v2}"
ANATOMY=(--model.init_args.denoiser.registers.anatomy_conditioning true
         --model.init_args.denoiser.head.refine_steps 0 --model.init_args.denoiser.head.image_features false)
recipe() {  # recipe VARIANT -> "template parent" (the parent: the claim arm with the same recipe less the option)
  case "$1" in
    balance)    echo "configs/claim/ldm.yaml register_literal" ;;
    anatomy)    echo "configs/claim/ldm.yaml register_literal" ;;
    v2_anatomy) echo "configs/claim/ldm_v2.yaml register_v2" ;;
    *) echo "ablation v2: unknown variant '$1' (balance, anatomy, v2_anatomy)" >&2; return 2 ;;
  esac
}
options() {  # options VARIANT -> the variant's CLI overrides, one per line
  case "$1" in
    balance)            printf '%s\n' --model.init_args.anatomy_loss.max_gradient_ratio 2.0 ;;
    anatomy|v2_anatomy) printf '%s\n' "${ANATOMY[@]}" ;;
  esac
}

# every refusal comes before anything is written
for variant in "${VARIANTS[@]}"; do recipe "$variant" > /dev/null || exit 2; done
declare -A CLAIM_MODEL=([register_literal]=ldm [register_v2]=ldm_v2 [baseline_matched]=ldm_baseline_matched)
for arm in "${!CLAIM_MODEL[@]}"; do
  for s in "${SEEDS[@]}"; do
    need="$CLAIM_RUNS/${CLAIM_MODEL[$arm]}_seed$s/checkpoints/last.ckpt"
    [[ -e "$need" ]] || { echo "ablation v2: $need is missing; run make claim first" >&2; exit 2; }
  done
done
for need in "$CLAIM_RUNS/vae/export/autoencoder.json" "$CLAIM_RUNS/judge/checkpoints/last.ckpt"; do
  [[ -e "$need" ]] || { echo "ablation v2: $need is missing; run make claim first" >&2; exit 2; }
done

if [[ -n "${FORCE:-}" ]]; then rm -rf "$RUNS"; fi
mkdir -p "$RUNS/configs"
TIMES="$RUNS/stage_times.txt"
[[ -f "$TIMES" ]] || : > "$TIMES"
START=$SECONDS
source scripts/stages.sh

PARENTS=()
for variant in "${VARIANTS[@]}"; do
  read -r template parent <<< "$(recipe "$variant")"
  PARENTS+=("$parent")
  mapfile -t opts < <(options "$variant")
  for s in "${SEEDS[@]}"; do
    config="$RUNS/configs/${variant}_seed$s.yaml"
    sed -e "s#$CLAIM_RUNS/ldm_seed0#$RUNS/${variant}_seed$s#g" -e "s#$CLAIM_RUNS/ldm_v2_seed0#$RUNS/${variant}_seed$s#g" \
      -e "s/^seed_everything: 0$/seed_everything: $s/" "$template" > "$config"
    background "${variant}_seed$s" "$RUNS/${variant}_seed$s/checkpoints/last.ckpt" \
      anatldm fit --config "$config" "${opts[@]}"
  done
done
drain

python - "$RUNS" "$CLAIM_RUNS" "$SAMPLES" "${#SEEDS[@]}" "${SEEDS[@]}" "${VARIANTS[@]}" <<'PY'
import sys
import yaml
runs, claim_runs, samples, n, *rest = sys.argv[1:]
seeds, variants = rest[:int(n)], rest[int(n):]
config = yaml.safe_load(open("configs/claim/eval_v2.yaml"))
args = config["model"]["init_args"]
models = {"register_literal": f"{claim_runs}/ldm_seed", "register_v2": f"{claim_runs}/ldm_v2_seed",
          "baseline_matched": f"{claim_runs}/ldm_baseline_matched_seed",
          **{v: f"{runs}/{v}_seed" for v in variants}}
args["generators"] = {arm: [f"{prefix}{s}/checkpoints/last.ckpt" for s in seeds] for arm, prefix in models.items()}
args["training_seeds"] = [int(s) for s in seeds]
# one generator negative control (the gate's early checkpoint), the reference's
args["early_checkpoints"] = {"baseline_matched": [f"{claim_runs}/ldm_baseline_matched_seed{seeds[0]}/checkpoints/fraction-0.10.ckpt"]}
args["guidance"] = None  # unguided: this ablation measures training options
args["num_samples"] = int(samples)
args["claim"]["arm"] = variants[-1]
args["output_dir"] = config["trainer"]["default_root_dir"] = runs
open(f"{runs}/configs/eval.yaml", "w").write(yaml.safe_dump(config, sort_keys=False))
PY
stage evaluation "$RUNS/report.md" anatldm test --config "$RUNS/configs/eval.yaml"
python scripts/ablation_v2_summary.py "$RUNS/report.json" docs/results/ablation_v2 \
  --variants "${VARIANTS[@]}" --parents "${PARENTS[@]}"
printf '%-22s %5d s\n' "total (this call)" $((SECONDS - START)) | tee -a "$TIMES"
