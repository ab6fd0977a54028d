//! x86_64 kernels.

#[cfg(feature = "std")]
pub mod amx;
pub mod avx2;
pub mod avx512;
