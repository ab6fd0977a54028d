//! The encoder's configuration, read from a GGUF file's metadata.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use crate::gguf::names::{self, pooling};
use crate::gguf::{Gguf, GgufError, Value};

/// The encoder families petal runs. They share one implementation; the differences are data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Arch {
    /// BERT and MiniLM.
    Bert,
    /// DistilBERT: no token types; the head's dense layer uses ReLU.
    DistilBert,
    /// RoBERTa: positions start after the padding id.
    Roberta,
    /// XLM-RoBERTa: as RoBERTa.
    XlmRoberta,
}

impl Arch {
    /// Parses `general.architecture`.
    pub fn from_name(s: &str) -> Option<Self> {
        Some(match s {
            "bert" => Arch::Bert,
            "distilbert" => Arch::DistilBert,
            "roberta" => Arch::Roberta,
            "xlm-roberta" => Arch::XlmRoberta,
            _ => return None,
        })
    }

    /// The activation after the head's dense layer in this family's classifiers.
    pub fn head_activation(self) -> HeadActivation {
        match self {
            Arch::DistilBert => HeadActivation::Relu,
            _ => HeadActivation::Tanh,
        }
    }

    /// The `general.architecture` value (also Hugging Face's `model_type`).
    pub fn name(self) -> &'static str {
        match self {
            Arch::Bert => "bert",
            Arch::DistilBert => "distilbert",
            Arch::Roberta => "roberta",
            Arch::XlmRoberta => "xlm-roberta",
        }
    }
}

/// How token states become one sentence embedding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// Mean over the tokens of the text (special tokens included, padding excluded).
    Mean,
    /// The first token's state.
    Cls,
}

/// Activation after the head's dense layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadActivation {
    /// BERT's pooler and RoBERTa's classifier.dense.
    Tanh,
    /// DistilBERT's pre_classifier.
    Relu,
}

impl HeadActivation {
    /// The `petal.head.activation` value.
    pub fn name(self) -> &'static str {
        match self {
            HeadActivation::Tanh => "tanh",
            HeadActivation::Relu => "relu",
        }
    }
}

/// Why a file could not be loaded as a model.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum LoadError {
    /// The GGUF container itself is invalid.
    Gguf(GgufError),
    /// A required metadata key is absent.
    MissingKey(String),
    /// A metadata key has the wrong type or an impossible value.
    BadKey {
        /// The key.
        key: String,
        /// What was expected.
        expected: &'static str,
    },
    /// `general.architecture` names an encoder petal does not run.
    UnknownArchitecture(String),
    /// A required tensor is absent.
    MissingTensor(String),
    /// A tensor's shape is not what the configuration implies.
    TensorShape {
        /// The tensor.
        name: String,
        /// The shape expected (row-major).
        expected: Vec<usize>,
        /// The shape found (row-major).
        found: Vec<usize>,
    },
    /// A tensor has a type petal cannot use there (norms and biases must be F32).
    TensorType {
        /// The tensor.
        name: String,
        /// Its type.
        found: &'static str,
    },
    /// The embedded tokenizer could not be built.
    Tokenizer(String),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Gguf(e) => e.fmt(f),
            LoadError::MissingKey(k) => write!(f, "missing metadata key {k:?}"),
            LoadError::BadKey { key, expected } => {
                write!(f, "metadata key {key:?} should be {expected}")
            }
            LoadError::UnknownArchitecture(a) => write!(f, "unknown architecture {a:?}"),
            LoadError::MissingTensor(t) => write!(f, "missing tensor {t:?}"),
            LoadError::TensorShape {
                name,
                expected,
                found,
            } => {
                write!(
                    f,
                    "tensor {name:?} has shape {found:?}, expected {expected:?}"
                )
            }
            LoadError::TensorType { name, found } => write!(
                f,
                "tensor {name:?} has type {found}, which petal cannot use there"
            ),
            LoadError::Tokenizer(e) => write!(f, "embedded tokenizer: {e}"),
        }
    }
}

impl core::error::Error for LoadError {}

impl From<GgufError> for LoadError {
    fn from(e: GgufError) -> Self {
        LoadError::Gguf(e)
    }
}

/// Largest dimension accepted from a file: keeps products of dimensions far from overflow.
const MAX_DIM: u32 = 1 << 20;

/// Encoder hyper-parameters and pipeline settings stored in the file.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// Encoder family.
    pub arch: Arch,
    /// Hidden size H.
    pub hidden: usize,
    /// Encoder layers.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// Feed-forward size.
    pub ffn: usize,
    /// LayerNorm epsilon.
    pub eps: f32,
    /// Most tokens a sequence may have (positions available after the offset).
    pub context_length: usize,
    /// First position id (RoBERTa: `pad_token_id + 1`).
    pub position_offset: usize,
    /// Pooling of the sentence embedding.
    pub pooling: Pooling,
    /// L2-normalize the sentence embedding.
    pub normalize: bool,
    /// Class labels, when the file has a classification head.
    pub labels: Option<Vec<String>>,
    /// Activation of the head's dense layer.
    pub head_activation: HeadActivation,
    /// Where sentence-transformers truncates this model (`max_seq_length` of its
    /// `sentence_bert_config.json`), when the converter found one: the default truncation of
    /// `embed` and `classify`, at most `context_length`.
    pub max_seq_length: Option<usize>,
}

fn get_u32(g: &Gguf<'_>, key: &str) -> Result<u32, LoadError> {
    let v = g
        .get(key)
        .ok_or_else(|| LoadError::MissingKey(key.to_string()))?;
    v.as_u32().ok_or_else(|| LoadError::BadKey {
        key: key.to_string(),
        expected: "an unsigned integer",
    })
}

fn get_dim(g: &Gguf<'_>, key: &str) -> Result<usize, LoadError> {
    match get_u32(g, key)? {
        0 => Err(LoadError::BadKey {
            key: key.to_string(),
            expected: "a positive integer",
        }),
        n if n > MAX_DIM => Err(LoadError::BadKey {
            key: key.to_string(),
            expected: "at most 2^20",
        }),
        n => Ok(n as usize),
    }
}

fn get_str<'a>(g: &Gguf<'a>, key: &str) -> Result<&'a str, LoadError> {
    let v = g
        .get(key)
        .ok_or_else(|| LoadError::MissingKey(key.to_string()))?;
    v.as_str().ok_or_else(|| LoadError::BadKey {
        key: key.to_string(),
        expected: "a string",
    })
}

fn get_bool_or(g: &Gguf<'_>, key: &str, default: bool) -> Result<bool, LoadError> {
    match g.get(key) {
        None => Ok(default),
        Some(v) => v.as_bool().ok_or_else(|| LoadError::BadKey {
            key: key.to_string(),
            expected: "a bool",
        }),
    }
}

impl ModelConfig {
    /// Reads the configuration from a parsed file.
    pub fn from_gguf(g: &Gguf<'_>) -> Result<Self, LoadError> {
        if g.get(names::FORMAT_VERSION).is_some()
            && get_u32(g, names::FORMAT_VERSION)? != names::FORMAT_VERSION_CURRENT
        {
            return Err(LoadError::BadKey {
                key: names::FORMAT_VERSION.to_string(),
                expected: "1, the only petal format version this petal reads",
            });
        }
        let arch_name = get_str(g, names::ARCHITECTURE)?;
        let arch = Arch::from_name(arch_name)
            .ok_or_else(|| LoadError::UnknownArchitecture(arch_name.to_string()))?;
        let key = |s: &str| names::arch_key(arch_name, s);
        let hidden = get_dim(g, &key(names::EMBEDDING_LENGTH))?;
        let heads = get_dim(g, &key(names::HEAD_COUNT))?;
        if hidden % heads != 0 {
            return Err(LoadError::BadKey {
                key: key(names::HEAD_COUNT),
                expected: "a divisor of the embedding length",
            });
        }
        let eps_key = key(names::LAYER_NORM_EPS);
        let eps = g
            .get(&eps_key)
            .ok_or_else(|| LoadError::MissingKey(eps_key.clone()))?
            .as_f32()
            .filter(|e| e.is_finite() && *e >= 0.0)
            .ok_or(LoadError::BadKey {
                key: eps_key,
                expected: "a finite non-negative float",
            })?;
        let pooling = match g.get(&key(names::POOLING_TYPE)).map(|v| v.as_u32()) {
            None => Pooling::Mean,
            Some(Some(pooling::MEAN)) => Pooling::Mean,
            Some(Some(pooling::CLS | pooling::RANK)) => Pooling::Cls,
            Some(_) => {
                return Err(LoadError::BadKey {
                    key: key(names::POOLING_TYPE),
                    expected: "1 (mean), 2 (CLS) or 4 (rank: CLS and the head)",
                })
            }
        };
        let labels = match g.get(&key(names::OUTPUT_LABELS)) {
            None => None,
            Some(Value::Array(a)) => Some(
                a.strings()
                    .ok_or(LoadError::BadKey {
                        key: key(names::OUTPUT_LABELS),
                        expected: "an array of strings",
                    })?
                    .map(|s| s.to_string())
                    .collect(),
            ),
            Some(_) => {
                return Err(LoadError::BadKey {
                    key: key(names::OUTPUT_LABELS),
                    expected: "an array of strings",
                })
            }
        };
        if labels.as_ref().is_some_and(|l: &Vec<String>| l.is_empty()) {
            return Err(LoadError::BadKey {
                key: key(names::OUTPUT_LABELS),
                expected: "a non-empty array of strings",
            });
        }
        let head_activation = match g.get(names::HEAD_ACTIVATION).map(|v| v.as_str()) {
            None => arch.head_activation(),
            Some(Some(a)) if a == HeadActivation::Tanh.name() => HeadActivation::Tanh,
            Some(Some(a)) if a == HeadActivation::Relu.name() => HeadActivation::Relu,
            Some(_) => {
                return Err(LoadError::BadKey {
                    key: names::HEAD_ACTIVATION.to_string(),
                    expected: "\"tanh\" or \"relu\"",
                })
            }
        };
        let position_offset = match g.get(names::POSITION_OFFSET) {
            None => 0,
            Some(_) => get_u32(g, names::POSITION_OFFSET)? as usize,
        };
        if position_offset > MAX_DIM as usize {
            return Err(LoadError::BadKey {
                key: names::POSITION_OFFSET.to_string(),
                expected: "at most 2^20",
            });
        }
        let max_seq_length = match g.get(names::MAX_SEQ_LENGTH) {
            None => None,
            Some(_) => Some(get_dim(g, names::MAX_SEQ_LENGTH)?),
        };
        Ok(ModelConfig {
            arch,
            hidden,
            layers: get_dim(g, &key(names::BLOCK_COUNT))?,
            heads,
            ffn: get_dim(g, &key(names::FEED_FORWARD_LENGTH))?,
            eps,
            context_length: get_dim(g, &key(names::CONTEXT_LENGTH))?,
            position_offset,
            pooling,
            normalize: get_bool_or(g, names::NORMALIZE, false)?,
            labels,
            head_activation,
            max_seq_length,
        })
    }

    /// Size of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }
}
