//! The real MiniLM (q8_0, from `scripts/setup.sh`) against ONNX Runtime's embeddings in
//! testdata/golden/minilm-l6, and the q4_0 one against its own weights in f32, in the runtime's
//! own suite so they also run on aarch64 and armv7 under QEMU with every kernel path of those
//! CPUs (the workspace suite checks them on x86_64).

use std::path::PathBuf;

use petal_runtime::bert::{Input, NoHooks};
use petal_runtime::pipeline::Model;

/// Q8_0 weights with activations quantized per 32 values, against ONNX Runtime's f32 output:
/// the same bounds as the workspace's golden test.
const MINILM_Q8_0_MEAN_COS: f64 = 0.999;
const MINILM_Q8_0_MIN_COS: f64 = 0.995;
/// Texts checked under emulation (QEMU runs the encoder about 20 times slower).
const TEXTS: usize = 8;
/// Q4_0 weights against 16-bit activations, against the same weights dequantized to f32: the
/// workspace's Q4_0 arithmetic bound.
const Q4_0_ARITHMETIC_MIN_COS: f64 = 0.9999;

/// `Encoder::infer` (a batch in parts) against one pass over the batch: the same kernels see
/// each token either way (both batches stay below the bf16 kernels' threshold), so only
/// summation order could differ.
const PARTS_MAX_ABS_DIFF: f32 = 1e-5;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn minilm_path() -> PathBuf {
    model_file("minilm-q8_0.gguf")
}

/// `assets/models/NAME` (or under `$PETAL_ASSETS`), which must exist.
fn model_file(name: &str) -> PathBuf {
    let model_path = std::env::var_os("PETAL_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("assets"))
        .join("models")
        .join(name);
    assert!(
        model_path.exists(),
        "{} is missing: run scripts/setup.sh first",
        model_path.display()
    );
    model_path
}

/// Cosine similarity of an embedding and a reference, in f64.
fn cosine(a: &[f32], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * y).sum();
    let na = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn batch_in_parts_matches_one_pass() {
    let model = Model::open(minilm_path()).unwrap();
    let text = "petal runs a small language model on a board and adapts it from a few examples ";
    let (ids, _) = model.tokenize(&text.repeat(20)).unwrap();
    let enc = model.encoder();
    // Parts of several sequences, and a sequence longer than a part with short ones after it.
    // (Small: this suite also runs under QEMU.)
    for lens in [&[20usize, 50, 40, 30][..], &[130, 10]] {
        let ids: Vec<u32> = lens
            .iter()
            .flat_map(|&n| ids[..n].iter().copied())
            .collect();
        let input = Input {
            ids: &ids,
            type_ids: None,
            lens,
        };
        let whole = enc.forward(&input, &mut NoHooks).unwrap();
        let parts = enc.infer(&input).unwrap();
        assert_eq!((&parts.lens, parts.hidden), (&whole.lens, whole.hidden));
        assert_eq!(parts.states.len(), whole.states.len());
        let diff = parts
            .states
            .iter()
            .zip(&whole.states)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        eprintln!("lens {lens:?}: parts against one pass, largest difference {diff:e}");
        assert!(diff <= PARTS_MAX_ABS_DIFF, "lens {lens:?}: {diff}");
    }
}

#[test]
fn minilm_q8_0_matches_onnx_runtime_on_this_cpu() {
    let model_path = minilm_path();
    let dir = workspace().join("testdata/golden/minilm-l6");
    let bytes = std::fs::read(dir.join("golden.safetensors")).unwrap();
    let golden = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let floats = |name: &str| -> Vec<f64> {
        let t = golden.tensor(name).unwrap();
        match t.dtype() {
            safetensors::Dtype::F32 => t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            safetensors::Dtype::I64 => t
                .data()
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            other => panic!("{name}: unexpected {other:?}"),
        }
    };
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).unwrap()).unwrap();
    let texts = meta["texts"].as_array().unwrap();
    let want = floats("mean_pooled_normalized");
    let h = want.len() / texts.len();

    // Revision 2: unpadded, truncated at 256 tokens as sentence-transformers does; text to
    // embedding through `Model::embed` at the file's default truncation.
    assert_eq!(meta["revision"].as_u64(), Some(2), "golden revision");
    let model = Model::open(&model_path).unwrap();
    assert_eq!(model.max_length(), 256);
    let texts: Vec<&str> = texts
        .iter()
        .take(TEXTS)
        .map(|t| t.as_str().unwrap())
        .collect();
    for (i, text) in texts.iter().enumerate() {
        let ids: Vec<u32> = floats(&format!("input_ids.{i}"))
            .iter()
            .map(|&v| v as u32)
            .collect();
        assert_eq!(
            model.tokenize(text).unwrap().0,
            ids,
            "token ids of text {i}"
        );
    }
    let cosines: Vec<f64> = model
        .embed(&texts)
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, e)| cosine(e, &want[i * h..(i + 1) * h]))
        .collect();
    let mean = cosines.iter().sum::<f64>() / cosines.len() as f64;
    let min = cosines.iter().copied().fold(f64::INFINITY, f64::min);
    eprintln!(
        "MiniLM q8_0 on {} kernels: mean cosine {mean:.6}, min {min:.6}",
        petal_runtime::kernels::active().name
    );
    assert!(
        mean >= MINILM_Q8_0_MEAN_COS && min >= MINILM_Q8_0_MIN_COS,
        "q8_0 mean {mean}, min {min}"
    );
}

#[test]
fn minilm_q4_0_arithmetic_matches_dequantized_f32_on_this_cpu() {
    use petal_runtime::gguf::{Gguf, GgufWriter};
    use petal_runtime::pipeline::Storage;
    let path = model_file("minilm-q4_0.gguf");
    let bytes = std::fs::read(&path).unwrap();
    let mut f32_file = Vec::new();
    GgufWriter::dequantized(&Gguf::parse(&bytes).unwrap())
        .unwrap()
        .write_to(&mut f32_file)
        .unwrap();
    let q4 = Model::from_storage(Storage::Buffered(bytes), &path).unwrap();
    let f32 = Model::from_storage(Storage::Buffered(f32_file), &path).unwrap();
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(workspace().join("testdata/golden/minilm-l6/golden.json"))
            .unwrap(),
    )
    .unwrap();
    let texts: Vec<&str> = meta["texts"].as_array().unwrap()[..TEXTS]
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let (a, b) = (q4.embed(&texts).unwrap(), f32.embed(&texts).unwrap());
    let mut least = f64::INFINITY;
    for (x, y) in a.iter().zip(&b) {
        let y: Vec<f64> = y.iter().map(|&v| v as f64).collect();
        least = least.min(cosine(x, &y));
    }
    eprintln!(
        "MiniLM q4_0 on {} kernels vs its dequantized f32: least cosine {least:.9}",
        petal_runtime::kernels::active().name
    );
    assert!(least >= Q4_0_ARITHMETIC_MIN_COS, "least cosine {least}");
}
