//! NEON kernels (baseline aarch64): i8 block dot products with widening multiplies, Q4_0
//! panels with widening 16-bit multiply-adds, and SDOT / SMMLA variants where the CPU has
//! dotprod / i8mm; f32 dot products, softmax, GELU, LayerNorm and the activations'
//! quantization on four lanes, with the AVX2 kernels' arithmetic.

use alloc::vec::Vec;
use core::arch::aarch64::*;

use crate::kernels::generic::{ERFC_P, ERFC_POLY, EXP_POLY, LN2_HI, LN2_LO};
use crate::kernels::pack::{
    block_scale, ActBlock, Panel16, Panel8, PANEL_TOKENS, Q4_0_BLOCK_BYTES, Q8_0_BLOCK_BYTES,
};
use crate::quant::QK;

/// The row kernels' loop: for each activation block `$xb` and the weight block at `$wb`
/// (`$bytes` apart, its f16 scale first), the i32 lanes `$sum` scaled by both scales into f32
/// lanes, summed across at the end. Expands inside the kernels' `unsafe` blocks.
macro_rules! row_dot {
    ($w:expr, $x:expr, $bytes:expr, |$wb:ident, $xb:ident| $sum:expr) => {{
        let mut acc = vdupq_n_f32(0.0);
        for (b, $xb) in $x.iter().enumerate() {
            let $wb = $w.as_ptr().add(b * $bytes);
            let s: int32x4_t = $sum;
            let d = block_scale(core::slice::from_raw_parts($wb, 2)) * $xb.d;
            acc = vmlaq_n_f32(acc, vcvtq_f32_s32(s), d);
        }
        vaddvq_f32(acc)
    }};
}

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
        row_dot!(w, x, Q8_0_BLOCK_BYTES, |wb, xb| {
            let w0 = vld1q_s8(wb.add(2) as *const i8);
            let w1 = vld1q_s8(wb.add(18) as *const i8);
            block_dot_widening(w0, w1, xb)
        })
    }
}

/// The 32 weights of the Q4_0 block at `wb` (scale, then 16 bytes: weight `j` in byte `j`'s
/// low nibble, weight `j + 16` in its high one) as signed bytes in `-8..=7`: weights `0..16`,
/// then `16..32`.
///
/// # Safety
/// `wb` addresses the block's 18 readable bytes.
#[inline(always)]
unsafe fn unpack_q4_0(wb: *const u8) -> (int8x16_t, int8x16_t) {
    // SAFETY: one 16-byte load at `wb + 2`, within the block (the caller's contract).
    unsafe {
        let packed = vld1q_u8(wb.add(2));
        let eight = vdupq_n_s8(8);
        let lo = vreinterpretq_s8_u8(vandq_u8(packed, vdupq_n_u8(0x0f)));
        let hi = vreinterpretq_s8_u8(vshrq_n_u8(packed, 4));
        (vsubq_s8(lo, eight), vsubq_s8(hi, eight))
    }
}

/// Dot product of one Q4_0 weight row (`x.len()` blocks of 18 bytes) with activation blocks:
/// each block unpacked to signed bytes, then as [`dot_q8_0`].
///
/// # Safety
/// `w` must hold at least `x.len() * 18` bytes (NEON is always present on aarch64).
#[target_feature(enable = "neon")]
pub unsafe fn dot_q4_0(w: &[u8], x: &[ActBlock]) -> f32 {
    debug_assert!(w.len() >= x.len() * Q4_0_BLOCK_BYTES);
    // SAFETY: each block read is the 18 bytes at `18 b` (b < x.len()) within `w` (length
    // checked by the caller); activation loads stay in an `ActBlock`'s `qs`.
    unsafe {
        row_dot!(w, x, Q4_0_BLOCK_BYTES, |wb, xb| {
            let (w0, w1) = unpack_q4_0(wb);
            block_dot_widening(w0, w1, xb)
        })
    }
}

/// Two Q4_0 weight rows against 16-bit panels of eight tokens (the layout of the AVX2 kernel):
/// each block is unpacked once to 32 i16; each weight pair, duplicated into every 32-bit lane,
/// meets two tokens' two values per widening multiply-add (`smlal`, exact in i32), the pairs'
/// halves added at the end of the block; one conversion and one multiply-add per block, row and
/// four tokens apply the scales. Returns `[row 0 x tokens 0..8, row 1 x tokens 0..8]`.
///
/// # Safety
/// Both rows hold at least `p.len() * 18` bytes (NEON is always present on aarch64).
#[target_feature(enable = "neon")]
pub unsafe fn dot_q4_0_2x8(w: [&[u8]; 2], p: &[Panel16]) -> [f32; 16] {
    debug_assert!(w.iter().all(|w| w.len() >= p.len() * Q4_0_BLOCK_BYTES));
    // SAFETY: block reads are the 18 bytes at `18 b` (b < p.len()) of rows holding `18 p.len()`
    // bytes; the unpacked weights live in a local of 32 i16, read 4 bytes at `4 q` (q < 16);
    // panel loads read 16-byte halves of its 32-byte arrays.
    unsafe {
        // f[r][h]: row r, tokens 4h..4h + 4.
        let mut f = [[vdupq_n_f32(0.0); 2]; 2];
        let mut u = [[0i16; QK]; 2];
        for (b, pb) in p.iter().enumerate() {
            let mut dw = [0f32; 2];
            for r in 0..2 {
                let wb = w[r].as_ptr().add(b * Q4_0_BLOCK_BYTES);
                let (lo, hi) = unpack_q4_0(wb);
                let at = u[r].as_mut_ptr();
                vst1q_s16(at, vmovl_s8(vget_low_s8(lo)));
                vst1q_s16(at.add(8), vmovl_high_s8(lo));
                vst1q_s16(at.add(16), vmovl_s8(vget_low_s8(hi)));
                vst1q_s16(at.add(24), vmovl_high_s8(hi));
                dw[r] = block_scale(core::slice::from_raw_parts(wb, 2));
            }
            // s[r][c]: row r, tokens 2c and 2c + 1, lanes [even, odd, even, odd] values.
            let mut s = [[vdupq_n_s32(0); 4]; 2];
            for (q, pair) in pb.qs.iter().enumerate() {
                let xa = vld1q_s16(pair.as_ptr());
                let xb = vld1q_s16(pair.as_ptr().add(8));
                for r in 0..2 {
                    let wq = vld1q_dup_s32(u[r].as_ptr().add(2 * q) as *const i32);
                    let wq = vreinterpretq_s16_s32(wq);
                    let wl = vget_low_s16(wq);
                    s[r][0] = vmlal_s16(s[r][0], vget_low_s16(xa), wl);
                    s[r][1] = vmlal_high_s16(s[r][1], xa, wq);
                    s[r][2] = vmlal_s16(s[r][2], vget_low_s16(xb), wl);
                    s[r][3] = vmlal_high_s16(s[r][3], xb, wq);
                }
            }
            let dx = [vld1q_f32(pb.d.as_ptr()), vld1q_f32(pb.d.as_ptr().add(4))];
            for r in 0..2 {
                for h in 0..2 {
                    let sums = vpaddq_s32(s[r][2 * h], s[r][2 * h + 1]);
                    let scale = vmulq_n_f32(dx[h], dw[r]);
                    f[r][h] = vfmaq_f32(f[r][h], scale, vcvtq_f32_s32(sums));
                }
            }
        }
        rows_2x8(&f)
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

/// The 2 x 8 panel kernels' results from their accumulators `f[row][half]` (tokens
/// `4 half..4 half + 4`): `[row 0 x tokens 0..8, row 1 x tokens 0..8]`.
#[inline(always)]
unsafe fn rows_2x8(f: &[[float32x4_t; 2]; 2]) -> [f32; 16] {
    let mut out = [0f32; 2 * PANEL_TOKENS];
    for (r, halves) in f.iter().enumerate() {
        for (h, v) in halves.iter().enumerate() {
            // SAFETY: four floats stored at `8 r + 4 h <= 12` of sixteen.
            unsafe { vst1q_f32(out.as_mut_ptr().add(8 * r + 4 * h), *v) };
        }
    }
    out
}

/// The SMMLA panel kernels' results from their accumulators `f[q]` (lanes `[row 0 token 2q,
/// row 0 token 2q + 1, row 1 token 2q, row 1 token 2q + 1]`): `[row 0 x tokens 0..8, row 1 x
/// tokens 0..8]`.
#[inline(always)]
unsafe fn rows_of_pairs(f: &[float32x4_t; 4]) -> [f32; 16] {
    let mut out = [0f32; 2 * PANEL_TOKENS];
    for (q, fq) in f.iter().enumerate() {
        let mut l = [0f32; 4];
        // SAFETY: four floats stored into `l`.
        unsafe { vst1q_f32(l.as_mut_ptr(), *fq) };
        out[2 * q..2 * q + 2].copy_from_slice(&l[..2]);
        out[8 + 2 * q..8 + 2 * q + 2].copy_from_slice(&l[2..]);
    }
    out
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

/// [`block_dot_widening`] with SDOT. Only for functions compiled with the `dotprod` target
/// feature.
macro_rules! block_dot_sdot_body {
    ($w0:expr, $w1:expr, $x:expr) => {{
        let x0 = vld1q_s8($x.qs.as_ptr());
        let x1 = vld1q_s8($x.qs.as_ptr().add(16));
        sdot!(sdot!(vdupq_n_s32(0), $w0, x0), $w1, x1)
    }};
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
        row_dot!(w, x, Q8_0_BLOCK_BYTES, |wb, xb| {
            let w0 = vld1q_s8(wb.add(2) as *const i8);
            let w1 = vld1q_s8(wb.add(18) as *const i8);
            block_dot_sdot_body!(w0, w1, xb)
        })
    }
}

/// [`dot_q4_0`] with SDOT.
///
/// # Safety
/// The CPU must support dotprod; `w` must hold at least `x.len() * 18` bytes.
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn dot_q4_0_dotprod(w: &[u8], x: &[ActBlock]) -> f32 {
    debug_assert!(w.len() >= x.len() * Q4_0_BLOCK_BYTES);
    // SAFETY: as in `dot_q4_0`; SDOT is available by this function's contract.
    unsafe {
        row_dot!(w, x, Q4_0_BLOCK_BYTES, |wb, xb| {
            let (w0, w1) = unpack_q4_0(wb);
            block_dot_sdot_body!(w0, w1, xb)
        })
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

/// Two Q8_0 weight rows against a panel of eight tokens with SDOT, a block at a time through
/// [`sdot_block`] (no sign trick: SDOT multiplies signed bytes). Returns `[row 0 x tokens 0..8,
/// row 1 x tokens 0..8]`.
///
/// # Safety
/// The CPU must support dotprod; both rows hold at least `p.len() * 34` bytes.
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn dot_q8_0_2x8_dotprod(w: [&[u8]; 2], p: &[Panel8]) -> [f32; 16] {
    debug_assert!(w.iter().all(|w| w.len() >= p.len() * Q8_0_BLOCK_BYTES));
    // SAFETY: block `b < p.len()` of each row (34 bytes at `34 b`, inside rows of `34 p.len()`
    // bytes) holds the scale read here and the 32 values `sdot_block` reads from `34 b + 2`;
    // panel loads read its arrays; SDOT is available by this function's contract.
    unsafe {
        // f[r][h]: row r, tokens 4h..4h + 4.
        let mut f = [[vdupq_n_f32(0.0); 2]; 2];
        for (b, pb) in p.iter().enumerate() {
            let rows = [
                w[0].as_ptr().add(b * Q8_0_BLOCK_BYTES),
                w[1].as_ptr().add(b * Q8_0_BLOCK_BYTES),
            ];
            let s = sdot_block(rows.map(|r| r.wrapping_add(2) as *const i8), pb);
            let dx = [vld1q_f32(pb.d.as_ptr()), vld1q_f32(pb.d.as_ptr().add(4))];
            for r in 0..2 {
                let dw = block_scale(core::slice::from_raw_parts(rows[r], 2));
                for h in 0..2 {
                    let scale = vmulq_n_f32(dx[h], dw);
                    f[r][h] = vfmaq_f32(f[r][h], scale, vcvtq_f32_s32(s[r][h]));
                }
            }
        }
        rows_2x8(&f)
    }
}

/// One block's SDOT sums of two rows of 32 signed bytes (at `w[r]`) against a panel of eight
/// tokens: `[row][half]`, tokens `4 half..4 half + 4`. Each group of four weights, duplicated
/// into every 32-bit lane, meets four tokens' four values per instruction.
///
/// # Safety
/// The CPU must support dotprod; both pointers address 32 readable bytes.
#[target_feature(enable = "neon,dotprod")]
#[inline]
unsafe fn sdot_block(w: [*const i8; 2], pb: &Panel8) -> [[int32x4_t; 2]; 2] {
    // SAFETY: weight reads are 4 bytes at `4 g` (g < 8) of each row's 32 (the caller's
    // contract); panel loads read 16-byte halves of its 32-byte arrays.
    unsafe {
        let mut s = [[vdupq_n_s32(0); 2]; 2];
        for g in 0..QK / 4 {
            let x0 = vld1q_s8(pb.qs[g].as_ptr());
            let x1 = vld1q_s8(pb.qs[g].as_ptr().add(16));
            for r in 0..2 {
                let at = w[r].add(4 * g) as *const i32;
                let wg = vreinterpretq_s8_s32(vdupq_n_s32(at.read_unaligned()));
                s[r][0] = sdot!(s[r][0], x0, wg);
                s[r][1] = sdot!(s[r][1], x1, wg);
            }
        }
        s
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

/// [`dot_q8_0_2x8_dotprod`] with SMMLA, a block at a time through [`smmla_block`]: 32
/// multiply-adds an instruction (SDOT: 16). Returns `[row 0 x tokens 0..8, row 1 x tokens
/// 0..8]`.
///
/// # Safety
/// The CPU must support i8mm; both rows hold at least `p.len() * 34` bytes.
#[target_feature(enable = "neon,i8mm")]
pub unsafe fn dot_q8_0_2x8_i8mm(w: [&[u8]; 2], p: &[Panel8]) -> [f32; 16] {
    debug_assert!(w.iter().all(|w| w.len() >= p.len() * Q8_0_BLOCK_BYTES));
    // SAFETY: as in `dot_q8_0_2x8_dotprod`, with `smmla_block`; SMMLA is available by this
    // function's contract.
    unsafe {
        // f[q]: tokens 2q and 2q + 1, lanes [r0 t2q, r0 t2q+1, r1 t2q, r1 t2q+1].
        let mut f = [vdupq_n_f32(0.0); 4];
        for (b, pb) in p.iter().enumerate() {
            let (w0, w1) = (
                w[0].as_ptr().add(b * Q8_0_BLOCK_BYTES),
                w[1].as_ptr().add(b * Q8_0_BLOCK_BYTES),
            );
            let s = smmla_block([w0.add(2) as *const i8, w1.add(2) as *const i8], pb);
            let d0 = block_scale(core::slice::from_raw_parts(w0, 2));
            let d1 = block_scale(core::slice::from_raw_parts(w1, 2));
            let dw = vcombine_f32(vdup_n_f32(d0), vdup_n_f32(d1));
            for (q, (fq, sq)) in f.iter_mut().zip(s).enumerate() {
                let dx = vld1_f32(pb.d.as_ptr().add(2 * q));
                let scale = vmulq_f32(vcombine_f32(dx, dx), dw);
                *fq = vfmaq_f32(*fq, scale, vcvtq_f32_s32(sq));
            }
        }
        rows_of_pairs(&f)
    }
}

/// One block's SMMLA sums of two rows of 32 signed bytes (at `w[r]`) against a panel of eight
/// tokens: `[q]` for tokens `2q, 2q + 1`, lanes `[r0 t2q, r0 t2q+1, r1 t2q, r1 t2q+1]`. Eight
/// weights of both rows form one 2 x 8 matrix, and the panel's groups of four are zipped into
/// the same eight values of two tokens.
///
/// # Safety
/// The CPU must support i8mm; both pointers address 32 readable bytes.
#[target_feature(enable = "neon,i8mm")]
#[inline]
unsafe fn smmla_block(w: [*const i8; 2], pb: &Panel8) -> [int32x4_t; 4] {
    // SAFETY: weight reads are 8 bytes at `8 c` (c < 4) of each row's 32 (the caller's
    // contract); panel loads read 16-byte halves of its 32-byte arrays.
    unsafe {
        let mut s = [vdupq_n_s32(0); 4];
        for c in 0..QK / 8 {
            let a = vcombine_s8(vld1_s8(w[0].add(8 * c)), vld1_s8(w[1].add(8 * c)));
            for half in 0..2 {
                let x0 = vreinterpretq_s32_s8(vld1q_s8(pb.qs[2 * c].as_ptr().add(16 * half)));
                let x1 = vreinterpretq_s32_s8(vld1q_s8(pb.qs[2 * c + 1].as_ptr().add(16 * half)));
                // Tokens 4 half + 0, 1 (then 2, 3): each token's four values of group 2c, then
                // its four of group 2c + 1.
                let lo = vreinterpretq_s8_s32(vzip1q_s32(x0, x1));
                let hi = vreinterpretq_s8_s32(vzip2q_s32(x0, x1));
                s[2 * half] = smmla!(s[2 * half], a, lo);
                s[2 * half + 1] = smmla!(s[2 * half + 1], a, hi);
            }
        }
        s
    }
}

/// Unpacks the Q4_0 block `b` of both rows into `u` (signed bytes, in order) and returns the
/// rows' scales and weight sums.
///
/// # Safety
/// Both rows hold block `b` (18 bytes at `18 b`).
#[inline(always)]
unsafe fn unpack_pair_q4_0(w: [&[u8]; 2], b: usize, u: &mut [[i8; QK]; 2]) -> ([f32; 2], [i32; 2]) {
    let (mut dw, mut sums) = ([0f32; 2], [0i32; 2]);
    // SAFETY: block reads within the rows (the caller's contract); stores fill `u[r]`'s 32
    // bytes.
    unsafe {
        for r in 0..2 {
            let wb = w[r].as_ptr().add(b * Q4_0_BLOCK_BYTES);
            let (lo, hi) = unpack_q4_0(wb);
            vst1q_s8(u[r].as_mut_ptr(), lo);
            vst1q_s8(u[r].as_mut_ptr().add(16), hi);
            sums[r] = vaddlvq_s8(lo) as i32 + vaddlvq_s8(hi) as i32;
            dw[r] = block_scale(core::slice::from_raw_parts(wb, 2));
        }
    }
    (dw, sums)
}

/// The split panels' block sum `256 high + low + 128 sum(w)` from its two halves' sums.
#[inline(always)]
unsafe fn join_split(high: int32x4_t, low: int32x4_t, wsum: int32x4_t) -> int32x4_t {
    // SAFETY: register-only arithmetic (NEON is the aarch64 baseline).
    unsafe {
        vaddq_s32(
            vaddq_s32(vshlq_n_s32::<8>(high), low),
            vshlq_n_s32::<7>(wsum),
        )
    }
}

/// Two Q4_0 weight rows against split 16-bit panels of eight tokens (`[high, low]` byte
/// panels per block, as [`crate::kernels::pack::split_panel16`] makes them) with SDOT: each
/// block is unpacked once to signed bytes, which [`sdot_block`] multiplies with the high and
/// the low panel (16 products an instruction, where `smlal` makes 4), and the halves are
/// joined exactly as the 16-bit sums. Returns `[row 0 x tokens 0..8, row 1 x tokens 0..8]`.
///
/// # Safety
/// The CPU must support dotprod; `p.len()` is even and both rows hold at least
/// `p.len() / 2 * 18` bytes.
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn dot_q4_0_2x8_split_dotprod(w: [&[u8]; 2], p: &[Panel8]) -> [f32; 16] {
    debug_assert!(p.len().is_multiple_of(2));
    debug_assert!(w.iter().all(|w| w.len() >= p.len() / 2 * Q4_0_BLOCK_BYTES));
    // SAFETY: block reads within the rows (`18 p.len() / 2` bytes each); `sdot_block` reads
    // the unpacked weights' 32-byte local rows and the panels; SDOT is available by this
    // function's contract.
    unsafe {
        // f[r][h]: row r, tokens 4h..4h + 4.
        let mut f = [[vdupq_n_f32(0.0); 2]; 2];
        let mut u = [[0i8; QK]; 2];
        for (b, halves) in p.chunks_exact(2).enumerate() {
            let (dw, wsum) = unpack_pair_q4_0(w, b, &mut u);
            let rows = [u[0].as_ptr(), u[1].as_ptr()];
            let (high, low) = (sdot_block(rows, &halves[0]), sdot_block(rows, &halves[1]));
            let d = &halves[0].d;
            let dx = [vld1q_f32(d.as_ptr()), vld1q_f32(d.as_ptr().add(4))];
            for r in 0..2 {
                for h in 0..2 {
                    let isum = join_split(high[r][h], low[r][h], vdupq_n_s32(wsum[r]));
                    let scale = vmulq_n_f32(dx[h], dw[r]);
                    f[r][h] = vfmaq_f32(f[r][h], scale, vcvtq_f32_s32(isum));
                }
            }
        }
        rows_2x8(&f)
    }
}

/// [`dot_q4_0_2x8_split_dotprod`] with SMMLA ([`smmla_block`], as [`dot_q8_0_2x8_i8mm`]): 32
/// products an instruction. Returns `[row 0 x tokens 0..8, row 1 x tokens 0..8]`.
///
/// # Safety
/// The CPU must support i8mm; `p.len()` is even and both rows hold at least
/// `p.len() / 2 * 18` bytes.
#[target_feature(enable = "neon,i8mm")]
pub unsafe fn dot_q4_0_2x8_split_i8mm(w: [&[u8]; 2], p: &[Panel8]) -> [f32; 16] {
    debug_assert!(p.len().is_multiple_of(2));
    debug_assert!(w.iter().all(|w| w.len() >= p.len() / 2 * Q4_0_BLOCK_BYTES));
    // SAFETY: as in `dot_q4_0_2x8_split_dotprod`, with `smmla_block`; SMMLA is available by
    // this function's contract.
    unsafe {
        // f[q]: tokens 2q and 2q + 1, lanes [r0 t2q, r0 t2q+1, r1 t2q, r1 t2q+1].
        let mut f = [vdupq_n_f32(0.0); 4];
        let mut u = [[0i8; QK]; 2];
        for (b, halves) in p.chunks_exact(2).enumerate() {
            let (dw, wsum) = unpack_pair_q4_0(w, b, &mut u);
            let rows = [u[0].as_ptr(), u[1].as_ptr()];
            let (high, low) = (smmla_block(rows, &halves[0]), smmla_block(rows, &halves[1]));
            let dwv = vcombine_f32(vdup_n_f32(dw[0]), vdup_n_f32(dw[1]));
            let ws = vcombine_s32(vdup_n_s32(wsum[0]), vdup_n_s32(wsum[1]));
            for q in 0..4 {
                let dx = vld1_f32(halves[0].d.as_ptr().add(2 * q));
                let scale = vmulq_f32(vcombine_f32(dx, dx), dwv);
                let isum = join_split(high[q], low[q], ws);
                f[q] = vfmaq_f32(f[q], scale, vcvtq_f32_s32(isum));
            }
        }
        rows_of_pairs(&f)
    }
}

/// f32 dot product on four accumulators of four lanes.
///
/// # Safety
/// NEON is always present on aarch64; `a` and `b` may differ in length (the shorter counts).
#[target_feature(enable = "neon")]
pub unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let full = n / 16 * 16;
    // SAFETY: loads of four floats at `i + 4 <= full <= n` in both slices.
    unsafe {
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [vdupq_n_f32(0.0); 4];
        for i in (0..full).step_by(16) {
            for (j, s) in acc.iter_mut().enumerate() {
                let at = i + 4 * j;
                *s = vfmaq_f32(*s, vld1q_f32(pa.add(at)), vld1q_f32(pb.add(at)));
            }
        }
        let s = vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3]));
        let mut s = vaddvq_f32(s);
        for i in full..n {
            s += a[i] * b[i];
        }
        s
    }
}

/// `e^x` for four lanes: the AVX2 kernel's arithmetic (Cephes' range reduction `x = n ln 2 + r`
/// and [`EXP_POLY`] for `e^r`, scaled by `2^n` through the exponent bits). Inputs are clamped
/// to `[-87.3, 88.3]`, so the result stays a normal float.
#[inline(always)]
unsafe fn exp_v(x: float32x4_t) -> float32x4_t {
    // SAFETY: register-only arithmetic (NEON is the aarch64 baseline).
    unsafe {
        let x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(-87.3)), vdupq_n_f32(88.3));
        let n = vrndnq_f32(vmulq_n_f32(x, core::f32::consts::LOG2_E));
        // r = x - n ln 2, with ln 2 split in two for precision.
        let r = vfmsq_f32(x, n, vdupq_n_f32(LN2_HI));
        let r = vfmsq_f32(r, n, vdupq_n_f32(LN2_LO));
        let mut p = vdupq_n_f32(EXP_POLY[0]);
        for c in &EXP_POLY[1..] {
            p = vfmaq_f32(vdupq_n_f32(*c), p, r);
        }
        let y = vaddq_f32(vfmaq_f32(r, p, vmulq_f32(r, r)), vdupq_n_f32(1.0));
        // 2^n from the exponent field; n is in [-126, 127] after the clamp.
        let bits = vshlq_n_s32::<23>(vaddq_s32(vcvtnq_s32_f32(n), vdupq_n_s32(127)));
        vmulq_f32(y, vreinterpretq_f32_s32(bits))
    }
}

/// Exact GELU `x Phi(x)` for four lanes, as the AVX2 kernel computes it: `erfc` from
/// [`ERFC_POLY`] (absolute error below 1.5e-7) on `|x| / sqrt 2`, so `Phi` keeps its precision
/// for negative `x`.
#[inline(always)]
unsafe fn gelu_v(x: float32x4_t) -> float32x4_t {
    // SAFETY: register-only arithmetic (NEON is the aarch64 baseline).
    unsafe {
        let one = vdupq_n_f32(1.0);
        let z = vmulq_n_f32(vabsq_f32(x), core::f32::consts::FRAC_1_SQRT_2);
        let t = vdivq_f32(one, vfmaq_f32(one, vdupq_n_f32(ERFC_P), z));
        let mut p = vdupq_n_f32(ERFC_POLY[0]);
        for c in &ERFC_POLY[1..] {
            p = vfmaq_f32(vdupq_n_f32(*c), p, t);
        }
        p = vmulq_f32(p, t);
        // erfc(z) = p e^{-z^2}; Phi(x) = 1 - erfc/2 for x >= 0, erfc/2 below.
        let half_erfc = vmulq_n_f32(vmulq_f32(p, exp_v(vnegq_f32(vmulq_f32(z, z)))), 0.5);
        let negative = vcltq_f32(x, vdupq_n_f32(0.0));
        let phi = vbslq_f32(negative, half_erfc, vsubq_f32(one, half_erfc));
        vmulq_f32(x, phi)
    }
}

/// Four lanes of `s[at..]`, padded with `pad` past its end.
#[inline(always)]
unsafe fn load_padded(s: &[f32], at: usize, pad: f32) -> float32x4_t {
    let mut lanes = [pad; 4];
    let n = (s.len() - at).min(4);
    lanes[..n].copy_from_slice(&s[at..at + n]);
    // SAFETY: `lanes` holds four floats.
    unsafe { vld1q_f32(lanes.as_ptr()) }
}

/// Stores the first `min(4, s.len() - at)` lanes of `v` at `s[at..]`.
#[inline(always)]
unsafe fn store_partial(s: &mut [f32], at: usize, v: float32x4_t) {
    let mut lanes = [0f32; 4];
    // SAFETY: `lanes` holds four floats.
    unsafe { vst1q_f32(lanes.as_mut_ptr(), v) };
    let n = (s.len() - at).min(4);
    s[at..at + n].copy_from_slice(&lanes[..n]);
}

/// Softmax's exponentials without the division: `x` becomes `e^(x - max x)` in place (with
/// [`exp_v`]); returns their sum.
///
/// # Safety
/// NEON is always present on aarch64.
#[target_feature(enable = "neon")]
pub unsafe fn exp_sum(x: &mut [f32]) -> f32 {
    let n = x.len();
    let full = n / 4 * 4;
    // SAFETY: full-width loads and stores at `i + 4 <= full <= n`; the tail goes through the
    // padded helpers, which copy within bounds.
    unsafe {
        let mut m = vdupq_n_f32(f32::NEG_INFINITY);
        for i in (0..full).step_by(4) {
            m = vmaxq_f32(m, vld1q_f32(x.as_ptr().add(i)));
        }
        if full < n {
            m = vmaxq_f32(m, load_padded(x, full, f32::NEG_INFINITY));
        }
        let max = vdupq_n_f32(vmaxvq_f32(m));
        let mut sum = vdupq_n_f32(0.0);
        for i in (0..full).step_by(4) {
            let p = x.as_mut_ptr().add(i);
            let e = exp_v(vsubq_f32(vld1q_f32(p), max));
            sum = vaddq_f32(sum, e);
            vst1q_f32(p, e);
        }
        let mut tail = 0.0;
        if full < n {
            store_partial(x, full, exp_v(vsubq_f32(load_padded(x, full, 0.0), max)));
            tail = x[full..].iter().sum::<f32>();
        }
        vaddvq_f32(sum) + tail
    }
}

/// Softmax of `x` in place: [`exp_sum`], then one multiply by the sum's inverse.
///
/// # Safety
/// NEON is always present on aarch64.
#[target_feature(enable = "neon")]
pub unsafe fn softmax(x: &mut [f32]) {
    // SAFETY: NEON is the aarch64 baseline.
    let inv = vdupq_n_f32(1.0 / unsafe { exp_sum(x) });
    let full = x.len() / 4 * 4;
    // SAFETY: full-width loads and stores at `i + 4 <= full`; the tail goes through the padded
    // helpers.
    unsafe {
        for i in (0..full).step_by(4) {
            let p = x.as_mut_ptr().add(i);
            vst1q_f32(p, vmulq_f32(vld1q_f32(p), inv));
        }
        if full < x.len() {
            store_partial(x, full, vmulq_f32(load_padded(x, full, 0.0), inv));
        }
    }
}

/// Exact GELU in place, with [`gelu_v`].
///
/// # Safety
/// NEON is always present on aarch64.
#[target_feature(enable = "neon")]
pub unsafe fn gelu(x: &mut [f32]) {
    let full = x.len() / 4 * 4;
    // SAFETY: full-width loads and stores at `i + 4 <= full`; the tail goes through the padded
    // helpers.
    unsafe {
        for i in (0..full).step_by(4) {
            let p = x.as_mut_ptr().add(i);
            vst1q_f32(p, gelu_v(vld1q_f32(p)));
        }
        if full < x.len() {
            store_partial(x, full, gelu_v(load_padded(x, full, 0.0)));
        }
    }
}

/// LayerNorm of each row of `x` (rows of `w.len()`) in place, as the AVX2 kernel computes it
/// on four lanes: the mean, then the deviations from it, whose sum corrects the mean and whose
/// squares give the variance, then `(x - mean) / sqrt(var + eps) * w + b` with FMA.
///
/// # Safety
/// NEON is always present on aarch64; `b` is as long as `w`.
#[target_feature(enable = "neon")]
pub unsafe fn layer_norm(x: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
    let h = w.len();
    debug_assert_eq!(b.len(), h);
    let full = h / 4 * 4;
    let hf = h as f32;
    for row in x.chunks_exact_mut(h) {
        // SAFETY: full-width loads and stores at `i + 4 <= full <= h` in `row`, `w` and `b`
        // (all of length `h`); the tail is scalar.
        unsafe {
            let p = row.as_mut_ptr();
            let mut s = vdupq_n_f32(0.0);
            for i in (0..full).step_by(4) {
                s = vaddq_f32(s, vld1q_f32(p.add(i)));
            }
            let mean = (vaddvq_f32(s) + row[full..].iter().sum::<f32>()) / hf;
            let m = vdupq_n_f32(mean);
            let (mut sd, mut sq) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
            for i in (0..full).step_by(4) {
                let d = vsubq_f32(vld1q_f32(p.add(i)), m);
                sd = vaddq_f32(sd, d);
                sq = vfmaq_f32(sq, d, d);
            }
            let (mut td, mut tq) = (0f32, 0f32);
            for &e in &row[full..] {
                td += e - mean;
                tq += (e - mean) * (e - mean);
            }
            let c = (vaddvq_f32(sd) + td) / hf;
            let var = ((vaddvq_f32(sq) + tq) / hf - c * c).max(0.0);
            let inv = 1.0 / vget_lane_f32::<0>(vsqrt_f32(vdup_n_f32(var + eps)));
            // `(x - mean) - c`: the first difference is exact for x near the mean.
            let cv = vdupq_n_f32(c);
            for i in (0..full).step_by(4) {
                let d = vmulq_n_f32(vsubq_f32(vsubq_f32(vld1q_f32(p.add(i)), m), cv), inv);
                let (wi, bi) = (vld1q_f32(w.as_ptr().add(i)), vld1q_f32(b.as_ptr().add(i)));
                vst1q_f32(p.add(i), vfmaq_f32(bi, d, wi));
            }
            for i in full..h {
                row[i] = ((row[i] - mean) - c) * inv * w[i] + b[i];
            }
        }
    }
}

/// The 32 floats at `c` quantized symmetrically to `max` as the references do (scale
/// `amax / max`, values times its inverse, rounded half away from zero: add +-0.5, then
/// truncate), as the scale and eight vectors of four i32.
///
/// # Safety
/// `c` addresses 32 readable floats (NEON is always present on aarch64).
#[inline(always)]
unsafe fn quantize_lanes(c: *const f32, max: f32) -> (f32, [int32x4_t; 8]) {
    // SAFETY: the eight loads read the 32 floats at `c` (the caller's contract).
    unsafe {
        let v: [float32x4_t; 8] = core::array::from_fn(|i| vld1q_f32(c.add(4 * i)));
        // maxNum, as `f32::max`: a NaN lane loses to a number.
        let mut m = vabsq_f32(v[0]);
        for x in &v[1..] {
            m = vmaxnmq_f32(m, vabsq_f32(*x));
        }
        let amax = vmaxnmvq_f32(m);
        let d = amax / max;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let (plus, minus) = (vdupq_n_f32(0.5), vdupq_n_f32(-0.5));
        let q = v.map(|x| {
            let r = vmulq_n_f32(x, id);
            let half = vbslq_f32(vcgezq_f32(r), plus, minus);
            vcvtq_s32_f32(vaddq_f32(r, half))
        });
        (d, q)
    }
}

/// [`crate::kernels::pack::quantize_activations`] with the same float operations in four
/// lanes, so the blocks are bit-identical to the reference's.
///
/// # Safety
/// `x.len()` is a multiple of 32 (NEON is always present on aarch64).
#[target_feature(enable = "neon")]
pub unsafe fn quantize_activations(x: &[f32], out: &mut Vec<ActBlock>) {
    debug_assert!(x.len().is_multiple_of(QK));
    out.reserve(x.len() / QK);
    for chunk in x.chunks_exact(QK) {
        // SAFETY: `chunk` holds 32 floats; the stores write the local `qs` (32 bytes).
        let block = unsafe {
            let (d, q) = quantize_lanes(chunk.as_ptr(), 127.0);
            let mut qs = [0i8; QK];
            for h in 0..2 {
                let w0 = vcombine_s16(vqmovn_s32(q[4 * h]), vqmovn_s32(q[4 * h + 1]));
                let w1 = vcombine_s16(vqmovn_s32(q[4 * h + 2]), vqmovn_s32(q[4 * h + 3]));
                vst1q_s8(
                    qs.as_mut_ptr().add(16 * h),
                    vcombine_s8(vqmovn_s16(w0), vqmovn_s16(w1)),
                );
            }
            ActBlock { d, qs }
        };
        out.push(block);
    }
}

/// [`crate::kernels::pack::quantize_block16`] with the same float operations in four lanes, so
/// the values are bit-identical to the reference's.
///
/// # Safety
/// `chunk` holds 32 values (NEON is always present on aarch64).
#[target_feature(enable = "neon")]
pub unsafe fn quantize_block16(chunk: &[f32]) -> (f32, [i16; QK]) {
    debug_assert_eq!(chunk.len(), QK);
    // SAFETY: `chunk` holds 32 floats; the stores write the local `q` (32 i16).
    unsafe {
        let (d, r) = quantize_lanes(chunk.as_ptr(), 32767.0);
        let mut q = [0i16; QK];
        for (i, pair) in r.chunks_exact(2).enumerate() {
            let w = vcombine_s16(vqmovn_s32(pair[0]), vqmovn_s32(pair[1]));
            vst1q_s16(q.as_mut_ptr().add(8 * i), w);
        }
        (d, q)
    }
}
