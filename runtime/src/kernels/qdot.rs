//! Quantized activations and the block dot products of Q8_0 and Q4_0 weights against them.

use alloc::vec::Vec;

use crate::quant::QK;

/// Bytes of one Q8_0 weight block (f16 scale + 32 i8).
pub const Q8_0_BLOCK_BYTES: usize = 34;
/// Bytes of one Q4_0 weight block (f16 scale + 16 nibble pairs).
pub const Q4_0_BLOCK_BYTES: usize = 18;

/// 32 activations quantized symmetrically to i8 with an f32 scale: value = `qs[j] * d`.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct ActBlock {
    /// Scale.
    pub d: f32,
    /// Quantized values in -127..=127.
    pub qs: [i8; QK],
}

/// Quantizes `x` (a multiple of 32 values) into activation blocks, appended to `out`.
pub fn quantize_activations(x: &[f32], out: &mut Vec<ActBlock>) {
    for chunk in x.chunks_exact(QK) {
        let amax = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut qs = [0i8; QK];
        for (q, &v) in qs.iter_mut().zip(chunk) {
            let r = v * id;
            // Round half away from zero; |r| <= 127 by construction.
            *q = (r + if r >= 0.0 { 0.5 } else { -0.5 }) as i8;
        }
        out.push(ActBlock { d, qs });
    }
}

/// Quantizes `x` as [`quantize_activations`] does into `hi`, and what that leaves
/// (`x - hi`) into `lo`: `hi + lo` carries about 14 bits, for weights whose products must stay
/// close to f32 (Q4_0).
pub fn quantize_activations_two_level(x: &[f32], hi: &mut Vec<ActBlock>, lo: &mut Vec<ActBlock>) {
    let start = hi.len();
    quantize_activations(x, hi);
    let mut residual = Vec::with_capacity(x.len());
    for (chunk, b) in x.chunks_exact(QK).zip(&hi[start..]) {
        residual.extend(chunk.iter().zip(&b.qs).map(|(&v, &q)| v - q as f32 * b.d));
    }
    quantize_activations(&residual, lo);
}

/// The f16 scale at the start of a weight block.
#[inline(always)]
pub fn block_scale(b: &[u8]) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
}
