#!/usr/bin/env bash
# petal (f32, q8_0, q4_0) beside ONNX Runtime (f32 and quantize_dynamic int8) on
# all-MiniLM-L6-v2, same machine, same threads, one table with ratios to ONNX Runtime int8.
# tract: the MiniLM f32 export uses com.microsoft.MultiHeadAttention, which tract cannot run; its
# row compares tract and petal on paraphrase-MiniLM-L3-v2 instead (see the tract line).
# usage: bash bench/peers.sh [THREADS...]   (default: 1 2)
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=("${@:-1 2}")
[ $# -eq 0 ] && THREADS=(1 2)
RUNS=${RUNS:-30}
ASSETS=${PETAL_ASSETS:-assets}
bash scripts/setup.sh >&2
"$ASSETS/pyenv/bin/python" -m pip install --quiet --disable-pip-version-check onnxruntime==1.32.0 onnx==1.23.2 >&2
PETAL=target/release/petal
OUT=target/bench
mkdir -p "$OUT"
[ -f "$OUT/minilm-f32.gguf" ] || "$PETAL" -q convert "$ASSETS/minilm" -o "$OUT/minilm-f32.gguf" --dtype f32 >/dev/null
for t in "${THREADS[@]}"; do
  "$ASSETS/pyenv/bin/python" bench/peers.py "$t" "$RUNS" "$OUT/ort-$t.json"
  for d in f32 q8_0 q4_0; do
    m="$ASSETS/models/minilm-$d.gguf"; [ "$d" = f32 ] && m="$OUT/minilm-f32.gguf"
    "$PETAL" --threads "$t" -q bench "$m" --runs "$RUNS" --json > "$OUT/petal-$d-$t.json"
  done
done
"$ASSETS/pyenv/bin/python" - "$OUT" "${THREADS[@]}" <<'PY'
import json, sys
out, threads = sys.argv[1], sys.argv[2:]
rows = [("b1_s16", 1, 16), ("b1_s64", 1, 64), ("b1_s128", 1, 128), ("b8_s128", 8, 128)]
print("| threads | engine | b1 s16 ms | b1 s64 ms | b1 s128 ms | b8x128 ms | cold start ms | ratio to ORT int8 (b1 s128) |")
print("|---|---|---|---|---|---|---|---|")
for t in threads:
    ort = json.load(open(f"{out}/ort-{t}.json"))
    base = ort["ort-int8"]["b1_s128"]["median_ms"]
    for name in ("ort-f32", "ort-int8"):
        r = ort[name]
        cells = [f'{r[k]["median_ms"]:.2f}' for k, _, _ in rows]
        print(f"| {t} | {name} | " + " | ".join(cells) + f' | {r["session_plus_first_run_ms"]:.1f} | {r["b1_s128"]["median_ms"] / base:.2f} |')
    for d in ("f32", "q8_0", "q4_0"):
        p = json.load(open(f"{out}/petal-{d}-{t}.json"))
        lat = {(l["batch"], l["seq"]): l["median_ms"] for l in p["latency"]}
        cells = [f"{lat[(b, s)]:.2f}" for _, b, s in rows]
        print(f"| {t} | petal {d} | " + " | ".join(cells) + f' | {p["cold_start_median_ms"]:.1f} | {lat[(1, 128)] / base:.2f} |')
print("\ntract: cannot run the all-MiniLM-L6-v2 f32 export (com.microsoft.MultiHeadAttention); tests/tests/onnx.rs checks tract against petal on paraphrase-MiniLM-L3-v2.")
PY
