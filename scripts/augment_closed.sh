#!/usr/bin/env bash
# The closed-world low-data augmentation benchmark (benchmarks/README.md, "Closed world"):
# every model sees only TRAIN_SUBJECTS (4) of the quickstart's 16 training subjects — the
# autoencoder, the register LDM and the baseline LDM (SEEDS training seeds each), and the
# segmenter that labels the baseline's samples and filters the register pairs — then
# benchmarks/augment_bench.py --closed-world trains the downstream segmenters and scores them on
# the real test subjects (which no model saw).
#   make augment-bench CLOSED=1        # skips fits whose outputs exist; FORCE=1 redoes them
# Configs are the quickstart's (configs/quickstart/*.yaml) with data.train_subjects set, their
# paths moved to RUNS and max_epochs scaled by 16 / TRAIN_SUBJECTS (the same number of steps as
# the quickstart's full-data fits). Fits run two at a time, one thread each.
set -euo pipefail
cd "$(dirname "$0")/.."
FORCE="${FORCE:-}"
RUNS="${RUNS:-runs/augment_closed}"
TRAIN_SUBJECTS="${TRAIN_SUBJECTS:-4}"
read -r -a SEEDS <<< "${SEEDS:-0 1 2}"
if [[ -n "$FORCE" ]]; then rm -rf "$RUNS"; fi
mkdir -p "$RUNS/configs" "$RUNS/logs"
SCALE=$(( 16 / TRAIN_SUBJECTS ))

config() {  # config TEMPLATE NAME SEED -> a copy of the quickstart config for this closed world
  local out="$RUNS/configs/$2.yaml"
  sed -e "s#runs/quickstart/$(basename "$1" .yaml)/#$RUNS/$2/#g" -e "s#runs/quickstart/$(basename "$1" .yaml)\$#$RUNS/$2#" \
      -e "s#runs/quickstart/vae/export#$RUNS/vae/export#g" \
      -e "s/^seed_everything: 0$/seed_everything: $3/" \
      -e "s/^\(    split_fractions: .*\)$/\1\n    train_subjects: $TRAIN_SUBJECTS/" "$1" \
    | python -c "
import re, sys
scale = $SCALE
def epochs(m): return f'{m.group(1)}{int(m.group(2)) * scale}'
text = re.sub(r'^(  max_epochs: )(\d+)', epochs, sys.stdin.read(), flags=re.M)
text = re.sub(r'^(  check_val_every_n_epoch: )(\d+)', epochs, text, flags=re.M)
text = re.sub(r'^(      preview_every_n_epochs: )(\d+)', epochs, text, flags=re.M)
sys.stdout.write(text)" > "$out"
  echo "$out"
}

PIDS=()
fit() {  # fit NAME CONFIG: in the background, at most two at a time
  local name="$1" cfg="$2"
  if [[ -e "$RUNS/$name/checkpoints/last.ckpt" || -e "$RUNS/$name/export/autoencoder.json" ]]; then
    echo "==> [$name] skipped: exists (FORCE=1 redoes it)"; return
  fi
  echo "==> [$name] anatldm fit --config $cfg (log: $RUNS/logs/$name.log)"
  ( start=$SECONDS; OMP_NUM_THREADS=1 anatldm fit --config "$cfg" > "$RUNS/logs/$name.log" 2>&1 \
      || { tail -n 25 "$RUNS/logs/$name.log" >&2; echo "==> [$name] FAILED" >&2; exit 1; }
    printf '%-22s %5d s\n' "$name" $((SECONDS - start)) >> "$RUNS/stage_times.txt" ) &
  PIDS+=($!)
  if (( ${#PIDS[@]} >= 2 )); then wait "${PIDS[0]}"; PIDS=("${PIDS[@]:1}"); fi
}
drain() { local pid; for pid in "${PIDS[@]}"; do wait "$pid"; done; PIDS=(); }

# the user's own segmenter: the quickstart LDM's data (4 subjects), no anatomy-breaking augmentation
labeller="$RUNS/configs/segmenter.yaml"
python - "$RUNS" "$TRAIN_SUBJECTS" "$SCALE" > "$labeller" <<'PY'
import sys
import yaml
runs, subjects, scale = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
config = yaml.safe_load(open("configs/quickstart/segmenter.yaml"))
data = yaml.safe_load(open("configs/quickstart/ldm.yaml"))["data"]
data["init_args"]["train_subjects"] = subjects
config["data"] = data
config["model"]["init_args"].update(flip_probability=0.0, splice_probability=0.0)
config["trainer"]["max_epochs"] = 15 * scale  # ~700 steps of 16 on the 4 subjects' slices
config["trainer"]["default_root_dir"] = f"{runs}/segmenter"
config["trainer"]["logger"]["init_args"]["save_dir"] = f"{runs}/segmenter"
config["trainer"]["callbacks"][0]["init_args"]["dirpath"] = f"{runs}/segmenter/checkpoints"
print(yaml.safe_dump(config, sort_keys=False))
PY
fit vae "$(config configs/quickstart/vae.yaml vae 0)"
fit segmenter "$labeller"
drain
for s in "${SEEDS[@]}"; do
  fit "ldm_seed$s" "$(config configs/quickstart/ldm.yaml "ldm_seed$s" "$s")"
  fit "ldm_baseline_seed$s" "$(config configs/quickstart/ldm_baseline.yaml "ldm_baseline_seed$s" "$s")"
done
drain
python benchmarks/augment_bench.py --closed-world "$RUNS" --seeds "${SEEDS[@]}" --sampler dpm_solver++_sde --num-inference-steps 20
