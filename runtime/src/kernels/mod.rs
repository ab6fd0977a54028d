//! Compute kernels, laid out as tract-linalg and ggml-cpu lay theirs out:
//!
//! - [`set`]: the kernel set (one implementation of every kernel), its detection and selection;
//! - [`generic`]: the scalar references every other kernel is tested against;
//! - one module per ISA ([`x86_64`], [`aarch64`], [`arm`]) owning its kernels, the safe wrappers
//!   that check the bounds their `unsafe` code relies on, and the sets it plugs them into;
//! - [`pack`]: the activations' quantized and packed forms (blocks, panels, tiles, bf16);
//! - [`linear`]: the linear layer (its path chosen once per weight type and input, its
//!   threads), [`attention`], [`norm`], [`activation`] and [`threads`] (the pool);
//! - [`rows`]: the output views that parallel tasks write through; [`gemm`]: f32 GEMM.
//!
//! Selection happens once, by CPU feature detection; `PETAL_KERNELS=generic` forces the scalar
//! references, and `PETAL_KERNELS=NAME` any other set this CPU runs (`avx2`, `avx2+avxvnni`,
//! `neon`, ...).

#[cfg(target_arch = "aarch64")]
#[allow(unsafe_code)]
pub mod aarch64;
#[cfg(target_arch = "arm")]
#[allow(unsafe_code)]
pub mod arm;
#[allow(unsafe_code)]
pub mod gemm;
pub mod generic;
pub mod pack;
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
pub mod x86_64;

pub mod activation;
pub mod attention;
pub mod linear;
pub mod norm;
pub mod rows;
pub mod set;
pub mod threads;

#[cfg(target_arch = "aarch64")]
pub use aarch64::{neon, neon_variants};
pub use activation::{dot, gelu, softmax};
#[cfg(all(feature = "std", target_arch = "arm"))]
pub use arm::arm_neon;
pub use attention::{
    attention_bf16, attention_bf16_with, AttentionScratch, Head, BF16_ATTENTION_MIN_TOKENS,
};
pub use linear::{
    bf16_min_tokens, linear, linear_backward_input, linear_gelu_with, linear_with, linear_with_set,
    ActStorage, Activations, LinearPath, PanelPath, TilePack, BF16_MIN_TOKENS,
    Q4_0_BF16_MIN_TOKENS,
};
pub use norm::{add_layer_norm, layer_norm};
pub use rows::RowsMut;
#[cfg(feature = "std")]
pub use set::available;
pub use set::{
    active, Bf16Gemm, Bf16Kernels, Bf16Strip, KernelSet, PanelProduct, TileOperands, TileProduct,
    TileProduct2x4, AMX_ROW_GROUPS, BF16_REFERENCE, GENERIC,
};
pub use threads::{par_chunks_mut, par_map, par_map_init};
#[cfg(feature = "std")]
pub use threads::{set_threads, threads};
#[cfg(all(feature = "std", target_arch = "x86_64"))]
pub use x86_64::{avx2, avx2_vnni_variants};
