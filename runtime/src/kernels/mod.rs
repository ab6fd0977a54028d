//! Compute kernels, in tract-linalg's layout: this module is the frame (the functions the
//! encoder calls, and the dispatch), [`generic`] holds the scalar references every optimized
//! variant is tested against.

pub mod generic;

use crate::weights::Matrix;

/// `y[t, o] = sum_i x[t, i] * W[o, i] + bias[o]` for `n` tokens; `x` is `[n, W.cols]`, `y` is
/// `[n, W.rows]`, row-major.
pub fn linear(x: &[f32], n: usize, w: &Matrix<'_>, bias: &[f32], y: &mut [f32]) {
    generic::linear(x, n, w, bias, y)
}

/// LayerNorm of each row of `x` (rows of `w.len()`), in place.
pub fn layer_norm(x: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
    generic::layer_norm(x, w, b, eps)
}

/// Softmax of `x` in place.
pub fn softmax(x: &mut [f32]) {
    generic::softmax(x)
}

/// Exact GELU, `x * Phi(x)`, in place.
pub fn gelu(x: &mut [f32]) {
    generic::gelu(x)
}

/// Dot product.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    generic::dot(a, b)
}
