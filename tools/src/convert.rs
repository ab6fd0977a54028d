//! `petal convert`: a Hugging Face checkpoint folder to one GGUF file.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use half::{bf16, f16};
use indicatif::ProgressBar;
use petal_runtime::gguf::names::{self, pooling, tensor};
use petal_runtime::gguf::{GgufWriter, OwnedValue};
use petal_runtime::mmap::Mapping;
use petal_runtime::quant::{self, TensorType};
use safetensors::{Dtype, SafeTensors};
use serde::Serialize;

use crate::hf::{self, Arch, Config, Mapped};

/// How the pooled embedding is formed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// Mean over the tokens of the text.
    Mean,
    /// The first token's hidden state.
    Cls,
}

impl Pooling {
    pub fn name(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
        }
    }
}

#[derive(Debug)]
pub struct ConvertOptions {
    pub src: PathBuf,
    pub out: PathBuf,
    pub dtype: TensorType,
    pub pooling: Option<Pooling>,
    pub normalize: Option<bool>,
    /// The `tokenizer.json` to embed (required for ONNX; overrides the folder's for safetensors).
    pub tokenizer: Option<PathBuf>,
    /// Attention heads, for an ONNX file whose graph does not tell.
    pub heads: Option<usize>,
}

impl ConvertOptions {
    /// Options with the defaults of the command line.
    pub fn new(src: PathBuf, out: PathBuf, dtype: TensorType) -> Self {
        ConvertOptions {
            src,
            out,
            dtype,
            pooling: None,
            normalize: None,
            tokenizer: None,
            heads: None,
        }
    }
}

/// A source tensor: a view into a safetensors file, or values decoded from another format.
#[derive(Debug)]
pub enum SourceData<'a> {
    Safetensors(safetensors::tensor::TensorView<'a>),
    F32(Vec<f32>),
}

#[derive(Debug)]
pub struct SourceTensor<'a> {
    pub shape: Vec<usize>,
    pub data: SourceData<'a>,
}

impl SourceTensor<'_> {
    fn to_f32(&self, name: &str) -> Result<Vec<f32>> {
        match &self.data {
            SourceData::Safetensors(v) => to_f32(name, v),
            SourceData::F32(v) => Ok(v.clone()),
        }
    }
}

/// A checkpoint read from any source format, with names in Hugging Face's scheme.
#[derive(Debug)]
pub struct Checkpoint<'a> {
    pub config: Config,
    /// Source tensors by (Hugging Face style) name.
    pub tensors: BTreeMap<String, SourceTensor<'a>>,
    /// The weights file, for messages.
    pub weights_path: PathBuf,
    pub sha256: String,
    pub format: &'static str,
    pub sentence_pooling: Option<hf::SentencePooling>,
    /// sentence-transformers' truncation (`sentence_bert_config.json`), when there is one.
    pub max_seq_length: Option<usize>,
    pub tokenizer_json: String,
    pub tokenizer_path: PathBuf,
    pub name: String,
}

#[derive(Debug, Serialize)]
pub struct TensorReport {
    pub name: String,
    pub source: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub shape: Vec<usize>,
    pub bytes: usize,
    /// `sqrt(sum (w - deq(q(w)))^2 / sum w^2)`, for tensors not stored as F32.
    pub rel_rms_error: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct ConvertReport {
    pub output: String,
    pub architecture: &'static str,
    pub dtype: &'static str,
    pub pooling: Pooling,
    pub normalize: bool,
    pub labels: Option<Vec<String>>,
    pub source_sha256: String,
    pub file_bytes: u64,
    pub tensor_bytes: u64,
    pub tensors: Vec<TensorReport>,
    /// Source tensors not written (BERT's pooler in a model without a head).
    pub dropped: Vec<String>,
    /// Matrices kept as F16 because their rows are not a multiple of 32.
    pub fallbacks: Vec<String>,
}

/// The storage type of tensor `name` when the user asked for `requested` (docs/FORMAT.md).
fn storage_type(name: &str, requested: TensorType, shape: &[usize]) -> (TensorType, bool) {
    let large = name == tensor::TOKEN_EMBD
        || (name.starts_with("blk.") && name.ends_with(".weight") && !name.contains("_norm."));
    let small_matrix = [tensor::POSITION_EMBD, "cls.weight", "cls.output.weight"].contains(&name);
    let wanted = if large {
        requested
    } else if small_matrix && requested != TensorType::F32 {
        TensorType::F16
    } else {
        TensorType::F32
    };
    let ne0 = *shape.last().unwrap_or(&0);
    if !ne0.is_multiple_of(wanted.block_len()) {
        (TensorType::F16, true)
    } else {
        (wanted, false)
    }
}

fn to_f32(name: &str, view: &safetensors::tensor::TensorView<'_>) -> Result<Vec<f32>> {
    let b = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => b
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => b
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => bail!("tensor \"{name}\" has dtype {other:?} (expected F32, F16 or BF16)"),
    })
}

pub fn convert(opts: &ConvertOptions, progress: &ProgressBar) -> Result<ConvertReport> {
    let src = &opts.src;
    if !src.exists() {
        bail!("{}: no such file or directory", src.display());
    }
    if src.is_file() {
        if src
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
        {
            let onnx = crate::onnx::OnnxWeights::load(src)?;
            let ck = onnx.checkpoint(opts)?;
            return write_checkpoint(ck, opts, progress);
        }
        bail!("{}: expected a Hugging Face model folder (config.json, model.safetensors, tokenizer.json) or an .onnx file", src.display());
    }
    let config = Config::load(&src.join("config.json"))?;
    let tokenizer_path = opts
        .tokenizer
        .clone()
        .unwrap_or_else(|| src.join("tokenizer.json"));
    let tokenizer_json = std::fs::read_to_string(&tokenizer_path)
        .with_context(|| format!("{}: cannot read", tokenizer_path.display()))?;
    let st_path = src.join("model.safetensors");
    let map =
        Mapping::open(&st_path).with_context(|| format!("{}: cannot open", st_path.display()))?;
    let st = SafeTensors::deserialize(map.bytes())
        .map_err(|e| anyhow::anyhow!("{}: corrupt safetensors file: {e}", st_path.display()))?;
    let mut tensors = BTreeMap::new();
    for (name, view) in st.tensors() {
        tensors.insert(
            name,
            SourceTensor {
                shape: view.shape().to_vec(),
                data: SourceData::Safetensors(view),
            },
        );
    }
    let name = src
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()));
    let ck = Checkpoint {
        config,
        tensors,
        weights_path: st_path,
        sha256: petal_adapt::adapter::base_hash(map.bytes()),
        format: "safetensors",
        sentence_pooling: hf::sentence_pooling(src)?,
        max_seq_length: hf::max_seq_length(src)?,
        tokenizer_json,
        tokenizer_path,
        name: name.unwrap_or_else(|| "model".into()),
    };
    write_checkpoint(ck, opts, progress)
}

/// Maps, checks, quantizes and writes a checkpoint.
pub fn write_checkpoint(
    ck: Checkpoint<'_>,
    opts: &ConvertOptions,
    progress: &ProgressBar,
) -> Result<ConvertReport> {
    let config = ck.config;
    let st_path = &ck.weights_path;
    let src = &opts.src;
    // Map every source tensor; refuse what petal does not know.
    let arch = config.arch;
    let mut found: BTreeMap<String, (String, &SourceTensor<'_>)> = BTreeMap::new();
    let mut pooler = BTreeMap::new();
    let mut dropped = Vec::new();
    for (source, view) in &ck.tensors {
        let source = source.as_str();
        let target = match hf::map_name(arch, source) {
            Some(Mapped::Tensor(t)) => t,
            Some(Mapped::Pooler(p)) => {
                pooler.insert(p, (source.to_string(), view));
                continue;
            }
            Some(Mapped::Skip) => continue,
            None => bail!(
                "{}: unexpected tensor \"{source}\" for architecture {}",
                st_path.display(),
                arch.name()
            ),
        };
        if let Some((other, _)) = found.insert(target.clone(), (source.to_string(), view)) {
            bail!(
                "{}: tensors \"{other}\" and \"{source}\" both map to \"{target}\"",
                st_path.display()
            );
        }
    }
    let head_rows = found
        .get("cls.output.weight")
        .map(|(_, v)| v.shape.first().copied().unwrap_or(0));
    if head_rows.is_some() && arch == Arch::Bert {
        for (p, v) in std::mem::take(&mut pooler) {
            found.insert(format!("{}.{p}", tensor::CLS), v);
        }
    }
    dropped.extend(pooler.into_values().map(|(s, _)| s));
    if !dropped.is_empty() {
        log::info!(
            "no classification head: dropping the unused pooler ({})",
            dropped.join(", ")
        );
    }
    let labels = match (head_rows, &config.labels) {
        (None, _) => None,
        (Some(k), Some(l)) if l.len() == k => Some(l.clone()),
        (Some(k), Some(l)) => bail!(
            "{}: id2label has {} labels but the classifier has {k} outputs",
            src.display(),
            l.len()
        ),
        (Some(k), None) => Some((0..k).map(|i| format!("LABEL_{i}")).collect()),
    };

    let expected = hf::expected_tensors(&config, head_rows);
    for (name, shape) in &expected {
        let Some((source, view)) = found.get(name) else {
            bail!(
                "{}: missing tensor for \"{name}\" (shape {shape:?})",
                st_path.display()
            );
        };
        if view.shape != *shape {
            bail!(
                "{}: tensor \"{source}\" has shape {:?}, expected {shape:?} from config.json",
                st_path.display(),
                view.shape
            );
        }
    }
    if let Some(extra) = found
        .keys()
        .find(|k| !expected.iter().any(|(n, _)| n == *k))
    {
        let (source, _) = &found[extra];
        bail!(
            "{}: unexpected tensor \"{source}\" (no layer or head for it in config.json)",
            st_path.display()
        );
    }

    let st_pooling = ck.sentence_pooling;
    let pooling = opts.pooling.unwrap_or(match st_pooling {
        Some(p) if p.mean => Pooling::Mean,
        Some(_) => Pooling::Cls,
        None if head_rows.is_some() => Pooling::Cls,
        None => Pooling::Mean,
    });
    let normalize = opts
        .normalize
        .unwrap_or(st_pooling.is_some_and(|p| p.normalize));

    let mut w = GgufWriter::new();
    let an = arch.name();
    let key = |s: &str| names::arch_key(an, s);
    w.set(names::ARCHITECTURE, an);
    w.set(names::NAME, ck.name.clone());
    w.set(names::FILE_TYPE, names::file_type(opts.dtype));
    w.set(&key(names::BLOCK_COUNT), config.layers as u32);
    w.set(
        &key(names::CONTEXT_LENGTH),
        (config.max_positions - config.position_offset) as u32,
    );
    w.set(&key(names::EMBEDDING_LENGTH), config.hidden as u32);
    w.set(&key(names::FEED_FORWARD_LENGTH), config.ffn as u32);
    w.set(&key(names::HEAD_COUNT), config.heads as u32);
    w.set(&key(names::LAYER_NORM_EPS), config.eps);
    w.set(&key(names::CAUSAL), false);
    // llama.cpp's rank pooling for a classifier read at its first token: it then applies the
    // head, as `petal classify` does.
    w.set(
        &key(names::POOLING_TYPE),
        // (llama.cpp's BERT head is dense + tanh: DistilBERT's ReLU head stays CLS pooling.)
        match (pooling, &labels) {
            (Pooling::Mean, _) => pooling::MEAN,
            (Pooling::Cls, Some(_)) if arch.head_activation().name() == "tanh" => pooling::RANK,
            (Pooling::Cls, _) => pooling::CLS,
        },
    );
    w.set(names::NORMALIZE, normalize);
    if let Some(n) = ck.max_seq_length {
        let positions = config.max_positions - config.position_offset;
        w.set(names::MAX_SEQ_LENGTH, n.min(positions) as u32);
    }
    w.set(names::POSITION_OFFSET, config.position_offset as u32);
    w.set(names::PAD_TOKEN_ID, config.pad_token_id);
    if let Some(l) = &labels {
        w.set(
            &key(names::OUTPUT_LABELS),
            OwnedValue::StringArray(l.clone()),
        );
        w.set(names::HEAD_ACTIVATION, arch.head_activation().name());
        w.set(names::HEAD_INPUT, "cls");
    }
    w.set(names::SOURCE_SHA256, ck.sha256.clone());
    w.set(names::SOURCE_FORMAT, ck.format);
    w.set(
        names::CONVERTER_VERSION,
        concat!("petal ", env!("CARGO_PKG_VERSION")),
    );
    crate::tokenizer_meta::write_tokenizer_keys(&mut w, &ck.tokenizer_json)
        .with_context(|| format!("{}", ck.tokenizer_path.display()))?;
    if config.type_vocab > 0 {
        w.set(names::TOKENIZER_TOKEN_TYPE_COUNT, config.type_vocab as u32);
    }

    progress.set_length(expected.len() as u64);
    let mut reports = Vec::with_capacity(expected.len());
    let mut fallbacks = Vec::new();
    let mut source_list = Vec::with_capacity(expected.len());
    for (name, shape) in &expected {
        progress.set_message(name.clone());
        let (source, view) = &found[name];
        let values = view
            .to_f32(source)
            .with_context(|| format!("{}", st_path.display()))?;
        let (ty, fell_back) = storage_type(name, opts.dtype, shape);
        if fell_back {
            log::warn!(
                "{name}: rows of {} are not a multiple of 32; stored as F16",
                shape.last().unwrap_or(&0)
            );
            fallbacks.push(name.clone());
        }
        let mut bytes = Vec::new();
        quant::quantize(&values, ty, &mut bytes).with_context(|| format!("tensor \"{name}\""))?;
        let rel_rms_error = (ty != TensorType::F32).then(|| {
            let mut back = Vec::new();
            quant::dequantize(&bytes, ty, values.len(), &mut back).expect("bytes just encoded");
            quant::relative_rms_error(&values, &back)
        });
        reports.push(TensorReport {
            name: name.clone(),
            source: source.clone(),
            ty: ty.to_string(),
            shape: shape.clone(),
            bytes: bytes.len(),
            rel_rms_error,
        });
        source_list.push(source.clone());
        w.add_tensor(name, shape, ty, bytes)?;
        progress.inc(1);
    }
    w.set(
        names::SOURCE_TENSOR_NAMES,
        OwnedValue::StringArray(source_list),
    );
    progress.set_message(format!("writing {}", opts.out.display()));
    let file_bytes = w
        .write_atomic(&opts.out)
        .with_context(|| format!("{}: cannot write", opts.out.display()))?;
    progress.finish_and_clear();

    Ok(ConvertReport {
        output: opts.out.display().to_string(),
        architecture: an,
        dtype: opts.dtype.name(),
        pooling,
        normalize,
        labels,
        source_sha256: ck.sha256.clone(),
        file_bytes,
        tensor_bytes: reports.iter().map(|r| r.bytes as u64).sum(),
        tensors: reports,
        dropped,
        fallbacks,
    })
}
