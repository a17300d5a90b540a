#!/usr/bin/env bash
# Render a run's self-contained report.html in headless Chromium (Debian: apt-get install chromium)
# and save a full-page screenshot, to look at.
#
# usage: benchmarks/html_report_screenshot.sh RUN_DIR OUT.png [WIDTHxHEIGHT]
set -euo pipefail
run_dir=$1 out=$2 size=${3:-1400x4000}
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome) \
  || { echo "no chromium on PATH (apt-get install chromium)" >&2; exit 1; }
bench report "$run_dir" > /dev/null  # (re)writes report.html
page=$(realpath "$run_dir/report.html")
# A copy with no network access at all: the page must not need any.
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --disable-background-networking \
  --proxy-server="127.0.0.1:9" --window-size="${size/x/,}" --screenshot="$(realpath -m "$out")" "file://$page" 2>/dev/null
echo "screenshot: $out"
