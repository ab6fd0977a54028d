#!/usr/bin/env bash
# Fuzzes every parser petal exposes to untrusted bytes with cargo fuzz (libFuzzer, nightly):
# the GGUF reader, the whole Model::open path, petal adapter files, PEFT adapter directories,
# JSON-lines training data and the ONNX importer. Each target starts from the seeds in
# fuzz/seeds/ and runs SECONDS (default 600) seconds; a crash stops the run and leaves its input
# in fuzz/artifacts/TARGET/ (turn it into a regression test).
# usage: bash scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-600}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(gguf_reader model_open adapter_file peft_dir jsonl onnx_import)
log() { printf '[fuzz] %s\n' "$*" >&2; }

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

for t in "${TARGETS[@]}"; do
  corpus=target/fuzz-corpus/$t
  mkdir -p "$corpus"
  seeds=fuzz/seeds/$t
  [ "$t" = gguf_reader ] && seeds=fuzz/seeds/model_open
  [ -d "$seeds" ] && cp -n "$seeds"/* "$corpus"/ 2>/dev/null || true
  log "$t for $SECONDS_EACH s"
  start=$(date +%s)
  # -rss_limit_mb: a parser that allocates what a hostile size asks for fails here.
  status=0
  cargo +nightly fuzz run --fuzz-dir fuzz "$t" "$corpus" -- \
    -max_total_time="$SECONDS_EACH" -rss_limit_mb=512 -max_len=262144 -print_final_stats=1 \
    > "target/fuzz-$t.log" 2>&1 || status=$?
  grep -E "^#[0-9]+ *(DONE|INITED)|ERROR|SUMMARY|panicked" "target/fuzz-$t.log" >&2 || true
  runs=$(grep -oE "stat::number_of_executed_units: *[0-9]+" "target/fuzz-$t.log" | grep -oE "[0-9]+$" || echo "?")
  log "$t: $runs runs in $(( $(date +%s) - start )) s, exit $status"
  [ "$status" = 0 ] || { log "$t found a crash: see target/fuzz-$t.log and fuzz/artifacts/$t/"; exit 1; }
done
