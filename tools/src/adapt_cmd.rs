//! `petal adapt` and `petal eval`: few-shot training of a head over the frozen model, and scores
//! on a labelled test set.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use indicatif::ProgressBar;
use petal_adapt::adapter::Adapter;
use petal_adapt::data::{self, Example};
use petal_adapt::eval::{self, Report};
use petal_adapt::methods::Method;
use petal_adapt::train::{Candidate, Progress, Selection, TrainConfig};
use petal_runtime::gguf::names::tensor::Block;
use petal_runtime::pipeline::{Model, Prediction};
use serde_json::json;

/// What `petal adapt` trains (`--method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MethodArg {
    /// petal's default recipe: the head, SetFit-style or Houlsby adapters, whichever is most
    /// accurate on examples held out of the training file (3-fold cross-validation; a tie goes
    /// to the simpler), then trained on every example.
    Default,
    /// A linear head on the frozen sentence embedding (logistic regression, AdamW).
    Head,
    /// Every bias and the head.
    Bitfit,
    /// LoRA (PEFT layout) and the head.
    Lora,
    /// Houlsby bottleneck adapters (after attention and feed-forward) and the head.
    Houlsby,
    /// Pfeiffer bottleneck adapters (after the feed-forward) and the head.
    Pfeiffer,
    /// Prompt tuning (PEFT layout) and the head.
    Prompt,
    /// Prefix tuning (PEFT layout) and the head.
    Prefix,
    /// IA3 (PEFT layout) and the head.
    Ia3,
    /// SetFit-style: contrastive pairs train LoRA, then the head is fitted.
    Setfit,
}

/// Settings of `petal adapt` beyond the method's defaults.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AdaptArgs {
    /// Passes over the examples (classification phase; contrastive phase for setfit).
    #[arg(long)]
    pub epochs: Option<u32>,
    /// Peak learning rate of the method's parameters.
    #[arg(long)]
    pub lr: Option<f32>,
    /// Peak learning rate of the classifier.
    #[arg(long)]
    pub head_lr: Option<f32>,
    /// Examples per training step.
    #[arg(long)]
    pub train_batch: Option<usize>,
    /// Seed of initialization, shuffling and dropout: the same seed gives the same adapter.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop training after this many seconds, keeping the best parameters so far.
    #[arg(long)]
    pub max_seconds: Option<f64>,
    /// LoRA rank.
    #[arg(long)]
    pub lora_r: Option<usize>,
    /// LoRA alpha (the update is scaled by alpha / r).
    #[arg(long)]
    pub lora_alpha: Option<f32>,
    /// LoRA dropout.
    #[arg(long)]
    pub lora_dropout: Option<f32>,
    /// LoRA target modules, comma-separated among q,k,v,o,up,down.
    #[arg(long)]
    pub lora_targets: Option<String>,
    /// Bottleneck adapters: hidden size / bottleneck width.
    #[arg(long)]
    pub reduction: Option<usize>,
    /// Prompt and prefix tuning: virtual tokens.
    #[arg(long)]
    pub virtual_tokens: Option<usize>,
}

fn target(s: &str) -> Result<Block> {
    Ok(match s.trim() {
        "q" | "query" => Block::AttnQ,
        "k" | "key" => Block::AttnK,
        "v" | "value" => Block::AttnV,
        "o" | "attention.output" => Block::AttnOutput,
        "up" | "intermediate" => Block::FfnUp,
        "down" | "output" => Block::FfnDown,
        other => bail!("unknown LoRA target \"{other}\" (q, k, v, o, up, down)"),
    })
}

/// The method, training settings and recipe name that `--method` and the flags describe for
/// training labels `y` over `labels` classes (the default recipe depends on them).
pub fn recipe(method: MethodArg, a: &AdaptArgs) -> Result<(Method, TrainConfig, String)> {
    let (mut m, mut cfg, name) = match method {
        MethodArg::Default => bail!("the default recipe is chosen by `select_default`"),
        MethodArg::Setfit => {
            let m = Method::from_name("lora").expect("a method");
            let cfg = TrainConfig::setfit(&m);
            (m, cfg, "setfit".to_string())
        }
        other => {
            let name = other
                .to_possible_value()
                .expect("named")
                .get_name()
                .to_string();
            let m = Method::from_name(&name).expect("every CLI method has a name");
            let cfg = TrainConfig::for_method(&m);
            (m, cfg, name)
        }
    };
    apply_overrides(&mut m, &mut cfg, a)?;
    Ok((m, cfg, name))
}

/// The default recipe's candidates with the user's settings (`--epochs` and the learning
/// rates apply to the methods that train more than the head).
pub fn default_candidates(a: &AdaptArgs) -> Result<Vec<Candidate>> {
    let mut v = petal_adapt::train::default_candidates();
    for c in &mut v {
        if c.method == Method::Head {
            c.cfg.seed = a.seed;
            c.cfg.max_time = budget(a.max_seconds);
        } else {
            apply_overrides(&mut c.method, &mut c.cfg, a)?;
        }
    }
    Ok(v)
}

fn apply_overrides(m: &mut Method, cfg: &mut TrainConfig, a: &AdaptArgs) -> Result<()> {
    match m {
        Method::Lora(c) => {
            if let Some(r) = a.lora_r {
                c.r = r;
                c.alpha = 2.0 * r as f32;
            }
            if let Some(x) = a.lora_alpha {
                c.alpha = x;
            }
            if let Some(x) = a.lora_dropout {
                c.dropout = x;
            }
            if let Some(t) = &a.lora_targets {
                c.targets = t.split(',').map(target).collect::<Result<_>>()?;
            }
        }
        Method::Adapter { reduction, .. } => {
            if let Some(r) = a.reduction {
                *reduction = r;
            }
        }
        Method::Prompt { tokens } | Method::Prefix { tokens } => {
            if let Some(n) = a.virtual_tokens {
                *tokens = n;
            }
        }
        _ => {}
    }
    if let Some(e) = a.epochs {
        match &mut cfg.contrastive {
            Some(c) => c.epochs = e,
            None => cfg.epochs = e,
        }
    }
    if let Some(x) = a.lr {
        cfg.lr = x;
    }
    if let Some(x) = a.head_lr {
        cfg.head_lr = x;
    }
    if let Some(x) = a.train_batch {
        cfg.batch_size = x.max(1);
    }
    cfg.seed = a.seed;
    cfg.max_time = budget(a.max_seconds);
    Ok(())
}

#[derive(Debug, serde::Serialize)]
pub struct AdaptSummary {
    pub output: String,
    pub method: String,
    pub examples: usize,
    pub labels: Vec<String>,
    pub trainable: usize,
    pub steps: u64,
    pub final_loss: f32,
    pub train_accuracy: f64,
    pub stopped_early: bool,
    pub seconds: f64,
    /// The default recipe's choice: each candidate's accuracy on examples held out of the
    /// training file, by cross-validation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selection: Option<Selection>,
}

/// Trains an adapter on `train` and writes it to `output`. `stop` is set by Ctrl-C.
#[allow(clippy::too_many_arguments)]
pub fn adapt(
    model: &Model,
    train: &Path,
    method: MethodArg,
    args: &AdaptArgs,
    output: &Path,
    batch: usize,
    stop: &AtomicBool,
    pb: &dyn Fn(&str) -> ProgressBar,
) -> Result<AdaptSummary> {
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
    let mut bar: Option<(&'static str, ProgressBar)> = None;
    // Without a terminal (stderr piped to a file or a program) the bar is hidden: progress goes
    // to the log instead, one line at each phase's first step and at every tenth of it.
    let mut logged_tenth = 0u64;
    let mut progress = |p: &Progress| {
        if bar.as_ref().is_none_or(|(phase, _)| *phase != p.phase) {
            if let Some((_, b)) = bar.take() {
                b.finish_and_clear();
            }
            let b = pb(p.phase);
            b.set_length(p.steps);
            bar = Some((p.phase, b));
            logged_tenth = 0;
        }
        if let Some((_, b)) = &bar {
            b.set_position(p.step);
            b.set_message(format!("{} loss {:.4}", p.phase, p.loss));
            let tenth = (p.step * 10).checked_div(p.steps).unwrap_or(10);
            if b.is_hidden() && (logged_tenth == 0 || tenth > logged_tenth) {
                log::info!(
                    "{}: step {}/{}, loss {:.4}",
                    p.phase,
                    p.step,
                    p.steps,
                    p.loss
                );
                logged_tenth = tenth.max(1);
            }
        }
    };
    let (m, cfg, name, selection) = if method == MethodArg::Default {
        let candidates = default_candidates(args)?;
        log::info!(
            "default recipe: choosing among {} by accuracy on examples held out of {}",
            candidates
                .iter()
                .map(|c| c.name)
                .collect::<Vec<_>>()
                .join(", "),
            train.display()
        );
        let sel = petal_adapt::train::select(
            model,
            &texts,
            &y,
            &labels,
            &candidates,
            args.seed,
            stop,
            &mut progress,
        )?;
        let c = candidates[sel.chosen].clone();
        if sel.folds == 0 {
            log::info!("too few examples per class to hold any out: training the head");
        } else {
            let est: Vec<String> = sel
                .estimates
                .iter()
                .zip(&sel.cross_entropy)
                .map(|((n, a), ce)| format!("{n} {a:.3} (cross-entropy {ce:.3})"))
                .collect();
            log::info!(
                "{}-fold held-out accuracy: {}; chose {}",
                sel.folds,
                est.join(", "),
                c.name
            );
        }
        (c.method, c.cfg, c.name.to_string(), Some(sel))
    } else {
        let (m, cfg, name) = recipe(method, args)?;
        (m, cfg, name, None)
    };
    log::info!("training {name} on {} examples", y.len());
    let out = petal_adapt::train::train(model, &texts, &y, &labels, &m, &cfg, stop, &mut progress)?;
    if let Some((_, b)) = bar.take() {
        b.finish_and_clear();
    }
    if out.stopped {
        log::warn!(
            "training stopped early after {} steps; keeping the best parameters so far",
            out.steps
        );
    }
    let preds = petal_adapt::train::classify(model, &out.adapter, &texts, batch)?;
    let correct = preds
        .iter()
        .zip(&y)
        .filter(|(p, &yi)| p.index == yi)
        .count();
    out.adapter
        .save(output, model.encoder())
        .with_context(|| format!("{}: cannot write", output.display()))?;
    Ok(AdaptSummary {
        output: output.display().to_string(),
        method: name,
        examples: examples.len(),
        labels,
        trainable: out.adapter.trainables.count(),
        steps: out.steps,
        final_loss: out.final_loss,
        train_accuracy: correct as f64 / y.len() as f64,
        stopped_early: out.stopped,
        seconds: start.elapsed().as_secs_f64(),
        selection,
    })
}

/// Loads the adapter at `path` and checks it belongs to `model`.
pub fn load_adapter(model: &Model, path: &Path) -> Result<Adapter> {
    Ok(Adapter::load(path, model.encoder())?)
}

/// Predictions by the adapter, or by the file's head.
pub fn predict(
    model: &Model,
    adapter: Option<&Adapter>,
    texts: &[&str],
) -> Result<Vec<Prediction>> {
    Ok(match adapter {
        Some(a) => match petal_adapt::train::linear_head(a) {
            // A head alone: the runtime's embedding path, no hooks.
            Some(h) => model.classify_with_head(texts, &h)?,
            None => petal_adapt::train::classify(model, a, texts, texts.len())?,
        },
        None => model.classify(texts)?,
    })
}

/// Scores the model (with `head` when given) on the labelled `test` file.
pub fn evaluate(
    model: &Model,
    head: Option<&Adapter>,
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
