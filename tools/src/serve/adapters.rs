//! Personalization through the service: each adapter's labelled examples, kept durably under
//! `--data`, trained with the default recipe in the background, and swapped in atomically.
//!
//! On disk, `DATA/adapters/NAME/` holds `examples.jsonl` (every example posted, rewritten whole
//! through a temporary file and a rename), the trained adapters (`trained-N`, a file or a PEFT
//! directory) and `current`, the name of the one in use, replaced by a rename after training,
//! so that a crash leaves the old adapter or the new one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget};
use petal_adapt::adapter::{write_file_atomic as write_atomic, Adapter};
use petal_adapt::data::{self, Example};
use petal_runtime::pipeline::Model;
use serde_json::{json, Value};

use crate::adapt_cmd::{self, AdaptArgs, MethodArg};

/// Longest adapter name.
const MAX_NAME: usize = 64;

/// Where an adapter stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Examples, but no adapter yet.
    Untrained,
    /// A training job is running (the previous adapter, if any, still answers).
    Training,
    /// An adapter answers `/predict`.
    Ready,
    /// The last training failed (the previous adapter, if any, still answers).
    Failed,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Untrained => "untrained",
            State::Training => "training",
            State::Ready => "ready",
            State::Failed => "failed",
        }
    }
}

/// One adapter's status, for `GET /adapters/NAME`.
struct Status {
    state: State,
    error: Option<String>,
    /// The running job's progress bar (hidden; read for its position).
    progress: Option<ProgressBar>,
    /// The last training's summary (method, held-out estimates).
    summary: Option<Value>,
}

/// One named adapter.
pub struct Entry {
    /// Its directory under `--data` (none for one given by `--adapter NAME=PATH` only).
    dir: Option<PathBuf>,
    /// The adapter in use.
    adapter: RwLock<Option<Arc<Adapter>>>,
    status: Mutex<Status>,
}

impl Entry {
    fn new(dir: Option<PathBuf>) -> Self {
        Entry {
            dir,
            adapter: RwLock::new(None),
            status: Mutex::new(Status {
                state: State::Untrained,
                error: None,
                progress: None,
                summary: None,
            }),
        }
    }

    /// The adapter in use, if trained.
    pub fn adapter(&self) -> Option<Arc<Adapter>> {
        self.adapter
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn examples_path(&self) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join("examples.jsonl"))
    }

    /// The examples stored so far.
    fn examples(&self) -> Result<Vec<Example>> {
        match self.examples_path() {
            Some(p) if p.exists() => Ok(data::read_jsonl(&p)?),
            _ => Ok(Vec::new()),
        }
    }
}

/// Every adapter of the service.
pub struct Store {
    /// `DATA/adapters`, when the service has `--data`.
    root: Option<PathBuf>,
    entries: RwLock<BTreeMap<String, Arc<Entry>>>,
}

/// Whether `name` is an adapter name: 1 to 64 letters, digits, `-`, `_` or `.`, not starting
/// with a dot.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl Store {
    /// The adapters under `data` (each trained one loaded) and those given by `--adapter`.
    pub fn open(model: &Model, data: Option<&Path>, given: &[(String, PathBuf)]) -> Result<Self> {
        let root = data.map(|d| d.join("adapters"));
        let mut entries = BTreeMap::new();
        if let Some(root) = &root {
            std::fs::create_dir_all(root)
                .with_context(|| format!("{}: cannot create the data directory", root.display()))?;
            for e in std::fs::read_dir(root).with_context(|| root.display().to_string())? {
                let e = e.with_context(|| root.display().to_string())?;
                let name = e.file_name().to_string_lossy().into_owned();
                if !valid_name(&name) || !e.path().is_dir() {
                    continue;
                }
                let entry = Entry::new(Some(e.path()));
                let current = e.path().join("current");
                if current.exists() {
                    let trained = std::fs::read_to_string(&current)
                        .with_context(|| current.display().to_string())?;
                    let path = e.path().join(trained.trim());
                    let a = adapt_cmd::load_adapter(model, &path)?;
                    *entry.adapter.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(a));
                    entry.status().state = State::Ready;
                    log::info!("adapter {name}: {}", path.display());
                }
                entries.insert(name, Arc::new(entry));
            }
        }
        for (name, path) in given {
            if !valid_name(name) {
                bail!("--adapter {name}={}: the name must be 1 to 64 letters, digits, '-', '_' or '.'", path.display());
            }
            let a = adapt_cmd::load_adapter(model, path)?;
            let entry = entries
                .entry(name.clone())
                .or_insert_with(|| Arc::new(Entry::new(root.as_ref().map(|r| r.join(name)))));
            *entry.adapter.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(a));
            entry.status().state = State::Ready;
            log::info!("adapter {name}: {}", path.display());
        }
        Ok(Store {
            root,
            entries: RwLock::new(entries),
        })
    }

    /// The adapter named `name`, if there is one.
    pub fn get(&self, name: &str) -> Option<Arc<Entry>> {
        self.entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// The names of every adapter.
    pub fn names(&self) -> Vec<String> {
        self.entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// The entry `name`, made (with its directory) when new. An error without `--data`.
    fn get_or_create(&self, name: &str) -> Result<Arc<Entry>, StoreError> {
        let root = self.root.as_ref().ok_or(StoreError::NoData)?;
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = entries.get(name) {
            if e.dir.is_some() {
                return Ok(e.clone());
            }
        }
        let dir = root.join(name);
        std::fs::create_dir_all(&dir)
            .map_err(|e| StoreError::Io(format!("{}: {e}", dir.display())))?;
        let entry = Arc::new(Entry::new(Some(dir)));
        entries.insert(name.to_string(), entry.clone());
        Ok(entry)
    }

    /// Appends `examples` to adapter `name`'s store; returns how many it holds.
    pub fn add_examples(&self, name: &str, examples: Vec<Example>) -> Result<usize, StoreError> {
        let entry = self.get_or_create(name)?;
        // One writer at a time per adapter: the status lock serializes them.
        let _guard = entry.status();
        let path = entry.examples_path().ok_or(StoreError::NoData)?;
        let mut all = entry
            .examples()
            .map_err(|e| StoreError::Io(format!("{e:#}")))?;
        all.extend(examples);
        let mut text = String::new();
        for e in &all {
            text += &json!({ "text": e.text, "label": e.label }).to_string();
            text.push('\n');
        }
        write_atomic(&path, text.as_bytes())
            .map_err(|e| StoreError::Io(format!("{}: {e}", path.display())))?;
        Ok(all.len())
    }

    /// Starts training adapter `name` on its examples in the background.
    pub fn train(&self, name: &str, model: Arc<Model>) -> Result<(), StoreError> {
        let entry = self.get(name).ok_or(StoreError::NotFound)?;
        let dir = entry.dir.clone().ok_or(StoreError::NoData)?;
        {
            let mut st = entry.status();
            if st.state == State::Training {
                return Err(StoreError::Busy);
            }
            let examples = entry
                .examples()
                .map_err(|e| StoreError::Io(format!("{e:#}")))?;
            let labels: std::collections::BTreeSet<&str> =
                examples.iter().map(|e| e.label.as_str()).collect();
            if labels.len() < 2 {
                return Err(StoreError::Invalid(format!(
                    "adapter {name}: {} examples of {} labels; training needs examples of at least two labels",
                    examples.len(),
                    labels.len()
                )));
            }
            st.state = State::Training;
            st.error = None;
            st.progress = None;
        }
        let name = name.to_string();
        std::thread::Builder::new()
            .name(format!("train-{name}"))
            .spawn(move || {
                let result = train_job(&model, &entry, &dir);
                let mut st = entry.status();
                match result {
                    Ok(summary) => {
                        st.state = State::Ready;
                        st.summary = Some(summary);
                        log::info!("adapter {name}: trained");
                    }
                    Err(e) => {
                        log::warn!("adapter {name}: training failed: {e:#}");
                        st.state = State::Failed;
                        st.error = Some(format!("{e:#}"));
                    }
                }
                st.progress = None;
            })
            .map_err(|e| StoreError::Io(format!("cannot start training: {e}")))?;
        Ok(())
    }

    /// Removes adapter `name` from memory and disk.
    pub fn delete(&self, name: &str) -> Result<(), StoreError> {
        let entry = self
            .entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
            .ok_or(StoreError::NotFound)?;
        if let Some(dir) = &entry.dir {
            if dir.exists() {
                std::fs::remove_dir_all(dir)
                    .map_err(|e| StoreError::Io(format!("{}: {e}", dir.display())))?;
            }
        }
        Ok(())
    }

    /// `GET /adapters/NAME`'s answer.
    pub fn describe(&self, name: &str) -> Option<Value> {
        let entry = self.get(name)?;
        let examples = entry.examples().map(|e| e.len()).unwrap_or(0);
        let labels = entry.adapter().map(|a| a.labels.clone());
        let st = entry.status();
        let progress = st.progress.as_ref().map(|p| {
            json!({
                "phase": p.message(),
                "position": p.position(),
                "length": p.length(),
            })
        });
        let held_out = st
            .summary
            .as_ref()
            .and_then(|s| s.get("selection"))
            .and_then(|sel| {
                let chosen = sel.get("chosen")?.as_u64()? as usize;
                sel.get("estimates")?.get(chosen)?.get(1)?.as_f64()
            });
        Some(json!({
            "name": name,
            "state": st.state.name(),
            "examples": examples,
            "labels": labels,
            "progress": progress,
            "held_out_accuracy": held_out,
            "training": st.summary,
            "error": st.error,
        }))
    }
}

/// Trains `entry` on its examples into a new `trained-N` beside the old one, then points
/// `current` at it (a rename) and swaps it in.
fn train_job(model: &Model, entry: &Arc<Entry>, dir: &Path) -> Result<Value> {
    let examples = dir.join("examples.jsonl");
    let n = (0..)
        .find(|i| !dir.join(format!("trained-{i}")).exists())
        .expect("a free name");
    let out = dir.join(format!("trained-{n}"));
    let stop = AtomicBool::new(false);
    let bars = |what: &str| {
        let pb = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
        pb.set_message(what.to_string());
        entry.status().progress = Some(pb.clone());
        pb
    };
    let summary = adapt_cmd::adapt(
        model,
        &examples,
        MethodArg::Default,
        &AdaptArgs::default(),
        &out,
        petal_runtime::pipeline::DEFAULT_BATCH_SIZE,
        &stop,
        &bars,
    )?;
    let adapter = adapt_cmd::load_adapter(model, &out)?;
    let previous = std::fs::read_to_string(dir.join("current")).ok();
    write_atomic(&dir.join("current"), format!("trained-{n}\n").as_bytes())
        .with_context(|| dir.join("current").display().to_string())?;
    *entry.adapter.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(adapter));
    // The old adapter's files go once nothing on disk points at them.
    if let Some(old) = previous.map(|p| dir.join(p.trim())) {
        if old != out {
            let _ = if old.is_dir() {
                std::fs::remove_dir_all(&old)
            } else {
                std::fs::remove_file(&old)
            };
        }
    }
    Ok(serde_json::to_value(&summary)?)
}

/// Why an adapter operation was refused.
#[derive(Debug)]
pub enum StoreError {
    /// The service has no `--data` directory.
    NoData,
    /// No adapter of that name.
    NotFound,
    /// A training job is already running.
    Busy,
    /// The request cannot be met (too few labels, ...).
    Invalid(String),
    /// The disk failed.
    Io(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::NoData => write!(
                f,
                "this service keeps no adapters: start it with --data DIR"
            ),
            StoreError::NotFound => write!(f, "no such adapter"),
            StoreError::Busy => write!(f, "a training job for this adapter is running"),
            StoreError::Invalid(m) | StoreError::Io(m) => f.write_str(m),
        }
    }
}
