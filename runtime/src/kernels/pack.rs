//! Quantized activations and the block dot products of Q8_0 and Q4_0 weights against them.

use alloc::vec::Vec;

use crate::quant::QK;

/// Bytes of one Q8_0 weight block (f16 scale + 32 i8).
pub const Q8_0_BLOCK_BYTES: usize = 34;
/// Bytes of one Q4_0 weight block (f16 scale + 16 nibble pairs).
pub const Q4_0_BLOCK_BYTES: usize = 18;

/// 32 activations quantized symmetrically to i8 with an f32 scale: value = `qs[j] * d`.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct ActBlock {
    /// Scale.
    pub d: f32,
    /// Quantized values in -127..=127.
    pub qs: [i8; QK],
}

/// Symmetric quantization of 32 values to `max`: the scale `amax / max`, and each value times
/// its inverse plus or minus one half, so that truncating toward zero (`as`) rounds half away
/// from zero; magnitudes stay below `max + 1` by construction.
fn scaled(chunk: &[f32], max: f32) -> (f32, impl Iterator<Item = f32> + '_) {
    let amax = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / max;
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    let halves = chunk.iter().map(move |&v| {
        let r = v * id;
        r + if r >= 0.0 { 0.5 } else { -0.5 }
    });
    (d, halves)
}

/// Quantizes `x` (a multiple of 32 values) into activation blocks, appended to `out`.
pub fn quantize_activations(x: &[f32], out: &mut Vec<ActBlock>) {
    for chunk in x.chunks_exact(QK) {
        let (d, qs) = quantize_block_i8(chunk, 127.0);
        out.push(ActBlock { d, qs });
    }
}

/// Quantizes `x` as [`quantize_activations`] does into `hi`, and what that leaves
/// (`x - hi`) into `lo`: `hi + lo` carries about 14 bits, for weights whose products must stay
/// close to f32 (Q4_0).
pub fn quantize_activations_two_level(x: &[f32], hi: &mut Vec<ActBlock>, lo: &mut Vec<ActBlock>) {
    quantize_two_level_with(x, hi, lo, quantize_activations)
}

/// [`quantize_activations_two_level`] with another quantizer of the same results (a SIMD one).
pub fn quantize_two_level_with(
    x: &[f32],
    hi: &mut Vec<ActBlock>,
    lo: &mut Vec<ActBlock>,
    quantize: fn(&[f32], &mut Vec<ActBlock>),
) {
    let start = hi.len();
    quantize(x, hi);
    let mut residual = Vec::with_capacity(x.len());
    for (chunk, b) in x.chunks_exact(QK).zip(&hi[start..]) {
        residual.extend(chunk.iter().zip(&b.qs).map(|(&v, &q)| v - q as f32 * b.d));
    }
    quantize(&residual, lo);
}

/// The f16 scale at the start of a weight block.
#[inline(always)]
pub fn block_scale(b: &[u8]) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
}

/// Tokens in one [`Panel8`].
pub const PANEL_TOKENS: usize = 8;

/// One activation block of eight tokens, interleaved for kernels whose vector lanes are
/// tokens: `qs[g]` holds values `4g..4g + 4` of each token in turn (token `t` at bytes
/// `4t..4t + 4`), `abs` their magnitudes, `d` the tokens' scales. A weight block's four values
/// `4g..4g + 4`, broadcast, then meet all eight tokens in one 32-byte product.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C, align(32))]
pub struct Panel8 {
    /// Scales of the eight tokens.
    pub d: [f32; PANEL_TOKENS],
    /// Values, by groups of four.
    pub qs: [[i8; 32]; QK / 4],
    /// `|qs|`.
    pub abs: [[u8; 32]; QK / 4],
}

/// Packs the blocks of up to eight tokens (`tokens[t]`, each `nb` blocks) into `nb` panels,
/// appended to `out`; missing tokens are zeros.
pub fn pack_panel(tokens: &[&[ActBlock]], nb: usize, out: &mut Vec<Panel8>) {
    debug_assert!(tokens.len() <= PANEL_TOKENS && tokens.iter().all(|t| t.len() == nb));
    let start = out.len();
    out.resize(
        start + nb,
        Panel8 {
            d: [0.0; PANEL_TOKENS],
            qs: [[0; 32]; QK / 4],
            abs: [[0; 32]; QK / 4],
        },
    );
    for (b, p) in out[start..].iter_mut().enumerate() {
        for (t, tok) in tokens.iter().enumerate() {
            let blk = &tok[b];
            p.d[t] = blk.d;
            for (g, four) in blk.qs.chunks_exact(4).enumerate() {
                p.qs[g][4 * t..4 * t + 4].copy_from_slice(four);
            }
        }
        for (a, q) in p.abs.iter_mut().zip(&p.qs) {
            for (a, q) in a.iter_mut().zip(q) {
                *a = q.unsigned_abs();
            }
        }
    }
}

/// One activation block of eight tokens for x86_64's VNNI Q8_0 kernels, which offset the
/// weights to unsigned bytes (`w ^ 0x80 = w + 128`, `0..=255`) for `vpdpbusd`'s
/// unsigned-by-signed byte products: `qs[g]` holds values `4g..4g + 4` of each token in turn
/// (token `t` at bytes `4t..4t + 4`), `d` the tokens' scales, `corr[t]` 128 times the sum of
/// token `t`'s values (the offset's products, taken back out).
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C, align(32))]
pub struct OffsetPanel {
    /// Scales of the eight tokens.
    pub d: [f32; PANEL_TOKENS],
    /// `128 * sum(qs)` per token.
    pub corr: [i32; PANEL_TOKENS],
    /// Values, by groups of four.
    pub qs: [[i8; 32]; QK / 4],
}

/// Quantizes 32 values to `|q| <= max` (at most 127): the scale `d` and the values, rounded
/// half away from zero.
pub fn quantize_block_i8(chunk: &[f32], max: f32) -> (f32, [i8; QK]) {
    let (d, halves) = scaled(chunk, max);
    let mut q = [0i8; QK];
    q.iter_mut().zip(halves).for_each(|(q, r)| *q = r as i8);
    (d, q)
}

/// Quantizes up to eight tokens (`x`, rows of `cols`, a multiple of 32) per 32 values as
/// [`quantize_activations`] does and packs them into `cols / 32` [`OffsetPanel`]s, appended to
/// `out`; missing tokens are zeros.
pub fn pack_offset_panel(x: &[f32], cols: usize, out: &mut Vec<OffsetPanel>) {
    pack_offset_panel_with(x, cols, out, |chunk| quantize_block_i8(chunk, 127.0))
}

/// [`pack_offset_panel`] with another block quantizer of the same results (a SIMD one).
pub fn pack_offset_panel_with(
    x: &[f32],
    cols: usize,
    out: &mut Vec<OffsetPanel>,
    quantize: impl Fn(&[f32]) -> (f32, [i8; QK]),
) {
    let ntok = x.len() / cols;
    debug_assert!(ntok <= PANEL_TOKENS && cols.is_multiple_of(QK) && x.len() == ntok * cols);
    let start = out.len();
    out.resize(
        start + cols / QK,
        OffsetPanel {
            d: [0.0; PANEL_TOKENS],
            corr: [0; PANEL_TOKENS],
            qs: [[0; 32]; QK / 4],
        },
    );
    for (t, row) in x.chunks_exact(cols).enumerate() {
        for (p, chunk) in out[start..].iter_mut().zip(row.chunks_exact(QK)) {
            let (d, q) = quantize(chunk);
            p.d[t] = d;
            p.corr[t] = 128 * q.iter().map(|&v| v as i32).sum::<i32>();
            for (four, g) in p.qs.iter_mut().zip(q.chunks_exact(4)) {
                four[4 * t..4 * t + 4].copy_from_slice(g);
            }
        }
    }
}

/// Tokens per [`TilePanel`].
pub const TILE_PANEL_TOKENS: usize = 2 * PANEL_TOKENS;

/// Blocks (of 32 values) of a weight row the sixteen-row tile kernel takes at most (rows of up
/// to 4096 values): it keeps a row group's scales in a local table of this many blocks.
pub const TILE_MAX_BLOCKS: usize = 128;

/// One activation block of sixteen tokens for AMX's signed int8 tile products (one tile of
/// activations): `qs[g]` holds values `4g..4g + 4` of each token in turn (token `t` at bytes
/// `4t..4t + 4`), `d` the tokens' scales. Made of two [`OffsetPanel`]s (tokens 0-7, 8-15).
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C, align(64))]
pub struct TilePanel {
    /// Scales of the sixteen tokens.
    pub d: [f32; TILE_PANEL_TOKENS],
    /// Values, by groups of four.
    pub qs: [[i8; 4 * TILE_PANEL_TOKENS]; QK / 4],
}

/// Quantizes up to sixteen tokens (`x`, rows of `cols`, a multiple of 32) per 32 values as
/// [`pack_offset_panel`] does and packs them into the `cols / 32` [`TilePanel`]s of `out`;
/// missing tokens are zeros. The reference: offset panels of eight tokens, joined.
pub fn pack_tile_panel(x: &[f32], cols: usize, out: &mut [TilePanel]) {
    pack_tiles_joined(x, cols, out, pack_offset_panel, pack_tile_panels)
}

/// A tile packer's reference: `x` (up to sixteen tokens of `cols` values) packed by eight
/// tokens with `pack` (one empty group for no tokens), the groups joined into `out` by `join`.
fn pack_tiles_joined<P>(
    x: &[f32],
    cols: usize,
    out: &mut [TilePanel],
    pack: fn(&[f32], usize, &mut Vec<P>),
    join: fn(&[P], usize, &mut Vec<TilePanel>),
) {
    let mut panels = Vec::new();
    for chunk in x.chunks(PANEL_TOKENS * cols) {
        pack(chunk, cols, &mut panels);
    }
    if panels.is_empty() {
        pack(&[], cols, &mut panels);
    }
    let mut tiles = Vec::new();
    join(&panels, cols / QK, &mut tiles);
    out.copy_from_slice(&tiles);
}

/// A tile panel of zeros.
pub const ZERO_TILE_PANEL: TilePanel = TilePanel {
    d: [0.0; TILE_PANEL_TOKENS],
    qs: [[0; 4 * TILE_PANEL_TOKENS]; QK / 4],
};

/// Joins [`OffsetPanel`]s by pairs of groups of eight tokens (`panels`: groups of `bpr`
/// blocks) into [`TilePanel`]s of sixteen, appended to `out` (`bpr` per pair); an odd last
/// group's partner is zeros.
pub fn pack_tile_panels(panels: &[OffsetPanel], bpr: usize, out: &mut Vec<TilePanel>) {
    let zero = OffsetPanel {
        d: [0.0; PANEL_TOKENS],
        corr: [0; PANEL_TOKENS],
        qs: [[0; 32]; QK / 4],
    };
    for_tile_pairs(panels, bpr, &zero, |lo, hi| {
        let mut t = ZERO_TILE_PANEL;
        t.d[..PANEL_TOKENS].copy_from_slice(&lo.d);
        t.d[PANEL_TOKENS..].copy_from_slice(&hi.d);
        for ((q, l), h) in t.qs.iter_mut().zip(&lo.qs).zip(&hi.qs) {
            q[..32].copy_from_slice(l);
            q[32..].copy_from_slice(h);
        }
        out.push(t);
    });
}

/// Calls `f(lo, hi)` for each block (in order) of each pair of groups of eight tokens in
/// `panels` (groups of `bpr` blocks), the tile joiners' walk: `lo` the first group's block,
/// `hi` the second's, or `zero` for an odd last group.
fn for_tile_pairs<P>(panels: &[P], bpr: usize, zero: &P, mut f: impl FnMut(&P, &P)) {
    let groups = panels.len() / bpr.max(1);
    debug_assert_eq!(panels.len(), groups * bpr);
    for g in (0..groups).step_by(2) {
        for b in 0..bpr {
            let hi = panels.get((g + 1) * bpr + b).filter(|_| g + 1 < groups);
            f(&panels[g * bpr + b], hi.unwrap_or(zero));
        }
    }
}

/// One activation block of eight tokens quantized to 16 bits, for Q4_0's panel kernels (whose
/// 4-bit weights meet 16-bit values in one `i16 x i16 -> i32` product): `qs[p]` holds values
/// `2p, 2p + 1` of each token in turn (token `t` at `2t, 2t + 1`), `d` the tokens' scales
/// (value = `qs * d`, `|qs| <= 32767`). A weight pair, broadcast, meets all eight tokens in one
/// 32-byte product.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C, align(32))]
pub struct Panel16 {
    /// Scales of the eight tokens.
    pub d: [f32; PANEL_TOKENS],
    /// Values, by pairs.
    pub qs: [[i16; 2 * PANEL_TOKENS]; QK / 2],
}

/// Largest magnitude of a 16-bit quantized activation.
const Q16_MAX: f32 = 32767.0;

/// Quantizes 32 values to 16 bits: the scale `d` and values `q` with `q * d` near the inputs,
/// `|q| <= 32767`, rounded half away from zero.
pub fn quantize_block16(chunk: &[f32]) -> (f32, [i16; QK]) {
    let (d, halves) = scaled(chunk, Q16_MAX);
    let mut q = [0i16; QK];
    q.iter_mut().zip(halves).for_each(|(q, r)| *q = r as i16);
    (d, q)
}

/// Quantizes up to eight tokens (`x`, rows of `cols`, a multiple of 32) per 32 values to 16 bits
/// and packs them into `cols / 32` panels, appended to `out`; missing tokens are zeros.
pub fn pack_panel16(x: &[f32], cols: usize, out: &mut Vec<Panel16>) {
    pack_panel16_with(x, cols, out, quantize_block16)
}

/// [`pack_panel16`] with another block quantizer of the same results (a SIMD one).
pub fn pack_panel16_with(
    x: &[f32],
    cols: usize,
    out: &mut Vec<Panel16>,
    quantize: impl Fn(&[f32]) -> (f32, [i16; QK]),
) {
    let ntok = x.len() / cols;
    debug_assert!(ntok <= PANEL_TOKENS && cols.is_multiple_of(QK) && x.len() == ntok * cols);
    let start = out.len();
    out.resize(
        start + cols / QK,
        Panel16 {
            d: [0.0; PANEL_TOKENS],
            qs: [[0; 2 * PANEL_TOKENS]; QK / 2],
        },
    );
    for (t, row) in x.chunks_exact(cols).enumerate() {
        for (p, chunk) in out[start..].iter_mut().zip(row.chunks_exact(QK)) {
            let (d, q) = quantize(chunk);
            p.d[t] = d;
            for (pair, two) in p.qs.iter_mut().zip(q.chunks_exact(2)) {
                pair[2 * t..2 * t + 2].copy_from_slice(two);
            }
        }
    }
}

/// Each value of a 16-bit panel: `f(v, t, q)` for value `v` of token `t`.
fn each_value16(p: &Panel16, mut f: impl FnMut(usize, usize, i16)) {
    for (pair, qs) in p.qs.iter().enumerate() {
        for (t, two) in qs.chunks_exact(2).enumerate() {
            f(2 * pair, t, two[0]);
            f(2 * pair + 1, t, two[1]);
        }
    }
}

/// A 16-bit value's high byte (signed) and low byte (its bits): `q = 256 * high + low`.
fn bytes16(q: i16) -> (i8, u8) {
    ((q >> 8) as i8, (q & 0xff) as u8)
}

/// A [`Panel16`] as two [`Panel8`]s for Q4_0 kernels whose products take bytes (SDOT, SMMLA):
/// `[high, low]`, with the high bytes `q >> 8` (signed) and the low bytes `(q & 0xff) - 128`
/// (signed), by groups of four values per token as in any [`Panel8`], and the tokens' scales
/// in both; so `q = 256 * high + low + 128` exactly, and a block's products are
/// `256 * (w . high) + (w . low) + 128 * sum(w)`.
pub fn split_panel16(p: &Panel16) -> [Panel8; 2] {
    let mut out = [Panel8 {
        d: p.d,
        qs: [[0; 32]; QK / 4],
        abs: [[0; 32]; QK / 4],
    }; 2];
    each_value16(p, |v, t, q| {
        let (high, low) = bytes16(q);
        out[0].qs[v / 4][4 * t + v % 4] = high;
        out[1].qs[v / 4][4 * t + v % 4] = (low ^ 0x80) as i8;
    });
    for half in &mut out {
        for (a, q) in half.abs.iter_mut().zip(&half.qs) {
            for (a, q) in a.iter_mut().zip(q) {
                *a = q.unsigned_abs();
            }
        }
    }
    out
}

/// Packs up to sixteen tokens' activations (rows of `cols`, a multiple of 32) for the Q4_0
/// tile kernel: quantized to 16 bits per 32 values as [`pack_panel16`] does, each block as two
/// [`TilePanel`]s in `out` (`2 * cols / 32` of them): at `2b` the high bytes `q >> 8` (signed),
/// at `2b + 1` the low bytes `q & 0xff` (unsigned, kept as their bits), both with the tokens'
/// scales; `q = 256 * high + low`, so a signed and an unsigned byte product give each block's
/// exact sums. Missing tokens are zeros.
pub fn pack_tile_panel16(x: &[f32], cols: usize, out: &mut [TilePanel]) {
    pack_tiles_joined(x, cols, out, pack_panel16, pack_tile_panels16)
}

/// Joins [`Panel16`]s by pairs of groups of eight tokens (`panels`: groups of `bpr` blocks)
/// into the Q4_0 tile kernel's pairs of [`TilePanel`]s (as [`pack_tile_panel16`] lays them
/// out), appended to `out` (`2 * bpr` per pair of groups); an odd last group's partner is
/// zeros.
pub fn pack_tile_panels16(panels: &[Panel16], bpr: usize, out: &mut Vec<TilePanel>) {
    let zero = Panel16 {
        d: [0.0; PANEL_TOKENS],
        qs: [[0; 2 * PANEL_TOKENS]; QK / 2],
    };
    for_tile_pairs(panels, bpr, &zero, |lo, hi| {
        let mut high = ZERO_TILE_PANEL;
        high.d[..PANEL_TOKENS].copy_from_slice(&lo.d);
        high.d[PANEL_TOKENS..].copy_from_slice(&hi.d);
        let mut low = high;
        for (half, first) in [(lo, 0), (hi, PANEL_TOKENS)] {
            each_value16(half, |v, i, q| {
                let (h, l) = bytes16(q);
                high.qs[v / 4][4 * (first + i) + v % 4] = h;
                low.qs[v / 4][4 * (first + i) + v % 4] = l as i8;
            });
        }
        out.push(high);
        out.push(low);
    });
}

/// Tokens in one bf16 activation tile (the A operand of AMX-BF16's tile product: sixteen
/// tokens' rows of 32 values per step).
pub const BF16_TILE_TOKENS: usize = 16;

/// Weight rows in one bf16 strip (two B operands of sixteen rows each).
pub const BF16_STRIP_ROWS: usize = 32;

/// A bf16 buffer whose values start on a 64-byte boundary: AMX tile loads of 64-byte rows that
/// straddle two cache lines took about twice as long (on a Sapphire Rapids VM).
#[derive(Clone, Debug, Default)]
pub struct Bf16Buf {
    buf: Vec<u16>,
    at: usize,
    len: usize,
}

impl Bf16Buf {
    /// An empty buffer.
    pub const fn new() -> Self {
        Bf16Buf {
            buf: Vec::new(),
            at: 0,
            len: 0,
        }
    }

    /// `len` zeros.
    pub fn zeros(len: usize) -> Self {
        let mut b = Bf16Buf::new();
        b.resize(len);
        b
    }

    /// Resized to `len` values (zeros where it grows), realigned if the storage moved.
    pub fn resize(&mut self, len: usize) {
        let old = self.as_slice().len().min(len);
        if self.buf.len() < len + 31 {
            // Move the values to the front, grow, then realign below.
            self.buf.copy_within(self.at..self.at + old, 0);
            self.at = 0;
            self.buf.resize(len + 31, 0);
        }
        // `align_offset` may decline (usize::MAX): any offset then serves, only slower.
        let at = self.buf.as_ptr().align_offset(64).min(31);
        if at != self.at {
            self.buf.copy_within(self.at..self.at + old, at);
            self.at = at;
        }
        self.len = len;
        self.buf[at + old..at + len].fill(0);
    }

    /// Resized to `len` values whose contents are unspecified (for callers that write every
    /// value): within its storage, nothing is written.
    pub fn resize_any(&mut self, len: usize) {
        if self.at + len <= self.buf.len() {
            self.len = len;
        } else {
            self.resize(len);
        }
    }

    /// Values the storage holds (aligned or not).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Emptied (the storage kept).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// The values.
    pub fn as_slice(&self) -> &[u16] {
        &self.buf[self.at..self.at + self.len]
    }

    /// The values, to write.
    pub fn as_mut_slice(&mut self) -> &mut [u16] {
        &mut self.buf[self.at..self.at + self.len]
    }
}

/// Where value `i` of row `r` (of [`BF16_STRIP_ROWS`], each of `k` values, `k` a multiple of
/// 32) lies in a bf16 strip: the rows in two groups of sixteen, each group's values in steps of
/// 32, each step one 16 x 16 tile of value pairs (AMX-BF16's B operand: tile row `p` holds
/// pair `p`, values `2p` and `2p + 1`, of the sixteen rows side by side).
#[inline]
pub fn strip_index(r: usize, i: usize, k: usize) -> usize {
    let (g, n, c, p, e) = (r / 16, r % 16, i / 32, i % 32 / 2, i % 2);
    ((g * (k / 32) + c) * 16 + p) * 32 + n * 2 + e
}

/// bf16 rows (`rows`, `k` values each, at most [`BF16_STRIP_ROWS`] of them, `k` a multiple of
/// 32) laid out as a strip ([`strip_index`]) in `out` (`32 * k` values, every one written:
/// missing rows are zeros).
pub fn interleave_strip(rows: &[u16], k: usize, out: &mut [u16]) {
    let out = &mut out[..BF16_STRIP_ROWS * k];
    out.fill(0);
    for (r, row) in rows.chunks_exact(k).take(BF16_STRIP_ROWS).enumerate() {
        for (i, &v) in row.iter().enumerate() {
            out[strip_index(r, i, k)] = v;
        }
    }
}

/// Up to [`BF16_STRIP_ROWS`] Q8_0 or Q4_0 weight rows (`nr` rows of `k` values, one after the
/// other from the start of `data`) decoded to bf16 as [`dequantize_row_bf16`] and laid out as a
/// strip ([`interleave_strip`]; rows from `nr` on are zeros).
///
/// # Panics
/// If `ty` is neither Q8_0 nor Q4_0, `data` is short, or `nr` is above 32.
pub fn dequantize_strip_bf16(
    ty: crate::quant::TensorType,
    data: &[u8],
    nr: usize,
    k: usize,
    out: &mut [u16],
) {
    assert!(
        nr <= BF16_STRIP_ROWS,
        "a strip holds {BF16_STRIP_ROWS} rows, not {nr}"
    );
    let rb = k / QK * ty.block_bytes();
    let mut rows = alloc::vec![0u16; nr * k];
    for (r, o) in rows.chunks_exact_mut(k).enumerate() {
        dequantize_row_bf16(ty, data.get(r * rb..).unwrap_or(&[]), o);
    }
    interleave_strip(&rows, k, out);
}

/// Up to [`BF16_STRIP_ROWS`] f32 rows (`x`, rows of `k`) rounded to bf16 by [`bf16_bits`] and
/// laid out as a strip ([`interleave_strip`]).
pub fn pack_bf16_strip(x: &[f32], k: usize, out: &mut [u16]) {
    let mut rows = alloc::vec![0u16; x.len().min(BF16_STRIP_ROWS * k)];
    convert_bf16(x, &mut rows);
    interleave_strip(&rows, k, out);
}

/// `x` rounded to bfloat16 (to nearest, ties to even) as bits, the way `vcvtne2ps2bf16`
/// rounds: subnormal inputs become signed zeros, NaN stays a (quiet) NaN.
#[inline]
pub fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return (b >> 16) as u16 | 0x40;
    }
    if x.abs() < f32::MIN_POSITIVE {
        return (b >> 16) as u16 & 0x8000;
    }
    (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// `x` rounded to bf16 by [`bf16_bits`] into `out` (at least as long).
pub fn convert_bf16(x: &[f32], out: &mut [u16]) {
    out.iter_mut().zip(x).for_each(|(o, &v)| *o = bf16_bits(v));
}

/// The f32 value of bfloat16 bits.
#[inline]
pub fn bf16_value(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// One Q8_0 or Q4_0 weight row (`row`, `out.len() / 32` blocks) decoded to bf16: each value
/// `q * d` in f32 (as [`crate::quant::dequantize`]), then rounded by [`bf16_bits`].
///
/// # Panics
/// If `ty` is neither Q8_0 nor Q4_0, or `row` is short.
pub fn dequantize_row_bf16(ty: crate::quant::TensorType, row: &[u8], out: &mut [u16]) {
    use crate::quant::TensorType;
    assert!(
        matches!(ty, TensorType::Q8_0 | TensorType::Q4_0),
        "bf16 rows are decoded from Q8_0 or Q4_0, not {ty:?}"
    );
    let bytes = out.len() / QK * ty.block_bytes();
    assert!(row.len() >= bytes, "short {ty:?} row");
    let mut f = Vec::with_capacity(out.len());
    crate::quant::dequantize(&row[..bytes], ty, out.len(), &mut f).expect("whole blocks");
    convert_bf16(&f, out);
}

/// Columns `0..32` of rows `0..n` of `x` (rows of `ld`) as a bf16 strip of depth `k` (a
/// multiple of 32, at least `n`): strip row `r`, value `j` is `x[j * ld + r]` (zeros from `j = n`
/// on), rounded by [`bf16_bits`]. Attention's values enter the product this way, their columns
/// as rows.
///
/// # Panics
/// If `x` is shorter than `(n - 1) * ld + 32` for `n > 0`, or `k < n`.
pub fn pack_bf16_columns(x: &[f32], ld: usize, n: usize, k: usize, out: &mut [u16]) {
    assert!(n <= k, "a strip of depth {k} holds {n} rows' columns");
    let mut cols = alloc::vec![0f32; BF16_STRIP_ROWS * k];
    for (r, col) in cols.chunks_exact_mut(k).enumerate() {
        for (j, v) in col.iter_mut().enumerate().take(n) {
            *v = x[j * ld + r];
        }
    }
    pack_bf16_strip(&cols, k, out);
}

/// Up to sixteen tokens (`x`, rows of `cols`) rounded to bf16 as one tile of `cols * 16`
/// values in `out` (of that length, every value written): token `t`'s values at `t * cols..`,
/// the row layout of AMX-BF16's A operand; missing tokens are zeros.
pub fn pack_bf16_tile(x: &[f32], cols: usize, out: &mut [u16]) {
    let tile = &mut out[..cols * BF16_TILE_TOKENS];
    let n = x.len().min(tile.len()) / cols * cols;
    convert_bf16(&x[..n], tile);
    tile[n..].fill(0);
}

/// `x` (rows of `cols`) packed as bf16 tiles of sixteen tokens by `pack` (one of the sets'
/// [`pack_bf16_tile`]s), appended to `out`; the last tile's missing tokens are zeros.
pub fn pack_bf16_tiles_with(
    pack: fn(&[f32], usize, &mut [u16]),
    x: &[f32],
    cols: usize,
    out: &mut Bf16Buf,
) {
    let (at, tile) = (out.as_slice().len(), BF16_TILE_TOKENS * cols);
    // `pack` writes every value of its tile.
    out.resize_any(at + x.len().div_ceil(tile) * tile);
    for (x, o) in x
        .chunks(tile)
        .zip(out.as_mut_slice()[at..].chunks_exact_mut(tile))
    {
        pack(x, cols, o);
    }
}
