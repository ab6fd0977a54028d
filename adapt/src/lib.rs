//! petal-adapt: on-device adaptation (backward pass, PEFT methods, trainer, adapter files).
//!
//! Not written yet: see the project's adaptation issue. The crate exists so that the workspace
//! has its final shape and dependency direction (tools -> adapt -> runtime).
#![deny(missing_docs)]

pub use petal_runtime as runtime;
