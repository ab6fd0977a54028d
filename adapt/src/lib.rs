//! petal-adapt: on-device adaptation from a few labelled examples.
//!
//! The parameter-efficient methods of the AACL 2022 tutorial, trained through the frozen,
//! quantized model: [`grad`] records the runtime's own forward pass through its hooks and runs
//! the backward pass; [`methods`] says what each method trains (head, BitFit, LoRA, bottleneck
//! adapters, prompt and prefix tuning, IA3); [`train`] is the trainer (AdamW, seed, time budget,
//! stop flag, SetFit-style contrastive phase) and classifies with an adapter; [`adapter`] reads
//! and writes adapter files (PEFT's layout where PEFT has the method); [`data`] reads labelled
//! JSON lines and [`eval`] scores predictions.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod adapter;
pub mod data;
pub mod eval;
pub mod grad;
pub mod methods;
pub mod optim;
pub mod train;
pub mod train_head;

pub use petal_runtime as runtime;
