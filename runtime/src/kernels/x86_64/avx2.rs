//! AVX2 + FMA kernels: i8 block dot products with `vpmaddubsw` (the sign trick: |w| as u8 times
//! x with w's sign), f32 dot products with FMA.

use alloc::vec::Vec;
use core::arch::x86_64::*;

pub use super::avx2_math::{gelu, layer_norm, softmax};
pub(crate) use super::avx2_math::{hmax_ps, sqrt_vex};
use crate::kernels::pack::{
    ActBlock, OffsetPanel, Panel16, Panel8, TilePanel, Q4_0_BLOCK_BYTES, Q8_0_BLOCK_BYTES,
};
use crate::quant::QK;

/// The f16 scale at `p` as f32, with F16C (no call out of the vector loop).
#[inline(always)]
pub(crate) unsafe fn scale_at(p: *const u8) -> f32 {
    // SAFETY: the caller points `p` at two readable bytes; F16C is enabled by the callers'
    // target_feature.
    unsafe {
        let bits = u16::from_le_bytes([*p, *p.add(1)]);
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }
}

#[inline(always)]
pub(crate) unsafe fn hsum_ps(v: __m256) -> f32 {
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

/// Sums of eight accumulators, as one vector: lane `i` is the sum of `acc[i]`'s lanes.
#[inline(always)]
unsafe fn hsum8(acc: &[__m256; 8]) -> __m256 {
    // SAFETY: register-only arithmetic under AVX.
    unsafe {
        let h01 = _mm256_hadd_ps(acc[0], acc[1]);
        let h23 = _mm256_hadd_ps(acc[2], acc[3]);
        let h45 = _mm256_hadd_ps(acc[4], acc[5]);
        let h67 = _mm256_hadd_ps(acc[6], acc[7]);
        // [s0, s1, s2, s3 | s0', s1', s2', s3']: halves of the sums of accumulators 0-3.
        let lo = _mm256_hadd_ps(h01, h23);
        let hi = _mm256_hadd_ps(h45, h67);
        _mm256_add_ps(
            _mm256_permute2f128_ps(lo, hi, 0x20),
            _mm256_permute2f128_ps(lo, hi, 0x31),
        )
    }
}

/// The 2 x 4 tile: two Q8_0 weight rows against four tokens' activation blocks, so each weight
/// block is loaded once for four tokens and each activation block once for two rows. Returns
/// `[row 0 x tokens 0..4, row 1 x tokens 0..4]`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; both rows hold at least `x[0].len() * 34` bytes and
/// the four slices have the same length.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q8_0_2x4(w: [&[u8]; 2], x: [&[ActBlock]; 4]) -> [f32; 8] {
    let nb = x[0].len();
    debug_assert!(w.iter().all(|w| w.len() >= nb * Q8_0_BLOCK_BYTES));
    debug_assert!(x.iter().all(|s| s.len() == nb));
    // SAFETY: weight loads read 32 bytes at `2 + 34 * b` (b < nb) of rows holding `34 * nb`
    // bytes; activation loads read the 32-byte `qs` of block `b < nb` of each token's slice.
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); 8];
        let (w0, w1) = (w[0].as_ptr(), w[1].as_ptr());
        for b in 0..nb {
            let (b0, b1) = (w0.add(b * Q8_0_BLOCK_BYTES), w1.add(b * Q8_0_BLOCK_BYTES));
            let q0 = _mm256_loadu_si256(b0.add(2) as *const __m256i);
            let q1 = _mm256_loadu_si256(b1.add(2) as *const __m256i);
            let (a0, a1) = (_mm256_sign_epi8(q0, q0), _mm256_sign_epi8(q1, q1));
            let (d0, d1) = (scale_at(b0), scale_at(b1));
            for t in 0..4 {
                let xb = x[t].get_unchecked(b);
                let qx = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
                let p0 =
                    _mm256_madd_epi16(_mm256_maddubs_epi16(a0, _mm256_sign_epi8(qx, q0)), ones);
                acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d0 * xb.d), _mm256_cvtepi32_ps(p0), acc[t]);
                let p1 =
                    _mm256_madd_epi16(_mm256_maddubs_epi16(a1, _mm256_sign_epi8(qx, q1)), ones);
                acc[4 + t] = _mm256_fmadd_ps(
                    _mm256_set1_ps(d1 * xb.d),
                    _mm256_cvtepi32_ps(p1),
                    acc[4 + t],
                );
            }
        }
        let mut out = [0f32; 8];
        _mm256_storeu_ps(out.as_mut_ptr(), hsum8(&acc));
        out
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

/// [`crate::kernels::pack::quantize_activations`] with the same float operations in eight lanes,
/// so the blocks are bit-identical to the reference's.
///
/// # Safety
/// The CPU must support AVX2; `x.len()` is a multiple of 32.
#[target_feature(enable = "avx2")]
pub unsafe fn quantize_activations(x: &[f32], out: &mut Vec<ActBlock>) {
    debug_assert!(x.len().is_multiple_of(32));
    out.reserve(x.len() / 32);
    for chunk in x.chunks_exact(32) {
        // SAFETY: `chunk` holds 32 floats.
        let (d, qs) = unsafe { quantize_block_at(chunk.as_ptr(), 127.0) };
        out.push(ActBlock { d, qs });
    }
}

/// [`crate::kernels::pack::quantize_block_i8`] with the same float operations in eight lanes,
/// so the values are bit-identical to the reference's.
///
/// # Safety
/// The CPU must support AVX2; `chunk` holds 32 values.
#[target_feature(enable = "avx2")]
pub unsafe fn quantize_block_i8(chunk: &[f32], max: f32) -> (f32, [i8; QK]) {
    debug_assert_eq!(chunk.len(), QK);
    // SAFETY: `chunk` holds 32 floats.
    unsafe { quantize_block_at(chunk.as_ptr(), max) }
}

/// The 32 floats at `c` quantized to `max` (at most 127) as i8.
///
/// # Safety
/// The CPU must support AVX2; `c` addresses 32 readable floats.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn quantize_block_at(c: *const f32, max: f32) -> (f32, [i8; QK]) {
    // SAFETY: the caller's contract covers the loads; the store writes the local `qs`.
    unsafe {
        let (d, q) = quantize_lanes(c, max);
        let mut qs = [0i8; QK];
        _mm256_storeu_si256(qs.as_mut_ptr() as *mut __m256i, bytes_in_order(q));
        (d, qs)
    }
}

/// The 32 values of [`quantize_lanes`] (four vectors of eight i32, each within `i8`) as 32
/// bytes in order.
#[inline(always)]
unsafe fn bytes_in_order(q: [__m256i; 4]) -> __m256i {
    // SAFETY: register-only arithmetic under AVX2.
    unsafe {
        // i32 -> i16 -> i8 packs work per 128-bit lane; the permute restores the order.
        let b = _mm256_packs_epi16(
            _mm256_packs_epi32(q[0], q[1]),
            _mm256_packs_epi32(q[2], q[3]),
        );
        _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
    }
}

/// The 32 floats at `c` quantized symmetrically to `max` as the references do (scale
/// `amax / max`, values times its inverse, rounded half away from zero: add +-0.5, then
/// truncate), as the scale and four vectors of eight i32.
///
/// # Safety
/// The CPU must support AVX2; `c` addresses 32 readable floats.
// With the feature enabled here (not only in the callers), the closures below inherit it and
// their intrinsics inline; `#[inline(always)]` alone left them as calls.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn quantize_lanes(c: *const f32, max: f32) -> (f32, [__m256i; 4]) {
    // SAFETY: the four loads read the 32 floats at `c` (the caller's contract).
    unsafe {
        let sign = _mm256_set1_ps(-0.0);
        let v = [
            _mm256_loadu_ps(c),
            _mm256_loadu_ps(c.add(8)),
            _mm256_loadu_ps(c.add(16)),
            _mm256_loadu_ps(c.add(24)),
        ];
        let a = v.map(|v| _mm256_andnot_ps(sign, v));
        let amax = hmax_ps(_mm256_max_ps(
            _mm256_max_ps(a[0], a[1]),
            _mm256_max_ps(a[2], a[3]),
        ));
        let d = amax / max;
        let id = _mm256_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
        let q = v.map(|v| {
            let r = _mm256_mul_ps(v, id);
            let half = _mm256_or_ps(_mm256_and_ps(r, sign), _mm256_set1_ps(0.5));
            _mm256_cvttps_epi32(_mm256_add_ps(r, half))
        });
        (d, q)
    }
}

/// [`crate::kernels::pack::quantize_block16`] with the same float operations in eight lanes, so
/// the values are bit-identical to the reference's.
///
/// # Safety
/// The CPU must support AVX2; `chunk` holds 32 values.
#[target_feature(enable = "avx2")]
pub unsafe fn quantize_block16(chunk: &[f32]) -> (f32, [i16; QK]) {
    debug_assert_eq!(chunk.len(), QK);
    // SAFETY: `chunk` holds 32 floats; the stores write the local `q` (32 i16).
    unsafe {
        let (d, r) = quantize_lanes(chunk.as_ptr(), 32767.0);
        // i32 -> i16 packs work per 128-bit lane; the permute restores the order.
        let w01 = _mm256_permute4x64_epi64(_mm256_packs_epi32(r[0], r[1]), 0b11_01_10_00);
        let w23 = _mm256_permute4x64_epi64(_mm256_packs_epi32(r[2], r[3]), 0b11_01_10_00);
        let mut q = [0i16; QK];
        _mm256_storeu_si256(q.as_mut_ptr() as *mut __m256i, w01);
        _mm256_storeu_si256(q.as_mut_ptr().add(16) as *mut __m256i, w23);
        (d, q)
    }
}

/// Two Q8_0 weight rows against a panel of eight tokens, lanes being tokens: per weight block,
/// each group of four weights is broadcast and meets the eight tokens' four values in one
/// `vpmaddubsw` (sign trick on the activations' side: `|x|` times `w` with `x`'s sign); the
/// eight groups sum in i32, and one conversion and one multiply-add per block and row apply
/// the block scales to all eight tokens. Returns `[row 0 x tokens 0..8, row 1 x tokens 0..8]`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; both rows hold at least `p.len() * 34` bytes.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q8_0_2x8(w: [&[u8]; 2], p: &[Panel8]) -> [f32; 16] {
    debug_assert!(w.iter().all(|w| w.len() >= p.len() * Q8_0_BLOCK_BYTES));
    // SAFETY: weight reads are 4 bytes at `2 + 4g + 34b` (g < 8, b < p.len()) and the scale's 2
    // bytes at `34b`, inside rows of `34 p.len()` bytes; panel loads read its 32-byte arrays.
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let (mut f0, mut f1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let (w0, w1) = (w[0].as_ptr(), w[1].as_ptr());
        for (b, pb) in p.iter().enumerate() {
            let (b0, b1) = (w0.add(b * Q8_0_BLOCK_BYTES), w1.add(b * Q8_0_BLOCK_BYTES));
            let (mut s0, mut s1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
            for g in 0..QK / 4 {
                let x = _mm256_load_si256(pb.qs[g].as_ptr() as *const __m256i);
                let ax = _mm256_load_si256(pb.abs[g].as_ptr() as *const __m256i);
                let g0 = _mm256_set1_epi32((b0.add(2 + 4 * g) as *const i32).read_unaligned());
                let g1 = _mm256_set1_epi32((b1.add(2 + 4 * g) as *const i32).read_unaligned());
                let p0 = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(g0, x));
                let p1 = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(g1, x));
                s0 = _mm256_add_epi32(s0, _mm256_madd_epi16(p0, ones));
                s1 = _mm256_add_epi32(s1, _mm256_madd_epi16(p1, ones));
            }
            let dx = _mm256_load_ps(pb.d.as_ptr());
            let d0 = _mm256_mul_ps(_mm256_set1_ps(scale_at(b0)), dx);
            let d1 = _mm256_mul_ps(_mm256_set1_ps(scale_at(b1)), dx);
            f0 = _mm256_fmadd_ps(d0, _mm256_cvtepi32_ps(s0), f0);
            f1 = _mm256_fmadd_ps(d1, _mm256_cvtepi32_ps(s1), f1);
        }
        let mut out = [0f32; 16];
        _mm256_storeu_ps(out.as_mut_ptr(), f0);
        _mm256_storeu_ps(out.as_mut_ptr().add(8), f1);
        out
    }
}

/// Two Q8_0 weight rows against an [`OffsetPanel`] of eight tokens with VNNI's `vpdpbusd`
/// (four unsigned-by-signed byte products summed into each i32 lane, no intermediate
/// saturation): each weight block is offset once to unsigned bytes (`w ^ 0x80 = w + 128`);
/// each group of four is broadcast and meets the eight tokens' four values in one instruction
/// per group and row (even and odd groups accumulate apart, so four chains of products
/// overlap); the panel's `corr` takes the offset's products back out, and one conversion and
/// one multiply-add per block and row apply the scales. Returns
/// `[row 0 x tokens 0..8, row 1 x tokens 0..8]`.
macro_rules! vnni_2x8 {
    ($(#[$doc:meta])* $name:ident, $features:literal, $dpbusd:ident) => {
        $(#[$doc])*
        /// # Safety
        /// The CPU must support the features enabled below; both rows hold at least
        /// `p.len() * 34` bytes.
        #[target_feature(enable = $features)]
        pub unsafe fn $name(w: [&[u8]; 2], p: &[OffsetPanel]) -> [f32; 16] {
            debug_assert!(w.iter().all(|w| w.len() >= p.len() * Q8_0_BLOCK_BYTES));
            const ROUND: usize = 8;
            // SAFETY: weight reads are 32 bytes at `2 + 34b` and the scale's 2 bytes at `34b`
            // (b < p.len()), inside rows of `34 p.len()` bytes; the offset round lives in a
            // local of `ROUND` blocks read 4 bytes at a time within it; panel loads read its
            // aligned arrays.
            unsafe {
                let flip = _mm256_set1_epi8(-128);
                let mut f = [_mm256_setzero_ps(); 2];
                let mut unsigned = [[[0u8; QK]; ROUND]; 2];
                let mut d = [[0f32; ROUND]; 2];
                for (round, panels) in p.chunks(ROUND).enumerate() {
                    for r in 0..2 {
                        for i in 0..panels.len() {
                            let wb = w[r].as_ptr().add((round * ROUND + i) * Q8_0_BLOCK_BYTES);
                            let v = _mm256_loadu_si256(wb.add(2) as *const __m256i);
                            let u = unsigned[r][i].as_mut_ptr() as *mut __m256i;
                            _mm256_storeu_si256(u, _mm256_xor_si256(v, flip));
                            d[r][i] = scale_at(wb);
                        }
                    }
                    for (i, pb) in panels.iter().enumerate() {
                        let u = [unsigned[0][i].as_ptr(), unsigned[1][i].as_ptr()];
                        let at = |r: usize, g: usize| {
                            _mm256_set1_epi32((u[r].add(4 * g) as *const i32).read_unaligned())
                        };
                        let mut s = [_mm256_setzero_si256(); 4];
                        for g in (0..QK / 4).step_by(2) {
                            let x0 = _mm256_load_si256(pb.qs[g].as_ptr() as *const __m256i);
                            let x1 = _mm256_load_si256(pb.qs[g + 1].as_ptr() as *const __m256i);
                            s[0] = $dpbusd(s[0], at(0, g), x0);
                            s[1] = $dpbusd(s[1], at(0, g + 1), x1);
                            s[2] = $dpbusd(s[2], at(1, g), x0);
                            s[3] = $dpbusd(s[3], at(1, g + 1), x1);
                        }
                        let corr = _mm256_load_si256(pb.corr.as_ptr() as *const __m256i);
                        let dx = _mm256_load_ps(pb.d.as_ptr());
                        for r in 0..2 {
                            let sum = _mm256_add_epi32(s[2 * r], s[2 * r + 1]);
                            let dr = _mm256_mul_ps(_mm256_set1_ps(d[r][i]), dx);
                            let sum = _mm256_cvtepi32_ps(_mm256_sub_epi32(sum, corr));
                            f[r] = _mm256_fmadd_ps(dr, sum, f[r]);
                        }
                    }
                }
                let mut out = [0f32; 16];
                _mm256_storeu_ps(out.as_mut_ptr(), f[0]);
                _mm256_storeu_ps(out.as_mut_ptr().add(8), f[1]);
                out
            }
        }
    };
}

vnni_2x8!(
    /// With AVX-VNNI (the VEX encoding: Alder Lake and later, Zen 5).
    dot_q8_0_2x8_avxvnni,
    "avx2,fma,f16c,avxvnni",
    _mm256_dpbusd_avx_epi32
);
vnni_2x8!(
    /// With AVX-512 VNNI on 256-bit vectors (Ice Lake and later servers, Zen 4).
    dot_q8_0_2x8_avx512vnni,
    "avx2,fma,f16c,avx512vnni,avx512vl",
    _mm256_dpbusd_epi32
);

/// One weight pair of two Q4_0 rows against a 16-bit panel: `$x` is the pair's byte offset in
/// the panel (32 per pair), `$w` in the unpacked rows (4 per pair).
macro_rules! q4_pair {
    ($x:literal, $w:literal) => {
        concat!(
            "vmovdqa {x}, ymmword ptr [{px} + ",
            $x,
            "]\n",
            "vpbroadcastd {t0}, dword ptr [{u0} + ",
            $w,
            "]\n",
            "vpbroadcastd {t1}, dword ptr [{u1} + ",
            $w,
            "]\n",
            "vpmaddwd {t0}, {t0}, {x}\n",
            "vpmaddwd {t1}, {t1}, {x}\n",
            "vpaddd {s0}, {s0}, {t0}\n",
            "vpaddd {s1}, {s1}, {t1}\n",
        )
    };
}

/// The sixteen pairs of one block against a panel with `vpmaddwd` and `vpaddd`: `(s0, s1)`,
/// the eight tokens' i32 sums for rows 0 and 1. The pairs are written out with constant
/// offsets, the weight pairs broadcast from memory (left to itself the compiler turns the
/// broadcasts into shuffles, which compete with the products, and spends an address computation
/// per load).
macro_rules! q4_block_madd {
    ($pb:expr, $u0:expr, $u1:expr) => {{
        let (mut s0, mut s1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        core::arch::asm!(
            q4_pair!("0", "0"),
            q4_pair!("32", "4"),
            q4_pair!("64", "8"),
            q4_pair!("96", "12"),
            q4_pair!("128", "16"),
            q4_pair!("160", "20"),
            q4_pair!("192", "24"),
            q4_pair!("224", "28"),
            q4_pair!("256", "32"),
            q4_pair!("288", "36"),
            q4_pair!("320", "40"),
            q4_pair!("352", "44"),
            q4_pair!("384", "48"),
            q4_pair!("416", "52"),
            q4_pair!("448", "56"),
            q4_pair!("480", "60"),
            px = in(reg) $pb.qs.as_ptr(),
            u0 = in(reg) $u0,
            u1 = in(reg) $u1,
            x = out(ymm_reg) _,
            t0 = out(ymm_reg) _,
            t1 = out(ymm_reg) _,
            s0 = inout(ymm_reg) s0,
            s1 = inout(ymm_reg) s1,
            options(pure, readonly, nostack, preserves_flags),
        );
        (s0, s1)
    }};
}

/// One weight pair of two Q4_0 rows against a 16-bit panel with VNNI's `vpdpwssd` (the pair
/// products summed into the accumulators in one instruction): `$enc` the encoding prefix
/// (`{{vex}}` for AVX-VNNI, `{{evex}}` for AVX-512 VNNI), `$x` and `$w` as in [`q4_pair`], and
/// `$a`, `$b` the accumulators of rows 0 and 1.
macro_rules! q4_pair_vnni {
    ($enc:literal, $x:literal, $w:literal, $a:literal, $b:literal) => {
        concat!(
            "vmovdqa {x}, ymmword ptr [{px} + ",
            $x,
            "]\n",
            "vpbroadcastd {t0}, dword ptr [{u0} + ",
            $w,
            "]\n",
            "vpbroadcastd {t1}, dword ptr [{u1} + ",
            $w,
            "]\n",
            $enc,
            " vpdpwssd {",
            $a,
            "}, {t0}, {x}\n",
            $enc,
            " vpdpwssd {",
            $b,
            "}, {t1}, {x}\n",
        )
    };
}

/// [`q4_block_madd`] with `vpdpwssd` in encoding `$enc`: even and odd pairs accumulate apart
/// (four chains, so that the instruction's latency overlaps), summed at the end.
macro_rules! q4_block_vnni {
    ($enc:literal, $pb:expr, $u0:expr, $u1:expr) => {{
        let (mut s0, mut s1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        let (mut s2, mut s3) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        core::arch::asm!(
            q4_pair_vnni!($enc, "0", "0", "s0", "s1"),
            q4_pair_vnni!($enc, "32", "4", "s2", "s3"),
            q4_pair_vnni!($enc, "64", "8", "s0", "s1"),
            q4_pair_vnni!($enc, "96", "12", "s2", "s3"),
            q4_pair_vnni!($enc, "128", "16", "s0", "s1"),
            q4_pair_vnni!($enc, "160", "20", "s2", "s3"),
            q4_pair_vnni!($enc, "192", "24", "s0", "s1"),
            q4_pair_vnni!($enc, "224", "28", "s2", "s3"),
            q4_pair_vnni!($enc, "256", "32", "s0", "s1"),
            q4_pair_vnni!($enc, "288", "36", "s2", "s3"),
            q4_pair_vnni!($enc, "320", "40", "s0", "s1"),
            q4_pair_vnni!($enc, "352", "44", "s2", "s3"),
            q4_pair_vnni!($enc, "384", "48", "s0", "s1"),
            q4_pair_vnni!($enc, "416", "52", "s2", "s3"),
            q4_pair_vnni!($enc, "448", "56", "s0", "s1"),
            q4_pair_vnni!($enc, "480", "60", "s2", "s3"),
            px = in(reg) $pb.qs.as_ptr(),
            u0 = in(reg) $u0,
            u1 = in(reg) $u1,
            x = out(ymm_reg) _,
            t0 = out(ymm_reg) _,
            t1 = out(ymm_reg) _,
            s0 = inout(ymm_reg) s0,
            s1 = inout(ymm_reg) s1,
            s2 = inout(ymm_reg) s2,
            s3 = inout(ymm_reg) s3,
            options(pure, readonly, nostack, preserves_flags),
        );
        (_mm256_add_epi32(s0, s2), _mm256_add_epi32(s1, s3))
    }};
}

/// Two Q4_0 weight rows against 16-bit panels of eight tokens, lanes being tokens: each weight
/// block is unpacked once to 32 i16 in `-8..=7`; each pair of weights is broadcast and meets
/// the eight tokens' two values in one product (`$block`: [`q4_block_madd`]'s `vpmaddwd`, or
/// [`q4_block_vnni`]'s `vpdpwssd`; exact: the block sums stay within i32), and one conversion
/// and one multiply-add per block and row apply the scales. Returns
/// `[row 0 x tokens 0..8, row 1 x tokens 0..8]`.
macro_rules! q4_2x8 {
    ($(#[$doc:meta])* $name:ident, $features:literal, $block:ident $(, $enc:literal)?) => {
        $(#[$doc])*
        /// # Safety
        /// The CPU must support the features enabled below; both rows hold at least
        /// `p.len() * 18` bytes.
        #[target_feature(enable = $features)]
        pub unsafe fn $name(w: [&[u8]; 2], p: &[Panel16]) -> [f32; 16] {
            debug_assert!(w.iter().all(|w| w.len() >= p.len() * Q4_0_BLOCK_BYTES));
            // Blocks unpacked per round: the stores of a round are long done when its products
            // read them back (a read right behind a wide store waits for it).
            const ROUND: usize = 8;
            // SAFETY: weight reads are 16 bytes at `2 + 18b` and the scale's 2 bytes at `18b`
            // (b < p.len()), inside rows of `18 p.len()` bytes; the unpacked round lives in a
            // local of `ROUND` blocks read 4 bytes at a time within it; panel loads read their
            // 32-byte arrays (aligned to 32 by `Panel16`'s layout), and the asm touches nothing
            // else: no stack, no flags.
            unsafe {
                let low = _mm_set1_epi8(0x0f);
                let eight = _mm_set1_epi8(8);
                let mut f = [_mm256_setzero_ps(); 2];
                let mut unpacked = [[[0i16; QK]; ROUND]; 2];
                let mut d = [[0f32; ROUND]; 2];
                for (round, panels) in p.chunks(ROUND).enumerate() {
                    for r in 0..2 {
                        for i in 0..panels.len() {
                            let wb = w[r].as_ptr().add((round * ROUND + i) * Q4_0_BLOCK_BYTES);
                            let packed = _mm_loadu_si128(wb.add(2) as *const __m128i);
                            // Byte j holds weight j in its low nibble and weight j + 16 in its
                            // high one.
                            let l = _mm_sub_epi8(_mm_and_si128(packed, low), eight);
                            let h =
                                _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(packed, 4), low), eight);
                            let u = unpacked[r][i].as_mut_ptr() as *mut __m256i;
                            _mm256_storeu_si256(u, _mm256_cvtepi8_epi16(l));
                            _mm256_storeu_si256(u.add(1), _mm256_cvtepi8_epi16(h));
                            d[r][i] = scale_at(wb);
                        }
                    }
                    for (i, pb) in panels.iter().enumerate() {
                        let (s0, s1) = $block!(
                            $($enc,)? pb, unpacked[0][i].as_ptr(), unpacked[1][i].as_ptr()
                        );
                        let dx = _mm256_load_ps(pb.d.as_ptr());
                        for (r, s) in [s0, s1].into_iter().enumerate() {
                            let dr = _mm256_mul_ps(_mm256_set1_ps(d[r][i]), dx);
                            f[r] = _mm256_fmadd_ps(dr, _mm256_cvtepi32_ps(s), f[r]);
                        }
                    }
                }
                let mut out = [0f32; 16];
                _mm256_storeu_ps(out.as_mut_ptr(), f[0]);
                _mm256_storeu_ps(out.as_mut_ptr().add(8), f[1]);
                out
            }
        }
    };
}

q4_2x8!(
    /// With AVX2's `vpmaddwd`.
    dot_q4_0_2x8,
    "avx2,fma,f16c",
    q4_block_madd
);
q4_2x8!(
    /// With AVX-VNNI's `vpdpwssd` (VEX).
    dot_q4_0_2x8_avxvnni,
    "avx2,fma,f16c,avxvnni",
    q4_block_vnni,
    "{{vex}}"
);
q4_2x8!(
    /// With AVX-512 VNNI's `vpdpwssd` on 256-bit vectors (EVEX).
    dot_q4_0_2x8_avx512vnni,
    "avx2,fma,f16c,avx512vnni,avx512vl",
    q4_block_vnni,
    "{{evex}}"
);

/// The transpose of an 8 x 8 block of f32 (rows in, columns out).
#[inline(always)]
pub(crate) unsafe fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    // SAFETY: register shuffles only; AVX is enabled by the callers' target_feature.
    unsafe {
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let u1 = _mm256_shuffle_ps::<0xee>(t0, t2);
        let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let u3 = _mm256_shuffle_ps::<0xee>(t1, t3);
        let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let u5 = _mm256_shuffle_ps::<0xee>(t4, t6);
        let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let u7 = _mm256_shuffle_ps::<0xee>(t5, t7);
        [
            _mm256_permute2f128_ps::<0x20>(u0, u4),
            _mm256_permute2f128_ps::<0x20>(u1, u5),
            _mm256_permute2f128_ps::<0x20>(u2, u6),
            _mm256_permute2f128_ps::<0x20>(u3, u7),
            _mm256_permute2f128_ps::<0x31>(u0, u4),
            _mm256_permute2f128_ps::<0x31>(u1, u5),
            _mm256_permute2f128_ps::<0x31>(u2, u6),
            _mm256_permute2f128_ps::<0x31>(u3, u7),
        ]
    }
}

/// [`crate::kernels::pack::pack_offset_panel`] with the blocks quantized as
/// [`quantize_block_i8`] does (bit for bit), eight tokens at a time: each token's 32 values
/// (eight groups of four bytes, one vector) are transposed with the others' into the panel's
/// eight rows of groups.
///
/// # Safety
/// The CPU must support AVX2; `x` holds at most eight tokens of `cols` values, a multiple of 32.
#[target_feature(enable = "avx2")]
pub unsafe fn pack_offset_panel(x: &[f32], cols: usize, out: &mut Vec<OffsetPanel>) {
    use crate::kernels::pack::PANEL_TOKENS;
    let ntok = x.len() / cols;
    debug_assert!(ntok <= PANEL_TOKENS && cols.is_multiple_of(QK) && x.len() == ntok * cols);
    out.reserve(cols / QK);
    for b in 0..cols / QK {
        let mut p = OffsetPanel {
            d: [0.0; PANEL_TOKENS],
            corr: [0; PANEL_TOKENS],
            qs: [[0; 32]; QK / 4],
        };
        let mut rows = [_mm256_setzero_ps(); PANEL_TOKENS];
        for (t, row) in rows.iter_mut().enumerate().take(ntok) {
            // SAFETY: token t's block b is 32 floats within `x` (t < ntok, b < cols / 32).
            unsafe {
                let (d, q) = quantize_lanes(x.as_ptr().add(t * cols + b * QK), 127.0);
                p.d[t] = d;
                let s =
                    _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
                p.corr[t] = 128 * hsum_epi32(s);
                *row = _mm256_castsi256_ps(bytes_in_order(q));
            }
        }
        // SAFETY: register shuffles; each store writes one 32-byte row of `p.qs`.
        unsafe {
            for (g, v) in transpose8(rows).iter().enumerate() {
                _mm256_storeu_ps(p.qs[g].as_mut_ptr() as *mut f32, *v);
            }
        }
        out.push(p);
    }
}

/// [`crate::kernels::pack::pack_tile_panel`]: up to sixteen tokens' blocks quantized as
/// [`pack_offset_panel`] does, each half of eight transposed into its half of the tile rows.
///
/// # Safety
/// The CPU must support AVX2; `x` holds at most sixteen tokens of `cols` values, a multiple of
/// 32.
#[target_feature(enable = "avx2")]
pub unsafe fn pack_tile_panel(x: &[f32], cols: usize, out: &mut [TilePanel]) {
    use crate::kernels::pack::{PANEL_TOKENS, TILE_PANEL_TOKENS};
    let ntok = x.len() / cols;
    debug_assert!(ntok <= TILE_PANEL_TOKENS && cols.is_multiple_of(QK) && x.len() == ntok * cols);
    for (b, p) in out.iter_mut().enumerate().take(cols / QK) {
        p.d = [0.0; TILE_PANEL_TOKENS];
        p.qs = [[0; 4 * TILE_PANEL_TOKENS]; QK / 4];
        for h in 0..ntok.div_ceil(PANEL_TOKENS) {
            let mut rows = [_mm256_setzero_ps(); PANEL_TOKENS];
            let half = (ntok - h * PANEL_TOKENS).min(PANEL_TOKENS);
            for (i, row) in rows.iter_mut().enumerate().take(half) {
                let t = h * PANEL_TOKENS + i;
                // SAFETY: token t's block b is 32 floats within `x` (t < ntok, b < cols / 32).
                unsafe {
                    let (d, q) = quantize_lanes(x.as_ptr().add(t * cols + b * QK), 127.0);
                    p.d[t] = d;
                    *row = _mm256_castsi256_ps(bytes_in_order(q));
                }
            }
            // SAFETY: register shuffles; each store writes one half (32 bytes) of a row of
            // `p.qs`.
            unsafe {
                for (g, v) in transpose8(rows).iter().enumerate() {
                    _mm256_storeu_ps(p.qs[g].as_mut_ptr().add(32 * h) as *mut f32, *v);
                }
            }
        }
    }
}

/// The sum of eight i32 lanes.
#[inline(always)]
unsafe fn hsum_epi32(v: __m256i) -> i32 {
    // SAFETY: register-only arithmetic under AVX2.
    unsafe {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
        _mm_cvtsi128_si32(s)
    }
}
