//! petal-tools: the `petal` command line's work, as a library (the binary is thin): converting
//! checkpoints (with the `convert` feature), inspecting files, running, adapting and serving
//! them.
#![forbid(unsafe_code)]

pub mod adapt_cmd;
pub mod bench;
#[cfg(feature = "convert")]
pub mod convert;
#[cfg(feature = "convert")]
pub mod hf;
pub mod infer;
pub mod inspect;
pub mod listen;
#[cfg(feature = "convert")]
pub mod onnx;
pub mod serve;
#[cfg(feature = "convert")]
pub mod tokenizer_meta;
#[cfg(feature = "convert")]
pub mod tract_engine;
