//! A linear layer's input in the forms its path's kernels take, made once per weight type.

use alloc::vec::Vec;

use super::path::{tile_panels_per_block, LinearPath, PanelPath};
use super::OUT_TILE;
use crate::kernels::pack::{
    self, ActBlock, OffsetPanel, Panel16, Panel8, BF16_TILE_TOKENS, PANEL_TOKENS,
};
use crate::kernels::set::KernelSet;
use crate::kernels::threads::{par_chunks_mut, par_map};
use crate::quant::{TensorType, QK};

/// A linear layer's input, quantized (and packed into panels) for a weight type on first use,
/// so that layers reading the same input (Q, K and V) quantize it once.
#[derive(Debug)]
pub struct Activations<'a> {
    pub(super) x: &'a [f32],
    pub(super) n: usize,
    /// The weight type the quantized forms below were made for.
    pub(super) ty: Option<TensorType>,
    /// The path chosen for `ty`.
    pub(super) path: Option<LinearPath>,
    /// Whether the rest rows' panels of the tile path are packed.
    pub(super) rest_packed: bool,
    pub(super) xq: Vec<ActBlock>,
    pub(super) xr: Vec<ActBlock>,
    /// Activations packed by eight tokens for Q8_0, when the kernel set multiplies panels.
    pub(super) panels: Vec<Panel8>,
    /// Activations in 16 bits packed by eight tokens for Q4_0, likewise.
    pub(super) panels16: Vec<Panel16>,
    /// Activations packed by eight tokens for Q8_0's offset kernels, likewise.
    pub(super) offset_panels: Vec<OffsetPanel>,
    /// Activations packed by sixteen tokens for Q8_0's tile kernel, when the kernel set has
    /// one.
    pub(super) tile_panels: Vec<pack::TilePanel>,
    /// How many of `tile_panels` hold this input's (the rest is storage kept for reuse).
    pub(super) tile_count: usize,
    /// Activations in bf16 packed by sixteen tokens, for the bf16 kernels.
    pub(super) bf16: pack::Bf16Buf,
}

/// Storage an input's [`Activations`] hand on to the next one's ([`Activations::reusing`]):
/// the bf16 tiles and the tile panels, written in full by their packers, so that each input
/// neither allocates nor zeroes them again (nor takes first-touch page faults on them).
#[derive(Debug, Default)]
pub struct ActStorage {
    bf16: pack::Bf16Buf,
    tiles: Vec<pack::TilePanel>,
}

impl ActStorage {
    /// Bytes of storage held.
    pub fn bytes(&self) -> usize {
        self.bf16.capacity() * 2 + self.tiles.capacity() * core::mem::size_of::<pack::TilePanel>()
    }
}

impl<'a> Activations<'a> {
    /// The input of `n` tokens; `x` is `[n, cols]` for the layers' `cols`.
    pub fn new(x: &'a [f32], n: usize) -> Self {
        Activations {
            x,
            n,
            ty: None,
            path: None,
            rest_packed: false,
            xq: Vec::new(),
            xr: Vec::new(),
            panels: Vec::new(),
            panels16: Vec::new(),
            offset_panels: Vec::new(),
            tile_panels: Vec::new(),
            tile_count: 0,
            bf16: pack::Bf16Buf::new(),
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
    pub(super) fn tiles(&self) -> &[pack::TilePanel] {
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

    /// The path chosen for the last weight type this input was prepared for.
    pub fn path(&self) -> Option<LinearPath> {
        self.path
    }

    /// Quantizes and packs for weights of type `ty` with `k`'s kernels as the layer's path
    /// ([`LinearPath::choose`]) needs, unless already done for that type (float weights need
    /// nothing). On the tile path, the activations also go into the rest rows' panels when
    /// `rows` is not a whole number of tiles.
    pub(super) fn prepare(
        &mut self,
        k: KernelSet,
        ty: TensorType,
        cols: usize,
        rows: usize,
    ) -> LinearPath {
        let (x, bpr) = (self.x, cols / QK);
        // Chunk `g` of `tokens` tokens (the last one short).
        let chunk =
            |g: usize, tokens: usize| &x[g * tokens * cols..((g + 1) * tokens * cols).min(x.len())];
        // The tokens of panel `g`.
        let group = |g: usize| chunk(g, PANEL_TOKENS);
        let groups = self.n.div_ceil(PANEL_TOKENS);
        // Panels of eight tokens for a panel path, on the pool.
        let pack_panels = |this: &mut Self, p: PanelPath| match p {
            PanelPath::Offset(_) => {
                let panels = par_map(groups, |g| {
                    let mut out = Vec::with_capacity(bpr);
                    (k.pack_offset)(group(g), cols, &mut out);
                    out
                });
                this.offset_panels = panels.concat();
            }
            PanelPath::Bytes(_) => {
                // Quantized and packed by panels.
                let panels = par_map(groups, |g| {
                    let mut xq = Vec::with_capacity(PANEL_TOKENS * bpr);
                    (k.quantize)(group(g), &mut xq);
                    let toks: Vec<&[ActBlock]> = xq.chunks_exact(bpr).collect();
                    let mut out = Vec::with_capacity(bpr);
                    pack::pack_panel(&toks, bpr, &mut out);
                    out
                });
                this.panels = panels.concat();
            }
            PanelPath::Split16(_) => {
                // 16-bit panels split into byte panels.
                let panels = par_map(groups, |g| {
                    let mut p16 = Vec::with_capacity(bpr);
                    (k.pack_panel16)(group(g), cols, &mut p16);
                    p16.iter().flat_map(pack::split_panel16).collect::<Vec<_>>()
                });
                this.panels = panels.concat();
            }
            PanelPath::Wide16(_) => {
                let panels = par_map(groups, |g| {
                    let mut out = Vec::with_capacity(bpr);
                    (k.pack_panel16)(group(g), cols, &mut out);
                    out
                });
                this.panels16 = panels.concat();
            }
        };
        // Tile panels serve whole tiles of rows; the rest rows' kernel takes its own panels,
        // packed once the first layer with such rows asks.
        let rest_panels = |this: &mut Self, path: LinearPath| {
            if let LinearPath::Tiles { rest, .. } = path {
                if !rows.is_multiple_of(OUT_TILE) && !this.rest_packed {
                    pack_panels(this, rest);
                    this.rest_packed = true;
                }
            }
            path
        };
        if let Some(path) = self.path.filter(|_| self.ty == Some(ty)) {
            return rest_panels(self, path);
        }
        let path = LinearPath::choose(&k, ty, cols, self.n);
        self.ty = Some(ty);
        self.path = Some(path);
        self.xq.clear();
        self.xr.clear();
        self.panels.clear();
        self.panels16.clear();
        self.offset_panels.clear();
        self.rest_packed = false;
        self.tile_count = 0;
        self.bf16.clear();
        match path {
            LinearPath::Bf16(bk) => {
                // Tiles packed in place, on the pool.
                let tile = BF16_TILE_TOKENS * cols;
                // Every value is written by `pack`.
                self.bf16
                    .resize_any(self.n.div_ceil(BF16_TILE_TOKENS) * tile);
                par_chunks_mut(self.bf16.as_mut_slice(), tile, |g, out| {
                    (bk.pack)(chunk(g, BF16_TILE_TOKENS), cols, out)
                });
            }
            LinearPath::Tiles { pack, .. } => {
                // Tile panels of sixteen tokens, packed in place on the pool.
                let n = self.n.div_ceil(pack::TILE_PANEL_TOKENS);
                let len = tile_panels_per_block(ty) * bpr;
                // On earlier inputs' storage (grown, never shrunk), each panel rewritten in
                // full below.
                self.tile_count = n * len;
                if self.tile_panels.len() < n * len {
                    self.tile_panels.resize(n * len, pack::ZERO_TILE_PANEL);
                }
                par_chunks_mut(&mut self.tile_panels[..n * len], len.max(1), |g, out| {
                    pack(chunk(g, pack::TILE_PANEL_TOKENS), cols, out)
                });
            }
            LinearPath::Panels(p) => pack_panels(self, p),
            LinearPath::Q8Rows => (k.quantize)(x, &mut self.xq),
            LinearPath::Q4TwoLevel => {
                pack::quantize_two_level_with(self.x, &mut self.xq, &mut self.xr, k.quantize);
            }
            LinearPath::Float => {}
        }
        rest_panels(self, path)
    }
}
