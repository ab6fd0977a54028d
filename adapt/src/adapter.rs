//! Adapter files: what adaptation trained, the labels, and the SHA-256 of the base model file
//! they belong to (docs/FORMAT.md, "Adapter files").
//!
//! LoRA, IA3, prompt tuning and prefix tuning are saved as PEFT saves them: a directory with
//! `adapter_config.json` and `adapter_model.safetensors`, tensor names of the equivalent Hugging
//! Face model, so `PeftModel.from_pretrained` loads them; petal's own keys ride in the
//! safetensors metadata. The head, BitFit and bottleneck adapters are one safetensors file in
//! petal's layout. Every write is atomic.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use petal_runtime::bert::Encoder;
use petal_runtime::config::Arch;
use petal_runtime::gguf::names::tensor::Block;
use safetensors::{Dtype, SafeTensors};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::grad::{HeadParams, Trainables};
use crate::methods::{self, HeadKind, LoraConfig, Method};

/// `__metadata__` key: the method (`head`, `bitfit`, `lora`, ...).
pub const METHOD: &str = "petal.adapter.method";
/// `__metadata__` key: the adapter format version.
pub const VERSION: &str = "petal.adapter.version";
/// `__metadata__` key: hex SHA-256 of the base model file.
pub const BASE_SHA256: &str = "petal.base.sha256";
/// `__metadata__` key: the labels, a JSON array of strings in logit order.
pub const LABELS: &str = "petal.labels";
/// `__metadata__` key: what the head reads (`pooled`, or `model` for the file's own head).
pub const HEAD_INPUT: &str = "petal.head.input";
/// `__metadata__` key: the method's settings as JSON (petal-layout files).
pub const SETTINGS: &str = "petal.adapter.settings";
/// The pooled head's weight tensor, `[labels, dim]` F32.
pub const HEAD_WEIGHT: &str = "head.weight";
/// The pooled head's bias tensor, `[labels]` F32.
pub const HEAD_BIAS: &str = "head.bias";
/// PEFT's configuration file in an adapter directory.
pub const PEFT_CONFIG: &str = "adapter_config.json";
/// PEFT's weights file in an adapter directory.
pub const PEFT_WEIGHTS: &str = "adapter_model.safetensors";

/// The format version petal writes.
const FORMAT_VERSION: &str = "2";

/// A trained adapter: the method, its parameters, the labels and the base it belongs to.
#[derive(Clone, Debug, PartialEq)]
pub struct Adapter {
    /// hex SHA-256 of the base model file (`None` for a PEFT adapter made elsewhere).
    pub base_sha256: Option<String>,
    /// The method.
    pub method: Method,
    /// Which classifier.
    pub head: HeadKind,
    /// Class names, in logit order.
    pub labels: Vec<String>,
    /// The trained parameters.
    pub trainables: Trainables,
}

/// Why an adapter file was refused.
#[derive(Debug)]
#[non_exhaustive]
pub enum AdapterError {
    /// The file could not be read or written.
    Io(PathBuf, std::io::Error),
    /// Not a valid safetensors or JSON file.
    Format(PathBuf, String),
    /// A required entry is missing or malformed, or the method is not supported.
    Invalid(PathBuf, String),
    /// The adapter was trained on another base model.
    BaseMismatch {
        /// The adapter file.
        path: PathBuf,
        /// The base it records.
        expected: String,
        /// The base given.
        found: String,
    },
}

impl fmt::Display for AdapterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdapterError::Io(p, e) => write!(f, "{}: {e}", p.display()),
            AdapterError::Format(p, e) => {
                write!(f, "{}: not a valid adapter file: {e}", p.display())
            }
            AdapterError::Invalid(p, e) => write!(f, "{}: {e}", p.display()),
            AdapterError::BaseMismatch {
                path,
                expected,
                found,
            } => write!(
                f,
                "{}: trained on another base model (base SHA-256 {}…, this model is {}…)",
                path.display(),
                &expected[..expected.len().min(12)],
                &found[..found.len().min(12)]
            ),
        }
    }
}

impl std::error::Error for AdapterError {}

/// hex SHA-256 of a model file's bytes: the identity adapters record.
pub fn base_hash(model_bytes: &[u8]) -> String {
    Sha256::digest(model_bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `method` is saved in PEFT's layout (a directory).
pub fn is_peft(method: &Method) -> bool {
    matches!(
        method,
        Method::Lora(_) | Method::Ia3 { .. } | Method::Prompt { .. } | Method::Prefix { .. }
    )
}

/// A safetensors file, byte-for-byte deterministic: metadata keys sorted, tensors in name order
/// (the `safetensors` crate orders metadata by hash map iteration, so the header is written
/// here; loading reads it back through the crate).
fn safetensors_bytes(
    meta: &BTreeMap<String, String>,
    tensors: &[(&str, &[usize], &[f32])],
) -> Vec<u8> {
    let mut sorted: Vec<_> = tensors.to_vec();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!(meta));
    let mut offset = 0;
    for (name, shape, data) in &sorted {
        let len = data.len() * 4;
        header.insert(
            (*name).into(),
            json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    }
    let mut json = serde_json::to_string(&header).expect("JSON of strings and numbers");
    while !json.len().is_multiple_of(8) {
        json.push(' ');
    }
    let mut out = Vec::with_capacity(8 + json.len() + offset);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(json.as_bytes());
    for (_, _, data) in &sorted {
        out.extend(data.iter().flat_map(|x| x.to_le_bytes()));
    }
    out
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, synced, renamed.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), AdapterError> {
    let io = |e| AdapterError::Io(path.into(), e);
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".petal-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(io)?;
    tmp.write_all(bytes).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(io)?;
    }
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

/// A JSON number, an integer when it is one (PEFT types `lora_alpha` as an int).
fn number(x: f32) -> Value {
    if x.fract() == 0.0 && x.abs() < 1e9 {
        json!(x as i64)
    } else {
        json!(x)
    }
}

fn block_names(arch: Arch, blocks: &[Block]) -> Vec<&'static str> {
    blocks
        .iter()
        .map(|&b| methods::peft_target(arch, b))
        .collect()
}

impl Adapter {
    fn metadata(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert("format".into(), "pt".into());
        m.insert(METHOD.into(), self.method.name().into());
        m.insert(VERSION.into(), FORMAT_VERSION.into());
        if let Some(h) = &self.base_sha256 {
            m.insert(BASE_SHA256.into(), h.clone());
        }
        m.insert(
            LABELS.into(),
            serde_json::to_string(&self.labels).expect("strings serialize"),
        );
        m.insert(
            HEAD_INPUT.into(),
            match self.head {
                HeadKind::Pooled => "pooled",
                HeadKind::File => "model",
            }
            .into(),
        );
        let settings = match &self.method {
            Method::Adapter { reduction, .. } => json!({ "reduction": reduction }),
            _ => json!({}),
        };
        m.insert(SETTINGS.into(), settings.to_string());
        m
    }

    fn tensors(&self) -> Vec<(&str, &[usize], &[f32])> {
        self.trainables
            .params
            .iter()
            .map(|p| (p.name.as_str(), p.shape.as_slice(), p.value.as_slice()))
            .collect()
    }

    /// PEFT's `adapter_config.json` for this adapter on a model of `arch` with `layers` layers,
    /// `hidden` size and `heads` attention heads.
    fn peft_config(&self, arch: Arch, layers: usize, hidden: usize, heads: usize) -> Value {
        let task = match self.head {
            HeadKind::File => "SEQ_CLS",
            HeadKind::Pooled => "FEATURE_EXTRACTION",
        };
        let save = match self.head {
            HeadKind::File => json!(["classifier", "score"]),
            HeadKind::Pooled => Value::Null,
        };
        let mut c = match &self.method {
            Method::Lora(l) => json!({
                "peft_type": "LORA", "r": l.r, "lora_alpha": number(l.alpha), "lora_dropout": l.dropout,
                "target_modules": block_names(arch, &l.targets), "bias": "none", "fan_in_fan_out": false,
                "init_lora_weights": true, "use_rslora": false, "use_dora": false,
                "rank_pattern": {}, "alpha_pattern": {}, "layers_to_transform": null,
            }),
            Method::Ia3 {
                targets,
                feedforward,
            } => json!({
                "peft_type": "IA3", "target_modules": block_names(arch, targets),
                "feedforward_modules": block_names(arch, feedforward), "fan_in_fan_out": false,
                "init_ia3_weights": true,
            }),
            Method::Prompt { tokens } => json!({
                "peft_type": "PROMPT_TUNING", "num_virtual_tokens": tokens, "token_dim": hidden,
                "num_transformer_submodules": 1, "num_attention_heads": heads, "num_layers": layers,
                "prompt_tuning_init": "RANDOM",
            }),
            Method::Prefix { tokens } => json!({
                "peft_type": "PREFIX_TUNING", "num_virtual_tokens": tokens, "token_dim": hidden,
                "num_transformer_submodules": 1, "num_attention_heads": heads, "num_layers": layers,
                "encoder_hidden_size": hidden, "prefix_projection": false,
            }),
            _ => unreachable!("only PEFT methods have a PEFT configuration"),
        };
        let o = c.as_object_mut().expect("an object");
        o.insert("task_type".into(), json!(task));
        o.insert("modules_to_save".into(), save);
        o.insert("inference_mode".into(), json!(true));
        o.insert("base_model_name_or_path".into(), Value::Null);
        o.insert("revision".into(), Value::Null);
        c
    }

    /// Writes the adapter to `path`: a PEFT directory for LoRA, IA3, prompt and prefix tuning
    /// (replaced as a whole), one safetensors file otherwise. Atomic either way.
    pub fn save<B: AsRef<[u8]>>(&self, path: &Path, enc: &Encoder<B>) -> Result<(), AdapterError> {
        let bytes = safetensors_bytes(&self.metadata(), &self.tensors());
        if !is_peft(&self.method) {
            if path.is_dir() {
                return Err(AdapterError::Invalid(
                    path.into(),
                    "is a directory; a file name is expected for this method".into(),
                ));
            }
            return write_atomic(path, &bytes);
        }
        let io = |e| AdapterError::Io(path.into(), e);
        let c = enc.config();
        let config = self.peft_config(c.arch, c.layers, c.hidden, c.heads);
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if path.exists()
            && !path.join(PEFT_CONFIG).exists()
            && !(path.is_dir() && std::fs::read_dir(path).map_err(io)?.next().is_none())
        {
            return Err(AdapterError::Invalid(
                path.into(),
                "exists and is not an adapter directory; refusing to replace it".into(),
            ));
        }
        // Build the directory beside the target, then swap it in.
        let tmp = tempfile::Builder::new()
            .prefix(".petal-")
            .tempdir_in(parent)
            .map_err(io)?;
        write_atomic(&tmp.path().join(PEFT_WEIGHTS), &bytes)?;
        let json = serde_json::to_string_pretty(&config).expect("JSON") + "\n";
        write_atomic(&tmp.path().join(PEFT_CONFIG), json.as_bytes())?;
        let staged = tmp.keep();
        if path.exists() {
            let old = parent.join(format!(".petal-old-{}", std::process::id()));
            std::fs::rename(path, &old).map_err(io)?;
            std::fs::rename(&staged, path).map_err(io)?;
            std::fs::remove_dir_all(&old).map_err(io)?;
        } else {
            std::fs::rename(&staged, path).map_err(io)?;
        }
        Ok(())
    }

    /// Reads the adapter at `path` (a petal file or a PEFT directory) for the model `enc`:
    /// refuses an adapter that records another base model, and checks every tensor against what
    /// the method needs on this model.
    pub fn load<B: AsRef<[u8]>>(path: &Path, enc: &Encoder<B>) -> Result<Self, AdapterError> {
        let invalid = |m: String| AdapterError::Invalid(path.into(), m);
        let (weights_path, peft) = if path.is_dir() {
            (path.join(PEFT_WEIGHTS), true)
        } else {
            (path.to_path_buf(), false)
        };
        let bytes =
            std::fs::read(&weights_path).map_err(|e| AdapterError::Io(weights_path.clone(), e))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| AdapterError::Format(weights_path.clone(), e.to_string()))?;
        let (_, meta) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| AdapterError::Format(weights_path.clone(), e.to_string()))?;
        let meta = meta.metadata().clone().unwrap_or_default();
        // The base first: an adapter of another model would otherwise fail on shapes.
        if let Some(h) = meta.get(BASE_SHA256) {
            let found = base_hash(enc.bytes());
            if *h != found {
                return Err(AdapterError::BaseMismatch {
                    path: path.into(),
                    expected: h.clone(),
                    found,
                });
            }
        }
        let model_labels = enc.config().labels.clone();
        let labels: Option<Vec<String>> = match meta.get(LABELS) {
            Some(l) => Some(
                serde_json::from_str(l)
                    .map_err(|e| invalid(format!("labels are not a JSON list of strings: {e}")))?,
            ),
            None => None,
        };
        let (method, head) = if peft {
            let cpath = path.join(PEFT_CONFIG);
            let text =
                std::fs::read_to_string(&cpath).map_err(|e| AdapterError::Io(cpath.clone(), e))?;
            let c: Value = serde_json::from_str(&text)
                .map_err(|e| AdapterError::Format(cpath.clone(), e.to_string()))?;
            peft_method(&c, enc.config().arch)
                .map_err(|m| AdapterError::Invalid(cpath.clone(), m))?
        } else {
            let method = meta
                .get(METHOD)
                .ok_or_else(|| invalid(format!("missing metadata \"{METHOD}\"")))?;
            let version = meta.get(VERSION).map(String::as_str);
            if !matches!(version, Some("1") | Some(FORMAT_VERSION)) {
                return Err(invalid(format!("unknown adapter version {version:?}")));
            }
            let head = match meta.get(HEAD_INPUT).map(String::as_str) {
                Some("pooled") => HeadKind::Pooled,
                Some("model") => HeadKind::File,
                other => return Err(invalid(format!("unknown head input {other:?}"))),
            };
            let settings: Value = match meta.get(SETTINGS) {
                Some(s) => serde_json::from_str(s)
                    .map_err(|e| invalid(format!("settings are not JSON: {e}")))?,
                None => json!({}),
            };
            let mut m = Method::from_name(method)
                .filter(|m| !is_peft(m))
                .ok_or_else(|| {
                    invalid(format!(
                        "adapter method \"{method}\" is not supported by this petal"
                    ))
                })?;
            if let Method::Adapter { reduction, .. } = &mut m {
                *reduction = settings["reduction"]
                    .as_u64()
                    .ok_or_else(|| invalid("adapter settings lack \"reduction\"".into()))?
                    as usize;
            }
            (m, head)
        };
        let labels = match (labels, head) {
            (Some(l), _) => l,
            (None, HeadKind::File) => model_labels
                .clone()
                .ok_or_else(|| invalid("no labels, and the model has none".into()))?,
            (None, HeadKind::Pooled) => {
                return Err(invalid(format!("missing metadata \"{LABELS}\"")))
            }
        };
        if labels.len() < 2 {
            return Err(invalid("fewer than two labels".into()));
        }
        if head == HeadKind::File && model_labels.as_ref().map(Vec::len) != Some(labels.len()) {
            return Err(invalid("the adapter trains the model's own classifier, but the model has another number of labels".into()));
        }
        let mut t = methods::build(enc, &method, labels.len(), head, 0)
            .map_err(|e| invalid(e.to_string()))?;
        let names: std::collections::BTreeSet<String> = st.names().into_iter().cloned().collect();
        for p in &mut t.params {
            let v = st
                .tensor(&p.name)
                .map_err(|_| invalid(format!("missing tensor \"{}\"", p.name)))?;
            if v.dtype() != Dtype::F32 || v.shape() != p.shape.as_slice() {
                return Err(invalid(format!(
                    "tensor \"{}\" should be F32 {:?}, is {:?} {:?}",
                    p.name,
                    p.shape,
                    v.dtype(),
                    v.shape()
                )));
            }
            p.value = v
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            if p.value.iter().any(|x| !x.is_finite()) {
                return Err(invalid(format!(
                    "tensor \"{}\" has non-finite values",
                    p.name
                )));
            }
        }
        if let Some(extra) = names.iter().find(|n| t.get(n).is_none()) {
            return Err(invalid(format!(
                "unexpected tensor \"{extra}\" for method {}",
                method.name()
            )));
        }
        Ok(Adapter {
            base_sha256: meta.get(BASE_SHA256).cloned(),
            method,
            head,
            labels,
            trainables: t,
        })
    }

    /// Refuses an adapter trained on another base (`model_hash` from [`base_hash`]). A PEFT
    /// adapter made elsewhere records no base and passes.
    pub fn check_base(&self, path: &Path, model_hash: &str) -> Result<(), AdapterError> {
        match &self.base_sha256 {
            Some(h) if h != model_hash => Err(AdapterError::BaseMismatch {
                path: path.into(),
                expected: h.clone(),
                found: model_hash.into(),
            }),
            _ => Ok(()),
        }
    }

    /// The classifier's parameter indices.
    pub fn head_params(&self) -> HeadParams {
        self.trainables
            .head
            .expect("every method trains a classifier")
    }
}

fn blocks_of(arch: Arch, v: &Value, key: &str) -> Result<Vec<Block>, String> {
    match &v[key] {
        Value::Null => Ok(Vec::new()),
        Value::Array(a) => a
            .iter()
            .map(|x| {
                let s = x
                    .as_str()
                    .ok_or_else(|| format!("\"{key}\" holds a non-string"))?;
                methods::block_of_target(arch, s).ok_or_else(|| {
                    format!("target module \"{s}\" is not a linear layer petal knows")
                })
            })
            .collect(),
        Value::String(s) => Err(format!(
            "\"{key}\" as a regular expression (\"{s}\") is not supported; list the modules"
        )),
        _ => Err(format!("\"{key}\" is not a list")),
    }
}

/// The method and head of a PEFT `adapter_config.json`.
fn peft_method(c: &Value, arch: Arch) -> Result<(Method, HeadKind), String> {
    let head = match c["task_type"].as_str() {
        Some("SEQ_CLS") => HeadKind::File,
        Some("FEATURE_EXTRACTION") | None => HeadKind::Pooled,
        Some(other) => {
            return Err(format!(
                "task type {other} is not supported (SEQ_CLS or FEATURE_EXTRACTION)"
            ))
        }
    };
    let usize_of = |k: &str| {
        c[k].as_u64()
            .map(|v| v as usize)
            .ok_or_else(|| format!("\"{k}\" is missing or not a number"))
    };
    let method = match c["peft_type"].as_str() {
        Some("LORA") => {
            for (k, ok) in [
                ("use_dora", false),
                ("fan_in_fan_out", false),
                ("use_rslora", false),
            ] {
                if c[k].as_bool().unwrap_or(false) != ok {
                    return Err(format!("LoRA with \"{k}\" is not supported"));
                }
            }
            if c["bias"].as_str().is_some_and(|b| b != "none") {
                return Err("LoRA with trained biases is not supported".into());
            }
            if !c["layers_to_transform"].is_null()
                || c["rank_pattern"].as_object().is_some_and(|m| !m.is_empty())
                || c["alpha_pattern"]
                    .as_object()
                    .is_some_and(|m| !m.is_empty())
            {
                return Err("LoRA with per-layer settings is not supported".into());
            }
            Method::Lora(LoraConfig {
                r: usize_of("r")?,
                alpha: c["lora_alpha"]
                    .as_f64()
                    .ok_or("\"lora_alpha\" is missing")? as f32,
                dropout: c["lora_dropout"].as_f64().unwrap_or(0.0) as f32,
                targets: blocks_of(arch, c, "target_modules")?,
            })
        }
        Some("IA3") => Method::Ia3 {
            targets: blocks_of(arch, c, "target_modules")?,
            feedforward: blocks_of(arch, c, "feedforward_modules")?,
        },
        Some("PROMPT_TUNING") => {
            if usize_of("num_transformer_submodules").unwrap_or(1) != 1 {
                return Err("prompt tuning for encoder-decoder models is not supported".into());
            }
            Method::Prompt {
                tokens: usize_of("num_virtual_tokens")?,
            }
        }
        Some("PREFIX_TUNING") => {
            if c["prefix_projection"].as_bool().unwrap_or(false) {
                return Err("prefix tuning with a projection is not supported".into());
            }
            Method::Prefix {
                tokens: usize_of("num_virtual_tokens")?,
            }
        }
        other => {
            return Err(format!(
                "PEFT type {other:?} is not supported (LORA, IA3, PROMPT_TUNING, PREFIX_TUNING)"
            ))
        }
    };
    Ok((method, head))
}
