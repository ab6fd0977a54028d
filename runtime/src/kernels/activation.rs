//! Element-wise operations on the active set: softmax, GELU, dot products.

use super::set::active;

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

/// Dot product.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    (active().dot_f32)(a, b)
}
