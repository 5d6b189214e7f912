#!/usr/bin/env bash
# Print the path of a headless-capable Chromium, installing Debian's package when none is found (needs root).
# Used by the test that opens report.html in a real browser.
set -euo pipefail
for b in chromium chromium-browser google-chrome; do
  command -v "$b" >/dev/null && { command -v "$b"; exit 0; }
done
export DEBIAN_FRONTEND=noninteractive
log=${TMPDIR:-/tmp}/distill-browser-apt.log
apt-get update -q >"$log" 2>&1
apt-get -y -q install --no-install-recommends chromium >>"$log" 2>&1 || { echo "installing chromium failed; see $log" >&2; exit 1; }
command -v chromium
