//! Tensor storage types and ggml's reference quantization for Q8_0 and Q4_0.
//!
//! The block layouts and the rounding are ggml's (`ggml-common.h`, `quantize_row_q8_0_ref`,
//! `quantize_row_q4_0_ref`) and produce the same bytes as the Python `gguf.quants.quantize`.

use alloc::vec::Vec;
use core::fmt;
use half::f16;

/// Weights in one Q8_0 or Q4_0 block.
pub const QK: usize = 32;

/// One Q8_0 block: an f16 scale and 32 signed bytes; value = `qs[j] * d`.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct BlockQ8_0 {
    /// Scale, IEEE binary16 bits.
    pub d: u16,
    /// Quantized weights.
    pub qs: [i8; QK],
}

/// One Q4_0 block: an f16 scale and 32 nibbles; weight `j` is the low nibble of `qs[j]`, weight
/// `j + 16` the high nibble; value = `(q - 8) * d`.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct BlockQ4_0 {
    /// Scale, IEEE binary16 bits.
    pub d: u16,
    /// Packed nibbles.
    pub qs: [u8; QK / 2],
}

const _: () = assert!(core::mem::size_of::<BlockQ8_0>() == 34);
const _: () = assert!(core::mem::size_of::<BlockQ4_0>() == 18);

/// A tensor's storage type, with ggml's type id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TensorType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// ggml Q4_0 blocks.
    Q4_0,
    /// ggml Q8_0 blocks.
    Q8_0,
}

impl TensorType {
    /// Every type petal reads and writes.
    pub const ALL: [TensorType; 4] = [Self::F32, Self::F16, Self::Q4_0, Self::Q8_0];

    /// ggml's id for this type.
    pub const fn ggml_id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q8_0 => 8,
        }
    }

    /// The type with ggml id `id`, if petal supports it.
    pub fn from_ggml_id(id: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.ggml_id() == id)
    }

    /// Elements in one block.
    pub const fn block_len(self) -> usize {
        match self {
            Self::F32 | Self::F16 => 1,
            Self::Q4_0 | Self::Q8_0 => QK,
        }
    }

    /// Bytes in one block.
    pub const fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 => 2,
            Self::Q4_0 => core::mem::size_of::<BlockQ4_0>(),
            Self::Q8_0 => core::mem::size_of::<BlockQ8_0>(),
        }
    }

    /// Bytes of a tensor whose innermost dimension is `ne0` and which has `rows` rows, or `None`
    /// when `ne0` is not a multiple of the block length or the size overflows.
    pub fn tensor_bytes(self, ne0: u64, rows: u64) -> Option<u64> {
        let bl = self.block_len() as u64;
        if !ne0.is_multiple_of(bl) {
            return None;
        }
        (ne0 / bl)
            .checked_mul(self.block_bytes() as u64)?
            .checked_mul(rows)
    }

    /// Lower-case name as used on the command line (`f32`, `f16`, `q4_0`, `q8_0`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Q4_0 => "q4_0",
            Self::Q8_0 => "q8_0",
        }
    }

    /// Parses a name as printed by [`TensorType::name`], case-insensitively.
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::Q4_0 => "Q4_0",
            Self::Q8_0 => "Q8_0",
        })
    }
}

/// Quantizes one block to Q8_0 with ggml's reference rounding.
pub fn quantize_block_q8_0(x: &[f32; QK]) -> BlockQ8_0 {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut qs = [0i8; QK];
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = round_half_away(v * id) as i8;
    }
    BlockQ8_0 {
        d: f16::from_f32(d).to_bits(),
        qs,
    }
}

/// Quantizes one block to Q4_0 with ggml's reference rounding.
pub fn quantize_block_q4_0(x: &[f32; QK]) -> BlockQ4_0 {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    // `as u8` truncates toward zero (the operand is at least 0.5 here) and saturates.
    let q = |v: f32| -> u8 { ((v * id + 8.5) as u8).min(15) };
    let mut qs = [0u8; QK / 2];
    for (j, b) in qs.iter_mut().enumerate() {
        *b = q(x[j]) | (q(x[j + QK / 2]) << 4);
    }
    BlockQ4_0 {
        d: f16::from_f32(d).to_bits(),
        qs,
    }
}

/// C's `roundf` (half away from zero) for `|x| < 2^31`, written as gguf-py's `np_roundf` since
/// `f32::round` is not in `core`.
fn round_half_away(x: f32) -> i32 {
    let a = x.abs();
    let floored = a as i32;
    let r = floored + (2.0 * (a - floored as f32)) as i32;
    if x < 0.0 {
        -r
    } else {
        r
    }
}

/// Dequantizes a Q8_0 block.
pub fn dequantize_block_q8_0(b: &BlockQ8_0, out: &mut [f32; QK]) {
    let d = f16::from_bits(b.d).to_f32();
    for (o, &q) in out.iter_mut().zip(&b.qs) {
        *o = q as f32 * d;
    }
}

/// Dequantizes a Q4_0 block.
pub fn dequantize_block_q4_0(b: &BlockQ4_0, out: &mut [f32; QK]) {
    let d = f16::from_bits(b.d).to_f32();
    for (j, &q) in b.qs.iter().enumerate() {
        out[j] = ((q & 0x0f) as i32 - 8) as f32 * d;
        out[j + QK / 2] = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

/// Error of [`quantize`] and [`dequantize`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantError {
    /// The element count is not a multiple of the type's block length.
    NotBlockMultiple {
        /// Elements given.
        len: usize,
        /// Block length of the type.
        block: usize,
    },
    /// The byte count does not match the element count for this type.
    ByteLength {
        /// Bytes expected.
        expected: usize,
        /// Bytes given.
        got: usize,
    },
}

impl fmt::Display for QuantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotBlockMultiple { len, block } => {
                write!(
                    f,
                    "{len} elements are not a multiple of the block length {block}"
                )
            }
            Self::ByteLength { expected, got } => {
                write!(f, "expected {expected} bytes of tensor data, got {got}")
            }
        }
    }
}

impl core::error::Error for QuantError {}

/// Encodes `x` (row-major, innermost dimension a multiple of the block length) as `ty`, appending
/// the little-endian bytes to `out`.
pub fn quantize(x: &[f32], ty: TensorType, out: &mut Vec<u8>) -> Result<(), QuantError> {
    let bl = ty.block_len();
    if !x.len().is_multiple_of(bl) {
        return Err(QuantError::NotBlockMultiple {
            len: x.len(),
            block: bl,
        });
    }
    out.reserve(x.len() / bl * ty.block_bytes());
    match ty {
        TensorType::F32 => x
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        TensorType::F16 => x
            .iter()
            .for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_bits().to_le_bytes())),
        TensorType::Q8_0 => {
            for chunk in x.chunks_exact(QK) {
                let b = quantize_block_q8_0(chunk.try_into().expect("chunk of QK"));
                out.extend_from_slice(&b.d.to_le_bytes());
                out.extend(b.qs.iter().map(|&q| q as u8));
            }
        }
        TensorType::Q4_0 => {
            for chunk in x.chunks_exact(QK) {
                let b = quantize_block_q4_0(chunk.try_into().expect("chunk of QK"));
                out.extend_from_slice(&b.d.to_le_bytes());
                out.extend_from_slice(&b.qs);
            }
        }
    }
    Ok(())
}

/// Decodes `n` elements of type `ty` from little-endian `bytes` into `out`.
pub fn dequantize(
    bytes: &[u8],
    ty: TensorType,
    n: usize,
    out: &mut Vec<f32>,
) -> Result<(), QuantError> {
    let bl = ty.block_len();
    if !n.is_multiple_of(bl) {
        return Err(QuantError::NotBlockMultiple { len: n, block: bl });
    }
    let expected = n / bl * ty.block_bytes();
    if bytes.len() != expected {
        return Err(QuantError::ByteLength {
            expected,
            got: bytes.len(),
        });
    }
    out.reserve(n);
    let mut buf = [0f32; QK];
    match ty {
        TensorType::F32 => bytes
            .chunks_exact(4)
            .for_each(|c| out.push(f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        TensorType::F16 => bytes
            .chunks_exact(2)
            .for_each(|c| out.push(f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())),
        TensorType::Q8_0 => {
            for c in bytes.chunks_exact(ty.block_bytes()) {
                let mut qs = [0i8; QK];
                qs.iter_mut().zip(&c[2..]).for_each(|(q, &b)| *q = b as i8);
                let b = BlockQ8_0 {
                    d: u16::from_le_bytes([c[0], c[1]]),
                    qs,
                };
                dequantize_block_q8_0(&b, &mut buf);
                out.extend_from_slice(&buf);
            }
        }
        TensorType::Q4_0 => {
            for c in bytes.chunks_exact(ty.block_bytes()) {
                let b = BlockQ4_0 {
                    d: u16::from_le_bytes([c[0], c[1]]),
                    qs: c[2..].try_into().expect("16 nibble bytes"),
                };
                dequantize_block_q4_0(&b, &mut buf);
                out.extend_from_slice(&buf);
            }
        }
    }
    Ok(())
}

/// Relative RMS error `sqrt(sum (x - y)^2 / sum x^2)`, 0 when `x` is all zeros and equal to `y`.
pub fn relative_rms_error(x: &[f32], y: &[f32]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (&a, &b) in x.iter().zip(y) {
        let e = a as f64 - b as f64;
        num += e * e;
        den += a as f64 * a as f64;
    }
    if den == 0.0 {
        if num == 0.0 {
            0.0
        } else {
            f64::INFINITY
        }
    } else {
        libm::sqrt(num / den)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Q8_0's worst error on a block, relative to `max|x|`: half a step (`d / 2`, `d = max|x| /
    /// 127`) plus the f16 rounding of `d` (relative 2^-11) times the largest `|q|`, 127.
    const Q8_0_MAX_REL_STEP: f32 = (0.5 + 127.0 / 2048.0) / 127.0;

    #[test]
    fn q8_0_roundtrip_within_half_step() {
        let x: Vec<f32> = (0..QK * 4)
            .map(|i| ((i as f32) * 0.37).sin() * 3.0)
            .collect();
        let mut bytes = Vec::new();
        quantize(&x, TensorType::Q8_0, &mut bytes).unwrap();
        assert_eq!(bytes.len(), 4 * 34);
        let mut y = Vec::new();
        dequantize(&bytes, TensorType::Q8_0, x.len(), &mut y).unwrap();
        for (xb, yb) in x.chunks(QK).zip(y.chunks(QK)) {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (a, b) in xb.iter().zip(yb) {
                assert!((a - b).abs() <= amax * Q8_0_MAX_REL_STEP, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn q4_0_extreme_maps_to_zero_nibble() {
        let mut x = [0.5f32; QK];
        x[3] = -4.0;
        let b = quantize_block_q4_0(&x);
        assert_eq!(f16::from_bits(b.d).to_f32(), 0.5);
        assert_eq!(b.qs[3] & 0x0f, 0);
        let mut y = [0f32; QK];
        dequantize_block_q4_0(&b, &mut y);
        assert_eq!(y[3], -4.0);
        assert_eq!(y[0], 0.5);
    }

    #[test]
    fn zero_block_is_zero() {
        let x = [0f32; QK];
        assert_eq!(quantize_block_q8_0(&x), BlockQ8_0 { d: 0, qs: [0; QK] });
        // d = 0 / -8 is -0.0, as in ggml and gguf-py.
        assert_eq!(
            quantize_block_q4_0(&x),
            BlockQ4_0 {
                d: 0x8000,
                qs: [0x88; QK / 2]
            }
        );
    }

    #[test]
    fn length_checks() {
        let mut out = Vec::new();
        assert_eq!(
            quantize(&[1.0; 33], TensorType::Q8_0, &mut out),
            Err(QuantError::NotBlockMultiple { len: 33, block: 32 })
        );
        let mut y = Vec::new();
        assert_eq!(
            dequantize(&[0u8; 33], TensorType::Q8_0, 32, &mut y),
            Err(QuantError::ByteLength {
                expected: 34,
                got: 33
            })
        );
    }

    #[test]
    fn rounding_matches_roundf() {
        for (x, r) in [
            (0.5, 1),
            (-0.5, -1),
            (1.49, 1),
            (2.5, 3),
            (-2.5, -3),
            (126.6, 127),
            (0.0, 0),
        ] {
            assert_eq!(round_half_away(x), r, "{x}");
        }
    }

    #[test]
    fn rms_error_and_sqrt() {
        assert_eq!(relative_rms_error(&[3.0, 4.0], &[3.0, 4.0]), 0.0);
        assert!((relative_rms_error(&[3.0, 4.0], &[0.0, 0.0]) - 1.0).abs() < 1e-12);
        assert!(
            (relative_rms_error(&[1.0, 1.0], &[0.0, 1.0]) - core::f64::consts::FRAC_1_SQRT_2).abs()
                < 1e-15
        );
    }
}
