#!/usr/bin/env bash
# Set up, then run the test suite (tiny models built by the tests, real vLLM, real PEFT, offline).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest "$@"
