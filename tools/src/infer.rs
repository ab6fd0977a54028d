//! `petal embed` and `petal classify`: texts from the command line or stdin, one a line.

use std::io::{BufRead, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use petal_runtime::pipeline::{Model, Prediction};
use serde_json::json;

/// Settings shared by `embed` and `classify`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Longest token sequence; longer texts are truncated (default: where sentence-transformers
    /// truncates the model, stored by `convert`, else the model's positions; at most those).
    #[arg(long)]
    pub max_length: Option<usize>,
    /// Texts per forward pass.
    #[arg(long, default_value_t = petal_runtime::pipeline::DEFAULT_BATCH_SIZE)]
    pub batch_size: usize,
    /// Read the file into memory instead of mapping it (for filesystems where another process
    /// may truncate it while mapped, which would kill this one with SIGBUS).
    #[arg(long)]
    pub no_mmap: bool,
    /// Print one JSON object a line.
    #[arg(long)]
    pub json: bool,
    /// Which engine runs the model: petal's encoder on a GGUF file, or tract on an ONNX file
    /// (mean pooling; for ONNX models petal cannot convert).
    #[arg(long, value_enum, default_value = "petal")]
    pub engine: Engine,
    /// With --engine tract: the tokenizer.json of the ONNX model.
    #[arg(long)]
    pub tokenizer: Option<std::path::PathBuf>,
    /// With --engine tract: L2-normalize the mean-pooled embedding.
    #[arg(long)]
    pub normalize: bool,
}

/// The engine of `embed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    /// petal's own encoder over a GGUF file.
    Petal,
    /// tract over an ONNX file.
    Tract,
}

/// Longest sequence the tract engine feeds (BERT's position table).
#[cfg(feature = "convert")]
const TRACT_MAX_LENGTH: usize = 512;

/// The tract engine's encoder.
#[cfg(feature = "convert")]
pub type TractEncoder = crate::tract_engine::TractEncoder;

/// Without the `convert` feature (the device build) there is no tract engine: no value of
/// this type exists.
#[cfg(not(feature = "convert"))]
#[derive(Debug)]
pub enum TractEncoder {}

#[cfg(not(feature = "convert"))]
impl TractEncoder {
    /// Never called: no encoder exists.
    pub fn embed(&self, _: &[&str], _: bool) -> Result<Vec<Vec<f32>>> {
        match *self {}
    }
}

/// Opens `path` with the tract engine; an error in a build without it.
#[cfg(not(feature = "convert"))]
pub fn open_tract(path: &Path, _: &RunArgs) -> Result<TractEncoder> {
    bail!(
        "{}: this build of petal has no tract engine (the device build); the host build runs ONNX files",
        path.display()
    )
}

/// Opens `path` with the tract engine.
#[cfg(feature = "convert")]
pub fn open_tract(path: &Path, args: &RunArgs) -> Result<TractEncoder> {
    let tok = args.tokenizer.as_ref().with_context(|| {
        format!(
            "{}: --engine tract needs --tokenizer tokenizer.json",
            path.display()
        )
    })?;
    crate::tract_engine::TractEncoder::load(path, tok, args.max_length.unwrap_or(TRACT_MAX_LENGTH))
}

pub fn open(path: &Path, args: &RunArgs) -> Result<Model> {
    let mut model = if args.no_mmap {
        Model::open_buffered(path)
    } else {
        Model::open(path)
    }?;
    if let Some(n) = args.max_length {
        if n < 2 {
            bail!("--max-length {n} leaves no room for the special tokens (at least 2)");
        }
        model.set_max_length(n);
    }
    model.set_batch_size(args.batch_size);
    Ok(model)
}

/// Calls `each` with batches of `batch` texts: the arguments, or stdin's lines. A line that is
/// not UTF-8 stops the run with its line number; `\r\n` endings are accepted.
pub fn for_each_batch(
    texts: &[String],
    batch: usize,
    mut each: impl FnMut(&[&str]) -> Result<()>,
) -> Result<()> {
    if !texts.is_empty() {
        for chunk in texts.chunks(batch.max(1)) {
            let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
            each(&refs)?;
        }
        return Ok(());
    }
    let stdin = std::io::stdin().lock();
    let mut pending: Vec<String> = Vec::with_capacity(batch);
    for (i, line) in stdin.split(b'\n').enumerate() {
        let mut line = line.context("cannot read stdin")?;
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let Ok(text) = String::from_utf8(line) else {
            // Finish the valid lines before it, then stop.
            let refs: Vec<&str> = pending.iter().map(String::as_str).collect();
            if !refs.is_empty() {
                each(&refs)?;
            }
            bail!("stdin line {}: not valid UTF-8", i + 1);
        };
        pending.push(text);
        if pending.len() == batch.max(1) {
            let refs: Vec<&str> = pending.iter().map(String::as_str).collect();
            each(&refs)?;
            pending.clear();
        }
    }
    if !pending.is_empty() {
        let refs: Vec<&str> = pending.iter().map(String::as_str).collect();
        each(&refs)?;
    }
    Ok(())
}

/// Writes `s` to stdout; `Ok(false)` once the reader has gone (a closed pipe).
pub fn write_out(s: &str) -> Result<bool> {
    let mut out = std::io::stdout().lock();
    match out.write_all(s.as_bytes()).and_then(|_| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e.into()),
    }
}

pub fn format_embedding(text: &str, e: &[f32], as_json: bool) -> String {
    if as_json {
        json!({ "text": text, "embedding": e }).to_string() + "\n"
    } else {
        let v: Vec<String> = e.iter().map(|x| format!("{x:.6}")).collect();
        v.join(" ") + "\n"
    }
}

pub fn format_prediction(text: &str, p: &Prediction, labels: &[String], as_json: bool) -> String {
    if as_json {
        let scores: serde_json::Map<String, serde_json::Value> = labels
            .iter()
            .zip(&p.scores)
            .map(|(l, s)| (l.clone(), json!(s)))
            .collect();
        json!({ "text": text, "label": p.label, "score": p.score, "scores": scores }).to_string()
            + "\n"
    } else {
        format!("{}\t{:.4}\n", p.label, p.score)
    }
}
