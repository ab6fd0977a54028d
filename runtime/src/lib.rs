//! petal-runtime: the GGUF model file, quantization, and (later) the encoder forward pass.
//!
//! The core is `no_std` + `alloc`; the default `std` feature adds file I/O, memory mapping and
//! the GGUF writer.
#![no_std]
#![deny(missing_docs)]
#![deny(unsafe_code)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod gguf;
pub mod quant;
#[cfg(feature = "std")]
#[allow(unsafe_code)]
pub mod mmap;
