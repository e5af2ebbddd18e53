#!/usr/bin/env bash
# The pre-registered claim experiments (configs/claim/README.md), on CPU, through the real `anatldm`
# commands. Claim v2 (the default): data -> autoencoder -> judge -> 3 training seeds x (register
# LDM as the method states it, register v2, baseline, compute-matched baseline) -> the guidance
# selection (each arm's seed-0 model on the selection seeds, 40 network evaluations per sample) ->
# evaluation with each arm's chosen guidance (gate, pooled arms, seed pairs, verdict; runs/claim/v2/).
# The first claim (CLAIM=v1): 3 training seeds x (register LDM, baseline LDM) -> evaluation -> the
# same at 50 % of training.
#   make claim            # claim v2; skips stages whose outputs exist
#   make claim CLAIM=v1   # the first claim, as it was run
#   make claim FORCE=1    # redoes every stage
#   make claim HALF=0     # (v1) without the 50 %-of-training evaluation
#   make claim FRACTIONS=0  # (v2) without the plausibility-vs-training-fraction evaluation (25 %, 50 %, 100 %, unguided)
#   CONFIGS=configs/claim/quickstart RUNS=runs/claim_quickstart make claim   # claim v2 at quickstart size
#   make claim EXTRA_ARMS=1  # also the optional arms: head only (denoiser.registers.num_registers 0, anatomy_loss.weight 2)
#                            # and registers only (denoiser.registers.num_registers 16, anatomy_loss.weight 0), 3 seeds each,
#                            # evaluated beside the two main arms, unguided with the claim's sampler (report: runs/claim/extra/)
# Other sizes reuse this script with a config folder of the same file names whose paths point
# into RUNS (scripts/device_check.py writes one for the GPU-size claim):
#   CONFIGS=folder RUNS=folder SEEDS="0 1 2" JOBS=6 bash scripts/claim.sh
# JOBS: how many stages that do not depend on each other (the judge beside the autoencoder, the
# LDM fits of all seeds and arms) run at the same time; 1 (the default) runs them one by one.
set -euo pipefail
cd "$(dirname "$0")/.."
FORCE="${FORCE:-}"
CLAIM="${CLAIM:-v2}"
FRACTIONS="${FRACTIONS:-1}"
HALF="${HALF:-1}"
EXTRA_ARMS="${EXTRA_ARMS:-0}"
CONFIGS="${CONFIGS:-configs/claim}"
RUNS="${RUNS:-runs/claim}"
JOBS="${JOBS:-1}"
read -r -a SEEDS <<< "${SEEDS:-0 1 2}"
if [[ -n "$FORCE" ]]; then rm -rf "$RUNS"; fi
mkdir -p "$RUNS/configs"
TIMES="$RUNS/stage_times.txt"
[[ -f "$TIMES" ]] || : > "$TIMES"
START=$SECONDS
# wall time of the calls before this one (a claim may be spread over calls; skipped stages cost nothing)
PRIOR=$(awk '/^total \(this call\)/ {s += $(NF-1)} END {print s + 0}' "$TIMES")
CALL_MARK="$RUNS/.call_started"; touch "$CALL_MARK"
REPORT_WALL=0  # set when this call writes the report

source scripts/stages.sh

seed_config() {  # seed_config TEMPLATE SEED -> path of the template's copy for that training seed
  local out="$RUNS/configs/$(basename "$1" .yaml)_seed$2.yaml"
  sed -e "s/_seed0/_seed$2/g" -e "s/^seed_everything: 0$/seed_everything: $2/" ${V1_EDIT[@]+"${V1_EDIT[@]}"} "$1" > "$out"
  echo "$out"
}

# The first claim's autoencoder had no domain perceptual loss (claim v2 adopted it by the amendment of
# 2026-12-07 in configs/claim/README.md): CLAIM=v1 switches it off, so the first claim stays reproducible.
# Likewise the claim-size register arms gained the quickstart's image-resolution head and every arm cached latents
# (amendment of 2026-12-07 15:24 UTC): CLAIM=v1 fits its two arms from copies without those lines.
AUTOENCODER_OPTIONS=()
V1_EDIT=()
case "$CLAIM" in
  v1) EVAL_CONFIG="$CONFIGS/eval.yaml"; AUTOENCODER_OPTIONS=(--model.init_args.anatomy_perceptual.weight 0)
      V1_EDIT=(-f scripts/claim_v1.sed) ;;
  v2) EVAL_CONFIG="$CONFIGS/eval_v2.yaml" ;;
  *) echo "CLAIM must be v1 or v2, got '$CLAIM'" >&2; exit 2 ;; esac
# v1 and v2 share the run folder's stages (the register LDM is both claims' literal arm) but not their
# autoencoder: a folder started by one claim is not continued by the other
if [[ -f "$RUNS/claim_version" && "$(cat "$RUNS/claim_version")" != "$CLAIM" ]]; then
  echo "$RUNS holds the stages of claim $(cat "$RUNS/claim_version"), not $CLAIM: use FORCE=1 (starts over) or another RUNS" >&2
  exit 2
fi
echo "$CLAIM" > "$RUNS/claim_version"
stage data        "$RUNS/data_preview.png" anatldm inspect --config "$EVAL_CONFIG" --out "$RUNS/data_preview.png"
background autoencoder "$RUNS/vae/export/autoencoder.json" anatldm fit --config "$CONFIGS/vae.yaml" \
  ${AUTOENCODER_OPTIONS[@]+"${AUTOENCODER_OPTIONS[@]}"}
background judge       "$RUNS/judge/checkpoints/last.ckpt" anatldm fit --config "$CONFIGS/judge.yaml"
drain
REPORT="$RUNS"
if [[ "$CLAIM" == v2 ]]; then
  for s in "${SEEDS[@]}"; do
    for arm in ldm ldm_v2 ldm_baseline ldm_baseline_matched; do
      background "${arm}_seed$s" "$RUNS/${arm}_seed$s/checkpoints/last.ckpt" \
        anatldm fit --config "$(seed_config "$CONFIGS/$arm.yaml" "$s")"
    done
  done
  drain
  stage selection "$RUNS/select/report.json" anatldm test --config "$CONFIGS/select_v2.yaml"
  python scripts/choose_guidance.py "$CONFIGS/select_v2.yaml" "$RUNS/select/report.json" "$CONFIGS/eval_v2.yaml" \
    "$RUNS/configs/eval_v2.yaml" "$RUNS/select/choice.json" --seeds "${SEEDS[@]}"
  stage evaluation_v2 "$RUNS/v2/report.md" anatldm test --config "$RUNS/configs/eval_v2.yaml"
  REPORT="$RUNS/v2"; REPORT_WALL=$((PRIOR + SECONDS - START))
  if [[ "$FRACTIONS" != 0 ]]; then  # plausibility against training fraction, every arm unguided
    python scripts/fraction_config.py "$CONFIGS/eval_v2.yaml" "$RUNS/configs/eval_fractions.yaml" \
      --fractions 0.25 0.50 --out-dir "$RUNS/fractions"  # the fractions every arm's config writes
    stage fractions "$RUNS/fractions/report.md" anatldm test --config "$RUNS/configs/eval_fractions.yaml"
  fi
else  # the first claim
  for s in "${SEEDS[@]}"; do
    background "ldm_seed$s" "$RUNS/ldm_seed$s/checkpoints/last.ckpt" \
      anatldm fit --config "$(seed_config "$CONFIGS/ldm.yaml" "$s")"
    background "ldm_baseline_seed$s" "$RUNS/ldm_baseline_seed$s/checkpoints/last.ckpt" \
      anatldm fit --config "$(seed_config "$CONFIGS/ldm_baseline.yaml" "$s")"
  done
  drain
  stage evaluation  "$RUNS/report.md" anatldm test --config "$CONFIGS/eval.yaml"
  REPORT_WALL=$((PRIOR + SECONDS - START))
fi
if [[ "$EXTRA_ARMS" != 0 ]]; then  # the optional arms: what each half of the method does alone
  for s in "${SEEDS[@]}"; do
    for arm in head_only registers_only; do
      case "$arm" in
        head_only)      opts=(--model.init_args.denoiser.registers.num_registers 0 --model.init_args.anatomy_loss.weight 2.0) ;;
        registers_only) opts=(--model.init_args.denoiser.registers.num_registers 16 --model.init_args.anatomy_loss.weight 0.0) ;;
      esac
      config="$RUNS/configs/ldm_${arm}_seed$s.yaml"
      sed -e "s#$RUNS/ldm_seed0#$RUNS/ldm_${arm}_seed$s#g" -e "s/^seed_everything: 0$/seed_everything: $s/" \
        ${V1_EDIT[@]+"${V1_EDIT[@]}"} "$CONFIGS/ldm.yaml" > "$config"  # CLAIM=v1: the same recipe as its two arms
      background "ldm_${arm}_seed$s" "$RUNS/ldm_${arm}_seed$s/checkpoints/last.ckpt" anatldm fit --config "$config" "${opts[@]}"
    done
  done
  drain
  python - "$RUNS" "$CONFIGS" "$EVAL_CONFIG" "${SEEDS[@]}" <<'PY'
import sys
import yaml
runs, configs, eval_config, *seeds = sys.argv[1:]
config = yaml.safe_load(open(f"{configs}/eval.yaml"))
args = config["model"]["init_args"]
# the claim's own sampler (claim v2: DPM-Solver++ SDE 20 steps), every arm unguided
sampling = yaml.safe_load(open(eval_config))["model"]["init_args"]
args.update(sampler=sampling["sampler"], num_inference_steps=sampling["num_inference_steps"])
for arm in ("head_only", "registers_only"):
    args["generators"][arm] = [f"{runs}/ldm_{arm}_seed{s}/checkpoints/last.ckpt" for s in seeds]
args["output_dir"] = config["trainer"]["default_root_dir"] = f"{runs}/extra"
open(f"{runs}/configs/eval_extra.yaml", "w").write(yaml.safe_dump(config, sort_keys=False))
PY
  stage evaluation_extra "$RUNS/extra/report.md" anatldm test --config "$RUNS/configs/eval_extra.yaml"
fi
if [[ "$CLAIM" == v1 && "$HALF" != 0 ]]; then
  stage evaluation_half "$RUNS/half/report.md" anatldm test --config "$CONFIGS/eval_half.yaml"
fi
TOTAL=$((SECONDS - START))
printf '%-22s %5d s\n' "total (this call)" "$TOTAL" | tee -a "$TIMES"
python - "$RUNS" "$REPORT" "$REPORT_WALL" "$CALL_MARK" <<'PY'
import json, sys
from pathlib import Path
from anatldm.atomic import write_text_atomic
runs, folder, report_wall, call_mark = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
if (folder / "report.json").stat().st_mtime < call_mark.stat().st_mtime:
    print("the report was written by an earlier call: its times stay as that call wrote them")
    raise SystemExit(0)
stages = {}
for line in (runs / "stage_times.txt").read_text().splitlines():
    *name, seconds, _ = line.split()  # "NAME  SECONDS s" (a long name overflows its column)
    if name and name[0] != "total":
        stages[" ".join(name)] = int(seconds)
report = json.loads((folder / "report.json").read_text())
report["stage_times_s"] = stages
report["stage_time_sum_s"] = sum(stages.values())  # more than the wall time when JOBS > 1 ran stages side by side
report["wall_time_s"] = report_wall  # from the claim's first call to the report, over every call
write_text_atomic(folder / "report.json", json.dumps(report, indent=1))
print(f"wall time to the report: {report_wall} s (stages sum to {report['stage_time_sum_s']} s)")
PY
echo
echo "== Report ($REPORT/report.md) =="
cat "$REPORT/report.md"
echo "== Stage wall times =="
cat "$TIMES"
echo "Sample grids: $(ls "$REPORT"/samples_*.png | head -4 | tr '\n' ' ')..."
