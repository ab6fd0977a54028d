//! A petal adapter file (safetensors with petal's metadata) on arbitrary bytes: an error, or an
//! adapter that classifies a text without panicking.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use petal_adapt::adapter::Adapter;

mod common;

fuzz_target!(|data: &[u8]| {
    let model = common::base();
    if let Ok(a) = Adapter::from_parts(Path::new("fuzz.safetensors"), data, None, model.encoder()) {
        let _ = petal_adapt::train::classify(model, &a, &["a short text"], 2);
    }
});
