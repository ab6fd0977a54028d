//! AMX-INT8 (Sapphire Rapids and later): sixteen Q8_0 weight rows against eight tokens per tile
//! product, `tdpbssd` (signed bytes by signed bytes into i32 tiles), block by block so that each
//! block's sums take their own scales.
//!
//! Linux hands out the tile data state only on request (`arch_prctl(ARCH_REQ_XCOMP_PERM)`),
//! once per process; every kernel call loads its tile configuration and releases the tiles
//! before it returns, so no tile state outlives a call.

use core::arch::asm;
use core::arch::x86_64::*;

use crate::kernels::qdot::{OffsetPanel, Q8_0_BLOCK_BYTES};
use crate::kernels::x86_64::avx2::transpose8;

/// Weight rows per tile product.
pub const AMX_ROWS: usize = 16;

/// Whether this CPU has AMX-TILE and AMX-INT8, the OS saves their state, and Linux granted this
/// process the tile data (asked for once).
pub fn available() -> bool {
    // CPUID leaf 7, EDX bit 25: AMX-INT8.
    tiles_granted() && __cpuid_count(7, 0).edx & (1 << 25) != 0
}

/// Whether this CPU has AMX-TILE and AMX-BF16 (granted as for [`available`]), and AVX-512 BF16
/// for the conversions to bf16 that feed the tiles.
pub fn available_bf16() -> bool {
    // CPUID leaf 7, EDX bit 22: AMX-BF16.
    tiles_granted()
        && __cpuid_count(7, 0).edx & (1 << 22) != 0
        && std::is_x86_feature_detected!("avx512bf16")
        && std::is_x86_feature_detected!("avx512vl")
}

/// Whether this CPU has AMX-TILE, the OS saves the tile state, and Linux granted this process
/// the tile data (asked for once).
fn tiles_granted() -> bool {
    static GRANTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *GRANTED.get_or_init(|| {
        // CPUID leaf 7: EDX bit 24 AMX-TILE.
        let leaf7 = __cpuid_count(7, 0);
        if leaf7.edx & (1 << 24) == 0 || !std::is_x86_feature_detected!("xsave") {
            return false;
        }
        // SAFETY: CPUID says XSAVE is present, so XGETBV(0) (XCR0) is defined; bits 17 and 18
        // are the tile configuration and tile data states.
        let xcr0 = unsafe { xgetbv0() };
        if xcr0 & (3 << 17) != 3 << 17 {
            return false;
        }
        request_tile_data()
    })
}

/// XCR0.
///
/// # Safety
/// The CPU must support XSAVE.
#[target_feature(enable = "xsave")]
unsafe fn xgetbv0() -> u64 {
    // SAFETY: the caller's contract.
    unsafe { _xgetbv(0) }
}

/// `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`: true when granted.
#[cfg(target_os = "linux")]
fn request_tile_data() -> bool {
    const SYS_ARCH_PRCTL: usize = 158;
    const ARCH_REQ_XCOMP_PERM: usize = 0x1023;
    const XFEATURE_XTILEDATA: usize = 18;
    let ret: isize;
    // SAFETY: a raw Linux x86_64 system call with two integer arguments; `syscall` clobbers
    // rcx and r11 (declared) and touches no memory of ours.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL as isize => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret == 0
}

#[cfg(not(target_os = "linux"))]
fn request_tile_data() -> bool {
    false
}

/// The 64-byte tile configuration (palette 1): tile 0 holds sums (16 rows x 8 i32), 2 a weight
/// block (16 rows x 32 bytes), 4 an activation block (8 groups of four values x 8 tokens, 32
/// bytes a row); the others stay unconfigured.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

const CONFIG: TileConfig = {
    let mut c = [0u8; 64];
    c[0] = 1;
    // colsb (u16 at 16 + 2t), rows (u8 at 48 + t) of tiles 0, 2 and 4.
    c[16] = 32;
    c[48] = 16;
    c[20] = 32;
    c[50] = 16;
    c[24] = 32;
    c[52] = 8;
    TileConfig(c)
};

/// Token groups (of eight) one call takes at most.
pub const AMX_GROUPS: usize = 2;

/// Sixteen Q8_0 weight rows (row `r` at `w[r * row_bytes..]`) against up to [`AMX_GROUPS`]
/// groups of eight tokens (`p`: `p.len() / nb` groups of `nb` [`OffsetPanel`]s; their values
/// and scales, AMX multiplies signed by signed, so the offset's correction is not needed):
/// `out[g * 8 + t][r]`, each block's exact i32 sum scaled in f32, blocks summed in order. Per
/// block, the weight tile and the sixteen row scales serve every group.
///
/// # Safety
/// [`available`] returned true; the CPU supports AVX2, FMA and F16C; `p.len()` is a multiple
/// of `nb` of at most `AMX_GROUPS * nb`; `w` holds `15 * row_bytes + nb * 34` bytes.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q8_0_16x8(
    w: &[u8],
    row_bytes: usize,
    nb: usize,
    p: &[OffsetPanel],
) -> [[f32; AMX_ROWS]; 8 * AMX_GROUPS] {
    let groups = p.len() / nb.max(1);
    debug_assert!(groups <= AMX_GROUPS && p.len() == groups * nb);
    debug_assert!(w.len() >= (AMX_ROWS - 1) * row_bytes + nb * Q8_0_BLOCK_BYTES);
    // acc[g][r]: row r against group g's eight tokens.
    let mut acc = [[_mm256_setzero_ps(); AMX_ROWS]; AMX_GROUPS];
    let mut sums = [[[0i32; 8]; AMX_ROWS]; AMX_GROUPS];
    // SAFETY: the tile loads read 16 rows of 32 bytes at `w + r * row_bytes + 34b + 2` (within
    // `w` by the caller's contract) and 8 x 32 bytes of a panel's `qs`; the stores write the
    // local `sums` (16 x 32 bytes each); the scales read 2 bytes at `w + r * row_bytes + 34b`.
    unsafe {
        asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, readonly, preserves_flags));
        let base = w.as_ptr();
        for b in 0..nb {
            let wb = base.add(b * Q8_0_BLOCK_BYTES);
            asm!(
                "tileloadd tmm2, [{a} + {s}*1]",
                a = in(reg) wb.add(2),
                s = in(reg) row_bytes,
                options(nostack, readonly, preserves_flags),
            );
            for (g, s) in sums.iter_mut().enumerate().take(groups) {
                asm!(
                    "tilezero tmm0",
                    "tileloadd tmm4, [{x} + {xs}*1]",
                    "tdpbssd tmm0, tmm2, tmm4",
                    "tilestored [{o} + {xs}*1], tmm0",
                    x = in(reg) p[g * nb + b].qs.as_ptr(),
                    xs = in(reg) 32usize,
                    o = in(reg) s.as_mut_ptr(),
                    options(nostack, preserves_flags),
                );
            }
            // The sixteen rows' f16 scales, gathered as integers and converted at once.
            let mut bits = [0u16; AMX_ROWS];
            for (r, h) in bits.iter_mut().enumerate() {
                *h = (wb.add(r * row_bytes) as *const u16).read_unaligned();
            }
            let mut scales = [0f32; AMX_ROWS];
            for h in 0..2 {
                let v = _mm256_cvtph_ps(_mm_loadu_si128(bits.as_ptr().add(8 * h) as *const __m128i));
                _mm256_storeu_ps(scales.as_mut_ptr().add(8 * h), v);
            }
            // Each group's token scales, loaded once for the sixteen rows.
            let mut dx = [_mm256_setzero_ps(); AMX_GROUPS];
            for (g, dx) in dx.iter_mut().enumerate().take(groups) {
                *dx = _mm256_load_ps(p[g * nb + b].d.as_ptr());
            }
            for r in 0..AMX_ROWS {
                let dw = _mm256_set1_ps(scales[r]);
                for g in 0..groups {
                    let s = _mm256_cvtepi32_ps(_mm256_loadu_si256(sums[g][r].as_ptr() as *const __m256i));
                    acc[g][r] = _mm256_fmadd_ps(_mm256_mul_ps(dw, dx[g]), s, acc[g][r]);
                }
            }
        }
        asm!("tilerelease", options(nostack, nomem, preserves_flags));
    }
    // Tokens by row: each group's two 8 x 8 blocks (rows 0-7, 8-15) transposed.
    let mut out = [[0f32; AMX_ROWS]; 8 * AMX_GROUPS];
    for (g, a) in acc.iter().enumerate() {
        for h in 0..2 {
            // SAFETY: register shuffles; each store writes 8 floats of a 16-float row of `out`.
            unsafe {
                let v = transpose8(core::array::from_fn(|u| a[8 * h + u]));
                for (u, v) in v.iter().enumerate() {
                    _mm256_storeu_ps(out[8 * g + u].as_mut_ptr().add(8 * h), *v);
                }
            }
        }
    }
    out
}

/// The tile configuration of the bf16 strip product: all eight tiles 16 rows of 64 bytes;
/// 0-3 sums (16 rows x 16 tokens, f32), 4-5 weights (16 rows x 32 bf16), 6-7 activations
/// (16 value pairs x 16 tokens).
const CONFIG_BF16: TileConfig = {
    let mut c = [0u8; 64];
    c[0] = 1;
    let mut t = 0;
    while t < 8 {
        c[16 + 2 * t] = 64;
        c[48 + t] = 16;
        t += 1;
    }
    TileConfig(c)
};

/// Thirty-two weight rows in bf16 (`a`, rows of `k` values, `k` a multiple of 32) against
/// `nt` tiles of sixteen tokens packed by [`crate::kernels::qdot::pack_bf16_tile`] (`b`):
/// `out[t * ld + r] = bias[r] + sum a[r][i] * x_t[i]` for the first `ntok` tokens and `nr`
/// rows, accumulated in f32 by `tdpbf16ps`; with `gelu`, each output goes through the AVX2
/// GELU as it is stored. Token tiles go in pairs against 2 x 2 tiles of sums (each weight tile serves
/// both token tiles and each token tile both weight tiles); one tile configuration serves the
/// whole call.
///
/// # Safety
/// [`available_bf16`] returned true; the CPU supports AVX2 and FMA; `a.len() >= 32 * k`,
/// `b.len() >= nt * 16 * k`, `k % 32 == 0`, `nr <= 32`, `nr <= ld`, `ntok <= 16 * nt`, and
/// `out.len() >= (ntok - 1) * ld + nr` when `ntok > 0`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn gemm_bf16_32xn(
    a: &[u16],
    k: usize,
    b: &[u16],
    nt: usize,
    bias: &[f32; 32],
    out: &mut [f32],
    ld: usize,
    nr: usize,
    ntok: usize,
    gelu: bool,
) {
    debug_assert!(k % 32 == 0 && nr <= 32 && nr <= ld && ntok <= 16 * nt);
    debug_assert!(a.len() >= 32 * k && b.len() >= nt * 16 * k);
    debug_assert!(ntok == 0 || out.len() >= (ntok - 1) * ld + nr);
    // Lanes of each 8-row group below `nr`, for the stores of a partial strip.
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let masks: [__m256i; 4] = core::array::from_fn(|g| _mm256_cmpgt_epi32(_mm256_set1_epi32(nr as i32 - 8 * g as i32), lanes));
    // sums[2 * i + j][r][t]: weight tile i (rows 16i..), token tile j; all four are stored
    // (a missing second token tile's sums as zeros) before they are read.
    let mut sums = core::mem::MaybeUninit::<[[[f32; 16]; 16]; 4]>::uninit();
    let base = sums.as_mut_ptr().cast::<f32>();
    let at = |q: usize| base.wrapping_add(256 * q);
    // SAFETY: the configuration is a local constant; tiles are released before return.
    unsafe { asm!("ldtilecfg [{}]", in(reg) &CONFIG_BF16, options(nostack, readonly, preserves_flags)) };
    for j0 in (0..nt).step_by(2) {
        let pair = j0 + 1 < nt;
        // SAFETY: per step `c` of 32 values the loads read 16 rows of 64 bytes at
        // `a + (16 i * k + 32 c) * 2` with a stride of `2 k` bytes (within `a`: 32 rows of k),
        // and 16 rows of 64 contiguous bytes at `b + ((j0 + j) * 16 k + 512 c) * 2` (within
        // tile j0 + j < nt of `b`); the stores write the local `sums` (16 rows of 64 bytes
        // each).
        unsafe {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem, preserves_flags)
            );
            let (a0, a1) = (a.as_ptr(), a.as_ptr().add(16 * k));
            let b0 = b.as_ptr().add(j0 * 16 * k);
            for c in 0..k / 32 {
                if pair {
                    asm!(
                        "tileloadd tmm4, [{a0} + {s}*1]",
                        "tileloadd tmm6, [{b0} + {bs}*1]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tileloadd tmm7, [{b1} + {bs}*1]",
                        "tdpbf16ps tmm1, tmm4, tmm7",
                        "tileloadd tmm5, [{a1} + {s}*1]",
                        "tdpbf16ps tmm2, tmm5, tmm6",
                        "tdpbf16ps tmm3, tmm5, tmm7",
                        a0 = in(reg) a0.add(32 * c),
                        a1 = in(reg) a1.add(32 * c),
                        s = in(reg) 2 * k,
                        b0 = in(reg) b0.add(512 * c),
                        b1 = in(reg) b0.add(16 * k + 512 * c),
                        bs = in(reg) 64usize,
                        options(nostack, readonly, preserves_flags),
                    );
                } else {
                    asm!(
                        "tileloadd tmm4, [{a0} + {s}*1]",
                        "tileloadd tmm6, [{b0} + {bs}*1]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tileloadd tmm5, [{a1} + {s}*1]",
                        "tdpbf16ps tmm2, tmm5, tmm6",
                        a0 = in(reg) a0.add(32 * c),
                        a1 = in(reg) a1.add(32 * c),
                        s = in(reg) 2 * k,
                        b0 = in(reg) b0.add(512 * c),
                        bs = in(reg) 64usize,
                        options(nostack, readonly, preserves_flags),
                    );
                }
            }
            asm!(
                "tilestored [{o0} + {s}*1], tmm0",
                "tilestored [{o1} + {s}*1], tmm1",
                "tilestored [{o2} + {s}*1], tmm2",
                "tilestored [{o3} + {s}*1], tmm3",
                o0 = in(reg) at(0),
                o1 = in(reg) at(1),
                o2 = in(reg) at(2),
                o3 = in(reg) at(3),
                s = in(reg) 64usize,
                options(nostack, preserves_flags),
            );
        }
        // SAFETY: the four tile stores above wrote all of `sums`.
        let sums = unsafe { sums.assume_init_ref() };
        // Tokens by row: each 8 x 8 quarter of a tile transposed, with the rows' biases, stored
        // for the tokens below `ntok` and (masked) the rows below `nr`.
        for (q, s) in sums.iter().enumerate().filter(|(q, _)| pair || q % 2 == 0) {
            let (i, j) = (q / 2, j0 + q % 2);
            for rh in (0..2).filter(|rh| 16 * i + 8 * rh < nr) {
                let (g, r0) = (2 * i + rh, 16 * i + 8 * rh);
                for th in (0..2).filter(|th| 16 * j + 8 * th < ntok) {
                    // SAFETY: reads rows 8rh..8rh + 8, floats 8th..8th + 8 of the 16 x 16
                    // tile; writes token t = 16j + 8th + u < ntok, rows r0.. (all 8 when
                    // r0 + 8 <= nr, else those below nr, masked): within `out` by the
                    // caller's contract.
                    unsafe {
                        let v: [__m256; 8] =
                            core::array::from_fn(|u| _mm256_loadu_ps(s[8 * rh + u].as_ptr().add(8 * th)));
                        let v = transpose8(v);
                        let bv = _mm256_loadu_ps(bias.as_ptr().add(r0));
                        let t0 = 16 * j + 8 * th;
                        for (u, v) in v.iter().enumerate().take(ntok - t0) {
                            let o = out.as_mut_ptr().add((t0 + u) * ld + r0);
                            let mut v = _mm256_add_ps(*v, bv);
                            if gelu {
                                v = crate::kernels::x86_64::avx2::gelu_ps(v);
                            }
                            if r0 + 8 <= nr {
                                _mm256_storeu_ps(o, v);
                            } else {
                                _mm256_maskstore_ps(o, masks[g], v);
                            }
                        }
                    }
                }
            }
        }
    }
    // SAFETY: releases the tiles configured above.
    unsafe { asm!("tilerelease", options(nostack, nomem, preserves_flags)) };
}


/// Sixteen f32 (two vectors, `lo` first) rounded to bf16 as [`crate::kernels::qdot::bf16_bits`]
/// does.
#[inline(always)]
unsafe fn bf16x16(lo: __m256, hi: __m256) -> __m256i {
    // SAFETY: register conversion only; AVX-512 BF16 and VL are enabled by the callers.
    unsafe { core::mem::transmute::<__m256bh, __m256i>(_mm256_cvtne2ps_pbh(hi, lo)) }
}

/// One Q8_0 (`q4 == false`) or Q4_0 weight row decoded to bf16 into `out` (`out.len() / 32`
/// blocks), bit for bit as [`crate::kernels::qdot::dequantize_row_bf16`]: a block per 512-bit
/// vector (16 + 16 values widened, scaled, and converted to bf16 in one instruction).
///
/// # Safety
/// The CPU supports F16C, AVX-512F and AVX-512 BF16; `row` holds `out.len() / 32` blocks.
#[target_feature(enable = "avx2,f16c,avx512f,avx512bf16")]
pub unsafe fn dequantize_row_bf16(q4: bool, row: &[u8], out: &mut [u16]) {
    use crate::kernels::qdot::{Q4_0_BLOCK_BYTES, Q8_0_BLOCK_BYTES};
    let bytes = if q4 { Q4_0_BLOCK_BYTES } else { Q8_0_BLOCK_BYTES };
    debug_assert!(row.len() >= out.len() / 32 * bytes);
    for (b, o) in out.chunks_exact_mut(32).enumerate() {
        // SAFETY: block b lies within `row` by the caller's contract (scale at its start, then
        // 32 or 16 bytes of values); the store writes the 32 values of `o`.
        unsafe {
            let p = row.as_ptr().add(b * bytes);
            let d = _mm512_set1_ps(crate::kernels::x86_64::avx2::scale_at(p));
            let (lo, hi) = if q4 {
                let q = _mm_loadu_si128(p.add(2) as *const __m128i);
                let m = _mm_set1_epi8(0x0f);
                let eight = _mm512_set1_epi32(8);
                let (lo, hi) = (_mm_and_si128(q, m), _mm_and_si128(_mm_srli_epi16::<4>(q), m));
                (
                    _mm512_sub_epi32(_mm512_cvtepu8_epi32(lo), eight),
                    _mm512_sub_epi32(_mm512_cvtepu8_epi32(hi), eight),
                )
            } else {
                (
                    _mm512_cvtepi8_epi32(_mm_loadu_si128(p.add(2) as *const __m128i)),
                    _mm512_cvtepi8_epi32(_mm_loadu_si128(p.add(18) as *const __m128i)),
                )
            };
            let (lo, hi) = (
                _mm512_mul_ps(_mm512_cvtepi32_ps(lo), d),
                _mm512_mul_ps(_mm512_cvtepi32_ps(hi), d),
            );
            let h = core::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_storeu_si512(o.as_mut_ptr() as *mut __m512i, h);
        }
    }
}

/// [`crate::kernels::qdot::pack_bf16_tile`] with AVX-512 BF16's conversion, bit for bit: per
/// eight tokens and sixteen values, each token's eight value pairs (one vector) are transposed
/// with the others' into eight rows of eight tokens.
///
/// # Safety
/// The CPU supports AVX2, AVX-512 BF16 and VL; `cols` is a multiple of 16.
#[target_feature(enable = "avx2,avx512bf16,avx512vl")]
pub unsafe fn pack_bf16_tile(x: &[f32], cols: usize, out: &mut [u16]) {
    use crate::kernels::qdot::BF16_TILE_TOKENS as T;
    debug_assert!(cols % 16 == 0);
    let tile = &mut out[..cols * T];
    let n = (x.len() / cols).min(T);
    // Every token group, so that missing tokens are written as zeros.
    for t0 in (0..T).step_by(8) {
        for c in 0..cols / 16 {
            // SAFETY: reads 16 floats at column 16c of tokens t0 + u < n (zeros past them);
            // writes 8 pairs (16 u16) at pair 8c + u, tokens t0..t0 + 8 of the tile (within
            // its `cols * 16` values).
            unsafe {
                let rows: [__m256; 8] = core::array::from_fn(|u| {
                    if t0 + u < n {
                        let v = x.as_ptr().add((t0 + u) * cols + 16 * c);
                        let h = bf16x16(_mm256_loadu_ps(v), _mm256_loadu_ps(v.add(8)));
                        _mm256_castsi256_ps(h)
                    } else {
                        _mm256_setzero_ps()
                    }
                });
                for (u, v) in transpose8(rows).iter().enumerate() {
                    let o = tile.as_mut_ptr().add(((8 * c + u) * T + t0) * 2);
                    _mm256_storeu_ps(o as *mut f32, *v);
                }
            }
        }
    }
}

/// f32 values rounded to bf16 as [`crate::kernels::qdot::bf16_bits`] does, bit for bit.
///
/// # Safety
/// The CPU supports AVX2, AVX-512 BF16 and VL; `out.len() >= x.len()`.
#[target_feature(enable = "avx2,avx512bf16,avx512vl")]
pub unsafe fn convert_bf16(x: &[f32], out: &mut [u16]) {
    debug_assert!(out.len() >= x.len());
    let whole = x.len() / 16 * 16;
    for i in (0..whole).step_by(16) {
        // SAFETY: reads x[i..i + 16], writes out[i..i + 16] (i + 16 <= x.len() <= out.len()).
        unsafe {
            let p = x.as_ptr().add(i);
            let h = bf16x16(_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)));
            _mm256_storeu_si256(out.as_mut_ptr().add(i) as *mut __m256i, h);
        }
    }
    for (o, &v) in out[whole..].iter_mut().zip(&x[whole..]) {
        *o = crate::kernels::qdot::bf16_bits(v);
    }
}
