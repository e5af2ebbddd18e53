# The first claim's LDM recipe from today's claim configs (sed -f scripts/claim_v1.sed): the lines that the
# amendment of 2026-12-07 15:24 UTC (configs/claim/README.md) added are removed again. Read by scripts/claim.sh
# (CLAIM=v1) and scripts/ablation.sh (the first ablation's variants are copies of the first claim's register arm).
/^ *output_stride: 2 /d
/^ *image_features: true /d
/^ *refine_steps: 250 /d
/^ *cache_latents: true /d
