//! Labelled JSON lines (`petal adapt --train`, `petal eval --test`) on arbitrary text.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use petal_adapt::data;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(examples) = data::parse_jsonl(&text, Path::new("fuzz.jsonl")) {
        let _ = data::labels(&examples, Path::new("fuzz.jsonl"));
    }
});
