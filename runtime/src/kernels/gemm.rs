//! f32 matrix products for the backward pass and the small trainable layers, through the
//! `matrixmultiply` crate (packed, cache-blocked AVX2/FMA/NEON micro-kernels picked at run
//! time), behind a bounds-checked safe wrapper.

/// A row-major or transposed view: element `(i, j)` is at `i * row_stride + j * col_stride`.
#[derive(Clone, Copy, Debug)]
pub struct Strides {
    /// Distance between rows.
    pub row: usize,
    /// Distance between columns.
    pub col: usize,
}

impl Strides {
    /// A row-major matrix with `cols` columns.
    pub const fn rows(cols: usize) -> Self {
        Strides { row: cols, col: 1 }
    }

    /// The transpose of a row-major matrix with `cols` columns.
    pub const fn transposed(cols: usize) -> Self {
        Strides { row: 1, col: cols }
    }

    /// Index one past the last element of an `r` x `c` view.
    fn extent(&self, r: usize, c: usize) -> usize {
        if r == 0 || c == 0 {
            0
        } else {
            (r - 1) * self.row + (c - 1) * self.col + 1
        }
    }
}

/// `c = beta * c + a * b` with `a` `m` x `k`, `b` `k` x `n`, `c` `m` x `n`, each with its
/// strides.
///
/// # Panics
/// When a view reaches past its slice.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    sa: Strides,
    b: &[f32],
    sb: Strides,
    beta: f32,
    c: &mut [f32],
    sc: Strides,
) {
    assert!(
        sa.extent(m, k) <= a.len() && sb.extent(k, n) <= b.len() && sc.extent(m, n) <= c.len(),
        "gemm: view out of bounds"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for i in 0..m {
            for j in 0..n {
                c[i * sc.row + j * sc.col] *= beta;
            }
        }
        return;
    }
    // SAFETY: the assertion above keeps every element the three views address inside its
    // slice; `c` is borrowed mutably and does not alias `a` or `b`; strides fit in isize
    // because they index within slices.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            sa.row as isize,
            sa.col as isize,
            b.as_ptr(),
            sb.row as isize,
            sb.col as isize,
            beta,
            c.as_mut_ptr(),
            sc.row as isize,
            sc.col as isize,
        );
    }
}

/// Scalar reference of [`gemm`], for the tests.
#[allow(clippy::too_many_arguments)]
pub fn gemm_reference(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    sa: Strides,
    b: &[f32],
    sb: Strides,
    beta: f32,
    c: &mut [f32],
    sc: Strides,
) {
    for i in 0..m {
        for j in 0..n {
            let mut s = 0f64;
            for p in 0..k {
                s += a[i * sa.row + p * sa.col] as f64 * b[p * sb.row + j * sb.col] as f64;
            }
            let at = i * sc.row + j * sc.col;
            c[at] = beta * c[at] + s as f32;
        }
    }
}
