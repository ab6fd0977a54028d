#!/usr/bin/env bash
# The main job on the real all-MiniLM-L6-v2 (after scripts/setup.sh): look inside the q8_0 file,
# embed text, learn a spam filter from 16 examples per class, classify with it, and score it on
# the 1000-message test split.
set -euo pipefail
cd "$(dirname "$0")/.."
PETAL=${PETAL:-target/release/petal}
MODEL=assets/models/minilm-q8_0.gguf
DATA=bench/data/fewshot/sms-spam
OUT=${PETAL_OUT:-target/demo}
mkdir -p "$OUT"
step() { printf '\n== %s\n' "$*"; }

step "petal inspect $MODEL (first lines)"
"$PETAL" inspect "$MODEL" | head -n 4

step "petal embed: first 6 of 384 dimensions"
"$PETAL" embed "$MODEL" "A cat sits on the mat." "Markets fell sharply today." | cut -d' ' -f1-6

step "petal adapt (default recipe): a spam filter from $DATA/train-k16-s0.jsonl (16 examples per class)"
"$PETAL" adapt "$MODEL" --train "$DATA/train-k16-s0.jsonl" -o "$OUT/spam.adapter"

step "petal classify with the adapter"
"$PETAL" classify "$MODEL" --adapter "$OUT/spam.adapter" \
  "WINNER!! You have been selected for a free cruise, call 09061701461 now" \
  "Are we still meeting for lunch at noon?"

step "petal eval on $DATA/test.jsonl"
"$PETAL" eval "$MODEL" --adapter "$OUT/spam.adapter" --test "$DATA/test.jsonl"
