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

    /// Index one past the last element of an `r` x `c` view; `None` when it overflows.
    fn extent(&self, r: usize, c: usize) -> Option<usize> {
        if r == 0 || c == 0 {
            return Some(0);
        }
        (r - 1)
            .checked_mul(self.row)?
            .checked_add((c - 1).checked_mul(self.col)?)?
            .checked_add(1)
    }

    /// Whether every element of an `r` x `c` view has its own index (what an output view
    /// needs: matrixmultiply writes each element once and forbids aliasing). Accepts the views
    /// whose rows (or columns) do not overlap: row-major, transposed, or padded.
    fn is_distinct(&self, r: usize, c: usize) -> bool {
        let fits = |outer: usize, inner: usize, n_inner: usize| {
            inner >= 1 && n_inner.checked_mul(inner).is_some_and(|span| outer >= span)
        };
        r <= 1 && (c <= 1 || self.col >= 1)
            || c <= 1 && self.row >= 1
            || fits(self.row, self.col, c)
            || fits(self.col, self.row, r)
    }
}

/// A matrix operand: values and the strides that place element `(i, j)` among them.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    /// The values.
    pub data: &'a [f32],
    /// Where each element is.
    pub strides: Strides,
}

impl<'a> View<'a> {
    /// `data` viewed with `strides`.
    pub fn new(data: &'a [f32], strides: Strides) -> Self {
        View { data, strides }
    }
}

/// The output operand: values written in place, and their strides.
#[derive(Debug)]
pub struct ViewMut<'a> {
    /// The values.
    pub data: &'a mut [f32],
    /// Where each element is.
    pub strides: Strides,
}

impl<'a> ViewMut<'a> {
    /// `data` viewed with `strides`.
    pub fn new(data: &'a mut [f32], strides: Strides) -> Self {
        ViewMut { data, strides }
    }
}

/// `c = beta * c + a * b` with `a` `m` x `k`, `b` `k` x `n`, `c` `m` x `n`, each with its
/// strides.
///
/// # Panics
/// When a view reaches past its slice (or its extent overflows), or when `c`'s strides make
/// two of its elements one.
pub fn gemm(m: usize, k: usize, n: usize, a: View<'_>, b: View<'_>, beta: f32, c: ViewMut<'_>) {
    let (
        View {
            data: a,
            strides: sa,
        },
        View {
            data: b,
            strides: sb,
        },
    ) = (a, b);
    let ViewMut {
        data: c,
        strides: sc,
    } = c;
    let within =
        |s: Strides, r: usize, cols: usize, len: usize| s.extent(r, cols).is_some_and(|e| e <= len);
    assert!(
        within(sa, m, k, a.len()) && within(sb, k, n, b.len()) && within(sc, m, n, c.len()),
        "gemm: view out of bounds"
    );
    assert!(sc.is_distinct(m, n), "gemm: output strides alias");
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
    // SAFETY: the assertions above keep every element the three views address inside its
    // slice (with no overflow on the way) and give each element of `c` its own index; `c` is
    // borrowed mutably and does not alias `a` or `b`; strides fit in isize because they index
    // within slices.
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
pub fn gemm_reference(
    m: usize,
    k: usize,
    n: usize,
    a: View<'_>,
    b: View<'_>,
    beta: f32,
    c: ViewMut<'_>,
) {
    let (
        View {
            data: a,
            strides: sa,
        },
        View {
            data: b,
            strides: sb,
        },
    ) = (a, b);
    let ViewMut {
        data: c,
        strides: sc,
    } = c;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflowing_views_are_refused() {
        let huge = Strides {
            row: usize::MAX / 2 + 1,
            col: 1,
        };
        assert_eq!(huge.extent(3, 1), None);
        assert_eq!(Strides::rows(4).extent(2, 4), Some(8));
        let (a, b, mut c) = ([1f32; 4], [1f32; 4], [0f32; 4]);
        let r = std::panic::catch_unwind(move || {
            gemm(
                3,
                1,
                1,
                View::new(&a, huge),
                View::new(&b, Strides::rows(1)),
                0.0,
                ViewMut::new(&mut c, Strides::rows(1)),
            )
        });
        assert!(r.is_err());
    }

    #[test]
    fn aliasing_output_strides_are_refused() {
        assert!(Strides::rows(3).is_distinct(2, 3));
        assert!(Strides::transposed(2).is_distinct(2, 3));
        assert!(Strides { row: 5, col: 1 }.is_distinct(2, 3));
        assert!(!Strides { row: 1, col: 1 }.is_distinct(2, 3));
        assert!(!Strides { row: 0, col: 1 }.is_distinct(2, 3));
        assert!(!Strides { row: 2, col: 1 }.is_distinct(2, 3));
        let (a, b) = ([1f32; 6], [1f32; 9]);
        let r = std::panic::catch_unwind(|| {
            let mut c = [0f32; 9];
            let alias = Strides { row: 1, col: 1 };
            gemm(
                2,
                3,
                3,
                View::new(&a, Strides::rows(3)),
                View::new(&b, Strides::rows(3)),
                0.0,
                ViewMut::new(&mut c, alias),
            );
        });
        assert!(r.is_err());
    }
}
