//! The kernel set: one implementation of every kernel, the scalar references' set, the bounds
//! the SIMD wrappers check, and the run-time selection of the set in use.

use alloc::vec::Vec;

use super::generic;
use super::pack::{self, ActBlock, OffsetPanel, Panel16, Panel8};
use super::rows::RowsMut;
use crate::quant::TensorType;
#[cfg(all(feature = "std", target_arch = "x86_64"))]
use crate::quant::QK;

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
    /// Groups of sixteen Q8_0 weight rows · tokens in tiles of sixteen ([`TileOperands`]), into
    /// `y[token][16 * group + row]`, from the rows' biases (AMX); when present, linear layers
    /// use it for whole chunks of sixteen rows.
    pub dot_q8_0_16x16: Option<TileProduct>,
    /// [`KernelSet::dot_q8_0_16x16`] for Q4_0 weight rows against activations in 16 bits, each
    /// token tile `2 * nb` panels as [`KernelSet::pack_tile16`] packs them (AMX); when present,
    /// Q4_0 layers use it as Q8_0 layers use theirs.
    pub dot_q4_0_16x16: Option<TileProduct>,
    /// Two Q4_0 weight rows · 16-bit panels of eight tokens, `[row 0 x 8, row 1 x 8]`; when
    /// present, Q4_0 layers quantize their activations to 16 bits and use it.
    pub dot_q4_0_2x8: Option<PanelProduct<Panel16>>,
    /// Two Q4_0 weight rows · split 16-bit panels of eight tokens (each block's high and low
    /// bytes as two [`Panel8`]s, see [`pack::split_panel16`]), `[row 0 x 8, row 1 x 8]`; when
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
    /// `cols / 32` [`pack::TilePanel`]s of `out` for `dot_q8_0_16x16`: `(x, cols, out)`.
    pub pack_tile: fn(&[f32], usize, &mut [pack::TilePanel]),
    /// Up to sixteen tokens' activations quantized to 16 bits per 32 values and packed into the
    /// `2 * cols / 32` [`pack::TilePanel`]s of `out` for `dot_q4_0_16x16`, as
    /// [`pack::pack_tile_panel16`]: `(x, cols, out)`.
    pub pack_tile16: fn(&[f32], usize, &mut [pack::TilePanel]),
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
    /// [`pack::dequantize_strip_bf16`]: `(ty, data, nr, k, out)`.
    pub dequantize: fn(TensorType, &[u8], usize, usize, &mut [u16]),
    /// Up to sixteen tokens packed as one bf16 tile, as [`pack::pack_bf16_tile`]:
    /// `(x, cols, out)`.
    pub pack: fn(&[f32], usize, &mut [u16]),
    /// Up to 32 f32 rows rounded to a bf16 strip, as [`pack::pack_bf16_strip`]: `(x, k, out)`.
    pub strip: fn(&[f32], usize, &mut [u16]),
    /// 32 f32 columns as a bf16 strip, as [`pack::pack_bf16_columns`]: `(x, ld, n, k, out)`.
    pub columns: fn(&[f32], usize, usize, usize, &mut [u16]),
    /// A strip of thirty-two bf16 weight rows against token tiles ([`Bf16Strip`]), as
    /// [`generic::gemm_bf16_32xn`], into `out`'s column `row` of row `token`.
    pub gemm: Bf16Gemm,
    /// Softmax's exponentials without the division, as [`generic::exp_sum`]: `x` becomes
    /// `e^(x - max x)` in place, and their sum is returned (the attention divides its
    /// outputs, `dh` a row, instead of the probabilities, a row of tokens).
    pub exp_sum: fn(&mut [f32]) -> f32,
}

/// The scalar references of the bf16 kernels (no CPU has them as its set: for tests).
pub const BF16_REFERENCE: Bf16Kernels = Bf16Kernels {
    dequantize: pack::dequantize_strip_bf16,
    pack: pack::pack_bf16_tile,
    strip: pack::pack_bf16_strip,
    columns: pack::pack_bf16_columns,
    gemm: generic::gemm_bf16_32xn,
    exp_sum: generic::exp_sum,
};

/// Groups of sixteen rows one call of a tile product ([`KernelSet::dot_q8_0_16x16`],
/// [`KernelSet::dot_q4_0_16x16`]) takes at most.
pub const AMX_ROW_GROUPS: usize = 8;

/// The 2 x 4 tile products' signature: two weight rows against four tokens' activation blocks,
/// `[row 0 x 4, row 1 x 4]`.
pub type TileProduct2x4 = fn([&[u8]; 2], [&[ActBlock]; 4]) -> [f32; 8];

/// The panel products' signature: two weight rows against panels of eight tokens of type `P`,
/// `[row 0 x 8, row 1 x 8]`.
pub type PanelProduct<P> = fn([&[u8]; 2], &[P]) -> [f32; 16];

/// The operands of a sixteen-row tile product ([`KernelSet::dot_q8_0_16x16`],
/// [`KernelSet::dot_q4_0_16x16`]).
#[derive(Clone, Copy, Debug)]
pub struct TileOperands<'a> {
    /// `groups` groups of sixteen weight rows from the start, `row_bytes` apart.
    pub w: &'a [u8],
    /// Bytes from one weight row to the next.
    pub row_bytes: usize,
    /// Blocks a row, at most [`pack::TILE_MAX_BLOCKS`].
    pub nb: usize,
    /// Each token tile's panels (`nb` for Q8_0, `2 * nb` for Q4_0), one tile after another.
    pub panels: &'a [pack::TilePanel],
    /// The rows' biases, or empty for none.
    pub bias: &'a [f32],
    /// Groups of sixteen rows, at most [`AMX_ROW_GROUPS`].
    pub groups: usize,
    /// Tokens.
    pub ntok: usize,
    /// Whether GELU is applied to the outputs as they are stored.
    pub gelu: bool,
}

/// The sixteen-row tile products' signature: the operands, and the rows `y[token][16 * group
/// + row]` the products go into.
pub type TileProduct = fn(&TileOperands<'_>, &mut RowsMut<'_>);

/// The operands of the bf16 strip product ([`Bf16Kernels::gemm`]).
#[derive(Clone, Copy, Debug)]
pub struct Bf16Strip<'a> {
    /// Thirty-two bf16 weight rows of `k` values as one strip ([`pack::strip_index`]).
    pub a: &'a [u16],
    /// Values a row (a multiple of 32).
    pub k: usize,
    /// `nt` tiles of sixteen tokens, rows of `k` bf16 values.
    pub b: &'a [u16],
    /// Token tiles.
    pub nt: usize,
    /// The rows' biases (zeros past `nr`).
    pub bias: &'a [f32; 32],
    /// Rows of the strip that are stored (at most 32).
    pub nr: usize,
    /// Tokens that are stored (at most `16 * nt`).
    pub ntok: usize,
    /// Whether GELU is applied to the outputs as they are stored.
    pub gelu: bool,
    /// The next strip's weights, brought into the cache while the product runs.
    pub next: &'a [u8],
}

/// The bf16 strip product's signature: the operands, and the rows `out[token][row]` the sums
/// go into.
pub type Bf16Gemm = fn(&Bf16Strip<'_>, &mut RowsMut<'_>);

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
    quantize: pack::quantize_activations,
    pack_panel16: pack::pack_panel16,
    pack_offset: pack::pack_offset_panel,
    pack_tile: pack::pack_tile_panel,
    pack_tile16: pack::pack_tile_panel16,
    bf16: None,
};

/// The bounds the SIMD 2 x 4 tile kernels rely on: both weight rows hold the four tokens'
/// blocks, and the four tokens have as many blocks.
#[cfg(any(
    all(feature = "std", target_arch = "x86_64"),
    target_arch = "aarch64",
    all(feature = "std", target_arch = "arm")
))]
pub(crate) fn check_tile(w: [&[u8]; 2], x: [&[ActBlock]; 4]) {
    let nb = x[0].len();
    check_panel_rows(w, nb, pack::Q8_0_BLOCK_BYTES);
    assert!(x.iter().all(|s| s.len() == nb));
}

/// The bounds the SIMD tile and panel kernels rely on: both weight rows hold `blocks` blocks
/// of `block_bytes`.
#[cfg(any(
    all(feature = "std", target_arch = "x86_64"),
    target_arch = "aarch64",
    all(feature = "std", target_arch = "arm")
))]
pub(crate) fn check_panel_rows(w: [&[u8]; 2], blocks: usize, block_bytes: usize) {
    assert!(w.iter().all(|w| w.len() >= blocks * block_bytes));
}

/// The shape a tile-panel packer takes: at most sixteen tokens of `cols` values (a multiple of
/// 32), one panel per block.
#[cfg(all(feature = "std", target_arch = "x86_64"))]
pub(crate) fn check_tile_pack(x: &[f32], cols: usize, out: &[pack::TilePanel], per: usize) {
    assert!(
        cols.is_multiple_of(QK)
            && x.len().is_multiple_of(cols.max(1))
            && x.len() / cols.max(1) <= pack::TILE_PANEL_TOKENS
            && out.len() == per * (cols / QK)
    );
}

/// Every kernel set this CPU runs, plainest (the scalar references) first, best last.
#[cfg(feature = "std")]
pub fn available() -> Vec<KernelSet> {
    #[allow(unused_mut)]
    let mut v = alloc::vec![GENERIC];
    #[cfg(target_arch = "x86_64")]
    {
        v.extend(super::x86_64::avx2());
        v.extend(super::x86_64::avx2_vnni_variants());
    }
    #[cfg(target_arch = "aarch64")]
    v.extend(super::aarch64::neon_variants());
    #[cfg(target_arch = "arm")]
    v.extend(super::arm::arm_neon());
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
