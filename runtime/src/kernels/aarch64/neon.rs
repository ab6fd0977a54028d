//! NEON kernels (baseline aarch64): i8 block dot products with widening multiplies.

use core::arch::aarch64::*;

use crate::kernels::qdot::{block_scale, ActBlock, Panel8, Q8_0_BLOCK_BYTES};
use crate::quant::QK;

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

/// Sum of the products of 32 signed bytes `w[0..32]` and `x`, with widening multiplies.
#[inline(always)]
unsafe fn block_dot_widening(w0: int8x16_t, w1: int8x16_t, x: &ActBlock) -> int32x4_t {
    // SAFETY: reads the 32-byte `qs` of an `ActBlock` in two 16-byte loads.
    unsafe {
        let x0 = vld1q_s8(x.qs.as_ptr());
        let x1 = vld1q_s8(x.qs.as_ptr().add(16));
        let p0 = vmlal_high_s8(vmull_s8(vget_low_s8(w0), vget_low_s8(x0)), w0, x0);
        let p1 = vmlal_high_s8(vmull_s8(vget_low_s8(w1), vget_low_s8(x1)), w1, x1);
        vpadalq_s16(vpaddlq_s16(p0), p1)
    }
}

/// The 2 x 4 tile of two Q8_0 weight rows against four tokens (see the AVX2 kernel), with
/// widening multiplies. Returns `[row 0 x tokens 0..4, row 1 x tokens 0..4]`.
///
/// # Safety
/// Both rows hold at least `x[0].len() * 34` bytes; the four slices have the same length.
#[target_feature(enable = "neon")]
pub unsafe fn dot_q8_0_2x4(w: [&[u8]; 2], x: [&[ActBlock]; 4]) -> [f32; 8] {
    let nb = x[0].len();
    debug_assert!(w.iter().all(|w| w.len() >= nb * Q8_0_BLOCK_BYTES));
    debug_assert!(x.iter().all(|s| s.len() == nb));
    // SAFETY: weight loads read 16 bytes at `2 + 34 b` and `18 + 34 b` (b < nb) of rows holding
    // `34 nb` bytes; activation loads stay in the `qs` of block `b < nb` of each slice.
    unsafe {
        let mut acc = [vdupq_n_f32(0.0); 8];
        for b in 0..nb {
            for r in 0..2 {
                let wb = w[r].as_ptr().add(b * Q8_0_BLOCK_BYTES);
                let w0 = vld1q_s8(wb.add(2) as *const i8);
                let w1 = vld1q_s8(wb.add(18) as *const i8);
                let d = block_scale(core::slice::from_raw_parts(wb, 2));
                for t in 0..4 {
                    let xb = x[t].get_unchecked(b);
                    let s = block_dot_widening(w0, w1, xb);
                    acc[r * 4 + t] = vmlaq_n_f32(acc[r * 4 + t], vcvtq_f32_s32(s), d * xb.d);
                }
            }
        }
        core::array::from_fn(|i| vaddvq_f32(acc[i]))
    }
}

/// `acc = INSTR acc, a, b` for an accumulating integer instruction on `.4s` / `.16b` vectors
/// (SDOT, SMMLA), which stable Rust has no intrinsic for.
macro_rules! accumulate {
    ($instr:literal, $acc:expr, $a:expr, $b:expr) => {{
        let mut acc: int32x4_t = $acc;
        core::arch::asm!(
            concat!($instr, " {acc:v}.4s, {a:v}.16b, {b:v}.16b"),
            acc = inout(vreg) acc,
            a = in(vreg) $a,
            b = in(vreg) $b,
            options(pure, nomem, nostack, preserves_flags)
        );
        acc
    }};
}

/// `acc += ` four-way dot products of the i8 lanes of `a` and `b` (SDOT, FEAT_DotProd). Only
/// for functions compiled with the `dotprod` target feature.
macro_rules! sdot {
    ($acc:expr, $a:expr, $b:expr) => {
        accumulate!("sdot", $acc, $a, $b)
    };
}

/// [`dot_q8_0`] with SDOT.
///
/// # Safety
/// The CPU must support dotprod; `w` must hold at least `x.len() * 34` bytes.
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn dot_q8_0_dotprod(w: &[u8], x: &[ActBlock]) -> f32 {
    debug_assert!(w.len() >= x.len() * Q8_0_BLOCK_BYTES);
    // SAFETY: as in `dot_q8_0`; SDOT is available by this function's contract.
    unsafe {
        let mut acc = vdupq_n_f32(0.0);
        for (b, xb) in x.iter().enumerate() {
            let wb = w.as_ptr().add(b * Q8_0_BLOCK_BYTES);
            let w0 = vld1q_s8(wb.add(2) as *const i8);
            let w1 = vld1q_s8(wb.add(18) as *const i8);
            let x0 = vld1q_s8(xb.qs.as_ptr());
            let x1 = vld1q_s8(xb.qs.as_ptr().add(16));
            let s = sdot!(sdot!(vdupq_n_s32(0), w0, x0), w1, x1);
            let d = block_scale(core::slice::from_raw_parts(wb, 2)) * xb.d;
            acc = vmlaq_n_f32(acc, vcvtq_f32_s32(s), d);
        }
        vaddvq_f32(acc)
    }
}

/// The 2 x 4 tile with SDOT.
///
/// # Safety
/// The CPU must support dotprod; both rows hold at least `x[0].len() * 34` bytes; the four
/// slices have the same length.
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn dot_q8_0_2x4_dotprod(w: [&[u8]; 2], x: [&[ActBlock]; 4]) -> [f32; 8] {
    let nb = x[0].len();
    debug_assert!(w.iter().all(|w| w.len() >= nb * Q8_0_BLOCK_BYTES));
    debug_assert!(x.iter().all(|s| s.len() == nb));
    // SAFETY: as in `dot_q8_0_2x4`; SDOT is available by this function's contract.
    unsafe {
        let mut acc = [vdupq_n_f32(0.0); 8];
        for b in 0..nb {
            let (wa, wb) = (
                w[0].as_ptr().add(b * Q8_0_BLOCK_BYTES),
                w[1].as_ptr().add(b * Q8_0_BLOCK_BYTES),
            );
            let (a0, a1) = (
                vld1q_s8(wa.add(2) as *const i8),
                vld1q_s8(wa.add(18) as *const i8),
            );
            let (b0, b1) = (
                vld1q_s8(wb.add(2) as *const i8),
                vld1q_s8(wb.add(18) as *const i8),
            );
            let da = block_scale(core::slice::from_raw_parts(wa, 2));
            let db = block_scale(core::slice::from_raw_parts(wb, 2));
            for t in 0..4 {
                let xb = x[t].get_unchecked(b);
                let x0 = vld1q_s8(xb.qs.as_ptr());
                let x1 = vld1q_s8(xb.qs.as_ptr().add(16));
                let sa = sdot!(sdot!(vdupq_n_s32(0), a0, x0), a1, x1);
                let sb = sdot!(sdot!(vdupq_n_s32(0), b0, x0), b1, x1);
                acc[t] = vmlaq_n_f32(acc[t], vcvtq_f32_s32(sa), da * xb.d);
                acc[4 + t] = vmlaq_n_f32(acc[4 + t], vcvtq_f32_s32(sb), db * xb.d);
            }
        }
        core::array::from_fn(|i| vaddvq_f32(acc[i]))
    }
}

/// Two Q8_0 weight rows against a panel of eight tokens with SDOT: each group of four weights,
/// duplicated into every 32-bit lane, meets four tokens' four values per instruction (no sign
/// trick: SDOT multiplies signed bytes). Returns `[row 0 x tokens 0..8, row 1 x tokens 0..8]`.
///
/// # Safety
/// The CPU must support dotprod; both rows hold at least `p.len() * 34` bytes.
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn dot_q8_0_2x8_dotprod(w: [&[u8]; 2], p: &[Panel8]) -> [f32; 16] {
    debug_assert!(w.iter().all(|w| w.len() >= p.len() * Q8_0_BLOCK_BYTES));
    // SAFETY: weight reads are 4 bytes at `2 + 4g + 34b` (g < 8, b < p.len()) and the scale's
    // 2 bytes at `34b`, inside rows of `34 p.len()` bytes; panel loads read 16-byte halves of
    // its 32-byte arrays; SDOT is available by this function's contract.
    unsafe {
        // f[r][h]: row r, tokens 4h..4h + 4.
        let mut f = [[vdupq_n_f32(0.0); 2]; 2];
        for (b, pb) in p.iter().enumerate() {
            let mut s = [[vdupq_n_s32(0); 2]; 2];
            for g in 0..QK / 4 {
                let x0 = vld1q_s8(pb.qs[g].as_ptr());
                let x1 = vld1q_s8(pb.qs[g].as_ptr().add(16));
                for r in 0..2 {
                    let at = w[r].as_ptr().add(b * Q8_0_BLOCK_BYTES + 2 + 4 * g);
                    let wg = vreinterpretq_s8_s32(vdupq_n_s32((at as *const i32).read_unaligned()));
                    s[r][0] = sdot!(s[r][0], x0, wg);
                    s[r][1] = sdot!(s[r][1], x1, wg);
                }
            }
            let dx = [vld1q_f32(pb.d.as_ptr()), vld1q_f32(pb.d.as_ptr().add(4))];
            for r in 0..2 {
                let wb = w[r].as_ptr().add(b * Q8_0_BLOCK_BYTES);
                let dw = block_scale(core::slice::from_raw_parts(wb, 2));
                for h in 0..2 {
                    let scale = vmulq_n_f32(dx[h], dw);
                    f[r][h] = vfmaq_f32(f[r][h], scale, vcvtq_f32_s32(s[r][h]));
                }
            }
        }
        let mut out = [0f32; 16];
        for r in 0..2 {
            for h in 0..2 {
                vst1q_f32(out.as_mut_ptr().add(8 * r + 4 * h), f[r][h]);
            }
        }
        out
    }
}

/// `acc += a * b^T` for 2 x 8 signed byte matrices `a` and `b` (SMMLA, from i8mm): lanes
/// `[a0.b0, a0.b1, a1.b0, a1.b1]`, each an 8-deep dot product. Only for functions compiled
/// with the `i8mm` target feature.
macro_rules! smmla {
    ($acc:expr, $a:expr, $b:expr) => {
        accumulate!("smmla", $acc, $a, $b)
    };
}

/// [`dot_q8_0_2x8_dotprod`] with SMMLA: eight weights of both rows form one 2 x 8 matrix, and
/// the panel's groups of four are zipped into the same eight weights of two tokens, so each
/// instruction makes 32 multiply-adds (SDOT: 16). Returns `[row 0 x tokens 0..8, row 1 x
/// tokens 0..8]`.
///
/// # Safety
/// The CPU must support i8mm; both rows hold at least `p.len() * 34` bytes.
#[target_feature(enable = "neon,i8mm")]
pub unsafe fn dot_q8_0_2x8_i8mm(w: [&[u8]; 2], p: &[Panel8]) -> [f32; 16] {
    debug_assert!(w.iter().all(|w| w.len() >= p.len() * Q8_0_BLOCK_BYTES));
    // SAFETY: weight reads are 8 bytes at `2 + 8c + 34b` (c < 4, b < p.len()) and the scale's
    // 2 bytes at `34b`, inside rows of `34 p.len()` bytes; panel loads read 16-byte halves of
    // its 32-byte arrays; SMMLA is available by this function's contract.
    unsafe {
        // f[q]: tokens 2q and 2q + 1, lanes [r0 t2q, r0 t2q+1, r1 t2q, r1 t2q+1].
        let mut f = [vdupq_n_f32(0.0); 4];
        for (b, pb) in p.iter().enumerate() {
            let (w0, w1) = (
                w[0].as_ptr().add(b * Q8_0_BLOCK_BYTES),
                w[1].as_ptr().add(b * Q8_0_BLOCK_BYTES),
            );
            let mut s = [vdupq_n_s32(0); 4];
            for c in 0..QK / 8 {
                let a = vcombine_s8(
                    vld1_s8(w0.add(2 + 8 * c) as *const i8),
                    vld1_s8(w1.add(2 + 8 * c) as *const i8),
                );
                for half in 0..2 {
                    let x0 = vreinterpretq_s32_s8(vld1q_s8(pb.qs[2 * c].as_ptr().add(16 * half)));
                    let x1 =
                        vreinterpretq_s32_s8(vld1q_s8(pb.qs[2 * c + 1].as_ptr().add(16 * half)));
                    // Tokens 4 half + 0, 1 (then 2, 3): each token's four activations of group
                    // 2c, then its four of group 2c + 1.
                    let lo = vreinterpretq_s8_s32(vzip1q_s32(x0, x1));
                    let hi = vreinterpretq_s8_s32(vzip2q_s32(x0, x1));
                    s[2 * half] = smmla!(s[2 * half], a, lo);
                    s[2 * half + 1] = smmla!(s[2 * half + 1], a, hi);
                }
            }
            let d0 = block_scale(core::slice::from_raw_parts(w0, 2));
            let d1 = block_scale(core::slice::from_raw_parts(w1, 2));
            let dw = vcombine_f32(vdup_n_f32(d0), vdup_n_f32(d1));
            for (q, (fq, sq)) in f.iter_mut().zip(s).enumerate() {
                let dx = vld1_f32(pb.d.as_ptr().add(2 * q));
                let scale = vmulq_f32(vcombine_f32(dx, dx), dw);
                *fq = vfmaq_f32(*fq, scale, vcvtq_f32_s32(sq));
            }
        }
        let mut out = [0f32; 16];
        for (q, fq) in f.iter().enumerate() {
            let mut l = [0f32; 4];
            vst1q_f32(l.as_mut_ptr(), *fq);
            out[2 * q..2 * q + 2].copy_from_slice(&l[..2]);
            out[8 + 2 * q..8 + 2 * q + 2].copy_from_slice(&l[2..]);
        }
        out
    }
}
