#!/usr/bin/env bash
# Set up, then distil the quickstart recipe on CPU, offline: teacher generation through vLLM,
# filtering, LoRA training and evaluation on held-out real data. Extra arguments are recipe
# overrides or flags of `distill run`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/distill run recipes/quickstart/recipe.yaml "$@"
