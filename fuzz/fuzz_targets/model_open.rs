//! The whole `Model::open` path on arbitrary bytes (GGUF reader, configuration, weights,
//! encoder construction, the embedded tokenizer JSON or the ggml vocabulary): an error, or a
//! model that tokenizes and embeds a text without panicking.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use petal_runtime::pipeline::{Model, Storage};

fuzz_target!(|data: &[u8]| {
    let Ok(model) = Model::from_storage(Storage::Buffered(data.to_vec()), Path::new("fuzz.gguf"))
    else {
        return;
    };
    let cfg = model.encoder().config();
    // Keep each run short: a valid but huge encoder is not what this target looks for.
    if cfg.hidden * cfg.layers * cfg.ffn.max(cfg.hidden) > 1 << 24 {
        return;
    }
    let _ = model.tokenize("Héllo wörld [SEP] 你好");
    let _ = model.embed(&["a short text", ""]);
    let _ = model.classify(&["a short text"]);
});
