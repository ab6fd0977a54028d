//! The mmap edge: a read-only mapping of a whole file.

use std::fs::File;
use std::io;
use std::path::Path;

/// A file's bytes, memory-mapped read-only (or read into memory for empty files, which cannot be
/// mapped).
///
/// The mapping assumes the file is not truncated or rewritten while mapped: if another process
/// shrinks it, reading the lost pages raises SIGBUS. petal writes its own files atomically
/// (rename), which never changes a mapped inode.
#[derive(Debug)]
pub struct Mapping {
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    Mapped(memmap2::Mmap),
    Empty,
}

impl Mapping {
    /// Maps the file at `path`.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        if file.metadata()?.len() == 0 {
            return Ok(Mapping {
                inner: Inner::Empty,
            });
        }
        // SAFETY: the mapping is read-only and private to this process; the caller's contract
        // (documented above) is that the file is not truncated while mapped. All reads of the
        // bytes go through bounds-checked slices.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        Ok(Mapping {
            inner: Inner::Mapped(map),
        })
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        match &self.inner {
            Inner::Mapped(m) => m,
            Inner::Empty => &[],
        }
    }
}
