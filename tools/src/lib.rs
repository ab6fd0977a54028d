//! petal-tools: the `petal` command line's work, as a library (the binary is thin): converting
//! checkpoints, inspecting files.
#![forbid(unsafe_code)]

pub mod adapt_cmd;
pub mod bench;
pub mod convert;
pub mod hf;
pub mod infer;
pub mod inspect;
pub mod onnx;
pub mod tokenizer_meta;
pub mod tract_engine;
