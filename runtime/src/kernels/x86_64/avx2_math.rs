//! AVX2 + FMA element-wise kernels: softmax, GELU (through `e^x` and `erfc`'s polynomials, the
//! references' arithmetic in eight lanes) and LayerNorm.

use core::arch::x86_64::*;

use super::avx2::hsum_ps;
use crate::kernels::generic::{ERFC_P, ERFC_POLY, EXP_POLY, LN2_HI, LN2_LO};

/// `e^x` for eight lanes: Cephes' range reduction `x = n ln 2 + r` and its degree-6 polynomial
/// for `e^r`, scaled by `2^n` through the exponent bits. Inputs are clamped to
/// `[-87.3, 88.3]`, so the result stays a normal float.
#[inline(always)]
unsafe fn exp_ps(x: __m256) -> __m256 {
    // SAFETY: register-only arithmetic under AVX2 + FMA.
    unsafe {
        let x = _mm256_min_ps(
            _mm256_max_ps(x, _mm256_set1_ps(-87.3)),
            _mm256_set1_ps(88.3),
        );
        let n = _mm256_round_ps(
            _mm256_mul_ps(x, _mm256_set1_ps(core::f32::consts::LOG2_E)),
            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
        );
        // r = x - n ln 2, with ln 2 split in two for precision.
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
        let mut p = _mm256_set1_ps(EXP_POLY[0]);
        for c in &EXP_POLY[1..] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(*c));
        }
        let r2 = _mm256_mul_ps(r, r);
        let y = _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), _mm256_set1_ps(1.0));
        // 2^n from the exponent field; n is in [-126, 127] after the clamp.
        let bits = _mm256_slli_epi32(
            _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
            23,
        );
        _mm256_mul_ps(y, _mm256_castsi256_ps(bits))
    }
}

/// Eight lanes of `slice[at..]`, padded with `pad` past its end.
#[inline(always)]
unsafe fn load_padded(s: &[f32], at: usize, pad: f32) -> __m256 {
    let mut lanes = [pad; 8];
    let n = (s.len() - at).min(8);
    lanes[..n].copy_from_slice(&s[at..at + n]);
    // SAFETY: `lanes` holds eight floats.
    unsafe { _mm256_loadu_ps(lanes.as_ptr()) }
}

/// Stores the first `min(8, s.len() - at)` lanes of `v` at `s[at..]`.
#[inline(always)]
unsafe fn store_partial(s: &mut [f32], at: usize, v: __m256) {
    let mut lanes = [0f32; 8];
    // SAFETY: `lanes` holds eight floats.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), v) };
    let n = (s.len() - at).min(8);
    s[at..at + n].copy_from_slice(&lanes[..n]);
}

#[inline(always)]
pub(crate) unsafe fn hmax_ps(v: __m256) -> f32 {
    // SAFETY: register-only arithmetic under AVX.
    unsafe {
        let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
        _mm_cvtss_f32(m)
    }
}

/// Softmax of `x` in place, with [`exp_ps`].
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn softmax(x: &mut [f32]) {
    let n = x.len();
    let full = n / 8 * 8;
    // SAFETY: full-width loads and stores at `i + 8 <= full <= n`; the tail goes through the
    // padded helpers, which copy within bounds.
    unsafe {
        let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
        for i in (0..full).step_by(8) {
            m = _mm256_max_ps(m, _mm256_loadu_ps(x.as_ptr().add(i)));
        }
        if full < n {
            m = _mm256_max_ps(m, load_padded(x, full, f32::NEG_INFINITY));
        }
        let max = _mm256_set1_ps(hmax_ps(m));
        let mut sum = _mm256_setzero_ps();
        for i in (0..full).step_by(8) {
            let e = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(x.as_ptr().add(i)), max));
            sum = _mm256_add_ps(sum, e);
            _mm256_storeu_ps(x.as_mut_ptr().add(i), e);
        }
        let mut tail = 0.0;
        if full < n {
            let e = exp_ps(_mm256_sub_ps(load_padded(x, full, 0.0), max));
            store_partial(x, full, e);
            tail = x[full..].iter().sum::<f32>();
        }
        let inv = _mm256_set1_ps(1.0 / (hsum_ps(sum) + tail));
        for i in (0..full).step_by(8) {
            let p = x.as_mut_ptr().add(i);
            _mm256_storeu_ps(p, _mm256_mul_ps(_mm256_loadu_ps(p), inv));
        }
        if full < n {
            store_partial(x, full, _mm256_mul_ps(load_padded(x, full, 0.0), inv));
        }
    }
}

/// Exact GELU `x Phi(x)` for eight lanes, with `erfc` from Abramowitz and Stegun 7.1.26 (absolute
/// error below 1.5e-7) on `|x| / sqrt 2`, so `Phi` keeps its precision for negative `x`.
#[inline(always)]
pub(crate) unsafe fn gelu_ps(x: __m256) -> __m256 {
    // SAFETY: register-only arithmetic under AVX2 + FMA.
    unsafe {
        let sign = _mm256_set1_ps(-0.0);
        let z = _mm256_mul_ps(
            _mm256_andnot_ps(sign, x),
            _mm256_set1_ps(core::f32::consts::FRAC_1_SQRT_2),
        );
        let t = _mm256_div_ps(
            _mm256_set1_ps(1.0),
            _mm256_fmadd_ps(_mm256_set1_ps(ERFC_P), z, _mm256_set1_ps(1.0)),
        );
        let mut p = _mm256_set1_ps(ERFC_POLY[0]);
        for c in &ERFC_POLY[1..] {
            p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(*c));
        }
        p = _mm256_mul_ps(p, t);
        // erfc(z) = p e^{-z^2}; Phi(x) = 1 - erfc/2 for x >= 0, erfc/2 below.
        let half_erfc = _mm256_mul_ps(
            _mm256_mul_ps(
                p,
                exp_ps(_mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(z, z))),
            ),
            _mm256_set1_ps(0.5),
        );
        let negative = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ);
        let phi = _mm256_blendv_ps(
            _mm256_sub_ps(_mm256_set1_ps(1.0), half_erfc),
            half_erfc,
            negative,
        );
        _mm256_mul_ps(x, phi)
    }
}

/// Exact GELU in place, with [`gelu_ps`].
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn gelu(x: &mut [f32]) {
    let full = x.len() / 8 * 8;
    // SAFETY: full-width loads and stores at `i + 8 <= full`; the tail goes through the padded
    // helpers.
    unsafe {
        for i in (0..full).step_by(8) {
            let p = x.as_mut_ptr().add(i);
            _mm256_storeu_ps(p, gelu_ps(_mm256_loadu_ps(p)));
        }
        if full < x.len() {
            store_partial(x, full, gelu_ps(load_padded(x, full, 0.0)));
        }
    }
}

/// LayerNorm of each row of `x` (rows of `w.len()`) in place, in f32 with eight partial sums:
/// the mean, then the deviations from it, whose sum corrects the mean and whose squares give the
/// variance (the corrected two-pass algorithm, so a large mean does not cost the deviations their
/// precision), then `(x - mean) / sqrt(var + eps) * w + b` with FMA.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `b` is as long as `w`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn layer_norm(x: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
    let h = w.len();
    debug_assert_eq!(b.len(), h);
    let full = h / 8 * 8;
    let hf = h as f32;
    for row in x.chunks_exact_mut(h) {
        // SAFETY: full-width loads and stores at `i + 8 <= full <= h` in `row`, `w` and `b`
        // (all of length `h`); the tail is scalar.
        unsafe {
            let p = row.as_mut_ptr();
            let mut s = _mm256_setzero_ps();
            for i in (0..full).step_by(8) {
                s = _mm256_add_ps(s, _mm256_loadu_ps(p.add(i)));
            }
            let mean = (hsum_ps(s) + row[full..].iter().sum::<f32>()) / hf;
            let m = _mm256_set1_ps(mean);
            let (mut sd, mut sq) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            for i in (0..full).step_by(8) {
                let d = _mm256_sub_ps(_mm256_loadu_ps(p.add(i)), m);
                sd = _mm256_add_ps(sd, d);
                sq = _mm256_fmadd_ps(d, d, sq);
            }
            let (mut td, mut tq) = (0f32, 0f32);
            for &e in &row[full..] {
                td += e - mean;
                tq += (e - mean) * (e - mean);
            }
            let c = (hsum_ps(sd) + td) / hf;
            let var = ((hsum_ps(sq) + tq) / hf - c * c).max(0.0);
            let inv = 1.0 / sqrt_vex(var + eps);
            // `(x - mean) - c`: the first difference is exact for x near the mean.
            let (cv, vi) = (_mm256_set1_ps(c), _mm256_set1_ps(inv));
            for i in (0..full).step_by(8) {
                let d = _mm256_sub_ps(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), m), cv);
                let d = _mm256_mul_ps(d, vi);
                let wi = _mm256_loadu_ps(w.as_ptr().add(i));
                let bi = _mm256_loadu_ps(b.as_ptr().add(i));
                _mm256_storeu_ps(p.add(i), _mm256_fmadd_ps(d, wi, bi));
            }
            for i in full..h {
                row[i] = ((row[i] - mean) - c) * inv * w[i] + b[i];
            }
        }
    }
}

/// `sqrt(x)` as a VEX instruction, for kernels with 256/512-bit vectors: `libm::sqrtf` is a
/// legacy-SSE `sqrtss`, and one between wide vector instructions cost ~0.35 us a LayerNorm row
/// (an SSE/AVX transition).
#[inline(always)]
pub(crate) unsafe fn sqrt_vex(x: f32) -> f32 {
    // SAFETY: register-only arithmetic; the callers enable AVX.
    unsafe { _mm_cvtss_f32(_mm_sqrt_ss(_mm_set_ss(x))) }
}
