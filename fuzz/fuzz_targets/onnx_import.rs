//! The ONNX importer (`petal convert model.onnx`) on arbitrary bytes: the weights it finds in
//! a graph, or an error.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use petal_tools::onnx::OnnxWeights;

fuzz_target!(|data: &[u8]| {
    let _ = OnnxWeights::from_bytes(data.to_vec(), Path::new("fuzz.onnx"));
});
