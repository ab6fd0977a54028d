"""Few-shot benchmark: every `petal adapt` method on the q8_0 MiniLM, over the few-shot splits in
bench/data/fewshot, K=16 and K=8, seeds 0-2. One JSON line per run (test accuracy, macro-F1,
training wall time, peak RSS of the training process), then a table of mean and standard
deviation per data set, K and method.

usage: python3 bench/fewshot.py PETAL MODEL OUT.jsonl [--methods a,b] [--datasets a,b]
                                [--ks 16,8] [--seeds 0,1,2] [--table-only]

A method may carry settings after `@`, as `petal adapt` flags joined by `+`: `setfit@epochs=5` runs
`petal adapt --method setfit --epochs 5` and is reported under that name.
"""
import argparse, json, os, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "bench", "data", "fewshot")
METHODS = ["default", "head", "bitfit", "lora", "houlsby", "pfeiffer", "prompt", "prefix", "ia3", "setfit"]
# The best of the PyTorch/transformers/PEFT references (GPU, f32 MiniLM, same splits).
REFERENCE = {(16, "trec6"): 86.1, (16, "sms-spam"): 97.9, (16, "prompt-injection"): 89.3,
             (8, "trec6"): 78.1, (8, "sms-spam"): 97.5, (8, "prompt-injection"): 86.1}


def run_rss(cmd):
    """Runs cmd under its own rusage; returns (stdout, wall seconds, peak RSS MB)."""
    t0 = time.time()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        pid = os.fork()
        if pid == 0:
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            os.execv(cmd[0], cmd)
        _, status, usage = os.wait4(pid, 0)
        wall = time.time() - t0
        out.seek(0); err.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"failed: {' '.join(cmd)}\n{err.read().decode(errors='replace')}")
        return out.read().decode(), wall, usage.ru_maxrss / 1024.0


def table(records):
    groups = {}
    for r in records:
        groups.setdefault((r["k"], r["dataset"], r["method"]), []).append(r)
    lines = ["| K | data set | method | accuracy % (mean ± sd) | seeds | train s (mean) | peak RSS MB (max) | best reference |",
             "|---|---|---|---|---|---|---|---|"]
    for (k, ds, m) in sorted(groups, key=lambda g: (-g[0], g[1], METHODS.index(g[2].partition("@")[0]) if g[2].partition("@")[0] in METHODS else 99)):
        rs = groups[(k, ds, m)]
        accs = [100 * r["accuracy"] for r in rs]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        lines.append(f"| {k} | {ds} | {m} | {statistics.mean(accs):.1f} ± {sd:.1f} | {len(rs)} | "
                     f"{statistics.mean(r['train_seconds'] for r in rs):.1f} | {max(r['train_peak_rss_mb'] for r in rs):.0f} | "
                     f"{REFERENCE.get((k, ds), '')} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("petal"); ap.add_argument("model"); ap.add_argument("out")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--datasets", default="trec6,sms-spam,prompt-injection")
    ap.add_argument("--ks", default="16,8")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--table-only", action="store_true")
    a = ap.parse_args()
    records = [json.loads(l) for l in open(a.out)] if os.path.exists(a.out) else []
    done = {(r["dataset"], r["k"], r["seed"], r["method"]) for r in records}
    if not a.table_only:
        with open(a.out, "a") as f, tempfile.TemporaryDirectory() as tmp:
            for k in map(int, a.ks.split(",")):
                for seed in map(int, a.seeds.split(",")):
                    for ds in a.datasets.split(","):
                        for m in a.methods.split(","):
                            if (ds, k, seed, m) in done:
                                continue
                            train = os.path.join(DATA, ds, f"train-k{k}-s{seed}.jsonl")
                            test = os.path.join(DATA, ds, "test.jsonl")
                            adapter = os.path.join(tmp, f"{ds}-{k}-{seed}-{m}")
                            name, _, settings = m.partition("@")
                            flags = [x for kv in filter(None, settings.split("+")) for x in
                                     ("--" + kv.partition("=")[0].replace("_", "-"), kv.partition("=")[2])]
                            out, wall, rss = run_rss([a.petal, "-q", "adapt", a.model, "--train", train, "--method", name,
                                                      "--seed", str(seed), "-o", adapter, "--json"] + flags)
                            s = json.loads(out)
                            ev, _, _ = run_rss([a.petal, "-q", "eval", a.model, "--adapter", adapter, "--test", test, "--json"])
                            e = json.loads(ev)
                            rec = {"dataset": ds, "k": k, "seed": seed, "method": m, "accuracy": e["accuracy"],
                                   "macro_f1": e["macro_f1"], "train_seconds": round(wall, 2),
                                   "train_peak_rss_mb": round(rss, 1), "steps": s["steps"], "trainable": s["trainable"],
                                   "chosen": s["method"], "selection": s.get("selection")}
                            print(json.dumps(rec), file=sys.stderr, flush=True)
                            f.write(json.dumps(rec) + "\n"); f.flush()
                            records.append(rec)
    print(table(records))


if __name__ == "__main__":
    main()
