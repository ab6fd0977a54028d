//! Scalar reference kernels: plain Rust, the ground truth for every SIMD variant.

use alloc::vec;

use crate::kernels::pack::{
    block_scale, ActBlock, OffsetPanel, Panel16, Panel8, PANEL_TOKENS, Q4_0_BLOCK_BYTES,
    Q8_0_BLOCK_BYTES,
};
use crate::quant::QK;
use crate::weights::Matrix;

/// Dot product with eight partial sums (so the compiler can vectorize it).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// See [`super::linear`]. Each weight row is decoded once and serves every token.
pub fn linear(x: &[f32], n: usize, w: &Matrix<'_>, bias: &[f32], y: &mut [f32]) {
    let (rows, cols) = (w.rows, w.cols);
    debug_assert_eq!(x.len(), n * cols);
    debug_assert_eq!(y.len(), n * rows);
    let mut row = vec![0f32; cols];
    for o in 0..rows {
        w.dequantize_row(o, &mut row);
        let b = bias.get(o).copied().unwrap_or(0.0);
        for t in 0..n {
            y[t * rows + o] = dot(&x[t * cols..(t + 1) * cols], &row) + b;
        }
    }
}

/// See [`super::layer_norm`]. Mean and variance accumulate in f64.
pub fn layer_norm(x: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
    let h = w.len();
    for row in x.chunks_exact_mut(h) {
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / h as f64;
        let var = row
            .iter()
            .map(|&v| (v as f64 - mean) * (v as f64 - mean))
            .sum::<f64>()
            / h as f64;
        let inv = 1.0 / libm::sqrt(var + eps as f64);
        for ((v, &g), &beta) in row.iter_mut().zip(w).zip(b) {
            *v = ((*v as f64 - mean) * inv) as f32 * g + beta;
        }
    }
}

// The polynomials of the SIMD kernels' `exp` and GELU (every ISA evaluates the same ones).

/// `ln 2` in two parts for the range reduction of `exp` (`x - n ln 2` without cancellation):
/// the high part, exact in few bits...
pub const LN2_HI: f32 = 0.693_359_4;
/// ... and the rest.
pub const LN2_LO: f32 = -2.121_944_4e-4;
/// Cephes' polynomial for `e^r` on the reduced range, highest degree first (times `r^2`,
/// plus `r + 1`).
pub const EXP_POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_2e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];
/// Abramowitz and Stegun 7.1.26: `erfc(z) = t P(t) e^{-z^2}` with `t = 1 / (1 + ERFC_P z)`,
/// `P`'s coefficients highest degree first.
pub const ERFC_P: f32 = 0.327_591_1;
/// `P`'s coefficients for [`ERFC_P`]'s `t`.
pub const ERFC_POLY: [f32; 5] = [
    1.061_405_4,
    -1.453_152_1,
    1.421_413_7,
    -0.284_496_74,
    0.254_829_6,
];

/// See [`super::softmax`].
pub fn softmax(x: &mut [f32]) {
    let inv = 1.0 / exp_sum(x);
    x.iter_mut().for_each(|v| *v *= inv);
}

/// Softmax without its division: `x` becomes `e^(x - max x)` in place; returns their sum.
pub fn exp_sum(x: &mut [f32]) -> f32 {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = libm::expf(*v - max);
        sum += *v;
    }
    sum
}

/// See [`super::gelu`].
pub fn gelu(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = 0.5 * *v * (1.0 + libm::erff(*v * core::f32::consts::FRAC_1_SQRT_2));
    }
}

/// Scalar reference of a Q8_0 weight row against activation blocks: exact i32 block sums,
/// scaled and accumulated in f32.
pub fn dot_q8_0(w: &[u8], x: &[ActBlock]) -> f32 {
    let mut s = 0f32;
    for (wb, xb) in w.chunks_exact(Q8_0_BLOCK_BYTES).zip(x) {
        let isum: i32 = wb[2..]
            .iter()
            .zip(&xb.qs)
            .map(|(&q, &a)| q as i8 as i32 * a as i32)
            .sum();
        s += block_scale(wb) * xb.d * isum as f32;
    }
    s
}

/// Scalar reference of a Q4_0 weight row against activation blocks.
pub fn dot_q4_0(w: &[u8], x: &[ActBlock]) -> f32 {
    let mut s = 0f32;
    for (wb, xb) in w.chunks_exact(Q4_0_BLOCK_BYTES).zip(x) {
        let mut isum = 0i32;
        for (j, &b) in wb[2..].iter().enumerate() {
            isum += ((b & 0x0f) as i32 - 8) * xb.qs[j] as i32;
            isum += ((b >> 4) as i32 - 8) * xb.qs[j + QK / 2] as i32;
        }
        s += block_scale(wb) * xb.d * isum as f32;
    }
    s
}

/// Scalar reference of the 2 x 4 tile: two Q8_0 weight rows against four tokens, as
/// `[row 0 x tokens 0..4, row 1 x tokens 0..4]`.
pub fn dot_q8_0_2x4(w: [&[u8]; 2], x: [&[ActBlock]; 4]) -> [f32; 8] {
    core::array::from_fn(|i| dot_q8_0(w[i / 4], x[i % 4]))
}

/// Scalar reference of two Q8_0 weight rows against a panel of eight tokens (`nb` panels):
/// `[row 0 x tokens 0..8, row 1 x tokens 0..8]`, exact i32 block sums scaled in f32.
pub fn dot_q8_0_2x8(w: [&[u8]; 2], p: &[Panel8]) -> [f32; 16] {
    dot_q8_0_2x8_panels(w, p.iter().map(|pb| (&pb.qs, &pb.d)))
}

/// Scalar reference of two Q8_0 weight rows against [`OffsetPanel`]s of eight tokens (their
/// values and scales; the offset is the kernels' business): as [`dot_q8_0_2x8`].
pub fn dot_q8_0_2x8_offset(w: [&[u8]; 2], p: &[OffsetPanel]) -> [f32; 16] {
    dot_q8_0_2x8_panels(w, p.iter().map(|pb| (&pb.qs, &pb.d)))
}

/// The two panel references over each panel's values (by groups of four, token `t` at bytes
/// `4t..4t + 4`) and scales.
fn dot_q8_0_2x8_panels<'a>(
    w: [&[u8]; 2],
    p: impl Iterator<Item = (&'a [[i8; 32]; QK / 4], &'a [f32; PANEL_TOKENS])> + Clone,
) -> [f32; 16] {
    let mut out = [0f32; 16];
    for (r, row) in w.iter().enumerate() {
        for (wb, (qs, d)) in row.chunks_exact(Q8_0_BLOCK_BYTES).zip(p.clone()) {
            for t in 0..PANEL_TOKENS {
                let isum: i32 = (0..QK)
                    .map(|k| wb[2 + k] as i8 as i32 * qs[k / 4][4 * t + k % 4] as i32)
                    .sum();
                out[r * PANEL_TOKENS + t] += block_scale(wb) * d[t] * isum as f32;
            }
        }
    }
    out
}

/// The 32 weights of the Q4_0 block `wb` (scale, then 16 bytes: weight `k` in byte `k`'s low
/// nibble, weight `k + 16` in its high one) as integers in `-8..=7`, in order.
fn q4_0_values(wb: &[u8]) -> [i32; QK] {
    core::array::from_fn(|k| {
        let byte = wb[2 + k % (QK / 2)];
        (if k < QK / 2 { byte & 0x0f } else { byte >> 4 }) as i32 - 8
    })
}

/// Scalar reference of two Q4_0 weight rows against 16-bit panels of eight tokens:
/// `[row 0 x tokens 0..8, row 1 x tokens 0..8]`, exact i32 block sums scaled in f32.
pub fn dot_q4_0_2x8(w: [&[u8]; 2], p: &[Panel16]) -> [f32; 16] {
    let mut out = [0f32; 16];
    for (r, row) in w.iter().enumerate() {
        for (wb, pb) in row.chunks_exact(Q4_0_BLOCK_BYTES).zip(p) {
            let wq = q4_0_values(wb);
            for t in 0..PANEL_TOKENS {
                let isum: i32 = (0..QK)
                    .map(|k| wq[k] * pb.qs[k / 2][2 * t + k % 2] as i32)
                    .sum();
                out[r * PANEL_TOKENS + t] += block_scale(wb) * pb.d[t] * isum as f32;
            }
        }
    }
    out
}

/// Scalar reference of two Q4_0 weight rows against split 16-bit panels of eight tokens
/// (`2 * nb` panels, each block's `[high, low]` as [`pack::split_panel16`] makes them):
/// `[row 0 x tokens 0..8, row 1 x tokens 0..8]`, the block sums
/// `256 * (w . high) + (w . low) + 128 * sum(w)` exact in i32 (the 16-bit panel reference's)
/// and scaled in f32.
pub fn dot_q4_0_2x8_split(w: [&[u8]; 2], p: &[Panel8]) -> [f32; 16] {
    let mut out = [0f32; 16];
    for (r, row) in w.iter().enumerate() {
        for (wb, pb) in row.chunks_exact(Q4_0_BLOCK_BYTES).zip(p.chunks_exact(2)) {
            let wq = q4_0_values(wb);
            let wsum: i32 = wq.iter().sum();
            for t in 0..PANEL_TOKENS {
                let dot = |half: &Panel8| -> i32 {
                    (0..QK)
                        .map(|k| wq[k] * half.qs[k / 4][4 * t + k % 4] as i32)
                        .sum()
                };
                let isum = 256 * dot(&pb[0]) + dot(&pb[1]) + 128 * wsum;
                out[r * PANEL_TOKENS + t] += block_scale(wb) * pb[0].d[t] * isum as f32;
            }
        }
    }
    out
}

/// Scalar reference of the bf16 strip product: thirty-two weight rows decoded to bf16 (`a`, a
/// strip in [`pack::strip_index`]'s layout, rows of `k` values) against `nt` tiles of sixteen
/// tokens (`b`, rows of `k` bf16 values, as [`pack::pack_bf16_tile`] packs them): column `r` of
/// `out`'s row `t` = `bias[r] + sum_i a[r][i] * x_t[i]` for the first `ntok` tokens and `nr`
/// rows, products and sums in f32 over value pairs in order; with `gelu`, each output goes
/// through [`gelu`]. `next` is a cache hint for the SIMD kernels.
pub fn gemm_bf16_32xn(s: &crate::kernels::Bf16Strip<'_>, out: &mut crate::kernels::RowsMut<'_>) {
    use crate::kernels::pack::{bf16_value, strip_index, BF16_TILE_TOKENS as T};
    let crate::kernels::Bf16Strip {
        a,
        k,
        b,
        nt,
        bias,
        nr,
        ntok,
        gelu,
        next: _,
    } = *s;
    for t in 0..ntok.min(nt * T) {
        let x = &b[t * k..(t + 1) * k];
        for r in 0..nr {
            let mut s = 0f32;
            for p in 0..k / 2 {
                let (w0, w1) = (a[strip_index(r, 2 * p, k)], a[strip_index(r, 2 * p + 1, k)]);
                s += bf16_value(w0) * bf16_value(x[2 * p])
                    + bf16_value(w1) * bf16_value(x[2 * p + 1]);
            }
            let mut v = [s + bias[r]];
            if gelu {
                self::gelu(&mut v);
            }
            out.set(t, r, v[0]);
        }
    }
}
