"""Real clients against `petal serve`: Hugging Face's InferenceClient (feature extraction and
text classification, given only the service's URL) and OpenAI's embeddings.create get the
vectors and labels `petal embed` and `petal classify` give on the same model.

usage: serve_clients.py HOST_PETAL MODEL ADAPTER [DEVICE_PETAL QEMU...]
With a device binary (and the QEMU command line that runs it), the device service is started
under QEMU and answers the same client from the host.
"""

import json
import math
import subprocess
import sys
import threading

from huggingface_hub import InferenceClient
from openai import OpenAI

# Same binary, same texts, one text a request as the command line's: the same arithmetic.
SAME_BINARY_MAX_ABS = 1e-6
# Another ISA's kernels (the device build under QEMU) against the host's: least cosine.
CROSS_ISA_MIN_COS = 0.9999

TEXTS = [
    "A cat sits on the mat.",
    "Markets fell sharply today after the announcement.",
    "WINNER!! You have been selected for a free cruise, call 09061701461 now",
    "Are we still meeting for lunch at noon?",
]


def fail(msg):
    print(f"[serve-clients] FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def start(cmd):
    """Starts `cmd` (a petal serve command on port 0); returns (process, base URL)."""
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    seen = []
    for line in p.stderr:
        seen.append(line)
        if "listening on http://" in line:
            url = line.split("listening on ")[1].strip()
            threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
            return p, url
    fail("petal serve ended before listening:\n" + "".join(seen))


def stop(p):
    p.terminate()
    code = p.wait(timeout=60)
    if code != 0:
        fail(f"petal serve exited {code} after SIGTERM")


def cli(petal, args):
    out = subprocess.run([petal, "-q", *args], capture_output=True, text=True, check=True)
    return [json.loads(l) for l in out.stdout.splitlines()]


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def check_embeddings(got, want, label, same_binary):
    if len(got) != len(want):
        fail(f"{label}: {len(got)} dimensions, expected {len(want)}")
    if same_binary:
        worst = max(abs(a - b) for a, b in zip(got, want))
        if worst > SAME_BINARY_MAX_ABS:
            fail(f"{label}: largest difference {worst}")
    else:
        c = cosine(got, want)
        if c < CROSS_ISA_MIN_COS:
            fail(f"{label}: cosine {c}")
        return c
    return 1.0


def embedding_clients(url, want, same_binary, where):
    hub = InferenceClient()
    least = 1.0
    for text, w in zip(TEXTS, want):
        got = hub.feature_extraction(text, model=url)
        least = min(least, check_embeddings([float(x) for x in got[0]], w, f"{where} hub feature_extraction {text!r}", same_binary))
    oa = OpenAI(base_url=url + "/v1", api_key="unused")
    for text, w in zip(TEXTS, want):
        r = oa.embeddings.create(model="minilm", input=[text])
        least = min(least, check_embeddings(r.data[0].embedding, w, f"{where} openai embeddings.create {text!r}", same_binary))
    print(f"[serve-clients] {where}: InferenceClient.feature_extraction and openai embeddings.create "
          f"on {len(TEXTS)} texts agree with petal embed (least cosine {least:.7f})")


def main():
    host, model, adapter = sys.argv[1:4]
    device = sys.argv[4:]
    want = [e["embedding"] for t in TEXTS for e in cli(host, ["embed", model, "--json", t])]

    p, url = start([host, "serve", model, "--bind", "127.0.0.1:0"])
    try:
        embedding_clients(url, want, True, "host")
    finally:
        stop(p)

    # A classifier: the service with an adapter as its default head.
    p, url = start([host, "serve", model, "--bind", "127.0.0.1:0",
                    "--adapter", f"spam={adapter}", "--default-adapter", "spam"])
    try:
        hub = InferenceClient()
        for text in TEXTS:
            c = cli(host, ["classify", model, "--adapter", adapter, "--json", text])[0]
            got = hub.text_classification(text, model=url)
            # TEI answers one text with one flat list; the client hands back its first element.
            top = got[0] if isinstance(got, list) else got
            if top.label != c["label"] or abs(top.score - c["score"]) > 1e-5:
                fail(f"text_classification {text!r}: {top} against petal classify {c}")
        print(f"[serve-clients] host: InferenceClient.text_classification on {len(TEXTS)} texts "
              "gives petal classify's labels and scores")
    finally:
        stop(p)

    if device:
        petal_dev, qemu = device[0], device[1:]
        p, url = start([*qemu, petal_dev, "serve", model, "--bind", "127.0.0.1:0"])
        try:
            embedding_clients(url, want, False, "device build under " + qemu[0])
        finally:
            stop(p)


main()
