//! petal-adapt: on-device adaptation from a few labelled examples.
//!
//! Today: labelled data (JSON lines), the classifier-head method (a linear head trained with
//! AdamW on the frozen model's sentence embeddings), adapter files, and evaluation. The
//! parameter-efficient methods that need a backward pass through the encoder (LoRA, adapters,
//! prompts, prefixes, BitFit, IA3) build on the runtime's forward hooks.
#![deny(missing_docs)]

pub mod adapter;
pub mod data;
pub mod eval;
pub mod grad;
pub mod methods;
pub mod optim;
pub mod train;
pub mod train_head;

pub use petal_runtime as runtime;
