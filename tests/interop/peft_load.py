"""petal's PEFT adapter directories, loaded by PEFT itself.

For each adapter directory that `petal adapt` wrote (LoRA, IA3, prompt tuning, prefix tuning) on
a model converted from the Hugging Face folder HF_DIR, this loads the folder with transformers,
applies the adapter with `PeftModel.from_pretrained`, computes the hidden state at the first
position of each text, applies the classifier petal stored beside PEFT's tensors (`head.weight`,
`head.bias`), and compares the class probabilities with `petal classify --adapter --json`.

usage: python peft_load.py PETAL MODEL.gguf HF_DIR ADAPTER_DIR...
(tests/interop/peft_load.sh sets up torch, transformers and peft and runs it.) Exits non-zero
on any mismatch.
"""

import json
import subprocess
import sys
import warnings

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoTokenizer, BertModel

# Largest difference of a class probability between petal and PEFT (f32 on both sides).
PROB_ABS_TOL = 1e-4

TEXTS = [
    "this movie was great",
    "the bus leaves at noon",
    "i really did not like the ending at all",
    "ok",
]


def main() -> int:
    petal, gguf, hf_dir, *adapters = sys.argv[1:]
    if not adapters:
        print(__doc__, file=sys.stderr)
        return 2
    tok = AutoTokenizer.from_pretrained(hf_dir)
    worst, diffs = 0.0, []
    for adapter in adapters:
        out = subprocess.run(
            [petal, "-q", "classify", gguf, "--adapter", adapter, "--json", *TEXTS],
            check=True, capture_output=True, text=True,
        ).stdout
        ours = [json.loads(line) for line in out.splitlines()]
        labels = list(ours[0]["scores"])
        base = BertModel.from_pretrained(hf_dir, add_pooling_layer=False)
        # PEFT warns (and goes on) when the adapter's target_modules wrap modules the file has
        # no tensors for, or the file has tensors no module takes: either is a failure here.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = PeftModel.from_pretrained(base, adapter).eval()
        for w_ in caught:
            text_ = str(w_.message)
            print(f"warning loading {adapter}: {text_}", file=sys.stderr)
            if "keys" in text_.lower():
                diffs.append(float("inf"))
                print(f"{adapter}: PEFT found missing or unexpected adapter keys: FAILED")
        config = model.peft_config["default"]
        head = load_file(f"{adapter}/adapter_model.safetensors")
        w, b = head["head.weight"], head["head.bias"]
        for text, mine in zip(TEXTS, ours):
            enc = tok(text, return_tensors="pt")
            with torch.no_grad():
                hidden = model(**enc).last_hidden_state[0]
            # The first position, as transformers' sequence classifiers pool (with prompt
            # tuning, PEFT puts the virtual tokens first, so it is the first virtual token).
            cls = hidden[0]
            probs = torch.softmax(cls @ w.T + b, dim=-1).tolist()
            diff = max(abs(p - mine["scores"][l]) for p, l in zip(probs, labels))
            worst = max(worst, diff)
            diffs.append(diff)
            status = "ok" if diff <= PROB_ABS_TOL else "MISMATCH"
            print(f"{config.peft_type.value:15s} {text!r:45s} max |dp| {diff:.2e} {status}")
    print(f"worst difference {worst:.2e} (tolerance {PROB_ABS_TOL})")
    # One line in cargo's format, so the test script's summary counts these checks.
    failed = sum(1 for d in diffs if d > PROB_ABS_TOL)
    print(f"test result: {'ok' if not failed else 'FAILED'}. "
          f"{len(diffs) - failed} passed; {failed} failed; (peft_load.py)")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
