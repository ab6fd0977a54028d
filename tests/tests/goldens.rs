//! The encoder against the PyTorch/transformers goldens: the four tiny architectures at F32
//! (every hidden state, logits, pooling; tokens identical) and the real MiniLM at every dtype.

use petal_runtime::bert::{mean_rows, Hooks, Input};
use petal_runtime::pipeline::Model;
use petal_runtime::quant::TensorType;
use petal_tests::*;

/// Largest absolute difference to the float64 reference on unmasked positions (F32 files).
const TINY_F32_MAX_ABS: f64 = 1e-4;
/// MiniLM F32: least cosine to the reference embedding.
const MINILM_F32_MIN_COS: f64 = 0.99999;
/// MiniLM F16: least cosine.
const MINILM_F16_MIN_COS: f64 = 0.9999;
/// MiniLM Q8_0: least mean cosine and least single cosine.
const MINILM_Q8_0_MEAN_COS: f64 = 0.999;
const MINILM_Q8_0_MIN_COS: f64 = 0.995;
/// Q4_0: petal's output against an F32 forward of the same dequantized weights.
const Q4_0_ARITHMETIC_MIN_COS: f64 = 0.9999;

#[derive(Default)]
struct Collect(Vec<Vec<f32>>);

impl Hooks for Collect {
    fn hidden_state(&mut self, _index: usize, states: &[f32]) {
        self.0.push(states.to_vec());
    }
}

fn max_abs(a: &[f32], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - y).abs())
        .fold(0.0, f64::max)
}

fn check_tiny(name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let src = golden(name);
    let path = convert_to(&src, TensorType::F32, dir.path());
    let model = Model::open(&path).unwrap();
    let g = read_golden(&src.join("golden.safetensors"));
    let texts = golden_texts(&src);
    let seq = g["input_ids"].shape[1];
    let h = model.encoder().config().hidden;
    let n_layers = model.encoder().config().layers;
    let labels = model.encoder().config().labels.as_ref().unwrap().len();
    for (i, text) in texts.iter().enumerate() {
        let row = |t: &str| &g[t].values[i * seq..(i + 1) * seq];
        let mask = row("attention_mask");
        let n = mask.iter().filter(|&&m| m == 1.0).count();
        let want_ids: Vec<u32> = row("input_ids")[..n].iter().map(|&v| v as u32).collect();
        let want_types: Vec<u32> = row("token_type_ids")[..n]
            .iter()
            .map(|&v| v as u32)
            .collect();
        let (ids, types) = model.tokenize(text).unwrap();
        assert_eq!(ids, want_ids, "{name}: token ids of {text:?}");
        assert_eq!(types, want_types, "{name}: token types of {text:?}");

        let mut states = Collect::default();
        let lens = [n];
        let hidden = model
            .encoder()
            .forward(
                &Input {
                    ids: &ids,
                    type_ids: Some(&types),
                    lens: &lens,
                },
                &mut states,
            )
            .unwrap();
        assert_eq!(states.0.len(), n_layers + 1);
        for (l, s) in states.0.iter().enumerate() {
            let want = &g[&format!("hidden_states.{l}")].values[i * seq * h..(i * seq + n) * h];
            let e = max_abs(s, want);
            assert!(
                e <= TINY_F32_MAX_ABS,
                "{name}: hidden_states.{l} of {text:?} off by {e}"
            );
        }
        let mean = mean_rows(&hidden.states, h);
        let e = max_abs(&mean, &g["mean_pooled"].values[i * h..(i + 1) * h]);
        assert!(
            e <= TINY_F32_MAX_ABS,
            "{name}: mean_pooled of {text:?} off by {e}"
        );
        let e = max_abs(&hidden.states[..h], &g["cls"].values[i * h..(i + 1) * h]);
        assert!(e <= TINY_F32_MAX_ABS, "{name}: cls of {text:?} off by {e}");
        let logits = model.encoder().logits(&hidden).unwrap();
        let e = max_abs(
            &logits[0],
            &g["logits"].values[i * labels..(i + 1) * labels],
        );
        assert!(
            e <= TINY_F32_MAX_ABS,
            "{name}: logits of {text:?} off by {e}"
        );
    }
    // The batched pipeline (uneven lengths packed together) gives the same predictions.
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let preds = model.classify(&refs).unwrap();
    for (i, p) in preds.iter().enumerate() {
        let want = &g["logits"].values[i * labels..(i + 1) * labels];
        let best = (0..labels)
            .max_by(|&a, &b| want[a].total_cmp(&want[b]))
            .unwrap();
        assert_eq!(p.index, best, "{name}: prediction of {:?}", texts[i]);
        assert!((p.scores.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
}

#[test]
fn tiny_bert_matches_pytorch() {
    check_tiny("tiny-bert");
}

#[test]
fn tiny_distilbert_matches_pytorch() {
    check_tiny("tiny-distilbert");
}

#[test]
fn tiny_roberta_matches_pytorch() {
    check_tiny("tiny-roberta");
}

#[test]
fn tiny_xlmr_matches_pytorch() {
    check_tiny("tiny-xlmr");
}

/// Cosines of `model`'s embeddings of the 66 MiniLM golden texts to the reference (revision 2:
/// what sentence-transformers computes, unpadded, truncated at 256 tokens), text to embedding
/// end to end through `Model::embed` with the model's default truncation, after checking that
/// petal tokenizes each text to the golden ids (text 5 is 302 tokens long, so this checks the
/// truncation the file stores too).
fn minilm_cosines(model: &Model) -> Vec<f64> {
    let dir = golden("minilm-l6");
    let g = read_golden(&dir.join("golden.safetensors"));
    let texts = golden_texts(&dir);
    assert_eq!(
        golden_revision(&dir),
        2,
        "testdata/golden/minilm-l6 must be revision 2"
    );
    assert_eq!(
        model.max_length(),
        256,
        "sentence-transformers truncates MiniLM at 256"
    );
    for (i, t) in texts.iter().enumerate() {
        let want: Vec<u32> = g[&format!("input_ids.{i}")]
            .values
            .iter()
            .map(|&v| v as u32)
            .collect();
        assert_eq!(model.tokenize(t).unwrap().0, want, "token ids of text {i}");
    }
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let got = model.embed(&refs).unwrap();
    let want = &g["mean_pooled_normalized"];
    let h = want.shape[1];
    got.iter()
        .enumerate()
        .map(|(i, e)| cosine(e, &want.values[i * h..(i + 1) * h]))
        .collect()
}

fn summary(c: &[f64]) -> (f64, f64) {
    (
        c.iter().sum::<f64>() / c.len() as f64,
        c.iter().copied().fold(f64::INFINITY, f64::min),
    )
}

#[test]
fn minilm_f32_and_f16_match_onnx_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let f32_path = convert_to(&asset("minilm"), TensorType::F32, dir.path());
    let (mean, min) = summary(&minilm_cosines(&Model::open(&f32_path).unwrap()));
    eprintln!("MiniLM f32: mean cosine {mean:.7}, min {min:.7}");
    assert!(min >= MINILM_F32_MIN_COS, "f32 min cosine {min}");
    let (mean, min) = summary(&minilm_cosines(
        &Model::open(asset("models/minilm-f16.gguf")).unwrap(),
    ));
    eprintln!("MiniLM f16: mean cosine {mean:.7}, min {min:.7}");
    assert!(min >= MINILM_F16_MIN_COS, "f16 min cosine {min}");
}

#[test]
fn minilm_q8_0_matches_onnx_runtime() {
    let (mean, min) = summary(&minilm_cosines(
        &Model::open(asset("models/minilm-q8_0.gguf")).unwrap(),
    ));
    eprintln!("MiniLM q8_0: mean cosine {mean:.6}, min {min:.6}");
    assert!(
        mean >= MINILM_Q8_0_MEAN_COS && min >= MINILM_Q8_0_MIN_COS,
        "q8_0 mean {mean}, min {min}"
    );
}

#[test]
fn minilm_q4_0_arithmetic_matches_dequantized_f32() {
    let q4 = asset("models/minilm-q4_0.gguf");
    let dir = tempfile::tempdir().unwrap();
    let deq = dir.path().join("q4-as-f32.gguf");
    dequantized_copy(&q4, &deq);
    let a = Model::open(&q4).unwrap();
    let b = Model::open(&deq).unwrap();
    let texts = golden_texts(&golden("minilm-l6"));
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let (ea, eb) = (a.embed(&refs).unwrap(), b.embed(&refs).unwrap());
    // Each text alone too: a few tokens take other kernels than a batch (on AMX, the Q4_0
    // tile product below `Q4_0_BF16_MIN_TOKENS` tokens, bf16 from there).
    let alone: Vec<Vec<f32>> = refs
        .iter()
        .map(|t| a.embed(&[t]).unwrap().remove(0))
        .collect();
    let mut least = f64::INFINITY;
    for (x, y) in ea.iter().chain(&alone).zip(eb.iter().chain(&eb)) {
        let y64: Vec<f64> = y.iter().map(|&v| v as f64).collect();
        let c = cosine(x, &y64);
        least = least.min(c);
        assert!(
            c >= Q4_0_ARITHMETIC_MIN_COS,
            "q4_0 vs its dequantized f32: cosine {c}"
        );
    }
    eprintln!("MiniLM q4_0 vs its dequantized f32 (batch and one by one): least cosine {least:.6}");
    let (mean, min) = summary(&minilm_cosines(&a));
    eprintln!("MiniLM q4_0 end figure vs ONNX Runtime f32: mean cosine {mean:.4}, min {min:.4}");
}
