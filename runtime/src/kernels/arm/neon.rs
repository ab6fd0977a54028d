//! NEON kernels for 32-bit ARM (armv7): i8 block sums with widening multiplies (`vmull.s8`)
//! for Q8_0, 16-bit panel sums with widening multiply-adds (`vmlal.s16`) for Q4_0, f32 dot
//! products, LayerNorm, and softmax's exponentials and GELU four lanes at a time with the AVX2
//! kernels' polynomials, written in `asm!` because Rust's 32-bit ARM NEON intrinsics and its
//! `neon` target feature are unstable; the assembler is told `.fpu neon`, and the kernels are
//! handed out only after the kernel reports NEON in the process's auxiliary vector
//! ([`detected`]). Block sums are exact and scaled as the references scale them, so the
//! quantized products equal the references bit for bit; the float kernels are within the
//! tests' named tolerances.

use crate::kernels::generic::{ERFC_P, ERFC_POLY, EXP_POLY, LN2_HI, LN2_LO};
use crate::kernels::pack::{
    block_scale, ActBlock, Panel16, PANEL_TOKENS, Q4_0_BLOCK_BYTES, Q8_0_BLOCK_BYTES,
};
use crate::quant::QK;

/// Whether the CPU has NEON: `HWCAP_NEON` in the kernel's `AT_HWCAP` (`getauxval`).
#[cfg(all(feature = "std", target_os = "linux"))]
pub fn detected() -> bool {
    // Linux's arm `HWCAP_NEON` (arch/arm/include/uapi/asm/hwcap.h).
    const HWCAP_NEON: libc::c_ulong = 1 << 12;
    // SAFETY: `getauxval` only reads the process's auxiliary vector; it returns 0 for an
    // absent entry.
    let caps = unsafe { libc::getauxval(libc::AT_HWCAP) };
    caps & HWCAP_NEON != 0
}

/// Without Linux's auxiliary vector, NEON is not assumed.
#[cfg(all(feature = "std", not(target_os = "linux")))]
pub fn detected() -> bool {
    false
}

/// Exact sums of 32 products of weight blocks `w[r]` (32 i8 each) with activation blocks
/// `x[t]` (32 i8 each), `[r * 4 + t]` for two rows and four tokens. Products pair up in i16
/// (at most 2 * 128 * 127), then widen to i32.
///
/// # Safety
/// The CPU must have NEON; each pointer must address 32 readable bytes.
#[inline(always)]
unsafe fn block_sums_2x4(w: [*const u8; 2], x: [*const i8; 4]) -> [i32; 8] {
    let mut out = [0i32; 8];
    // One token against both rows: widening products into q6 (row 0) and q7 (row 1), summed to
    // one i32 each and stored at `o` and `o + 16`.
    macro_rules! token {
        ($x:literal, $o:literal) => {
            concat!(
                "vld1.8 {{d8, d9, d10, d11}}, [{",
                $x,
                "}]\n",
                "vmull.s8 q6, d0, d8\n",
                "vmlal.s8 q6, d1, d9\n",
                "vmull.s8 q7, d2, d10\n",
                "vmlal.s8 q7, d3, d11\n",
                "vpaddl.s16 q6, q6\n",
                "vpadal.s16 q6, q7\n",
                "vpadd.i32 d12, d12, d13\n",
                "vpadd.i32 d12, d12, d12\n",
                "vmull.s8 q7, d4, d8\n",
                "vmlal.s8 q7, d5, d9\n",
                "vmull.s8 q4, d6, d10\n",
                "vmlal.s8 q4, d7, d11\n",
                "vpaddl.s16 q7, q7\n",
                "vpadal.s16 q7, q4\n",
                "vpadd.i32 d14, d14, d15\n",
                "vpadd.i32 d14, d14, d14\n",
                "vst1.32 {{d12[0]}}, [{o}]\n",
                "add {t}, {o}, #16\n",
                "vst1.32 {{d14[0]}}, [{t}]\n",
                "add {o}, {o}, #4\n",
            )
        };
    }
    // SAFETY: the loads read 32 bytes at each of the six pointers (the caller's contract); the
    // stores write the eight i32 of `out` (`o` walks its first four, `t` the last four); only
    // the declared registers are written.
    unsafe {
        core::arch::asm!(
            ".fpu neon",
            "vld1.8 {{d0, d1, d2, d3}}, [{w0}]",
            "vld1.8 {{d4, d5, d6, d7}}, [{w1}]",
            token!("x0", "0"),
            token!("x1", "4"),
            token!("x2", "8"),
            token!("x3", "12"),
            w0 = in(reg) w[0],
            w1 = in(reg) w[1],
            x0 = in(reg) x[0],
            x1 = in(reg) x[1],
            x2 = in(reg) x[2],
            x3 = in(reg) x[3],
            o = inout(reg) out.as_mut_ptr() => _,
            t = out(reg) _,
            out("d0") _, out("d1") _, out("d2") _, out("d3") _,
            out("d4") _, out("d5") _, out("d6") _, out("d7") _,
            out("d8") _, out("d9") _, out("d10") _, out("d11") _,
            out("d12") _, out("d13") _, out("d14") _, out("d15") _,
            options(nostack, preserves_flags),
        );
    }
    out
}

/// Exact sum of the 32 products of a weight block and an activation block.
///
/// # Safety
/// The CPU must have NEON; both pointers address 32 readable bytes.
#[inline(always)]
unsafe fn block_sum(w: *const u8, x: *const i8) -> i32 {
    let mut out = 0i32;
    // SAFETY: the loads read 32 bytes at `w` and `x` (the caller's contract); the store writes
    // `out`; only the declared registers are written.
    unsafe {
        core::arch::asm!(
            ".fpu neon",
            "vld1.8 {{d0, d1, d2, d3}}, [{w}]",
            "vld1.8 {{d4, d5, d6, d7}}, [{x}]",
            "vmull.s8 q4, d0, d4",
            "vmlal.s8 q4, d1, d5",
            "vmull.s8 q5, d2, d6",
            "vmlal.s8 q5, d3, d7",
            "vpaddl.s16 q4, q4",
            "vpadal.s16 q4, q5",
            "vpadd.i32 d8, d8, d9",
            "vpadd.i32 d8, d8, d8",
            "vst1.32 {{d8[0]}}, [{o}]",
            w = in(reg) w,
            x = in(reg) x,
            o = in(reg) &mut out as *mut i32,
            out("d0") _, out("d1") _, out("d2") _, out("d3") _,
            out("d4") _, out("d5") _, out("d6") _, out("d7") _,
            out("d8") _, out("d9") _, out("d10") _, out("d11") _,
            options(nostack, preserves_flags),
        );
    }
    out
}

/// Dot product of one Q8_0 weight row (`x.len()` blocks of 34 bytes) with activation blocks.
///
/// # Safety
/// The CPU must have NEON; `w` must hold at least `x.len() * 34` bytes.
pub unsafe fn dot_q8_0(w: &[u8], x: &[ActBlock]) -> f32 {
    debug_assert!(w.len() >= x.len() * Q8_0_BLOCK_BYTES);
    let mut s = 0f32;
    for (wb, xb) in w.chunks_exact(Q8_0_BLOCK_BYTES).zip(x) {
        // SAFETY: `wb[2..]` and `xb.qs` are 32 bytes; NEON is the caller's contract.
        let isum = unsafe { block_sum(wb[2..].as_ptr(), xb.qs.as_ptr()) };
        s += block_scale(wb) * xb.d * isum as f32;
    }
    s
}

/// The 2 x 4 tile: two Q8_0 weight rows against four tokens, each weight block loaded once for
/// the four tokens. Returns `[row 0 x tokens 0..4, row 1 x tokens 0..4]`.
///
/// # Safety
/// The CPU must have NEON; both rows hold at least `x[0].len() * 34` bytes and the four slices
/// have the same length.
pub unsafe fn dot_q8_0_2x4(w: [&[u8]; 2], x: [&[ActBlock]; 4]) -> [f32; 8] {
    let nb = x[0].len();
    debug_assert!(w.iter().all(|w| w.len() >= nb * Q8_0_BLOCK_BYTES));
    debug_assert!(x.iter().all(|s| s.len() == nb));
    let mut acc = [0f32; 8];
    for b in 0..nb {
        let wb = w.map(|r| &r[b * Q8_0_BLOCK_BYTES..(b + 1) * Q8_0_BLOCK_BYTES]);
        let xb = x.map(|t| &t[b]);
        // SAFETY: each weight block's `[2..]` and each activation block's `qs` are 32 bytes;
        // NEON is the caller's contract.
        let sums =
            unsafe { block_sums_2x4(wb.map(|r| r[2..].as_ptr()), xb.map(|t| t.qs.as_ptr())) };
        // The f16 scales decode once per block (in software on armv7), not once per token.
        let dw = wb.map(block_scale);
        for (i, (a, s)) in acc.iter_mut().zip(sums).enumerate() {
            *a += dw[i / 4] * xb[i % 4].d * s as f32;
        }
    }
    acc
}

/// The 32 weights of a Q4_0 block's 16 packed bytes at `w` (weight `j` in byte `j`'s low
/// nibble, weight `j + 16` in its high one) as signed bytes in `-8..=7`, stored in order at
/// `out`.
///
/// # Safety
/// The CPU must have NEON; `w` addresses 16 readable bytes, `out` 32 writable ones.
#[inline(always)]
unsafe fn unpack_q4_0(w: *const u8, out: *mut i8) {
    // SAFETY: one 16-byte load at `w`, one 32-byte store at `out` (the caller's contract); only
    // the declared registers are written.
    unsafe {
        core::arch::asm!(
            ".fpu neon",
            "vld1.8 {{d0, d1}}, [{w}]",
            "vmov.i8 q1, #15",
            "vand q2, q0, q1",
            "vshr.u8 q3, q0, #4",
            "vmov.i8 q1, #8",
            "vsub.i8 q2, q2, q1",
            "vsub.i8 q3, q3, q1",
            "vst1.8 {{d4, d5, d6, d7}}, [{o}]",
            w = in(reg) w,
            o = in(reg) out,
            out("d0") _, out("d1") _, out("d2") _, out("d3") _,
            out("d4") _, out("d5") _, out("d6") _, out("d7") _,
            options(nostack, preserves_flags),
        );
    }
}

/// Dot product of one Q4_0 weight row (`x.len()` blocks of 18 bytes) with activation blocks:
/// each block unpacked to signed bytes, then summed as Q8_0's.
///
/// # Safety
/// The CPU must have NEON; `w` must hold at least `x.len() * 18` bytes.
pub unsafe fn dot_q4_0(w: &[u8], x: &[ActBlock]) -> f32 {
    debug_assert!(w.len() >= x.len() * Q4_0_BLOCK_BYTES);
    let mut s = 0f32;
    let mut q = [0i8; QK];
    for (wb, xb) in w.chunks_exact(Q4_0_BLOCK_BYTES).zip(x) {
        // SAFETY: `wb[2..]` is 16 bytes, `q` and `xb.qs` 32; NEON is the caller's contract.
        let isum = unsafe {
            unpack_q4_0(wb[2..].as_ptr(), q.as_mut_ptr());
            block_sum(q.as_ptr() as *const u8, xb.qs.as_ptr())
        };
        s += block_scale(wb) * xb.d * isum as f32;
    }
    s
}

/// One weight pair against a 16-bit panel: the pair (4 bytes at `{u}`, then `{u}` moves on)
/// duplicated into both lanes of d4, the eight tokens' two values (32 bytes at `{px}`, then
/// `{px}` moves on) in q0 and q1, their products added to tokens 0, 1 (q4), 2, 3 (q5), 4, 5
/// (q6) and 6, 7 (q7), lanes `[even, odd, even, odd]`.
macro_rules! q4_pair {
    () => {
        concat!(
            "vld1.16 {{d0, d1, d2, d3}}, [{px}]!\n",
            "vld1.32 {{d4[]}}, [{u}]!\n",
            "vmlal.s16 q4, d0, d4\n",
            "vmlal.s16 q5, d1, d4\n",
            "vmlal.s16 q6, d2, d4\n",
            "vmlal.s16 q7, d3, d4\n",
        )
    };
}

/// Exact sums of one Q4_0 weight block (its 16 packed bytes at `w`) against a 16-bit panel's
/// values (`px`, 16 pairs of eight tokens), one i32 per token.
///
/// # Safety
/// The CPU must have NEON; `w` addresses 16 readable bytes, `px` 512.
#[inline(always)]
unsafe fn block_sums_q4_8(w: *const u8, px: *const i16) -> [i32; PANEL_TOKENS] {
    let mut q = [0i8; QK];
    let mut u = [0i16; QK];
    let mut out = [0i32; PANEL_TOKENS];
    // SAFETY: the unpacking reads 16 bytes at `w` and writes `q`; the widening reads `q` and
    // writes `u` (64 bytes); the pairs read `u` 4 bytes at a time and the panel's 512 bytes at
    // `px` (the caller's contract); the store writes the eight i32 of `out`; only the declared
    // registers are written.
    unsafe {
        unpack_q4_0(w, q.as_mut_ptr());
        core::arch::asm!(
            ".fpu neon",
            "vld1.8 {{d0, d1, d2, d3}}, [{q}]",
            "vmovl.s8 q2, d0",
            "vmovl.s8 q3, d1",
            "vst1.16 {{d4, d5, d6, d7}}, [{w16}]!",
            "vmovl.s8 q2, d2",
            "vmovl.s8 q3, d3",
            "vst1.16 {{d4, d5, d6, d7}}, [{w16}]",
            "vmov.i32 q4, #0",
            "vmov.i32 q5, #0",
            "vmov.i32 q6, #0",
            "vmov.i32 q7, #0",
            q4_pair!(), q4_pair!(), q4_pair!(), q4_pair!(),
            q4_pair!(), q4_pair!(), q4_pair!(), q4_pair!(),
            q4_pair!(), q4_pair!(), q4_pair!(), q4_pair!(),
            q4_pair!(), q4_pair!(), q4_pair!(), q4_pair!(),
            // Even and odd values of each token added: tokens 0..4 in q4, 4..8 in q5.
            "vpadd.i32 d8, d8, d9",
            "vpadd.i32 d9, d10, d11",
            "vpadd.i32 d10, d12, d13",
            "vpadd.i32 d11, d14, d15",
            "vst1.32 {{d8, d9, d10, d11}}, [{o}]",
            q = in(reg) q.as_ptr(),
            w16 = inout(reg) u.as_mut_ptr() => _,
            u = inout(reg) u.as_ptr() => _,
            px = inout(reg) px => _,
            o = in(reg) out.as_mut_ptr(),
            out("d0") _, out("d1") _, out("d2") _, out("d3") _,
            out("d4") _, out("d5") _, out("d6") _, out("d7") _,
            out("d8") _, out("d9") _, out("d10") _, out("d11") _,
            out("d12") _, out("d13") _, out("d14") _, out("d15") _,
            options(nostack, preserves_flags),
        );
    }
    out
}

/// Two Q4_0 weight rows against 16-bit panels of eight tokens (the layout of the AVX2 kernel),
/// one row at a time per block; sums exact and scaled as the reference scales them. Returns
/// `[row 0 x tokens 0..8, row 1 x tokens 0..8]`.
///
/// # Safety
/// The CPU must have NEON; both rows hold at least `p.len() * 18` bytes.
pub unsafe fn dot_q4_0_2x8(w: [&[u8]; 2], p: &[Panel16]) -> [f32; 16] {
    debug_assert!(w.iter().all(|w| w.len() >= p.len() * Q4_0_BLOCK_BYTES));
    let mut acc = [0f32; 2 * PANEL_TOKENS];
    for (b, pb) in p.iter().enumerate() {
        for (r, row) in w.iter().enumerate() {
            let wb = &row[b * Q4_0_BLOCK_BYTES..(b + 1) * Q4_0_BLOCK_BYTES];
            // SAFETY: `wb[2..]` is 16 bytes and the panel's values 512; NEON is the caller's
            // contract.
            let sums = unsafe { block_sums_q4_8(wb[2..].as_ptr(), pb.qs.as_ptr() as *const i16) };
            let dw = block_scale(wb);
            for (t, s) in sums.into_iter().enumerate() {
                acc[r * PANEL_TOKENS + t] += dw * pb.d[t] * s as f32;
            }
        }
    }
    acc
}

/// `e^x` of q0 into q0 for four lanes, with the AVX2 kernel's arithmetic ([`EXP_CONSTANTS`],
/// read from `{c}` on): clamped to `[-87.3, 88.3]`, `n = floor(x log2 e + 1/2)`, `r = x - n ln
/// 2` in two parts, Cephes' polynomial for `e^r` (multiply-adds not fused: armv7 NEON has
/// none), times `2^n` through the exponent bits. Writes q1 to q3; `{c}` moves past the
/// constants.
macro_rules! exp_q0 {
    () => {
        concat!(
            "vld1.32 {{d2[], d3[]}}, [{c}]!\n",
            "vmax.f32 q0, q0, q1\n",
            "vld1.32 {{d2[], d3[]}}, [{c}]!\n",
            "vmin.f32 q0, q0, q1\n",
            "vld1.32 {{d2[], d3[]}}, [{c}]!\n",
            "vmul.f32 q1, q0, q1\n",
            "vld1.32 {{d4[], d5[]}}, [{c}]!\n",
            "vadd.f32 q1, q1, q2\n",
            // floor: truncate, then one less where the truncation rounded up (negatives).
            "vcvt.s32.f32 q2, q1\n",
            "vcvt.f32.s32 q3, q2\n",
            "vcgt.f32 q3, q3, q1\n",
            "vadd.i32 q2, q2, q3\n",
            "vcvt.f32.s32 q1, q2\n",
            "vld1.32 {{d6[], d7[]}}, [{c}]!\n",
            "vmls.f32 q0, q1, q3\n",
            "vld1.32 {{d6[], d7[]}}, [{c}]!\n",
            "vmls.f32 q0, q1, q3\n",
            // Horner on r (q0), the running value alternating between q1 and q3.
            "vld1.32 {{d2[], d3[]}}, [{c}]!\n",
            "vld1.32 {{d6[], d7[]}}, [{c}]!\n",
            "vmla.f32 q3, q1, q0\n",
            "vld1.32 {{d2[], d3[]}}, [{c}]!\n",
            "vmla.f32 q1, q3, q0\n",
            "vld1.32 {{d6[], d7[]}}, [{c}]!\n",
            "vmla.f32 q3, q1, q0\n",
            "vld1.32 {{d2[], d3[]}}, [{c}]!\n",
            "vmla.f32 q1, q3, q0\n",
            "vld1.32 {{d6[], d7[]}}, [{c}]!\n",
            "vmla.f32 q3, q1, q0\n",
            // p r^2 + r + 1
            "vmul.f32 q1, q0, q0\n",
            "vmla.f32 q0, q3, q1\n",
            "vld1.32 {{d2[], d3[]}}, [{c}]!\n",
            "vadd.f32 q0, q0, q1\n",
            "vmov.i32 q1, #127\n",
            "vadd.i32 q2, q2, q1\n",
            "vshl.i32 q2, q2, #23\n",
            "vmul.f32 q0, q0, q2\n",
        )
    };
}

/// The constants [`exp_q0`] reads, in its order.
const EXP_CONSTANTS: [f32; 13] = [
    -87.3,
    88.3,
    core::f32::consts::LOG2_E,
    0.5,
    LN2_HI,
    LN2_LO,
    EXP_POLY[0],
    EXP_POLY[1],
    EXP_POLY[2],
    EXP_POLY[3],
    EXP_POLY[4],
    EXP_POLY[5],
    1.0,
];

/// The constants [`gelu4`] reads before `e^(-z^2)` (whose [`exp_q0`] reads its own), in its
/// order.
const GELU_CONSTANTS: [f32; 8] = [
    core::f32::consts::FRAC_1_SQRT_2,
    ERFC_P,
    1.0,
    ERFC_POLY[0],
    ERFC_POLY[1],
    ERFC_POLY[2],
    ERFC_POLY[3],
    ERFC_POLY[4],
];

/// `e^(x - max)` of the four floats at `p`, in place.
///
/// # Safety
/// The CPU must have NEON; `p` addresses four floats.
#[inline(always)]
unsafe fn exp4(p: *mut f32, max: &f32) {
    // SAFETY: loads and stores the four floats at `p`, reads `max` and the constants (the
    // caller's contract); only the declared registers are written.
    unsafe {
        core::arch::asm!(
            ".fpu neon",
            "vld1.32 {{d0, d1}}, [{p}]",
            "vld1.32 {{d2[], d3[]}}, [{m}]",
            "vsub.f32 q0, q0, q1",
            exp_q0!(),
            "vst1.32 {{d0, d1}}, [{p}]",
            p = in(reg) p,
            m = in(reg) max as *const f32,
            c = inout(reg) EXP_CONSTANTS.as_ptr() => _,
            out("d0") _, out("d1") _, out("d2") _, out("d3") _,
            out("d4") _, out("d5") _, out("d6") _, out("d7") _,
            options(nostack, preserves_flags),
        );
    }
}

/// Exact GELU `x Phi(x)` of the four floats at `p`, in place, with the AVX2 kernel's
/// arithmetic: `erfc` from [`ERFC_POLY`] on `|x| / sqrt 2` (its reciprocal from `vrecpe` and
/// two Newton steps), `Phi = 1 - erfc / 2` for `x >= 0`, `erfc / 2` below.
///
/// # Safety
/// The CPU must have NEON; `p` addresses four floats.
#[inline(always)]
unsafe fn gelu4(p: *mut f32) {
    // SAFETY: loads and stores the four floats at `p` and reads the constants (the caller's
    // contract); only the declared registers are written.
    unsafe {
        core::arch::asm!(
            ".fpu neon",
            "vld1.32 {{d8, d9}}, [{p}]",
            "vabs.f32 q5, q4",
            "vld1.32 {{d2[], d3[]}}, [{g}]!",
            "vmul.f32 q5, q5, q1",
            "vld1.32 {{d2[], d3[]}}, [{g}]!",
            "vld1.32 {{d4[], d5[]}}, [{g}]!",
            "vmla.f32 q2, q1, q5",
            "vrecpe.f32 q6, q2",
            "vrecps.f32 q7, q2, q6",
            "vmul.f32 q6, q6, q7",
            "vrecps.f32 q7, q2, q6",
            "vmul.f32 q6, q6, q7",
            // Horner on t (q6), the running value alternating between q1 and q3.
            "vld1.32 {{d2[], d3[]}}, [{g}]!",
            "vld1.32 {{d6[], d7[]}}, [{g}]!",
            "vmla.f32 q3, q1, q6",
            "vld1.32 {{d2[], d3[]}}, [{g}]!",
            "vmla.f32 q1, q3, q6",
            "vld1.32 {{d6[], d7[]}}, [{g}]!",
            "vmla.f32 q3, q1, q6",
            "vld1.32 {{d2[], d3[]}}, [{g}]!",
            "vmla.f32 q1, q3, q6",
            "vmul.f32 q6, q1, q6",
            "vmul.f32 q0, q5, q5",
            "vneg.f32 q0, q0",
            exp_q0!(),
            "vmul.f32 q0, q0, q6",
            "vmov.f32 q1, #0.5",
            "vmul.f32 q0, q0, q1",
            "vmov.f32 q1, #1.0",
            "vsub.f32 q1, q1, q0",
            "vclt.f32 q2, q4, #0",
            "vbsl q2, q0, q1",
            "vmul.f32 q4, q4, q2",
            "vst1.32 {{d8, d9}}, [{p}]",
            p = in(reg) p,
            g = inout(reg) GELU_CONSTANTS.as_ptr() => _,
            c = inout(reg) EXP_CONSTANTS.as_ptr() => _,
            out("d0") _, out("d1") _, out("d2") _, out("d3") _,
            out("d4") _, out("d5") _, out("d6") _, out("d7") _,
            out("d8") _, out("d9") _, out("d10") _, out("d11") _,
            out("d12") _, out("d13") _, out("d14") _, out("d15") _,
            options(nostack, preserves_flags),
        );
    }
}

/// Calls `f` on each group of four floats of `x`, the last one padded with zeros through a
/// local copy.
fn by_fours(x: &mut [f32], mut f: impl FnMut(*mut f32)) {
    let mut chunks = x.chunks_exact_mut(4);
    for c in &mut chunks {
        f(c.as_mut_ptr());
    }
    let tail = chunks.into_remainder();
    if !tail.is_empty() {
        let mut four = [0f32; 4];
        four[..tail.len()].copy_from_slice(tail);
        f(four.as_mut_ptr());
        let n = tail.len();
        tail.copy_from_slice(&four[..n]);
    }
}

/// Softmax of `x` in place: the maximum, the exponentials four at a time ([`exp4`]), their
/// sum, one multiply by its inverse.
///
/// # Safety
/// The CPU must have NEON.
pub unsafe fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    // SAFETY: `by_fours` hands out four floats at a time; NEON is the caller's contract.
    by_fours(x, |p| unsafe { exp4(p, &max) });
    let inv = 1.0 / x.iter().sum::<f32>();
    x.iter_mut().for_each(|v| *v *= inv);
}

/// Exact GELU in place, four at a time ([`gelu4`]).
///
/// # Safety
/// The CPU must have NEON.
pub unsafe fn gelu(x: &mut [f32]) {
    // SAFETY: `by_fours` hands out four floats at a time; NEON is the caller's contract.
    by_fours(x, |p| unsafe { gelu4(p) });
}

/// f32 dot product on two accumulators of four lanes (multiply-adds not fused), the last
/// `len % 8` products in scalar code.
///
/// # Safety
/// The CPU must have NEON; `a` and `b` may differ in length (the shorter counts).
pub unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let eights = n / 8;
    let mut s = 0f32;
    if eights > 0 {
        // SAFETY: the loop reads `8 * eights <= n` floats of each slice; the store writes `s`;
        // only the declared registers (and the flags) are written.
        unsafe {
            core::arch::asm!(
                ".fpu neon",
                "vmov.i32 q0, #0",
                "vmov.i32 q1, #0",
                "3:",
                "vld1.32 {{d4, d5, d6, d7}}, [{a}]!",
                "vld1.32 {{d8, d9, d10, d11}}, [{b}]!",
                "vmla.f32 q0, q2, q4",
                "vmla.f32 q1, q3, q5",
                "subs {n}, {n}, #1",
                "bne 3b",
                "vadd.f32 q0, q0, q1",
                "vadd.f32 d0, d0, d1",
                "vpadd.f32 d0, d0, d0",
                "vst1.32 {{d0[0]}}, [{o}]",
                a = inout(reg) a.as_ptr() => _,
                b = inout(reg) b.as_ptr() => _,
                n = inout(reg) eights => _,
                o = in(reg) &mut s as *mut f32,
                out("d0") _, out("d1") _, out("d2") _, out("d3") _,
                out("d4") _, out("d5") _, out("d6") _, out("d7") _,
                out("d8") _, out("d9") _, out("d10") _, out("d11") _,
                options(nostack),
            );
        }
    }
    for i in 8 * eights..n {
        s += a[i] * b[i];
    }
    s
}

/// LayerNorm of each row of `x` (rows of `w.len()`) in place, as the AVX2 kernel computes it
/// on four lanes (multiply-adds not fused): the mean, then the deviations from it, whose sum
/// corrects the mean and whose squares give the variance, then
/// `((x - mean) - c) / sqrt(var + eps) * w + b`; the last `len % 4` values in scalar code.
///
/// # Safety
/// The CPU must have NEON; `b` is as long as `w`.
pub unsafe fn layer_norm(x: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
    let h = w.len();
    debug_assert_eq!(b.len(), h);
    let (fours, full, hf) = (h / 4, h / 4 * 4, h as f32);
    for row in x.chunks_exact_mut(h) {
        // [sum], then [sum of deviations, sum of their squares].
        let (mut sum, mut dev) = (0f32, [0f32; 2]);
        if fours > 0 {
            // SAFETY: the loop reads `4 * fours <= h` floats of `row`; the store writes `sum`;
            // only the declared registers (and the flags) are written.
            unsafe {
                core::arch::asm!(
                    ".fpu neon",
                    "vmov.i32 q0, #0",
                    "3:",
                    "vld1.32 {{d2, d3}}, [{p}]!",
                    "vadd.f32 q0, q0, q1",
                    "subs {n}, {n}, #1",
                    "bne 3b",
                    "vadd.f32 d0, d0, d1",
                    "vpadd.f32 d0, d0, d0",
                    "vst1.32 {{d0[0]}}, [{o}]",
                    p = inout(reg) row.as_ptr() => _,
                    n = inout(reg) fours => _,
                    o = in(reg) &mut sum as *mut f32,
                    out("d0") _, out("d1") _, out("d2") _, out("d3") _,
                    options(nostack),
                );
            }
        }
        let mean = (sum + row[full..].iter().sum::<f32>()) / hf;
        if fours > 0 {
            // SAFETY: as above; the stores write `dev`'s two floats.
            unsafe {
                core::arch::asm!(
                    ".fpu neon",
                    "vld1.32 {{d8[], d9[]}}, [{m}]",
                    "vmov.i32 q0, #0",
                    "vmov.i32 q1, #0",
                    "3:",
                    "vld1.32 {{d4, d5}}, [{p}]!",
                    "vsub.f32 q2, q2, q4",
                    "vadd.f32 q0, q0, q2",
                    "vmla.f32 q1, q2, q2",
                    "subs {n}, {n}, #1",
                    "bne 3b",
                    "vadd.f32 d0, d0, d1",
                    "vpadd.f32 d0, d0, d0",
                    "vadd.f32 d2, d2, d3",
                    "vpadd.f32 d2, d2, d2",
                    "vst1.32 {{d0[0]}}, [{o}]!",
                    "vst1.32 {{d2[0]}}, [{o}]",
                    m = in(reg) &mean as *const f32,
                    p = inout(reg) row.as_ptr() => _,
                    n = inout(reg) fours => _,
                    o = inout(reg) dev.as_mut_ptr() => _,
                    out("d0") _, out("d1") _, out("d2") _, out("d3") _,
                    out("d4") _, out("d5") _, out("d8") _, out("d9") _,
                    options(nostack),
                );
            }
        }
        let (mut td, mut tq) = (0f32, 0f32);
        for &e in &row[full..] {
            td += e - mean;
            tq += (e - mean) * (e - mean);
        }
        let c = (dev[0] + td) / hf;
        let var = ((dev[1] + tq) / hf - c * c).max(0.0);
        let inv = 1.0 / libm::sqrtf(var + eps);
        if fours > 0 {
            let k = [mean, c, inv];
            // SAFETY: the loop reads and writes `4 * fours <= h` floats of `row` and reads as
            // many of `w` and `b` (length `h`); only the declared registers (and the flags)
            // are written.
            unsafe {
                core::arch::asm!(
                    ".fpu neon",
                    "vld1.32 {{d8[], d9[]}}, [{k}]!",
                    "vld1.32 {{d10[], d11[]}}, [{k}]!",
                    "vld1.32 {{d12[], d13[]}}, [{k}]",
                    "3:",
                    "vld1.32 {{d0, d1}}, [{p}]",
                    "vld1.32 {{d2, d3}}, [{w}]!",
                    "vld1.32 {{d4, d5}}, [{b}]!",
                    "vsub.f32 q0, q0, q4",
                    "vsub.f32 q0, q0, q5",
                    "vmul.f32 q0, q0, q6",
                    "vmla.f32 q2, q0, q1",
                    "vst1.32 {{d4, d5}}, [{p}]!",
                    "subs {n}, {n}, #1",
                    "bne 3b",
                    k = inout(reg) k.as_ptr() => _,
                    p = inout(reg) row.as_mut_ptr() => _,
                    w = inout(reg) w.as_ptr() => _,
                    b = inout(reg) b.as_ptr() => _,
                    n = inout(reg) fours => _,
                    out("d0") _, out("d1") _, out("d2") _, out("d3") _,
                    out("d4") _, out("d5") _, out("d8") _, out("d9") _,
                    out("d10") _, out("d11") _, out("d12") _, out("d13") _,
                    options(nostack),
                );
            }
        }
        for i in full..h {
            row[i] = ((row[i] - mean) - c) * inv * w[i] + b[i];
        }
    }
}
