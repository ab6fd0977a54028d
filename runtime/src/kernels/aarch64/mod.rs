//! aarch64 kernels.

pub mod neon;

use alloc::vec::Vec;

use super::pack::{self, ActBlock, Panel16, Panel8};
use super::set::{check_panel_rows, check_tile, KernelSet, GENERIC};
use crate::quant::QK;
/// The best NEON set this CPU runs (aarch64 always has NEON): SDOT for the Q8_0 products and
/// the Q4_0 row product when the CPU has dotprod, and SMMLA for the Q8_0 panel product when it
/// also has i8mm; Q4_0 layers take their 16-bit activations split into high and low bytes
/// through SDOT, or SMMLA with i8mm, and the 16-bit panel product (`smlal`) without; f32
/// products, softmax, GELU, LayerNorm and the activations' quantization on four lanes; the
/// panel packing uses the references.
#[cfg(target_arch = "aarch64")]
pub fn neon() -> Option<KernelSet> {
    neon_variants().pop()
}

/// Every NEON set this CPU runs, plainest first (for tests that cover each kernel path).
#[cfg(target_arch = "aarch64")]
pub fn neon_variants() -> Vec<KernelSet> {
    #[cfg(feature = "std")]
    let (dotprod, i8mm) = (
        std::arch::is_aarch64_feature_detected!("dotprod"),
        std::arch::is_aarch64_feature_detected!("i8mm"),
    );
    #[cfg(not(feature = "std"))]
    let (dotprod, i8mm) = (false, false);
    let mut v = alloc::vec![neon_set(false, false)];
    if dotprod {
        v.push(neon_set(true, false));
        if i8mm {
            v.push(neon_set(true, true));
        }
    }
    v
}

/// The NEON set with SDOT kernels (`dotprod`) and the SMMLA panel kernel (`i8mm`); the caller
/// has detected the features it asks for.
#[cfg(target_arch = "aarch64")]
fn neon_set(dotprod: bool, i8mm: bool) -> KernelSet {
    #[allow(unsafe_code)]
    fn q8(w: &[u8], x: &[ActBlock]) -> f32 {
        assert!(w.len() >= x.len() * pack::Q8_0_BLOCK_BYTES);
        // SAFETY: NEON is part of the aarch64 baseline; length asserted.
        unsafe { neon::dot_q8_0(w, x) }
    }
    #[allow(unsafe_code)]
    fn q8_2x4(w: [&[u8]; 2], x: [&[ActBlock]; 4]) -> [f32; 8] {
        check_tile(w, x);
        // SAFETY: NEON is part of the aarch64 baseline; lengths asserted.
        unsafe { neon::dot_q8_0_2x4(w, x) }
    }
    #[allow(unsafe_code)]
    fn q8_sdot(w: &[u8], x: &[ActBlock]) -> f32 {
        assert!(w.len() >= x.len() * pack::Q8_0_BLOCK_BYTES);
        // SAFETY: only handed out after detecting dotprod; length asserted.
        unsafe { neon::dot_q8_0_dotprod(w, x) }
    }
    #[allow(unsafe_code)]
    fn q8_2x4_sdot(w: [&[u8]; 2], x: [&[ActBlock]; 4]) -> [f32; 8] {
        check_tile(w, x);
        // SAFETY: only handed out after detecting dotprod; lengths asserted.
        unsafe { neon::dot_q8_0_2x4_dotprod(w, x) }
    }
    #[allow(unsafe_code)]
    fn q8_2x8_sdot(w: [&[u8]; 2], p: &[Panel8]) -> [f32; 16] {
        check_panel_rows(w, p.len(), pack::Q8_0_BLOCK_BYTES);
        // SAFETY: only handed out after detecting dotprod; lengths asserted.
        unsafe { neon::dot_q8_0_2x8_dotprod(w, p) }
    }
    #[allow(unsafe_code)]
    fn q8_2x8_smmla(w: [&[u8]; 2], p: &[Panel8]) -> [f32; 16] {
        check_panel_rows(w, p.len(), pack::Q8_0_BLOCK_BYTES);
        // SAFETY: only handed out after detecting i8mm; lengths asserted.
        unsafe { neon::dot_q8_0_2x8_i8mm(w, p) }
    }
    #[allow(unsafe_code)]
    fn q4(w: &[u8], x: &[ActBlock]) -> f32 {
        assert!(w.len() >= x.len() * pack::Q4_0_BLOCK_BYTES);
        // SAFETY: NEON is part of the aarch64 baseline; length asserted.
        unsafe { neon::dot_q4_0(w, x) }
    }
    #[allow(unsafe_code)]
    fn q4_sdot(w: &[u8], x: &[ActBlock]) -> f32 {
        assert!(w.len() >= x.len() * pack::Q4_0_BLOCK_BYTES);
        // SAFETY: only handed out after detecting dotprod; length asserted.
        unsafe { neon::dot_q4_0_dotprod(w, x) }
    }
    #[allow(unsafe_code)]
    fn q4_2x8(w: [&[u8]; 2], p: &[Panel16]) -> [f32; 16] {
        check_panel_rows(w, p.len(), pack::Q4_0_BLOCK_BYTES);
        // SAFETY: NEON is part of the aarch64 baseline; lengths asserted.
        unsafe { neon::dot_q4_0_2x8(w, p) }
    }
    /// The bounds the split panel kernels rely on.
    fn check_split(w: [&[u8]; 2], p: &[Panel8]) {
        assert!(p.len().is_multiple_of(2));
        check_panel_rows(w, p.len() / 2, pack::Q4_0_BLOCK_BYTES);
    }
    #[allow(unsafe_code)]
    fn q4_split_sdot(w: [&[u8]; 2], p: &[Panel8]) -> [f32; 16] {
        check_split(w, p);
        // SAFETY: only handed out after detecting dotprod; lengths asserted.
        unsafe { neon::dot_q4_0_2x8_split_dotprod(w, p) }
    }
    #[allow(unsafe_code)]
    fn q4_split_smmla(w: [&[u8]; 2], p: &[Panel8]) -> [f32; 16] {
        check_split(w, p);
        // SAFETY: only handed out after detecting i8mm; lengths asserted.
        unsafe { neon::dot_q4_0_2x8_split_i8mm(w, p) }
    }
    #[allow(unsafe_code)]
    fn f(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: NEON is part of the aarch64 baseline.
        unsafe { neon::dot_f32(a, b) }
    }
    #[allow(unsafe_code)]
    fn softmax(x: &mut [f32]) {
        // SAFETY: NEON is part of the aarch64 baseline.
        unsafe { neon::softmax(x) }
    }
    #[allow(unsafe_code)]
    fn gelu(x: &mut [f32]) {
        // SAFETY: NEON is part of the aarch64 baseline.
        unsafe { neon::gelu(x) }
    }
    #[allow(unsafe_code)]
    fn layer_norm(x: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
        assert_eq!(w.len(), b.len());
        // SAFETY: NEON is part of the aarch64 baseline; lengths asserted.
        unsafe { neon::layer_norm(x, w, b, eps) }
    }
    #[allow(unsafe_code)]
    fn quantize(x: &[f32], out: &mut Vec<ActBlock>) {
        assert!(x.len().is_multiple_of(QK));
        // SAFETY: NEON is part of the aarch64 baseline; length asserted.
        unsafe { neon::quantize_activations(x, out) }
    }
    #[allow(unsafe_code)]
    fn pack_panel16(x: &[f32], cols: usize, out: &mut Vec<Panel16>) {
        pack::pack_panel16_with(x, cols, out, |c| {
            assert_eq!(c.len(), QK);
            // SAFETY: NEON is part of the aarch64 baseline; length asserted.
            unsafe { neon::quantize_block16(c) }
        })
    }
    KernelSet {
        name: match (dotprod, i8mm) {
            (true, true) => "neon+dotprod+i8mm",
            (true, false) => "neon+dotprod",
            _ => "neon",
        },
        dot_q8_0: if dotprod { q8_sdot } else { q8 },
        dot_q8_0_2x4: if dotprod { q8_2x4_sdot } else { q8_2x4 },
        dot_q8_0_2x8: match (dotprod, i8mm) {
            (_, true) => Some(q8_2x8_smmla),
            (true, false) => Some(q8_2x8_sdot),
            _ => None,
        },
        dot_q4_0: if dotprod { q4_sdot } else { q4 },
        dot_q4_0_2x8: Some(q4_2x8),
        dot_q4_0_2x8_split: match (dotprod, i8mm) {
            (_, true) => Some(q4_split_smmla),
            (true, false) => Some(q4_split_sdot),
            _ => None,
        },
        dot_f32: f,
        softmax,
        gelu,
        layer_norm,
        quantize,
        pack_panel16,
        ..GENERIC
    }
}
