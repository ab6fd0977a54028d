#!/usr/bin/env bash
# Real clients against `petal serve` (tests/interop/serve_clients.py): Hugging Face's
# InferenceClient and OpenAI's client, pinned from PyPI into the project's Python environment,
# against the host build and against the aarch64 device build under qemu-aarch64.
# usage: bash tests/interop/serve_clients.sh [HOST_PETAL [DEVICE_PETAL]]
set -euo pipefail
cd "$(dirname "$0")/../.."
HOST=${1:-target/debug/petal}
DEVICE=${2:-}
PY=${PETAL_ASSETS:-assets}/pyenv/bin/python
MODEL=${PETAL_ASSETS:-assets}/models/minilm-q8_0.gguf
log() { printf '[serve-clients] %s\n' "$*" >&2; }
"$PY" -m pip install --quiet --disable-pip-version-check huggingface_hub==2.4.0 openai==3.60.0
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
log "training a head-only adapter on the sms-spam few-shot split"
"$HOST" -q adapt "$MODEL" --method head --train bench/data/fewshot/sms-spam/train-k8-s0.jsonl \
  -o "$WORK/spam.adapter" >/dev/null
args=("$HOST" "$MODEL" "$WORK/spam.adapter")
if [ -n "$DEVICE" ]; then
  args+=("$DEVICE" qemu-aarch64 -L /usr/aarch64-linux-gnu)
fi
# No proxy for the loopback service, and no token lookups.
NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost HF_HUB_OFFLINE=0 HF_HUB_DISABLE_TELEMETRY=1 \
  "$PY" tests/interop/serve_clients.py "${args[@]}"
