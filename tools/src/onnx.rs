//! ONNX import: the weights of a BERT-style ONNX export, read through tract-onnx's protobuf
//! model, mapped onto Hugging Face names so the rest of the converter is shared.
//!
//! Weights are found where exporters put them: named initializers (embeddings, norms, biases),
//! anonymous `MatMul` initializers named through the bias `Add` that follows them, and weight-only
//! int8 patterns (`Cast` + `Mul` by per-row scales, or `DequantizeLinear`) evaluated here. The
//! graph itself is never run, so this works where tract cannot run it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tract_onnx::pb::{self, NodeProto, TensorProto};
use tract_onnx::prelude::Framework;

use crate::convert::{Checkpoint, ConvertOptions, SourceData, SourceTensor};
use crate::hf::{Arch, Config};

/// Deepest chain of constant-folded nodes followed to a weight.
const MAX_FOLD_DEPTH: usize = 8;
/// Head sizes tried when the graph must tell the head count.
const HEAD_DIMS: [usize; 7] = [64, 32, 128, 16, 80, 96, 48];

/// A constant array.
#[derive(Clone, Debug)]
struct Arr {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl Arr {
    fn transpose2(&self) -> Option<Arr> {
        let [r, c] = self.shape[..] else { return None };
        let mut data = vec![0f32; r * c];
        for i in 0..r {
            for j in 0..c {
                data[j * r + i] = self.data[i * c + j];
            }
        }
        Some(Arr {
            shape: vec![c, r],
            data,
        })
    }

    /// Element-wise `self op other` with NumPy broadcasting of `other` (same rank or scalar).
    fn broadcast(&self, other: &Arr, op: impl Fn(f32, f32) -> f32) -> Option<Arr> {
        if other.data.len() == 1 {
            return Some(Arr {
                shape: self.shape.clone(),
                data: self.data.iter().map(|&a| op(a, other.data[0])).collect(),
            });
        }
        if self.shape.len() != other.shape.len()
            || self
                .shape
                .iter()
                .zip(&other.shape)
                .any(|(&a, &b)| b != a && b != 1)
        {
            return None;
        }
        let rank = self.shape.len();
        let mut strides = vec![0usize; rank];
        let mut s = 1;
        for d in (0..rank).rev() {
            strides[d] = if other.shape[d] == 1 { 0 } else { s };
            s *= other.shape[d];
        }
        let mut idx = vec![0usize; rank];
        let data = self
            .data
            .iter()
            .map(|&a| {
                let off: usize = idx.iter().zip(&strides).map(|(i, s)| i * s).sum();
                for d in (0..rank).rev() {
                    idx[d] += 1;
                    if idx[d] < self.shape[d] {
                        break;
                    }
                    idx[d] = 0;
                }
                op(a, other.data[off])
            })
            .collect();
        Some(Arr {
            shape: self.shape.clone(),
            data,
        })
    }
}

fn decode(t: &TensorProto) -> Result<Arr> {
    if !t.external_data.is_empty() {
        bail!(
            "initializer \"{}\" keeps its data in an external file, which petal does not read",
            t.name
        );
    }
    let shape: Vec<usize> = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<_, _>>()
        .with_context(|| format!("initializer \"{}\" has a negative dimension", t.name))?;
    let n: usize = shape.iter().product();
    let raw = &t.raw_data;
    use pb::tensor_proto::DataType as D;
    let data: Vec<f32> = match D::try_from(t.data_type).ok() {
        Some(D::Float) if !raw.is_empty() => raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Some(D::Float) => t.float_data.clone(),
        Some(D::Float16) => raw
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Some(D::Int8) if !raw.is_empty() => raw.iter().map(|&b| b as i8 as f32).collect(),
        Some(D::Uint8) if !raw.is_empty() => raw.iter().map(|&b| b as f32).collect(),
        Some(D::Int8 | D::Uint8 | D::Int32) if raw.is_empty() => {
            t.int32_data.iter().map(|&v| v as f32).collect()
        }
        Some(D::Int32) => raw
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32)
            .collect(),
        Some(D::Int64) if !raw.is_empty() => raw
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32)
            .collect(),
        Some(D::Int64) => t.int64_data.iter().map(|&v| v as f32).collect(),
        _ => bail!(
            "initializer \"{}\" has data type {} which petal does not read",
            t.name,
            t.data_type
        ),
    };
    if data.len() != n {
        bail!(
            "initializer \"{}\" holds {} values for shape {shape:?}",
            t.name,
            data.len()
        );
    }
    Ok(Arr { shape, data })
}

fn attr<'a>(node: &'a NodeProto, name: &str) -> Option<&'a pb::AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

struct Graph<'a> {
    consts: HashMap<&'a str, &'a TensorProto>,
    producers: HashMap<&'a str, &'a NodeProto>,
    nodes: &'a [NodeProto],
}

impl<'a> Graph<'a> {
    /// The constant value of `name`, folding casts, scales, dequantization and transposes.
    fn value(&self, name: &str, depth: usize) -> Result<Option<Arr>> {
        if let Some(t) = self.consts.get(name) {
            return decode(t).map(Some);
        }
        let Some(node) = self.producers.get(name) else {
            return Ok(None);
        };
        if depth >= MAX_FOLD_DEPTH {
            return Ok(None);
        }
        let input = |i: usize| -> Result<Option<Arr>> {
            match node.input.get(i).filter(|s| !s.is_empty()) {
                Some(n) => self.value(n, depth + 1),
                None => Ok(None),
            }
        };
        Ok(match node.op_type.as_str() {
            "Cast" | "Identity" => input(0)?,
            "Mul" => match (input(0)?, input(1)?) {
                (Some(a), Some(b)) if a.data.len() >= b.data.len() => a.broadcast(&b, |x, y| x * y),
                (Some(a), Some(b)) => b.broadcast(&a, |x, y| x * y),
                _ => None,
            },
            "DequantizeLinear" => {
                let (Some(x), Some(scale)) = (input(0)?, input(1)?) else {
                    return Ok(None);
                };
                let zp = input(2)?;
                let axis = attr(node, "axis").map_or(1, |a| a.i);
                // A per-axis scale becomes broadcastable by giving it x's rank.
                let shape_for = |a: &Arr| -> Arr {
                    if a.data.len() == 1 || a.shape.len() == x.shape.len() {
                        return a.clone();
                    }
                    let axis = if axis < 0 {
                        x.shape.len() as i64 + axis
                    } else {
                        axis
                    } as usize;
                    let mut shape = vec![1; x.shape.len()];
                    shape[axis.min(x.shape.len() - 1)] = a.data.len();
                    Arr {
                        shape,
                        data: a.data.clone(),
                    }
                };
                let shifted = match zp {
                    Some(z) => x.broadcast(&shape_for(&z), |a, b| a - b),
                    None => Some(x.clone()),
                };
                shifted.and_then(|s| s.broadcast(&shape_for(&scale), |a, b| a * b))
            }
            "Transpose" => {
                let perm = attr(node, "perm").map(|a| a.ints.clone());
                match (input(0)?, perm.as_deref()) {
                    (Some(a), None | Some([1, 0])) if a.shape.len() == 2 => a.transpose2(),
                    _ => None,
                }
            }
            _ => None,
        })
    }
}

/// The weights found in an ONNX file, by Hugging Face name (model prefix removed).
#[derive(Debug)]
pub struct OnnxWeights {
    path: PathBuf,
    sha256: String,
    tensors: BTreeMap<String, Arr>,
    eps: Option<f32>,
    /// Integer and float scalars of the graph, for telling the head count.
    int_scalars: BTreeSet<i64>,
    float_scalars: Vec<f32>,
}

/// The Hugging Face name inside an exporter's name: from `embeddings.`, `encoder.` or `pooler.`
/// on (`inner.encoder.layer.0...` -> `encoder.layer.0...`).
fn hf_name(name: &str) -> Option<&str> {
    ["embeddings.", "encoder.layer.", "pooler.", "classifier."]
        .iter()
        .filter_map(|m| {
            name.find(m)
                .filter(|&i| i == 0 || name.as_bytes()[i - 1] == b'.')
        })
        .min()
        .map(|i| &name[i..])
}

impl OnnxWeights {
    pub fn load(path: &Path) -> Result<Self> {
        let bytes =
            std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
        Self::from_bytes(bytes, path)
    }

    /// The weights of the ONNX file `bytes`; `path` names it in errors.
    pub fn from_bytes(bytes: Vec<u8>, path: &Path) -> Result<Self> {
        let sha256 = petal_adapt::adapter::base_hash(&bytes);
        let proto = tract_onnx::onnx()
            .proto_model_for_read(&mut &bytes[..])
            .map_err(|e| anyhow::anyhow!("{}: not a valid ONNX file: {e}", path.display()))?;
        drop(bytes);
        let graph = proto
            .graph
            .as_ref()
            .with_context(|| format!("{}: ONNX file without a graph", path.display()))?;
        let mut consts: HashMap<&str, &TensorProto> = graph
            .initializer
            .iter()
            .map(|t| (t.name.as_str(), t))
            .collect();
        let mut producers = HashMap::new();
        for node in &graph.node {
            if node.op_type == "Constant" {
                if let (Some(out), Some(t)) = (
                    node.output.first(),
                    attr(node, "value").and_then(|a| a.t.as_ref()),
                ) {
                    consts.insert(out.as_str(), t);
                }
            }
            for o in &node.output {
                producers.insert(o.as_str(), node);
            }
        }
        let g = Graph {
            consts,
            producers,
            nodes: &graph.node,
        };
        let ctx = |e: anyhow::Error| e.context(path.display().to_string());

        let mut tensors = BTreeMap::new();
        let mut candidates: Vec<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
        candidates.extend(
            graph
                .node
                .iter()
                .flat_map(|n| n.output.iter().map(String::as_str)),
        );
        for name in candidates {
            let Some(hf) = hf_name(name) else { continue };
            if !(hf.ends_with(".weight") || hf.ends_with(".bias")) || tensors.contains_key(hf) {
                continue;
            }
            if let Some(a) = g.value(name, 0).map_err(ctx)? {
                tensors.insert(hf.to_string(), a);
            }
        }
        // Linear layers: MatMul(x, W) + bias, W stored [in, out]; named after the bias.
        for node in g.nodes.iter().filter(|n| n.op_type == "MatMul") {
            let (Some(w_name), Some(out)) = (node.input.get(1), node.output.first()) else {
                continue;
            };
            let Some(add) = g
                .nodes
                .iter()
                .find(|n| n.op_type == "Add" && n.input.contains(out))
            else {
                continue;
            };
            let Some(bias) = add.input.iter().find(|i| *i != out) else {
                continue;
            };
            let Some(module) = hf_name(bias).and_then(|b| b.strip_suffix(".bias")) else {
                continue;
            };
            let key = format!("{module}.weight");
            if tensors.contains_key(&key) {
                continue;
            }
            if let Some(w) = g.value(w_name, 0).map_err(ctx)? {
                if let Some(t) = w.transpose2() {
                    tensors.insert(key, t);
                }
            }
        }
        let eps = g
            .nodes
            .iter()
            .find(|n| n.op_type == "LayerNormalization")
            .map(|n| attr(n, "epsilon").map_or(1e-5, |a| a.f));
        let (mut int_scalars, mut float_scalars) = (BTreeSet::new(), Vec::new());
        for t in g.consts.values() {
            if t.dims.iter().product::<i64>() == 1 {
                if let Ok(a) = decode(t) {
                    use pb::tensor_proto::DataType as D;
                    match D::try_from(t.data_type).ok() {
                        Some(D::Int64 | D::Int32) => {
                            int_scalars.insert(a.data[0] as i64);
                        }
                        Some(D::Float) => float_scalars.push(a.data[0]),
                        _ => {}
                    }
                }
            }
        }
        Ok(OnnxWeights {
            path: path.to_path_buf(),
            sha256,
            tensors,
            eps,
            int_scalars,
            float_scalars,
        })
    }

    /// The head count the graph implies: a head size among [`HEAD_DIMS`] that appears as an
    /// integer constant together with the head count, or with its square root (or fourth root)
    /// as an attention scale.
    fn infer_heads(&self, hidden: usize) -> Option<usize> {
        let near = |v: f32| {
            self.float_scalars
                .iter()
                .any(|&f| (f - v).abs() <= 1e-4 * v.abs().max(1e-3))
        };
        let found: Vec<usize> = HEAD_DIMS
            .iter()
            .copied()
            .filter(|&dh| {
                hidden.is_multiple_of(dh)
                    && hidden / dh > 1
                    && self.int_scalars.contains(&(dh as i64))
            })
            .filter(|&dh| {
                let d = dh as f32;
                self.int_scalars.contains(&((hidden / dh) as i64))
                    || near(d.sqrt())
                    || near(1.0 / d.sqrt())
                    || near(d.powf(-0.25))
            })
            .map(|dh| hidden / dh)
            .collect();
        match found[..] {
            [h] => Some(h),
            _ => None,
        }
    }

    pub fn checkpoint(self, opts: &ConvertOptions) -> Result<Checkpoint<'static>> {
        let p = self.path.display().to_string();
        let shape = |name: &str| -> Result<&Vec<usize>> {
            Ok(&self
                .tensors
                .get(name)
                .with_context(|| format!("{p}: no tensor for \"{name}\" found in the graph"))?
                .shape)
        };
        let we = shape("embeddings.word_embeddings.weight")?;
        let (vocab, hidden) = (we[0], *we.last().unwrap_or(&0));
        let max_positions = shape("embeddings.position_embeddings.weight")?[0];
        let type_vocab = self
            .tensors
            .get("embeddings.token_type_embeddings.weight")
            .map_or(0, |t| t.shape[0]);
        let ffn = shape("encoder.layer.0.intermediate.dense.weight")?[0];
        let layers = self
            .tensors
            .keys()
            .filter_map(|k| {
                k.strip_prefix("encoder.layer.")?
                    .split('.')
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .max()
            .map_or(0, |m| m + 1);
        let heads = match opts.heads {
            Some(h) => h,
            None => self.infer_heads(hidden).with_context(|| {
                format!(
                    "{p}: cannot tell the number of attention heads from the graph; pass --heads N"
                )
            })?,
        };
        if heads == 0 || hidden % heads != 0 {
            bail!("{p}: {heads} heads do not divide the hidden size {hidden}");
        }
        let tokenizer_path = opts.tokenizer.clone().with_context(|| {
            format!("{p}: an ONNX file has no tokenizer; pass --tokenizer tokenizer.json")
        })?;
        let tokenizer_json = std::fs::read_to_string(&tokenizer_path)
            .with_context(|| format!("{}: cannot read", tokenizer_path.display()))?;
        let config = Config {
            arch: Arch::Bert,
            hidden,
            layers,
            heads,
            ffn,
            vocab,
            max_positions,
            type_vocab,
            eps: self.eps.unwrap_or(1e-12),
            pad_token_id: 0,
            position_offset: 0,
            labels: None,
        };
        log::info!("{p}: BERT, {layers} layers, hidden {hidden}, {heads} heads, feed-forward {ffn}, vocabulary {vocab}");
        let name = self
            .path
            .file_stem()
            .map_or("model".into(), |s| s.to_string_lossy().into_owned());
        let tensors = self
            .tensors
            .into_iter()
            .map(|(k, a)| {
                (
                    k,
                    SourceTensor {
                        shape: a.shape,
                        data: SourceData::F32(a.data),
                    },
                )
            })
            .collect();
        Ok(Checkpoint {
            config,
            tensors,
            weights_path: self.path,
            sha256: self.sha256,
            format: "onnx",
            sentence_pooling: None,
            // An export beside its sentence-transformers folder: the tokenizer's folder.
            max_seq_length: match tokenizer_path.parent() {
                Some(dir) => crate::hf::max_seq_length(dir)?,
                None => None,
            },
            tokenizer_json,
            tokenizer_path,
            name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exporter_names_map_to_hugging_face_names() {
        assert_eq!(
            hf_name("inner.encoder.layer.0.attention.self.query.bias"),
            Some("encoder.layer.0.attention.self.query.bias")
        );
        assert_eq!(
            hf_name("model.0.auto_model.embeddings.LayerNorm.weight"),
            Some("embeddings.LayerNorm.weight")
        );
        assert_eq!(hf_name("onnx::MatMul_470"), None);
        assert_eq!(hf_name("myembeddings.x"), None);
    }

    #[test]
    fn broadcasting_scales() {
        let q = Arr {
            shape: vec![2, 3],
            data: vec![1., 2., 3., 4., 5., 6.],
        };
        let per_row = Arr {
            shape: vec![2, 1],
            data: vec![10., 100.],
        };
        assert_eq!(
            q.broadcast(&per_row, |a, b| a * b).unwrap().data,
            [10., 20., 30., 400., 500., 600.]
        );
        let per_col = Arr {
            shape: vec![1, 3],
            data: vec![1., 0., -1.],
        };
        assert_eq!(
            q.broadcast(&per_col, |a, b| a * b).unwrap().data,
            [1., 0., -3., 4., 0., -6.]
        );
        assert_eq!(q.transpose2().unwrap().data, [1., 4., 2., 5., 3., 6.]);
    }
}
