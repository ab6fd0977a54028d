//! NEON kernels (baseline aarch64): i8 block dot products with widening multiplies.

use core::arch::aarch64::*;

use crate::kernels::qdot::{block_scale, ActBlock, Q8_0_BLOCK_BYTES};

/// Dot product of one Q8_0 weight row (`x.len()` blocks of 34 bytes) with activation blocks.
/// Products are summed pairwise in i16 (at most 2 * 127 * 127), then widened to i32.
///
/// # Safety
/// `w` must hold at least `x.len() * 34` bytes (NEON is always present on aarch64).
#[target_feature(enable = "neon")]
pub unsafe fn dot_q8_0(w: &[u8], x: &[ActBlock]) -> f32 {
    debug_assert!(w.len() >= x.len() * Q8_0_BLOCK_BYTES);
    // SAFETY: every load reads 16 bytes at `2 + 34 * b` or `18 + 34 * b` within `w` (length
    // checked by the caller), or 16 bytes of an `ActBlock`'s 32-byte `qs`.
    unsafe {
        let mut acc = vdupq_n_f32(0.0);
        for (b, xb) in x.iter().enumerate() {
            let wb = w.as_ptr().add(b * Q8_0_BLOCK_BYTES);
            let w0 = vld1q_s8(wb.add(2) as *const i8);
            let w1 = vld1q_s8(wb.add(18) as *const i8);
            let x0 = vld1q_s8(xb.qs.as_ptr());
            let x1 = vld1q_s8(xb.qs.as_ptr().add(16));
            let p0 = vmlal_high_s8(vmull_s8(vget_low_s8(w0), vget_low_s8(x0)), w0, x0);
            let p1 = vmlal_high_s8(vmull_s8(vget_low_s8(w1), vget_low_s8(x1)), w1, x1);
            let s = vpadalq_s16(vpaddlq_s16(p0), p1);
            let d = block_scale(core::slice::from_raw_parts(wb, 2)) * xb.d;
            acc = vmlaq_n_f32(acc, vcvtq_f32_s32(s), d);
        }
        vaddvq_f32(acc)
    }
}
