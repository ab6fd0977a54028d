use std::io::{self, Write};
use std::path::Path;
use std::string::String;
use std::vec::Vec;
use std::{format, vec};

use super::{names, ValueType, ALIGNMENT, MAGIC, MAX_DIMS, VERSION};
use crate::quant::TensorType;

/// A metadata value to write.
#[derive(Clone, Debug, PartialEq)]
#[allow(missing_docs)]
pub enum OwnedValue {
    U32(u32),
    I32(i32),
    U64(u64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    StringArray(Vec<String>),
    F32Array(Vec<f32>),
    I32Array(Vec<i32>),
}

impl OwnedValue {
    fn value_type(&self) -> ValueType {
        match self {
            OwnedValue::U32(_) => ValueType::U32,
            OwnedValue::I32(_) => ValueType::I32,
            OwnedValue::U64(_) => ValueType::U64,
            OwnedValue::F32(_) => ValueType::F32,
            OwnedValue::F64(_) => ValueType::F64,
            OwnedValue::Bool(_) => ValueType::Bool,
            OwnedValue::String(_) => ValueType::String,
            OwnedValue::StringArray(_) | OwnedValue::F32Array(_) | OwnedValue::I32Array(_) => {
                ValueType::Array
            }
        }
    }
}

impl OwnedValue {
    /// An owned copy of a value read from a file; `None` for the types petal never writes
    /// (8- and 16-bit integers, i64, and arrays other than string, f32 and i32 arrays).
    pub fn from_value(v: &crate::gguf::Value<'_>) -> Option<Self> {
        use crate::gguf::Value;
        Some(match *v {
            Value::U32(x) => OwnedValue::U32(x),
            Value::I32(x) => OwnedValue::I32(x),
            Value::U64(x) => OwnedValue::U64(x),
            Value::F32(x) => OwnedValue::F32(x),
            Value::F64(x) => OwnedValue::F64(x),
            Value::Bool(x) => OwnedValue::Bool(x),
            Value::String(s) => OwnedValue::String(s.into()),
            Value::Array(a) => match a.elem_type() {
                ValueType::String => OwnedValue::StringArray(
                    a.iter()
                        .filter_map(|e| e.as_str().map(Into::into))
                        .collect(),
                ),
                ValueType::F32 => {
                    OwnedValue::F32Array(a.iter().filter_map(|e| e.as_f32()).collect())
                }
                ValueType::I32 => OwnedValue::I32Array(
                    a.iter()
                        .filter_map(|e| if let Value::I32(x) = e { Some(x) } else { None })
                        .collect(),
                ),
                _ => return None,
            },
            _ => return None,
        })
    }
}

impl From<&str> for OwnedValue {
    fn from(s: &str) -> Self {
        OwnedValue::String(s.into())
    }
}

impl From<String> for OwnedValue {
    fn from(s: String) -> Self {
        OwnedValue::String(s)
    }
}

impl From<u32> for OwnedValue {
    fn from(v: u32) -> Self {
        OwnedValue::U32(v)
    }
}

impl From<f32> for OwnedValue {
    fn from(v: f32) -> Self {
        OwnedValue::F32(v)
    }
}

impl From<bool> for OwnedValue {
    fn from(v: bool) -> Self {
        OwnedValue::Bool(v)
    }
}

#[derive(Debug)]
struct PendingTensor {
    name: String,
    /// ggml order: innermost first.
    dims: Vec<u64>,
    ty: TensorType,
    data: Vec<u8>,
}

/// Builds a GGUF v3 file in memory and writes it with 64-byte alignment.
#[derive(Debug, Default)]
pub struct GgufWriter {
    kvs: Vec<(String, OwnedValue)>,
    tensors: Vec<PendingTensor>,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

impl GgufWriter {
    /// An empty file whose first key is `general.alignment` = 64.
    pub fn new() -> Self {
        let mut w = Self::default();
        w.set(names::ALIGNMENT, ALIGNMENT);
        w
    }

    /// Sets `key` to `value`, replacing an earlier value of the same key.
    pub fn set(&mut self, key: &str, value: impl Into<OwnedValue>) {
        let value = value.into();
        match self.kvs.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.kvs.push((key.into(), value)),
        }
    }

    /// Adds a tensor of row-major `shape` whose encoded bytes are `data`.
    pub fn add_tensor(
        &mut self,
        name: &str,
        shape: &[usize],
        ty: TensorType,
        data: Vec<u8>,
    ) -> io::Result<()> {
        if shape.is_empty() || shape.len() > MAX_DIMS || shape.contains(&0) {
            return Err(invalid(format!("tensor {name:?}: bad shape {shape:?}")));
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(invalid(format!("duplicate tensor {name:?}")));
        }
        let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        let rows = dims[1..].iter().product();
        match ty.tensor_bytes(dims[0], rows) {
            Some(n) if n == data.len() as u64 => {}
            _ => {
                return Err(invalid(format!(
                    "tensor {name:?}: {} bytes do not hold shape {shape:?} as {ty}",
                    data.len()
                )))
            }
        }
        self.tensors.push(PendingTensor {
            name: name.into(),
            dims,
            ty,
            data,
        });
        Ok(())
    }

    /// A copy of the model file `g` with every tensor dequantized to F32 (same keys, same
    /// names and shapes), so a forward pass over it is the quantized file's weights in f32: the
    /// reference of the quantized kernels' arithmetic checks.
    pub fn dequantized(g: &crate::gguf::Gguf<'_>) -> io::Result<Self> {
        let mut w = GgufWriter::new();
        for (k, v) in g.metadata() {
            if *k != names::ALIGNMENT {
                let value = OwnedValue::from_value(v)
                    .ok_or_else(|| invalid(format!("key {k:?}: its value cannot be copied")))?;
                w.set(k, value);
            }
        }
        for t in g.tensors() {
            let mut f = Vec::new();
            crate::quant::dequantize(g.tensor_data(t), t.ty, t.n_elements() as usize, &mut f)
                .map_err(|e| invalid(format!("tensor {:?}: {e}", t.name)))?;
            let bytes = f.iter().flat_map(|x| x.to_le_bytes()).collect();
            w.add_tensor(t.name, &t.shape(), TensorType::F32, bytes)?;
        }
        Ok(w)
    }

    /// Number of tensors added.
    pub fn tensor_count(&self) -> usize {
        self.tensors.len()
    }

    /// Writes the file to `w`; returns the bytes written.
    pub fn write_to(&self, w: &mut impl Write) -> io::Result<u64> {
        let mut out = CountingWriter { inner: w, n: 0 };
        out.write_all(&MAGIC)?;
        out.write_all(&VERSION.to_le_bytes())?;
        out.write_all(&(self.tensors.len() as u64).to_le_bytes())?;
        out.write_all(&(self.kvs.len() as u64).to_le_bytes())?;
        for (k, v) in &self.kvs {
            write_string(&mut out, k)?;
            out.write_all(&(v.value_type() as u32).to_le_bytes())?;
            write_value(&mut out, v)?;
        }
        let align = ALIGNMENT as u64;
        let mut offset = 0u64;
        for t in &self.tensors {
            write_string(&mut out, &t.name)?;
            out.write_all(&(t.dims.len() as u32).to_le_bytes())?;
            for d in &t.dims {
                out.write_all(&d.to_le_bytes())?;
            }
            out.write_all(&t.ty.ggml_id().to_le_bytes())?;
            out.write_all(&offset.to_le_bytes())?;
            offset = (offset + t.data.len() as u64).next_multiple_of(align);
        }
        pad(&mut out, align)?;
        for t in &self.tensors {
            out.write_all(&t.data)?;
            pad(&mut out, align)?;
        }
        out.flush()?;
        Ok(out.n)
    }

    /// Writes the file to `path` atomically: into a temporary file in the same folder, synced,
    /// then renamed over `path`. On error nothing is left at `path` or beside it.
    pub fn write_atomic(&self, path: &Path) -> io::Result<u64> {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if !dir.is_dir() {
            let msg = format!("{} is not an existing folder", dir.display());
            return Err(io::Error::new(io::ErrorKind::NotFound, msg));
        }
        let mut tmp = tempfile::Builder::new()
            .prefix(".petal-")
            .suffix(".tmp")
            .tempfile_in(dir)
            // tempfile's message names its random path; the caller names the real one.
            .map_err(|e| io::Error::from(e.kind()))?;
        let n = {
            let mut buf = io::BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
            let n = self.write_to(&mut buf)?;
            buf.flush()?;
            n
        };
        // The temporary file is created 0600; a model file is meant to be shared read-only.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            tmp.as_file()
                .set_permissions(std::fs::Permissions::from_mode(0o644))?;
        }
        tmp.as_file().sync_all()?;
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(n)
    }
}

struct CountingWriter<'w, W: Write> {
    inner: &'w mut W,
    n: u64,
}

impl<W: Write> Write for CountingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.n += k as u64;
        Ok(k)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn pad<W: Write>(out: &mut CountingWriter<'_, W>, align: u64) -> io::Result<()> {
    let n = out.n.next_multiple_of(align) - out.n;
    out.write_all(&vec![0u8; n as usize])
}

fn write_string(out: &mut impl Write, s: &str) -> io::Result<()> {
    out.write_all(&(s.len() as u64).to_le_bytes())?;
    out.write_all(s.as_bytes())
}

fn write_array_header(out: &mut impl Write, elem: ValueType, len: usize) -> io::Result<()> {
    out.write_all(&(elem as u32).to_le_bytes())?;
    out.write_all(&(len as u64).to_le_bytes())
}

fn write_value(out: &mut impl Write, v: &OwnedValue) -> io::Result<()> {
    match v {
        OwnedValue::U32(x) => out.write_all(&x.to_le_bytes()),
        OwnedValue::I32(x) => out.write_all(&x.to_le_bytes()),
        OwnedValue::U64(x) => out.write_all(&x.to_le_bytes()),
        OwnedValue::F32(x) => out.write_all(&x.to_le_bytes()),
        OwnedValue::F64(x) => out.write_all(&x.to_le_bytes()),
        OwnedValue::Bool(x) => out.write_all(&[*x as u8]),
        OwnedValue::String(s) => write_string(out, s),
        OwnedValue::StringArray(a) => {
            write_array_header(out, ValueType::String, a.len())?;
            a.iter().try_for_each(|s| write_string(out, s))
        }
        OwnedValue::F32Array(a) => {
            write_array_header(out, ValueType::F32, a.len())?;
            a.iter().try_for_each(|x| out.write_all(&x.to_le_bytes()))
        }
        OwnedValue::I32Array(a) => {
            write_array_header(out, ValueType::I32, a.len())?;
            a.iter().try_for_each(|x| out.write_all(&x.to_le_bytes()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::{Gguf, Value};
    use crate::quant;
    use std::vec;

    #[test]
    fn roundtrip_keys_and_tensors() {
        let mut w = GgufWriter::new();
        w.set(names::ARCHITECTURE, "bert");
        w.set("bert.block_count", 2u32);
        w.set("petal.normalize", true);
        w.set("x.eps", 1e-12f32);
        w.set(
            "tokenizer.ggml.tokens",
            OwnedValue::StringArray(vec!["[PAD]".into(), "é".into()]),
        );
        let x: Vec<f32> = (0..64).map(|i| i as f32 / 7.0 - 3.0).collect();
        let mut q = Vec::new();
        quant::quantize(&x, TensorType::Q8_0, &mut q).unwrap();
        w.add_tensor("a", &[2, 32], TensorType::Q8_0, q.clone())
            .unwrap();
        let mut f = Vec::new();
        quant::quantize(&x[..3], TensorType::F32, &mut f).unwrap();
        w.add_tensor("b", &[3], TensorType::F32, f.clone()).unwrap();
        assert!(w.add_tensor("a", &[3], TensorType::F32, f.clone()).is_err());
        assert!(w.add_tensor("c", &[4], TensorType::F32, f.clone()).is_err());

        let mut bytes = Vec::new();
        let n = w.write_to(&mut bytes).unwrap();
        assert_eq!(n as usize, bytes.len());
        let g = Gguf::parse(&bytes).unwrap();
        assert_eq!(g.alignment, 64);
        assert_eq!(g.get(names::ARCHITECTURE), Some(Value::String("bert")));
        assert_eq!(g.get("bert.block_count").and_then(|v| v.as_u32()), Some(2));
        assert_eq!(g.get("petal.normalize"), Some(Value::Bool(true)));
        assert_eq!(g.get("x.eps").and_then(|v| v.as_f32()), Some(1e-12));
        let toks: Vec<&str> = g
            .get("tokenizer.ggml.tokens")
            .unwrap()
            .as_array()
            .unwrap()
            .strings()
            .unwrap()
            .collect();
        assert_eq!(toks, ["[PAD]", "é"]);
        let a = g.tensor("a").unwrap();
        assert_eq!(a.shape(), [2, 32]);
        assert_eq!(a.ty, TensorType::Q8_0);
        assert_eq!(g.tensor_data(a), &q[..]);
        let b = g.tensor("b").unwrap();
        assert_eq!(b.offset % 64, 0);
        assert_eq!(g.tensor_data(b), &f[..]);
        assert_eq!((g.data_offset + b.offset) % 64, 0);
    }

    #[test]
    fn atomic_write_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        let mut w = GgufWriter::new();
        w.add_tensor("t", &[1], TensorType::F32, 1f32.to_le_bytes().to_vec())
            .unwrap();
        w.write_atomic(&path).unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from("m.gguf")]);
        assert!(w.write_atomic(&dir.path().join("missing/m.gguf")).is_err());
    }
}
