//! Adapter files: small safetensors files with what adaptation trained, the labels, and the
//! SHA-256 of the base model file they belong to (docs/FORMAT.md, "Adapter files").

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use petal_runtime::head::{HeadInput, LinearHead};
use safetensors::{Dtype, SafeTensors};
use sha2::{Digest, Sha256};

/// `__metadata__` key: the method (`head`).
pub const METHOD: &str = "petal.adapter.method";
/// `__metadata__` key: the adapter format version.
pub const VERSION: &str = "petal.adapter.version";
/// `__metadata__` key: hex SHA-256 of the base model file.
pub const BASE_SHA256: &str = "petal.base.sha256";
/// `__metadata__` key: the labels, a JSON array of strings in logit order.
pub const LABELS: &str = "petal.labels";
/// `__metadata__` key: what the head reads (`pooled`).
pub const HEAD_INPUT: &str = "petal.head.input";
/// The head's weight tensor, `[labels, dim]` F32.
pub const HEAD_WEIGHT: &str = "head.weight";
/// The head's bias tensor, `[labels]` F32.
pub const HEAD_BIAS: &str = "head.bias";

/// What an adapter file holds.
#[derive(Clone, Debug, PartialEq)]
pub struct Adapter {
    /// hex SHA-256 of the base model file.
    pub base_sha256: String,
    /// The trained head.
    pub head: LinearHead,
}

/// Why an adapter file was refused.
#[derive(Debug)]
#[non_exhaustive]
pub enum AdapterError {
    /// The file could not be read or written.
    Io(PathBuf, std::io::Error),
    /// Not a valid safetensors file.
    Format(PathBuf, String),
    /// A required entry is missing or malformed.
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

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl Adapter {
    /// Writes the adapter to `path` atomically (temporary file in the same folder, then rename).
    pub fn save(&self, path: &Path) -> Result<(), AdapterError> {
        let io = |e| AdapterError::Io(path.into(), e);
        let h = &self.head;
        let (k, d) = (h.labels.len(), h.dim());
        let bytes = self.to_bytes(k, d);
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let mut tmp = tempfile::Builder::new()
            .prefix(".petal-")
            .suffix(".tmp")
            .tempfile_in(dir)
            .map_err(io)?;
        tmp.write_all(&bytes).map_err(io)?;
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

    /// The safetensors encoding, byte-for-byte deterministic: metadata keys sorted, tensors in
    /// name order (the `safetensors` crate orders metadata by hash map iteration, so the header is
    /// written here; `load` reads it back through the crate).
    fn to_bytes(&self, k: usize, d: usize) -> Vec<u8> {
        let h = &self.head;
        let (b, w) = (f32_bytes(&h.bias), f32_bytes(&h.weight));
        let meta: std::collections::BTreeMap<&str, String> = [
            (METHOD, "head".to_string()),
            (VERSION, "1".to_string()),
            (BASE_SHA256, self.base_sha256.clone()),
            (
                LABELS,
                serde_json::to_string(&h.labels).expect("strings serialize"),
            ),
            (HEAD_INPUT, "pooled".to_string()),
        ]
        .into_iter()
        .collect();
        let mut header = serde_json::Map::new();
        header.insert("__metadata__".into(), serde_json::json!(meta));
        header.insert(
            HEAD_BIAS.into(),
            serde_json::json!({"dtype": "F32", "shape": [k], "data_offsets": [0, b.len()]}),
        );
        header.insert(
            HEAD_WEIGHT.into(),
            serde_json::json!({"dtype": "F32", "shape": [k, d], "data_offsets": [b.len(), b.len() + w.len()]}),
        );
        let mut json = serde_json::to_string(&header).expect("JSON of strings and numbers");
        while json.len() % 8 != 0 {
            json.push(' ');
        }
        let mut out = Vec::with_capacity(8 + json.len() + b.len() + w.len());
        out.extend_from_slice(&(json.len() as u64).to_le_bytes());
        out.extend_from_slice(json.as_bytes());
        out.extend_from_slice(&b);
        out.extend_from_slice(&w);
        out
    }

    /// Reads and validates the adapter at `path`.
    pub fn load(path: &Path) -> Result<Self, AdapterError> {
        let bytes = std::fs::read(path).map_err(|e| AdapterError::Io(path.into(), e))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| AdapterError::Format(path.into(), e.to_string()))?;
        let (_, meta) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| AdapterError::Format(path.into(), e.to_string()))?;
        let meta = meta.metadata().clone().unwrap_or_default();
        let invalid = |m: String| AdapterError::Invalid(path.into(), m);
        let get = |k: &str| {
            meta.get(k)
                .cloned()
                .ok_or_else(|| invalid(format!("missing metadata \"{k}\"")))
        };
        let method = get(METHOD)?;
        if method != "head" {
            return Err(invalid(format!(
                "adapter method \"{method}\" is not supported by this petal"
            )));
        }
        if get(VERSION)? != "1" {
            return Err(invalid("unknown adapter version".into()));
        }
        if get(HEAD_INPUT)? != "pooled" {
            return Err(invalid("unknown head input".into()));
        }
        let labels: Vec<String> = serde_json::from_str(&get(LABELS)?)
            .map_err(|e| invalid(format!("labels are not a JSON list of strings: {e}")))?;
        let tensor = |name: &str, shape: &[usize]| -> Result<Vec<f32>, AdapterError> {
            let t = st
                .tensor(name)
                .map_err(|_| invalid(format!("missing tensor \"{name}\"")))?;
            if t.dtype() != Dtype::F32 || t.shape() != shape {
                return Err(invalid(format!(
                    "tensor \"{name}\" should be F32 {shape:?}, is {:?} {:?}",
                    t.dtype(),
                    t.shape()
                )));
            }
            Ok(t.data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect())
        };
        let k = labels.len();
        if k < 2 {
            return Err(invalid("fewer than two labels".into()));
        }
        let d = st
            .tensor(HEAD_WEIGHT)
            .map(|t| t.shape().get(1).copied().unwrap_or(0))
            .unwrap_or(0);
        let weight = tensor(HEAD_WEIGHT, &[k, d])?;
        let bias = tensor(HEAD_BIAS, &[k])?;
        if weight.iter().chain(&bias).any(|v| !v.is_finite()) {
            return Err(invalid("non-finite weights".into()));
        }
        Ok(Adapter {
            base_sha256: get(BASE_SHA256)?,
            head: LinearHead {
                input: HeadInput::Pooled,
                labels,
                weight,
                bias,
            },
        })
    }

    /// Refuses an adapter trained on another base (`model_hash` from [`base_hash`]) or for
    /// another embedding size.
    pub fn check_base(
        &self,
        path: &Path,
        model_hash: &str,
        dim: usize,
    ) -> Result<(), AdapterError> {
        if self.base_sha256 != model_hash {
            return Err(AdapterError::BaseMismatch {
                path: path.into(),
                expected: self.base_sha256.clone(),
                found: model_hash.into(),
            });
        }
        if self.head.dim() != dim {
            return Err(AdapterError::Invalid(
                path.into(),
                format!(
                    "head reads {} values, the model gives {dim}",
                    self.head.dim()
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adapter() -> Adapter {
        Adapter {
            base_sha256: "ab".repeat(32),
            head: LinearHead {
                input: HeadInput::Pooled,
                labels: vec!["ham".into(), "spam".into()],
                weight: vec![1.0, -2.0, 0.5, 3.0],
                bias: vec![0.25, -0.25],
            },
        }
    }

    #[test]
    fn roundtrip_and_base_check() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.safetensors");
        adapter().save(&p).unwrap();
        let a = Adapter::load(&p).unwrap();
        assert_eq!(a, adapter());
        a.check_base(&p, &"ab".repeat(32), 2).unwrap();
        let e = a
            .check_base(&p, &"cd".repeat(32), 2)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("a.safetensors: trained on another base model"),
            "{e}"
        );
        assert!(a.check_base(&p, &"ab".repeat(32), 3).is_err());
    }

    #[test]
    fn corrupt_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.safetensors");
        std::fs::write(&p, b"not safetensors").unwrap();
        assert!(Adapter::load(&p)
            .unwrap_err()
            .to_string()
            .contains("not a valid adapter file"));
        adapter().save(&p).unwrap();
        let mut b = std::fs::read(&p).unwrap();
        let n = b.len();
        b.truncate(n - 3);
        std::fs::write(&p, &b).unwrap();
        assert!(Adapter::load(&p).is_err());
    }
}
