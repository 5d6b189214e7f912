#!/usr/bin/env bash
# Set up, then run the test suite (tiny models built by the tests, real vLLM, real PEFT, offline).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
# Two workers, each test file whole on one of them (its module fixtures built once), the files that share the
# session's finished run together (tests/conftest.py): most of a test's time is one core importing libraries and
# starting engines. The slow recipe runs (-m slow) use both cores each: one at a time.
workers=(-n "${DISTILL_TEST_WORKERS:-2}" --dist loadfile)
for arg in "$@"; do
  case "$arg" in slow|-n*|--numprocesses*) workers=() ;; esac
done
exec .venv/bin/python -m pytest "${workers[@]}" "$@"
