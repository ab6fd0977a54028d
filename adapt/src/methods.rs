//! The parameter-efficient methods of the tutorial, as sets of [`Trainables`]: what each trains,
//! how it starts, and the names its tensors carry (PEFT's, for the equivalent Hugging Face
//! model, where PEFT has the method).

use std::fmt;

use petal_runtime::bert::{Encoder, NormSite};
use petal_runtime::config::Arch;
use petal_runtime::gguf::names::tensor::Block;

use crate::grad::{AdapterSite, HeadParams, LoraSite, Param, Rng, SiteParams, Trainables};

/// LoRA settings (PEFT's `LoraConfig`).
#[derive(Clone, Debug, PartialEq)]
pub struct LoraConfig {
    /// Rank.
    pub r: usize,
    /// Scale numerator: the update is `alpha / r * B A`.
    pub alpha: f32,
    /// Dropout on the LoRA branch's input while training.
    pub dropout: f32,
    /// Sub-layers that get a LoRA pair.
    pub targets: Vec<Block>,
}

impl Default for LoraConfig {
    /// Rank 8, alpha 16, no dropout, every linear layer of every block (PEFT's
    /// `["query", "key", "value", "dense"]` on BERT): the best LoRA setting on the few-shot data.
    fn default() -> Self {
        LoraConfig {
            r: 8,
            alpha: 16.0,
            dropout: 0.0,
            targets: vec![
                Block::AttnQ,
                Block::AttnK,
                Block::AttnV,
                Block::AttnOutput,
                Block::FfnUp,
                Block::FfnDown,
            ],
        }
    }
}

/// Where bottleneck adapters go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdapterKind {
    /// Houlsby et al.: after the attention output and after the feed-forward.
    Houlsby,
    /// Pfeiffer et al.: after the feed-forward only.
    Pfeiffer,
}

/// A training method.
#[derive(Clone, Debug, PartialEq)]
pub enum Method {
    /// Only the classifier.
    Head,
    /// Every bias (linear layers and LayerNorms) and the classifier.
    BitFit,
    /// LoRA pairs and the classifier.
    Lora(LoraConfig),
    /// Bottleneck adapters (`H / reduction` wide) and the classifier.
    Adapter {
        /// Placement.
        kind: AdapterKind,
        /// Hidden size divided by the bottleneck width.
        reduction: usize,
    },
    /// `tokens` virtual tokens before every sequence, and the classifier.
    Prompt {
        /// Virtual tokens.
        tokens: usize,
    },
    /// `tokens` keys and values per layer before every sequence, and the classifier.
    Prefix {
        /// Virtual tokens.
        tokens: usize,
    },
    /// IA3 scales on `targets` (of the output; of the input for those also in `feedforward`,
    /// as PEFT), and the classifier.
    Ia3 {
        /// Sub-layers that get a scale.
        targets: Vec<Block>,
        /// Those of `targets` whose input is scaled.
        feedforward: Vec<Block>,
    },
}

impl Method {
    /// The name used on the command line and in adapter files.
    pub fn name(&self) -> &'static str {
        match self {
            Method::Head => "head",
            Method::BitFit => "bitfit",
            Method::Lora(_) => "lora",
            Method::Adapter {
                kind: AdapterKind::Houlsby,
                ..
            } => "houlsby",
            Method::Adapter {
                kind: AdapterKind::Pfeiffer,
                ..
            } => "pfeiffer",
            Method::Prompt { .. } => "prompt",
            Method::Prefix { .. } => "prefix",
            Method::Ia3 { .. } => "ia3",
        }
    }

    /// The method called `name` with its default settings.
    pub fn from_name(name: &str) -> Option<Method> {
        Some(match name {
            "head" => Method::Head,
            "bitfit" => Method::BitFit,
            "lora" => Method::Lora(LoraConfig::default()),
            "houlsby" | "adapter" => Method::Adapter {
                kind: AdapterKind::Houlsby,
                reduction: 16,
            },
            "pfeiffer" => Method::Adapter {
                kind: AdapterKind::Pfeiffer,
                reduction: 16,
            },
            "prompt" => Method::Prompt { tokens: 10 },
            "prefix" => Method::Prefix { tokens: 10 },
            // PEFT's defaults for BERT: key, value and output.dense, the latter feed-forward.
            "ia3" => Method::Ia3 {
                targets: vec![Block::AttnK, Block::AttnV, Block::FfnDown],
                feedforward: vec![Block::FfnDown],
            },
            _ => return None,
        })
    }

    /// Every method name.
    pub const NAMES: [&'static str; 8] = [
        "head", "bitfit", "lora", "houlsby", "pfeiffer", "prompt", "prefix", "ia3",
    ];
}

/// Why a method could not be set up on a model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MethodError {
    /// The model file has no classification head to train through.
    NoFileHead,
    /// A setting is out of range.
    Setting(String),
}

impl fmt::Display for MethodError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MethodError::NoFileHead => write!(f, "the model file has no classification head"),
            MethodError::Setting(s) => write!(f, "{s}"),
        }
    }
}

impl std::error::Error for MethodError {}

/// Which classifier the method trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadKind {
    /// A new linear layer on the sentence embedding (sentence-transformers models such as
    /// MiniLM).
    Pooled,
    /// The file's own pooler and classifier (a `*ForSequenceClassification` checkpoint); the
    /// classifier is trained, the pooler stays frozen, as PEFT's `modules_to_save`.
    File,
}

/// The module holding the layers (`encoder.layer`, DistilBERT's `transformer.layer`).
fn layers_path(arch: Arch) -> &'static str {
    if arch == Arch::DistilBert {
        "transformer.layer"
    } else {
        "encoder.layer"
    }
}

/// Module path of sub-layer `part` within a layer.
fn sub_path(arch: Arch, part: Block) -> &'static str {
    if arch == Arch::DistilBert {
        match part {
            Block::AttnQ => "attention.q_lin",
            Block::AttnK => "attention.k_lin",
            Block::AttnV => "attention.v_lin",
            Block::AttnOutput => "attention.out_lin",
            Block::AttnOutputNorm => "sa_layer_norm",
            Block::FfnUp => "ffn.lin1",
            Block::FfnDown => "ffn.lin2",
            Block::LayerOutputNorm => "output_layer_norm",
        }
    } else {
        match part {
            Block::AttnQ => "attention.self.query",
            Block::AttnK => "attention.self.key",
            Block::AttnV => "attention.self.value",
            Block::AttnOutput => "attention.output.dense",
            Block::AttnOutputNorm => "attention.output.LayerNorm",
            Block::FfnUp => "intermediate.dense",
            Block::FfnDown => "output.dense",
            Block::LayerOutputNorm => "output.LayerNorm",
        }
    }
}

/// Hugging Face module path of sub-layer `part` of layer `l` (`with_model` adds the base
/// model's attribute, e.g. `bert.`, as in a `*ForSequenceClassification` model).
pub fn hf_module(arch: Arch, with_model: bool, l: usize, part: Block) -> String {
    format!(
        "{}{}.{l}.{}",
        if with_model { model_attr(arch) } else { "" },
        layers_path(arch),
        sub_path(arch, part)
    )
}

/// The linear sub-layers a method may target.
pub const LINEAR_BLOCKS: [Block; 6] = [
    Block::AttnQ,
    Block::AttnK,
    Block::AttnV,
    Block::AttnOutput,
    Block::FfnUp,
    Block::FfnDown,
];

/// PEFT's `target_modules` for exactly `blocks` of every layer, as the regular expression
/// PEFT full-matches against each module's name (a list of names would be matched by suffix,
/// and BERT's `output.dense` is also the suffix of `attention.output.dense`).
pub fn peft_target_regex(arch: Arch, blocks: &[Block]) -> String {
    let subs: Vec<String> = blocks
        .iter()
        .map(|&b| sub_path(arch, b).replace('.', "\\."))
        .collect();
    format!(
        "(.*\\.)?{}\\.\\d+\\.({})",
        layers_path(arch).replace('.', "\\."),
        subs.join("|")
    )
}

/// The sub-layers PEFT's `target_modules` (or `feedforward_modules`) selects on a model of
/// `arch` with `layers` layers: a regular expression full-matched against each module's name,
/// as PEFT does. Refused when it selects a different set in different layers (petal's methods
/// cover every layer alike) or an invalid expression.
pub fn blocks_of_regex(arch: Arch, layers: usize, pattern: &str) -> Result<Vec<Block>, String> {
    let re = regex_lite::Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|e| format!("invalid regular expression {pattern:?}: {e}"))?;
    let mut first: Option<Vec<Block>> = None;
    for l in 0..layers.max(1) {
        let hit: Vec<Block> = LINEAR_BLOCKS
            .into_iter()
            .filter(|&b| {
                re.is_match(&hf_module(arch, false, l, b))
                    || re.is_match(&hf_module(arch, true, l, b))
            })
            .collect();
        match &first {
            None => first = Some(hit),
            Some(f) if *f != hit => {
                return Err(format!(
                    "{pattern:?} selects other modules in layer {l} than in layer 0 (per-layer targets are not supported)"
                ))
            }
            Some(_) => {}
        }
    }
    Ok(first.unwrap_or_default())
}

/// The sub-layers a name of a PEFT `target_modules` list selects, as PEFT matches them: a
/// module whose name is the target or ends with `.` and the target (so BERT's `output.dense`
/// selects the attention output and the feed-forward output, and `dense` three layers).
pub fn blocks_of_name(arch: Arch, name: &str) -> Vec<Block> {
    LINEAR_BLOCKS
        .into_iter()
        .filter(|&b| {
            let m = hf_module(arch, true, 0, b);
            m == name || m.ends_with(&format!(".{name}"))
        })
        .collect()
}

/// Prefix of PEFT's tensor names for tuners that wrap modules (LoRA, IA3).
pub const PEFT_PREFIX: &str = "base_model.model.";

/// The attribute holding the base model in a `*ForSequenceClassification` model.
pub fn model_attr(arch: Arch) -> &'static str {
    match arch {
        Arch::DistilBert => "distilbert.",
        Arch::Roberta | Arch::XlmRoberta => "roberta.",
        _ => "bert.",
    }
}

/// `(out, in)` of linear sub-layer `part` of layer `l`, from the model's own weights.
fn linear_shape<B: AsRef<[u8]>>(
    enc: &Encoder<B>,
    l: usize,
    part: Block,
) -> Result<(usize, usize), MethodError> {
    let lin = enc.weights().layers[l]
        .linear(part)
        .ok_or_else(|| MethodError::Setting(format!("{} is not a linear layer", part.stem())))?;
    Ok((lin.weight.rows, lin.weight.cols))
}

/// Sets up the trainable parameters of `method` on `enc` for `labels` classes, initialized from
/// `seed` as PEFT initializes them (LoRA `A` Kaiming-uniform and `B` zero, IA3 ones, prompts
/// from vocabulary embeddings, adapters near identity).
pub fn build<B: AsRef<[u8]>>(
    enc: &Encoder<B>,
    method: &Method,
    labels: usize,
    head: HeadKind,
    seed: u64,
) -> Result<Trainables, MethodError> {
    let cfg = enc.config();
    let (h, layers) = (cfg.hidden, cfg.layers);
    let arch = cfg.arch;
    let with_model = head == HeadKind::File;
    let mut rng = Rng::new(seed);
    let mut t = Trainables::default();
    let module = |l: usize, b: Block| format!("{PEFT_PREFIX}{}", hf_module(arch, with_model, l, b));
    match method {
        Method::Head => {}
        Method::BitFit => {
            for l in 0..layers {
                for part in [
                    Block::AttnQ,
                    Block::AttnK,
                    Block::AttnV,
                    Block::AttnOutput,
                    Block::FfnUp,
                    Block::FfnDown,
                ] {
                    let (n, _) = linear_shape(enc, l, part)?;
                    let i = t.push(Param::new(
                        format!("{}.bias", module(l, part)),
                        &[n],
                        vec![0.0; n],
                        false,
                    ));
                    t.sites
                        .entry((l, part))
                        .or_insert_with(SiteParams::default)
                        .bias = Some(i);
                }
                for (site, part) in [
                    (NormSite::Attention(l), Block::AttnOutputNorm),
                    (NormSite::Output(l), Block::LayerOutputNorm),
                ] {
                    let i = t.push(Param::new(
                        format!("{}.bias", module(l, part)),
                        &[h],
                        vec![0.0; h],
                        false,
                    ));
                    t.norm_bias.push((site, i));
                }
            }
            let model = if with_model { model_attr(arch) } else { "" };
            let i = t.push(Param::new(
                format!("{PEFT_PREFIX}{model}embeddings.LayerNorm.bias"),
                &[h],
                vec![0.0; h],
                false,
            ));
            t.norm_bias.push((NormSite::Embeddings, i));
        }
        Method::Lora(c) => {
            if c.r == 0 || !(0.0..1.0).contains(&c.dropout) || c.targets.is_empty() {
                return Err(MethodError::Setting(format!(
                    "LoRA needs rank > 0, dropout in [0, 1) and a target (rank {}, dropout {})",
                    c.r, c.dropout
                )));
            }
            for l in 0..layers {
                for &part in &c.targets {
                    let (out, inp) = linear_shape(enc, l, part)?;
                    let bound = 1.0 / (inp as f32).sqrt();
                    let a: Vec<f32> = (0..c.r * inp)
                        .map(|_| (rng.uniform() * 2.0 - 1.0) * bound)
                        .collect();
                    let m = module(l, part);
                    let a = t.push(Param::new(
                        format!("{m}.lora_A.weight"),
                        &[c.r, inp],
                        a,
                        true,
                    ));
                    let b = t.push(Param::new(
                        format!("{m}.lora_B.weight"),
                        &[out, c.r],
                        vec![0.0; out * c.r],
                        true,
                    ));
                    t.sites.entry((l, part)).or_default().lora = Some(LoraSite {
                        a,
                        b,
                        scaling: c.alpha / c.r as f32,
                        dropout: c.dropout,
                    });
                }
            }
        }
        Method::Adapter { kind, reduction } => {
            if *reduction == 0 || *reduction > h {
                return Err(MethodError::Setting(format!("adapter reduction factor {reduction} must be between 1 and the hidden size {h}")));
            }
            let m = (h / reduction).max(1);
            let parts: &[Block] = match kind {
                AdapterKind::Houlsby => &[Block::AttnOutput, Block::FfnDown],
                AdapterKind::Pfeiffer => &[Block::FfnDown],
            };
            for l in 0..layers {
                for &part in parts {
                    let name = format!("adapter.{l}.{}", part.stem());
                    let bound = 1.0 / (h as f32).sqrt();
                    let dw: Vec<f32> = (0..m * h)
                        .map(|_| (rng.uniform() * 2.0 - 1.0) * bound)
                        .collect();
                    let down_w =
                        t.push(Param::new(format!("{name}.down.weight"), &[m, h], dw, true));
                    let down_b = t.push(Param::new(
                        format!("{name}.down.bias"),
                        &[m],
                        vec![0.0; m],
                        false,
                    ));
                    let up_w = t.push(Param::new(
                        format!("{name}.up.weight"),
                        &[h, m],
                        vec![0.0; h * m],
                        true,
                    ));
                    let up_b = t.push(Param::new(
                        format!("{name}.up.bias"),
                        &[h],
                        vec![0.0; h],
                        false,
                    ));
                    t.sites.entry((l, part)).or_default().adapter = Some(AdapterSite {
                        down_w,
                        down_b,
                        up_w,
                        up_b,
                    });
                }
            }
        }
        Method::Prompt { tokens } => {
            if *tokens == 0 || tokens + 2 > cfg.context_length {
                return Err(MethodError::Setting(format!(
                    "prompt tuning needs between 1 and {} virtual tokens",
                    cfg.context_length.saturating_sub(2)
                )));
            }
            // Initialized from the embeddings of random vocabulary tokens (skipping the special
            // tokens at the start of the vocabulary).
            let words = enc.weights().token_embd.view(enc.bytes());
            let mut v = vec![0f32; tokens * h];
            for row in v.chunks_exact_mut(h) {
                let id =
                    1000.min(words.rows - 1) + rng.below(words.rows.saturating_sub(1000).max(1));
                words.dequantize_row(id.min(words.rows - 1), row);
            }
            t.prompt = Some(t.push(Param::new("prompt_embeddings", &[*tokens, h], v, false)));
        }
        Method::Prefix { tokens } => {
            if *tokens == 0 || *tokens > cfg.context_length {
                return Err(MethodError::Setting(format!(
                    "prefix tuning needs between 1 and {} virtual tokens",
                    cfg.context_length
                )));
            }
            let v: Vec<f32> = (0..tokens * layers * 2 * h)
                .map(|_| rng.normal() * 0.1)
                .collect();
            t.prefix = Some(t.push(Param::new(
                "prompt_embeddings",
                &[*tokens, layers * 2 * h],
                v,
                false,
            )));
        }
        Method::Ia3 {
            targets,
            feedforward,
        } => {
            for l in 0..layers {
                for &part in targets {
                    let (out, inp) = linear_shape(enc, l, part)?;
                    let ff = feedforward.contains(&part);
                    // PEFT's shapes: `[out, 1]` for an output scale, `[1, in]` for an input one.
                    let shape = if ff { [1, inp] } else { [out, 1] };
                    let name = format!("{}.ia3_l", module(l, part));
                    let i = t.push(Param::new(
                        name,
                        &shape,
                        vec![1.0; shape[0] * shape[1]],
                        false,
                    ));
                    let site = t.sites.entry((l, part)).or_default();
                    if ff {
                        site.ia3_input = Some(i);
                    } else {
                        site.ia3 = Some(i);
                    }
                }
            }
        }
    }
    // The classifier.
    let (w, b) = match head {
        HeadKind::File => {
            let fh = enc.weights().head.ok_or(MethodError::NoFileHead)?;
            let w = fh.out.weight.view(enc.bytes()).to_f32();
            let bv = fh.out.bias.f32s(enc.bytes()).to_vec();
            let k = bv.len();
            let prefix = match method {
                Method::Prompt { .. } | Method::Prefix { .. } => "base_model.",
                _ => "base_model.model.",
            };
            (
                Param::new(format!("{prefix}classifier.weight"), &[k, h], w, true),
                Param::new(format!("{prefix}classifier.bias"), &[k], bv, false),
            )
        }
        HeadKind::Pooled => {
            let bound = 1.0 / (h as f32).sqrt();
            let w: Vec<f32> = (0..labels * h)
                .map(|_| (rng.uniform() * 2.0 - 1.0) * bound)
                .collect();
            (
                Param::new("head.weight", &[labels, h], w, true),
                Param::new("head.bias", &[labels], vec![0.0; labels], false),
            )
        }
    };
    let dense_bias = match (method, head) {
        (Method::BitFit, HeadKind::File) => {
            let name = match arch {
                Arch::Bert => format!("{PEFT_PREFIX}bert.pooler.dense.bias"),
                Arch::DistilBert => format!("{PEFT_PREFIX}pre_classifier.bias"),
                _ => format!("{PEFT_PREFIX}classifier.dense.bias"),
            };
            Some(t.push(Param::new(name, &[h], vec![0.0; h], false)))
        }
        _ => None,
    };
    let (w, b) = (t.push(w), t.push(b));
    t.head = Some(match head {
        HeadKind::File => HeadParams::File { w, b, dense_bias },
        HeadKind::Pooled => HeadParams::Pooled { w, b },
    });
    Ok(t)
}
