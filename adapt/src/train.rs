//! The trainer: AdamW over a method's parameters in mini-batches, with a seed (same seed, same
//! adapter bytes), a time budget, a stop flag (Ctrl-C) that keeps the best parameters so far,
//! and progress reports. Also the SetFit-style recipe: contrastive pairs first, then the head.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use petal_runtime::bert::ForwardError;
use petal_runtime::head::{HeadInput, LinearHead};
use petal_runtime::pipeline::{self, Model, Prediction};

use crate::adapter::{base_hash, Adapter};
use crate::grad::{self, Batch, HeadParams, Rng, Trainables};
use crate::methods::{self, HeadKind, Method, MethodError};
use crate::optim::{AdamW, AdamWConfig};
use crate::train_head::{self, HeadConfig};

/// SetFit-style contrastive pre-training of the method's parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Contrastive {
    /// Passes over the generated pairs.
    pub epochs: u32,
    /// Pairs drawn per example and pass: as many with the same label as with another.
    pub pairs_per_example: usize,
}

/// Training settings.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    /// Passes over the examples in the classification phase (0: none).
    pub epochs: u32,
    /// Examples per step.
    pub batch_size: usize,
    /// Peak learning rate of the method's parameters.
    pub lr: f32,
    /// Peak learning rate of the classifier.
    pub head_lr: f32,
    /// AdamW weight decay (not on biases, scales, prompts).
    pub weight_decay: f32,
    /// Fraction of the steps spent warming up.
    pub warmup: f32,
    /// Seed of initialization, shuffling and dropout.
    pub seed: u64,
    /// Stop after this long, keeping the best parameters so far.
    pub max_time: Option<Duration>,
    /// Fit the classifier on the frozen embeddings first (a pooled head only).
    pub head_first: bool,
    /// Contrastive pre-training (SetFit), followed by fitting the classifier.
    pub contrastive: Option<Contrastive>,
}

impl TrainConfig {
    /// The settings petal uses for `method` by default.
    pub fn for_method(method: &Method) -> Self {
        let lr = match method {
            Method::Head => 0.0,
            Method::BitFit => 3e-3,
            Method::Lora(_) => 1e-3,
            Method::Adapter { .. } => 1e-3,
            Method::Prompt { .. } | Method::Prefix { .. } => 3e-2,
            Method::Ia3 { .. } => 1e-2,
        };
        TrainConfig {
            epochs: if *method == Method::Head { 0 } else { 10 },
            batch_size: 8,
            lr,
            head_lr: 1e-2,
            weight_decay: 0.01,
            warmup: 0.1,
            seed: 0,
            max_time: None,
            head_first: true,
            contrastive: None,
        }
    }
}

impl TrainConfig {
    /// SetFit-style settings for `method` (LoRA by default): two passes of contrastive pairs,
    /// four pairs per example, then the classifier fitted on the tuned embeddings.
    pub fn setfit(method: &Method) -> Self {
        TrainConfig {
            lr: 2e-3,
            batch_size: 8,
            contrastive: Some(Contrastive {
                epochs: 2,
                pairs_per_example: 4,
            }),
            ..TrainConfig::for_method(method)
        }
    }
}

/// Folds of the default recipe's held-out estimate (fewer when the rarest class has fewer
/// examples; at least two).
pub const SELECTION_FOLDS: usize = 3;

/// One method the default recipe may choose, with its settings.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// `head`, `setfit` or `houlsby`.
    pub name: &'static str,
    /// What it trains.
    pub method: Method,
    /// How.
    pub cfg: TrainConfig,
}

/// The default recipe's candidates, simplest first (a tie goes to the earlier): the head on
/// the frozen embeddings, SetFit-style contrastive LoRA then the head, and Houlsby adapters
/// with the head fitted first in batches of four.
pub fn default_candidates() -> Vec<Candidate> {
    let head = Method::Head;
    let lora = Method::from_name("lora").expect("a method");
    let houlsby = Method::from_name("houlsby").expect("a method");
    vec![
        Candidate {
            name: "head",
            cfg: TrainConfig::for_method(&head),
            method: head,
        },
        Candidate {
            name: "setfit",
            cfg: TrainConfig::setfit(&lora),
            method: lora,
        },
        Candidate {
            name: "houlsby",
            cfg: TrainConfig {
                batch_size: 4,
                ..TrainConfig::for_method(&houlsby)
            },
            method: houlsby,
        },
    ]
}

/// What the held-out selection measured and chose.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Selection {
    /// Index of the chosen candidate.
    pub chosen: usize,
    /// Folds the user's examples were split into (0: too few examples to hold any out; the
    /// first candidate, the head, is taken).
    pub folds: usize,
    /// Each candidate's name and accuracy on the held-out folds (every example held out once).
    pub estimates: Vec<(String, f64)>,
    /// Each candidate's mean cross-entropy on the held-out examples (breaks accuracy ties).
    pub cross_entropy: Vec<f64>,
}

/// The examples of each fold: every class's examples shuffled by `seed` and dealt round-robin,
/// so each fold has about the same share of each class.
pub fn stratified_folds(y: &[usize], labels: usize, folds: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut rng = Rng::new(seed ^ 0x005e_1ec7);
    let k = folds.max(1);
    let mut out = vec![Vec::new(); k];
    let mut next = 0;
    for l in 0..labels {
        let mut idx: Vec<usize> = (0..y.len()).filter(|&i| y[i] == l).collect();
        for i in (1..idx.len()).rev() {
            idx.swap(i, rng.below(i + 1));
        }
        for i in idx {
            out[next % k].push(i);
            next += 1;
        }
    }
    for f in &mut out {
        f.sort_unstable();
    }
    out
}

/// Chooses among `candidates` by their accuracy on data held out from the user's own examples:
/// `k`-fold cross-validation (stratified, [`SELECTION_FOLDS`] folds, fewer if the rarest class
/// has fewer examples), each candidate trained on the other folds with its own settings and
/// scored on the held-out one. The best accuracy wins; a tie goes to the lower held-out
/// cross-entropy, then to the earlier candidate, so with the head first the choice is never
/// below the head's estimate. `progress` sees one
/// `select` step per training.
#[allow(clippy::too_many_arguments)]
pub fn select(
    model: &Model,
    texts: &[&str],
    y: &[usize],
    labels: &[String],
    candidates: &[Candidate],
    seed: u64,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Selection, TrainError> {
    let rarest = (0..labels.len())
        .map(|l| y.iter().filter(|&&yi| yi == l).count())
        .min()
        .unwrap_or(0);
    let k = SELECTION_FOLDS.min(rarest);
    if k < 2 || candidates.len() < 2 {
        return Ok(Selection {
            chosen: 0,
            folds: 0,
            estimates: Vec::new(),
            cross_entropy: Vec::new(),
        });
    }
    let folds = stratified_folds(y, labels.len(), k, seed);
    let steps = (candidates.len() * k) as u64;
    let mut correct = vec![0usize; candidates.len()];
    // Held-out cross-entropy, which breaks ties of accuracy (a few dozen examples tie often).
    let mut nll = vec![0f64; candidates.len()];
    let mut done = 0u64;
    for held in &folds {
        let rest: Vec<usize> = (0..y.len())
            .filter(|i| held.binary_search(i).is_err())
            .collect();
        let (tr_texts, tr_y): (Vec<&str>, Vec<usize>) =
            rest.iter().map(|&i| (texts[i], y[i])).unzip();
        let ho_texts: Vec<&str> = held.iter().map(|&i| texts[i]).collect();
        for (c, cand) in candidates.iter().enumerate() {
            if stop.load(Ordering::Relaxed) {
                // Interrupted: the head, the one candidate that needs no estimate to be safe.
                return Ok(Selection {
                    chosen: 0,
                    folds: 0,
                    estimates: Vec::new(),
                    cross_entropy: Vec::new(),
                });
            }
            let out = train(
                model,
                &tr_texts,
                &tr_y,
                labels,
                &cand.method,
                &cand.cfg,
                stop,
                &mut |_| {},
            )?;
            let preds = classify(model, &out.adapter, &ho_texts, cand.cfg.batch_size.max(8))?;
            for (p, &i) in preds.iter().zip(held) {
                correct[c] += usize::from(p.index == y[i]);
                nll[c] -= (p.scores[y[i]] as f64).max(1e-12).ln();
            }
            done += 1;
            progress(&Progress {
                phase: "select",
                step: done,
                steps,
                loss: correct[c] as f32 / y.len() as f32,
            });
        }
    }
    let estimates: Vec<(String, f64)> = candidates
        .iter()
        .zip(&correct)
        .map(|(c, &n)| (c.name.to_string(), n as f64 / y.len() as f64))
        .collect();
    // The most accurate; among equally accurate ones the lowest cross-entropy; then the
    // earlier (simpler) candidate.
    let mut chosen = 0;
    for i in 1..candidates.len() {
        if (correct[i], -nll[i]) > (correct[chosen], -nll[chosen]) {
            chosen = i;
        }
    }
    Ok(Selection {
        chosen,
        folds: k,
        estimates,
        cross_entropy: nll.iter().map(|v| v / y.len() as f64).collect(),
    })
}

/// A progress report.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Progress {
    /// `contrastive`, `head` or `train`.
    pub phase: &'static str,
    /// Steps done in this phase.
    pub step: u64,
    /// Steps in this phase.
    pub steps: u64,
    /// Loss of the last step.
    pub loss: f32,
}

/// What training produced.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The adapter (the best parameters if training was stopped).
    pub adapter: Adapter,
    /// Whether the stop flag or the time budget ended training early.
    pub stopped: bool,
    /// Mean loss of the last completed epoch of the last phase.
    pub final_loss: f32,
    /// Steps taken in all.
    pub steps: u64,
}

/// Why training failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum TrainError {
    /// The method does not fit the model.
    Method(MethodError),
    /// A text could not be tokenized or encoded.
    Model(pipeline::Error),
}

impl std::fmt::Display for TrainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrainError::Method(e) => write!(f, "{e}"),
            TrainError::Model(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for TrainError {}

impl From<ForwardError> for TrainError {
    fn from(e: ForwardError) -> Self {
        TrainError::Model(pipeline::Error::Forward(e))
    }
}

/// Token ids of every text, as the model tokenizes them.
pub fn tokenize(model: &Model, texts: &[&str]) -> Result<Batch, TrainError> {
    let mut b = Batch::default();
    for t in texts {
        let (ids, types) = model.tokenize(t).map_err(TrainError::Model)?;
        b.ids.push(ids);
        b.type_ids.push(types);
    }
    Ok(b)
}

fn subset(all: &Batch, idx: &[usize], labels: &[usize]) -> Batch {
    Batch {
        ids: idx.iter().map(|&i| all.ids[i].clone()).collect(),
        type_ids: idx.iter().map(|&i| all.type_ids[i].clone()).collect(),
        labels: idx
            .iter()
            .map(|&i| labels.get(i).copied().unwrap_or(0))
            .collect(),
    }
}

/// One AdamW state per parameter; the classifier has its own learning rate.
struct Optimizer {
    states: Vec<AdamW>,
}

impl Optimizer {
    fn new(t: &Trainables, cfg: &TrainConfig, steps: u32, train_head: bool) -> Self {
        let head = head_indices(t);
        let states = t
            .params
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let is_head = head.contains(&i);
                let lr = match (is_head, train_head) {
                    (true, true) => cfg.head_lr,
                    (true, false) => 0.0,
                    (false, _) => cfg.lr,
                };
                let c = AdamWConfig {
                    lr,
                    weight_decay: if p.decay { cfg.weight_decay } else { 0.0 },
                    warmup: cfg.warmup,
                    ..Default::default()
                };
                AdamW::new(c, p.value.len(), steps)
            })
            .collect();
        Optimizer { states }
    }

    fn step(&mut self, t: &mut Trainables) {
        for (p, s) in t.params.iter_mut().zip(&mut self.states) {
            s.update(&mut p.value, &p.grad, &|_| true);
        }
        t.zero_grad();
    }
}

fn head_indices(t: &Trainables) -> Vec<usize> {
    match t.head {
        Some(h) => {
            let (w, b) = h.classifier();
            vec![w, b]
        }
        None => Vec::new(),
    }
}

/// Sentence embeddings of every text with the trainable parts in place.
fn embed_all(
    model: &Model,
    t: &Trainables,
    all: &Batch,
    batch: usize,
) -> Result<Vec<Vec<f32>>, TrainError> {
    let enc = model.encoder();
    let idx: Vec<usize> = (0..all.ids.len()).collect();
    let mut out = Vec::with_capacity(idx.len());
    for chunk in idx.chunks(batch.max(1)) {
        let b = subset(all, chunk, &[]);
        let e = grad::embeddings(enc, &grad::infer(enc, t, &b)?);
        out.extend(e.chunks_exact(enc.config().hidden).map(<[f32]>::to_vec));
    }
    Ok(out)
}

/// Fits the pooled classifier of `t` on the current embeddings (logistic regression).
fn fit_head(
    model: &Model,
    t: &mut Trainables,
    all: &Batch,
    y: &[usize],
    labels: &[String],
    cfg: &TrainConfig,
    progress: &mut dyn FnMut(&Progress),
) -> Result<(), TrainError> {
    let Some(HeadParams::Pooled { w, b }) = t.head else {
        return Ok(());
    };
    let x = embed_all(model, t, all, cfg.batch_size.max(16))?;
    let hc = HeadConfig::default();
    let steps = hc.epochs as u64;
    let head = train_head::train(&x, y, labels.to_vec(), &hc, |e, loss| {
        progress(&Progress {
            phase: "head",
            step: e as u64,
            steps,
            loss,
        })
    });
    t.params[w].value = head.weight;
    t.params[b].value = head.bias;
    Ok(())
}

/// Pairs for one contrastive pass: for each example, `per` partners, alternately of its own
/// label (target 1) and of another (target 0).
fn draw_pairs(y: &[usize], per: usize, rng: &mut Rng) -> Vec<(usize, usize, f32)> {
    let mut pairs = Vec::new();
    for (i, &yi) in y.iter().enumerate() {
        let same: Vec<usize> = (0..y.len()).filter(|&j| j != i && y[j] == yi).collect();
        let other: Vec<usize> = (0..y.len()).filter(|&j| y[j] != yi).collect();
        for k in 0..per {
            let (pool, target) = if k % 2 == 0 {
                (&same, 1.0)
            } else {
                (&other, 0.0)
            };
            if !pool.is_empty() {
                pairs.push((i, pool[rng.below(pool.len())], target));
            }
        }
    }
    rng.shuffle(&mut pairs);
    pairs
}

/// Trains `method` on `texts` labelled `y` (indices into `labels`). `stop` ends training early
/// (Ctrl-C), keeping the parameters of the epoch with the lowest loss so far.
#[allow(clippy::too_many_arguments)]
pub fn train(
    model: &Model,
    texts: &[&str],
    y: &[usize],
    labels: &[String],
    method: &Method,
    cfg: &TrainConfig,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Outcome, TrainError> {
    let enc = model.encoder();
    let start = Instant::now();
    let out_of_time =
        || stop.load(Ordering::Relaxed) || cfg.max_time.is_some_and(|t| start.elapsed() >= t);
    let mut t = methods::build(enc, method, labels.len(), HeadKind::Pooled, cfg.seed)
        .map_err(TrainError::Method)?;
    let all = tokenize(model, texts)?;
    let mut rng = Rng::new(cfg.seed);
    let mut dropout = Rng::new(cfg.seed.wrapping_add(1));
    let bs = cfg.batch_size.max(1);
    let (mut steps, mut stopped, mut final_loss) = (0u64, false, f32::NAN);
    let mut best: Option<(f32, Vec<Vec<f32>>)> = None;
    let mut keep_best = |t: &Trainables, loss: f32| {
        if best.as_ref().is_none_or(|(b, _)| loss < *b) {
            best = Some((loss, t.params.iter().map(|p| p.value.clone()).collect()));
        }
    };

    if let Some(c) = cfg.contrastive.filter(|_| *method != Method::Head) {
        let per_epoch = y.len() * c.pairs_per_example;
        let total = (c.epochs as usize * per_epoch.div_ceil(bs)) as u64;
        let mut opt = Optimizer::new(&t, cfg, total as u32, false);
        let mut step = 0;
        'epochs: for _ in 0..c.epochs {
            let pairs = draw_pairs(y, c.pairs_per_example, &mut rng);
            let (mut sum, mut n) = (0f32, 0);
            for chunk in pairs.chunks(bs) {
                if out_of_time() {
                    stopped = true;
                    break 'epochs;
                }
                // The texts of this batch of pairs, each once.
                let mut idx: Vec<usize> = chunk.iter().flat_map(|&(i, j, _)| [i, j]).collect();
                idx.sort_unstable();
                idx.dedup();
                let local: Vec<(usize, usize, f32)> = chunk
                    .iter()
                    .map(|&(i, j, s)| {
                        (
                            idx.binary_search(&i).unwrap_or(0),
                            idx.binary_search(&j).unwrap_or(0),
                            s,
                        )
                    })
                    .collect();
                let loss = grad::contrastive_step(
                    enc,
                    &mut t,
                    &subset(&all, &idx, y),
                    &local,
                    Some(&mut dropout),
                )?;
                opt.step(&mut t);
                step += 1;
                steps += 1;
                sum += loss;
                n += 1;
                progress(&Progress {
                    phase: "contrastive",
                    step,
                    steps: total,
                    loss,
                });
            }
            final_loss = sum / n.max(1) as f32;
        }
        fit_head(model, &mut t, &all, y, labels, cfg, progress)?;
    } else if cfg.head_first || cfg.epochs == 0 {
        fit_head(model, &mut t, &all, y, labels, cfg, progress)?;
    }

    if cfg.epochs > 0 && cfg.contrastive.is_none() && !stopped && *method != Method::Head {
        let per_epoch = y.len().div_ceil(bs);
        let total = (cfg.epochs as usize * per_epoch) as u64;
        let mut opt = Optimizer::new(&t, cfg, total as u32, true);
        let mut order: Vec<usize> = (0..y.len()).collect();
        let mut step = 0;
        'train: for _ in 0..cfg.epochs {
            rng.shuffle(&mut order);
            let (mut sum, mut n) = (0f32, 0);
            for chunk in order.chunks(bs) {
                if out_of_time() {
                    stopped = true;
                    break 'train;
                }
                let (loss, _) = grad::classification_step(
                    enc,
                    &mut t,
                    &subset(&all, chunk, y),
                    Some(&mut dropout),
                    None,
                )?;
                opt.step(&mut t);
                step += 1;
                steps += 1;
                sum += loss;
                n += 1;
                progress(&Progress {
                    phase: "train",
                    step,
                    steps: total,
                    loss,
                });
            }
            final_loss = sum / n.max(1) as f32;
            keep_best(&t, final_loss);
        }
        if stopped {
            if let Some((_, values)) = best.take() {
                t.params
                    .iter_mut()
                    .zip(values)
                    .for_each(|(p, v)| p.value = v);
            }
        }
    }
    if final_loss.is_nan() {
        final_loss = mean_loss(model, &t, &all, y)?;
    }
    t.zero_grad();
    let adapter = Adapter {
        base_sha256: Some(base_hash(enc.bytes())),
        method: method.clone(),
        head: HeadKind::Pooled,
        labels: labels.to_vec(),
        trainables: t,
    };
    Ok(Outcome {
        adapter,
        stopped,
        final_loss,
        steps,
    })
}

/// Mean cross-entropy of the adapter's classifier over the examples.
fn mean_loss(model: &Model, t: &Trainables, all: &Batch, y: &[usize]) -> Result<f32, TrainError> {
    let enc = model.encoder();
    let mut sum = 0f32;
    let idx: Vec<usize> = (0..y.len()).collect();
    for chunk in idx.chunks(32) {
        let b = subset(all, chunk, y);
        let hidden = grad::infer(enc, t, &b)?;
        let z = grad::logits(enc, t, &hidden);
        sum += grad::cross_entropy(
            &z,
            &b.labels,
            t.params[t.head.expect("a classifier").classifier().1]
                .value
                .len(),
        )
        .0 * chunk.len() as f32;
    }
    Ok(sum / y.len().max(1) as f32)
}

/// Classifies `texts` with `adapter` over `model` (which it must belong to), `batch` texts per
/// forward pass. Several adapters can serve from one model.
pub fn classify(
    model: &Model,
    adapter: &Adapter,
    texts: &[&str],
    batch: usize,
) -> Result<Vec<Prediction>, TrainError> {
    let enc = model.encoder();
    let t = &adapter.trainables;
    let mut out = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(batch.max(1)) {
        let b = tokenize(model, chunk)?;
        let hidden = grad::infer(enc, t, &b)?;
        let z = grad::logits(enc, t, &hidden);
        for row in z.chunks_exact(adapter.labels.len()) {
            let scores = petal_runtime::bert::probabilities(row);
            let index = scores
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |(i, _)| i);
            out.push(Prediction {
                label: adapter.labels[index].clone(),
                index,
                score: scores[index],
                scores,
                logits: row.to_vec(),
            });
        }
    }
    Ok(out)
}

/// The pooled head of a head-only adapter, for the runtime's `classify_with_head`.
pub fn linear_head(adapter: &Adapter) -> Option<LinearHead> {
    match (&adapter.method, adapter.trainables.head) {
        (Method::Head, Some(HeadParams::Pooled { w, b })) => Some(LinearHead {
            input: HeadInput::Pooled,
            labels: adapter.labels.clone(),
            weight: adapter.trainables.params[w].value.clone(),
            bias: adapter.trainables.params[b].value.clone(),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_are_stratified_and_cover_every_example_once() {
        // 16, 16 and 4 examples of three classes, interleaved.
        let y: Vec<usize> = [vec![0; 16], vec![1; 16], vec![2; 4]].concat();
        let folds = stratified_folds(&y, 3, SELECTION_FOLDS, 7);
        assert_eq!(folds.len(), SELECTION_FOLDS);
        let mut all: Vec<usize> = folds.concat();
        all.sort_unstable();
        assert_eq!(all, (0..y.len()).collect::<Vec<_>>());
        for f in &folds {
            for l in 0..3 {
                let n = f.iter().filter(|&&i| y[i] == l).count();
                let share = y.iter().filter(|&&v| v == l).count() as f64 / SELECTION_FOLDS as f64;
                assert!(
                    (n as f64 - share).abs() <= 1.0,
                    "class {l}: {n} in a fold, share {share}"
                );
            }
        }
        // The same seed, the same folds; another seed, others.
        assert_eq!(folds, stratified_folds(&y, 3, SELECTION_FOLDS, 7));
        assert_ne!(folds, stratified_folds(&y, 3, SELECTION_FOLDS, 8));
    }

    #[test]
    fn the_candidates_start_with_the_head() {
        let c = default_candidates();
        let names: Vec<&str> = c.iter().map(|c| c.name).collect();
        assert_eq!(names, ["head", "setfit", "houlsby"]);
        assert_eq!(c[0].method, Method::Head);
        assert_eq!(c[1].cfg.contrastive.map(|c| c.epochs), Some(2));
        assert_eq!((c[2].cfg.batch_size, c[2].cfg.contrastive), (4, None));
    }
}
