//! 32-bit ARM kernels.

pub mod neon;
