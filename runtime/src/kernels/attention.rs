//! One attention head in bf16 on the strip kernels.

use alloc::vec::Vec;

use super::pack;
use super::pack::BF16_STRIP_ROWS as BF16_ROWS;
use super::pack::BF16_TILE_TOKENS;
use super::rows::RowsMut;
use super::set::{active, Bf16Kernels, Bf16Strip};

/// Fewest tokens for which attention takes the bf16 kernels.
pub const BF16_ATTENTION_MIN_TOKENS: usize = 32;

/// One attention head of one sequence in bf16, when the active set has bf16 kernels, `n` is at
/// least [`BF16_ATTENTION_MIN_TOKENS`] and `dh` a multiple of 32 (else `None`):
/// `softmax(scale * q k^T) v` as `[n, dh]`, for `n` tokens whose head values are `q[i * ld..]`
/// (`dh` of them), likewise `k` and `v`. Queries (times `scale`), keys, values and the
/// probabilities are rounded to bf16 (as [`pack::bf16_bits`]); scores, softmax and sums are
/// f32. Keys are the strips' rows (padded to a multiple of 32 with zeros), queries the token
/// tiles; then the values' columns are the rows against the probabilities as tokens. `scratch`
/// is working memory kept from head to head.
pub fn attention_bf16(head: &Head<'_>, scratch: &mut AttentionScratch) -> Option<Vec<f32>> {
    let bk = active().bf16?;
    if head.n < BF16_ATTENTION_MIN_TOKENS || !head.dh.is_multiple_of(BF16_ROWS) {
        return None;
    }
    Some(attention_bf16_with(bk, head, scratch))
}

/// One attention head's operands: `n` tokens whose head values are `q[i * ld..][..dh]`,
/// likewise `k` and `v`, and the scores' scale.
#[derive(Clone, Copy, Debug)]
pub struct Head<'a> {
    /// Queries.
    pub q: &'a [f32],
    /// Keys.
    pub k: &'a [f32],
    /// Values.
    pub v: &'a [f32],
    /// Distance from one token's values to the next's.
    pub ld: usize,
    /// Tokens.
    pub n: usize,
    /// Values a head.
    pub dh: usize,
    /// The scores' scale (`1 / sqrt(dh)`).
    pub scale: f32,
}

/// Working memory of [`attention_bf16`], kept from head to head (a task's heads reuse it
/// instead of zeroing fresh buffers for each).
#[derive(Debug, Default)]
pub struct AttentionScratch {
    queries: Vec<f32>,
    qt: pack::Bf16Buf,
    keys: Vec<f32>,
    kr: pack::Bf16Buf,
    scores: Vec<f32>,
    /// Each query's sum of exponentials.
    sums: Vec<f32>,
    pt: pack::Bf16Buf,
    vt: pack::Bf16Buf,
}

/// [`attention_bf16`] on the given kernels (tests compare each set with the references).
pub fn attention_bf16_with(
    bk: Bf16Kernels,
    operands: &Head<'_>,
    scratch: &mut AttentionScratch,
) -> Vec<f32> {
    let Head {
        q,
        k,
        v,
        ld,
        n,
        dh,
        scale,
    } = *operands;
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
    pack::pack_bf16_tiles_with(bk.pack, queries, dh, qt);
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
        let strip = Bf16Strip {
            a: &kr[j0 * dh..],
            k: dh,
            b: qt,
            nt,
            bias: &zero,
            nr,
            ntok: n,
            gelu: false,
            next: &[],
        };
        (bk.gemm)(&strip, &mut s.window(0, j0, nr));
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
    pack::pack_bf16_tiles_with(bk.pack, scores, m, pt);
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
        let strip = Bf16Strip {
            a: &vt[d0 * m..],
            k: m,
            b: pt,
            nt,
            bias: &zero,
            nr: BF16_ROWS,
            ntok: n,
            gelu: false,
            next: &[],
        };
        (bk.gemm)(&strip, &mut o.window(0, d0, BF16_ROWS));
    }
    for (row, s) in out.chunks_exact_mut(dh).zip(sums.iter()) {
        let inv = 1.0 / s;
        row.iter_mut().for_each(|v| *v *= inv);
    }
    out
}
