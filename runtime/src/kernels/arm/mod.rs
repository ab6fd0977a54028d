//! 32-bit ARM kernels.

pub mod neon;

#[cfg(feature = "std")]
use super::pack::{self, ActBlock, Panel16};
#[cfg(feature = "std")]
use super::set::{check_panel_rows, check_tile, KernelSet, GENERIC};
/// The 32-bit ARM NEON set (Q8_0 row and 2 x 4 tile products, Q4_0 row and 16-bit panel
/// products, f32 products, softmax, GELU and LayerNorm, in `asm!`; quantization and packing
/// are the references), when the CPU has NEON.
#[cfg(all(feature = "std", target_arch = "arm"))]
pub fn arm_neon() -> Option<KernelSet> {
    if !neon::detected() {
        return None;
    }
    #[allow(unsafe_code)]
    fn q8(w: &[u8], x: &[ActBlock]) -> f32 {
        assert!(w.len() >= x.len() * pack::Q8_0_BLOCK_BYTES);
        // SAFETY: this set is only handed out after detecting NEON; length asserted.
        unsafe { neon::dot_q8_0(w, x) }
    }
    #[allow(unsafe_code)]
    fn q8_2x4(w: [&[u8]; 2], x: [&[ActBlock]; 4]) -> [f32; 8] {
        check_tile(w, x);
        // SAFETY: this set is only handed out after detecting NEON; lengths asserted.
        unsafe { neon::dot_q8_0_2x4(w, x) }
    }
    #[allow(unsafe_code)]
    fn q4(w: &[u8], x: &[ActBlock]) -> f32 {
        assert!(w.len() >= x.len() * pack::Q4_0_BLOCK_BYTES);
        // SAFETY: this set is only handed out after detecting NEON; length asserted.
        unsafe { neon::dot_q4_0(w, x) }
    }
    #[allow(unsafe_code)]
    fn q4_2x8(w: [&[u8]; 2], p: &[Panel16]) -> [f32; 16] {
        check_panel_rows(w, p.len(), pack::Q4_0_BLOCK_BYTES);
        // SAFETY: this set is only handed out after detecting NEON; lengths asserted.
        unsafe { neon::dot_q4_0_2x8(w, p) }
    }
    #[allow(unsafe_code)]
    fn softmax(x: &mut [f32]) {
        // SAFETY: this set is only handed out after detecting NEON.
        unsafe { neon::softmax(x) }
    }
    #[allow(unsafe_code)]
    fn gelu(x: &mut [f32]) {
        // SAFETY: this set is only handed out after detecting NEON.
        unsafe { neon::gelu(x) }
    }
    #[allow(unsafe_code)]
    fn f(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: this set is only handed out after detecting NEON.
        unsafe { neon::dot_f32(a, b) }
    }
    #[allow(unsafe_code)]
    fn layer_norm(x: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
        assert_eq!(w.len(), b.len());
        // SAFETY: this set is only handed out after detecting NEON; lengths asserted.
        unsafe { neon::layer_norm(x, w, b, eps) }
    }
    Some(KernelSet {
        name: "armv7-neon",
        dot_q8_0: q8,
        dot_q8_0_2x4: q8_2x4,
        dot_q4_0: q4,
        dot_q4_0_2x8: Some(q4_2x8),
        dot_f32: f,
        softmax,
        gelu,
        layer_norm,
        ..GENERIC
    })
}
