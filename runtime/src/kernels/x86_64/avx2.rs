//! AVX2 + FMA kernels: i8 block dot products with `vpmaddubsw` (the sign trick: |w| as u8 times
//! x with w's sign), f32 dot products with FMA.

use core::arch::x86_64::*;

use crate::kernels::qdot::{ActBlock, Q4_0_BLOCK_BYTES, Q8_0_BLOCK_BYTES};

/// The f16 scale at `p` as f32, with F16C (no call out of the vector loop).
#[inline(always)]
unsafe fn scale_at(p: *const u8) -> f32 {
    // SAFETY: the caller points `p` at two readable bytes; F16C is enabled by the callers'
    // target_feature.
    unsafe {
        let bits = u16::from_le_bytes([*p, *p.add(1)]);
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }
}

#[inline(always)]
unsafe fn hsum_ps(v: __m256) -> f32 {
    // SAFETY: register-only arithmetic; AVX is enabled by the callers' target_feature.
    unsafe {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }
}

/// Sum of the products of 32 signed bytes `w` and `x`, as 8 i32 lanes converted to f32.
#[inline(always)]
unsafe fn dot_i8x32(w: __m256i, x: __m256i) -> __m256 {
    // SAFETY: register-only arithmetic under AVX2.
    unsafe {
        let aw = _mm256_sign_epi8(w, w);
        let sx = _mm256_sign_epi8(x, w);
        let p16 = _mm256_maddubs_epi16(aw, sx);
        let p32 = _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
        _mm256_cvtepi32_ps(p32)
    }
}

/// Dot product of one Q8_0 weight row (`x.len()` blocks of 34 bytes) with activation blocks.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `w` must hold at least `x.len() * 34` bytes.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q8_0(w: &[u8], x: &[ActBlock]) -> f32 {
    debug_assert!(w.len() >= x.len() * Q8_0_BLOCK_BYTES);
    // SAFETY: every load reads 32 bytes at `2 + 34 * b` within `w` (length checked by the
    // caller) or the 32-byte `qs` array of an `ActBlock`; unaligned loads are used throughout.
    unsafe {
        let mut acc = _mm256_setzero_ps();
        for (b, xb) in x.iter().enumerate() {
            let wb = w.as_ptr().add(b * Q8_0_BLOCK_BYTES);
            let qw = _mm256_loadu_si256(wb.add(2) as *const __m256i);
            let qx = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
            let d = _mm256_set1_ps(scale_at(wb) * xb.d);
            acc = _mm256_fmadd_ps(d, dot_i8x32(qw, qx), acc);
        }
        hsum_ps(acc)
    }
}

/// Dot products of one Q8_0 weight row with four tokens' activation blocks at once: each weight
/// block is loaded and its scale converted once for the four.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `w` must hold at least `x[0].len() * 34` bytes and
/// the four slices have the same length.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q8_0_x4(w: &[u8], x: [&[ActBlock]; 4]) -> [f32; 4] {
    let nb = x[0].len();
    debug_assert!(w.len() >= nb * Q8_0_BLOCK_BYTES && x.iter().all(|s| s.len() == nb));
    // SAFETY: as in `dot_q8_0`, for each of the four activation slices of `nb` blocks.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); 4];
        for b in 0..nb {
            let wb = w.as_ptr().add(b * Q8_0_BLOCK_BYTES);
            let qw = _mm256_loadu_si256(wb.add(2) as *const __m256i);
            let aw = _mm256_sign_epi8(qw, qw);
            let dw = scale_at(wb);
            for t in 0..4 {
                let xb = x[t].get_unchecked(b);
                let qx = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
                let p16 = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(qx, qw));
                let p = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
                acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * xb.d), p, acc[t]);
            }
        }
        [
            hsum_ps(acc[0]),
            hsum_ps(acc[1]),
            hsum_ps(acc[2]),
            hsum_ps(acc[3]),
        ]
    }
}

/// Dot product of one Q4_0 weight row (`x.len()` blocks of 18 bytes) with activation blocks.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `w` must hold at least `x.len() * 18` bytes.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_0(w: &[u8], x: &[ActBlock]) -> f32 {
    debug_assert!(w.len() >= x.len() * Q4_0_BLOCK_BYTES);
    // SAFETY: every load reads 16 bytes at `2 + 18 * b` within `w` (length checked by the
    // caller) or the 32-byte `qs` array of an `ActBlock`; unaligned loads are used throughout.
    unsafe {
        let mut acc = _mm256_setzero_ps();
        let low = _mm_set1_epi8(0x0f);
        let eight = _mm256_set1_epi8(8);
        for (b, xb) in x.iter().enumerate() {
            let wb = w.as_ptr().add(b * Q4_0_BLOCK_BYTES);
            let packed = _mm_loadu_si128(wb.add(2) as *const __m128i);
            let lo = _mm_and_si128(packed, low);
            let hi = _mm_and_si128(_mm_srli_epi16(packed, 4), low);
            let qw = _mm256_sub_epi8(_mm256_set_m128i(hi, lo), eight);
            let qx = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
            let d = _mm256_set1_ps(scale_at(wb) * xb.d);
            acc = _mm256_fmadd_ps(d, dot_i8x32(qw, qx), acc);
        }
        hsum_ps(acc)
    }
}

/// f32 dot product.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `a` and `b` have the same length.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    // SAFETY: loads of 8 floats at `i < n - 7` stay inside both slices.
    unsafe {
        let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i + 16 <= n {
            s0 = _mm256_fmadd_ps(
                _mm256_loadu_ps(a.as_ptr().add(i)),
                _mm256_loadu_ps(b.as_ptr().add(i)),
                s0,
            );
            s1 = _mm256_fmadd_ps(
                _mm256_loadu_ps(a.as_ptr().add(i + 8)),
                _mm256_loadu_ps(b.as_ptr().add(i + 8)),
                s1,
            );
            i += 16;
        }
        while i + 8 <= n {
            s0 = _mm256_fmadd_ps(
                _mm256_loadu_ps(a.as_ptr().add(i)),
                _mm256_loadu_ps(b.as_ptr().add(i)),
                s0,
            );
            i += 8;
        }
        let mut s = hsum_ps(_mm256_add_ps(s0, s1));
        while i < n {
            s += a[i] * b[i];
            i += 1;
        }
        s
    }
}
