//! Output views: rows of f32 values of which each holder writes only its own columns, so that
//! parallel tasks can share one output buffer.

/// Rows of `ld` f32 values (columns numbered from the first value) of which the holder writes
/// only columns `c0..c1`: a whole buffer ([`RowsMut::new`]), a window of it, or one task's
/// columns of an output that parallel tasks share. Writes go through [`RowsMut::slice_at`]
/// (checked) or, in SIMD code, through [`RowsMut::raw`] within the same bounds.
#[derive(Debug)]
pub struct RowsMut<'a> {
    ptr: *mut f32,
    len: usize,
    ld: usize,
    c0: usize,
    c1: usize,
    _buf: core::marker::PhantomData<&'a mut [f32]>,
}

// SAFETY: a `RowsMut` writes only its own columns of the buffer it was made from, and each
// holder's columns are disjoint from any other's (see `new`, `window`, `SharedRows::rows`).
#[allow(unsafe_code)]
unsafe impl Send for RowsMut<'_> {}

impl<'a> RowsMut<'a> {
    /// All of `y`, as rows of `ld` (the last one may be short).
    pub fn new(y: &'a mut [f32], ld: usize) -> Self {
        RowsMut {
            ptr: y.as_mut_ptr(),
            len: y.len(),
            ld,
            c0: 0,
            c1: ld,
            _buf: core::marker::PhantomData,
        }
    }

    /// The rows from `t0` on, columns `c..c + width`, as columns `0..width` of the window.
    ///
    /// # Panics
    /// If the columns are not within this holder's, or row `t0` starts past the end.
    pub fn window(&mut self, t0: usize, c: usize, width: usize) -> RowsMut<'_> {
        // Checked: a wrapped `at` would pass the bound and point the window anywhere.
        let at = t0.checked_mul(self.ld).and_then(|a| a.checked_add(c));
        let end = c.checked_add(width);
        let at = match (at, end) {
            (Some(at), Some(end)) if self.c0 <= c && end <= self.c1 && at <= self.len => at,
            _ => panic!("window outside the rows' columns"),
        };
        RowsMut {
            ptr: self.ptr.wrapping_add(at),
            len: self.len - at,
            ld: self.ld,
            c0: 0,
            c1: width,
            _buf: core::marker::PhantomData,
        }
    }

    /// The same rows and columns, for a shorter while.
    pub fn reborrow(&mut self) -> RowsMut<'_> {
        RowsMut {
            _buf: core::marker::PhantomData,
            ..*self
        }
    }

    /// Columns this holder writes.
    pub fn width(&self) -> usize {
        self.c1 - self.c0
    }

    /// Row length of the buffer.
    pub fn ld(&self) -> usize {
        self.ld
    }

    /// Values from the start of the first row to the end of the buffer.
    pub fn len(&self) -> usize {
        self.len - self.c0
    }

    /// Whether no value can be written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0 || self.width() == 0
    }

    /// `len` values from value `at` of the buffer, within the holder's columns of one row.
    ///
    /// # Panics
    /// Outside the holder's columns or the buffer (so that no two holders' slices overlap).
    #[allow(unsafe_code)]
    pub fn slice_at(&mut self, at: usize, len: usize) -> &mut [f32] {
        let col = at.checked_rem(self.ld).unwrap_or(0);
        // Checked: `at + len` and `col + len` must not wrap past the bounds.
        let inside = at.checked_add(len).is_some_and(|end| end <= self.len)
            && col >= self.c0
            && col.checked_add(len).is_some_and(|end| end <= self.c1);
        assert!(inside, "values outside the rows' columns");
        // SAFETY: within the buffer and the holder's columns of one row (checked), which no one
        // else writes while it lives.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.add(at), len) }
    }

    /// Sets column `c` of row `t`.
    ///
    /// # Panics
    /// Outside the holder's columns or the buffer.
    pub fn set(&mut self, t: usize, c: usize, v: f32) {
        let at = t
            .checked_mul(self.ld)
            .and_then(|a| a.checked_add(c))
            .expect("value outside the rows");
        self.slice_at(at, 1)[0] = v;
    }

    /// The first row's first column (of this holder's), the row length and the number of
    /// values from there to the end of the buffer, for kernels that write
    /// `ptr[t * ld + c]` for columns `c < width()` and `t * ld + c < len`.
    pub fn raw(&mut self) -> (*mut f32, usize, usize) {
        (self.ptr.wrapping_add(self.c0), self.ld, self.len())
    }
}

/// A `[tokens, ld]` buffer whose columns are split among parallel tasks: each task writes
/// only within its own columns, through its [`SharedRows::rows`].
#[cfg(feature = "std")]
#[derive(Clone, Copy)]
pub(crate) struct SharedRows {
    ptr: *mut f32,
    len: usize,
    ld: usize,
    /// The columns this task owns, `c0..c1`.
    c0: usize,
    c1: usize,
}

// SAFETY: the tasks holding copies write disjoint columns (each task's `rows` stay within its
// columns, checked by `RowsMut::slice_at` and `window`), and the buffer outlives them (the
// owner waits for the tasks).
#[cfg(feature = "std")]
#[allow(unsafe_code)]
unsafe impl Send for SharedRows {}
// SAFETY: as for `Send`: shared references only copy the handle ([`SharedRows::columns`]); the
// writes go through each task's own copy, within its own columns.
#[cfg(feature = "std")]
#[allow(unsafe_code)]
unsafe impl Sync for SharedRows {}

#[cfg(feature = "std")]
impl SharedRows {
    /// All of `y`, as rows of `ld`, before its columns are handed out.
    pub(crate) fn new(y: &mut [f32], ld: usize) -> Self {
        SharedRows {
            ptr: y.as_mut_ptr(),
            len: y.len(),
            ld,
            c0: 0,
            c1: 0,
        }
    }

    /// The same buffer, for the task owning columns `c0..c1`.
    pub(crate) fn columns(&self, c0: usize, c1: usize) -> Self {
        SharedRows { c0, c1, ..*self }
    }

    /// This task's columns as rows to write.
    pub(crate) fn rows(&self) -> RowsMut<'_> {
        RowsMut {
            ptr: self.ptr,
            len: self.len,
            ld: self.ld,
            c0: self.c0,
            c1: self.c1,
            _buf: core::marker::PhantomData,
        }
    }
}
