//! Dynamic batching: requests wait in one queue, and the encoder's thread takes every request
//! waiting (up to `max_batch_tokens` tokens) into one pass.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use petal_adapt::adapter::Adapter;
use petal_runtime::pipeline::{Model, Prediction};
use tokio::sync::oneshot;

use super::metrics::Metrics;

/// What a request asks of the encoder.
pub enum Work {
    /// Sentence embeddings, L2-normalized or not.
    Embed {
        /// Whether to L2-normalize.
        normalize: bool,
    },
    /// Predictions by the file's head (`None`) or an adapter.
    Predict {
        /// The adapter, when not the file's head.
        adapter: Option<Arc<Adapter>>,
    },
}

/// The encoder's answer to one request.
pub enum Output {
    /// One embedding a text.
    Embeddings(Vec<Vec<f32>>),
    /// One prediction a text.
    Predictions(Vec<Prediction>),
}

/// One request in the queue.
pub struct Job {
    /// Its texts.
    pub texts: Vec<String>,
    /// Their tokens (after truncation).
    pub tokens: usize,
    /// What to compute.
    pub work: Work,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Result<Output, String>>,
}

/// Runs the queue until every sender is gone: each pass takes the waiting jobs up to
/// `max_batch_tokens` tokens (at least one job), groups them by what they ask, and answers
/// each.
pub fn run(model: &Model, rx: mpsc::Receiver<Job>, max_batch_tokens: usize, metrics: &Metrics) {
    while let Ok(first) = rx.recv() {
        let mut tokens = first.tokens;
        let mut jobs = vec![first];
        while tokens < max_batch_tokens {
            match rx.try_recv() {
                Ok(j) => {
                    tokens += j.tokens;
                    jobs.push(j);
                }
                Err(_) => break,
            }
        }
        let texts: usize = jobs.iter().map(|j| j.texts.len()).sum();
        metrics.batch(texts, tokens);
        let started = Instant::now();
        run_batch(model, jobs);
        metrics.inference(started.elapsed());
    }
}

/// Answers `jobs`: the embedding jobs of each normalization in one call, the prediction jobs
/// of each head in one call.
fn run_batch(model: &Model, jobs: Vec<Job>) {
    let mut groups: Vec<(GroupKey, Vec<Job>)> = Vec::new();
    for j in jobs {
        let key = GroupKey::of(&j.work);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, g)) => g.push(j),
            None => groups.push((key, vec![j])),
        }
    }
    for (_, group) in groups {
        let texts: Vec<&str> = group
            .iter()
            .flat_map(|j| j.texts.iter().map(String::as_str))
            .collect();
        let result: Result<Output, String> = match &group[0].work {
            Work::Embed { normalize } => model
                .embed_normalized(&texts, *normalize)
                .map(Output::Embeddings)
                .map_err(|e| e.to_string()),
            Work::Predict { adapter } => {
                crate::adapt_cmd::predict(model, adapter.as_deref(), &texts)
                    .map(Output::Predictions)
                    .map_err(|e| format!("{e:#}"))
            }
        };
        match result {
            Ok(mut out) => {
                let mut at = 0;
                for j in group {
                    let n = j.texts.len();
                    let part = match &mut out {
                        Output::Embeddings(v) => Output::Embeddings(
                            v[at..at + n].iter_mut().map(std::mem::take).collect(),
                        ),
                        Output::Predictions(v) => Output::Predictions(v[at..at + n].to_vec()),
                    };
                    at += n;
                    // A client that left does not wait for its answer.
                    let _ = j.reply.send(Ok(part));
                }
            }
            Err(e) => {
                for j in group {
                    let _ = j.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Jobs that run in one call: embeddings of one normalization, or predictions by one head.
#[derive(PartialEq)]
enum GroupKey {
    Embed(bool),
    Predict(Option<usize>),
}

impl GroupKey {
    fn of(w: &Work) -> Self {
        match w {
            Work::Embed { normalize } => GroupKey::Embed(*normalize),
            Work::Predict { adapter } => {
                GroupKey::Predict(adapter.as_ref().map(|a| Arc::as_ptr(a) as usize))
            }
        }
    }
}
