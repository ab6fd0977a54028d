//! ONNX import through tract-onnx: the two ONNX exports convert, and agree with tract running
//! the same file and with the safetensors conversion.

use petal_runtime::pipeline::Model;
use petal_runtime::quant::TensorType;
use petal_tests::*;
use petal_tools::convert::{convert, ConvertOptions, Pooling};
use petal_tools::tract_engine::TractEncoder;

/// petal's conversion of the L3 export against tract running it: least cosine.
const L3_VS_TRACT_MIN_COS: f64 = 0.99999;
/// The int8 export's conversion against the safetensors conversion: least cosine.
const INT8_VS_SAFETENSORS_MIN_COS: f64 = 0.995;

fn texts() -> Vec<String> {
    golden_texts(&golden("minilm-l6"))
}

fn convert_onnx(src: &std::path::Path, out: &std::path::Path, normalize: bool) {
    let mut o = ConvertOptions::new(src.into(), out.into(), TensorType::F32);
    o.tokenizer = Some(asset("minilm/tokenizer.json"));
    o.pooling = Some(Pooling::Mean);
    o.normalize = Some(normalize);
    convert(&o, &indicatif::ProgressBar::hidden())
        .unwrap_or_else(|e| panic!("{}: {e:#}", src.display()));
}

#[test]
fn l3_onnx_conversion_matches_tract() {
    let onnx = asset("paraphrase-minilm-l3-onnx/paraphrase-MiniLM-L3-v2.onnx");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("l3.gguf");
    convert_onnx(&onnx, &out, true);
    let model = Model::open(&out).unwrap();
    assert_eq!(model.encoder().config().layers, 3);
    let tract =
        TractEncoder::load(&onnx, &asset("minilm/tokenizer.json"), model.max_length()).unwrap();
    let texts = texts();
    let refs: Vec<&str> = texts.iter().take(24).map(String::as_str).collect();
    let ours = model.embed(&refs).unwrap();
    let theirs = tract.embed(&refs, true).unwrap();
    let mut worst = 1.0f64;
    for (a, b) in ours.iter().zip(&theirs) {
        let b64: Vec<f64> = b.iter().map(|&v| v as f64).collect();
        worst = worst.min(cosine(a, &b64));
    }
    eprintln!("L3 ONNX: petal vs tract, least cosine {worst:.8}");
    assert!(worst >= L3_VS_TRACT_MIN_COS, "least cosine {worst}");
}

#[test]
fn int8_onnx_conversion_matches_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("int8.gguf");
    convert_onnx(&asset("minilm-int8-onnx/model.onnx"), &out, true);
    let int8 = Model::open(&out).unwrap();
    let reference = Model::open(convert_to(&asset("minilm"), TensorType::F32, dir.path())).unwrap();
    let texts = texts();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let (a, b) = (int8.embed(&refs).unwrap(), reference.embed(&refs).unwrap());
    let cos: Vec<f64> = a
        .iter()
        .zip(&b)
        .map(|(x, y)| cosine(x, &y.iter().map(|&v| v as f64).collect::<Vec<_>>()))
        .collect();
    let min = cos.iter().copied().fold(f64::INFINITY, f64::min);
    let mean = cos.iter().sum::<f64>() / cos.len() as f64;
    eprintln!("int8 ONNX vs safetensors: mean cosine {mean:.5}, least {min:.5}");
    assert!(min >= INT8_VS_SAFETENSORS_MIN_COS, "least cosine {min}");
}

#[test]
fn onnx_without_tokenizer_or_with_garbage_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let onnx = asset("paraphrase-minilm-l3-onnx/paraphrase-MiniLM-L3-v2.onnx");
    let o = ConvertOptions::new(onnx, dir.path().join("x.gguf"), TensorType::F32);
    let e = format!(
        "{:#}",
        convert(&o, &indicatif::ProgressBar::hidden()).unwrap_err()
    );
    assert!(e.contains("pass --tokenizer"), "{e}");
    let bad = dir.path().join("bad.onnx");
    std::fs::write(&bad, b"\x08\x07garbage that is not protobuf \xff\xff\xff").unwrap();
    let o = ConvertOptions::new(bad, dir.path().join("y.gguf"), TensorType::F32);
    let e = format!(
        "{:#}",
        convert(&o, &indicatif::ProgressBar::hidden()).unwrap_err()
    );
    assert!(e.contains("bad.onnx: not a valid ONNX file"), "{e}");
    assert!(!dir.path().join("y.gguf").exists());
}
