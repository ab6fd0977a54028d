#!/usr/bin/env bash
# Load on `petal serve` (bench/serve.py): 1 and 32 concurrent clients for DURATION seconds
# (default 60), texts of 8 to 128 tokens, then one client while an adapter trains; beside the
# texts per second of `petal embed` on the same texts. The service is the device profile built
# for this machine (release, no converters).
# usage: [DURATION=60] [THREADS=2] bash bench/serve.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >&2
cargo build --quiet --profile device -p petal-tools --no-default-features >&2
mkdir -p target/bench
"${PETAL_ASSETS:-assets}/pyenv/bin/python" bench/serve.py target/device/petal \
  "${PETAL_ASSETS:-assets}/models/minilm-q8_0.gguf" "${THREADS:-2}" "${DURATION:-60}" \
  target/bench/serve.json
