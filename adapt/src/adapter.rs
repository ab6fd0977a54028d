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

/// Most labels an adapter may have.
pub const MAX_LABELS: usize = 4096;
/// Largest LoRA rank an adapter may have (also at most the narrower side of each target).
pub const MAX_LORA_RANK: usize = 4096;

/// The first `n` characters of `s` (hashes in messages; a hostile file may put any text there).
fn prefix_chars(s: &str, n: usize) -> &str {
    s.char_indices().nth(n).map_or(s, |(i, _)| &s[..i])
}

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
                prefix_chars(expected, 12),
                prefix_chars(found, 12)
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
    write_file_atomic(path, bytes).map_err(|e| AdapterError::Io(path.into(), e))
}

/// Writes `bytes` to `path` through a temporary file in the same directory (synced, mode 0644
/// on Unix) and a rename, so that a reader finds the old file or the whole new one.
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".petal-")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    }
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Puts the directory `staged` at `path` and the old `path` at `staged`, in one step where the
/// system has one (Linux's `renameat2(RENAME_EXCHANGE)`), so that a process killed at any
/// moment leaves the whole old or the whole new directory at `path`.
#[cfg(target_os = "linux")]
fn swap_in(staged: &Path, path: &Path) -> std::io::Result<()> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    renameat_with(CWD, staged, CWD, path, RenameFlags::EXCHANGE).map_err(std::io::Error::from)
}

/// Elsewhere two renames: a process killed between them leaves the old directory under a
/// hidden `.petal-old-*` name beside `path`.
#[cfg(not(target_os = "linux"))]
fn swap_in(staged: &Path, path: &Path) -> std::io::Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    let old = parent.join(format!(".petal-old-{}", std::process::id()));
    std::fs::rename(path, &old)?;
    std::fs::rename(staged, path)?;
    std::fs::rename(&old, staged)
}

/// PEFT's `target_modules` (or `feedforward_modules`) for exactly `blocks`: a regular
/// expression, or an empty list for none.
fn target_modules(arch: Arch, blocks: &[Block]) -> Value {
    if blocks.is_empty() {
        json!([])
    } else {
        json!(methods::peft_target_regex(arch, blocks))
    }
}

/// A JSON number, an integer when it is one (PEFT types `lora_alpha` as an int).
fn number(x: f32) -> Value {
    if x.fract() == 0.0 && x.abs() < 1e9 {
        json!(x as i64)
    } else {
        json!(x)
    }
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
                "target_modules": target_modules(arch, &l.targets), "bias": "none", "fan_in_fan_out": false,
                "init_lora_weights": true, "use_rslora": false, "use_dora": false,
                "rank_pattern": {}, "alpha_pattern": {}, "layers_to_transform": null,
            }),
            Method::Ia3 {
                targets,
                feedforward,
            } => json!({
                "peft_type": "IA3", "target_modules": target_modules(arch, targets),
                "feedforward_modules": target_modules(arch, feedforward), "fan_in_fan_out": false,
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
            swap_in(&staged, path).map_err(io)?;
            // `staged` now holds the old directory (a hidden `.petal-*` name if this process
            // dies before removing it).
            std::fs::remove_dir_all(&staged).map_err(io)?;
        } else {
            std::fs::rename(&staged, path).map_err(io)?;
        }
        Ok(())
    }

    /// Reads the adapter at `path` (a petal file or a PEFT directory) for the model `enc`:
    /// refuses an adapter that records another base model, and checks every tensor against what
    /// the method needs on this model.
    pub fn load<B: AsRef<[u8]>>(path: &Path, enc: &Encoder<B>) -> Result<Self, AdapterError> {
        if path.is_dir() {
            let weights_path = path.join(PEFT_WEIGHTS);
            let bytes = std::fs::read(&weights_path)
                .map_err(|e| AdapterError::Io(weights_path.clone(), e))?;
            let cpath = path.join(PEFT_CONFIG);
            let text =
                std::fs::read_to_string(&cpath).map_err(|e| AdapterError::Io(cpath.clone(), e))?;
            Self::from_parts(path, &bytes, Some(&text), enc)
        } else {
            let bytes = std::fs::read(path).map_err(|e| AdapterError::Io(path.into(), e))?;
            Self::from_parts(path, &bytes, None, enc)
        }
    }

    /// [`Adapter::load`] on bytes already read: `weights` (a petal adapter file, or a PEFT
    /// directory's `adapter_model.safetensors` when `peft_config` holds its
    /// `adapter_config.json`); `path` (the file or directory) names it in errors.
    pub fn from_parts<B: AsRef<[u8]>>(
        path: &Path,
        weights: &[u8],
        peft_config: Option<&str>,
        enc: &Encoder<B>,
    ) -> Result<Self, AdapterError> {
        let invalid = |m: String| AdapterError::Invalid(path.into(), m);
        let peft = peft_config.is_some();
        let weights_path = if peft {
            path.join(PEFT_WEIGHTS)
        } else {
            path.to_path_buf()
        };
        let bytes = weights;
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| AdapterError::Format(weights_path.clone(), e.to_string()))?;
        let (_, meta) = SafeTensors::read_metadata(bytes)
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
        let (method, head) = if let Some(text) = peft_config {
            let text = text.strip_prefix('\u{feff}').unwrap_or(text);
            let cpath = path.join(PEFT_CONFIG);
            let c: Value = serde_json::from_str(text)
                .map_err(|e| AdapterError::Format(cpath.clone(), e.to_string()))?;
            let arch = enc.config().arch;
            // A sub-layer is trained when layer 0's module of it has a tensor in the file.
            let trained = |b: Block| {
                let m = format!("{}.", methods::hf_module(arch, false, 0, b));
                st.names().iter().any(|n| n.contains(&m))
            };
            peft_method(&c, arch, enc.config().layers, &trained)
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
        // Every size the file states is checked against the tensors it holds before
        // `methods::build` allocates by it.
        check_stated_sizes(&st, &method, head, labels.len(), enc.config().hidden).map_err(|m| {
            let file = if peft {
                path.join(PEFT_CONFIG)
            } else {
                path.to_path_buf()
            };
            AdapterError::Invalid(file, m)
        })?;
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

/// Checks the sizes an adapter's metadata or `adapter_config.json` states (labels, LoRA rank,
/// virtual tokens) against their caps and against the shapes of the tensors in its safetensors
/// file, so that a hostile number is refused before anything is sized by it.
fn check_stated_sizes(
    st: &SafeTensors<'_>,
    method: &Method,
    head: HeadKind,
    labels: usize,
    hidden: usize,
) -> Result<(), String> {
    let shape_of = |name: &str| st.tensor(name).ok().map(|t| t.shape().to_vec());
    if labels > MAX_LABELS {
        return Err(format!(
            "{labels} labels: at most {MAX_LABELS} are supported"
        ));
    }
    if head == HeadKind::Pooled {
        let want = [labels, hidden];
        match shape_of(HEAD_WEIGHT) {
            Some(s) if s == want => {}
            Some(s) => {
                return Err(format!(
                    "{labels} labels, but tensor \"{HEAD_WEIGHT}\" has shape {s:?} (want {want:?})"
                ))
            }
            None => return Err(format!("missing tensor \"{HEAD_WEIGHT}\"")),
        }
    }
    match method {
        Method::Lora(c) => {
            if c.r == 0 || c.r > MAX_LORA_RANK {
                return Err(format!(
                    "\"r\" is {}: the LoRA rank must be between 1 and {MAX_LORA_RANK}",
                    c.r
                ));
            }
            let mut seen = false;
            for name in st.names() {
                if name.ends_with(".lora_A.weight") {
                    let s = shape_of(name).unwrap_or_default();
                    if s.first() != Some(&c.r) {
                        return Err(format!(
                            "\"r\" is {}, but tensor \"{name}\" has shape {s:?}",
                            c.r
                        ));
                    }
                    seen = true;
                }
            }
            if !seen {
                return Err("no \"lora_A\" tensor for the LoRA targets".into());
            }
        }
        Method::Prompt { tokens } | Method::Prefix { tokens } => {
            let name = "prompt_embeddings";
            match shape_of(name) {
                Some(s) if s.first() == Some(tokens) => {}
                s => {
                    return Err(format!(
                        "\"num_virtual_tokens\" is {tokens}, but tensor \"{name}\" has shape {:?}",
                        s.unwrap_or_default()
                    ))
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// The sub-layers `v[key]` (`target_modules`, `feedforward_modules`) selects, as PEFT selects
/// them: a regular expression full-matched against module names (what petal writes), or a list
/// of names matched by suffix. A list name that PEFT would match to several sub-layers (BERT's
/// `output.dense`) keeps those that have tensors in the file (`trained`), so that directories
/// written by earlier petals, which meant the feed-forward output by it, still load.
fn blocks_of(
    arch: Arch,
    layers: usize,
    v: &Value,
    key: &str,
    trained: &dyn Fn(Block) -> bool,
) -> Result<Vec<Block>, String> {
    match &v[key] {
        Value::Null => Ok(Vec::new()),
        Value::Array(a) => {
            let mut out: Vec<Block> = Vec::new();
            for x in a {
                let s = x
                    .as_str()
                    .ok_or_else(|| format!("\"{key}\" holds a non-string"))?;
                let mut hit = methods::blocks_of_name(arch, s);
                if hit.is_empty() {
                    return Err(format!(
                        "target module \"{s}\" is not a linear layer petal knows"
                    ));
                }
                if hit.len() > 1 && hit.iter().any(|&b| trained(b)) {
                    hit.retain(|&b| trained(b));
                }
                for b in hit {
                    if !out.contains(&b) {
                        out.push(b);
                    }
                }
            }
            Ok(out)
        }
        Value::String(s) => {
            let blocks = methods::blocks_of_regex(arch, layers, s)?;
            if blocks.is_empty() {
                return Err(format!(
                    "\"{key}\" ({s:?}) selects no linear layer petal knows"
                ));
            }
            Ok(blocks)
        }
        _ => Err(format!("\"{key}\" is not a list or a string")),
    }
}

/// The method and head of a PEFT `adapter_config.json`.
fn peft_method(
    c: &Value,
    arch: Arch,
    layers: usize,
    trained: &dyn Fn(Block) -> bool,
) -> Result<(Method, HeadKind), String> {
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
                targets: blocks_of(arch, layers, c, "target_modules", trained)?,
            })
        }
        Some("IA3") => Method::Ia3 {
            targets: blocks_of(arch, layers, c, "target_modules", trained)?,
            feedforward: blocks_of(arch, layers, c, "feedforward_modules", trained)?,
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
