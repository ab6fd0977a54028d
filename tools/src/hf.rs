//! Hugging Face checkpoints: `config.json`, sentence-transformers pooling, and the map from
//! checkpoint tensor names to petal's GGUF names.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use petal_runtime::gguf::names::tensor::{self, Block};
use serde::Deserialize;

pub use petal_runtime::config::Arch;

/// The prefix the base model's tensors carry in a `*ForSequenceClassification` checkpoint.
fn prefix(arch: Arch) -> &'static str {
    match arch {
        Arch::DistilBert => "distilbert.",
        Arch::Roberta | Arch::XlmRoberta => "roberta.",
        _ => "bert.",
    }
}

#[derive(Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    // BERT / RoBERTa names
    hidden_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    intermediate_size: Option<usize>,
    hidden_act: Option<String>,
    type_vocab_size: Option<usize>,
    layer_norm_eps: Option<f64>,
    // DistilBERT names
    dim: Option<usize>,
    n_layers: Option<usize>,
    n_heads: Option<usize>,
    hidden_dim: Option<usize>,
    activation: Option<String>,
    sinusoidal_pos_embds: Option<bool>,
    // shared
    vocab_size: Option<usize>,
    max_position_embeddings: Option<usize>,
    pad_token_id: Option<u32>,
    id2label: Option<BTreeMap<String, String>>,
    position_embedding_type: Option<String>,
}

/// The parts of `config.json` the encoder needs, with Hugging Face defaults filled in.
#[derive(Clone, Debug)]
pub struct Config {
    pub arch: Arch,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub max_positions: usize,
    /// 0 for DistilBERT.
    pub type_vocab: usize,
    pub eps: f32,
    pub pad_token_id: u32,
    /// RoBERTa's position ids start after the padding id.
    pub position_offset: usize,
    /// `id2label` in id order, when the checkpoint names labels.
    pub labels: Option<Vec<String>>,
}

fn need(v: Option<usize>, key: &str) -> Result<usize> {
    match v {
        Some(0) => bail!("\"{key}\" is 0"),
        Some(n) => Ok(n),
        None => bail!("missing \"{key}\""),
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        Self::parse(&text).with_context(|| format!("{}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self> {
        let raw: RawConfig = serde_json::from_str(text).context("invalid JSON")?;
        // Hugging Face's model_type values are petal's architecture names.
        let model_type = raw
            .model_type
            .as_deref()
            .context("missing \"model_type\"")?;
        let arch = Arch::from_name(model_type).with_context(|| {
            format!("unknown architecture \"{model_type}\" (petal converts bert, distilbert, roberta, xlm-roberta)")
        })?;
        if let Some(t) = raw.position_embedding_type.as_deref() {
            if t != "absolute" {
                bail!("position_embedding_type \"{t}\" is not supported (only \"absolute\")");
            }
        }
        let labels = raw
            .id2label
            .map(|m| {
                let mut v: Vec<(usize, String)> = m
                    .into_iter()
                    .map(|(k, l)| {
                        k.parse::<usize>()
                            .map(|i| (i, l))
                            .with_context(|| format!("id2label key \"{k}\" is not an integer"))
                    })
                    .collect::<Result<_>>()?;
                v.sort();
                if v.iter().enumerate().any(|(i, (k, _))| i != *k) {
                    bail!("id2label ids are not 0..{}", v.len());
                }
                Ok(v.into_iter().map(|(_, l)| l).collect())
            })
            .transpose()?;
        let pad_token_id =
            raw.pad_token_id
                .unwrap_or(if arch == Arch::Bert || arch == Arch::DistilBert {
                    0
                } else {
                    1
                });
        let c = if arch == Arch::DistilBert {
            if raw.sinusoidal_pos_embds == Some(true) {
                bail!("sinusoidal_pos_embds is not supported");
            }
            let act = raw.activation.as_deref().unwrap_or("gelu");
            if act != "gelu" {
                bail!("activation \"{act}\" is not supported (only exact \"gelu\")");
            }
            Config {
                arch,
                hidden: need(raw.dim.or(Some(768)), "dim")?,
                layers: need(raw.n_layers.or(Some(6)), "n_layers")?,
                heads: need(raw.n_heads.or(Some(12)), "n_heads")?,
                ffn: need(raw.hidden_dim.or(Some(3072)), "hidden_dim")?,
                vocab: need(raw.vocab_size, "vocab_size")?,
                max_positions: need(
                    raw.max_position_embeddings.or(Some(512)),
                    "max_position_embeddings",
                )?,
                type_vocab: 0,
                eps: 1e-12,
                pad_token_id,
                position_offset: 0,
                labels,
            }
        } else {
            let act = raw.hidden_act.as_deref().unwrap_or("gelu");
            if act != "gelu" {
                bail!("hidden_act \"{act}\" is not supported (only exact \"gelu\")");
            }
            Config {
                arch,
                hidden: need(raw.hidden_size, "hidden_size")?,
                layers: need(raw.num_hidden_layers, "num_hidden_layers")?,
                heads: need(raw.num_attention_heads, "num_attention_heads")?,
                ffn: need(raw.intermediate_size, "intermediate_size")?,
                vocab: need(raw.vocab_size, "vocab_size")?,
                max_positions: need(raw.max_position_embeddings, "max_position_embeddings")?,
                type_vocab: need(raw.type_vocab_size.or(Some(2)), "type_vocab_size")?,
                eps: raw.layer_norm_eps.unwrap_or(1e-12) as f32,
                pad_token_id,
                position_offset: if arch == Arch::Bert {
                    0
                } else {
                    pad_token_id as usize + 1
                },
                labels,
            }
        };
        if c.hidden % c.heads != 0 {
            bail!(
                "hidden size {} is not a multiple of the head count {}",
                c.hidden,
                c.heads
            );
        }
        if c.position_offset >= c.max_positions {
            bail!(
                "position offset {} leaves no positions of {}",
                c.position_offset,
                c.max_positions
            );
        }
        Ok(c)
    }
}

/// What a source tensor becomes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mapped {
    /// A petal tensor of this name.
    Tensor(String),
    /// BERT's pooler: the head's dense layer when the checkpoint has a classifier, else unused.
    Pooler(&'static str),
    /// A buffer that holds no weights (`embeddings.position_ids`).
    Skip,
}

/// Maps a checkpoint tensor name onto petal's name, or `None` for a tensor petal does not know.
pub fn map_name(arch: Arch, source: &str) -> Option<Mapped> {
    let name = source.strip_prefix(prefix(arch)).unwrap_or(source);
    let param = |s: &str| -> Option<&'static str> {
        match s {
            "weight" => Some("weight"),
            "bias" => Some("bias"),
            _ => None,
        }
    };
    let t = |s: String| Some(Mapped::Tensor(s));
    if let Some(rest) = name.strip_prefix("embeddings.") {
        return match rest {
            "word_embeddings.weight" => t(tensor::TOKEN_EMBD.into()),
            "position_embeddings.weight" => t(tensor::POSITION_EMBD.into()),
            "token_type_embeddings.weight" if arch != Arch::DistilBert => {
                t(tensor::TOKEN_TYPES.into())
            }
            "position_ids" | "token_type_ids" => Some(Mapped::Skip),
            _ => {
                let p = param(rest.strip_prefix("LayerNorm.")?)?;
                t(format!("{}.{p}", tensor::TOKEN_EMBD_NORM))
            }
        };
    }
    let layer_prefix = if arch == Arch::DistilBert {
        "transformer.layer."
    } else {
        "encoder.layer."
    };
    if let Some(rest) = name.strip_prefix(layer_prefix) {
        let (n, rest) = rest.split_once('.')?;
        let n: usize = n.parse().ok()?;
        let (module, p) = rest.rsplit_once('.')?;
        let p = param(p)?;
        let block = if arch == Arch::DistilBert {
            match module {
                "attention.q_lin" => Block::AttnQ,
                "attention.k_lin" => Block::AttnK,
                "attention.v_lin" => Block::AttnV,
                "attention.out_lin" => Block::AttnOutput,
                "sa_layer_norm" => Block::AttnOutputNorm,
                "ffn.lin1" => Block::FfnUp,
                "ffn.lin2" => Block::FfnDown,
                "output_layer_norm" => Block::LayerOutputNorm,
                _ => return None,
            }
        } else {
            match module {
                "attention.self.query" => Block::AttnQ,
                "attention.self.key" => Block::AttnK,
                "attention.self.value" => Block::AttnV,
                "attention.output.dense" => Block::AttnOutput,
                "attention.output.LayerNorm" => Block::AttnOutputNorm,
                "intermediate.dense" => Block::FfnUp,
                "output.dense" => Block::FfnDown,
                "output.LayerNorm" => Block::LayerOutputNorm,
                _ => return None,
            }
        };
        return t(tensor::block(n, block, p));
    }
    let (module, p) = name.rsplit_once('.')?;
    let p = param(p)?;
    match (arch, module) {
        (Arch::Bert, "pooler.dense") => Some(Mapped::Pooler(p)),
        (Arch::Bert | Arch::DistilBert, "classifier") => t(format!("{}.{p}", tensor::CLS_OUTPUT)),
        (Arch::DistilBert, "pre_classifier") => t(format!("{}.{p}", tensor::CLS)),
        (Arch::Roberta | Arch::XlmRoberta, "classifier.dense") => t(format!("{}.{p}", tensor::CLS)),
        (Arch::Roberta | Arch::XlmRoberta, "classifier.out_proj") => {
            t(format!("{}.{p}", tensor::CLS_OUTPUT))
        }
        _ => None,
    }
}

/// Every tensor petal expects for `c`, in file order, with its row-major shape.
pub fn expected_tensors(c: &Config, head_labels: Option<usize>) -> Vec<(String, Vec<usize>)> {
    let (h, f) = (c.hidden, c.ffn);
    let mut v = vec![(tensor::TOKEN_EMBD.to_string(), vec![c.vocab, h])];
    if c.type_vocab > 0 {
        v.push((tensor::TOKEN_TYPES.into(), vec![c.type_vocab, h]));
    }
    v.push((tensor::POSITION_EMBD.into(), vec![c.max_positions, h]));
    v.push((format!("{}.weight", tensor::TOKEN_EMBD_NORM), vec![h]));
    v.push((format!("{}.bias", tensor::TOKEN_EMBD_NORM), vec![h]));
    for n in 0..c.layers {
        for b in Block::ALL {
            let w = match b {
                Block::FfnUp => vec![f, h],
                Block::FfnDown => vec![h, f],
                _ if b.is_norm() => vec![h],
                _ => vec![h, h],
            };
            let bias = if b == Block::FfnUp { f } else { h };
            v.push((tensor::block(n, b, "weight"), w));
            v.push((tensor::block(n, b, "bias"), vec![bias]));
        }
    }
    if let Some(k) = head_labels {
        v.push((format!("{}.weight", tensor::CLS), vec![h, h]));
        v.push((format!("{}.bias", tensor::CLS), vec![h]));
        v.push((format!("{}.weight", tensor::CLS_OUTPUT), vec![k, h]));
        v.push((format!("{}.bias", tensor::CLS_OUTPUT), vec![k]));
    }
    v
}

/// Pooling read from a sentence-transformers folder (`1_Pooling/config.json`, `modules.json`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SentencePooling {
    pub mean: bool,
    pub normalize: bool,
}

#[derive(Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
}

#[derive(Deserialize)]
struct StModule {
    #[serde(rename = "type")]
    ty: String,
}

pub fn sentence_pooling(dir: &Path) -> Result<Option<SentencePooling>> {
    let pc = dir.join("1_Pooling/config.json");
    if !pc.exists() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(&pc).with_context(|| format!("{}: cannot read", pc.display()))?;
    let p: PoolingConfig = serde_json::from_str(&text)
        .with_context(|| format!("{}: invalid pooling config", pc.display()))?;
    let n_modes = [
        p.pooling_mode_cls_token,
        p.pooling_mode_mean_tokens,
        p.pooling_mode_max_tokens,
        p.pooling_mode_mean_sqrt_len_tokens,
    ]
    .iter()
    .filter(|&&b| b)
    .count();
    if n_modes != 1 || p.pooling_mode_max_tokens || p.pooling_mode_mean_sqrt_len_tokens {
        bail!(
            "{}: only one of mean or CLS pooling is supported",
            pc.display()
        );
    }
    let modules = dir.join("modules.json");
    let normalize = if modules.exists() {
        let text = std::fs::read_to_string(&modules)
            .with_context(|| format!("{}: cannot read", modules.display()))?;
        let m: Vec<StModule> = serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid modules list", modules.display()))?;
        m.iter().any(|m| m.ty.ends_with(".Normalize"))
    } else {
        false
    };
    Ok(Some(SentencePooling {
        mean: p.pooling_mode_mean_tokens,
        normalize,
    }))
}

/// Largest `max_seq_length` accepted from `sentence_bert_config.json` (the converter stores at
/// most the model's positions anyway).
const MAX_SEQ_LENGTH: u64 = 1 << 20;

/// `max_seq_length` of a sentence-transformers folder's `sentence_bert_config.json`, where
/// sentence-transformers truncates its inputs; `None` without that file or key.
pub fn max_seq_length(dir: &Path) -> Result<Option<usize>> {
    let path = dir.join("sentence_bert_config.json");
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let v: serde_json::Value =
        serde_json::from_str(text).with_context(|| format!("{}: invalid JSON", path.display()))?;
    match v.get("max_seq_length") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(n) => match n.as_u64() {
            Some(n @ 2..=MAX_SEQ_LENGTH) => Ok(Some(n as usize)),
            _ => bail!(
                "{}: \"max_seq_length\" must be an integer from 2 to {MAX_SEQ_LENGTH}",
                path.display()
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_and_without_prefix() {
        for src in [
            "bert.encoder.layer.3.attention.self.query.weight",
            "encoder.layer.3.attention.self.query.weight",
        ] {
            assert_eq!(
                map_name(Arch::Bert, src),
                Some(Mapped::Tensor("blk.3.attn_q.weight".into()))
            );
        }
        assert_eq!(
            map_name(Arch::Bert, "embeddings.position_ids"),
            Some(Mapped::Skip)
        );
        assert_eq!(
            map_name(Arch::Bert, "pooler.dense.bias"),
            Some(Mapped::Pooler("bias"))
        );
        assert_eq!(
            map_name(Arch::Bert, "encoder.layer.0.attention.self.rotary.weight"),
            None
        );
        assert_eq!(
            map_name(
                Arch::DistilBert,
                "distilbert.transformer.layer.1.ffn.lin2.bias"
            ),
            Some(Mapped::Tensor("blk.1.ffn_down.bias".into()))
        );
        assert_eq!(
            map_name(Arch::DistilBert, "embeddings.token_type_embeddings.weight"),
            None
        );
        assert_eq!(
            map_name(Arch::Roberta, "classifier.out_proj.weight"),
            Some(Mapped::Tensor("cls.output.weight".into()))
        );
        assert_eq!(map_name(Arch::Roberta, "lm_head.dense.weight"), None);
    }

    #[test]
    fn config_errors_are_specific() {
        let e = Config::parse(r#"{"model_type":"gpt2"}"#).unwrap_err();
        assert!(format!("{e:#}").contains("unknown architecture \"gpt2\""));
        let e = Config::parse(r#"{"model_type":"bert","hidden_size":32}"#).unwrap_err();
        assert!(format!("{e:#}").contains("missing \"num_hidden_layers\""));
        let e = Config::parse("{").unwrap_err();
        assert!(format!("{e:#}").contains("invalid JSON"));
    }
}
