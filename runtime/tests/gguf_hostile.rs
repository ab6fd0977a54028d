//! Handmade bad files, one per reader error, and a check that no prefix or byte flip of a valid
//! file panics.

use petal_runtime::gguf::{Gguf, GgufError, GgufWriter};
use petal_runtime::quant::TensorType;

/// Raw GGUF bytes built field by field, so each test can break exactly one thing.
struct Raw(Vec<u8>);

impl Raw {
    fn header(version: u32, n_tensors: u64, n_kvs: u64) -> Self {
        let mut r = Raw(b"GGUF".to_vec());
        r.u32(version).u64(n_tensors).u64(n_kvs);
        r
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn str(&mut self, s: &[u8]) -> &mut Self {
        self.u64(s.len() as u64);
        self.0.extend_from_slice(s);
        self
    }
    fn kv_u32(&mut self, k: &str, v: u32) -> &mut Self {
        self.str(k.as_bytes()).u32(4).u32(v)
    }
    /// A tensor info with the given dims (ggml order), type id and data offset.
    fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.str(name.as_bytes()).u32(dims.len() as u32);
        dims.iter().for_each(|&d| {
            self.u64(d);
        });
        self.u32(ty).u64(offset)
    }
    /// Pads to 64 and appends `n` data bytes.
    fn data(&mut self, n: usize) -> &mut Self {
        let pad = self.0.len().next_multiple_of(64) - self.0.len();
        self.0.extend(std::iter::repeat_n(0u8, pad + n));
        self
    }
    fn parse(&self) -> Result<(), GgufError> {
        Gguf::parse(&self.0).map(|_| ())
    }
}

/// A file with alignment 64 and one F32 tensor of 16 elements.
fn one_tensor(name: &str, dims: &[u64], ty: u32, offset: u64, data: usize) -> Raw {
    let mut r = Raw::header(3, 1, 1);
    r.kv_u32("general.alignment", 64)
        .tensor(name, dims, ty, offset)
        .data(data);
    r
}

#[test]
fn valid_handmade_file_parses() {
    one_tensor("t", &[16], 0, 0, 64).parse().unwrap();
}

#[test]
fn bad_magic() {
    let mut r = one_tensor("t", &[16], 0, 0, 64);
    r.0[0] = b'X';
    assert!(matches!(r.parse(), Err(GgufError::BadMagic { .. })));
    assert!(matches!(
        Gguf::parse(b"GG"),
        Err(GgufError::BadMagic { .. })
    ));
}

#[test]
fn unsupported_version() {
    let r = Raw::header(2, 0, 0);
    assert_eq!(r.parse(), Err(GgufError::UnsupportedVersion(2)));
}

#[test]
fn truncated_header() {
    let r = Raw(b"GGUF\x03\x00\x00\x00\x00\x00".to_vec());
    assert!(matches!(r.parse(), Err(GgufError::Truncated { .. })));
}

#[test]
fn absurd_counts() {
    let r = Raw::header(3, u64::MAX, 0);
    assert!(matches!(
        r.parse(),
        Err(GgufError::AbsurdCount {
            what: "tensor count",
            ..
        })
    ));
    let r = Raw::header(3, 0, 1 << 40);
    assert!(matches!(
        r.parse(),
        Err(GgufError::AbsurdCount {
            what: "metadata count",
            ..
        })
    ));
    let mut r = Raw::header(3, 0, 1);
    r.str(b"a").u32(9).u32(4).u64(u64::MAX / 2);
    assert!(matches!(
        r.parse(),
        Err(GgufError::AbsurdCount {
            what: "array length",
            ..
        })
    ));
    let mut r = Raw::header(3, 0, 1);
    r.u64(u64::MAX).u32(4).u32(0);
    assert!(matches!(r.parse(), Err(GgufError::StringTooLong { .. })));
}

#[test]
fn misaligned_tensor() {
    let r = one_tensor("t", &[16], 0, 4, 128);
    assert!(matches!(
        r.parse(),
        Err(GgufError::Misaligned {
            offset: 4,
            alignment: 64,
            ..
        })
    ));
}

#[test]
fn tensor_past_the_end() {
    let r = one_tensor("t", &[16], 0, 0, 63);
    assert!(matches!(
        r.parse(),
        Err(GgufError::OutOfBounds {
            size: 64,
            available: 63,
            ..
        })
    ));
    let r = one_tensor("t", &[16], 0, u64::MAX - 63, 64);
    assert!(matches!(r.parse(), Err(GgufError::OutOfBounds { .. })));
}

#[test]
fn unknown_tensor_type() {
    let r = one_tensor("t", &[16], 99, 0, 64);
    assert!(matches!(
        r.parse(),
        Err(GgufError::UnknownTensorType { id: 99, .. })
    ));
}

#[test]
fn shape_size_mismatch() {
    // Q8_0 rows must be a multiple of 32.
    let r = one_tensor("t", &[33], TensorType::Q8_0.ggml_id(), 0, 64);
    assert!(matches!(
        r.parse(),
        Err(GgufError::ShapeSizeMismatch {
            ne0: 33,
            block: 32,
            ..
        })
    ));
}

#[test]
fn bad_shapes() {
    let r = one_tensor("t", &[16, 0], 0, 0, 64);
    assert!(matches!(r.parse(), Err(GgufError::BadShape { .. })));
    let r = one_tensor("t", &[u64::MAX, u64::MAX], 0, 0, 64);
    assert!(matches!(r.parse(), Err(GgufError::BadShape { .. })));
    let r = one_tensor("t", &[1, 1, 1, 1, 1], 0, 0, 64);
    assert!(matches!(
        r.parse(),
        Err(GgufError::BadDimCount { n_dims: 5, .. })
    ));
}

#[test]
fn duplicate_key() {
    let mut r = Raw::header(3, 0, 2);
    r.kv_u32("a", 1).kv_u32("a", 2);
    assert_eq!(r.parse(), Err(GgufError::DuplicateKey("a".into())));
}

#[test]
fn duplicate_tensor() {
    let mut r = Raw::header(3, 2, 1);
    r.kv_u32("general.alignment", 64)
        .tensor("t", &[16], 0, 0)
        .tensor("t", &[16], 0, 64)
        .data(128);
    assert_eq!(r.parse(), Err(GgufError::DuplicateTensor("t".into())));
}

#[test]
fn overlapping_tensors() {
    let mut r = Raw::header(3, 2, 1);
    r.kv_u32("general.alignment", 64)
        .tensor("a", &[16], 0, 0)
        .tensor("b", &[16], 0, 64)
        .data(128);
    r.parse().unwrap();
    let mut r = Raw::header(3, 2, 1);
    r.kv_u32("general.alignment", 64)
        .tensor("a", &[17], 0, 0)
        .tensor("b", &[16], 0, 64)
        .data(128);
    // "a" is 68 bytes: it runs into "b".
    assert!(matches!(r.parse(), Err(GgufError::Overlap { .. })));
}

#[test]
fn bad_values() {
    let mut r = Raw::header(3, 0, 1);
    r.str(b"k").u32(77).u32(0);
    assert!(matches!(
        r.parse(),
        Err(GgufError::UnknownValueType { id: 77, .. })
    ));
    let mut r = Raw::header(3, 0, 1);
    r.str(b"\xff\xfe").u32(4).u32(0);
    assert!(matches!(r.parse(), Err(GgufError::InvalidUtf8 { .. })));
    let mut r = Raw::header(3, 0, 1);
    r.str(b"k").u32(7);
    r.0.push(2);
    assert!(matches!(r.parse(), Err(GgufError::InvalidBool { .. })));
    let mut r = Raw::header(3, 0, 1);
    // array of arrays of arrays of u8
    r.str(b"k").u32(9).u32(9).u64(1).u32(9).u64(1).u32(0).u64(1);
    r.0.push(0);
    assert!(matches!(r.parse(), Err(GgufError::ArrayTooDeep { .. })));
}

#[test]
fn bad_alignment() {
    let mut r = Raw::header(3, 0, 1);
    r.kv_u32("general.alignment", 48);
    assert_eq!(r.parse(), Err(GgufError::BadAlignment(48)));
    let mut r = Raw::header(3, 0, 1);
    r.str(b"general.alignment").u32(8).str(b"64");
    assert!(matches!(r.parse(), Err(GgufError::WrongKeyType { .. })));
}

fn valid_file() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.set("general.architecture", "bert");
    w.set(
        "tokenizer.ggml.tokens",
        petal_runtime::gguf::OwnedValue::StringArray(vec!["a".into(), "bc".into()]),
    );
    let x: Vec<f32> = (0..64).map(|i| i as f32).collect();
    let mut q = Vec::new();
    petal_runtime::quant::quantize(&x, TensorType::Q4_0, &mut q).unwrap();
    w.add_tensor("w", &[2, 32], TensorType::Q4_0, q).unwrap();
    w.add_tensor("b", &[2], TensorType::F32, vec![0; 8])
        .unwrap();
    let mut out = Vec::new();
    w.write_to(&mut out).unwrap();
    out
}

#[test]
fn every_prefix_is_rejected_without_panic() {
    let bytes = valid_file();
    Gguf::parse(&bytes).unwrap();
    let data_end = bytes.len() - 64; // the last tensor's bytes start 64 before the end
    for n in 0..data_end {
        assert!(
            Gguf::parse(&bytes[..n]).is_err(),
            "prefix of {n} bytes accepted"
        );
    }
}

#[test]
fn byte_flips_never_panic() {
    let bytes = valid_file();
    for i in 0..bytes.len().min(600) {
        for v in [0x00, 0xff, 0x80, 0x07] {
            let mut b = bytes.clone();
            b[i] = v;
            if let Ok(g) = Gguf::parse(&b) {
                for t in g.tensors() {
                    assert_eq!(g.tensor_data(t).len() as u64, t.size);
                }
                for (_, v) in g.metadata() {
                    if let Some(a) = v.as_array() {
                        assert!(a.iter().count() <= a.len());
                    }
                }
            }
        }
    }
}
