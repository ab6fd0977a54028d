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

/// The 64-byte tile configuration (palette 1): tiles 0 and 1 hold sums (16 rows x 8 i32),
/// 2 and 3 weight blocks (16 rows x 32 bytes), 4 and 5 activation blocks (8 groups of four
/// values x 8 tokens, 32 bytes a row).
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

const CONFIG: TileConfig = {
    let mut c = [0u8; 64];
    c[0] = 1;
    let mut t = 0;
    while t < 6 {
        // colsb (u16 at 16 + 2t), rows (u8 at 48 + t).
        c[16 + 2 * t] = 32;
        c[48 + t] = if t < 4 { 16 } else { 8 };
        t += 1;
    }
    TileConfig(c)
};

/// Sixteen Q8_0 weight rows (row `r` at `w[r * row_bytes..]`) against an [`OffsetPanel`] of
/// eight tokens (its values and scales; AMX multiplies signed by signed, so the offset's
/// correction is not needed): `out[r][t]`, each block's exact i32 sum scaled in f32, blocks
/// summed in order. Two blocks go through the tiles at a time.
///
/// # Safety
/// [`available`] returned true; the CPU supports AVX2, FMA and F16C; `w` holds
/// `15 * row_bytes + p.len() * 34` bytes.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q8_0_16x8(w: &[u8], row_bytes: usize, p: &[OffsetPanel]) -> [[f32; 8]; 16] {
    debug_assert!(w.len() >= (AMX_ROWS - 1) * row_bytes + p.len() * Q8_0_BLOCK_BYTES);
    let mut acc = [_mm256_setzero_ps(); AMX_ROWS];
    let mut sums = [[[0i32; 8]; AMX_ROWS]; 2];
    // SAFETY: the tile loads read 16 rows of 32 bytes at `w + r * row_bytes + 34b + 2` (within
    // `w` by the caller's contract) and 8 x 32 bytes of a panel's `qs`; the stores write the
    // local `sums` (16 x 32 bytes each); the scales read 2 bytes at `w + r * row_bytes + 34b`.
    unsafe {
        asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, readonly, preserves_flags));
        let base = w.as_ptr();
        for (b0, pair) in p.chunks(2).enumerate().map(|(i, c)| (2 * i, c)) {
            let a0 = base.add(b0 * Q8_0_BLOCK_BYTES + 2);
            let x0 = pair[0].qs.as_ptr();
            asm!(
                "tilezero tmm0",
                "tileloadd tmm2, [{a} + {s}*1]",
                "tileloadd tmm4, [{x} + {xs}*1]",
                "tdpbssd tmm0, tmm2, tmm4",
                "tilestored [{o} + {xs}*1], tmm0",
                a = in(reg) a0,
                s = in(reg) row_bytes,
                x = in(reg) x0,
                xs = in(reg) 32usize,
                o = in(reg) sums[0].as_mut_ptr(),
                options(nostack, preserves_flags),
            );
            if pair.len() == 2 {
                asm!(
                    "tilezero tmm1",
                    "tileloadd tmm3, [{a} + {s}*1]",
                    "tileloadd tmm5, [{x} + {xs}*1]",
                    "tdpbssd tmm1, tmm3, tmm5",
                    "tilestored [{o} + {xs}*1], tmm1",
                    a = in(reg) a0.add(Q8_0_BLOCK_BYTES),
                    s = in(reg) row_bytes,
                    x = in(reg) pair[1].qs.as_ptr(),
                    xs = in(reg) 32usize,
                    o = in(reg) sums[1].as_mut_ptr(),
                    options(nostack, preserves_flags),
                );
            }
            for (k, pb) in pair.iter().enumerate() {
                let b = b0 + k;
                let dx = _mm256_load_ps(pb.d.as_ptr());
                for r in 0..AMX_ROWS {
                    let dw = super::avx2::scale_at(base.add(r * row_bytes + b * Q8_0_BLOCK_BYTES));
                    let s = _mm256_cvtepi32_ps(_mm256_loadu_si256(sums[k][r].as_ptr() as *const __m256i));
                    acc[r] = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(dw), dx), s, acc[r]);
                }
            }
        }
        asm!("tilerelease", options(nostack, nomem, preserves_flags));
    }
    let mut out = [[0f32; 8]; AMX_ROWS];
    for (o, a) in out.iter_mut().zip(acc) {
        // SAFETY: stores 8 floats into an 8-float array.
        unsafe { _mm256_storeu_ps(o.as_mut_ptr(), a) };
    }
    out
}
