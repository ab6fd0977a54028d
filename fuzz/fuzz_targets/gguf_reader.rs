//! The GGUF reader on arbitrary bytes: it must return an error or a file whose every tensor
//! slice and metadata value can be read without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use petal_runtime::gguf::Gguf;

fuzz_target!(|data: &[u8]| {
    if let Ok(g) = Gguf::parse(data) {
        for t in g.tensors() {
            assert_eq!(g.tensor_data(t).len() as u64, t.size);
            let _ = t.shape();
        }
        for (_, v) in g.metadata() {
            if let Some(a) = v.as_array() {
                for e in a.iter() {
                    let _ = e.as_str();
                }
            }
        }
    }
});
