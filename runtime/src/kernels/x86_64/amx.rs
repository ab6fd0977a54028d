//! AMX-INT8 (Sapphire Rapids and later): sixteen Q8_0 weight rows against sixteen tokens per
//! tile product, `tdpbssd` (signed bytes by signed bytes into i32 tiles), block by block so that
//! each block's sums take their own scales; Q4_0 rows likewise against 16-bit activations, their
//! high bytes by `tdpbssd` and their low bytes by `tdpbsud` (unsigned). AMX-BF16: strips of
//! thirty-two weight rows decoded to bf16 against the tokens, `tdpbf16ps`.
//!
//! Linux hands out the tile data state only on request (`arch_prctl(ARCH_REQ_XCOMP_PERM)`),
//! once per process; every kernel call loads its tile configuration and releases the tiles
//! before it returns, so no tile state outlives a call.

use core::arch::asm;
use core::arch::x86_64::*;

use crate::kernels::set::{Bf16Strip, TileOperands};

use crate::kernels::pack::{
    Q4_0_BLOCK_BYTES, Q8_0_BLOCK_BYTES, TILE_MAX_BLOCKS, TILE_PANEL_TOKENS,
};

/// Weight rows per tile product.
pub const AMX_ROWS: usize = 16;

/// Whether this CPU has AMX-TILE and AMX-INT8, the OS saves their state, and Linux granted this
/// process the tile data (asked for once).
pub fn available() -> bool {
    // CPUID leaf 7, EDX bit 25: AMX-INT8.
    tiles_granted() && __cpuid_count(7, 0).edx & (1 << 25) != 0
}

/// Whether this CPU has AMX-TILE and AMX-BF16 (granted as for [`available`]), and AVX-512 BF16
/// (with VL and BW) for the conversions to bf16 that feed the tiles.
pub fn available_bf16() -> bool {
    // CPUID leaf 7, EDX bit 22: AMX-BF16.
    tiles_granted()
        && __cpuid_count(7, 0).edx & (1 << 22) != 0
        && std::is_x86_feature_detected!("avx512bf16")
        && std::is_x86_feature_detected!("avx512vl")
        && std::is_x86_feature_detected!("avx512bw")
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
    // Linux's asm/prctl.h and the XTILEDATA state component.
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with two integer arguments touches no memory of ours.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    ret == 0
}

#[cfg(not(target_os = "linux"))]
fn request_tile_data() -> bool {
    false
}

/// A 64-byte tile configuration.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

/// The palette-1 configuration of tiles `0..tiles.len()`, each `(bytes a row, rows)`.
const fn tile_config(tiles: &[(u8, u8)]) -> TileConfig {
    let mut c = [0u8; 64];
    c[0] = 1;
    // colsb (u16 at 16 + 2t), rows (u8 at 48 + t) of each tile t.
    let mut t = 0;
    while t < tiles.len() {
        c[16 + 2 * t] = tiles[t].0;
        c[48 + t] = tiles[t].1;
        t += 1;
    }
    TileConfig(c)
}

/// The Q8_0 tile kernel's configuration: tiles 0 and 1 hold sums (16 rows x 16 i32), 2 and 3
/// weight blocks (16 rows x 32 bytes), 4 and 5 activation blocks (8 groups of four values x 16
/// tokens, 64 bytes a row); a block uses one of each, the next block the others.
const CONFIG: TileConfig = tile_config(&[(64, 16), (64, 16), (32, 16), (32, 16), (64, 8), (64, 8)]);

/// The Q4_0 tile kernel's configuration (palette 1): tiles 0-1 block `b`'s sums (high and low
/// bytes; 16 rows x 16 i32) for even `b`, 2-3 for odd, 4-5 unpacked weight blocks (16 rows x 32
/// bytes) for even and odd `b`, 6 and 7 the activations' high and low bytes (8 groups of four
/// values x 16 tokens, 64 bytes a row).
const CONFIG_Q4: TileConfig = tile_config(&[
    (64, 16),
    (64, 16),
    (64, 16),
    (64, 16),
    (32, 16),
    (32, 16),
    (64, 8),
    (64, 8),
]);

/// One block's tile product, left in the tiles: weights into `$w`, the sixteen tokens into
/// `$x`, their sums in `$s`.
macro_rules! q8_block {
    ($w:literal, $x:literal, $s:literal, $wb:expr, $rb:expr, $xp:expr) => {
        asm!(
            concat!("tileloadd tmm", $w, ", [{a} + {s}*1]"),
            concat!("tileloadd tmm", $x, ", [{x} + {xs}*1]"),
            concat!("tilezero tmm", $s),
            concat!("tdpbssd tmm", $s, ", tmm", $w, ", tmm", $x),
            a = in(reg) $wb,
            s = in(reg) $rb,
            x = in(reg) $xp,
            xs = in(reg) 64usize,
            options(nostack, readonly, preserves_flags),
        )
    };
}

/// One Q4_0 block's two tile products (CONFIG_Q4), left in the tiles: the unpacked weights
/// (rows 32 bytes apart) into `$w`, the tokens' high bytes into tile 6 and low bytes into 7;
/// signed by signed sums in `$h`, signed by unsigned in `$l`.
macro_rules! q4_block {
    ($w:literal, $h:literal, $l:literal, $wb:expr, $hi:expr, $lo:expr) => {
        asm!(
            concat!("tileloadd tmm", $w, ", [{a} + {s}*1]"),
            "tileloadd tmm6, [{h} + {xs}*1]",
            "tileloadd tmm7, [{l} + {xs}*1]",
            concat!("tilezero tmm", $h),
            concat!("tilezero tmm", $l),
            concat!("tdpbssd tmm", $h, ", tmm", $w, ", tmm6"),
            concat!("tdpbsud tmm", $l, ", tmm", $w, ", tmm7"),
            a = in(reg) $wb,
            s = in(reg) 32usize,
            h = in(reg) $hi,
            l = in(reg) $lo,
            xs = in(reg) 64usize,
            options(nostack, readonly, preserves_flags),
        )
    };
}

/// Sums tile `$s` stored to `$o` (16 rows of 64 bytes).
macro_rules! q8_store {
    ($s:literal, $o:expr) => {
        asm!(
            concat!("tilestored [{o} + {xs}*1], tmm", $s),
            o = in(reg) $o,
            xs = in(reg) 64usize,
            options(nostack, preserves_flags),
        )
    };
}

/// `groups` groups of sixteen Q8_0 weight rows (`Q4` false; group `i`'s row `r` at
/// `w[(16 * i + r) * row_bytes..]`) against `ntok` tokens in tiles of sixteen (`p`: tile `j`'s
/// `nb` [`TilePanel`](crate::kernels::pack::TilePanel)s at `p[j * nb..]`; AMX multiplies signed by signed, so no offset is
/// involved): `*y.add(t * ld + 16 * i + r)` = the bias `bias[16 * i + r]` (zero when `bias` is
/// empty) plus each block's exact i32 sum scaled in f32, blocks summed in order (with `gelu`,
/// GELU of that, on 512-bit vectors as they are stored). Per block, one weight tile meets
/// sixteen tokens in one product. One tile configuration serves the call. A row group meets
/// every token tile before the next group starts, so that its bytes (a few KB) are read from
/// L1 after the first tile, and its scales are converted once, at the first, into a local
/// table. The blocks run as a three-stage pipeline, so that no stage waits on the one before:
/// block `b`'s product is issued, then block `b - 1`'s sums are stored (two sets of tiles
/// alternate), then block `b - 2`'s are scaled and added up in f32. While a row group meets its
/// last token tile, the next group's bytes (within `w`) are prefetched.
///
/// With `Q4`, Q4_0 weight rows against 16-bit activations: each row group's blocks are
/// unpacked to bytes (`-8..=7`, rows 32 bytes apart) into a local table while it meets its
/// first token tile, and each block takes two products, of the tokens' high bytes (`tdpbssd`)
/// and low bytes (`tdpbsud`, unsigned), joined as `256 * high + low` in i32: the exact sums of
/// the 16-bit panel kernels. `p`: tile `j`'s `2 * nb` panels at `p[2 * j * nb..]`, as
/// [`crate::kernels::pack::pack_tile_panel16`] packs them.
///
/// # Safety
/// [`available`] returned true; the CPU supports AVX2, AVX-512F and F16C; `0 < nb <=`
/// [`TILE_MAX_BLOCKS`]; `p.len() == nb * ntok.div_ceil(16)` (Q4_0: twice that); `bias` is
/// empty or holds `16 * groups` values; `w` holds `(16 * groups - 1) * row_bytes + nb * 34`
/// bytes (Q4_0: `nb * 18`; or `groups` is 0); the values `y + t * ld + c` for `t < ntok`,
/// `c < 16 * groups` are writable and written by no one else meanwhile.
#[target_feature(enable = "avx512f,avx2,f16c")]
pub unsafe fn dot_16x16<const Q4: bool>(op: &TileOperands<'_>, y: *mut f32, ld: usize) {
    let TileOperands {
        w,
        row_bytes,
        nb,
        panels: p,
        bias,
        groups,
        ntok,
        gelu,
    } = *op;
    let tiles = ntok.div_ceil(TILE_PANEL_TOKENS);
    // Panels and bytes per block.
    let (per, block_bytes) = if Q4 {
        (2, Q4_0_BLOCK_BYTES)
    } else {
        (1, Q8_0_BLOCK_BYTES)
    };
    debug_assert!(nb > 0 && nb <= TILE_MAX_BLOCKS && p.len() == per * nb * tiles);
    debug_assert!(bias.is_empty() || bias.len() >= AMX_ROWS * groups);
    debug_assert!(groups == 0 || w.len() >= (AMX_ROWS * groups - 1) * row_bytes + nb * block_bytes);
    let group_bytes = AMX_ROWS * row_bytes;
    // Cache lines of the next row group to prefetch per block.
    let lines = group_bytes.div_ceil(64).div_ceil(nb);
    // sums[per * (b % RING) + h][r][t]: block b's exact sums (Q4_0: h = 0 of the high bytes, 1
    // of the low), from its store until it is scaled (left unset before: every block's are
    // stored before they are read).
    let mut sums = core::mem::MaybeUninit::<Sums>::uninit();
    let sums = sums.as_mut_ptr() as *mut [[i32; TILE_PANEL_TOKENS]; AMX_ROWS];
    // scales[b][r]: the group's row r's block b scale (set while the group meets its first
    // token tile, before it is read).
    let mut scales = core::mem::MaybeUninit::<Scales>::uninit();
    let scales = scales.as_mut_ptr() as *mut [f32; AMX_ROWS];
    // Q4_0: unpacked[b][r]: the group's row r's block b as bytes (set while the group meets
    // its first token tile, before the block's tile load).
    let mut unpacked = core::mem::MaybeUninit::<Unpacked>::uninit();
    let unpacked = unpacked.as_mut_ptr() as *mut [[i8; 32]; AMX_ROWS];
    // Byte offsets of the sixteen rows' scales from a block's start.
    let offsets = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(row_bytes as i32),
    );
    // SAFETY: the tile loads read 16 rows of 32 bytes at `w + (16i + r) * row_bytes + 34b + 2`
    // (Q8_0; within `w` by the caller's contract) or of the local `unpacked` table (Q4_0; b <
    // nb <= TILE_MAX_BLOCKS, written before), and 8 x 64 bytes of a panel's `qs`; the Q4_0
    // unpacking reads 16 bytes at `w + (16i + r) * row_bytes + 18b + 2` (within `w`); the
    // stores write the local `sums` ring (16 x 64 bytes a tile; a block's sums are read only
    // after their store) and the local `scales` table (b < nb); the gathers read 4 bytes at
    // `w + (16i + r) * row_bytes + block_bytes * b` (a scale and the block's first two bytes);
    // prefetches name addresses within `w` (checked); the results go to `y` within the
    // caller's bounds.
    unsafe {
        let config = if Q4 { &CONFIG_Q4 } else { &CONFIG };
        asm!("ldtilecfg [{}]", in(reg) config, options(nostack, readonly, preserves_flags));
        for i in 0..groups {
            let base = w.as_ptr().add(i * group_bytes);
            let next = (i + 1) * group_bytes;
            for j in 0..tiles {
                let p = &p[per * j * nb..per * (j + 1) * nb];
                let last = j + 1 == tiles;
                // acc[r]: row r against the sixteen tokens, from the row's bias.
                let mut acc = [_mm512_setzero_ps(); AMX_ROWS];
                if let Some(bias) = bias.get(AMX_ROWS * i..AMX_ROWS * (i + 1)) {
                    for (a, &b) in acc.iter_mut().zip(bias) {
                        *a = _mm512_set1_ps(b);
                    }
                }
                for b in 0..nb + LAG {
                    if b < nb {
                        if Q4 {
                            let wb = unpacked.add(b) as *mut [i8; 32];
                            if j == 0 {
                                unpack_q4(base.add(b * block_bytes + 2), row_bytes, wb);
                            }
                            let (hi, lo) = (p[2 * b].qs.as_ptr(), p[2 * b + 1].qs.as_ptr());
                            if b & 1 == 0 {
                                q4_block!("4", "0", "1", wb, hi, lo);
                            } else {
                                q4_block!("5", "2", "3", wb, hi, lo);
                            }
                        } else {
                            let (wb, x) = (base.add(b * block_bytes + 2), p[b].qs.as_ptr());
                            if b & 1 == 0 {
                                q8_block!("2", "4", "0", wb, row_bytes, x);
                            } else {
                                q8_block!("3", "5", "1", wb, row_bytes, x);
                            }
                        }
                        if last {
                            for l in 0..lines {
                                let at = next + (b * lines + l) * 64;
                                if at < w.len() {
                                    _mm_prefetch::<_MM_HINT_T0>(w.as_ptr().add(at) as *const i8);
                                }
                            }
                        }
                    }
                    if (1..=nb).contains(&b) {
                        let o = sums.add(per * ((b - 1) % RING));
                        match (Q4, (b - 1) & 1 == 0) {
                            (false, true) => q8_store!("0", o),
                            (false, false) => q8_store!("1", o),
                            (true, true) => {
                                q8_store!("0", o);
                                q8_store!("1", o.add(1));
                            }
                            (true, false) => {
                                q8_store!("2", o);
                                q8_store!("3", o.add(1));
                            }
                        }
                    }
                    if b < LAG {
                        continue;
                    }
                    let b = b - LAG;
                    // With one token tile, no table: one slot serves every block.
                    let slot = if tiles == 1 { 0 } else { b };
                    if j == 0 {
                        // The sixteen rows' f16 scales (each the low half of a gathered 32-bit
                        // word), converted at once into the table, from where each row's is
                        // broadcast (a load, no shuffle).
                        let bits = _mm512_i32gather_epi32::<1>(
                            offsets,
                            base.add(b * block_bytes) as *const _,
                        );
                        _mm512_store_ps(
                            scales.add(slot) as *mut f32,
                            _mm512_cvtph_ps(_mm512_cvtepi32_epi16(bits)),
                        );
                    }
                    let scales = &*scales.add(slot);
                    let dx = _mm512_load_ps(p[per * b].d.as_ptr());
                    let sums = sums.add(per * (b % RING)) as *const [i32; TILE_PANEL_TOKENS];
                    for (r, &scale) in scales.iter().enumerate() {
                        let mut s = _mm512_load_si512(sums.add(r) as *const __m512i);
                        if Q4 {
                            // 256 * high + low: at most 2^23 in magnitude.
                            let low = _mm512_load_si512(sums.add(AMX_ROWS + r) as *const __m512i);
                            s = _mm512_add_epi32(_mm512_slli_epi32::<8>(s), low);
                        }
                        let d = _mm512_mul_ps(_mm512_set1_ps(scale), dx);
                        acc[r] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(s), acc[r]);
                    }
                }
                // Rows by token to tokens by row.
                let mut v = [_mm512_setzero_si512(); AMX_ROWS];
                for (v, a) in v.iter_mut().zip(acc) {
                    *v = _mm512_castps_si512(a);
                }
                transpose16(&mut v);
                let t0 = j * TILE_PANEL_TOKENS;
                for (t, &v) in v.iter().enumerate().take(ntok - t0) {
                    let mut v = _mm512_castsi512_ps(v);
                    if gelu {
                        v = crate::kernels::x86_64::avx512::gelu_ps(v);
                    }
                    _mm512_storeu_ps(y.add((t0 + t) * ld + AMX_ROWS * i), v);
                }
            }
        }
        asm!("tilerelease", options(nostack, nomem, preserves_flags));
    }
}

/// Sixteen rows' Q4_0 block values (`src`: the first row's sixteen bytes of nibbles, rows
/// `row_bytes` apart) unpacked to bytes `-8..=7` into `out` (sixteen rows of 32: values 0-15
/// from the low nibbles, 16-31 from the high).
///
/// # Safety
/// AVX2; `src + r * row_bytes` holds sixteen readable bytes and `out` sixteen writable,
/// 32-byte aligned rows.
#[inline(always)]
unsafe fn unpack_q4(src: *const u8, row_bytes: usize, out: *mut [i8; 32]) {
    // SAFETY: the caller's contract.
    unsafe {
        let (mask, eight) = (_mm_set1_epi8(0x0f), _mm256_set1_epi8(8));
        for r in 0..AMX_ROWS {
            let v = _mm_loadu_si128(src.add(r * row_bytes) as *const __m128i);
            let lo = _mm_and_si128(v, mask);
            let hi = _mm_and_si128(_mm_srli_epi16::<4>(v), mask);
            let both = _mm256_sub_epi8(_mm256_set_m128i(hi, lo), eight);
            _mm256_store_si256(out.add(r) as *mut __m256i, both);
        }
    }
}

/// A Q4_0 row group's blocks unpacked to bytes, 64-byte aligned for the tile loads.
#[repr(C, align(64))]
struct Unpacked([[[i8; 32]; AMX_ROWS]; TILE_MAX_BLOCKS]);

/// A row group's scales by block, 64-byte aligned for the vector stores.
#[repr(C, align(64))]
struct Scales([[f32; AMX_ROWS]; TILE_MAX_BLOCKS]);

/// Three blocks' sums (two tiles each for Q4_0), 64-byte aligned for the tile stores and the
/// vector loads.
#[repr(C, align(64))]
struct Sums([[[i32; TILE_PANEL_TOKENS]; AMX_ROWS]; 2 * RING]);

/// Blocks between a block's product and its scaling.
const LAG: usize = 2;

/// Blocks' sums held at once: those being scaled, stored and multiplied.
const RING: usize = LAG + 1;

/// The tile configuration of the bf16 strip product: all eight tiles 16 rows of 64 bytes;
/// 0-3 sums (16 tokens x 16 rows, f32), 4-5 activations (16 tokens x 32 bf16), 6-7 weights
/// (16 value pairs x 16 rows).
const CONFIG_BF16: TileConfig = tile_config(&[(64, 16); 8]);

/// A strip of thirty-two weight rows in bf16 (`a`, laid out as
/// [`crate::kernels::pack::strip_index`] says, rows of `k` values, `k` a multiple of 32) against
/// `nt` tiles of sixteen tokens (`b`, rows of `k` bf16 values):
/// `*out.add(t * ld + r) = bias[r] + sum a[r][i] * x_t[i]` for the first `ntok` tokens and `nr` rows,
/// accumulated in f32 by `tdpbf16ps` from the biases. The tiles of sums are tokens by rows, the
/// layout of `out`: whole ones are stored straight into it; partial ones, and all with `gelu`
/// (GELU on 512-bit vectors as they are copied), go through a local tile. Token tiles go in
/// pairs against 2 x 2 tiles of sums (each weight tile serves both token tiles and each token
/// tile both weight tiles); one tile configuration serves the whole call.
///
/// # Safety
/// [`available_bf16`] returned true; the CPU supports AVX-512F; `a.len() >= 32 * k`,
/// `b.len() >= nt * 16 * k`, `k % 32 == 0`, `nr <= 32`, `ntok <= 16 * nt`, and the values
/// `out + t * ld + r` for `t < ntok`, `r < nr` are writable and written by no one else meanwhile.
#[target_feature(enable = "avx512f")]
pub unsafe fn gemm_bf16_32xn(s: &Bf16Strip<'_>, out: *mut f32, ld: usize) {
    let Bf16Strip {
        a,
        k,
        b,
        nt,
        bias,
        nr,
        ntok,
        gelu,
        next,
    } = *s;
    debug_assert!(k.is_multiple_of(32) && nr <= 32 && ntok <= 16 * nt);
    debug_assert!(a.len() >= 32 * k && b.len() >= nt * 16 * k);
    let nb = k / 32;
    // `next`'s cache lines, spread over the product's steps (into L2).
    let (lines, steps) = (next.len().div_ceil(64), (nb * nt.div_ceil(2)).max(1));
    let mut fetched = 0;
    // The sums start from the biases: sixteen equal rows of the 32 biases.
    let init = [*bias; 16];
    // A partial tile of sums, or one on its way through GELU.
    let mut part = [[0f32; 16]; 16];
    // SAFETY: the configuration is a local constant; tiles are released before return.
    unsafe {
        asm!("ldtilecfg [{}]", in(reg) &CONFIG_BF16, options(nostack, readonly, preserves_flags))
    };
    for j0 in (0..nt).step_by(2) {
        let pair = j0 + 1 < nt;
        // SAFETY: the bias loads read 16 rows of 64 bytes of `init` (rows of 128 bytes); per
        // step `c` of 32 values the loads read 16 rows of 64 bytes at `b + ((j0 + j) 16 k +
        // 32 c) 2` with a stride of `2 k` bytes (within token tile j0 + j < nt of `b`) and the
        // 1 KB weight tiles `(g nb + c)` of `a` (within its 32 k values).
        unsafe {
            let ip = init.as_ptr().cast::<f32>();
            asm!(
                "tileloadd tmm0, [{i0} + {s}*1]",
                "tileloadd tmm1, [{i1} + {s}*1]",
                "tileloadd tmm2, [{i0} + {s}*1]",
                "tileloadd tmm3, [{i1} + {s}*1]",
                i0 = in(reg) ip,
                i1 = in(reg) ip.add(16),
                s = in(reg) 128usize,
                options(nostack, readonly, preserves_flags)
            );
            let x0 = b.as_ptr().add(j0 * 16 * k);
            let (w0, w1) = (a.as_ptr(), a.as_ptr().add(nb * 512));
            for c in 0..nb {
                let due = (j0 / 2 * nb + c + 1) * lines / steps;
                while fetched < due {
                    _mm_prefetch::<_MM_HINT_T1>(next.as_ptr().add(64 * fetched) as *const i8);
                    fetched += 1;
                }
                if pair {
                    asm!(
                        "tileloadd tmm4, [{x0} + {s}*1]",
                        "tileloadd tmm6, [{w0} + {ws}*1]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tileloadd tmm7, [{w1} + {ws}*1]",
                        "tdpbf16ps tmm1, tmm4, tmm7",
                        "tileloadd tmm5, [{x1} + {s}*1]",
                        "tdpbf16ps tmm2, tmm5, tmm6",
                        "tdpbf16ps tmm3, tmm5, tmm7",
                        x0 = in(reg) x0.add(32 * c),
                        x1 = in(reg) x0.add(16 * k + 32 * c),
                        s = in(reg) 2 * k,
                        w0 = in(reg) w0.add(512 * c),
                        w1 = in(reg) w1.add(512 * c),
                        ws = in(reg) 64usize,
                        options(nostack, readonly, preserves_flags),
                    );
                } else {
                    asm!(
                        "tileloadd tmm4, [{x0} + {s}*1]",
                        "tileloadd tmm6, [{w0} + {ws}*1]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tileloadd tmm7, [{w1} + {ws}*1]",
                        "tdpbf16ps tmm1, tmm4, tmm7",
                        x0 = in(reg) x0.add(32 * c),
                        s = in(reg) 2 * k,
                        w0 = in(reg) w0.add(512 * c),
                        w1 = in(reg) w1.add(512 * c),
                        ws = in(reg) 64usize,
                        options(nostack, readonly, preserves_flags),
                    );
                }
            }
        }
        // Tile q of sums: token tile j0 + q / 2, rows 16 (q % 2)..
        for q in 0..if pair { 4 } else { 2 } {
            let (t0, r0) = (16 * (j0 + q / 2), 16 * (q % 2));
            if t0 >= ntok || r0 >= nr {
                continue;
            }
            let (tn, rn) = ((ntok - t0).min(16), (nr - r0).min(16));
            let o = out.wrapping_add(t0 * ld + r0);
            if tn == 16 && rn == 16 && !gelu {
                // SAFETY: writes 16 rows of 64 bytes at `out + (t0 + t) ld + r0` for t < 16:
                // tokens below `ntok` and rows below `nr`, writable by the contract.
                unsafe { tile_store(q, o, 4 * ld) };
                continue;
            }
            // SAFETY: the tile store writes the 1 KB of `part`; each row's masked store writes
            // the `rn` floats of token t0 + t < ntok, rows r0..r0 + rn <= nr, writable by the
            // contract.
            unsafe {
                tile_store(q, part.as_mut_ptr().cast(), 64);
                let m: __mmask16 = ((1u32 << rn) - 1) as u16;
                for (t, row) in part.iter().enumerate().take(tn) {
                    let mut v = _mm512_loadu_ps(row.as_ptr());
                    if gelu {
                        v = crate::kernels::x86_64::avx512::gelu_ps(v);
                    }
                    _mm512_mask_storeu_ps(o.add(t * ld), m, v);
                }
            }
        }
    }
    // SAFETY: releases the tiles configured above.
    unsafe { asm!("tilerelease", options(nostack, nomem, preserves_flags)) };
}

/// Stores tile of sums `q` (tmm0-3) as 16 rows of 64 bytes at `o`, `stride` bytes apart.
///
/// # Safety
/// The bf16 tile configuration is loaded; the 16 rows are writable.
#[inline(always)]
unsafe fn tile_store(q: usize, o: *mut f32, stride: usize) {
    // SAFETY: by the caller's contract.
    unsafe {
        match q {
            0 => {
                asm!("tilestored [{o} + {s}*1], tmm0", o = in(reg) o, s = in(reg) stride, options(nostack, preserves_flags))
            }
            1 => {
                asm!("tilestored [{o} + {s}*1], tmm1", o = in(reg) o, s = in(reg) stride, options(nostack, preserves_flags))
            }
            2 => {
                asm!("tilestored [{o} + {s}*1], tmm2", o = in(reg) o, s = in(reg) stride, options(nostack, preserves_flags))
            }
            _ => {
                asm!("tilestored [{o} + {s}*1], tmm3", o = in(reg) o, s = in(reg) stride, options(nostack, preserves_flags))
            }
        }
    }
}

/// The 16 x 16 transpose of 32-bit lanes in place: lane `c` of `v[r]` becomes lane `r` of
/// `v[c]` (in-lane unpacks by 32 and 64 bits, then two rounds of 128-bit lane shuffles).
#[inline(always)]
unsafe fn transpose16(v: &mut [__m512i; 16]) {
    // SAFETY: register shuffles under AVX-512F (enabled by the callers).
    unsafe {
        let mut t = [_mm512_setzero_si512(); 16];
        for i in (0..16).step_by(2) {
            t[i] = _mm512_unpacklo_epi32(v[i], v[i + 1]);
            t[i + 1] = _mm512_unpackhi_epi32(v[i], v[i + 1]);
        }
        // u[4i + j], in each 128-bit lane L: rows 4i..4i + 4 of column 4L + j.
        let mut u = [_mm512_setzero_si512(); 16];
        for g in (0..16).step_by(4) {
            u[g] = _mm512_unpacklo_epi64(t[g], t[g + 2]);
            u[g + 1] = _mm512_unpackhi_epi64(t[g], t[g + 2]);
            u[g + 2] = _mm512_unpacklo_epi64(t[g + 1], t[g + 3]);
            u[g + 3] = _mm512_unpackhi_epi64(t[g + 1], t[g + 3]);
        }
        for j in 0..4 {
            let x = _mm512_shuffle_i32x4::<0x44>(u[j], u[4 + j]);
            let y = _mm512_shuffle_i32x4::<0xee>(u[j], u[4 + j]);
            let x2 = _mm512_shuffle_i32x4::<0x44>(u[8 + j], u[12 + j]);
            let y2 = _mm512_shuffle_i32x4::<0xee>(u[8 + j], u[12 + j]);
            v[j] = _mm512_shuffle_i32x4::<0x88>(x, x2);
            v[4 + j] = _mm512_shuffle_i32x4::<0xdd>(x, x2);
            v[8 + j] = _mm512_shuffle_i32x4::<0x88>(y, y2);
            v[12 + j] = _mm512_shuffle_i32x4::<0xdd>(y, y2);
        }
    }
}

/// Sixteen rows' 32 bf16 values each (one vector per row, value pairs as 32-bit lanes) stored
/// as one strip tile: 16 rows of value pairs, each holding the sixteen rows' pair side by side.
///
/// # Safety
/// AVX-512F; `o` points at 512 writable `u16`.
#[inline(always)]
unsafe fn store_strip_tile(rows: &mut [__m512i; 16], o: *mut u16) {
    // SAFETY: register shuffles, then 16 stores of 64 bytes within the caller's 1 KB.
    unsafe {
        transpose16(rows);
        for (p, v) in rows.iter().enumerate() {
            _mm512_storeu_si512(o.add(32 * p) as *mut __m512i, *v);
        }
    }
}

/// A strip of 32 rows of depth `k` in `out`: `row(r, c)` gives the 32 bf16 values of step `c`
/// of row `r < nr` (rows from `nr` on are zeros); each step's sixteen rows per group go into
/// their tile of value pairs ([`store_strip_tile`]).
///
/// # Safety
/// AVX-512F; `out.len() >= 32 * k`, `k % 32 == 0`; `row` is safe to call for `r < nr`,
/// `c < k / 32`.
#[inline(always)]
unsafe fn fill_strip(nr: usize, k: usize, out: &mut [u16], row: impl Fn(usize, usize) -> __m512i) {
    let nb = k / 32;
    for g in 0..2 {
        for c in 0..nb {
            // SAFETY: AVX-512F is enabled by the callers; `row` is called for r < nr, c < nb;
            // the tile `(g nb + c) 512..` lies within `out` (32 k values).
            unsafe {
                let mut rows = [_mm512_setzero_si512(); 16];
                for (n, v) in rows.iter_mut().enumerate().take(nr.saturating_sub(16 * g)) {
                    *v = row(16 * g + n, c);
                }
                store_strip_tile(&mut rows, out.as_mut_ptr().add((g * nb + c) * 512));
            }
        }
    }
}

/// One Q8_0 (`q4 == false`) or Q4_0 block at `p` decoded to 32 bf16 values, bit for bit as
/// [`crate::kernels::pack::dequantize_row_bf16`]: 16 + 16 values widened, scaled, and
/// converted to bf16 in one instruction.
///
/// # Safety
/// F16C, AVX-512F and AVX-512 BF16; `p` points at a whole block.
#[inline(always)]
unsafe fn decode_block(q4: bool, p: *const u8) -> __m512i {
    // SAFETY: reads the block's scale and values; register arithmetic otherwise.
    unsafe {
        let d = _mm512_set1_ps(crate::kernels::x86_64::avx2::scale_at(p));
        let (lo, hi) = if q4 {
            let q = _mm_loadu_si128(p.add(2) as *const __m128i);
            let m = _mm_set1_epi8(0x0f);
            let eight = _mm512_set1_epi32(8);
            let (lo, hi) = (
                _mm_and_si128(q, m),
                _mm_and_si128(_mm_srli_epi16::<4>(q), m),
            );
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
        core::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo))
    }
}

/// Up to 32 Q8_0 (`q4 == false`) or Q4_0 weight rows (`nr` rows of `k` values from the start
/// of `data`) decoded to a bf16 strip, bit for bit as
/// [`crate::kernels::pack::dequantize_strip_bf16`]: per step of 32 values, sixteen rows' blocks
/// decoded one per vector and transposed into the tile of value pairs.
///
/// # Safety
/// The CPU supports F16C, AVX-512F and AVX-512 BF16; `k % 32 == 0`, `nr <= 32`, `data` holds
/// `nr` rows of `k / 32` blocks, `out.len() >= 32 * k`.
#[target_feature(enable = "avx2,f16c,avx512f,avx512bf16")]
pub unsafe fn dequantize_strip_bf16(q4: bool, data: &[u8], nr: usize, k: usize, out: &mut [u16]) {
    use crate::kernels::pack::{Q4_0_BLOCK_BYTES, Q8_0_BLOCK_BYTES};
    let bytes = if q4 {
        Q4_0_BLOCK_BYTES
    } else {
        Q8_0_BLOCK_BYTES
    };
    let rb = k / 32 * bytes;
    debug_assert!(nr <= 32 && data.len() >= nr * rb && out.len() >= 32 * k);
    // SAFETY: row r < nr's block c lies within `data`; `out` holds the strip's 32 k values.
    unsafe {
        fill_strip(nr, k, out, |r, c| {
            decode_block(q4, data.as_ptr().add(r * rb + c * bytes))
        })
    }
}

/// [`crate::kernels::pack::pack_bf16_strip`] with AVX-512 BF16's conversion, bit for bit: up to
/// 32 f32 rows of `k` (`x.len() / k` of them) as a bf16 strip.
///
/// # Safety
/// The CPU supports AVX-512F and AVX-512 BF16; `k % 32 == 0`, `out.len() >= 32 * k`.
#[target_feature(enable = "avx512f,avx512bf16")]
pub unsafe fn pack_bf16_strip(x: &[f32], k: usize, out: &mut [u16]) {
    let nr = (x.len() / k).min(32);
    debug_assert!(k.is_multiple_of(32) && out.len() >= 32 * k);
    // SAFETY: values 32c..32c + 32 of row r < nr lie within `x`; `out` holds the strip's 32 k
    // values.
    unsafe {
        fill_strip(nr, k, out, |r, c| {
            let p = x.as_ptr().add(r * k + 32 * c);
            core::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(
                _mm512_loadu_ps(p.add(16)),
                _mm512_loadu_ps(p),
            ))
        })
    }
}

/// [`crate::kernels::pack::pack_bf16_columns`] with AVX-512 BF16's conversion, bit for bit:
/// each tile row (a pair of rows of `x`, sixteen columns) is one conversion of the two rows'
/// sixteen values and one permutation that interleaves them.
///
/// # Safety
/// The CPU supports AVX-512F, BW and BF16; `k % 32 == 0`, `n <= k`, `x.len() >= (n - 1) * ld +
/// 32` when `n > 0`, `out.len() >= 32 * k`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub unsafe fn pack_bf16_columns(x: &[f32], ld: usize, n: usize, k: usize, out: &mut [u16]) {
    debug_assert!(k.is_multiple_of(32) && n <= k && out.len() >= 32 * k);
    let nb = k / 32;
    // Lane 2i takes value i of the first row, lane 2i + 1 value i of the second.
    let idx: [i16; 32] = core::array::from_fn(|l| (l / 2 + 16 * (l % 2)) as i16);
    // SAFETY: a register load of the local index array.
    let idx = unsafe { _mm512_loadu_si512(idx.as_ptr() as *const __m512i) };
    for g in 0..2 {
        for c in 0..nb {
            for p in 0..16 {
                let j = 32 * c + 2 * p;
                // SAFETY: reads 16 values at column 16g of rows j, j + 1 below n (within `x`
                // by the contract); writes row p of tile (g nb + c) of `out`.
                unsafe {
                    let row = |j: usize| {
                        if j < n {
                            _mm512_loadu_ps(x.as_ptr().add(j * ld + 16 * g))
                        } else {
                            _mm512_setzero_ps()
                        }
                    };
                    let h = core::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(
                        row(j + 1),
                        row(j),
                    ));
                    let o = out.as_mut_ptr().add(((g * nb + c) * 16 + p) * 32);
                    _mm512_storeu_si512(o as *mut __m512i, _mm512_permutexvar_epi16(idx, h));
                }
            }
        }
    }
}

/// [`crate::kernels::pack::pack_bf16_tile`] with AVX-512 BF16's conversion, bit for bit: up to
/// sixteen tokens' rows converted, the missing ones zeros.
///
/// # Safety
/// The CPU supports AVX-512F, BW and BF16; `out.len() >= cols * 16`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub unsafe fn pack_bf16_tile(x: &[f32], cols: usize, out: &mut [u16]) {
    use crate::kernels::pack::BF16_TILE_TOKENS as T;
    let tile = &mut out[..cols * T];
    let n = x.len().min(tile.len()) / cols * cols;
    // SAFETY: `n <= x.len()` and `n <= tile.len()`.
    unsafe { convert_bf16(&x[..n], tile) };
    tile[n..].fill(0);
}

/// f32 values rounded to bf16 as [`crate::kernels::pack::bf16_bits`] does, bit for bit: 32
/// values per conversion, the tail masked.
///
/// # Safety
/// The CPU supports AVX-512F, BW and BF16; `out.len() >= x.len()`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub unsafe fn convert_bf16(x: &[f32], out: &mut [u16]) {
    debug_assert!(out.len() >= x.len());
    let n = x.len();
    for i in (0..n).step_by(32) {
        let lanes = |m: usize| if m >= 16 { 0xffff } else { (1u16 << m) - 1 };
        let (lo, hi) = (lanes(n - i), lanes((n - i).saturating_sub(16)));
        // SAFETY: the masked loads read x[i..min(i + 32, n)]; the masked store writes as many
        // values of `out` (at least as long as `x`).
        unsafe {
            let p = x.as_ptr().add(i);
            let v = _mm512_cvtne2ps_pbh(
                _mm512_maskz_loadu_ps(hi, p.wrapping_add(16)),
                _mm512_maskz_loadu_ps(lo, p),
            );
            let v = core::mem::transmute::<__m512bh, __m512i>(v);
            _mm512_mask_storeu_epi16(
                out.as_mut_ptr().add(i) as *mut i16,
                ((hi as u32) << 16 | lo as u32) as __mmask32,
                v,
            );
        }
    }
}
