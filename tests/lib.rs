//! Helpers shared by the workspace-level end-to-end tests in `tests/tests/`: where the goldens
//! and the fetched assets are, converting checkpoints, reading golden tensors.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use petal_runtime::gguf::{Gguf, GgufWriter};
use petal_runtime::mmap::Mapping;
use petal_runtime::quant::TensorType;
use petal_tools::convert::{convert, ConvertOptions};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A golden folder copied into the project (`testdata/golden/NAME`).
pub fn golden(name: &str) -> PathBuf {
    workspace().join("testdata/golden").join(name)
}

/// The fetched assets (`scripts/setup.sh`), or `$PETAL_ASSETS`. Panics with the fix when a
/// needed file is missing: these tests never skip.
pub fn asset(rel: &str) -> PathBuf {
    let root = std::env::var_os("PETAL_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("assets"));
    let p = root.join(rel);
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup.sh first",
        p.display()
    );
    p
}

/// Converts the Hugging Face folder `src` to `dir/NAME-DTYPE.gguf` and returns its path.
pub fn convert_to(src: &Path, dtype: TensorType, dir: &Path) -> PathBuf {
    let name = src.file_name().unwrap().to_string_lossy();
    let out = dir.join(format!("{name}-{}.gguf", dtype.name()));
    let opts = ConvertOptions::new(src.to_path_buf(), out.clone(), dtype);
    convert(&opts, &indicatif::ProgressBar::hidden())
        .unwrap_or_else(|e| panic!("convert {}: {e:#}", src.display()));
    out
}

/// Rewrites the model file `src` with every tensor dequantized to F32 (same keys), so a forward
/// pass over it uses exactly the quantized weights' values in f32 arithmetic.
pub fn dequantized_copy(src: &Path, out: &Path) {
    let map = Mapping::open(src).unwrap();
    let g = Gguf::parse(map.bytes()).unwrap();
    GgufWriter::dequantized(&g)
        .unwrap()
        .write_atomic(out)
        .unwrap();
}

/// A golden tensor: its shape and values (integers widened to f64 exactly).
#[derive(Debug, Clone)]
pub struct GoldenTensor {
    /// Row-major shape.
    pub shape: Vec<usize>,
    /// Values.
    pub values: Vec<f64>,
}

/// Every tensor of a `golden.safetensors` file.
pub fn read_golden(path: &Path) -> HashMap<String, GoldenTensor> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, v)| {
            let d = v.data();
            let values: Vec<f64> = match v.dtype() {
                safetensors::Dtype::F32 => d
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect(),
                safetensors::Dtype::F64 => d
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
                safetensors::Dtype::I64 => d
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect(),
                other => panic!("{name}: unexpected dtype {other:?}"),
            };
            (
                name,
                GoldenTensor {
                    shape: v.shape().to_vec(),
                    values,
                },
            )
        })
        .collect()
}

/// Cosine similarity.
pub fn cosine(a: &[f32], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * y).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// The texts of a `golden.json`.
/// `"revision"` of a golden folder's `golden.json` (1 when it has none).
pub fn golden_revision(dir: &Path) -> u64 {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).unwrap()).unwrap();
    v.get("revision").and_then(|r| r.as_u64()).unwrap_or(1)
}

pub fn golden_texts(dir: &Path) -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).unwrap()).unwrap();
    v["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect()
}
