"""Load on `petal serve` (a benchmark, not a test): texts of 8 to 128 tokens from the sms-spam
test split, sent one text a request by 1 and by 32 concurrent clients (keep-alive connections)
for DURATION seconds each, then by one client while an adapter trains; beside the texts per
second of `petal embed` on the same texts in one process, at the same threads.

usage: serve.py PETAL MODEL THREADS DURATION OUT.json
"""

import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time

PETAL, MODEL, THREADS, DURATION, OUT = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5]
SPLIT = "bench/data/fewshot/sms-spam"


def texts_8_to_128():
    texts = [json.loads(l)["text"] for l in open(f"{SPLIT}/test.jsonl")]
    texts = [t.replace("\n", " ").replace("\r", " ") for t in texts]
    out = subprocess.run([PETAL, "-q", "tokenize", MODEL, "--json"], input="\n".join(texts) + "\n",
                         capture_output=True, text=True, check=True).stdout
    lens = [len(json.loads(l)["ids"]) for l in out.splitlines()]
    return [t for t, n in zip(texts, lens) if 8 <= n <= 128]


def start_server(extra):
    p = subprocess.Popen([PETAL, "--threads", THREADS, "serve", MODEL, "--bind", "127.0.0.1:0", *extra],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in p.stderr:
        if "listening on http://" in line:
            host, port = line.split("http://")[1].strip().split(":")
            threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
            return p, host, int(port)
    sys.exit("petal serve did not start")


def load(host, port, texts, clients, seconds):
    """`clients` threads, each on its own keep-alive connection, one text a request."""
    stop = time.monotonic() + seconds
    lat, errors, lock = [], [0], threading.Lock()

    def client(k):
        c = http.client.HTTPConnection(host, port, timeout=120)
        i = k
        mine = []
        while time.monotonic() < stop:
            body = json.dumps({"inputs": texts[i % len(texts)]}).encode()
            t0 = time.perf_counter()
            try:
                c.request("POST", "/embed", body, {"Content-Type": "application/json"})
                r = c.getresponse()
                r.read()
                ok = r.status == 200
            except Exception:
                ok = False
                c = http.client.HTTPConnection(host, port, timeout=120)
            dt = time.perf_counter() - t0
            if ok:
                mine.append(dt)
            else:
                with lock:
                    errors[0] += 1
            i += clients
        with lock:
            lat.extend(mine)

    t0 = time.monotonic()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1e3 if lat else None
    return {"clients": clients, "seconds": round(wall, 1), "requests": len(lat), "errors": errors[0],
            "rps": round(len(lat) / wall, 1), "p50_ms": q(0.50), "p95_ms": q(0.95), "p99_ms": q(0.99)}


def peak_rss_kb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])


def main():
    texts = texts_8_to_128()
    # The command line's throughput on the same texts, one process, same threads.
    t0 = time.monotonic()
    subprocess.run([PETAL, "-q", "--threads", THREADS, "embed", MODEL], input="\n".join(texts) + "\n",
                   stdout=subprocess.DEVNULL, text=True, check=True)
    embed_tps = len(texts) / (time.monotonic() - t0)
    # The bare encoder's latency for one text, for the idle p99 bar.
    data = tempfile.mkdtemp()
    p, host, port = start_server(["--data", data])
    report = {"texts": len(texts), "threads": int(THREADS), "petal_embed_texts_per_s": round(embed_tps, 1)}
    try:
        load(host, port, texts, 1, 2)  # warm-up
        report["one_client"] = load(host, port, texts, 1, DURATION)
        report["32_clients"] = load(host, port, texts, 32, DURATION)
        # Inference while an adapter trains (the default recipe on 16 examples per class).
        def call(method, path, body=""):
            c = http.client.HTTPConnection(host, port, timeout=60)
            c.request(method, path, body.encode() if isinstance(body, str) else body)
            r = c.getresponse()
            return r.status, json.loads(r.read() or b"null")

        print("[serve] examples:", call("POST", "/adapters/spam/examples", open(f"{SPLIT}/train-k16-s0.jsonl").read()), file=sys.stderr)
        print("[serve] train:", call("POST", "/adapters/spam/train")[0], file=sys.stderr)
        report["one_client_during_training"] = load(host, port, texts, 1, DURATION)
        report["training_state_after"] = call("GET", "/adapters/spam")[1].get("state")
        report["peak_rss_mb"] = round(peak_rss_kb(p.pid) / 1024, 1)
    finally:
        p.terminate()
        p.wait()
    report["32_clients_vs_petal_embed"] = round(report["32_clients"]["rps"] / embed_tps, 2)
    json.dump(report, open(OUT, "w"), indent=1)
    print(json.dumps(report, indent=1))


main()
