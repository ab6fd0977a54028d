//! The path a linear layer's product takes, chosen in one place for preparing and running.

use super::{BF16_MIN_TOKENS, Q4_0_BF16_MIN_TOKENS};
use crate::kernels::pack::{self, OffsetPanel, Panel16, Panel8};
use crate::kernels::set::{Bf16Kernels, KernelSet, PanelProduct, TileProduct};
use crate::quant::{TensorType, QK};

/// How a linear layer's product runs, with the kernels it calls: chosen once per weight type,
/// kernel set and input ([`LinearPath::choose`]), then used both to prepare the activations
/// ([`Activations`]) and to run the product.
#[derive(Clone, Copy, Debug)]
pub enum LinearPath {
    /// Quantized weights decoded to bf16 by strips of [`BF16_ROWS`] rows, each strip against
    /// every bf16 token tile.
    Bf16(Bf16Kernels),
    /// Whole groups of sixteen quantized rows on a tile product against sixteen-token tile
    /// panels (packed by `pack`); the rows past the last whole group on `rest`.
    Tiles {
        /// The sixteen-row tile product.
        product: TileProduct,
        /// The packer of its tile panels.
        pack: TilePack,
        /// The rest rows' panel product.
        rest: PanelPath,
    },
    /// Pairs of quantized rows against panels of eight tokens.
    Panels(PanelPath),
    /// Q8_0 without panel kernels: pairs of rows against four tokens, then one at a time.
    Q8Rows,
    /// Q4_0 without panel kernels: each row against the activations in two 8-bit levels (the
    /// quantized activations and their quantized residual).
    Q4TwoLevel,
    /// F32 and F16 weights: each row decoded to f32, one dot product per token.
    Float,
}

/// A panel path's product (and so its activations' packing).
#[derive(Clone, Copy, Debug)]
pub enum PanelPath {
    /// Q8_0 against offset panels ([`KernelSet::dot_q8_0_2x8_offset`]).
    Offset(PanelProduct<OffsetPanel>),
    /// Q8_0 against 8-bit panels ([`KernelSet::dot_q8_0_2x8`]).
    Bytes(PanelProduct<Panel8>),
    /// Q4_0 against 16-bit panels split into byte panels ([`KernelSet::dot_q4_0_2x8_split`]).
    Split16(PanelProduct<Panel8>),
    /// Q4_0 against 16-bit panels ([`KernelSet::dot_q4_0_2x8`]).
    Wide16(PanelProduct<Panel16>),
}

impl LinearPath {
    /// The path of a layer with weights of type `ty` and `cols` inputs, for `tokens` tokens,
    /// on `k`: the bf16 strips from [`bf16_min_tokens`] tokens, else the tile product (when
    /// the set has one, a panel kernel for the rest rows, and rows within its blocks), else
    /// the panel kernels, else the row products; F32 and F16 always on the float path.
    pub fn choose(k: &KernelSet, ty: TensorType, cols: usize, tokens: usize) -> Self {
        let quantized = matches!(ty, TensorType::Q8_0 | TensorType::Q4_0);
        if let Some(bk) = k
            .bf16
            .filter(|_| quantized && tokens >= bf16_min_tokens(k, ty))
        {
            return LinearPath::Bf16(bk);
        }
        let fits = cols / QK <= pack::TILE_MAX_BLOCKS;
        match ty {
            TensorType::Q8_0 => match (k.dot_q8_0_16x16, k.dot_q8_0_2x8_offset, k.dot_q8_0_2x8) {
                (Some(product), Some(rest), _) if fits => LinearPath::Tiles {
                    product,
                    pack: k.pack_tile,
                    rest: PanelPath::Offset(rest),
                },
                (_, Some(f), _) => LinearPath::Panels(PanelPath::Offset(f)),
                (_, None, Some(f)) => LinearPath::Panels(PanelPath::Bytes(f)),
                _ => LinearPath::Q8Rows,
            },
            TensorType::Q4_0 => match (k.dot_q4_0_16x16, k.dot_q4_0_2x8, k.dot_q4_0_2x8_split) {
                (Some(product), Some(rest), _) if fits => LinearPath::Tiles {
                    product,
                    pack: k.pack_tile16,
                    rest: PanelPath::Wide16(rest),
                },
                (_, _, Some(f)) => LinearPath::Panels(PanelPath::Split16(f)),
                (_, Some(f), None) => LinearPath::Panels(PanelPath::Wide16(f)),
                _ => LinearPath::Q4TwoLevel,
            },
            _ => LinearPath::Float,
        }
    }

    /// The path's name, for reports and tests: `bf16`, `tiles`, `offset`, `panel8`,
    /// `split16`, `panel16`, `rows`, `two-level` or `float`.
    pub fn name(&self) -> &'static str {
        match self {
            LinearPath::Bf16(_) => "bf16",
            LinearPath::Tiles { .. } => "tiles",
            LinearPath::Panels(PanelPath::Offset(_)) => "offset",
            LinearPath::Panels(PanelPath::Bytes(_)) => "panel8",
            LinearPath::Panels(PanelPath::Split16(_)) => "split16",
            LinearPath::Panels(PanelPath::Wide16(_)) => "panel16",
            LinearPath::Q8Rows => "rows",
            LinearPath::Q4TwoLevel => "two-level",
            LinearPath::Float => "float",
        }
    }
}

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

/// Tile panels a block of 32 values of each token tile takes on the tile product for weights
/// of type `ty`: one for Q8_0, two for Q4_0 (the 16-bit values' high and low bytes).
pub(crate) fn tile_panels_per_block(ty: TensorType) -> usize {
    if ty == TensorType::Q4_0 {
        2
    } else {
        1
    }
}

/// A tile panel packer's signature: `(x, cols, out)`.
pub type TilePack = fn(&[f32], usize, &mut [pack::TilePanel]);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{generic, RowsMut, TileOperands, BF16_REFERENCE, GENERIC};

    /// A tile product that is only chosen, never run.
    fn tiles(_: &TileOperands<'_>, _: &mut RowsMut<'_>) {
        unreachable!("chosen, not run")
    }

    fn path(k: &KernelSet, ty: TensorType, cols: usize, tokens: usize) -> &'static str {
        LinearPath::choose(k, ty, cols, tokens).name()
    }

    #[test]
    fn the_path_follows_the_kernels_a_set_has() {
        use TensorType::*;
        let g = GENERIC;
        for ty in [F32, F16] {
            assert_eq!(path(&g, ty, 384, 16), "float");
        }
        assert_eq!(path(&g, Q8_0, 384, 16), "rows");
        assert_eq!(path(&g, Q4_0, 384, 16), "two-level");
        let panels = KernelSet {
            dot_q8_0_2x8: Some(generic::dot_q8_0_2x8),
            dot_q4_0_2x8: Some(generic::dot_q4_0_2x8),
            ..g
        };
        assert_eq!(path(&panels, Q8_0, 384, 16), "panel8");
        assert_eq!(path(&panels, Q4_0, 384, 16), "panel16");
        let offset = KernelSet {
            dot_q8_0_2x8_offset: Some(generic::dot_q8_0_2x8_offset),
            dot_q4_0_2x8_split: Some(generic::dot_q4_0_2x8_split),
            ..panels
        };
        assert_eq!(path(&offset, Q8_0, 384, 16), "offset");
        assert_eq!(path(&offset, Q4_0, 384, 16), "split16");
        let amx = KernelSet {
            dot_q8_0_16x16: Some(tiles),
            dot_q4_0_16x16: Some(tiles),
            dot_q4_0_2x8_split: None,
            ..offset
        };
        assert_eq!(path(&amx, Q8_0, 384, 16), "tiles");
        assert_eq!(path(&amx, Q4_0, 384, 16), "tiles");
        // Rows longer than a tile call takes: the panels.
        let long = (pack::TILE_MAX_BLOCKS + 1) * QK;
        assert_eq!(path(&amx, Q8_0, long, 16), "offset");
        assert_eq!(path(&amx, Q4_0, long, 16), "panel16");
        // Without the rest rows' kernel, no tiles.
        let no_rest = KernelSet {
            dot_q8_0_2x8_offset: None,
            ..amx
        };
        assert_eq!(path(&no_rest, Q8_0, 384, 16), "panel8");
        let bf16 = KernelSet {
            bf16: Some(BF16_REFERENCE),
            ..amx
        };
        assert_eq!(path(&bf16, Q8_0, 384, BF16_MIN_TOKENS - 1), "tiles");
        assert_eq!(path(&bf16, Q8_0, 384, BF16_MIN_TOKENS), "bf16");
        assert_eq!(path(&bf16, Q4_0, 384, Q4_0_BF16_MIN_TOKENS - 1), "tiles");
        assert_eq!(path(&bf16, Q4_0, 384, Q4_0_BF16_MIN_TOKENS), "bf16");
        assert_eq!(path(&bf16, F16, 384, 1024), "float");
        // Q4_0 without its tile product takes bf16 from one token.
        let bf16_only = KernelSet {
            bf16: Some(BF16_REFERENCE),
            ..panels
        };
        assert_eq!(path(&bf16_only, Q4_0, 384, 1), "bf16");
        assert_eq!(path(&bf16_only, Q8_0, 384, 1), "panel8");
    }
}
