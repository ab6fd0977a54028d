//! GGUF v3, petal's model file format (see `docs/FORMAT.md`).
//!
//! [`Gguf::parse`] is a zero-copy reader over `&[u8]` that validates as if the bytes were
//! hostile; [`GgufWriter`] (feature `std`) writes files atomically. Both use the key and tensor
//! names in [`names`].

mod error;
pub mod names;
mod reader;
#[cfg(feature = "std")]
mod writer;

pub use error::GgufError;
pub use reader::{ArrayValue, Gguf, TensorInfo, Value};
#[cfg(feature = "std")]
pub use writer::{GgufWriter, OwnedValue};

/// `"GGUF"` as the first four bytes of the file.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// The only GGUF version petal reads and writes.
pub const VERSION: u32 = 3;
/// The alignment petal writes (`general.alignment`).
pub const ALIGNMENT: u32 = 64;
/// GGUF's alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u32 = 32;
/// Most dimensions a tensor may have (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;

/// Most tensors a file may declare.
pub const MAX_TENSORS: u64 = 1 << 16;
/// Most metadata entries a file may declare.
pub const MAX_KVS: u64 = 1 << 16;
/// Longest string (key, value or tensor name) accepted, in bytes.
pub const MAX_STRING_LEN: u64 = 1 << 28;
/// Longest tensor name or key accepted, in bytes (ggml's `GGML_MAX_NAME` is 64; keys are
/// unbounded in the spec, petal caps them).
pub const MAX_NAME_LEN: u64 = 1 << 10;
/// Deepest array nesting accepted (an array of arrays is depth 2).
pub const MAX_ARRAY_DEPTH: u32 = 2;

/// A metadata value's type id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
#[allow(missing_docs)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    /// The type with id `id`.
    pub fn from_id(id: u32) -> Option<Self> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// Encoded size of a scalar of this type; `None` for strings and arrays.
    pub const fn fixed_size(self) -> Option<usize> {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => Some(1),
            U16 | I16 => Some(2),
            U32 | I32 | F32 => Some(4),
            U64 | I64 | F64 => Some(8),
            String | Array => None,
        }
    }

    /// Fewest bytes one value of this type takes (a string's length prefix, an array's header).
    pub const fn min_size(self) -> usize {
        match self.fixed_size() {
            Some(n) => n,
            None => match self {
                ValueType::String => 8,
                _ => 12,
            },
        }
    }
}
