//! The linear layer `y = x W^T + b`: its activations' quantized and packed forms, the path
//! its product takes, and the split of the work across threads.

mod activations;
mod path;
mod run;

pub use activations::{ActStorage, Activations};
#[cfg(all(feature = "std", target_arch = "x86_64"))]
pub(crate) use path::tile_panels_per_block;
pub use path::{bf16_min_tokens, LinearPath, PanelPath, TilePack};

#[cfg(feature = "std")]
use super::pack::{BF16_TILE_TOKENS, PANEL_TOKENS};
#[cfg(feature = "std")]
use super::rows::SharedRows;
use super::set::{active, KernelSet};
#[cfg(feature = "std")]
use super::threads::par_map;
use super::{gelu, gemm, pack};
use crate::quant::TensorType;
use crate::weights::Matrix;
use run::{Dest, LinearJob, Out};

/// Tokens whose activations stay in L1 while a chunk of weight rows passes over them.
const TOKEN_TILE: usize = 16;

// The sixteen-row tile kernel takes a whole token tile per call.
const _: () = assert!(TOKEN_TILE == pack::TILE_PANEL_TOKENS);

/// Below this many multiply-adds a linear layer runs on one thread.
#[cfg(feature = "std")]
const PARALLEL_MIN_MACS: usize = 1 << 16;

/// Output rows a panel kernel fills in a local tile before they are stored.
const OUT_TILE: usize = 16;

/// Fewest tokens for which Q8_0 linear layers take the bf16 kernels: each layer decodes all
/// its weights to bf16, which fewer tokens do not pay back (the integer tile kernel takes
/// them). Measured by alternating passes of the two paths (`PETAL_KERNELS`, docs/PERFORMANCE.md).
pub const BF16_MIN_TOKENS: usize = 256;

/// Fewest tokens for which Q4_0 linear layers take the bf16 kernels when the set also has
/// Q4_0's tile product. Its two tile products a block (16-bit activations) and their joined
/// sums cost more than Q8_0's one, and Q4_0's weights are half the bytes to decode, so the
/// crossing comes earlier than [`BF16_MIN_TOKENS`].
pub const Q4_0_BF16_MIN_TOKENS: usize = 64;

/// Below this many tokens, linear layers on the bf16 kernels split their rows across threads
/// (each weight decoded once) rather than their tokens (each thread decoding every weight).
#[cfg(feature = "std")]
const BF16_ROW_SPLIT_MAX_TOKENS: usize = 512;

/// Below this many tokens, linear layers on the tile kernel split their rows across threads;
/// from here, their tokens (each task reads every weight, for its own token tiles). The
/// kernel takes every token tile in one call, so splitting rows costs no extra calls.
#[cfg(feature = "std")]
const TILE_ROW_SPLIT_MAX_TOKENS: usize = 256;

/// Weight rows per bf16 strip.
pub(crate) const BF16_ROWS: usize = pack::BF16_STRIP_ROWS;

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
    linear_job(active(), act, w, bias, y, false);
}

/// [`linear_with`] on the kernel set `k` instead of the active one (for tests and comparisons
/// that run every path on one CPU).
pub fn linear_with_set(
    k: KernelSet,
    act: &mut Activations<'_>,
    w: &Matrix<'_>,
    bias: &[f32],
    y: &mut [f32],
) {
    linear_job(k, act, w, bias, y, false);
}

/// [`linear_with`] followed by the exact GELU ([`gelu`]): the bf16 kernels and the tile kernel
/// apply it as they store each output (no second pass over `y`), the others after the product.
pub fn linear_gelu_with(act: &mut Activations<'_>, w: &Matrix<'_>, bias: &[f32], y: &mut [f32]) {
    if !linear_job(active(), act, w, bias, y, true) {
        gelu(y);
    }
}

/// The linear layer's frame; with `gelu`, the bf16 kernels or the tile kernel apply GELU to
/// the outputs. Returns whether they did.
fn linear_job(
    k: KernelSet,
    act: &mut Activations<'_>,
    w: &Matrix<'_>,
    bias: &[f32],
    y: &mut [f32],
    gelu: bool,
) -> bool {
    let (n, rows, cols) = (act.n, w.rows, w.cols);
    debug_assert_eq!(act.x.len(), n * cols);
    debug_assert_eq!(y.len(), n * rows);
    if n == 0 {
        return true;
    }
    let path = act.prepare(k, w.ty, cols, rows);
    let tiles = matches!(path, LinearPath::Tiles { .. });
    let bf16 = matches!(path, LinearPath::Bf16(_));
    // The bf16 kernels, and the tile kernel when it takes every row, apply GELU as they store.
    let gelu = gelu && (tiles && rows % OUT_TILE == 0 || bf16);
    let job = LinearJob {
        k,
        path,
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
            let row_split = if bf16 {
                n < BF16_ROW_SPLIT_MAX_TOKENS
            } else {
                tiles && n < TILE_ROW_SPLIT_MAX_TOKENS
            };
            if row_split && rows >= 2 * BF16_ROWS {
                // Chunks of rows per thread, so that each weight is decoded (or read) once:
                // each task writes its own columns of `y` (a copy of each task's block into
                // `y` was a tenth of a 128-token pass at two threads).
                let chunk_rows = rows.div_ceil(threads).next_multiple_of(BF16_ROWS);
                let shared = SharedRows::new(y, rows);
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
                let (tasks, align) = if tiles {
                    (threads * 2, TOKEN_TILE)
                } else if !bf16 {
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
                let pair = if tiles { OUT_TILE } else { 2 };
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
    use gemm::{gemm, Strides, View, ViewMut};
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
            View::new(&dy[t0 * rows..(t0 + nt) * rows], Strides::rows(rows)),
            View::new(wf, Strides::rows(cols)),
            1.0,
            ViewMut::new(dx, Strides::rows(cols)),
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
