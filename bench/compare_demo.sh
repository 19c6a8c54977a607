#!/usr/bin/env bash
# The compare report shown in docs/compare.md: two mock servers (4 and 16 streams at full
# speed), a closed-loop and a Poisson sweep, 2 repeats; then a screenshot of compare.html
# in headless Chromium (docs/compare-report.png). Everything on 127.0.0.1; the servers
# started here are stopped by pid.
#   bash bench/compare_demo.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-bench/out/compare-demo}
rm -rf "$OUT" && mkdir -p "$OUT"
for i in $(seq 1 40); do echo "{\"id\":\"q$i\",\"prompt\":\"benchmark prompt $i\"}"; done > "$OUT/prompts.jsonl"
$PY -m llmbatch mock-server --port 0 --tokens 24 --ttft-ms 20 --itl-ms 10 --capacity 4 2>"$OUT/small.log" &
SMALL=$!
$PY -m llmbatch mock-server --port 0 --tokens 24 --ttft-ms 20 --itl-ms 10 --capacity 16 2>"$OUT/big.log" &
BIG=$!
trap 'kill $SMALL $BIG 2>/dev/null || true' EXIT
for log in "$OUT/small.log" "$OUT/big.log"; do
  for _ in $(seq 1 100); do grep -q listening "$log" && break; sleep 0.1; done
done
url() { grep -o 'http://[^ ]*' "$1"; }
$PY -m llmbatch compare "$OUT/prompts.jsonl" --no-progress -o "$OUT/cmp" \
  --target "small=$(url "$OUT/small.log"),model=mock-small" \
  --target "big=$(url "$OUT/big.log"),model=mock-big" \
  --profile concurrent:2,4,8,16,32 --profile poisson:20,40,80,160 \
  --requests 64 --warmup 10% --cooldown 10% --repeats 2
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1200,2750 \
  --screenshot="$OUT/compare-report.png" "$OUT/cmp/compare.html" 2>/dev/null
echo "report: $OUT/cmp/compare.html, screenshot: $OUT/compare-report.png"
