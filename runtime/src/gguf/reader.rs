use alloc::collections::BTreeMap;
use alloc::string::ToString;
use alloc::vec::Vec;

use super::{
    GgufError, ValueType, DEFAULT_ALIGNMENT, MAGIC, MAX_ARRAY_DEPTH, MAX_DIMS, MAX_KVS,
    MAX_NAME_LEN, MAX_STRING_LEN, MAX_TENSORS, VERSION,
};
use crate::quant::TensorType;

/// Smallest encoded tensor info: empty name (8) + n_dims (4) + one dim (8) + type (4) + offset (8).
const MIN_TENSOR_INFO: u64 = 32;
/// Smallest encoded key-value pair: empty key (8) + type (4) + a one-byte value.
const MIN_KV: u64 = 13;

/// A metadata value borrowed from the file.
#[derive(Clone, Copy, Debug, PartialEq)]
#[allow(missing_docs)]
pub enum Value<'a> {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(&'a str),
    Array(ArrayValue<'a>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl<'a> Value<'a> {
    /// The value as a `u32`, if it is an unsigned or non-negative integer that fits.
    pub fn as_u32(&self) -> Option<u32> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v),
            Value::U64(v) => u32::try_from(v).ok(),
            Value::I8(v) => u32::try_from(v).ok(),
            Value::I16(v) => u32::try_from(v).ok(),
            Value::I32(v) => u32::try_from(v).ok(),
            Value::I64(v) => u32::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as an `f32`, if it is a float.
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            Value::F32(v) => Some(v),
            Value::F64(v) => Some(v as f32),
            _ => None,
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&'a str> {
        match *self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The value as an array.
    pub fn as_array(&self) -> Option<ArrayValue<'a>> {
        match *self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// An array value, validated when the file was parsed, decoded lazily.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ArrayValue<'a> {
    elem: ValueType,
    len: usize,
    /// The encoded elements (without the array header).
    bytes: &'a [u8],
    /// File offset of `bytes`, for decoding nested values.
    offset: u64,
}

impl<'a> ArrayValue<'a> {
    /// Element type.
    pub fn elem_type(&self) -> ValueType {
        self.elem
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The elements, in order.
    pub fn iter(&self) -> impl Iterator<Item = Value<'a>> + 'a {
        let mut cur = Cursor {
            buf: self.bytes,
            pos: 0,
            base: self.offset,
        };
        let elem = self.elem;
        // The elements were validated by `Gguf::parse`, so decoding cannot fail; stop quietly if
        // it ever did rather than panic.
        (0..self.len).map_while(move |_| cur.value(elem, 1).ok())
    }

    /// The elements as strings, if this is an array of strings.
    pub fn strings(&self) -> Option<impl Iterator<Item = &'a str> + 'a> {
        (self.elem == ValueType::String).then(|| self.iter().filter_map(|v| v.as_str()))
    }
}

/// One tensor's description; its bytes are at [`Gguf::tensor_data`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorInfo<'a> {
    /// Name, for example `blk.0.attn_q.weight`.
    pub name: &'a str,
    /// Dimensions as stored: `dims[0]` is the innermost; unused entries are 1.
    pub dims: [u64; MAX_DIMS],
    /// Number of dimensions used.
    pub n_dims: usize,
    /// Storage type.
    pub ty: TensorType,
    /// Offset from the start of the data section.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
}

impl TensorInfo<'_> {
    /// The shape in row-major (PyTorch) order: `dims` reversed.
    pub fn shape(&self) -> Vec<usize> {
        self.dims[..self.n_dims]
            .iter()
            .rev()
            .map(|&d| d as usize)
            .collect()
    }

    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A parsed, validated GGUF file borrowing from its bytes.
#[derive(Debug)]
pub struct Gguf<'a> {
    /// File version (always 3).
    pub version: u32,
    /// Tensor alignment in bytes.
    pub alignment: u64,
    /// Offset of the data section from the start of the file.
    pub data_offset: u64,
    kvs: Vec<(&'a str, Value<'a>)>,
    key_index: BTreeMap<&'a str, usize>,
    tensors: Vec<TensorInfo<'a>>,
    tensor_index: BTreeMap<&'a str, usize>,
    bytes: &'a [u8],
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    /// File offset of `buf[0]`.
    base: u64,
}

impl<'a> Cursor<'a> {
    fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &'static str) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                what,
                offset: self.offset(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], GgufError> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, GgufError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, GgufError> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn string(&mut self, what: &'static str, cap: u64) -> Result<&'a str, GgufError> {
        let start = self.offset();
        let len = self.u64(what)?;
        if len > cap {
            return Err(GgufError::StringTooLong { offset: start, len });
        }
        let at = self.offset();
        let bytes = self.take(len, what)?;
        core::str::from_utf8(bytes).map_err(|_| GgufError::InvalidUtf8 { offset: at })
    }

    fn value_type(&mut self) -> Result<ValueType, GgufError> {
        let offset = self.offset();
        let id = self.u32("value type")?;
        ValueType::from_id(id).ok_or(GgufError::UnknownValueType { offset, id })
    }

    fn value(&mut self, ty: ValueType, depth: u32) -> Result<Value<'a>, GgufError> {
        const W: &str = "metadata value";
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>(W)?[0]),
            ValueType::I8 => Value::I8(self.array::<1>(W)?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(W)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(W)?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(self.array(W)?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(W)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(W)?)),
            ValueType::U64 => Value::U64(u64::from_le_bytes(self.array(W)?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(W)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(W)?)),
            ValueType::Bool => {
                let offset = self.offset();
                match self.array::<1>(W)?[0] {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    _ => return Err(GgufError::InvalidBool { offset }),
                }
            }
            ValueType::String => Value::String(self.string("metadata string", MAX_STRING_LEN)?),
            ValueType::Array => {
                let start = self.offset();
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::ArrayTooDeep { offset: start });
                }
                let elem = self.value_type()?;
                let len = self.u64("array length")?;
                let max = self.remaining() / elem.min_size() as u64;
                if len > max {
                    return Err(GgufError::AbsurdCount {
                        what: "array length",
                        count: len,
                        max,
                    });
                }
                let begin = self.pos;
                let offset = self.offset();
                match elem.fixed_size() {
                    Some(n) if elem != ValueType::Bool => {
                        self.take(len * n as u64, "array")?;
                    }
                    _ => {
                        for _ in 0..len {
                            self.value(elem, depth + 1)?;
                        }
                    }
                }
                Value::Array(ArrayValue {
                    elem,
                    len: len as usize,
                    bytes: &self.buf[begin..self.pos],
                    offset,
                })
            }
        })
    }
}

impl<'a> Gguf<'a> {
    /// Parses and validates a whole GGUF file held in `bytes`.
    ///
    /// Every tensor is checked to have a known type, a consistent shape, an aligned offset, and
    /// bytes inside `bytes` that overlap no other tensor's.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, GgufError> {
        let mut c = Cursor {
            buf: bytes,
            pos: 0,
            base: 0,
        };
        if bytes.len() < 4 {
            let mut found = [0u8; 4];
            found[..bytes.len()].copy_from_slice(bytes);
            return Err(GgufError::BadMagic { found });
        }
        let magic: [u8; 4] = c.array("magic")?;
        if magic != MAGIC {
            return Err(GgufError::BadMagic { found: magic });
        }
        let version = c.u32("header")?;
        if version != VERSION {
            return Err(GgufError::UnsupportedVersion(version));
        }
        let n_tensors = c.u64("header")?;
        let n_kvs = c.u64("header")?;
        let max_kvs = MAX_KVS.min(c.remaining() / MIN_KV);
        if n_kvs > max_kvs {
            return Err(GgufError::AbsurdCount {
                what: "metadata count",
                count: n_kvs,
                max: max_kvs,
            });
        }
        let max_tensors = MAX_TENSORS.min(c.remaining() / MIN_TENSOR_INFO);
        if n_tensors > max_tensors {
            return Err(GgufError::AbsurdCount {
                what: "tensor count",
                count: n_tensors,
                max: max_tensors,
            });
        }

        let mut kvs = Vec::with_capacity(n_kvs as usize);
        let mut key_index = BTreeMap::new();
        for _ in 0..n_kvs {
            let key = c.string("metadata key", MAX_NAME_LEN)?;
            let ty = c.value_type()?;
            let value = c.value(ty, 0)?;
            if key_index.insert(key, kvs.len()).is_some() {
                return Err(GgufError::DuplicateKey(key.to_string()));
            }
            kvs.push((key, value));
        }

        let alignment = match key_index.get(super::names::ALIGNMENT) {
            None => DEFAULT_ALIGNMENT as u64,
            Some(&i) => match kvs[i].1 {
                Value::U32(a) => a as u64,
                _ => {
                    return Err(GgufError::WrongKeyType {
                        key: super::names::ALIGNMENT.to_string(),
                        expected: "u32",
                    })
                }
            },
        };
        if !alignment.is_power_of_two() || !(8..=65536).contains(&alignment) {
            return Err(GgufError::BadAlignment(alignment));
        }

        let mut tensors = Vec::with_capacity(n_tensors as usize);
        let mut tensor_index = BTreeMap::new();
        for _ in 0..n_tensors {
            let name = c.string("tensor name", MAX_NAME_LEN)?;
            let n_dims = c.u32("tensor info")?;
            if n_dims == 0 || n_dims as usize > MAX_DIMS {
                return Err(GgufError::BadDimCount {
                    name: name.to_string(),
                    n_dims,
                });
            }
            let mut dims = [1u64; MAX_DIMS];
            for d in dims.iter_mut().take(n_dims as usize) {
                *d = c.u64("tensor info")?;
            }
            let ty_id = c.u32("tensor info")?;
            let offset = c.u64("tensor info")?;
            let bad_shape = || GgufError::BadShape {
                name: name.to_string(),
            };
            if dims.contains(&0) {
                return Err(bad_shape());
            }
            let n_elements = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .filter(|&n| n <= i64::MAX as u64)
                .ok_or_else(bad_shape)?;
            let ty =
                TensorType::from_ggml_id(ty_id).ok_or_else(|| GgufError::UnknownTensorType {
                    name: name.to_string(),
                    id: ty_id,
                })?;
            let size = ty
                .tensor_bytes(dims[0], n_elements / dims[0])
                .ok_or_else(|| {
                    if dims[0] % ty.block_len() as u64 != 0 {
                        GgufError::ShapeSizeMismatch {
                            name: name.to_string(),
                            ne0: dims[0],
                            block: ty.block_len(),
                        }
                    } else {
                        bad_shape()
                    }
                })?;
            if offset % alignment != 0 {
                return Err(GgufError::Misaligned {
                    name: name.to_string(),
                    offset,
                    alignment,
                });
            }
            if tensor_index.insert(name, tensors.len()).is_some() {
                return Err(GgufError::DuplicateTensor(name.to_string()));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                n_dims: n_dims as usize,
                ty,
                offset,
                size,
            });
        }

        let data_offset = c.offset().next_multiple_of(alignment);
        let available = (bytes.len() as u64).saturating_sub(data_offset);
        if n_tensors > 0 && data_offset > bytes.len() as u64 {
            return Err(GgufError::Truncated {
                what: "padding before tensor data",
                offset: c.offset(),
            });
        }
        for t in &tensors {
            let end = t.offset.checked_add(t.size);
            if end.is_none_or(|e| e > available) {
                return Err(GgufError::OutOfBounds {
                    name: t.name.to_string(),
                    offset: t.offset,
                    size: t.size,
                    available,
                });
            }
        }
        let mut by_offset: Vec<&TensorInfo<'_>> = tensors.iter().collect();
        by_offset.sort_by_key(|t| t.offset);
        for w in by_offset.windows(2) {
            if w[0].offset + w[0].size > w[1].offset {
                return Err(GgufError::Overlap {
                    first: w[0].name.to_string(),
                    second: w[1].name.to_string(),
                });
            }
        }

        Ok(Gguf {
            version,
            alignment,
            data_offset,
            kvs,
            key_index,
            tensors,
            tensor_index,
            bytes,
        })
    }

    /// Metadata entries in file order.
    pub fn metadata(&self) -> &[(&'a str, Value<'a>)] {
        &self.kvs
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<Value<'a>> {
        self.key_index.get(key).map(|&i| self.kvs[i].1)
    }

    /// Tensors in file order.
    pub fn tensors(&self) -> &[TensorInfo<'a>] {
        &self.tensors
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo<'a>> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The bytes of tensor `t` (which must come from this file).
    pub fn tensor_data(&self, t: &TensorInfo<'_>) -> &'a [u8] {
        // Bounds were checked in `parse`; `get` keeps a foreign `TensorInfo` from panicking.
        let start = (self.data_offset + t.offset) as usize;
        self.bytes
            .get(start..start + t.size as usize)
            .unwrap_or(&[])
    }

    /// The whole file, as parsed (for offsets of the slices this parse hands out).
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Total bytes of tensor data.
    pub fn tensor_bytes_total(&self) -> u64 {
        self.tensors.iter().map(|t| t.size).sum()
    }
}
