#!/usr/bin/env bash
# llama.cpp reads petal's files and agrees with them, and petal reads llama.cpp's.
#
# Builds llama.cpp's `llama-embedding` from the source vendored in the llama-cpp-python==0.3.36
# source distribution (PyPI; cmake and ninja from PyPI too) under target/llama.cpp, then
# (tests/interop/llama_cpp.py):
#   - embeds the 66 MiniLM golden texts with petal's F32, F16 and Q8_0 files in both engines and
#     compares them (cosine at least 0.9999 for F32 and F16, 0.999 for Q8_0);
#   - runs petal's file of the tiny BERT sequence classifier with llama.cpp's rank pooling and
#     compares its class probabilities with `petal classify`;
#   - converts the MiniLM checkpoint with llama.cpp's own convert_hf_to_gguf.py (torch and
#     transformers from the PEFT environment, tests/interop/peft_load.sh) and checks that petal
#     opens that file, rebuilds its WordPiece tokenizer from the ggml vocabulary with ids
#     identical to Hugging Face tokenizers on the golden texts, and embeds them as the golden.
# llama.cpp is built natively and run with --no-repack: its AMX weight repacking crashed on a
# Q8_0 MiniLM on a CPU with AMX.
# usage: bash tests/interop/llama_cpp.sh [PETAL_BINARY]
set -euo pipefail
cd "$(dirname "$0")/../.."
PETAL=${1:-target/debug/petal}
ROOT=$PWD
WORK=$ROOT/target/llama.cpp
VERSION=0.3.36
PEFT_VENV=$ROOT/target/peft-venv
log() { printf '[llama.cpp] %s\n' "$*" >&2; }
mkdir -p "$WORK"

# The build tools in their own environment.
if ! "$WORK/venv/bin/python" -c "import cmake, ninja" 2>/dev/null; then
  log "installing cmake and ninja into $WORK/venv"
  python3 -m venv "$WORK/venv"
  "$WORK/venv/bin/python" -m pip install --quiet --disable-pip-version-check cmake==4.4.5 ninja==1.13.2
fi
export PATH="$WORK/venv/bin:$PATH"

SRC=$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp
if [ ! -f "$SRC/CMakeLists.txt" ]; then
  log "downloading the llama-cpp-python==$VERSION source distribution"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --no-binary llama-cpp-python \
    -d "$WORK" "llama-cpp-python==$VERSION"
  tar -xzf "$WORK/llama_cpp_python-$VERSION.tar.gz" -C "$WORK"
fi
BIN=$WORK/build/bin/llama-embedding
if [ ! -x "$BIN" ]; then
  log "building llama-embedding (about 8 minutes on 2 cores)"
  start=$(date +%s)
  cmake -S "$SRC" -B "$WORK/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF \
    -DGGML_NATIVE=ON >"$WORK/cmake.log" 2>&1 || { tail -30 "$WORK/cmake.log"; exit 1; }
  cmake --build "$WORK/build" --target llama-embedding -j "$(nproc)" >"$WORK/build.log" 2>&1 \
    || { tail -30 "$WORK/build.log"; exit 1; }
  log "built in $(( $(date +%s) - start )) s"
fi

# llama.cpp's converter needs torch and transformers (the PEFT environment has them) and
# gguf-py's own dependencies.
if ! "$PEFT_VENV/bin/python" -c "import torch, transformers" 2>/dev/null; then
  log "no torch in $PEFT_VENV: run tests/interop/peft_load.sh first"
  exit 1
fi
"$PEFT_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
  tqdm==4.70.1 pyyaml==6.0.4 requests==2.34.2 sentencepiece==0.2.3 protobuf==7.36.2

mkdir -p "$WORK/models"
for dtype in f32 f16 q8_0; do
  out=$WORK/models/minilm-$dtype.gguf
  "$PETAL" -q convert assets/minilm --dtype "$dtype" -o "$out" >/dev/null
done
# A sequence classifier (the tiny BERT golden, 3 labels): llama.cpp's rank pooling applies its head.
"$PETAL" -q convert testdata/golden/tiny-bert --dtype f32 -o "$WORK/models/tiny-bert-f32.gguf" >/dev/null
log "llama.cpp's convert_hf_to_gguf.py on assets/minilm"
"$PEFT_VENV/bin/python" "$SRC/convert_hf_to_gguf.py" assets/minilm --outtype f32 \
  --outfile "$WORK/models/minilm-llama-f32.gguf" >"$WORK/convert.log" 2>&1 \
  || { tail -30 "$WORK/convert.log"; exit 1; }

"$PEFT_VENV/bin/python" tests/interop/llama_cpp.py "$PETAL" "$BIN" "$WORK/models"
