use alloc::string::String;
use core::fmt;

/// Why a GGUF file was rejected. Offsets are from the start of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GgufError {
    /// The file does not start with `GGUF`.
    BadMagic {
        /// The first bytes found (fewer than four when the file is shorter).
        found: [u8; 4],
    },
    /// The version is not 3.
    UnsupportedVersion(u32),
    /// The file ends inside a structure.
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Where it starts.
        offset: u64,
    },
    /// A count is larger than the cap or than the bytes left could hold.
    AbsurdCount {
        /// What is counted.
        what: &'static str,
        /// The count declared.
        count: u64,
        /// The most that could be accepted here.
        max: u64,
    },
    /// A string is longer than the cap.
    StringTooLong {
        /// Where the string starts.
        offset: u64,
        /// Its declared length.
        len: u64,
    },
    /// A string is not UTF-8.
    InvalidUtf8 {
        /// Where the string's bytes start.
        offset: u64,
    },
    /// A metadata value type id is unknown.
    UnknownValueType {
        /// Where the type id is.
        offset: u64,
        /// The id.
        id: u32,
    },
    /// A bool is neither 0 nor 1.
    InvalidBool {
        /// Where it is.
        offset: u64,
    },
    /// Arrays nest deeper than [`super::MAX_ARRAY_DEPTH`].
    ArrayTooDeep {
        /// Where the innermost array starts.
        offset: u64,
    },
    /// A metadata key appears twice.
    DuplicateKey(String),
    /// A tensor name appears twice.
    DuplicateTensor(String),
    /// A key petal relies on has the wrong type (for example `general.alignment`).
    WrongKeyType {
        /// The key.
        key: String,
        /// The type expected.
        expected: &'static str,
    },
    /// `general.alignment` is not a power of two between 8 and 65536.
    BadAlignment(u64),
    /// A tensor has 0 or more than four dimensions.
    BadDimCount {
        /// The tensor.
        name: String,
        /// Dimensions declared.
        n_dims: u32,
    },
    /// A tensor has a zero dimension, or its element count overflows.
    BadShape {
        /// The tensor.
        name: String,
    },
    /// A tensor's type id is unknown to petal.
    UnknownTensorType {
        /// The tensor.
        name: String,
        /// The type id.
        id: u32,
    },
    /// A tensor's innermost dimension is not a multiple of its type's block length.
    ShapeSizeMismatch {
        /// The tensor.
        name: String,
        /// The innermost dimension.
        ne0: u64,
        /// The type's block length.
        block: usize,
    },
    /// A tensor's offset is not a multiple of the alignment.
    Misaligned {
        /// The tensor.
        name: String,
        /// Its offset within the data section.
        offset: u64,
        /// The alignment.
        alignment: u64,
    },
    /// A tensor's bytes extend past the end of the file.
    OutOfBounds {
        /// The tensor.
        name: String,
        /// Its offset within the data section.
        offset: u64,
        /// Its size in bytes.
        size: u64,
        /// Bytes available in the data section.
        available: u64,
    },
    /// Two tensors' bytes overlap.
    Overlap {
        /// The tensor that starts first.
        first: String,
        /// The tensor that starts inside it.
        second: String,
    },
}

impl fmt::Display for GgufError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use GgufError::*;
        match self {
            BadMagic { found } => write!(f, "not a GGUF file (magic {found:02x?}, expected \"GGUF\")"),
            UnsupportedVersion(v) => write!(f, "unsupported GGUF version {v} (petal reads version 3)"),
            Truncated { what, offset } => write!(f, "file truncated in {what} at byte {offset}"),
            AbsurdCount { what, count, max } => {
                write!(f, "absurd {what}: {count} (at most {max} possible here)")
            }
            StringTooLong { offset, len } => write!(f, "string of {len} bytes at byte {offset} exceeds the cap"),
            InvalidUtf8 { offset } => write!(f, "string at byte {offset} is not valid UTF-8"),
            UnknownValueType { offset, id } => write!(f, "unknown metadata value type {id} at byte {offset}"),
            InvalidBool { offset } => write!(f, "bool at byte {offset} is neither 0 nor 1"),
            ArrayTooDeep { offset } => write!(f, "arrays nested too deep at byte {offset}"),
            DuplicateKey(k) => write!(f, "duplicate metadata key {k:?}"),
            DuplicateTensor(n) => write!(f, "duplicate tensor {n:?}"),
            WrongKeyType { key, expected } => write!(f, "metadata key {key:?} should be {expected}"),
            BadAlignment(a) => write!(f, "general.alignment {a} is not a power of two in 8..=65536"),
            BadDimCount { name, n_dims } => write!(f, "tensor {name:?} has {n_dims} dimensions (1 to 4 allowed)"),
            BadShape { name } => write!(f, "tensor {name:?} has a zero or overflowing dimension"),
            UnknownTensorType { name, id } => write!(f, "tensor {name:?} has unknown type id {id}"),
            ShapeSizeMismatch { name, ne0, block } => write!(
                f,
                "tensor {name:?}: row length {ne0} is not a multiple of its type's block length {block}"
            ),
            Misaligned { name, offset, alignment } => {
                write!(f, "tensor {name:?} at data offset {offset} is not aligned to {alignment}")
            }
            OutOfBounds { name, offset, size, available } => write!(
                f,
                "tensor {name:?} ({size} bytes at data offset {offset}) runs past the end of the file ({available} data bytes)"
            ),
            Overlap { first, second } => write!(f, "tensors {first:?} and {second:?} overlap"),
        }
    }
}

impl core::error::Error for GgufError {}
