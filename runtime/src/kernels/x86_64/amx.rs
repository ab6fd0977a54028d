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

/// Weight rows per tile product.
pub const AMX_ROWS: usize = 16;

/// Whether this CPU has AMX-TILE and AMX-INT8, the OS saves their state, and Linux granted this
/// process the tile data (asked for once).
pub fn available() -> bool {
    static GRANTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *GRANTED.get_or_init(|| {
        // CPUID leaf 7: EDX bit 24 AMX-TILE, bit 25 AMX-INT8.
        let leaf7 = __cpuid_count(7, 0);
        if leaf7.edx & (3 << 24) != 3 << 24 || !std::is_x86_feature_detected!("xsave") {
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
    // Rows by token: transpose each group's 16 x 8 block.
    let mut by_row = [[[0f32; 8]; AMX_ROWS]; AMX_GROUPS];
    for (o, a) in by_row.iter_mut().zip(&acc) {
        for (o, a) in o.iter_mut().zip(a) {
            // SAFETY: stores 8 floats into an 8-float array.
            unsafe { _mm256_storeu_ps(o.as_mut_ptr(), *a) };
        }
    }
    core::array::from_fn(|i| core::array::from_fn(|r| by_row[i / 8][r][i % 8]))
}
