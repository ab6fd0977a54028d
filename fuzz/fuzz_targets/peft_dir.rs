//! A PEFT adapter directory (`adapter_config.json` and `adapter_model.safetensors`) on
//! arbitrary bytes: the input is split at its first NUL byte into the configuration text and
//! the weights. An error, or an adapter that classifies a text without panicking.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use petal_adapt::adapter::Adapter;

mod common;

fuzz_target!(|data: &[u8]| {
    let at = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let (config, weights) = (&data[..at], data.get(at + 1..).unwrap_or(&[]));
    let Ok(config) = std::str::from_utf8(config) else {
        return;
    };
    let model = common::base();
    if let Ok(a) = Adapter::from_parts(Path::new("fuzz-peft"), weights, Some(config), model.encoder()) {
        let _ = petal_adapt::train::classify(model, &a, &["a short text"], 2);
    }
});
