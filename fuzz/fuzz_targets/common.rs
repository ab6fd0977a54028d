//! The base model the adapter targets load against: the tiny RoBERTa seed (a real petal file).

use std::path::Path;
use std::sync::OnceLock;

use petal_runtime::pipeline::{Model, Storage};

pub fn base() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| {
        let bytes = include_bytes!("../seeds/tiny-roberta-q4_0.gguf").to_vec();
        Model::from_storage(Storage::Buffered(bytes), Path::new("tiny-roberta-q4_0.gguf"))
            .expect("the seed model loads")
    })
}
