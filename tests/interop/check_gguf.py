"""Reads a petal GGUF file with the Python `gguf` package and checks it against its source.

usage: check_gguf.py MODEL.gguf SOURCE_DIR INSPECT.json

- names, types, shapes, offsets and sizes agree with `petal inspect --json`;
- the metadata keys agree, and scalar values are equal;
- every tensor's bytes equal what `gguf.quants.quantize` makes of the source tensor
  (F32/F16 bit-exact, Q8_0/Q4_0 blocks byte-identical).
Prints one line per failure and a closing "N passed, M failed" line; exits 1 on any failure.
"""
import json
import struct
import sys

import numpy as np
from gguf import GGUFReader, GGMLQuantizationType
from gguf.quants import quantize

ST_DTYPES = {"F32": np.float32, "F16": np.float16}


def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        base = 8 + n
        data = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for name, info in header.items():
        if name == "__metadata__" or info["dtype"] not in ("F32", "F16", "BF16"):
            continue
        if info["dtype"] == "BF16":
            raw = np.frombuffer(data[base + info["data_offsets"][0]: base + info["data_offsets"][1]], dtype=np.uint16)
            arr = (raw.astype(np.uint32) << 16).view(np.float32)
        else:
            start, end = info["data_offsets"]
            arr = np.frombuffer(data[base + start: base + end], dtype=ST_DTYPES[info["dtype"]])
        out[name] = arr.astype(np.float32).reshape(info["shape"])
    return out


def field_value(field):
    return field.contents()


def main():
    gguf_path, src_dir, inspect_path = sys.argv[1:4]
    with open(inspect_path) as f:
        ins = json.load(f)
    reader = GGUFReader(gguf_path)
    src = load_safetensors(f"{src_dir}/model.safetensors")
    failures = []
    passed = 0

    def check(ok, msg):
        nonlocal passed
        if ok:
            passed += 1
        else:
            failures.append(msg)

    keys = [k for k in reader.fields if not k.startswith("GGUF.")]
    check(keys == list(ins["metadata"].keys()), f"metadata keys differ: {sorted(set(keys) ^ set(ins['metadata']))} or their order")
    for k, v in ins["metadata"].items():
        if k in reader.fields and not isinstance(v, dict):
            got = field_value(reader.fields[k])
            if isinstance(v, list):
                check(list(got) == v if not (v and isinstance(v[0], float)) else np.allclose(got, v, rtol=1e-6), f"{k}: array values differ")
            elif isinstance(v, float):
                check(abs(float(got) - v) <= 1e-6 * max(1.0, abs(v)), f"{k}: {got} vs {v}")
            else:
                check(got == v, f"{k}: {got!r} vs {v!r}")
    check(reader.alignment == ins["alignment"], f"alignment {reader.alignment} vs {ins['alignment']}")

    source_names = field_value(reader.fields["petal.source.tensor_names"])
    check(len(reader.tensors) == len(ins["tensors"]) == len(source_names), "tensor counts differ")
    for t, it, sname in zip(reader.tensors, ins["tensors"], source_names):
        name = t.name
        check(name == it["name"], f"tensor name {name} vs {it['name']}")
        check(t.tensor_type.name == it["type"], f"{name}: type {t.tensor_type.name} vs {it['type']}")
        check([int(d) for d in t.shape] == it["dims"], f"{name}: dims {list(t.shape)} vs {it['dims']}")
        check(int(t.data_offset) == it["file_offset"], f"{name}: offset {t.data_offset} vs {it['file_offset']}")
        check(int(t.n_bytes) == it["bytes"], f"{name}: bytes {t.n_bytes} vs {it['bytes']}")
        x = src[sname]
        check(list(x.shape) == it["shape"], f"{name}: source {sname} shape {list(x.shape)} vs {it['shape']}")
        expected = quantize(x, GGMLQuantizationType[t.tensor_type.name]).tobytes()
        got = np.asarray(t.data).tobytes()
        check(expected == got, f"{name} ({t.tensor_type.name}): bytes differ from gguf.quants.quantize of {sname}")

    for f in failures:
        print(f"FAIL {gguf_path}: {f}")
    print(f"{passed} passed, {len(failures)} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
