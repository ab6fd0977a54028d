#!/usr/bin/env bash
# petal (f32, q8_0, q4_0) beside ONNX Runtime (f32 and quantize_dynamic int8) on
# all-MiniLM-L6-v2, same machine, same threads, one table with ratios to ONNX Runtime int8.
# tract: the MiniLM f32 export uses com.microsoft.MultiHeadAttention, which tract cannot run; its
# row compares tract and petal on paraphrase-MiniLM-L3-v2 instead (see the tract line).
# usage: [RUNS=30] [ROUNDS=3] bash bench/peers.sh [THREADS...]   (default: 1 2)
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
# Rounds alternate the engines, so that a machine whose speed drifts (a shared VM) moves all of
# them alike; each cell is the median of its per-round medians, each ratio the median of the
# per-round ratios (with their range).
ROUNDS=${ROUNDS:-3}
for r in $(seq 1 "$ROUNDS"); do
  for t in "${THREADS[@]}"; do
    echo "[peers] round $r/$ROUNDS, $t thread(s)" >&2
    "$ASSETS/pyenv/bin/python" bench/peers.py "$t" "$RUNS" "$OUT/ort-$t-r$r.json"
    for d in f32 q8_0 q4_0; do
      m="$ASSETS/models/minilm-$d.gguf"; [ "$d" = f32 ] && m="$OUT/minilm-f32.gguf"
      "$PETAL" --threads "$t" -q bench "$m" --runs "$RUNS" --json > "$OUT/petal-$d-$t-r$r.json"
    done
  done
done
"$ASSETS/pyenv/bin/python" - "$OUT" "$ROUNDS" "${THREADS[@]}" <<'PY'
import json, statistics, sys
out, rounds, threads = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
rows = [("b1_s16", 1, 16), ("b1_s64", 1, 64), ("b1_s128", 1, 128), ("b8_s128", 8, 128)]
med = statistics.median


def engines(t, r):
    """Cells of every engine in round r: {name: ([ms per row], cold start ms)}."""
    ort = json.load(open(f"{out}/ort-{t}-r{r}.json"))
    e = {}
    for name in ("ort-f32", "ort-int8"):
        o = ort[name]
        e[name.replace("ort-", "ORT ")] = ([o[k]["median_ms"] for k, _, _ in rows], o["session_plus_first_run_ms"])
    for d in ("f32", "q8_0", "q4_0"):
        p = json.load(open(f"{out}/petal-{d}-{t}-r{r}.json"))
        lat = {(l["batch"], l["seq"]): l["median_ms"] for l in p["latency"]}
        e[f"petal {d}"] = ([lat[(b, s)] for _, b, s in rows], p["cold_start_median_ms"])
    return e


print(f"medians of {rounds} alternating rounds; ratio = median (min-max) over rounds of the engine's time / ORT int8's in the same round")
print("| threads | engine | b1 s16 ms | b1 s64 ms | b1 s128 ms | b8x128 ms | cold start ms | vs ORT int8 b1 s128 | vs ORT int8 b1 s16 | vs ORT int8 b8x128 |")
print("|---|---|---|---|---|---|---|---|---|---|")
for t in threads:
    per = [engines(t, r) for r in range(1, rounds + 1)]
    for name in per[0]:
        cells = [med(p[name][0][i] for p in per) for i in range(len(rows))]
        cold = med(p[name][1] for p in per)
        ratios = []
        for i in (2, 0, 3):
            v = [p[name][0][i] / p["ORT int8"][0][i] for p in per]
            ratios.append(f"{med(v):.2f} ({min(v):.2f}-{max(v):.2f})")
        print(f"| {t} | {name} | " + " | ".join(f"{c:.2f}" for c in cells) + f" | {cold:.1f} | " + " | ".join(ratios) + " |")
print("\ntract: cannot run the all-MiniLM-L6-v2 f32 export (com.microsoft.MultiHeadAttention); tests/tests/onnx.rs checks tract against petal on paraphrase-MiniLM-L3-v2.")
PY
