//! Compute kernels, in tract-linalg's layout: this module is the frame (the kernel set, its
//! run-time selection, and the operations the encoder calls), [`generic`] holds the scalar
//! references, and each ISA has its own module whose kernels are tested against them.
//!
//! Selection happens once, by CPU feature detection; `PETAL_KERNELS=generic` forces the scalar
//! references, and `PETAL_KERNELS=NAME` any other set this CPU runs (`avx2`, `avx2+avxvnni`,
//! `neon`, ...).

#[cfg(target_arch = "aarch64")]
#[allow(unsafe_code)]
pub mod aarch64;
#[cfg(target_arch = "arm")]
#[allow(unsafe_code)]
pub mod arm;
#[allow(unsafe_code)]
pub mod gemm;
pub mod generic;
pub mod qdot;
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
pub mod x86_64;

use alloc::vec::Vec;

use crate::quant::{TensorType, QK};
use crate::weights::Matrix;
use qdot::{ActBlock, OffsetPanel, Panel16, Panel8, BF16_TILE_TOKENS, PANEL_TOKENS};

/// One implementation of every kernel.
#[derive(Clone, Copy, Debug)]
pub struct KernelSet {
    /// Name, for reports (`generic`, `avx2`).
    pub name: &'static str,
    /// Q8_0 weight row · activation blocks.
    pub dot_q8_0: fn(&[u8], &[ActBlock]) -> f32,
    /// Two Q8_0 weight rows · four tokens' activation blocks, `[row 0 x 4, row 1 x 4]`.
    pub dot_q8_0_2x4: TileProduct2x4,
    /// Two Q8_0 weight rows · a panel of eight tokens, `[row 0 x 8, row 1 x 8]`; when present,
    /// linear layers pack their activations into panels and use it instead of the 2 x 4 tile.
    pub dot_q8_0_2x8: Option<PanelProduct<Panel8>>,
    /// Two Q8_0 weight rows · an [`OffsetPanel`] of eight tokens (for kernels that offset the
    /// weights to unsigned bytes), `[row 0 x 8, row 1 x 8]`; when present, linear layers pack
    /// their activations so and use it before the other Q8_0 kernels.
    pub dot_q8_0_2x8_offset: Option<PanelProduct<OffsetPanel>>,
    /// `groups` (at most [`AMX_ROW_GROUPS`]) groups of sixteen Q8_0 weight rows (from the
    /// start of `w`, `row_bytes` apart, `nb` blocks of which at most [`qdot::TILE_MAX_BLOCKS`])
    /// · `ntok` tokens in tiles of sixteen (each `nb` [`qdot::TilePanel`]s, one after another)
    /// into `y[token][16 * group + row]`, from the rows' biases (`bias`, empty for none), with
    /// `gelu` GELU of them (AMX); when present, linear layers use it for whole chunks of
    /// sixteen rows: `(w, row_bytes, nb, panels, bias, y, groups, ntok, gelu)`.
    pub dot_q8_0_16x16: Option<TileProduct>,
    /// [`KernelSet::dot_q8_0_16x16`] for Q4_0 weight rows against activations in 16 bits, each
    /// token tile `2 * nb` panels as [`KernelSet::pack_tile16`] packs them (AMX); when present,
    /// Q4_0 layers use it as Q8_0 layers use theirs.
    pub dot_q4_0_16x16: Option<TileProduct>,
    /// Two Q4_0 weight rows · 16-bit panels of eight tokens, `[row 0 x 8, row 1 x 8]`; when
    /// present, Q4_0 layers quantize their activations to 16 bits and use it.
    pub dot_q4_0_2x8: Option<PanelProduct<Panel16>>,
    /// Two Q4_0 weight rows · split 16-bit panels of eight tokens (each block's high and low
    /// bytes as two [`Panel8`]s, see [`qdot::split_panel16`]), `[row 0 x 8, row 1 x 8]`; when
    /// present, Q4_0 layers pack their activations so and use it before `dot_q4_0_2x8`.
    pub dot_q4_0_2x8_split: Option<PanelProduct<Panel8>>,
    /// Q4_0 weight row · activation blocks.
    pub dot_q4_0: fn(&[u8], &[ActBlock]) -> f32,
    /// f32 · f32.
    pub dot_f32: fn(&[f32], &[f32]) -> f32,
    /// Softmax in place.
    pub softmax: fn(&mut [f32]),
    /// Exact GELU in place.
    pub gelu: fn(&mut [f32]),
    /// LayerNorm of each row of `x` (rows of `w.len()`) in place: `(x, w, b, eps)`.
    pub layer_norm: fn(&mut [f32], &[f32], &[f32], f32),
    /// Activations (a multiple of 32) quantized per 32 values, appended.
    pub quantize: fn(&[f32], &mut Vec<ActBlock>),
    /// Up to eight tokens' activations (rows of `cols`) quantized to 16 bits per 32 values and
    /// packed into panels, appended: `(x, cols, out)`.
    pub pack_panel16: fn(&[f32], usize, &mut Vec<Panel16>),
    /// Up to eight tokens' activations quantized per 32 values and packed into
    /// [`OffsetPanel`]s, appended: `(x, cols, out)`.
    pub pack_offset: fn(&[f32], usize, &mut Vec<OffsetPanel>),
    /// Up to sixteen tokens' activations quantized as for `pack_offset` and packed into the
    /// `cols / 32` [`qdot::TilePanel`]s of `out` for `dot_q8_0_16x16`: `(x, cols, out)`.
    pub pack_tile: fn(&[f32], usize, &mut [qdot::TilePanel]),
    /// Up to sixteen tokens' activations quantized to 16 bits per 32 values and packed into the
    /// `2 * cols / 32` [`qdot::TilePanel`]s of `out` for `dot_q4_0_16x16`, as
    /// [`qdot::pack_tile_panel16`]: `(x, cols, out)`.
    pub pack_tile16: fn(&[f32], usize, &mut [qdot::TilePanel]),
    /// Products in bf16 for Q8_0 and Q4_0 weights; when present, linear layers with those
    /// weights and at least [`bf16_min_tokens`] tokens use them instead of the integer kernels
    /// above.
    pub bf16: Option<Bf16Kernels>,
}

/// Linear layers in bf16 (AMX-BF16): weights decoded to bf16 by strips of 32 rows, each strip
/// serving every token; activations rounded to bf16 once per layer input; sums in f32.
#[derive(Clone, Copy, Debug)]
pub struct Bf16Kernels {
    /// Up to 32 Q8_0 or Q4_0 weight rows decoded to a bf16 strip, as
    /// [`qdot::dequantize_strip_bf16`]: `(ty, data, nr, k, out)`.
    pub dequantize: fn(TensorType, &[u8], usize, usize, &mut [u16]),
    /// Up to sixteen tokens packed as one bf16 tile, as [`qdot::pack_bf16_tile`]:
    /// `(x, cols, out)`.
    pub pack: fn(&[f32], usize, &mut [u16]),
    /// Up to 32 f32 rows rounded to a bf16 strip, as [`qdot::pack_bf16_strip`]: `(x, k, out)`.
    pub strip: fn(&[f32], usize, &mut [u16]),
    /// 32 f32 columns as a bf16 strip, as [`qdot::pack_bf16_columns`]: `(x, ld, n, k, out)`.
    pub columns: fn(&[f32], usize, usize, usize, &mut [u16]),
    /// A strip of thirty-two bf16 weight rows against `nt` token tiles, as
    /// [`generic::gemm_bf16_32xn`]: `(a, k, b, nt, bias, out, nr, ntok, gelu, next)`,
    /// `out`'s column `row` of row `token`; `next` (the next strip's weights) is brought into the cache
    /// while the product runs.
    pub gemm: Bf16Gemm,
    /// Softmax's exponentials without the division, as [`generic::exp_sum`]: `x` becomes
    /// `e^(x - max x)` in place, and their sum is returned (the attention divides its
    /// outputs, `dh` a row, instead of the probabilities, a row of tokens).
    pub exp_sum: fn(&mut [f32]) -> f32,
}

/// The scalar references of the bf16 kernels (no CPU has them as its set: for tests).
pub const BF16_REFERENCE: Bf16Kernels = Bf16Kernels {
    dequantize: qdot::dequantize_strip_bf16,
    pack: qdot::pack_bf16_tile,
    strip: qdot::pack_bf16_strip,
    columns: qdot::pack_bf16_columns,
    gemm: generic::gemm_bf16_32xn,
    exp_sum: generic::exp_sum,
};

/// Rows of `ld` f32 values (columns numbered from the first value) of which the holder writes
/// only columns `c0..c1`: a whole buffer ([`RowsMut::new`]), a window of it, or one task's
/// columns of an output that parallel tasks share. Writes go through [`RowsMut::slice_at`]
/// (checked) or, in SIMD code, through [`RowsMut::raw`] within the same bounds.
#[derive(Debug)]
pub struct RowsMut<'a> {
    ptr: *mut f32,
    len: usize,
    ld: usize,
    c0: usize,
    c1: usize,
    _buf: core::marker::PhantomData<&'a mut [f32]>,
}

// SAFETY: a `RowsMut` writes only its own columns of the buffer it was made from, and each
// holder's columns are disjoint from any other's (see `new`, `window`, `SharedRows::rows`).
#[allow(unsafe_code)]
unsafe impl Send for RowsMut<'_> {}

impl<'a> RowsMut<'a> {
    /// All of `y`, as rows of `ld` (the last one may be short).
    pub fn new(y: &'a mut [f32], ld: usize) -> Self {
        RowsMut {
            ptr: y.as_mut_ptr(),
            len: y.len(),
            ld,
            c0: 0,
            c1: ld,
            _buf: core::marker::PhantomData,
        }
    }

    /// The rows from `t0` on, columns `c..c + width`, as columns `0..width` of the window.
    ///
    /// # Panics
    /// If the columns are not within this holder's, or row `t0` starts past the end.
    pub fn window(&mut self, t0: usize, c: usize, width: usize) -> RowsMut<'_> {
        // Checked: a wrapped `at` would pass the bound and point the window anywhere.
        let at = t0.checked_mul(self.ld).and_then(|a| a.checked_add(c));
        let end = c.checked_add(width);
        let at = match (at, end) {
            (Some(at), Some(end)) if self.c0 <= c && end <= self.c1 && at <= self.len => at,
            _ => panic!("window outside the rows' columns"),
        };
        RowsMut {
            ptr: self.ptr.wrapping_add(at),
            len: self.len - at,
            ld: self.ld,
            c0: 0,
            c1: width,
            _buf: core::marker::PhantomData,
        }
    }

    /// The same rows and columns, for a shorter while.
    pub fn reborrow(&mut self) -> RowsMut<'_> {
        RowsMut {
            _buf: core::marker::PhantomData,
            ..*self
        }
    }

    /// Columns this holder writes.
    pub fn width(&self) -> usize {
        self.c1 - self.c0
    }

    /// Row length of the buffer.
    pub fn ld(&self) -> usize {
        self.ld
    }

    /// Values from the start of the first row to the end of the buffer.
    pub fn len(&self) -> usize {
        self.len - self.c0
    }

    /// Whether no value can be written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0 || self.width() == 0
    }

    /// `len` values from value `at` of the buffer, within the holder's columns of one row.
    ///
    /// # Panics
    /// Outside the holder's columns or the buffer (so that no two holders' slices overlap).
    #[allow(unsafe_code)]
    pub fn slice_at(&mut self, at: usize, len: usize) -> &mut [f32] {
        let col = at.checked_rem(self.ld).unwrap_or(0);
        // Checked: `at + len` and `col + len` must not wrap past the bounds.
        let inside = at.checked_add(len).is_some_and(|end| end <= self.len)
            && col >= self.c0
            && col.checked_add(len).is_some_and(|end| end <= self.c1);
        assert!(inside, "values outside the rows' columns");
        // SAFETY: within the buffer and the holder's columns of one row (checked), which no one
        // else writes while it lives.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.add(at), len) }
    }

    /// Sets column `c` of row `t`.
    ///
    /// # Panics
    /// Outside the holder's columns or the buffer.
    pub fn set(&mut self, t: usize, c: usize, v: f32) {
        let at = t
            .checked_mul(self.ld)
            .and_then(|a| a.checked_add(c))
            .expect("value outside the rows");
        self.slice_at(at, 1)[0] = v;
    }

    /// The first row's first column (of this holder's), the row length and the number of
    /// values from there to the end of the buffer, for kernels that write
    /// `ptr[t * ld + c]` for columns `c < width()` and `t * ld + c < len`.
    pub fn raw(&mut self) -> (*mut f32, usize, usize) {
        (self.ptr.wrapping_add(self.c0), self.ld, self.len())
    }
}

/// Groups of sixteen rows one call of a tile product ([`KernelSet::dot_q8_0_16x16`],
/// [`KernelSet::dot_q4_0_16x16`]) takes at most.
pub const AMX_ROW_GROUPS: usize = 8;

/// The 2 x 4 tile products' signature: two weight rows against four tokens' activation blocks,
/// `[row 0 x 4, row 1 x 4]`.
pub type TileProduct2x4 = fn([&[u8]; 2], [&[ActBlock]; 4]) -> [f32; 8];

/// The panel products' signature: two weight rows against panels of eight tokens of type `P`,
/// `[row 0 x 8, row 1 x 8]`.
pub type PanelProduct<P> = fn([&[u8]; 2], &[P]) -> [f32; 16];

/// The sixteen-row tile products' signature: `(w, row_bytes, nb, panels, bias, y, groups, ntok,
/// gelu)`, see [`KernelSet::dot_q8_0_16x16`].
pub type TileProduct =
    fn(&[u8], usize, usize, &[qdot::TilePanel], &[f32], &mut RowsMut<'_>, usize, usize, bool);

/// The bf16 strip product's signature: `(a, k, b, nt, bias, out, nr, ntok, gelu, next)`.
pub type Bf16Gemm =
    fn(&[u16], usize, &[u16], usize, &[f32; 32], &mut RowsMut<'_>, usize, usize, bool, &[u8]);

/// The scalar references.
pub const GENERIC: KernelSet = KernelSet {
    name: "generic",
    dot_q8_0: generic::dot_q8_0,
    dot_q8_0_2x4: generic::dot_q8_0_2x4,
    dot_q8_0_2x8: None,
    dot_q8_0_2x8_offset: None,
    dot_q8_0_16x16: None,
    dot_q4_0_16x16: None,
    dot_q4_0_2x8: None,
    dot_q4_0_2x8_split: None,
    dot_q4_0: generic::dot_q4_0,
    dot_f32: generic::dot,
    softmax: generic::softmax,
    gelu: generic::gelu,
    layer_norm: generic::layer_norm,
    quantize: qdot::quantize_activations,
    pack_panel16: qdot::pack_panel16,
    pack_offset: qdot::pack_offset_panel,
    pack_tile: qdot::pack_tile_panel,
    pack_tile16: qdot::pack_tile_panel16,
    bf16: None,
};

/// The bounds the SIMD 2 x 4 tile kernels rely on: both weight rows hold the four tokens'
/// blocks, and the four tokens have as many blocks.
#[cfg(any(
    all(feature = "std", target_arch = "x86_64"),
    target_arch = "aarch64",
    all(feature = "std", target_arch = "arm")
))]
fn check_tile(w: [&[u8]; 2], x: [&[ActBlock]; 4]) {
    let nb = x[0].len();
    check_panel_rows(w, nb, qdot::Q8_0_BLOCK_BYTES);
    assert!(x.iter().all(|s| s.len() == nb));
}

/// The bounds the SIMD tile and panel kernels rely on: both weight rows hold `blocks` blocks
/// of `block_bytes`.
#[cfg(any(
    all(feature = "std", target_arch = "x86_64"),
    target_arch = "aarch64",
    all(feature = "std", target_arch = "arm")
))]
fn check_panel_rows(w: [&[u8]; 2], blocks: usize, block_bytes: usize) {
    assert!(w.iter().all(|w| w.len() >= blocks * block_bytes));
}

/// The shape a tile-panel packer takes: at most sixteen tokens of `cols` values (a multiple of
/// 32), one panel per block.
#[cfg(all(feature = "std", target_arch = "x86_64"))]
fn check_tile_pack(x: &[f32], cols: usize, out: &[qdot::TilePanel], per: usize) {
    assert!(
        cols.is_multiple_of(QK)
            && x.len().is_multiple_of(cols.max(1))
            && x.len() / cols.max(1) <= qdot::TILE_PANEL_TOKENS
            && out.len() == per * (cols / QK)
    );
}

/// The AVX2 + FMA + F16C set, when this CPU has them.
#[cfg(all(feature = "std", target_arch = "x86_64"))]
pub fn avx2() -> Option<KernelSet> {
    if !(std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c"))
    {
        return None;
    }
    #[allow(unsafe_code)]
    fn q8(w: &[u8], x: &[ActBlock]) -> f32 {
        assert!(w.len() >= x.len() * qdot::Q8_0_BLOCK_BYTES);
        // SAFETY: this set is only handed out after detecting AVX2, FMA and F16C; length asserted.
        unsafe { x86_64::avx2::dot_q8_0(w, x) }
    }
    #[allow(unsafe_code)]
    fn q8_2x4(w: [&[u8]; 2], x: [&[ActBlock]; 4]) -> [f32; 8] {
        check_tile(w, x);
        // SAFETY: this set is only handed out after detecting AVX2, FMA and F16C; lengths
        // asserted.
        unsafe { x86_64::avx2::dot_q8_0_2x4(w, x) }
    }
    #[allow(unsafe_code)]
    fn q8_2x8(w: [&[u8]; 2], p: &[Panel8]) -> [f32; 16] {
        check_panel_rows(w, p.len(), qdot::Q8_0_BLOCK_BYTES);
        // SAFETY: this set is only handed out after detecting AVX2, FMA and F16C; lengths
        // asserted.
        unsafe { x86_64::avx2::dot_q8_0_2x8(w, p) }
    }
    #[allow(unsafe_code)]
    fn q4_2x8(w: [&[u8]; 2], p: &[Panel16]) -> [f32; 16] {
        check_panel_rows(w, p.len(), qdot::Q4_0_BLOCK_BYTES);
        // SAFETY: this set is only handed out after detecting AVX2, FMA and F16C; lengths
        // asserted.
        unsafe { x86_64::avx2::dot_q4_0_2x8(w, p) }
    }
    #[allow(unsafe_code)]
    fn q4(w: &[u8], x: &[ActBlock]) -> f32 {
        assert!(w.len() >= x.len() * qdot::Q4_0_BLOCK_BYTES);
        // SAFETY: this set is only handed out after detecting AVX2, FMA and F16C; length asserted.
        unsafe { x86_64::avx2::dot_q4_0(w, x) }
    }
    #[allow(unsafe_code)]
    fn f(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: this set is only handed out after detecting AVX2, FMA and F16C.
        unsafe { x86_64::avx2::dot_f32(a, b) }
    }
    #[allow(unsafe_code)]
    fn softmax(x: &mut [f32]) {
        // SAFETY: this set is only handed out after detecting AVX2, FMA and F16C.
        unsafe { x86_64::avx2::softmax(x) }
    }
    #[allow(unsafe_code)]
    fn gelu(x: &mut [f32]) {
        // SAFETY: this set is only handed out after detecting AVX2, FMA and F16C.
        unsafe { x86_64::avx2::gelu(x) }
    }
    #[allow(unsafe_code)]
    fn quantize(x: &[f32], out: &mut Vec<ActBlock>) {
        assert!(x.len().is_multiple_of(QK));
        // SAFETY: this set is only handed out after detecting AVX2; length asserted.
        unsafe { x86_64::avx2::quantize_activations(x, out) }
    }
    #[allow(unsafe_code)]
    fn pack_panel16(x: &[f32], cols: usize, out: &mut Vec<Panel16>) {
        qdot::pack_panel16_with(x, cols, out, |chunk| {
            assert_eq!(chunk.len(), QK);
            // SAFETY: this set is only handed out after detecting AVX2; length asserted.
            unsafe { x86_64::avx2::quantize_block16(chunk) }
        })
    }
    #[allow(unsafe_code)]
    fn pack_offset(x: &[f32], cols: usize, out: &mut Vec<OffsetPanel>) {
        assert!(
            cols.is_multiple_of(QK)
                && x.len().is_multiple_of(cols.max(1))
                && x.len() / cols.max(1) <= PANEL_TOKENS
        );
        // SAFETY: this set is only handed out after detecting AVX2; shape asserted.
        unsafe { x86_64::avx2::pack_offset_panel(x, cols, out) }
    }
    #[allow(unsafe_code)]
    fn pack_tile(x: &[f32], cols: usize, out: &mut [qdot::TilePanel]) {
        check_tile_pack(x, cols, out, 1);
        // SAFETY: this set is only handed out after detecting AVX2; shape asserted.
        unsafe { x86_64::avx2::pack_tile_panel(x, cols, out) }
    }
    #[allow(unsafe_code)]
    fn layer_norm(x: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
        assert_eq!(w.len(), b.len());
        // SAFETY: this set is only handed out after detecting AVX2 and FMA; lengths asserted.
        unsafe { x86_64::avx2::layer_norm(x, w, b, eps) }
    }
    Some(KernelSet {
        name: "avx2",
        dot_q8_0: q8,
        dot_q8_0_2x4: q8_2x4,
        dot_q8_0_2x8: Some(q8_2x8),
        dot_q8_0_2x8_offset: None,
        dot_q8_0_16x16: None,
        dot_q4_0_16x16: None,
        dot_q4_0_2x8: Some(q4_2x8),
        dot_q4_0_2x8_split: None,
        dot_q4_0: q4,
        dot_f32: f,
        softmax,
        gelu,
        layer_norm,
        quantize,
        pack_panel16,
        pack_offset,
        pack_tile,
        pack_tile16: qdot::pack_tile_panel16,
        bf16: None,
    })
}

/// Every set with VNNI's products (bytes for Q8_0, 16-bit pairs for Q4_0) this CPU runs
/// (AVX-512 VNNI on 256-bit vectors, AVX-VNNI, and AMX over the preferred of them), the
/// preferred last.
#[cfg(all(feature = "std", target_arch = "x86_64"))]
pub fn avx2_vnni_variants() -> Vec<KernelSet> {
    let Some(base) = avx2() else {
        return Vec::new();
    };
    #[allow(unsafe_code)]
    fn q8_2x8_avxvnni(w: [&[u8]; 2], p: &[OffsetPanel]) -> [f32; 16] {
        check_panel_rows(w, p.len(), qdot::Q8_0_BLOCK_BYTES);
        // SAFETY: only handed out after detecting AVX2, FMA, F16C and AVX-VNNI; lengths
        // asserted.
        unsafe { x86_64::avx2::dot_q8_0_2x8_avxvnni(w, p) }
    }
    #[allow(unsafe_code)]
    fn q8_2x8_avx512vnni(w: [&[u8]; 2], p: &[OffsetPanel]) -> [f32; 16] {
        check_panel_rows(w, p.len(), qdot::Q8_0_BLOCK_BYTES);
        // SAFETY: only handed out after detecting AVX2, FMA, F16C, AVX-512 VNNI and VL;
        // lengths asserted.
        unsafe { x86_64::avx2::dot_q8_0_2x8_avx512vnni(w, p) }
    }
    #[allow(unsafe_code)]
    fn q4_2x8_avxvnni(w: [&[u8]; 2], p: &[Panel16]) -> [f32; 16] {
        check_panel_rows(w, p.len(), qdot::Q4_0_BLOCK_BYTES);
        // SAFETY: only handed out after detecting AVX2, FMA, F16C and AVX-VNNI; lengths
        // asserted.
        unsafe { x86_64::avx2::dot_q4_0_2x8_avxvnni(w, p) }
    }
    #[allow(unsafe_code)]
    fn q4_2x8_avx512vnni(w: [&[u8]; 2], p: &[Panel16]) -> [f32; 16] {
        check_panel_rows(w, p.len(), qdot::Q4_0_BLOCK_BYTES);
        // SAFETY: only handed out after detecting AVX2, FMA, F16C, AVX-512 VNNI and VL;
        // lengths asserted.
        unsafe { x86_64::avx2::dot_q4_0_2x8_avx512vnni(w, p) }
    }
    let set = |name, q8: PanelProduct<OffsetPanel>, q4: PanelProduct<Panel16>| KernelSet {
        name,
        dot_q8_0_2x8_offset: Some(q8),
        dot_q4_0_2x8: Some(q4),
        ..base
    };
    let mut v = Vec::new();
    if std::is_x86_feature_detected!("avx512vnni") && std::is_x86_feature_detected!("avx512vl") {
        v.push(set("avx2+avx512vnni", q8_2x8_avx512vnni, q4_2x8_avx512vnni));
    }
    // The same kernels in VEX encoding (no AVX-512 state to manage), preferred.
    if std::is_x86_feature_detected!("avxvnni") {
        v.push(set("avx2+avxvnni", q8_2x8_avxvnni, q4_2x8_avxvnni));
    }
    /// The AMX tile product for Q8_0 (`Q4` false) or Q4_0 (true) weights, after asserting the
    /// bounds it relies on: the shapes of [`KernelSet::dot_q8_0_16x16`], the rows within `w`
    /// and `y`.
    #[allow(unsafe_code)]
    #[allow(clippy::too_many_arguments)]
    fn amx_16x16<const Q4: bool>(
        w: &[u8],
        row_bytes: usize,
        nb: usize,
        p: &[qdot::TilePanel],
        bias: &[f32],
        y: &mut RowsMut<'_>,
        groups: usize,
        ntok: usize,
        gelu: bool,
    ) {
        use x86_64::amx::AMX_ROWS;
        let ty = if Q4 {
            TensorType::Q4_0
        } else {
            TensorType::Q8_0
        };
        let blocks = nb * ty.block_bytes();
        assert!(groups <= AMX_ROW_GROUPS && nb > 0 && nb <= qdot::TILE_MAX_BLOCKS);
        let tiles = ntok.div_ceil(qdot::TILE_PANEL_TOKENS);
        assert!(p.len() == tile_panels_per_block(ty) * nb * tiles);
        assert!(y.width() >= AMX_ROWS * groups);
        assert!(ntok == 0 || groups == 0 || (ntok - 1) * y.ld() + AMX_ROWS * groups <= y.len());
        assert!(bias.is_empty() || bias.len() >= AMX_ROWS * groups);
        assert!(
            row_bytes >= blocks
                && (groups == 0 || w.len() >= (AMX_ROWS * groups - 1) * row_bytes + blocks)
        );
        let (ptr, ld, _) = y.raw();
        // SAFETY: only handed out after `amx::available()` and detecting AVX2, AVX-512F and
        // F16C; lengths asserted; the kernel writes `ptr[t * ld + c]` for `t < ntok`,
        // `c < 16 * groups`, within the holder's columns and buffer (asserted).
        unsafe {
            x86_64::amx::dot_16x16::<Q4>(w, row_bytes, nb, p, bias, ptr, ld, groups, ntok, gelu)
        }
    }
    #[allow(unsafe_code)]
    fn pack_tile512(x: &[f32], cols: usize, out: &mut [qdot::TilePanel]) {
        check_tile_pack(x, cols, out, 1);
        // SAFETY: only handed out after detecting AVX2 and AVX-512F; shape asserted.
        unsafe { x86_64::avx512::pack_tile_panel(x, cols, out) }
    }
    #[allow(unsafe_code)]
    fn pack_tile16_512(x: &[f32], cols: usize, out: &mut [qdot::TilePanel]) {
        check_tile_pack(x, cols, out, 2);
        // SAFETY: only handed out after detecting AVX2 and AVX-512F; shape asserted.
        unsafe { x86_64::avx512::pack_tile_panel16(x, cols, out) }
    }
    // AMX for chunks of sixteen rows, the best VNNI kernel for the rest.
    if let Some(&best) = v.last() {
        if x86_64::amx::available()
            && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("f16c")
        {
            v.push(KernelSet {
                name: "avx2+amx",
                dot_q8_0_16x16: Some(amx_16x16::<false>),
                dot_q4_0_16x16: Some(amx_16x16::<true>),
                // Its activations packed on 512-bit vectors too.
                pack_tile: pack_tile512,
                pack_tile16: pack_tile16_512,
                ..best
            });
        }
    }
    #[allow(unsafe_code)]
    fn dequantize_bf16(ty: TensorType, data: &[u8], nr: usize, k: usize, out: &mut [u16]) {
        let (q4, bytes) = match ty {
            TensorType::Q8_0 => (false, qdot::Q8_0_BLOCK_BYTES),
            TensorType::Q4_0 => (true, qdot::Q4_0_BLOCK_BYTES),
            _ => return qdot::dequantize_strip_bf16(ty, data, nr, k, out),
        };
        assert!(
            k.is_multiple_of(QK)
                && nr <= qdot::BF16_STRIP_ROWS
                && out.len() >= qdot::BF16_STRIP_ROWS * k
        );
        assert!(data.len() >= nr * (k / QK) * bytes, "short {ty:?} rows");
        // SAFETY: only handed out after `amx::available_bf16()` (AVX-512 BF16, VL and BW) and
        // detecting AVX2, F16C and AVX-512F; lengths asserted.
        unsafe { x86_64::amx::dequantize_strip_bf16(q4, data, nr, k, out) }
    }
    #[allow(unsafe_code)]
    fn strip_bf16(x: &[f32], k: usize, out: &mut [u16]) {
        assert!(k.is_multiple_of(QK) && out.len() >= qdot::BF16_STRIP_ROWS * k);
        // SAFETY: only handed out after `amx::available_bf16()` (AVX-512 BF16, VL and BW) and
        // detecting AVX-512F; lengths asserted.
        unsafe { x86_64::amx::pack_bf16_strip(x, k, out) }
    }
    #[allow(unsafe_code)]
    fn columns_bf16(x: &[f32], ld: usize, n: usize, k: usize, out: &mut [u16]) {
        assert!(k.is_multiple_of(QK) && n <= k && out.len() >= qdot::BF16_STRIP_ROWS * k);
        assert!(
            n == 0 || x.len() >= (n - 1) * ld + qdot::BF16_STRIP_ROWS,
            "short rows"
        );
        // SAFETY: only handed out after `amx::available_bf16()` (AVX-512 BF16, VL and BW) and
        // detecting AVX-512F; lengths asserted.
        unsafe { x86_64::amx::pack_bf16_columns(x, ld, n, k, out) }
    }
    #[allow(unsafe_code)]
    fn pack_bf16(x: &[f32], cols: usize, out: &mut [u16]) {
        assert!(out.len() >= cols * qdot::BF16_TILE_TOKENS);
        // SAFETY: as above; the tile's room asserted.
        unsafe { x86_64::amx::pack_bf16_tile(x, cols, out) }
    }
    #[allow(unsafe_code)]
    #[allow(clippy::too_many_arguments)]
    fn gemm_bf16(
        a: &[u16],
        k: usize,
        b: &[u16],
        nt: usize,
        bias: &[f32; 32],
        out: &mut RowsMut<'_>,
        nr: usize,
        ntok: usize,
        gelu: bool,
        next: &[u8],
    ) {
        let t = qdot::BF16_TILE_TOKENS;
        assert!(k.is_multiple_of(32) && a.len() >= 32 * k && b.len() >= nt * t * k);
        assert!(nr <= 32 && nr <= out.width() && ntok <= nt * t);
        assert!(ntok == 0 || out.len() >= (ntok - 1) * out.ld() + nr);
        let (y, ld, _) = out.raw();
        // SAFETY: only handed out after `amx::available_bf16()` and detecting AVX-512F;
        // lengths asserted; the kernel writes columns below `nr` (within the holder's) of rows
        // below `ntok` (within the buffer).
        unsafe { x86_64::amx::gemm_bf16_32xn(a, k, b, nt, bias, y, ld, nr, ntok, gelu, next) }
    }
    #[allow(unsafe_code)]
    fn softmax512(x: &mut [f32]) {
        // SAFETY: only handed out after `amx::available_bf16()` and detecting AVX-512F.
        unsafe { x86_64::avx512::softmax(x) }
    }
    #[allow(unsafe_code)]
    fn exp_sum512(x: &mut [f32]) -> f32 {
        // SAFETY: only handed out after `amx::available_bf16()` and detecting AVX-512F.
        unsafe { x86_64::avx512::exp_sum(x) }
    }
    #[allow(unsafe_code)]
    fn layer_norm512(x: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
        assert_eq!(w.len(), b.len());
        // SAFETY: only handed out after `amx::available_bf16()` and detecting AVX-512F;
        // lengths asserted.
        unsafe { x86_64::avx512::layer_norm(x, w, b, eps) }
    }
    #[allow(unsafe_code)]
    fn gelu512(x: &mut [f32]) {
        // SAFETY: only handed out after `amx::available_bf16()` and detecting AVX-512F.
        unsafe { x86_64::avx512::gelu(x) }
    }
    if let Some(&best) = v.last() {
        if x86_64::amx::available_bf16() && std::is_x86_feature_detected!("avx512f") {
            // The element-wise kernels on 512-bit vectors too.
            v.push(KernelSet {
                name: "avx2+amx-bf16",
                softmax: softmax512,
                gelu: gelu512,
                layer_norm: layer_norm512,
                bf16: Some(Bf16Kernels {
                    dequantize: dequantize_bf16,
                    pack: pack_bf16,
                    strip: strip_bf16,
                    columns: columns_bf16,
                    gemm: gemm_bf16,
                    exp_sum: exp_sum512,
                }),
                ..best
            });
        }
    }
    v
}

/// The best NEON set this CPU runs (aarch64 always has NEON): SDOT for the Q8_0 products and
/// the Q4_0 row product when the CPU has dotprod, and SMMLA for the Q8_0 panel product when it
/// also has i8mm; Q4_0 layers take their 16-bit activations split into high and low bytes
/// through SDOT, or SMMLA with i8mm, and the 16-bit panel product (`smlal`) without; f32
/// products, softmax, GELU, LayerNorm and the activations' quantization on four lanes; the
/// panel packing uses the references.
#[cfg(target_arch = "aarch64")]
pub fn neon() -> Option<KernelSet> {
    neon_variants().pop()
}

/// Every NEON set this CPU runs, plainest first (for tests that cover each kernel path).
#[cfg(target_arch = "aarch64")]
pub fn neon_variants() -> Vec<KernelSet> {
    #[cfg(feature = "std")]
    let (dotprod, i8mm) = (
        std::arch::is_aarch64_feature_detected!("dotprod"),
        std::arch::is_aarch64_feature_detected!("i8mm"),
    );
    #[cfg(not(feature = "std"))]
    let (dotprod, i8mm) = (false, false);
    let mut v = alloc::vec![neon_set(false, false)];
    if dotprod {
        v.push(neon_set(true, false));
        if i8mm {
            v.push(neon_set(true, true));
        }
    }
    v
}

/// The 32-bit ARM NEON set (Q8_0 row and 2 x 4 tile products, Q4_0 row and 16-bit panel
/// products, f32 products, softmax, GELU and LayerNorm, in `asm!`; quantization and packing
/// are the references), when the CPU has NEON.
#[cfg(all(feature = "std", target_arch = "arm"))]
pub fn arm_neon() -> Option<KernelSet> {
    if !arm::neon::detected() {
        return None;
    }
    #[allow(unsafe_code)]
    fn q8(w: &[u8], x: &[ActBlock]) -> f32 {
        assert!(w.len() >= x.len() * qdot::Q8_0_BLOCK_BYTES);
        // SAFETY: this set is only handed out after detecting NEON; length asserted.
        unsafe { arm::neon::dot_q8_0(w, x) }
    }
    #[allow(unsafe_code)]
    fn q8_2x4(w: [&[u8]; 2], x: [&[ActBlock]; 4]) -> [f32; 8] {
        check_tile(w, x);
        // SAFETY: this set is only handed out after detecting NEON; lengths asserted.
        unsafe { arm::neon::dot_q8_0_2x4(w, x) }
    }
    #[allow(unsafe_code)]
    fn q4(w: &[u8], x: &[ActBlock]) -> f32 {
        assert!(w.len() >= x.len() * qdot::Q4_0_BLOCK_BYTES);
        // SAFETY: this set is only handed out after detecting NEON; length asserted.
        unsafe { arm::neon::dot_q4_0(w, x) }
    }
    #[allow(unsafe_code)]
    fn q4_2x8(w: [&[u8]; 2], p: &[Panel16]) -> [f32; 16] {
        check_panel_rows(w, p.len(), qdot::Q4_0_BLOCK_BYTES);
        // SAFETY: this set is only handed out after detecting NEON; lengths asserted.
        unsafe { arm::neon::dot_q4_0_2x8(w, p) }
    }
    #[allow(unsafe_code)]
    fn softmax(x: &mut [f32]) {
        // SAFETY: this set is only handed out after detecting NEON.
        unsafe { arm::neon::softmax(x) }
    }
    #[allow(unsafe_code)]
    fn gelu(x: &mut [f32]) {
        // SAFETY: this set is only handed out after detecting NEON.
        unsafe { arm::neon::gelu(x) }
    }
    #[allow(unsafe_code)]
    fn f(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: this set is only handed out after detecting NEON.
        unsafe { arm::neon::dot_f32(a, b) }
    }
    #[allow(unsafe_code)]
    fn layer_norm(x: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
        assert_eq!(w.len(), b.len());
        // SAFETY: this set is only handed out after detecting NEON; lengths asserted.
        unsafe { arm::neon::layer_norm(x, w, b, eps) }
    }
    Some(KernelSet {
        name: "armv7-neon",
        dot_q8_0: q8,
        dot_q8_0_2x4: q8_2x4,
        dot_q4_0: q4,
        dot_q4_0_2x8: Some(q4_2x8),
        dot_f32: f,
        softmax,
        gelu,
        layer_norm,
        ..GENERIC
    })
}

/// The NEON set with SDOT kernels (`dotprod`) and the SMMLA panel kernel (`i8mm`); the caller
/// has detected the features it asks for.
#[cfg(target_arch = "aarch64")]
fn neon_set(dotprod: bool, i8mm: bool) -> KernelSet {
    #[allow(unsafe_code)]
    fn q8(w: &[u8], x: &[ActBlock]) -> f32 {
        assert!(w.len() >= x.len() * qdot::Q8_0_BLOCK_BYTES);
        // SAFETY: NEON is part of the aarch64 baseline; length asserted.
        unsafe { aarch64::neon::dot_q8_0(w, x) }
    }
    #[allow(unsafe_code)]
    fn q8_2x4(w: [&[u8]; 2], x: [&[ActBlock]; 4]) -> [f32; 8] {
        check_tile(w, x);
        // SAFETY: NEON is part of the aarch64 baseline; lengths asserted.
        unsafe { aarch64::neon::dot_q8_0_2x4(w, x) }
    }
    #[allow(unsafe_code)]
    fn q8_sdot(w: &[u8], x: &[ActBlock]) -> f32 {
        assert!(w.len() >= x.len() * qdot::Q8_0_BLOCK_BYTES);
        // SAFETY: only handed out after detecting dotprod; length asserted.
        unsafe { aarch64::neon::dot_q8_0_dotprod(w, x) }
    }
    #[allow(unsafe_code)]
    fn q8_2x4_sdot(w: [&[u8]; 2], x: [&[ActBlock]; 4]) -> [f32; 8] {
        check_tile(w, x);
        // SAFETY: only handed out after detecting dotprod; lengths asserted.
        unsafe { aarch64::neon::dot_q8_0_2x4_dotprod(w, x) }
    }
    #[allow(unsafe_code)]
    fn q8_2x8_sdot(w: [&[u8]; 2], p: &[Panel8]) -> [f32; 16] {
        check_panel_rows(w, p.len(), qdot::Q8_0_BLOCK_BYTES);
        // SAFETY: only handed out after detecting dotprod; lengths asserted.
        unsafe { aarch64::neon::dot_q8_0_2x8_dotprod(w, p) }
    }
    #[allow(unsafe_code)]
    fn q8_2x8_smmla(w: [&[u8]; 2], p: &[Panel8]) -> [f32; 16] {
        check_panel_rows(w, p.len(), qdot::Q8_0_BLOCK_BYTES);
        // SAFETY: only handed out after detecting i8mm; lengths asserted.
        unsafe { aarch64::neon::dot_q8_0_2x8_i8mm(w, p) }
    }
    #[allow(unsafe_code)]
    fn q4(w: &[u8], x: &[ActBlock]) -> f32 {
        assert!(w.len() >= x.len() * qdot::Q4_0_BLOCK_BYTES);
        // SAFETY: NEON is part of the aarch64 baseline; length asserted.
        unsafe { aarch64::neon::dot_q4_0(w, x) }
    }
    #[allow(unsafe_code)]
    fn q4_sdot(w: &[u8], x: &[ActBlock]) -> f32 {
        assert!(w.len() >= x.len() * qdot::Q4_0_BLOCK_BYTES);
        // SAFETY: only handed out after detecting dotprod; length asserted.
        unsafe { aarch64::neon::dot_q4_0_dotprod(w, x) }
    }
    #[allow(unsafe_code)]
    fn q4_2x8(w: [&[u8]; 2], p: &[Panel16]) -> [f32; 16] {
        check_panel_rows(w, p.len(), qdot::Q4_0_BLOCK_BYTES);
        // SAFETY: NEON is part of the aarch64 baseline; lengths asserted.
        unsafe { aarch64::neon::dot_q4_0_2x8(w, p) }
    }
    /// The bounds the split panel kernels rely on.
    fn check_split(w: [&[u8]; 2], p: &[Panel8]) {
        assert!(p.len().is_multiple_of(2));
        check_panel_rows(w, p.len() / 2, qdot::Q4_0_BLOCK_BYTES);
    }
    #[allow(unsafe_code)]
    fn q4_split_sdot(w: [&[u8]; 2], p: &[Panel8]) -> [f32; 16] {
        check_split(w, p);
        // SAFETY: only handed out after detecting dotprod; lengths asserted.
        unsafe { aarch64::neon::dot_q4_0_2x8_split_dotprod(w, p) }
    }
    #[allow(unsafe_code)]
    fn q4_split_smmla(w: [&[u8]; 2], p: &[Panel8]) -> [f32; 16] {
        check_split(w, p);
        // SAFETY: only handed out after detecting i8mm; lengths asserted.
        unsafe { aarch64::neon::dot_q4_0_2x8_split_i8mm(w, p) }
    }
    #[allow(unsafe_code)]
    fn f(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: NEON is part of the aarch64 baseline.
        unsafe { aarch64::neon::dot_f32(a, b) }
    }
    #[allow(unsafe_code)]
    fn softmax(x: &mut [f32]) {
        // SAFETY: NEON is part of the aarch64 baseline.
        unsafe { aarch64::neon::softmax(x) }
    }
    #[allow(unsafe_code)]
    fn gelu(x: &mut [f32]) {
        // SAFETY: NEON is part of the aarch64 baseline.
        unsafe { aarch64::neon::gelu(x) }
    }
    #[allow(unsafe_code)]
    fn layer_norm(x: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
        assert_eq!(w.len(), b.len());
        // SAFETY: NEON is part of the aarch64 baseline; lengths asserted.
        unsafe { aarch64::neon::layer_norm(x, w, b, eps) }
    }
    #[allow(unsafe_code)]
    fn quantize(x: &[f32], out: &mut Vec<ActBlock>) {
        assert!(x.len().is_multiple_of(QK));
        // SAFETY: NEON is part of the aarch64 baseline; length asserted.
        unsafe { aarch64::neon::quantize_activations(x, out) }
    }
    #[allow(unsafe_code)]
    fn pack_panel16(x: &[f32], cols: usize, out: &mut Vec<Panel16>) {
        qdot::pack_panel16_with(x, cols, out, |c| {
            assert_eq!(c.len(), QK);
            // SAFETY: NEON is part of the aarch64 baseline; length asserted.
            unsafe { aarch64::neon::quantize_block16(c) }
        })
    }
    KernelSet {
        name: match (dotprod, i8mm) {
            (true, true) => "neon+dotprod+i8mm",
            (true, false) => "neon+dotprod",
            _ => "neon",
        },
        dot_q8_0: if dotprod { q8_sdot } else { q8 },
        dot_q8_0_2x4: if dotprod { q8_2x4_sdot } else { q8_2x4 },
        dot_q8_0_2x8: match (dotprod, i8mm) {
            (_, true) => Some(q8_2x8_smmla),
            (true, false) => Some(q8_2x8_sdot),
            _ => None,
        },
        dot_q4_0: if dotprod { q4_sdot } else { q4 },
        dot_q4_0_2x8: Some(q4_2x8),
        dot_q4_0_2x8_split: match (dotprod, i8mm) {
            (_, true) => Some(q4_split_smmla),
            (true, false) => Some(q4_split_sdot),
            _ => None,
        },
        dot_f32: f,
        softmax,
        gelu,
        layer_norm,
        quantize,
        pack_panel16,
        ..GENERIC
    }
}

/// Every kernel set this CPU runs, plainest (the scalar references) first, best last.
#[cfg(feature = "std")]
pub fn available() -> Vec<KernelSet> {
    #[allow(unused_mut)]
    let mut v = alloc::vec![GENERIC];
    #[cfg(target_arch = "x86_64")]
    {
        v.extend(avx2());
        v.extend(avx2_vnni_variants());
    }
    #[cfg(target_arch = "aarch64")]
    v.extend(neon_variants());
    #[cfg(target_arch = "arm")]
    v.extend(arm_neon());
    v
}

/// The kernel set in use: the best this CPU supports, or the one named by `PETAL_KERNELS`
/// (`generic` for the scalar references, or another name of [`available`], such as `avx2` for
/// AVX2 without VNNI); a name this CPU cannot run is ignored with a warning.
pub fn active() -> KernelSet {
    #[cfg(feature = "std")]
    {
        static ACTIVE: std::sync::OnceLock<KernelSet> = std::sync::OnceLock::new();
        *ACTIVE.get_or_init(|| {
            let mut sets = available();
            let best = sets.pop().unwrap_or(GENERIC);
            match std::env::var("PETAL_KERNELS") {
                Ok(name) if name != best.name => sets
                    .into_iter()
                    .find(|k| k.name == name)
                    .unwrap_or_else(|| {
                        log::warn!(
                            "PETAL_KERNELS={name}: no such kernel set on this CPU; using {}",
                            best.name
                        );
                        best
                    }),
                _ => best,
            }
        })
    }
    #[cfg(not(feature = "std"))]
    GENERIC
}

/// Tokens whose activations stay in L1 while a chunk of weight rows passes over them.
const TOKEN_TILE: usize = 16;

// The sixteen-row tile kernel takes a whole token tile per call.
const _: () = assert!(TOKEN_TILE == qdot::TILE_PANEL_TOKENS);

/// Below this many multiply-adds a linear layer runs on one thread.
#[cfg(feature = "std")]
const PARALLEL_MIN_MACS: usize = 1 << 16;

/// A linear layer's input, quantized (and packed into panels) for a weight type on first use,
/// so that layers reading the same input (Q, K and V) quantize it once.
#[derive(Debug)]
pub struct Activations<'a> {
    x: &'a [f32],
    n: usize,
    /// The weight type the quantized forms below were made for.
    ty: Option<TensorType>,
    xq: Vec<ActBlock>,
    xr: Vec<ActBlock>,
    /// Activations packed by eight tokens for Q8_0, when the kernel set multiplies panels.
    panels: Vec<Panel8>,
    /// Activations in 16 bits packed by eight tokens for Q4_0, likewise.
    panels16: Vec<Panel16>,
    /// Activations packed by eight tokens for Q8_0's offset kernels, likewise.
    offset_panels: Vec<OffsetPanel>,
    /// Activations packed by sixteen tokens for Q8_0's tile kernel, when the kernel set has
    /// one.
    tile_panels: Vec<qdot::TilePanel>,
    /// How many of `tile_panels` hold this input's (the rest is storage kept for reuse).
    tile_count: usize,
    /// Activations in bf16 packed by sixteen tokens, for the bf16 kernels.
    bf16: qdot::Bf16Buf,
}

/// Storage an input's [`Activations`] hand on to the next one's ([`Activations::reusing`]):
/// the bf16 tiles and the tile panels, written in full by their packers, so that each input
/// neither allocates nor zeroes them again (the tile panels' zeroing and first-touch page
/// faults were 2-3 % of a 128-token pass, on one thread while the other waited).
#[derive(Debug, Default)]
pub struct ActStorage {
    bf16: qdot::Bf16Buf,
    tiles: Vec<qdot::TilePanel>,
}

impl ActStorage {
    /// Bytes of storage held.
    pub fn bytes(&self) -> usize {
        self.bf16.capacity() * 2 + self.tiles.capacity() * core::mem::size_of::<qdot::TilePanel>()
    }
}

impl<'a> Activations<'a> {
    /// The input of `n` tokens; `x` is `[n, cols]` for the layers' `cols`.
    pub fn new(x: &'a [f32], n: usize) -> Self {
        Activations {
            x,
            n,
            ty: None,
            xq: Vec::new(),
            xr: Vec::new(),
            panels: Vec::new(),
            panels16: Vec::new(),
            offset_panels: Vec::new(),
            tile_panels: Vec::new(),
            tile_count: 0,
            bf16: qdot::Bf16Buf::new(),
        }
    }

    /// The input of `n` tokens, packing into `storage` (from an earlier input's
    /// [`Activations::into_storage`]) instead of new buffers.
    pub fn reusing(x: &'a [f32], n: usize, storage: ActStorage) -> Self {
        Activations {
            bf16: storage.bf16,
            tile_panels: storage.tiles,
            ..Activations::new(x, n)
        }
    }

    /// The packed forms' storage, for the next input ([`Activations::reusing`]).
    pub fn into_storage(mut self) -> ActStorage {
        self.bf16.clear();
        ActStorage {
            bf16: self.bf16,
            tiles: self.tile_panels,
        }
    }

    /// This input's tile panels (empty unless prepared for the tile kernel).
    fn tiles(&self) -> &[qdot::TilePanel] {
        &self.tile_panels[..self.tile_count]
    }

    /// Tokens.
    pub fn tokens(&self) -> usize {
        self.n
    }

    /// The f32 input, `[tokens, cols]`.
    pub fn input(&self) -> &'a [f32] {
        self.x
    }

    /// Quantizes for weights of type `ty` with `k`'s kernels, unless already done for that
    /// type (float weights need nothing). Q8_0 weights on the tile kernel take the activations
    /// in [`qdot::TilePanel`]s, and also in offset panels when `rows` is not a whole number of
    /// tiles (the rest rows' kernel takes those).
    fn prepare(&mut self, k: KernelSet, ty: TensorType, cols: usize, rows: usize) {
        let (x, bpr) = (self.x, cols / QK);
        // Chunk `g` of `tokens` tokens (the last one short).
        let chunk =
            |g: usize, tokens: usize| &x[g * tokens * cols..((g + 1) * tokens * cols).min(x.len())];
        // The tokens of panel `g`.
        let group = |g: usize| chunk(g, PANEL_TOKENS);
        let groups = self.n.div_ceil(PANEL_TOKENS);
        // Offset panels of eight tokens, on the pool.
        let offset_panels = || {
            let panels = par_map(groups, |g| {
                let mut out = Vec::with_capacity(bpr);
                (k.pack_offset)(group(g), cols, &mut out);
                out
            });
            panels.concat()
        };
        // 16-bit panels of eight tokens, on the pool.
        let panels16 = || {
            let panels = par_map(groups, |g| {
                let mut out = Vec::with_capacity(bpr);
                (k.pack_panel16)(group(g), cols, &mut out);
                out
            });
            panels.concat()
        };
        // Tile panels serve whole tiles of rows; the rest rows' kernel takes offset panels
        // (Q8_0) or 16-bit ones (Q4_0).
        let rest_panels = |this: &mut Self| {
            if this.tile_count > 0
                && !rows.is_multiple_of(OUT_TILE)
                && this.offset_panels.is_empty()
                && this.panels16.is_empty()
            {
                match ty {
                    TensorType::Q4_0 => this.panels16 = panels16(),
                    _ => this.offset_panels = offset_panels(),
                }
            }
        };
        if self.ty == Some(ty) {
            return rest_panels(self);
        }
        self.ty = Some(ty);
        self.xq.clear();
        self.xr.clear();
        self.panels.clear();
        self.panels16.clear();
        self.offset_panels.clear();
        self.tile_count = 0;
        self.bf16.clear();
        let quantized = matches!(ty, TensorType::Q8_0 | TensorType::Q4_0);
        if let Some(bk) = k
            .bf16
            .filter(|_| quantized && self.n >= bf16_min_tokens(&k, ty))
        {
            // Tiles packed in place, on the pool.
            let tile = BF16_TILE_TOKENS * cols;
            // Every value is written by `pack`.
            self.bf16
                .resize_any(self.n.div_ceil(BF16_TILE_TOKENS) * tile);
            par_chunks_mut(self.bf16.as_mut_slice(), tile, |g, out| {
                (bk.pack)(chunk(g, BF16_TILE_TOKENS), cols, out)
            });
            return;
        }
        if let Some(pack) = tile_packer(&k, ty).filter(|_| bpr <= qdot::TILE_MAX_BLOCKS) {
            // Tile panels of sixteen tokens, packed in place on the pool.
            let n = self.n.div_ceil(qdot::TILE_PANEL_TOKENS);
            let len = tile_panels_per_block(ty) * bpr;
            // On earlier inputs' storage (grown, never shrunk), each panel rewritten in full
            // below.
            self.tile_count = n * len;
            if self.tile_panels.len() < n * len {
                self.tile_panels.resize(n * len, qdot::ZERO_TILE_PANEL);
            }
            par_chunks_mut(&mut self.tile_panels[..n * len], len.max(1), |g, out| {
                pack(chunk(g, qdot::TILE_PANEL_TOKENS), cols, out)
            });
            return rest_panels(self);
        }
        match ty {
            TensorType::Q8_0 if k.dot_q8_0_2x8_offset.is_some() => {
                self.offset_panels = offset_panels();
            }
            TensorType::Q8_0 if k.dot_q8_0_2x8.is_some() => {
                // Quantized and packed by panels, on the pool.
                let panels = par_map(groups, |g| {
                    let mut xq = Vec::with_capacity(PANEL_TOKENS * bpr);
                    (k.quantize)(group(g), &mut xq);
                    let toks: Vec<&[ActBlock]> = xq.chunks_exact(bpr).collect();
                    let mut out = Vec::with_capacity(bpr);
                    qdot::pack_panel(&toks, bpr, &mut out);
                    out
                });
                self.panels = panels.concat();
            }
            TensorType::Q8_0 => (k.quantize)(x, &mut self.xq),
            TensorType::Q4_0 if k.dot_q4_0_2x8_split.is_some() => {
                // 16-bit panels split into byte panels, on the pool.
                let panels = par_map(groups, |g| {
                    let mut p16 = Vec::with_capacity(bpr);
                    (k.pack_panel16)(group(g), cols, &mut p16);
                    p16.iter().flat_map(qdot::split_panel16).collect::<Vec<_>>()
                });
                self.panels = panels.concat();
            }
            TensorType::Q4_0 if k.dot_q4_0_2x8.is_some() => self.panels16 = panels16(),
            TensorType::Q4_0 => {
                qdot::quantize_two_level_with(self.x, &mut self.xq, &mut self.xr, k.quantize);
            }
            _ => {}
        }
    }
}

/// One linear layer's operands.
struct LinearJob<'a> {
    k: KernelSet,
    w: &'a Matrix<'a>,
    bias: &'a [f32],
    act: &'a Activations<'a>,
    /// GELU applied by the kernels as they store (bf16 strips only).
    gelu: bool,
}

/// Where a linear layer's outputs go: `y[(t - t0) * ts + (o - r0) * os]` for token `t` and
/// output row `o`.
struct Out<'a> {
    y: Dest<'a>,
    t0: usize,
    r0: usize,
    ts: usize,
    os: usize,
}

/// Where a task's outputs go.
enum Dest<'a> {
    /// Its own slice.
    Own(&'a mut [f32]),
    /// Its own columns of rows that other tasks fill in other columns.
    #[cfg_attr(not(feature = "std"), allow(dead_code))]
    Shared(RowsMut<'a>),
}

/// A `[tokens, ld]` buffer whose columns are split among parallel tasks: each task writes
/// only within its own columns, through its [`SharedRows::rows`].
#[cfg(feature = "std")]
#[derive(Clone, Copy)]
struct SharedRows {
    ptr: *mut f32,
    len: usize,
    ld: usize,
    /// The columns this task owns, `c0..c1`.
    c0: usize,
    c1: usize,
}

// SAFETY: the tasks holding copies write disjoint columns (each task's `rows` stay within its
// columns, checked by `RowsMut::slice_at` and `window`), and the buffer outlives them (the
// owner waits for the tasks).
#[cfg(feature = "std")]
#[allow(unsafe_code)]
unsafe impl Send for SharedRows {}
// SAFETY: as for `Send`: shared references only copy the handle ([`SharedRows::columns`]); the
// writes go through each task's own copy, within its own columns.
#[cfg(feature = "std")]
#[allow(unsafe_code)]
unsafe impl Sync for SharedRows {}

#[cfg(feature = "std")]
impl SharedRows {
    /// The same buffer, for the task owning columns `c0..c1`.
    fn columns(&self, c0: usize, c1: usize) -> Self {
        SharedRows { c0, c1, ..*self }
    }

    /// This task's columns as rows to write.
    fn rows(&self) -> RowsMut<'_> {
        RowsMut {
            ptr: self.ptr,
            len: self.len,
            ld: self.ld,
            c0: self.c0,
            c1: self.c1,
            _buf: core::marker::PhantomData,
        }
    }
}

impl Out<'_> {
    /// The output as rows of `ts` (for outputs by token, `os == 1`), to window for a kernel
    /// that stores whole tiles.
    fn rows(&mut self) -> RowsMut<'_> {
        debug_assert_eq!(self.os, 1);
        match &mut self.y {
            Dest::Own(y) => RowsMut::new(y, self.ts),
            Dest::Shared(y) => y.reborrow(),
        }
    }

    #[inline]
    fn put(&mut self, t: usize, o: usize, v: f32) {
        let at = (t - self.t0) * self.ts + (o - self.r0) * self.os;
        match &mut self.y {
            Dest::Own(y) => y[at] = v,
            Dest::Shared(y) => y.slice_at(at, 1)[0] = v,
        }
    }

    /// Outputs of rows `o0..o0 + v.len()` for token `t`.
    #[inline]
    fn put_rows(&mut self, t: usize, o0: usize, v: &[f32]) {
        if self.os == 1 {
            let at = (t - self.t0) * self.ts + o0 - self.r0;
            let y = match &mut self.y {
                Dest::Own(y) => &mut y[at..at + v.len()],
                Dest::Shared(y) => y.slice_at(at, v.len()),
            };
            // Whole tiles as fixed-size copies (vector moves): a call to memcpy per tile was
            // 8 % of a 128-token pass.
            for (y, v) in y.chunks_mut(OUT_TILE).zip(v.chunks(OUT_TILE)) {
                match (
                    <&mut [f32; OUT_TILE]>::try_from(&mut *y),
                    <&[f32; OUT_TILE]>::try_from(v),
                ) {
                    (Ok(y), Ok(v)) => *y = *v,
                    _ => y.copy_from_slice(v),
                }
            }
        } else {
            v.iter()
                .enumerate()
                .for_each(|(i, &v)| self.put(t, o0 + i, v));
        }
    }
}

/// Output rows a panel kernel fills in a local tile before they are stored.
const OUT_TILE: usize = 16;

/// Fewest tokens for which Q8_0 linear layers take the bf16 kernels: each layer decodes all
/// its weights to bf16, which fewer tokens do not pay back (the integer kernels take them).
/// Alternating MiniLM passes on Sapphire Rapids (AMX-INT8 tile kernel against bf16): 128
/// tokens 15.6 ms against 16.9 on one thread, 10.1 against 12.6 on two; 64 tokens 9.2 against
/// 11.8; 2 x 128 even; 8 x 128 on two threads 121 against 95.
pub const BF16_MIN_TOKENS: usize = 256;

/// Fewest tokens for which Q4_0 linear layers take the bf16 kernels when the set also has
/// Q4_0's tile product. Its two tile products a block (16-bit activations) and their joined
/// sums cost more than Q8_0's one, and Q4_0's weights are half the bytes to decode, so the
/// crossing comes earlier: alternating MiniLM passes on Sapphire Rapids (tiles against bf16),
/// one thread: 16 tokens 2.3 against 5.0 ms, 48 5.4 against 7.0, 64 7.7 against 7.6, 96 11.7
/// against 9.6; two threads: 48 4.1 against 4.4, 64 5.2 against 5.2, 96 7.8 against 6.7.
pub const Q4_0_BF16_MIN_TOKENS: usize = 64;

/// Fewest tokens for which linear layers with weights of type `ty` take `k`'s bf16 kernels:
/// [`BF16_MIN_TOKENS`] for Q8_0, [`Q4_0_BF16_MIN_TOKENS`] for Q4_0 when `k` has its tile
/// product; else any number for Q4_0, whose other integer kernels (16-bit activations) are
/// slower and whose weights are half the bytes to decode.
pub fn bf16_min_tokens(k: &KernelSet, ty: TensorType) -> usize {
    match ty {
        TensorType::Q4_0 if k.dot_q4_0_16x16.is_none() => 1,
        TensorType::Q4_0 => Q4_0_BF16_MIN_TOKENS,
        _ => BF16_MIN_TOKENS,
    }
}

/// The tile product `k` has for weights of type `ty`, with the rest rows' panel kernel it
/// needs beside it.
fn tile_product(k: &KernelSet, ty: TensorType) -> Option<TileProduct> {
    match ty {
        TensorType::Q8_0 => k.dot_q8_0_16x16.filter(|_| k.dot_q8_0_2x8_offset.is_some()),
        TensorType::Q4_0 => k.dot_q4_0_16x16.filter(|_| k.dot_q4_0_2x8.is_some()),
        _ => None,
    }
}

/// For weights of type `ty` on `k`'s tile product: the packer of its tile panels.
fn tile_packer(k: &KernelSet, ty: TensorType) -> Option<TilePack> {
    tile_product(k, ty)?;
    Some(match ty {
        TensorType::Q4_0 => k.pack_tile16,
        _ => k.pack_tile,
    })
}

/// Tile panels a block of 32 values of each token tile takes on the tile product for weights
/// of type `ty`: one for Q8_0, two for Q4_0 (the 16-bit values' high and low bytes).
fn tile_panels_per_block(ty: TensorType) -> usize {
    if ty == TensorType::Q4_0 {
        2
    } else {
        1
    }
}

/// A tile panel packer's signature: `(x, cols, out)`.
type TilePack = fn(&[f32], usize, &mut [qdot::TilePanel]);

/// Below this many tokens, linear layers on the bf16 kernels split their rows across threads
/// (each weight decoded once) rather than their tokens (each thread decoding every weight).
#[cfg(feature = "std")]
const BF16_ROW_SPLIT_MAX_TOKENS: usize = 512;

/// Below this many tokens, linear layers on the tile kernel split their rows across threads;
/// from here, their tokens (each task reads every weight, for its own token tiles). Since the
/// kernel takes every token tile in one call, the split by rows is as fast at 128 tokens on two
/// threads (alternating, minima 10.0-11.3 ms a pass either way) and faster at 64 (medians of
/// two alternating runs 5.7 and 5.1 against 6.4 and 5.6 ms), where it was slower when each call
/// took one tile.
#[cfg(feature = "std")]
const TILE_ROW_SPLIT_MAX_TOKENS: usize = 256;

/// Weight rows per bf16 strip.
const BF16_ROWS: usize = qdot::BF16_STRIP_ROWS;

impl LinearJob<'_> {
    /// Computes outputs of rows `rows` for tokens `tokens` into `out`.
    /// Tokens go in tiles of TOKEN_TILE whose activations stay in L1 while the rows pass over
    /// them; Q8_0 rows go in pairs against eight (panels) or four tokens at a time.
    fn run(
        &self,
        rows: core::ops::Range<usize>,
        tokens: core::ops::Range<usize>,
        out: &mut Out<'_>,
    ) {
        let (k, w) = (self.k, self.w);
        if let (Some(bk), false) = (k.bf16, self.act.bf16.as_slice().is_empty()) {
            return self.run_bf16(bk, rows, tokens, out);
        }
        let mut rows = rows;
        if let (Some(f), false) = (tile_product(&k, w.ty), self.act.tiles().is_empty()) {
            // Whole groups of sixteen rows on the tile kernel, the rest (only in layers whose
            // rows are not a whole number of tiles, which have offset or 16-bit panels) below.
            debug_assert!(tokens.start.is_multiple_of(TOKEN_TILE));
            let whole = rows.start + rows.len() / OUT_TILE * OUT_TILE;
            self.run_tiles(f, rows.start..whole, tokens.clone(), out);
            rows = whole..rows.end;
            debug_assert!(
                rows.is_empty()
                    || !(self.act.offset_panels.is_empty() && self.act.panels16.is_empty())
            );
        }
        let cols = w.cols;
        let bpr = cols / QK;
        let bias = |o: usize| self.bias_of(o);
        let a = self.act;
        let tok = |t: usize| &a.xq[t * bpr..(t + 1) * bpr];
        let mut buf = Vec::new();
        for t0 in tokens.clone().step_by(TOKEN_TILE) {
            let t1 = (t0 + TOKEN_TILE).min(tokens.end);
            match w.ty {
                TensorType::Q8_0 | TensorType::Q4_0
                    if !(a.panels.is_empty()
                        && a.panels16.is_empty()
                        && a.offset_panels.is_empty()) =>
                {
                    debug_assert!(t0 % PANEL_TOKENS == 0);
                    // Results gather in `tile[token][row]` and leave as contiguous rows.
                    let mut tile = [[0f32; OUT_TILE]; TOKEN_TILE];
                    for c0 in rows.clone().step_by(OUT_TILE) {
                        let c1 = (c0 + OUT_TILE).min(rows.end);
                        for o in (c0..c1).step_by(2) {
                            let pair = o + 1 < c1;
                            let o2 = if pair { o + 1 } else { o };
                            let (ba, bb) = (bias(o), bias(o2));
                            let wr = [w.row(o), w.row(o2)];
                            for g0 in (t0..t1).step_by(PANEL_TOKENS) {
                                let at = g0 / PANEL_TOKENS * bpr..(g0 / PANEL_TOKENS + 1) * bpr;
                                let r = match (w.ty, k.dot_q8_0_2x8_offset, k.dot_q8_0_2x8) {
                                    (TensorType::Q8_0, Some(f), _) => f(wr, &a.offset_panels[at]),
                                    (TensorType::Q8_0, None, Some(f)) => f(wr, &a.panels[at]),
                                    _ => match (k.dot_q4_0_2x8_split, k.dot_q4_0_2x8) {
                                        (Some(f), _) if !a.panels.is_empty() => {
                                            f(wr, &a.panels[2 * at.start..2 * at.end])
                                        }
                                        (_, Some(f)) => f(wr, &a.panels16[at]),
                                        _ => unreachable!("panels are packed for panel kernels"),
                                    },
                                };
                                let (ra, rb) = r.split_at(PANEL_TOKENS);
                                let tokens = tile[g0 - t0..].iter_mut().zip(ra).zip(rb);
                                for ((row, &va), &vb) in tokens {
                                    row[o - c0] = va + ba;
                                    // An odd last row is paired with itself and stored once.
                                    if pair {
                                        row[o2 - c0] = vb + bb;
                                    }
                                }
                            }
                        }
                        for t in t0..t1 {
                            out.put_rows(t, c0, &tile[t - t0][..c1 - c0]);
                        }
                    }
                }
                TensorType::Q8_0 => {
                    for o in rows.clone().step_by(2) {
                        // An odd last row is paired with itself and stored once.
                        let pair = o + 1 < rows.end;
                        let o2 = if pair { o + 1 } else { o };
                        let (wa, wb) = (w.row(o), w.row(o2));
                        let (ba, bb) = (bias(o), bias(o2));
                        let mut t = t0;
                        while t + 4 <= t1 {
                            let r = (k.dot_q8_0_2x4)(
                                [wa, wb],
                                [tok(t), tok(t + 1), tok(t + 2), tok(t + 3)],
                            );
                            for j in 0..4 {
                                out.put(t + j, o, r[j] + ba);
                                if pair {
                                    out.put(t + j, o2, r[4 + j] + bb);
                                }
                            }
                            t += 4;
                        }
                        for t in t..t1 {
                            out.put(t, o, (k.dot_q8_0)(wa, tok(t)) + ba);
                            if pair {
                                out.put(t, o2, (k.dot_q8_0)(wb, tok(t)) + bb);
                            }
                        }
                    }
                }
                TensorType::Q4_0 => {
                    for o in rows.clone() {
                        let wr = w.row(o);
                        for t in t0..t1 {
                            let blocks = t * bpr..(t + 1) * bpr;
                            let v = (k.dot_q4_0)(wr, &a.xq[blocks.clone()])
                                + (k.dot_q4_0)(wr, &a.xr[blocks]);
                            out.put(t, o, v + bias(o));
                        }
                    }
                }
                _ => {
                    buf.resize(cols, 0.0);
                    for o in rows.clone() {
                        w.dequantize_row(o, &mut buf);
                        for t in t0..t1 {
                            let v = (k.dot_f32)(&a.x[t * cols..(t + 1) * cols], &buf);
                            out.put(t, o, v + bias(o));
                        }
                    }
                }
            }
        }
    }
}

impl LinearJob<'_> {
    /// Output row `o`'s bias (zero without biases).
    fn bias_of(&self, o: usize) -> f32 {
        self.bias.get(o).copied().unwrap_or(0.0)
    }

    /// [`LinearJob::run`] for whole groups of sixteen Q8_0 or Q4_0 rows (`rows`) on the tile
    /// kernel `f`, tokens from a multiple of sixteen: the rows go in chunks of
    /// [`AMX_ROW_GROUPS`] groups, each meeting every token tile while its weights are in cache.
    fn run_tiles(
        &self,
        f: TileProduct,
        rows: core::ops::Range<usize>,
        tokens: core::ops::Range<usize>,
        out: &mut Out<'_>,
    ) {
        let w = self.w;
        let (rb, bpr) = (w.row_bytes(), w.cols / QK);
        // Results go straight into the task's rows or columns of `y`, else (outputs by row)
        // through `[token][row]` here.
        let direct = out.os == 1;
        let width = OUT_TILE * AMX_ROW_GROUPS;
        let mut r = alloc::vec![0f32; if direct { 0 } else { tokens.len() * width }];
        // Every token tile in one call per chunk of rows: each row group meets them all in
        // turn while its bytes stay in L1.
        let (j0, j1) = (tokens.start / TOKEN_TILE, tokens.end.div_ceil(TOKEN_TILE));
        // Panels per token tile.
        let len = tile_panels_per_block(w.ty) * bpr;
        let p = &self.act.tiles()[j0 * len..j1 * len];
        let ntok = tokens.len();
        for c0 in rows.clone().step_by(width) {
            let n = ((rows.end - c0) / OUT_TILE).min(AMX_ROW_GROUPS);
            let bias = self.bias.get(c0..c0 + n * OUT_TILE).unwrap_or(&[]);
            let w = &w.data[c0 * rb..];
            if direct {
                let (t, r) = (tokens.start - out.t0, c0 - out.r0);
                let mut y = out.rows();
                let mut y = y.window(t, r, n * OUT_TILE);
                f(w, rb, bpr, p, bias, &mut y, n, ntok, self.gelu);
            } else {
                let mut y = RowsMut::new(&mut r, width);
                f(w, rb, bpr, p, bias, &mut y, n, ntok, self.gelu);
                for (t, r) in tokens.clone().zip(r.chunks_exact(width)) {
                    out.put_rows(t, c0, &r[..n * OUT_TILE]);
                }
            }
        }
    }

    /// [`LinearJob::run`] with the bf16 kernels: strips of [`BF16_ROWS`] weight rows are
    /// decoded once and meet the tokens (from a multiple of sixteen) two tiles at a time.
    fn run_bf16(
        &self,
        bk: Bf16Kernels,
        rows: core::ops::Range<usize>,
        tokens: core::ops::Range<usize>,
        out: &mut Out<'_>,
    ) {
        let (w, cols) = (self.w, self.w.cols);
        let tile = BF16_TILE_TOKENS * cols;
        debug_assert!(tokens.start.is_multiple_of(BF16_TILE_TOKENS));
        let (j0, nt) = (
            tokens.start / BF16_TILE_TOKENS,
            tokens.len().div_ceil(BF16_TILE_TOKENS),
        );
        let b = &self.act.bf16.as_slice()[j0 * tile..(j0 + nt) * tile];
        let mut strip = qdot::Bf16Buf::zeros(BF16_ROWS * cols);
        let strip = strip.as_mut_slice();
        // Results go straight into the task's rows or columns of `y`, else (outputs by row)
        // through `[token][row]` here.
        let direct = out.os == 1;
        let mut r = alloc::vec![0f32; if direct { 0 } else { tokens.len() * BF16_ROWS }];
        for c0 in rows.clone().step_by(BF16_ROWS) {
            let c1 = (c0 + BF16_ROWS).min(rows.end);
            // Rows past the end are zeros (their outputs are dropped).
            let rb = w.row_bytes();
            (bk.dequantize)(w.ty, &w.data[c0 * rb..c1 * rb], c1 - c0, cols, strip);
            // The next strip's weights, fetched while this one's product runs.
            let next = &w.data[c1 * rb..((c1 + BF16_ROWS).min(rows.end) * rb).max(c1 * rb)];
            let bias: [f32; BF16_ROWS] = core::array::from_fn(|i| self.bias_of(c0 + i));
            let (t0, r0, nr, n) = (tokens.start - out.t0, c0 - out.r0, c1 - c0, tokens.len());
            if direct {
                let mut y = out.rows();
                (bk.gemm)(
                    strip,
                    cols,
                    b,
                    nt,
                    &bias,
                    &mut y.window(t0, r0, nr),
                    nr,
                    n,
                    self.gelu,
                    next,
                );
            } else {
                let mut y = RowsMut::new(&mut r, BF16_ROWS);
                (bk.gemm)(strip, cols, b, nt, &bias, &mut y, nr, n, self.gelu, next);
                for (t, r) in tokens.clone().zip(r.chunks_exact(BF16_ROWS)) {
                    out.put_rows(t, c0, &r[..c1 - c0]);
                }
            }
        }
    }
}

/// `y[t, o] = sum_i x[t, i] * W[o, i] + bias[o]` for `n` tokens; `x` is `[n, W.cols]`, `y` is
/// `[n, W.rows]`, row-major. Q8_0 and Q4_0 weights are multiplied in integers against
/// activations quantized per 32 values (Q4_0 against activations in 16 bits where the kernel
/// set has a panel kernel for them, else against two 8-bit levels, the quantized activations
/// and their quantized residual, so its result stays within cosine 0.9999 of f32 arithmetic
/// over the same weights); F32 and F16 in f32. Large products run on the thread pool: split by
/// tokens when there are enough of them, else by output rows.
pub fn linear(x: &[f32], n: usize, w: &Matrix<'_>, bias: &[f32], y: &mut [f32]) {
    linear_with(&mut Activations::new(x, n), w, bias, y)
}

/// [`linear`] over prepared activations: layers that read the same input share `act`, and
/// with it the input's quantized and packed forms.
pub fn linear_with(act: &mut Activations<'_>, w: &Matrix<'_>, bias: &[f32], y: &mut [f32]) {
    linear_job(act, w, bias, y, false);
}

/// [`linear_with`] followed by the exact GELU ([`gelu`]): the bf16 kernels and the tile kernel
/// apply it as they store each output (no second pass over `y`), the others after the product.
pub fn linear_gelu_with(act: &mut Activations<'_>, w: &Matrix<'_>, bias: &[f32], y: &mut [f32]) {
    if !linear_job(act, w, bias, y, true) {
        gelu(y);
    }
}

/// The linear layer's frame; with `gelu`, the bf16 kernels or the tile kernel apply GELU to
/// the outputs. Returns whether they did.
fn linear_job(
    act: &mut Activations<'_>,
    w: &Matrix<'_>,
    bias: &[f32],
    y: &mut [f32],
    gelu: bool,
) -> bool {
    let k = active();
    let (n, rows, cols) = (act.n, w.rows, w.cols);
    debug_assert_eq!(act.x.len(), n * cols);
    debug_assert_eq!(y.len(), n * rows);
    act.prepare(k, w.ty, cols, rows);
    // The bf16 kernels, and the tile kernel when it takes every row, apply GELU as they store.
    let tiles = !act.tiles().is_empty() && rows % OUT_TILE == 0;
    let gelu = gelu && (tiles || k.bf16.is_some() && !act.bf16.as_slice().is_empty());
    let job = LinearJob {
        k,
        w,
        bias,
        act,
        gelu,
    };
    #[cfg(feature = "std")]
    {
        use rayon::prelude::*;
        let threads = rayon::current_num_threads();
        if threads > 1 && rows * n * cols >= PARALLEL_MIN_MACS {
            let row_split = if !act.bf16.as_slice().is_empty() {
                n < BF16_ROW_SPLIT_MAX_TOKENS
            } else {
                !act.tiles().is_empty() && n < TILE_ROW_SPLIT_MAX_TOKENS
            };
            if row_split && rows >= 2 * BF16_ROWS {
                // Chunks of rows per thread, so that each weight is decoded (or read) once:
                // each task writes its own columns of `y` (a copy of each task's block into
                // `y` was a tenth of a 128-token pass at two threads).
                let chunk_rows = rows.div_ceil(threads).next_multiple_of(BF16_ROWS);
                let shared = SharedRows {
                    ptr: y.as_mut_ptr(),
                    len: y.len(),
                    ld: rows,
                    c0: 0,
                    c1: 0,
                };
                par_map(rows.div_ceil(chunk_rows), |c| {
                    let (r0, r1) = (c * chunk_rows, ((c + 1) * chunk_rows).min(rows));
                    let y = shared.columns(r0, r1);
                    job.run(
                        r0..r1,
                        0..n,
                        &mut Out {
                            y: Dest::Shared(y.rows()),
                            t0: 0,
                            r0: 0,
                            ts: rows,
                            os: 1,
                        },
                    );
                });
                return gelu;
            }
            if n >= 8 * threads {
                // Whole tokens per task: each writes its own rows of `y`. The bf16 kernels
                // decode the weights once per task: one task per thread.
                let (tasks, align) = if !act.tiles().is_empty() {
                    (threads * 2, TOKEN_TILE)
                } else if act.bf16.as_slice().is_empty() {
                    (threads * 2, PANEL_TOKENS)
                } else {
                    (threads, BF16_TILE_TOKENS)
                };
                let chunk = n.div_ceil(tasks).next_multiple_of(align);
                y.par_chunks_mut(chunk * rows)
                    .enumerate()
                    .for_each(|(c, out)| {
                        let t0 = c * chunk;
                        let t1 = t0 + out.len() / rows;
                        job.run(
                            0..rows,
                            t0..t1,
                            &mut Out {
                                y: Dest::Own(out),
                                t0,
                                r0: 0,
                                ts: rows,
                                os: 1,
                            },
                        );
                    });
            } else {
                // Few tokens: chunks of output rows, laid out `[row][token]`, then transposed.
                // Whole tiles of rows for the tile kernel, else pairs.
                let pair = if act.tiles().is_empty() { 2 } else { OUT_TILE };
                let chunk_rows = rows.div_ceil(threads * 4).next_multiple_of(pair);
                let mut by_row = alloc::vec![0f32; rows * n];
                by_row
                    .par_chunks_mut(chunk_rows * n)
                    .enumerate()
                    .for_each(|(c, out)| {
                        let r0 = c * chunk_rows;
                        let r1 = r0 + out.len() / n;
                        job.run(
                            r0..r1,
                            0..n,
                            &mut Out {
                                y: Dest::Own(out),
                                t0: 0,
                                r0,
                                ts: 1,
                                os: n,
                            },
                        );
                    });
                for o in 0..rows {
                    for t in 0..n {
                        y[t * rows + o] = by_row[o * n + t];
                    }
                }
            }
            return gelu;
        }
    }
    job.run(
        0..rows,
        0..n,
        &mut Out {
            y: Dest::Own(y),
            t0: 0,
            r0: 0,
            ts: rows,
            os: 1,
        },
    );
    gelu
}

/// The backward of [`linear`] with respect to its input: `dx[t, i] += sum_o dy[t, o] * W[o, i]`
/// for `n` tokens (`dy` is `[n, W.rows]`, `dx` is `[n, W.cols]`). Quantized weights are decoded
/// once per call into a temporary f32 copy; chunks of tokens run on the pool.
pub fn linear_backward_input(dy: &[f32], n: usize, w: &Matrix<'_>, dx: &mut [f32]) {
    use gemm::{gemm, Strides};
    let (rows, cols) = (w.rows, w.cols);
    debug_assert_eq!(dy.len(), n * rows);
    debug_assert_eq!(dx.len(), n * cols);
    // Decoded once per call (F32 is borrowed): the product runs on f32 weights.
    let decoded;
    let wf: &[f32] = match w.ty {
        TensorType::F32 => match crate::weights::f32_slice(w.data) {
            alloc::borrow::Cow::Borrowed(s) => s,
            alloc::borrow::Cow::Owned(v) => {
                decoded = v;
                &decoded
            }
        },
        _ => {
            decoded = w.to_f32();
            &decoded
        }
    };
    let chunk_into = |t0: usize, dx: &mut [f32]| {
        let nt = dx.len() / cols;
        gemm(
            nt,
            rows,
            cols,
            &dy[t0 * rows..(t0 + nt) * rows],
            Strides::rows(rows),
            wf,
            Strides::rows(cols),
            1.0,
            dx,
            Strides::rows(cols),
        );
    };
    #[cfg(feature = "std")]
    {
        let threads = rayon::current_num_threads();
        if threads > 1 && rows * n * cols >= PARALLEL_MIN_MACS && n >= 2 * threads {
            use rayon::prelude::*;
            let chunk = n.div_ceil(threads).max(1);
            dx.par_chunks_mut(chunk * cols)
                .enumerate()
                .for_each(|(c, d)| chunk_into(c * chunk, d));
            return;
        }
    }
    chunk_into(0, dx);
}

/// LayerNorm of each row of `x` (rows of `w.len()`), in place (rows in parallel chunks on the
/// pool when it has more than one thread: at one thread a hand-off costs more than it runs).
pub fn layer_norm(x: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
    norm_rows(x, None, w, b, eps)
}

/// `x + residual` (same shape) through LayerNorm, row by row in place, as [`layer_norm`] after
/// the sum: each task adds its rows just before it normalizes them, on the pool.
pub fn add_layer_norm(x: &mut [f32], residual: &[f32], w: &[f32], b: &[f32], eps: f32) {
    assert_eq!(x.len(), residual.len());
    norm_rows(x, Some(residual), w, b, eps)
}

/// [`layer_norm`] of `x` (plus `residual` first, if any), in tasks of whole rows on the pool.
fn norm_rows(x: &mut [f32], residual: Option<&[f32]>, w: &[f32], b: &[f32], eps: f32) {
    let norm = active().layer_norm;
    let h = w.len().max(1);
    // Rows per task: enough work to pay for the hand-off.
    let rows = (8192 / h).max(1);
    par_chunks_mut(x, rows * h, |i, c| {
        if let Some(residual) = residual {
            let r = &residual[i * rows * h..][..c.len()];
            c.iter_mut().zip(r).for_each(|(x, r)| *x += r);
        }
        norm(c, w, b, eps)
    });
}

/// Fewest tokens for which attention takes the bf16 kernels.
pub const BF16_ATTENTION_MIN_TOKENS: usize = 32;

/// One attention head of one sequence in bf16, when the active set has bf16 kernels, `n` is at
/// least [`BF16_ATTENTION_MIN_TOKENS`] and `dh` a multiple of 32 (else `None`):
/// `softmax(scale * q k^T) v` as `[n, dh]`, for `n` tokens whose head values are `q[i * ld..]`
/// (`dh` of them), likewise `k` and `v`. Queries (times `scale`), keys, values and the
/// probabilities are rounded to bf16 (as [`qdot::bf16_bits`]); scores, softmax and sums are
/// f32. Keys are the strips' rows (padded to a multiple of 32 with zeros), queries the token
/// tiles; then the values' columns are the rows against the probabilities as tokens. `scratch`
/// is working memory kept from head to head.
#[allow(clippy::too_many_arguments)]
pub fn attention_bf16(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    ld: usize,
    n: usize,
    dh: usize,
    scale: f32,
    scratch: &mut AttentionScratch,
) -> Option<Vec<f32>> {
    let bk = active().bf16?;
    if n < BF16_ATTENTION_MIN_TOKENS || !dh.is_multiple_of(BF16_ROWS) {
        return None;
    }
    Some(attention_bf16_with(bk, q, k, v, ld, n, dh, scale, scratch))
}

/// Working memory of [`attention_bf16`], kept from head to head (a task's heads reuse it
/// instead of zeroing fresh buffers for each).
#[derive(Debug, Default)]
pub struct AttentionScratch {
    queries: Vec<f32>,
    qt: qdot::Bf16Buf,
    keys: Vec<f32>,
    kr: qdot::Bf16Buf,
    scores: Vec<f32>,
    /// Each query's sum of exponentials.
    sums: Vec<f32>,
    pt: qdot::Bf16Buf,
    vt: qdot::Bf16Buf,
}

/// [`attention_bf16`] on the given kernels (tests compare each set with the references).
#[allow(clippy::too_many_arguments)]
pub fn attention_bf16_with(
    bk: Bf16Kernels,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    ld: usize,
    n: usize,
    dh: usize,
    scale: f32,
    scratch: &mut AttentionScratch,
) -> Vec<f32> {
    let m = n.next_multiple_of(BF16_ROWS);
    fn head(x: &[f32], i: usize, ld: usize, dh: usize) -> &[f32] {
        &x[i * ld..i * ld + dh]
    }
    let AttentionScratch {
        queries,
        qt,
        keys,
        kr,
        scores,
        sums,
        pt,
        vt,
    } = scratch;
    // Queries, times the scale (so the scores come out scaled), as token tiles.
    queries.clear();
    (0..n).for_each(|i| queries.extend(head(q, i, ld, dh).iter().map(|v| v * scale)));
    qt.clear();
    qdot::pack_bf16_tiles_with(bk.pack, queries, dh, qt);
    let qt = qt.as_slice();
    // Keys as strips of 32 rows, `[m, dh]` (the strips write every value).
    kr.resize_any(m * dh);
    for (j0, o) in (0..n)
        .step_by(BF16_ROWS)
        .zip(kr.as_mut_slice().chunks_exact_mut(BF16_ROWS * dh))
    {
        keys.clear();
        (j0..(j0 + BF16_ROWS).min(n)).for_each(|j| keys.extend_from_slice(head(k, j, ld, dh)));
        (bk.strip)(keys, dh, o);
    }
    let kr = kr.as_slice();
    let nt = n.div_ceil(BF16_TILE_TOKENS);
    let zero = [0f32; BF16_ROWS];
    // scores[i, j] = q_i . k_j, `[n, m]`; columns n.. are never written and stay zero (a
    // buffer of another shape is zeroed first).
    if scores.len() != n * m {
        scores.clear();
        scores.resize(n * m, 0.0);
    }
    for j0 in (0..n).step_by(BF16_ROWS) {
        let nr = (n - j0).min(BF16_ROWS);
        let mut s = RowsMut::new(scores, m);
        (bk.gemm)(
            &kr[j0 * dh..],
            dh,
            qt,
            nt,
            &zero,
            &mut s.window(0, j0, nr),
            nr,
            n,
            false,
            &[],
        );
    }
    // Softmax's exponentials; each query's sum divides its output row at the end.
    sums.clear();
    sums.extend(
        scores
            .chunks_exact_mut(m)
            .map(|row| (bk.exp_sum)(&mut row[..n])),
    );
    // Exponentials as token tiles of depth m.
    pt.clear();
    qdot::pack_bf16_tiles_with(bk.pack, scores, m, pt);
    let pt = pt.as_slice();
    // Values' columns as strips of 32 rows of depth m (zeros past n).
    vt.resize_any(dh * m);
    for (d0, o) in (0..dh)
        .step_by(BF16_ROWS)
        .zip(vt.as_mut_slice().chunks_exact_mut(BF16_ROWS * m))
    {
        (bk.columns)(&v[d0..], ld, n, m, o);
    }
    let vt = vt.as_slice();
    let mut out = alloc::vec![0f32; n * dh];
    let mut o = RowsMut::new(&mut out, dh);
    for d0 in (0..dh).step_by(BF16_ROWS) {
        (bk.gemm)(
            &vt[d0 * m..],
            m,
            pt,
            nt,
            &zero,
            &mut o.window(0, d0, BF16_ROWS),
            BF16_ROWS,
            n,
            false,
            &[],
        );
    }
    for (row, s) in out.chunks_exact_mut(dh).zip(sums.iter()) {
        let inv = 1.0 / s;
        row.iter_mut().for_each(|v| *v *= inv);
    }
    out
}

/// Softmax of `x` in place.
pub fn softmax(x: &mut [f32]) {
    (active().softmax)(x)
}

/// Exact GELU, `x * Phi(x)`, in place (in parallel chunks on the pool when it has more than one
/// thread).
pub fn gelu(x: &mut [f32]) {
    #[cfg(feature = "std")]
    {
        use rayon::prelude::*;
        if rayon::current_num_threads() > 1 {
            x.par_chunks_mut(4096).for_each(active().gelu);
            return;
        }
    }
    (active().gelu)(x)
}

/// `f(i, chunk)` for chunk `i` of `size` values of `x`, on the pool (sequentially at one
/// thread or without `std`).
pub fn par_chunks_mut<T: Send>(
    x: &mut [T],
    size: usize,
    f: impl Fn(usize, &mut [T]) + Sync + Send,
) {
    #[cfg(feature = "std")]
    {
        use rayon::prelude::*;
        if rayon::current_num_threads() > 1 {
            x.par_chunks_mut(size)
                .enumerate()
                .for_each(|(i, c)| f(i, c));
            return;
        }
    }
    x.chunks_mut(size).enumerate().for_each(|(i, c)| f(i, c));
}

/// `f(0), f(1), ..., f(count - 1)`, computed on the pool (sequentially at one thread or without
/// `std`).
pub fn par_map<T: Send>(count: usize, f: impl Fn(usize) -> T + Sync + Send) -> Vec<T> {
    par_map_init(count, || (), |_, i| f(i))
}

/// [`par_map`] with working memory: `f(&mut state, i)`, one `state` from `init` per piece of
/// work the pool splits off (one in all at one thread), reused for the indices it covers.
pub fn par_map_init<S, T: Send>(
    count: usize,
    init: impl Fn() -> S + Sync + Send,
    f: impl Fn(&mut S, usize) -> T + Sync + Send,
) -> Vec<T> {
    #[cfg(feature = "std")]
    {
        use rayon::prelude::*;
        if rayon::current_num_threads() > 1 {
            return (0..count).into_par_iter().map_init(init, f).collect();
        }
    }
    let mut state = init();
    (0..count).map(|i| f(&mut state, i)).collect()
}

/// Dot product.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    (active().dot_f32)(a, b)
}

/// Threads of the pool.
#[cfg(feature = "std")]
pub fn threads() -> usize {
    rayon::current_num_threads()
}

/// Sets the number of threads of the pool (once, before the first use; later calls fail). The
/// calling thread becomes one of them: the products it starts run partly on itself, and it
/// hands work to the others without sleeping and being woken for each one.
#[cfg(feature = "std")]
pub fn set_threads(n: usize) -> Result<(), rayon::ThreadPoolBuildError> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .use_current_thread()
        .build_global()
}
