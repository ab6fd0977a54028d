#!/usr/bin/env bash
# PEFT itself loads the adapter directories petal writes (LoRA, IA3, prompt and prefix tuning on
# tiny-bert) and computes the same class probabilities as `petal classify` (peft_load.py).
# Installs pinned torch, transformers and peft from PyPI into target/peft-venv on first use
# (about 6 GB: PyPI's torch wheels carry the CUDA libraries; a few minutes).
# usage: bash tests/interop/peft_load.sh [PETAL_BINARY]
set -euo pipefail
cd "$(dirname "$0")/../.."
PETAL=${1:-target/debug/petal}
VENV=target/peft-venv
PINS=(torch==2.15.0 transformers==5.24.0 peft==0.21.2 safetensors==0.8.0 numpy==2.4.6)
log() { printf '[peft] %s\n' "$*" >&2; }

if ! "$VENV/bin/python" -c "import torch, transformers, peft, safetensors" 2>/dev/null; then
  log "installing ${PINS[*]} into $VENV"
  start=$(date +%s)
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --no-cache-dir --disable-pip-version-check "${PINS[@]}"
  log "installed in $(( $(date +%s) - start )) s"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
HF=testdata/golden/tiny-bert
"$PETAL" -q convert "$HF" --dtype f32 -o "$work/tiny.gguf"
for m in lora ia3 prompt prefix; do
  "$PETAL" -q adapt "$work/tiny.gguf" --train tests/interop/peft_train.jsonl --method "$m" \
    --epochs 3 --seed 1 -o "$work/$m" >/dev/null
done
# LoRA on the feed-forward output and not the attention output, whose PEFT name is a suffix of
# the other's: the adapter must name exactly the modules it trained.
"$PETAL" -q adapt "$work/tiny.gguf" --train tests/interop/peft_train.jsonl --method lora \
  --lora-targets q,down --epochs 3 --seed 1 -o "$work/lora-ffn" >/dev/null
HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error "$VENV/bin/python" tests/interop/peft_load.py \
  "$PETAL" "$work/tiny.gguf" "$HF" "$work/lora" "$work/lora-ffn" "$work/ia3" "$work/prompt" "$work/prefix"
