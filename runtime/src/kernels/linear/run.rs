//! A linear layer's product over rows and tokens on its path's kernels, into an output view.

use alloc::vec::Vec;

use super::activations::Activations;
use super::path::{tile_panels_per_block, LinearPath, PanelPath};
use super::{BF16_ROWS, OUT_TILE, TOKEN_TILE};
use crate::kernels::pack::{self, BF16_TILE_TOKENS, PANEL_TOKENS};
use crate::kernels::rows::RowsMut;
use crate::kernels::set::{
    Bf16Kernels, Bf16Strip, KernelSet, TileOperands, TileProduct, AMX_ROW_GROUPS,
};
use crate::quant::QK;
use crate::weights::Matrix;

/// One linear layer's operands.
pub(super) struct LinearJob<'a> {
    pub(super) k: KernelSet,
    /// The path [`Activations::prepare`] chose and prepared for.
    pub(super) path: LinearPath,
    pub(super) w: &'a Matrix<'a>,
    pub(super) bias: &'a [f32],
    pub(super) act: &'a Activations<'a>,
    /// GELU applied by the kernels as they store (bf16 strips only).
    pub(super) gelu: bool,
}

/// Where a linear layer's outputs go: `y[(t - t0) * ts + (o - r0) * os]` for token `t` and
/// output row `o`.
pub(super) struct Out<'a> {
    pub(super) y: Dest<'a>,
    pub(super) t0: usize,
    pub(super) r0: usize,
    pub(super) ts: usize,
    pub(super) os: usize,
}

/// Where a task's outputs go.
pub(super) enum Dest<'a> {
    /// Its own slice.
    Own(&'a mut [f32]),
    /// Its own columns of rows that other tasks fill in other columns.
    #[cfg_attr(not(feature = "std"), allow(dead_code))]
    Shared(RowsMut<'a>),
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
            // Whole tiles as fixed-size copies (vector moves), not a call to memcpy per tile.
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

impl LinearJob<'_> {
    /// Computes outputs of rows `rows` for tokens `tokens` into `out`.
    /// Tokens go in tiles of TOKEN_TILE whose activations stay in L1 while the rows pass over
    /// them; Q8_0 rows go in pairs against eight (panels) or four tokens at a time.
    pub(super) fn run(
        &self,
        rows: core::ops::Range<usize>,
        tokens: core::ops::Range<usize>,
        out: &mut Out<'_>,
    ) {
        let (k, w) = (self.k, self.w);
        let mut rows = rows;
        let panel = match self.path {
            LinearPath::Bf16(bk) => return self.run_bf16(bk, rows, tokens, out),
            LinearPath::Tiles { product, rest, .. } => {
                // Whole groups of sixteen rows on the tile kernel, the rest (only in layers
                // whose rows are not a whole number of tiles) on the rest rows' panels below.
                debug_assert!(tokens.start.is_multiple_of(TOKEN_TILE));
                let whole = rows.start + rows.len() / OUT_TILE * OUT_TILE;
                self.run_tiles(product, rows.start..whole, tokens.clone(), out);
                rows = whole..rows.end;
                debug_assert!(rows.is_empty() || self.act.rest_packed);
                Some(rest)
            }
            LinearPath::Panels(p) => Some(p),
            _ => None,
        };
        let cols = w.cols;
        let bpr = cols / QK;
        let bias = |o: usize| self.bias_of(o);
        let a = self.act;
        let tok = |t: usize| &a.xq[t * bpr..(t + 1) * bpr];
        let mut buf = Vec::new();
        for t0 in tokens.clone().step_by(TOKEN_TILE) {
            let t1 = (t0 + TOKEN_TILE).min(tokens.end);
            match (self.path, panel) {
                (_, Some(p)) => {
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
                                let r = match p {
                                    PanelPath::Offset(f) => f(wr, &a.offset_panels[at]),
                                    PanelPath::Bytes(f) => f(wr, &a.panels[at]),
                                    PanelPath::Split16(f) => {
                                        f(wr, &a.panels[2 * at.start..2 * at.end])
                                    }
                                    PanelPath::Wide16(f) => f(wr, &a.panels16[at]),
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
                (LinearPath::Q8Rows, None) => {
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
                (LinearPath::Q4TwoLevel, None) => {
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
                (LinearPath::Float, None) => {
                    buf.resize(cols, 0.0);
                    for o in rows.clone() {
                        w.dequantize_row(o, &mut buf);
                        for t in t0..t1 {
                            let v = (k.dot_f32)(&a.x[t * cols..(t + 1) * cols], &buf);
                            out.put(t, o, v + bias(o));
                        }
                    }
                }
                // The bf16 path returned above; the tile and panel paths have their panels.
                (LinearPath::Bf16(_) | LinearPath::Tiles { .. } | LinearPath::Panels(_), None) => {
                    unreachable!("a panel path without panels")
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
            let op = TileOperands {
                w: &w.data[c0 * rb..],
                row_bytes: rb,
                nb: bpr,
                panels: p,
                bias,
                groups: n,
                ntok,
                gelu: self.gelu,
            };
            if direct {
                let (t, r) = (tokens.start - out.t0, c0 - out.r0);
                let mut y = out.rows();
                let mut y = y.window(t, r, n * OUT_TILE);
                f(&op, &mut y);
            } else {
                let mut y = RowsMut::new(&mut r, width);
                f(&op, &mut y);
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
        let mut strip = pack::Bf16Buf::zeros(BF16_ROWS * cols);
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
            let (t0, r0, nr) = (tokens.start - out.t0, c0 - out.r0, c1 - c0);
            let s = Bf16Strip {
                a: strip,
                k: cols,
                b,
                nt,
                bias: &bias,
                nr,
                ntok: tokens.len(),
                gelu: self.gelu,
                next,
            };
            if direct {
                let mut y = out.rows();
                (bk.gemm)(&s, &mut y.window(t0, r0, nr));
            } else {
                let mut y = RowsMut::new(&mut r, BF16_ROWS);
                (bk.gemm)(&s, &mut y);
                for (t, r) in tokens.clone().zip(r.chunks_exact(BF16_ROWS)) {
                    out.put_rows(t, c0, &r[..c1 - c0]);
                }
            }
        }
    }
}
