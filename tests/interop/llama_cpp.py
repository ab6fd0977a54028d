"""llama.cpp and petal on each other's MiniLM files (tests/interop/llama_cpp.sh sets it up).

usage: python llama_cpp.py PETAL LLAMA_EMBEDDING MODELS_DIR

MODELS_DIR holds petal's minilm-{f32,f16,q8_0}.gguf and llama.cpp's minilm-llama-f32.gguf
(from its convert_hf_to_gguf.py). Checks:
  - llama.cpp's embeddings of petal's files against petal's, on the 66 MiniLM golden texts
    (both at 512 tokens, llama.cpp not truncating): least cosine per file type;
  - petal on llama.cpp's file: token ids identical to the golden's (Hugging Face tokenizers,
    truncated at 256) and embeddings against the golden's.
Prints one line in cargo's test-result format and exits non-zero on any failure.
"""

import json
import math
import os
import subprocess
import sys
import tempfile

# Least cosine between llama.cpp's and petal's embeddings of the same file.
LLAMA_MIN_COS = {"f32": 0.9999, "f16": 0.9999, "q8_0": 0.999}
# petal on llama.cpp's f32 file against the golden (ONNX Runtime f32): as petal's own f32 file.
LLAMA_FILE_GOLDEN_MIN_COS = 0.99999
# Largest difference of a class probability, llama.cpp's rank pooling against petal (f32 files).
CLASSIFIER_PROB_ABS_TOL = 1e-4
# The separator of prompts given to llama-embedding (the texts have no such string).
SEP = "<#petal-sep#>"
# llama-embedding's output is now and then cut short: tries per run.
TRIES = 3

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "..", "..", "testdata", "golden", "minilm-l6")


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return dot / (na * nb) if na and nb else float("nan")


def petal_embed(petal, model, texts, extra=()):
    out = subprocess.run([petal, "-q", "embed", model, "--json", *extra, "--", *texts],
                         check=True, capture_output=True, text=True).stdout
    return [json.loads(line)["embedding"] for line in out.splitlines()]


def petal_ids(petal, model, texts):
    out = subprocess.run([petal, "-q", "tokenize", model, "--json", "--max-length", "256", "--", *texts],
                         check=True, capture_output=True, text=True).stdout
    return [json.loads(line)["ids"] for line in out.splitlines()]


def llama_embed(binary, model, texts, pooling="mean", width=384):
    """llama-embedding's pooled embeddings of `texts`, in order: mean-pooled and L2-normalized,
    or with `pooling="rank"` the classifier's `width` raw outputs."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as f:
        f.write(SEP.join(texts))
        prompts = f.name
    try:
        for attempt in range(TRIES):
            r = subprocess.run(
                [binary, "-m", model, "-f", prompts, "--embd-separator", SEP,
                 "--embd-output-format", "raw",
                 "--embd-normalize", "2" if pooling == "mean" else "-1", "--pooling", pooling,
                 "-c", "512", "-b", "512", "-ub", "512", "-t", "2", "--no-repack",
                 "--no-warmup"],
                capture_output=True, text=True)
            rows = [[float(x) for x in line.split()] for line in r.stdout.splitlines() if line.strip()]
            if r.returncode == 0 and len(rows) == len(texts) and all(len(x) == width for x in rows):
                return rows
            print(f"llama-embedding on {os.path.basename(model)}: exit {r.returncode}, "
                  f"{len(rows)} rows for {len(texts)} texts (try {attempt + 1}); stderr tail:\n"
                  + "\n".join(r.stderr.splitlines()[-8:]), file=sys.stderr)
        raise SystemExit(f"llama-embedding failed {TRIES} times on {model}")
    finally:
        os.unlink(prompts)


def golden():
    from safetensors.numpy import load_file
    meta = json.load(open(os.path.join(GOLDEN, "golden.json"), encoding="utf-8"))
    g = load_file(os.path.join(GOLDEN, "golden.safetensors"))
    texts = meta["texts"]
    ids = [g[f"input_ids.{i}"].tolist() for i in range(len(texts))]
    return texts, ids, g["mean_pooled_normalized"].tolist()


def main():
    petal, binary, models = sys.argv[1:4]
    texts, want_ids, want_emb = golden()
    # An empty prompt is dropped by llama-embedding's splitting: compare the others.
    nonempty = [t for t in texts if t.strip()]
    results = []

    for dtype, bar in LLAMA_MIN_COS.items():
        model = os.path.join(models, f"minilm-{dtype}.gguf")
        ours = petal_embed(petal, model, nonempty, ["--max-length", "512"])
        theirs = llama_embed(binary, model, nonempty)
        cos = [cosine(a, b) for a, b in zip(ours, theirs)]
        least = min(cos)
        mean = sum(cos) / len(cos)
        ok = least >= bar
        results.append(ok)
        print(f"llama.cpp on petal's {dtype:5s} file vs petal: mean cosine {mean:.6f}, "
              f"least {least:.6f} (bar {bar}) {'ok' if ok else 'FAILED'}")

    # The classifier: llama.cpp's rank pooling (CLS, dense + tanh, output layer) against
    # `petal classify`, as class probabilities.
    tiny = os.path.join(models, "tiny-bert-f32.gguf")
    texts_cls = ["this movie was great", "the bus leaves at noon", "i did not like it at all", "ok"]
    out = subprocess.run([petal, "-q", "classify", tiny, "--json", "--", *texts_cls],
                         check=True, capture_output=True, text=True).stdout
    ours = [json.loads(line)["scores"] for line in out.splitlines()]
    labels = list(ours[0])
    logits = llama_embed(binary, tiny, texts_cls, pooling="rank", width=len(labels))
    worst = 0.0
    for mine, z in zip(ours, logits):
        m = max(z)
        e = [math.exp(v - m) for v in z]
        probs = [v / sum(e) for v in e]
        worst = max(worst, max(abs(p - mine[l]) for p, l in zip(probs, labels)))
    ok = worst <= CLASSIFIER_PROB_ABS_TOL
    results.append(ok)
    print(f"llama.cpp's rank pooling on petal's classifier vs petal classify: largest probability "
          f"difference {worst:.2e} (tolerance {CLASSIFIER_PROB_ABS_TOL}) {'ok' if ok else 'FAILED'}")

    theirs = os.path.join(models, "minilm-llama-f32.gguf")
    got_ids = petal_ids(petal, theirs, texts)
    bad = [i for i, (a, b) in enumerate(zip(got_ids, want_ids)) if a != b]
    results.append(not bad and len(got_ids) == len(want_ids))
    print(f"petal on llama.cpp's file: token ids of {len(texts) - len(bad)}/{len(texts)} golden "
          f"texts identical to Hugging Face tokenizers {'ok' if not bad else 'FAILED ' + str(bad[:5])}")
    emb = petal_embed(petal, theirs, texts, ["--max-length", "256"])
    cos = [cosine(a, b) for a, b in zip(emb, want_emb)]
    least = min(cos)
    ok = least >= LLAMA_FILE_GOLDEN_MIN_COS and len(cos) == len(texts)
    results.append(ok)
    print(f"petal on llama.cpp's f32 file vs the golden: least cosine {least:.7f} "
          f"(bar {LLAMA_FILE_GOLDEN_MIN_COS}) {'ok' if ok else 'FAILED'}")

    failed = results.count(False)
    print(f"test result: {'ok' if not failed else 'FAILED'}. {len(results) - failed} passed; "
          f"{failed} failed; (llama_cpp.py)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
