//! LayerNorm over rows, with the residual sum taken inside the same tasks.

use super::set::active;
use super::threads::par_chunks_mut;

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
