"""ONNX Runtime on all-MiniLM-L6-v2, timed the way `petal bench` times petal: batch-1 latency at
16, 64 and 128 tokens, batch 8 x 128, session creation plus first run. f32 is the export in
assets/minilm-onnx; int8 is onnxruntime's quantize_dynamic of it.

usage: peers.py THREADS RUNS OUT_JSON
"""
import json
import os
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASSETS = os.environ.get("PETAL_ASSETS", os.path.join(ROOT, "assets"))
F32 = os.path.join(ASSETS, "minilm-onnx", "onnx", "model.onnx")
INT8 = os.path.join(ROOT, "target", "bench", "minilm-int8-dynamic.onnx")


def session(path, threads):
    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = 1
    o.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])


def feeds(sess, batch, seq):
    ids = np.full((batch, seq), 2088, dtype=np.int64)
    ids[:, 0], ids[:, -1] = 101, 102
    f = {}
    for i in sess.get_inputs():
        if i.name == "input_ids":
            f[i.name] = ids
        elif i.name == "attention_mask":
            f[i.name] = np.ones_like(ids)
        else:
            f[i.name] = np.zeros_like(ids)
    return f


def timed(sess, batch, seq, runs):
    f = feeds(sess, batch, seq)
    for _ in range(3):
        sess.run(None, f)
    t = []
    for _ in range(runs):
        s = time.perf_counter()
        sess.run(None, f)
        t.append((time.perf_counter() - s) * 1e3)
    t.sort()
    return {"median_ms": statistics.median(t), "p95_ms": t[min(len(t) - 1, round(0.95 * (len(t) - 1)))]}


def main():
    threads, runs, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    os.makedirs(os.path.dirname(INT8), exist_ok=True)
    if not os.path.exists(INT8):
        quantize_dynamic(F32, INT8, weight_type=QuantType.QInt8)
    result = {"onnxruntime": ort.__version__, "threads": threads}
    for name, path in [("ort-f32", F32), ("ort-int8", INT8)]:
        s = time.perf_counter()
        sess = session(path, threads)
        sess.run(None, feeds(sess, 1, 16))
        cold = (time.perf_counter() - s) * 1e3
        r = {"session_plus_first_run_ms": cold}
        for seq in (16, 64, 128):
            r[f"b1_s{seq}"] = timed(sess, 1, seq, runs)
        r["b8_s128"] = timed(sess, 8, 128, max(3, runs // 4))
        result[name] = r
    with open(out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
