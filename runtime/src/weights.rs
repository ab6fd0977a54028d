//! Views of the encoder's tensors inside the file's bytes: offsets and shapes resolved once at
//! load, bytes borrowed at use. Nothing is copied or repacked.

use alloc::borrow::Cow;
use alloc::string::ToString;
use alloc::vec;
use alloc::vec::Vec;

use crate::config::{LoadError, ModelConfig};
use crate::gguf::names::tensor::{self, Block};
use crate::gguf::Gguf;
use crate::quant::{self, TensorType};

#[cfg(target_endian = "big")]
compile_error!(
    "petal reads little-endian tensor data in place and supports little-endian targets only"
);

/// A tensor's place in the file: `rows` x `cols` elements of type `ty` (a vector has one row).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorRef {
    /// Storage type.
    pub ty: TensorType,
    /// Rows (outputs of a linear layer).
    pub rows: usize,
    /// Columns (inputs of a linear layer); a multiple of the type's block length.
    pub cols: usize,
    /// Byte offset in the file.
    pub start: usize,
    /// Byte length.
    pub len: usize,
}

impl TensorRef {
    /// The matrix this refers to inside `bytes` (the whole file).
    pub fn view<'a>(&self, bytes: &'a [u8]) -> Matrix<'a> {
        // Ranges were checked against the file by the GGUF reader at load; a foreign byte
        // slice shorter than the file yields an empty view rather than a panic.
        let data = bytes.get(self.start..self.start + self.len).unwrap_or(&[]);
        Matrix {
            ty: self.ty,
            rows: self.rows,
            cols: self.cols,
            data,
        }
    }

    /// The tensor as F32 values (it must be an F32 tensor; checked at load).
    pub fn f32s<'a>(&self, bytes: &'a [u8]) -> Cow<'a, [f32]> {
        f32_slice(self.view(bytes).data)
    }
}

/// `bytes` as little-endian f32 values, borrowed when aligned (always, for a mapped file).
pub fn f32_slice(bytes: &[u8]) -> Cow<'_, [f32]> {
    match bytemuck::try_cast_slice(bytes) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => Cow::Owned(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
    }
}

/// A weight matrix in the file: row `r` holds the `cols` weights of output `r`.
#[derive(Clone, Copy, Debug)]
pub struct Matrix<'a> {
    /// Storage type.
    pub ty: TensorType,
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Encoded bytes, `rows * row_bytes()`.
    pub data: &'a [u8],
}

impl<'a> Matrix<'a> {
    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.cols / self.ty.block_len() * self.ty.block_bytes()
    }

    /// The encoded bytes of row `r`.
    pub fn row(&self, r: usize) -> &'a [u8] {
        let n = self.row_bytes();
        self.data.get(r * n..(r + 1) * n).unwrap_or(&[])
    }

    /// Decodes row `r` into `out` (`cols` values).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let bytes = self.row(r);
        match self.ty {
            TensorType::F32 => out.copy_from_slice(&f32_slice(bytes)),
            TensorType::F16 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
                }
            }
            TensorType::Q8_0 => {
                for (o, b) in out
                    .chunks_exact_mut(quant::QK)
                    .zip(bytes.chunks_exact(2 + quant::QK))
                {
                    let d = half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
                    o.iter_mut()
                        .zip(&b[2..])
                        .for_each(|(o, &q)| *o = q as i8 as f32 * d);
                }
            }
            TensorType::Q4_0 => {
                for (o, b) in out
                    .chunks_exact_mut(quant::QK)
                    .zip(bytes.chunks_exact(2 + quant::QK / 2))
                {
                    let d = half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
                    let (lo, hi) = o.split_at_mut(quant::QK / 2);
                    for ((l, h), &q) in lo.iter_mut().zip(hi).zip(&b[2..]) {
                        *l = ((q & 0x0f) as i32 - 8) as f32 * d;
                        *h = ((q >> 4) as i32 - 8) as f32 * d;
                    }
                }
            }
        }
    }

    /// The whole matrix as f32 (for tests and the backward pass).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        for (r, o) in out.chunks_exact_mut(self.cols).enumerate() {
            self.dequantize_row(r, o);
        }
        out
    }
}

/// A linear layer `y = W x + b`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Linear {
    /// `[out, in]`.
    pub weight: TensorRef,
    /// `[out]`, F32.
    pub bias: TensorRef,
}

/// A LayerNorm's scale and shift, both F32 `[H]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Norm {
    /// Scale (gamma).
    pub weight: TensorRef,
    /// Shift (beta).
    pub bias: TensorRef,
}

/// One encoder layer's weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerWeights {
    /// Query projection.
    pub q: Linear,
    /// Key projection.
    pub k: Linear,
    /// Value projection.
    pub v: Linear,
    /// Attention output projection.
    pub o: Linear,
    /// LayerNorm after attention.
    pub attn_norm: Norm,
    /// Feed-forward up projection.
    pub up: Linear,
    /// Feed-forward down projection.
    pub down: Linear,
    /// LayerNorm after the feed-forward.
    pub out_norm: Norm,
}

impl LayerWeights {
    /// The linear layer at `part` (None for the norms).
    pub fn linear(&self, part: Block) -> Option<&Linear> {
        Some(match part {
            Block::AttnQ => &self.q,
            Block::AttnK => &self.k,
            Block::AttnV => &self.v,
            Block::AttnOutput => &self.o,
            Block::FfnUp => &self.up,
            Block::FfnDown => &self.down,
            _ => return None,
        })
    }
}

/// The classification head: `logits = out(act(dense(h_cls)))`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadWeights {
    /// `cls`: `[H, H]`.
    pub dense: Linear,
    /// `cls.output`: `[labels, H]`.
    pub out: Linear,
}

/// Every tensor the encoder uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Weights {
    /// Word embeddings `[vocab, H]`.
    pub token_embd: TensorRef,
    /// Token type embeddings `[types, H]`, absent for DistilBERT.
    pub token_types: Option<TensorRef>,
    /// Position embeddings `[positions, H]`.
    pub position_embd: TensorRef,
    /// Embedding LayerNorm.
    pub embd_norm: Norm,
    /// Encoder layers.
    pub layers: Vec<LayerWeights>,
    /// Classification head, when the file has labels.
    pub head: Option<HeadWeights>,
}

struct Resolver<'g, 'a> {
    g: &'g Gguf<'a>,
}

impl Resolver<'_, '_> {
    fn get(&self, name: &str, shape: &[usize], vector: bool) -> Result<TensorRef, LoadError> {
        let t = self
            .g
            .tensor(name)
            .ok_or_else(|| LoadError::MissingTensor(name.to_string()))?;
        let found = t.shape();
        let shape_ok = if shape.first() == Some(&0) {
            // Unknown leading dimension (vocabulary, positions, labels): any positive count.
            found.len() == shape.len() && found[1..] == shape[1..]
        } else {
            found == shape
        };
        if !shape_ok {
            return Err(LoadError::TensorShape {
                name: name.to_string(),
                expected: shape.to_vec(),
                found,
            });
        }
        if vector && t.ty != TensorType::F32 {
            return Err(LoadError::TensorType {
                name: name.to_string(),
                found: t.ty.name(),
            });
        }
        let cols = *found.last().expect("at least one dimension");
        let rows = found.iter().rev().skip(1).product();
        Ok(TensorRef {
            ty: t.ty,
            rows,
            cols,
            start: (self.g.data_offset + t.offset) as usize,
            len: t.size as usize,
        })
    }

    fn linear(&self, prefix: &str, out: usize, inp: usize) -> Result<Linear, LoadError> {
        Ok(Linear {
            weight: self.get(&alloc::format!("{prefix}.weight"), &[out, inp], false)?,
            bias: self.get(&alloc::format!("{prefix}.bias"), &[out], true)?,
        })
    }

    fn norm(&self, prefix: &str, h: usize) -> Result<Norm, LoadError> {
        Ok(Norm {
            weight: self.get(&alloc::format!("{prefix}.weight"), &[h], true)?,
            bias: self.get(&alloc::format!("{prefix}.bias"), &[h], true)?,
        })
    }
}

impl Weights {
    /// Resolves every tensor `c` needs in `g`, checking names, shapes and types.
    pub fn resolve(g: &Gguf<'_>, c: &ModelConfig) -> Result<Self, LoadError> {
        let r = Resolver { g };
        let (h, f) = (c.hidden, c.ffn);
        let blk = |n: usize, b: Block| alloc::format!("blk.{n}.{}", b.stem());
        // Each layer has eight tensors, so a file cannot hold more layers than an eighth of its
        // tensors: reserve no more than that (the count comes from the file), and the loop
        // below fails at the first missing tensor.
        let mut layers = Vec::with_capacity(c.layers.min(g.tensors().len() / 8));
        for n in 0..c.layers {
            layers.push(LayerWeights {
                q: r.linear(&blk(n, Block::AttnQ), h, h)?,
                k: r.linear(&blk(n, Block::AttnK), h, h)?,
                v: r.linear(&blk(n, Block::AttnV), h, h)?,
                o: r.linear(&blk(n, Block::AttnOutput), h, h)?,
                attn_norm: r.norm(&blk(n, Block::AttnOutputNorm), h)?,
                up: r.linear(&blk(n, Block::FfnUp), f, h)?,
                down: r.linear(&blk(n, Block::FfnDown), h, f)?,
                out_norm: r.norm(&blk(n, Block::LayerOutputNorm), h)?,
            });
        }
        let head = match &c.labels {
            None => None,
            Some(labels) => Some(HeadWeights {
                dense: r.linear(tensor::CLS, h, h)?,
                out: r.linear(tensor::CLS_OUTPUT, labels.len(), h)?,
            }),
        };
        let position_embd = r.get(tensor::POSITION_EMBD, &[0, h], false)?;
        if position_embd.rows < c.position_offset + c.context_length {
            return Err(LoadError::TensorShape {
                name: tensor::POSITION_EMBD.to_string(),
                expected: vec![c.position_offset + c.context_length, h],
                found: vec![position_embd.rows, h],
            });
        }
        let token_types = match g.tensor(tensor::TOKEN_TYPES) {
            None => None,
            Some(_) => Some(r.get(tensor::TOKEN_TYPES, &[0, h], false)?),
        };
        Ok(Weights {
            token_embd: r.get(tensor::TOKEN_EMBD, &[0, h], false)?,
            token_types,
            position_embd,
            embd_norm: r.norm(tensor::TOKEN_EMBD_NORM, h)?,
            layers,
            head,
        })
    }
}
