//! petal-runtime: the GGUF model file, quantization, kernels, and the encoder forward pass.
//!
//! The core is `no_std` + `alloc`; the default `std` feature adds file I/O, memory mapping and
//! the GGUF writer.
#![no_std]
#![deny(missing_docs)]
#![deny(unsafe_code)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod bert;
pub mod config;
#[cfg(feature = "std")]
pub mod ggml_vocab;
pub mod gguf;
pub mod head;
pub mod kernels;
#[cfg(feature = "std")]
#[allow(unsafe_code)]
pub mod mmap;
#[cfg(feature = "std")]
pub mod pipeline;
pub mod quant;
pub mod weights;
