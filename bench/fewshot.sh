#!/usr/bin/env bash
# Few-shot benchmark of every adaptation method (bench/fewshot.py) on the q8_0 MiniLM, with the
# release build, on this machine. Results accumulate in target/bench/fewshot.jsonl (a rerun
# skips finished runs); the table goes to stdout.
# usage: bash bench/fewshot.sh [--methods a,b] [--datasets a,b] [--ks 16,8] [--seeds 0,1,2]
set -euo pipefail
cd "$(dirname "$0")/.."
ASSETS=${PETAL_ASSETS:-assets}
bash scripts/setup.sh >&2
mkdir -p target/bench
python3 bench/fewshot.py target/release/petal "$ASSETS/models/minilm-q8_0.gguf" target/bench/fewshot.jsonl "$@"
