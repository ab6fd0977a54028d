//! AVX-512 versions of the element-wise kernels (softmax, GELU): the AVX2 ones' arithmetic on
//! sixteen lanes, with masked loads and stores for the tails, `vscalefps` for the powers of two
//! of `exp`, and a refined reciprocal instead of a division in GELU.

use core::arch::x86_64::*;

use crate::kernels::generic::{ERFC_P, ERFC_POLY, EXP_POLY, LN2_HI, LN2_LO};

/// Mask of the first `n` (at most 16) lanes.
#[inline(always)]
fn lanes(n: usize) -> __mmask16 {
    if n >= 16 {
        0xffff
    } else {
        (1u16 << n) - 1
    }
}

/// `e^x` for sixteen lanes: Cephes' range reduction and degree-6 polynomial (as the AVX2
/// `exp_ps`), scaled by `2^n` with `vscalefps`. Inputs are clamped to `[-87.3, 88.3]`.
#[inline(always)]
unsafe fn exp_ps(x: __m512) -> __m512 {
    // SAFETY: register-only arithmetic under AVX-512F.
    unsafe {
        let x = _mm512_min_ps(
            _mm512_max_ps(x, _mm512_set1_ps(-87.3)),
            _mm512_set1_ps(88.3),
        );
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(core::f32::consts::LOG2_E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
        let mut p = _mm512_set1_ps(EXP_POLY[0]);
        for c in &EXP_POLY[1..] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
        }
        let r2 = _mm512_mul_ps(r, r);
        let y = _mm512_add_ps(_mm512_fmadd_ps(p, r2, r), _mm512_set1_ps(1.0));
        _mm512_scalef_ps(y, n)
    }
}

/// Softmax of `x` in place: [`exp_sum`], then one multiply by the sum's inverse.
///
/// # Safety
/// The CPU must support AVX-512F.
#[target_feature(enable = "avx512f")]
pub unsafe fn softmax(x: &mut [f32]) {
    let n = x.len();
    // SAFETY: the caller's contract.
    let inv = _mm512_set1_ps(1.0 / unsafe { exp_sum(x) });
    let p = x.as_mut_ptr();
    // SAFETY: every load and store is masked to the lanes below `n`.
    unsafe {
        for i in (0..n).step_by(16) {
            let k = lanes(n - i);
            _mm512_mask_storeu_ps(
                p.add(i),
                k,
                _mm512_mul_ps(_mm512_maskz_loadu_ps(k, p.add(i)), inv),
            );
        }
    }
}

/// Softmax's exponentials, as [`crate::kernels::generic::exp_sum`], with [`exp_ps`]: `x`
/// becomes `e^(x - max x)` in place; returns their sum. The maximum and the sum each run on
/// two accumulators (even and odd vectors), so that a row of 128 is not one chain of eight
/// dependent operations per pass.
///
/// # Safety
/// The CPU must support AVX-512F.
#[target_feature(enable = "avx512f")]
pub unsafe fn exp_sum(x: &mut [f32]) -> f32 {
    let n = x.len();
    let p = x.as_mut_ptr();
    // Values in whole pairs of vectors; the rest (fewer than 32) by masked vectors.
    let pairs = n / 32 * 32;
    // SAFETY: the unmasked loads and stores cover 32 values at i < `pairs` <= n; every other
    // load and store is masked to the lanes below `n`.
    unsafe {
        let (mut m0, mut m1) = (
            _mm512_set1_ps(f32::NEG_INFINITY),
            _mm512_set1_ps(f32::NEG_INFINITY),
        );
        for i in (0..pairs).step_by(32) {
            m0 = _mm512_max_ps(m0, _mm512_loadu_ps(p.add(i)));
            m1 = _mm512_max_ps(m1, _mm512_loadu_ps(p.add(i + 16)));
        }
        for i in (pairs..n).step_by(16) {
            m0 = _mm512_max_ps(m0, _mm512_mask_loadu_ps(m0, lanes(n - i), p.add(i)));
        }
        let max = _mm512_set1_ps(_mm512_reduce_max_ps(_mm512_max_ps(m0, m1)));
        let (mut s0, mut s1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        for i in (0..pairs).step_by(32) {
            let e0 = exp_ps(_mm512_sub_ps(_mm512_loadu_ps(p.add(i)), max));
            let e1 = exp_ps(_mm512_sub_ps(_mm512_loadu_ps(p.add(i + 16)), max));
            s0 = _mm512_add_ps(s0, e0);
            s1 = _mm512_add_ps(s1, e1);
            _mm512_storeu_ps(p.add(i), e0);
            _mm512_storeu_ps(p.add(i + 16), e1);
        }
        for i in (pairs..n).step_by(16) {
            let k = lanes(n - i);
            let e = exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, p.add(i)), max));
            s0 = _mm512_mask_add_ps(s0, k, s0, e);
            _mm512_mask_storeu_ps(p.add(i), k, e);
        }
        _mm512_reduce_add_ps(_mm512_add_ps(s0, s1))
    }
}

/// Exact GELU `x Phi(x)` for sixteen lanes, as the AVX2 `gelu_ps` (Abramowitz and Stegun 7.1.26
/// for `erfc`), with `1 / (1 + p z)` from `vrcp14ps` and one Newton step.
#[inline(always)]
pub(crate) unsafe fn gelu_ps(x: __m512) -> __m512 {
    // SAFETY: register-only arithmetic under AVX-512F.
    unsafe {
        let z = _mm512_mul_ps(
            _mm512_abs_ps(x),
            _mm512_set1_ps(core::f32::consts::FRAC_1_SQRT_2),
        );
        let d = _mm512_fmadd_ps(_mm512_set1_ps(ERFC_P), z, _mm512_set1_ps(1.0));
        let t0 = _mm512_rcp14_ps(d);
        // t = t0 (2 - d t0): relative error about 2^-28.
        let t = _mm512_mul_ps(t0, _mm512_fnmadd_ps(d, t0, _mm512_set1_ps(2.0)));
        let mut p = _mm512_set1_ps(ERFC_POLY[0]);
        for c in &ERFC_POLY[1..] {
            p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(*c));
        }
        p = _mm512_mul_ps(p, t);
        // erfc(z) = p e^{-z^2}; Phi(x) = 1 - erfc/2 for x >= 0, erfc/2 below.
        let half_erfc = _mm512_mul_ps(
            _mm512_mul_ps(
                p,
                exp_ps(_mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), z), z)),
            ),
            _mm512_set1_ps(0.5),
        );
        let negative = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_setzero_ps());
        let phi = _mm512_mask_blend_ps(
            negative,
            _mm512_sub_ps(_mm512_set1_ps(1.0), half_erfc),
            half_erfc,
        );
        _mm512_mul_ps(x, phi)
    }
}

/// Exact GELU in place, with [`gelu_ps`].
///
/// # Safety
/// The CPU must support AVX-512F.
#[target_feature(enable = "avx512f")]
pub unsafe fn gelu(x: &mut [f32]) {
    let n = x.len();
    let p = x.as_mut_ptr();
    // SAFETY: every load and store is masked to the lanes below `n`.
    unsafe {
        for i in (0..n).step_by(16) {
            let k = lanes(n - i);
            _mm512_mask_storeu_ps(p.add(i), k, gelu_ps(_mm512_maskz_loadu_ps(k, p.add(i))));
        }
    }
}

/// LayerNorm of each row of `x` (rows of `w.len()`) in place, as the AVX2 `layer_norm` (the
/// mean, then the variance about it with the mean's residual taken out) on sixteen lanes with
/// masked tails. Each sum runs on four accumulators (vectors `i mod 4`), so that a row of 384
/// is not a chain of 24 dependent additions per pass.
///
/// # Safety
/// The CPU must support AVX-512F; `b.len() == w.len()`.
#[target_feature(enable = "avx512f")]
pub unsafe fn layer_norm(x: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
    let h = w.len();
    debug_assert_eq!(b.len(), h);
    let hf = h as f32;
    // Values in whole groups of four vectors; the rest (fewer than 64) by masked vectors.
    let quads = h / 64 * 64;
    for row in x.chunks_exact_mut(h) {
        let p = row.as_mut_ptr();
        // SAFETY: the unmasked loads read 64 values at i < `quads` <= h of `row`; every other
        // load and store is masked to the lanes below `h` of `row`, `w` and `b` (all of
        // length `h`).
        unsafe {
            let mut s = [_mm512_setzero_ps(); 4];
            for i in (0..quads).step_by(64) {
                for (j, s) in s.iter_mut().enumerate() {
                    *s = _mm512_add_ps(*s, _mm512_loadu_ps(p.add(i + 16 * j)));
                }
            }
            for i in (quads..h).step_by(16) {
                s[0] = _mm512_add_ps(s[0], _mm512_maskz_loadu_ps(lanes(h - i), p.add(i)));
            }
            // The sum of four accumulators.
            let four = |v: [__m512; 4]| {
                _mm512_reduce_add_ps(_mm512_add_ps(
                    _mm512_add_ps(v[0], v[1]),
                    _mm512_add_ps(v[2], v[3]),
                ))
            };
            let mean = four(s) / hf;
            let m = _mm512_set1_ps(mean);
            let (mut sd, mut sq) = ([_mm512_setzero_ps(); 4], [_mm512_setzero_ps(); 4]);
            for i in (0..quads).step_by(64) {
                for j in 0..4 {
                    let d = _mm512_sub_ps(_mm512_loadu_ps(p.add(i + 16 * j)), m);
                    sd[j] = _mm512_add_ps(sd[j], d);
                    sq[j] = _mm512_fmadd_ps(d, d, sq[j]);
                }
            }
            for i in (quads..h).step_by(16) {
                let k = lanes(h - i);
                let d = _mm512_maskz_sub_ps(k, _mm512_maskz_loadu_ps(k, p.add(i)), m);
                sd[0] = _mm512_add_ps(sd[0], d);
                sq[0] = _mm512_fmadd_ps(d, d, sq[0]);
            }
            let c = four(sd) / hf;
            let var = (four(sq) / hf - c * c).max(0.0);
            let inv = 1.0 / super::avx2::sqrt_vex(var + eps);
            // `(x - mean) - c`: the first difference is exact for x near the mean.
            let (cv, vi) = (_mm512_set1_ps(c), _mm512_set1_ps(inv));
            for i in (0..h).step_by(16) {
                let k = lanes(h - i);
                let d = _mm512_sub_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, p.add(i)), m), cv);
                let d = _mm512_mul_ps(d, vi);
                let wi = _mm512_maskz_loadu_ps(k, w.as_ptr().add(i));
                let bi = _mm512_maskz_loadu_ps(k, b.as_ptr().add(i));
                _mm512_mask_storeu_ps(p.add(i), k, _mm512_fmadd_ps(d, wi, bi));
            }
        }
    }
}

/// Lane `t` of the result: the largest of `m[t]`'s sixteen lanes (a tree of shuffles and
/// maxima over all sixteen vectors at once, 46 operations, against eight dependent ones per
/// vector for `_mm512_reduce_max_ps`). For values that are not NaN.
#[inline(always)]
unsafe fn max_lanes16(m: [__m512; 16]) -> __m512 {
    // SAFETY: register-only arithmetic under AVX-512F.
    unsafe {
        // Loops, not `array::from_fn`: a closure does not take this function's target
        // features, so its intrinsics became calls (seen in a profile, 2-3 % of a pass).
        // Halves: x[i] lanes 0-7 token 2i's, 8-15 token 2i + 1's.
        let mut x = [_mm512_setzero_ps(); 8];
        for (i, x) in x.iter_mut().enumerate() {
            let (a, b) = (m[2 * i], m[2 * i + 1]);
            *x = _mm512_max_ps(
                _mm512_shuffle_f32x4::<0x44>(a, b),
                _mm512_shuffle_f32x4::<0xEE>(a, b),
            );
        }
        // Quarters: y[i]'s 128-bit lane q token 4i + q's.
        let mut y = [_mm512_setzero_ps(); 4];
        for (i, y) in y.iter_mut().enumerate() {
            let (a, b) = (x[2 * i], x[2 * i + 1]);
            *y = _mm512_max_ps(
                _mm512_shuffle_f32x4::<0x88>(a, b),
                _mm512_shuffle_f32x4::<0xDD>(a, b),
            );
        }
        // Pairs: z[i]'s lane q, values 0-1 token 8i + q's, 2-3 token 8i + 4 + q's.
        let mut z = [_mm512_setzero_ps(); 2];
        for (i, z) in z.iter_mut().enumerate() {
            let (a, b) = (_mm512_castps_pd(y[2 * i]), _mm512_castps_pd(y[2 * i + 1]));
            *z = _mm512_max_ps(
                _mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
                _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)),
            );
        }
        // Singles: value 4q + k token 4k + q's; then in token order.
        let w = _mm512_max_ps(
            _mm512_shuffle_ps::<0x88>(z[0], z[1]),
            _mm512_shuffle_ps::<0xDD>(z[0], z[1]),
        );
        let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        _mm512_permutexvar_ps(order, w)
    }
}

/// [`crate::kernels::pack::pack_tile_panel`] with each token's block quantized on two 512-bit
/// vectors (the AVX2 `quantize_lanes`' arithmetic, so bit for bit the reference's values) and
/// narrowed to bytes with saturation; the sixteen tokens' largest magnitudes are reduced
/// together ([`max_lanes16`]) and their scales divided on one vector, not one token at a time;
/// the sixteen tokens' 32-byte rows are then transposed by four-byte groups as the AVX2 packer
/// does, eight tokens at a time.
///
/// # Safety
/// The CPU must support AVX2 and AVX-512F; `x` holds at most sixteen tokens of `cols` values,
/// a multiple of 32; `out` holds `cols / 32` panels.
#[target_feature(enable = "avx2,avx512f")]
pub unsafe fn pack_tile_panel(x: &[f32], cols: usize, out: &mut [crate::kernels::pack::TilePanel]) {
    // SAFETY: the caller's contract, which is `pack_tiles`' for 8 bits.
    unsafe { pack_tiles::<false>(x, cols, out) }
}

/// [`crate::kernels::pack::pack_tile_panel16`] as [`pack_tile_panel`] does it, to 16 bits (scale
/// `amax / 32767`) whose high bytes (`q >> 8`) and low bytes (`q & 0xff`) go to the block's
/// two panels.
///
/// # Safety
/// As for [`pack_tile_panel`], with `out` holding `2 * cols / 32` panels.
#[target_feature(enable = "avx2,avx512f")]
pub unsafe fn pack_tile_panel16(
    x: &[f32],
    cols: usize,
    out: &mut [crate::kernels::pack::TilePanel],
) {
    // SAFETY: the caller's contract, which is `pack_tiles`' for 16 bits.
    unsafe { pack_tiles::<true>(x, cols, out) }
}

/// The tile packers' body: [`pack_tile_panel`] (`Q16` false) or [`pack_tile_panel16`] (true),
/// whose contracts it has.
#[inline]
#[target_feature(enable = "avx2,avx512f")]
unsafe fn pack_tiles<const Q16: bool>(
    x: &[f32],
    cols: usize,
    out: &mut [crate::kernels::pack::TilePanel],
) {
    use crate::kernels::pack::{PANEL_TOKENS, TILE_PANEL_TOKENS};
    use crate::quant::QK;
    let ntok = x.len() / cols;
    let per = if Q16 { 2 } else { 1 };
    debug_assert!(ntok <= TILE_PANEL_TOKENS && cols.is_multiple_of(QK) && x.len() == ntok * cols);
    debug_assert!(out.len() >= per * (cols / QK));
    let max = if Q16 { 32767.0 } else { 127.0 };
    let sign = _mm512_set1_epi32(i32::MIN);
    for (b, p) in out.chunks_exact_mut(per).enumerate().take(cols / QK) {
        // SAFETY: token t's block b is 32 floats within `x` (t < ntok, b < cols / 32); the
        // stores write the panels' `d` (sixteen floats) and the local `inv`; the rest is
        // register arithmetic.
        let inv = unsafe {
            // Each token's magnitudes folded to sixteen lanes; missing tokens zeros.
            let mut m = [_mm512_setzero_ps(); TILE_PANEL_TOKENS];
            for (t, m) in m.iter_mut().enumerate().take(ntok) {
                let c = x.as_ptr().add(t * cols + b * QK);
                *m = _mm512_max_ps(
                    _mm512_abs_ps(_mm512_loadu_ps(c)),
                    _mm512_abs_ps(_mm512_loadu_ps(c.add(16))),
                );
            }
            // As the reference: d = amax / max, its inverse (0 for d = 0), exact divisions.
            let d = _mm512_div_ps(max_lanes16(m), _mm512_set1_ps(max));
            let positive = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(d, _mm512_setzero_ps());
            for p in p.iter_mut() {
                _mm512_storeu_ps(p.d.as_mut_ptr(), d);
            }
            let mut inv = [0f32; TILE_PANEL_TOKENS];
            _mm512_storeu_ps(
                inv.as_mut_ptr(),
                _mm512_maskz_div_ps(positive, _mm512_set1_ps(1.0), d),
            );
            inv
        };
        // Token t's 32 bytes (16 bits: `rows[0]` the high bytes, `rows[1]` the low); missing
        // tokens zeros.
        let mut rows = [[_mm256_setzero_ps(); TILE_PANEL_TOKENS]; 2];
        for t in 0..ntok {
            // SAFETY: token t's block b is 32 floats within `x` (t < ntok, b < cols / 32);
            // the rest is register arithmetic.
            unsafe {
                let c = x.as_ptr().add(t * cols + b * QK);
                let v = [_mm512_loadu_ps(c), _mm512_loadu_ps(c.add(16))];
                let id = _mm512_set1_ps(inv[t]);
                // Rounded half away from zero: add +-0.5 (the sign of the product), truncate.
                // (No closures here: they would not take the target features.)
                let mut q = [_mm512_setzero_si512(); 2];
                for (q, v) in q.iter_mut().zip(v) {
                    let r = _mm512_mul_ps(v, id);
                    let half = _mm512_or_si512(
                        _mm512_and_si512(_mm512_castps_si512(r), sign),
                        _mm512_castps_si512(_mm512_set1_ps(0.5)),
                    );
                    *q = _mm512_cvttps_epi32(_mm512_add_ps(r, _mm512_castsi512_ps(half)));
                }
                if Q16 {
                    // |q| <= 32767: the high bytes fit, the low ones are the truncation's.
                    rows[0][t] = _mm256_castsi256_ps(_mm256_set_m128i(
                        _mm512_cvtepi32_epi8(_mm512_srai_epi32::<8>(q[1])),
                        _mm512_cvtepi32_epi8(_mm512_srai_epi32::<8>(q[0])),
                    ));
                    rows[1][t] = _mm256_castsi256_ps(_mm256_set_m128i(
                        _mm512_cvtepi32_epi8(q[1]),
                        _mm512_cvtepi32_epi8(q[0]),
                    ));
                } else {
                    rows[0][t] = _mm256_castsi256_ps(_mm256_set_m128i(
                        _mm512_cvtsepi32_epi8(q[1]),
                        _mm512_cvtsepi32_epi8(q[0]),
                    ));
                }
            }
        }
        for (p, rows) in p.iter_mut().zip(&rows) {
            for h in 0..TILE_PANEL_TOKENS / PANEL_TOKENS {
                let mut half = [_mm256_setzero_ps(); PANEL_TOKENS];
                half.copy_from_slice(&rows[h * PANEL_TOKENS..(h + 1) * PANEL_TOKENS]);
                // SAFETY: register shuffles; each store writes one half (32 bytes) of a row of
                // `p.qs`.
                unsafe {
                    for (g, v) in super::avx2::transpose8(half).iter().enumerate() {
                        _mm256_storeu_ps(p.qs[g].as_mut_ptr().add(32 * h) as *mut f32, *v);
                    }
                }
            }
        }
    }
}
