//! `petal adapt` and `petal eval`: few-shot training of a head over the frozen model, and scores
//! on a labelled test set.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;
use petal_adapt::adapter::{base_hash, Adapter};
use petal_adapt::data::{self, Example};
use petal_adapt::eval::{self, Report};
use petal_adapt::train_head::{self, HeadConfig};
use petal_runtime::head::LinearHead;
use petal_runtime::pipeline::{Model, Prediction};
use serde_json::json;

/// The methods `petal adapt` offers today.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Method {
    /// A linear head on the frozen sentence embedding (logistic regression, AdamW).
    Head,
}

/// Embeddings of `texts`, in batches, advancing `pb`.
pub fn embed_all(
    model: &Model,
    texts: &[&str],
    batch: usize,
    pb: &ProgressBar,
) -> Result<Vec<Vec<f32>>> {
    pb.set_length(texts.len() as u64);
    let mut out = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(batch.max(1)) {
        out.extend(model.embed(chunk)?);
        pb.inc(chunk.len() as u64);
    }
    Ok(out)
}

#[derive(Debug, serde::Serialize)]
pub struct AdaptSummary {
    pub output: String,
    pub method: &'static str,
    pub examples: usize,
    pub labels: Vec<String>,
    pub epochs: u32,
    pub final_loss: f32,
    pub train_accuracy: f64,
    pub seconds: f64,
}

/// Trains an adapter on `train` and writes it to `output`.
#[allow(clippy::too_many_arguments)]
pub fn adapt(
    model: &Model,
    model_path: &Path,
    train: &Path,
    method: Method,
    output: &Path,
    cfg: &HeadConfig,
    batch: usize,
    pb: &dyn Fn(&str) -> ProgressBar,
) -> Result<AdaptSummary> {
    let Method::Head = method;
    let start = Instant::now();
    let examples = data::read_jsonl(train)?;
    let labels = data::labels(&examples, train)?;
    let y: Vec<usize> = examples
        .iter()
        .map(|e| {
            labels
                .iter()
                .position(|l| *l == e.label)
                .expect("label listed")
        })
        .collect();
    let texts: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
    let bar = pb("embedding");
    let x = embed_all(model, &texts, batch, &bar)?;
    bar.finish_and_clear();
    let bar = pb("training");
    bar.set_length(cfg.epochs as u64);
    let mut last = f32::NAN;
    let mut epochs = 0;
    let head = train_head::train(&x, &y, labels.clone(), cfg, |e, loss| {
        last = loss;
        epochs = e;
        bar.set_position(e as u64);
        bar.set_message(format!("loss {loss:.4}"));
    });
    bar.finish_and_clear();
    let correct = x
        .iter()
        .zip(&y)
        .filter(|(xi, &yi)| argmax(&head.logits(xi)) == yi)
        .count();
    let adapter = Adapter {
        base_sha256: base_hash(model.encoder().bytes()),
        head,
    };
    adapter
        .save(output)
        .with_context(|| format!("{}: cannot write", output.display()))?;
    log::debug!(
        "adapter for {} written to {}",
        model_path.display(),
        output.display()
    );
    Ok(AdaptSummary {
        output: output.display().to_string(),
        method: "head",
        examples: examples.len(),
        labels,
        epochs,
        final_loss: last,
        train_accuracy: correct as f64 / y.len() as f64,
        seconds: start.elapsed().as_secs_f64(),
    })
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

/// Loads the adapter at `path` and checks it belongs to `model`.
pub fn load_adapter(model: &Model, path: &Path) -> Result<LinearHead> {
    let a = Adapter::load(path)?;
    let dim = model.encoder().config().hidden;
    a.check_base(path, &base_hash(model.encoder().bytes()), dim)?;
    Ok(a.head)
}

/// Predictions by the adapter's head, or by the file's.
pub fn predict(
    model: &Model,
    head: Option<&LinearHead>,
    texts: &[&str],
) -> Result<Vec<Prediction>> {
    Ok(match head {
        Some(h) => model.classify_with_head(texts, h)?,
        None => model.classify(texts)?,
    })
}

/// Scores the model (with `head` when given) on the labelled `test` file.
pub fn evaluate(
    model: &Model,
    head: Option<&LinearHead>,
    test: &Path,
    batch: usize,
    pb: &ProgressBar,
) -> Result<Report> {
    let labels: Vec<String> = match head {
        Some(h) => h.labels.clone(),
        None => model
            .encoder()
            .config()
            .labels
            .clone()
            .context("this model has no classification head: pass --adapter")?,
    };
    let examples: Vec<Example> = data::read_jsonl(test)?;
    let mut gold = Vec::with_capacity(examples.len());
    for (i, e) in examples.iter().enumerate() {
        match labels.iter().position(|l| *l == e.label) {
            Some(g) => gold.push(g),
            None => bail!(
                "{}: example {}: label \"{}\" is not one of the model's ({})",
                test.display(),
                i + 1,
                e.label,
                labels.join(", ")
            ),
        }
    }
    pb.set_length(examples.len() as u64);
    let mut predicted = Vec::with_capacity(examples.len());
    for chunk in examples.chunks(batch.max(1)) {
        let texts: Vec<&str> = chunk.iter().map(|e| e.text.as_str()).collect();
        predicted.extend(predict(model, head, &texts)?.into_iter().map(|p| p.index));
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    Ok(eval::report(&labels, &gold, &predicted))
}

pub fn format_report(r: &Report, as_json: bool) -> String {
    if as_json {
        return json!({
            "n": r.n, "accuracy": r.accuracy, "macro_f1": r.macro_f1,
            "labels": r.labels, "confusion": r.confusion,
        })
        .to_string()
            + "\n";
    }
    let w = r.labels.iter().map(String::len).max().unwrap_or(4).max(6);
    let mut s = format!("examples {}  accuracy {:.4}  macro-F1 {:.4}\n\nconfusion (rows: gold, columns: predicted)\n", r.n, r.accuracy, r.macro_f1);
    s += &format!("{:>w$}", "");
    for l in &r.labels {
        s += &format!(" {l:>w$}");
    }
    s += "\n";
    for (l, row) in r.labels.iter().zip(&r.confusion) {
        s += &format!("{l:>w$}");
        for c in row {
            s += &format!(" {c:>w$}");
        }
        s += "\n";
    }
    s
}

/// Time budget from `--max-seconds`.
pub fn budget(seconds: Option<f64>) -> Option<Duration> {
    seconds.filter(|s| *s > 0.0).map(Duration::from_secs_f64)
}
