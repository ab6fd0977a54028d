#!/usr/bin/env bash
# The project's whole test suite, as CI runs it on a fresh machine: installs what it needs,
# fetches and converts the real model (scripts/setup.sh), checks the no_std core builds for a
# Cortex-M, and runs every cargo test (goldens, hostile files, gguf-py interop).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
log() { printf '[test] %s\n' "$*" >&2; }

log "rust targets"
rustup target add thumbv7em-none-eabihf >/dev/null 2>&1 || rustup target add thumbv7em-none-eabihf

PETAL_PROFILE=dev bash scripts/setup.sh

log "no_std core for thumbv7em-none-eabihf"
cargo build --quiet -p petal-runtime --no-default-features --target thumbv7em-none-eabihf
cargo build --quiet -p petal-board --target thumbv7em-none-eabihf

log "cargo test --workspace"
cargo test --workspace 2>&1 | tee target/test.log
status=${PIPESTATUS[0]}
log "finished in $(( $(date +%s) - start )) s"
grep -h "^test result:" target/test.log | awk '{p+=$4; f+=$6} END {printf "summary: %d passed, %d failed\n", p, f}'
exit "$status"
