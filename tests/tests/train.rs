//! The backward pass against the PyTorch/transformers/PEFT training goldens on tiny-bert (F32):
//! loss, logits and every gradient of full fine-tuning, BitFit, LoRA, IA3, prompt tuning and
//! prefix tuning.

use std::collections::HashMap;

use petal_adapt::adapter::{base_hash, Adapter};
use petal_adapt::grad::{self, Batch, FullGrads, Trainables};
use petal_adapt::methods::{self, HeadKind, LoraConfig, Method};
use petal_runtime::gguf::names::tensor::Block;
use petal_runtime::pipeline::Model;
use petal_runtime::quant::TensorType;
use petal_tests::*;

/// Largest relative error of a gradient tensor: |g - g_ref| / |g_ref| (L2 norms).
const GRAD_MAX_REL: f64 = 1e-4;
/// Norm floor of the relative error. BERT's key biases have an exact gradient of zero (softmax
/// does not see a shift of every score; the golden's norm is ~1e-17) that f32 arithmetic gives
/// as ~3e-9: against this floor such a tensor must be within 1e-8 absolutely.
const GRAD_ZERO_NORM: f64 = 1e-4;
/// Largest absolute difference of the loss and of the logits.
const LOSS_MAX_ABS: f64 = 1e-4;

fn model(dir: &std::path::Path) -> Model {
    Model::open(convert_to(&golden("tiny-bert"), TensorType::F32, dir)).unwrap()
}

/// The golden batch: unpadded ids and types of the 4 sequences, and their labels.
fn batch(g: &HashMap<String, GoldenTensor>) -> Batch {
    let seq = g["input_ids"].shape[1];
    let mut b = Batch::default();
    for s in 0..g["input_ids"].shape[0] {
        let row = |t: &str| g[t].values[s * seq..(s + 1) * seq].to_vec();
        let n = row("attention_mask").iter().filter(|&&m| m == 1.0).count();
        b.ids
            .push(row("input_ids")[..n].iter().map(|&v| v as u32).collect());
        b.type_ids.push(
            row("token_type_ids")[..n]
                .iter()
                .map(|&v| v as u32)
                .collect(),
        );
        b.labels.push(g["labels"].values[s] as usize);
    }
    b
}

/// A golden tensor name in petal's naming: PEFT's adapter name `default` and the
/// `modules_to_save` wrapper dropped, the prompt encoder's table called as in adapter files.
fn petal_name(golden: &str) -> String {
    golden
        .replace(".default", "")
        .replace(".modules_to_save", "")
        .replace("prompt_encoder.embedding.weight", "prompt_embeddings")
}

/// Sets each trainable parameter to the golden's `param.*` value (random initializations).
fn load_params(t: &mut Trainables, g: &HashMap<String, GoldenTensor>, prefix: &str) {
    for (k, v) in g {
        if let Some(name) = k.strip_prefix("param.") {
            let name = format!("{prefix}{}", petal_name(name));
            if let Some(p) = t.params.iter_mut().find(|p| p.name == name) {
                assert_eq!(p.value.len(), v.values.len(), "{name}");
                p.value = v.values.iter().map(|&x| x as f32).collect();
            }
        }
    }
}

fn rel_err(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let d: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - y).powi(2))
        .sum::<f64>()
        .sqrt();
    let n: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    d / n.max(GRAD_ZERO_NORM)
}

fn check_loss(name: &str, g: &HashMap<String, GoldenTensor>, loss: f32, logits: &[f32]) {
    assert!(
        (loss as f64 - g["loss"].values[0]).abs() < LOSS_MAX_ABS,
        "{name}: loss {loss} vs {}",
        g["loss"].values[0]
    );
    let worst = logits
        .iter()
        .zip(&g["logits"].values)
        .map(|(a, b)| (*a as f64 - b).abs())
        .fold(0.0, f64::max);
    assert!(worst < LOSS_MAX_ABS, "{name}: logits differ by {worst}");
}

/// Runs `method` on the golden batch and checks loss, logits and every golden gradient.
fn check_method(name: &str, method: &Method, prefix: &str, load: bool) {
    let dir = tempfile::tempdir().unwrap();
    let model = model(dir.path());
    let enc = model.encoder();
    let g = read_golden(&golden(name).join("golden.safetensors"));
    let mut t = methods::build(enc, method, 3, HeadKind::File, 0).unwrap();
    if load {
        load_params(&mut t, &g, prefix);
    }
    let (loss, logits) = grad::classification_step(enc, &mut t, &batch(&g), None, None).unwrap();
    check_loss(name, &g, loss, &logits);
    let mut checked = 0;
    for (k, v) in &g {
        let Some(gname) = k.strip_prefix("grad.") else {
            continue;
        };
        let pname = format!("{prefix}{}", petal_name(gname));
        let p = t
            .get(&pname)
            .unwrap_or_else(|| panic!("{name}: no trainable {pname}"));
        let e = rel_err(&p.grad, &v.values);
        assert!(
            e <= GRAD_MAX_REL,
            "{name}: gradient of {pname}: relative error {e:.2e}"
        );
        checked += 1;
    }
    assert_eq!(
        checked,
        t.params.len(),
        "{name}: every trainable has a golden gradient"
    );
}

#[test]
fn bitfit_matches_golden() {
    check_method("train-bitfit", &Method::BitFit, "base_model.model.", false);
}

#[test]
fn lora_matches_golden() {
    let c = LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        targets: vec![Block::AttnQ, Block::AttnV],
    };
    check_method("train-lora", &Method::Lora(c), "", true);
}

#[test]
fn ia3_matches_golden() {
    check_method(
        "train-ia3",
        &Method::Ia3 {
            targets: vec![Block::AttnK, Block::AttnV],
            feedforward: vec![],
        },
        "",
        true,
    );
}

#[test]
fn prompt_tuning_matches_golden() {
    check_method(
        "train-prompt-tuning",
        &Method::Prompt { tokens: 5 },
        "",
        true,
    );
}

#[test]
fn prefix_tuning_matches_golden() {
    check_method(
        "train-prefix-tuning",
        &Method::Prefix { tokens: 5 },
        "",
        true,
    );
}

#[test]
fn full_fine_tuning_matches_golden() {
    let dir = tempfile::tempdir().unwrap();
    let model = model(dir.path());
    let enc = model.encoder();
    let g = read_golden(&golden("train-full").join("golden.safetensors"));
    let mut t = methods::build(enc, &Method::Head, 3, HeadKind::File, 0).unwrap();
    let mut full = FullGrads::default();
    let (loss, logits) =
        grad::classification_step(enc, &mut t, &batch(&g), None, Some(&mut full)).unwrap();
    check_loss("train-full", &g, loss, &logits);
    let mut checked = 0;
    for (k, v) in &g {
        let Some(hf) = k.strip_prefix("grad.") else {
            continue;
        };
        let ours: &[f32] = match hf {
            "classifier.weight" => &t.get("base_model.model.classifier.weight").unwrap().grad,
            "classifier.bias" => &t.get("base_model.model.classifier.bias").unwrap().grad,
            _ => {
                let name = match petal_tools::hf::map_name(petal_runtime::config::Arch::Bert, hf) {
                    Some(petal_tools::hf::Mapped::Tensor(n)) => n,
                    Some(petal_tools::hf::Mapped::Pooler(p)) => format!("cls.{p}"),
                    other => panic!("{hf}: unmapped ({other:?})"),
                };
                full.grads
                    .get(&name)
                    .unwrap_or_else(|| panic!("no gradient for {name} ({hf})"))
            }
        };
        let e = rel_err(ours, &v.values);
        assert!(
            e <= GRAD_MAX_REL,
            "train-full: gradient of {hf}: relative error {e:.2e}"
        );
        checked += 1;
    }
    // Embeddings (3 tables, LayerNorm weight and bias), 16 tensors per layer, pooler, classifier.
    assert_eq!(checked, 5 + 16 * 2 + 2 + 2, "every golden gradient checked");
}

/// The PEFT adapters saved beside the goldens load into petal and reproduce the golden logits.
#[test]
fn peft_adapters_load_and_reproduce_golden_logits() {
    let dir = tempfile::tempdir().unwrap();
    let model = model(dir.path());
    let enc = model.encoder();
    for name in [
        "train-lora",
        "train-ia3",
        "train-prompt-tuning",
        "train-prefix-tuning",
    ] {
        let g = read_golden(&golden(name).join("golden.safetensors"));
        let a = Adapter::load(&golden(name), enc).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            a.labels,
            ["negative", "neutral", "positive"],
            "{name}: labels from the model"
        );
        let hidden = grad::infer(enc, &a.trainables, &batch(&g)).unwrap();
        let logits = grad::logits(enc, &a.trainables, &hidden);
        let worst = logits
            .iter()
            .zip(&g["logits"].values)
            .map(|(a, b)| (*a as f64 - b).abs())
            .fold(0.0, f64::max);
        assert!(worst < LOSS_MAX_ABS, "{name}: logits differ by {worst}");
    }
}

/// petal's PEFT directories have PEFT's tensor names, shapes and configuration for the same
/// settings (the goldens' adapters were written by PEFT itself), and read back identically.
#[test]
fn peft_directories_match_peft_layout_and_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let model = model(dir.path());
    let enc = model.encoder();
    let cases = [
        (
            "train-lora",
            Method::Lora(LoraConfig {
                r: 4,
                alpha: 8.0,
                dropout: 0.0,
                targets: vec![Block::AttnQ, Block::AttnV],
            }),
        ),
        (
            "train-ia3",
            Method::Ia3 {
                targets: vec![Block::AttnK, Block::AttnV],
                feedforward: vec![],
            },
        ),
        ("train-prompt-tuning", Method::Prompt { tokens: 5 }),
        ("train-prefix-tuning", Method::Prefix { tokens: 5 }),
    ];
    for (name, method) in cases {
        let t = methods::build(enc, &method, 3, HeadKind::File, 3).unwrap();
        let labels = vec!["negative".to_string(), "neutral".into(), "positive".into()];
        let a = Adapter {
            base_sha256: Some(base_hash(enc.bytes())),
            method,
            head: HeadKind::File,
            labels,
            trainables: t,
        };
        let out = dir.path().join(name);
        a.save(&out, enc).unwrap();
        let shapes = |p: &std::path::Path| -> Vec<(String, Vec<usize>)> {
            let bytes = std::fs::read(p.join("adapter_model.safetensors")).unwrap();
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            let mut v: Vec<_> = st
                .tensors()
                .into_iter()
                .map(|(n, t)| (n, t.shape().to_vec()))
                .collect();
            v.sort();
            v
        };
        assert_eq!(
            shapes(&out),
            shapes(&golden(name)),
            "{name}: tensor names and shapes"
        );
        let config = |p: &std::path::Path| -> serde_json::Value {
            serde_json::from_str(&std::fs::read_to_string(p.join("adapter_config.json")).unwrap())
                .unwrap()
        };
        let (ours, peft) = (config(&out), config(&golden(name)));
        for key in [
            "peft_type",
            "task_type",
            "r",
            "lora_alpha",
            "num_virtual_tokens",
            "token_dim",
            "num_layers",
            "num_attention_heads",
            "prefix_projection",
        ] {
            assert_eq!(ours[key], peft[key], "{name}: {key}");
        }
        // petal writes a regular expression (PEFT full-matches it), PEFT's golden a list of
        // names (PEFT matches them by suffix): both must select the same modules.
        let cfg = enc.config();
        for key in ["target_modules", "feedforward_modules"] {
            let selected = |v: &serde_json::Value| {
                let mut s = match v {
                    serde_json::Value::String(re) => {
                        methods::blocks_of_regex(cfg.arch, cfg.layers, re).unwrap()
                    }
                    serde_json::Value::Array(a) => a
                        .iter()
                        .flat_map(|x| methods::blocks_of_name(cfg.arch, x.as_str().unwrap()))
                        .collect(),
                    _ => Vec::new(),
                };
                s.sort();
                s.dedup();
                s
            };
            assert_eq!(selected(&ours[key]), selected(&peft[key]), "{name}: {key}");
            let empty = ours[key].as_array().is_some_and(|a| a.is_empty());
            assert!(
                ours[key].is_null() || empty || ours[key].is_string(),
                "{name}: {key} is a regex"
            );
        }
        let back = Adapter::load(&out, enc).unwrap();
        assert_eq!(back, a, "{name}: round trip");
        // Saving again over it replaces the directory.
        a.save(&out, enc).unwrap();
        back.check_base(&out, &base_hash(enc.bytes())).unwrap();
        let e = back
            .check_base(&out, &"00".repeat(32))
            .unwrap_err()
            .to_string();
        assert!(e.contains("trained on another base model"), "{e}");
    }
}

/// Broken adapter files and directories are refused with a message naming the file, never a
/// panic.
#[test]
fn hostile_adapters_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = model(dir.path());
    let enc = model.encoder();
    let t = methods::build(enc, &Method::BitFit, 3, HeadKind::File, 3).unwrap();
    let labels = vec!["negative".to_string(), "neutral".into(), "positive".into()];
    let a = Adapter {
        base_sha256: Some(base_hash(enc.bytes())),
        method: Method::BitFit,
        head: HeadKind::File,
        labels,
        trainables: t,
    };
    let good = dir.path().join("good.safetensors");
    a.save(&good, enc).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let expect_err = |path: &std::path::Path, want: &str| {
        let e = Adapter::load(path, enc).expect_err(want).to_string();
        assert!(
            e.contains(&path.display().to_string()) && e.contains(want),
            "{e} (wanted {want})"
        );
    };
    // Every truncation and a few byte flips: an error or a valid adapter, never a panic.
    for cut in (0..bytes.len()).step_by(97) {
        let p = dir.path().join("cut.safetensors");
        std::fs::write(&p, &bytes[..cut]).unwrap();
        assert!(Adapter::load(&p, enc).is_err());
    }
    for i in (0..bytes.len()).step_by(53) {
        let mut b = bytes.clone();
        b[i] ^= 0x5a;
        let p = dir.path().join("flip.safetensors");
        std::fs::write(&p, &b).unwrap();
        let _ = Adapter::load(&p, enc);
    }
    let p = dir.path().join("junk.safetensors");
    std::fs::write(&p, b"not an adapter").unwrap();
    expect_err(&p, "not a valid adapter file");
    expect_err(
        &dir.path().join("missing.safetensors"),
        "missing.safetensors",
    );
    // A PEFT directory with a broken configuration, or a setting petal does not run.
    let peft = dir.path().join("peft");
    std::fs::create_dir(&peft).unwrap();
    std::fs::copy(
        golden("train-lora").join("adapter_model.safetensors"),
        peft.join("adapter_model.safetensors"),
    )
    .unwrap();
    std::fs::write(peft.join("adapter_config.json"), "{ not json").unwrap();
    let e = Adapter::load(&peft, enc).unwrap_err().to_string();
    assert!(
        e.contains("adapter_config.json: not a valid adapter file"),
        "{e}"
    );
    let cfg = std::fs::read_to_string(golden("train-lora").join("adapter_config.json")).unwrap();
    std::fs::write(
        peft.join("adapter_config.json"),
        cfg.replace("\"use_dora\": false", "\"use_dora\": true"),
    )
    .unwrap();
    let e = Adapter::load(&peft, enc).unwrap_err().to_string();
    assert!(
        e.contains("use_dora") && e.contains("adapter_config.json"),
        "{e}"
    );
    std::fs::write(
        peft.join("adapter_config.json"),
        cfg.replace("\"r\": 4", "\"r\": 5"),
    )
    .unwrap();
    let e = Adapter::load(&peft, enc).unwrap_err().to_string();
    assert!(
        e.contains("\"r\" is 5, but tensor") && e.contains("adapter_config.json"),
        "{e}"
    );
    // Sizes a hostile file states are checked against the tensors before anything is sized by
    // them: a rank of 10^12 would otherwise ask for petabytes.
    for (from, to, want) in [
        (
            "\"r\": 4",
            "\"r\": 1000000000000",
            "the LoRA rank must be between 1 and",
        ),
        (
            "\"r\": 4",
            "\"r\": 0",
            "the LoRA rank must be between 1 and",
        ),
        ("\"r\": 4", "\"r\": 4096", "\"r\" is 4096, but tensor"),
    ] {
        std::fs::write(peft.join("adapter_config.json"), cfg.replace(from, to)).unwrap();
        let e = Adapter::load(&peft, enc).unwrap_err().to_string();
        assert!(
            e.contains(want) && e.contains("adapter_config.json"),
            "{e} (wanted {want})"
        );
    }
    for name in ["train-prompt-tuning", "train-prefix-tuning"] {
        let dir = dir.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        let src = golden(name);
        std::fs::copy(
            src.join("adapter_model.safetensors"),
            dir.join("adapter_model.safetensors"),
        )
        .unwrap();
        let cfg = std::fs::read_to_string(src.join("adapter_config.json")).unwrap();
        std::fs::write(
            dir.join("adapter_config.json"),
            cfg.replace("\"num_virtual_tokens\": 5", "\"num_virtual_tokens\": 400"),
        )
        .unwrap();
        let e = Adapter::load(&dir, enc).unwrap_err().to_string();
        assert!(
            e.contains("virtual tokens") || e.contains("\"num_virtual_tokens\" is 400"),
            "{name}: {e}"
        );
    }
    // A petal adapter whose labels say a million classes for a two-row head, and one whose
    // recorded base hash is not ASCII (the message cuts it by characters, not bytes).
    let pooled = Adapter {
        base_sha256: Some(base_hash(enc.bytes())),
        method: Method::Head,
        head: HeadKind::Pooled,
        labels: vec!["a".into(), "b".into()],
        trainables: methods::build(enc, &Method::Head, 2, HeadKind::Pooled, 1).unwrap(),
    };
    let file = dir.path().join("pooled.safetensors");
    pooled.save(&file, enc).unwrap();
    let bytes = std::fs::read(&file).unwrap();
    let labels_json = serde_json::to_string(&["a", "b"]).unwrap();
    let many: Vec<String> = (0..1_000_000).map(|i| i.to_string()).collect();
    let patched = |from: &str, to: &str| -> Vec<u8> { rewrite_metadata(&bytes, from, to) };
    let p = dir.path().join("many-labels.safetensors");
    std::fs::write(
        &p,
        patched(&labels_json, &serde_json::to_string(&many).unwrap()),
    )
    .unwrap();
    expect_err(&p, "1000000 labels: at most 4096");
    let few: Vec<String> = (0..3).map(|i| i.to_string()).collect();
    std::fs::write(
        &p,
        patched(&labels_json, &serde_json::to_string(&few).unwrap()),
    )
    .unwrap();
    expect_err(&p, "3 labels, but tensor \"head.weight\" has shape [2, 32]");
    let p = dir.path().join("odd-base.safetensors");
    std::fs::write(
        &p,
        patched(&base_hash(enc.bytes()), "é".repeat(40).as_str()),
    )
    .unwrap();
    expect_err(
        &p,
        "trained on another base model (base SHA-256 éééééééééééé…",
    );
}

/// `bytes` (a safetensors file) with the string `from` in its JSON header replaced by `to`,
/// the header length updated.
fn rewrite_metadata(bytes: &[u8], from: &str, to: &str) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
    // In the header the metadata values are JSON strings: escape `from` and `to` alike.
    let esc = |s: &str| {
        let q = serde_json::to_string(s).unwrap();
        q[1..q.len() - 1].to_string()
    };
    let (from, to) = (esc(from), esc(to));
    assert!(header.contains(&from), "{from} not in the header");
    let mut h = header.replace(&from, &to).into_bytes();
    // safetensors pads the header to 8 bytes with spaces.
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&bytes[8 + n..]);
    out
}
