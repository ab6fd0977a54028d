//! The classifier-head method: a linear softmax head trained with AdamW on the frozen model's
//! sentence embeddings ("frozen embeddings + logistic regression").

use std::time::{Duration, Instant};

use petal_runtime::bert::probabilities;
use petal_runtime::head::{HeadInput, LinearHead};

use crate::optim::{AdamW, AdamWConfig};

/// Training settings of the head.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HeadConfig {
    /// Passes over the data (full batch: one step each).
    pub epochs: u32,
    /// Optimizer.
    pub optim: AdamWConfig,
    /// Stop after this long, keeping the head as it is.
    pub max_time: Option<Duration>,
    /// Inverse regularization strength `C` of scikit-learn's `LogisticRegression`: the
    /// objective is `C * sum(cross-entropy) + |W|^2 / 2` (the bias is not penalized).
    pub c: Option<f32>,
}

impl Default for HeadConfig {
    fn default() -> Self {
        HeadConfig {
            epochs: 500,
            optim: AdamWConfig {
                lr: 0.05,
                weight_decay: 0.0,
                warmup: 0.05,
                ..Default::default()
            },
            max_time: None,
            c: Some(1.0),
        }
    }
}

/// Cross-entropy loss (mean over examples) of `head` on `x` (`[n, dim]`) with labels `y`, and
/// its gradient with respect to the head's weight and bias, flattened `[weight.., bias..]`.
pub fn loss_and_grad(head: &LinearHead, x: &[Vec<f32>], y: &[usize]) -> (f32, Vec<f32>) {
    let (k, d) = (head.labels.len(), head.dim());
    let mut grad = vec![0f32; k * d + k];
    let mut loss = 0f32;
    let n = x.len() as f32;
    for (xi, &yi) in x.iter().zip(y) {
        let p = probabilities(&head.logits(xi));
        loss -= p[yi].max(1e-12).ln();
        for c in 0..k {
            let g = (p[c] - if c == yi { 1.0 } else { 0.0 }) / n;
            grad[c * d..(c + 1) * d]
                .iter_mut()
                .zip(xi)
                .for_each(|(gw, &xv)| *gw += g * xv);
            grad[k * d + c] += g;
        }
    }
    (loss / n, grad)
}

/// Trains a head over embeddings `x` with labels `y` (indices into `labels`). Starts from zero
/// weights, so the result depends only on the data and the settings. `progress` is called after
/// each epoch with (epoch, loss).
pub fn train(
    x: &[Vec<f32>],
    y: &[usize],
    labels: Vec<String>,
    cfg: &HeadConfig,
    mut progress: impl FnMut(u32, f32),
) -> LinearHead {
    let (k, d) = (labels.len(), x.first().map_or(0, Vec::len));
    let mut head = LinearHead {
        input: HeadInput::Pooled,
        labels,
        weight: vec![0.0; k * d],
        bias: vec![0.0; k],
    };
    let mut opt = AdamW::new(cfg.optim, k * d + k, cfg.epochs);
    let start = Instant::now();
    let mut params = vec![0f32; k * d + k];
    for epoch in 0..cfg.epochs {
        if cfg.max_time.is_some_and(|t| start.elapsed() >= t) {
            log::info!("time budget reached after {epoch} epochs");
            break;
        }
        let (mut loss, mut grad) = loss_and_grad(&head, x, y);
        if let Some(c) = cfg.c {
            // Mean-loss scale of scikit-learn's objective: |W|^2 / (2 C n).
            let l2 = 1.0 / (c * x.len().max(1) as f32);
            loss += 0.5 * l2 * head.weight.iter().map(|w| w * w).sum::<f32>();
            grad[..k * d]
                .iter_mut()
                .zip(&head.weight)
                .for_each(|(g, w)| *g += l2 * w);
        }
        params[..k * d].copy_from_slice(&head.weight);
        params[k * d..].copy_from_slice(&head.bias);
        opt.update(&mut params, &grad, &|i| i < k * d);
        head.weight.copy_from_slice(&params[..k * d]);
        head.bias.copy_from_slice(&params[k * d..]);
        progress(epoch + 1, loss);
    }
    head
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gradient_matches_finite_differences() {
        let head = LinearHead {
            input: HeadInput::Pooled,
            labels: vec!["a".into(), "b".into(), "c".into()],
            weight: (0..6).map(|i| (i as f32 * 0.37).sin()).collect(),
            bias: vec![0.1, -0.2, 0.05],
        };
        let x = vec![vec![0.5, -1.0], vec![1.5, 0.25], vec![-0.3, 0.8]];
        let y = vec![0, 2, 1];
        let (_, g) = loss_and_grad(&head, &x, &y);
        let eps = 1e-3f32;
        for (i, &gi) in g.iter().enumerate().take(9) {
            let mut p = head.clone();
            let mut m = head.clone();
            if i < 6 {
                p.weight[i] += eps;
                m.weight[i] -= eps;
            } else {
                p.bias[i - 6] += eps;
                m.bias[i - 6] -= eps;
            }
            let fd = (loss_and_grad(&p, &x, &y).0 - loss_and_grad(&m, &x, &y).0) / (2.0 * eps);
            assert!((fd - gi).abs() < 1e-3, "param {i}: {fd} vs {gi}");
        }
    }

    #[test]
    fn separable_data_is_learned() {
        let x: Vec<Vec<f32>> = (0..20)
            .map(|i| vec![if i % 2 == 0 { 1.0 } else { -1.0 }, (i as f32).cos()])
            .collect();
        let y: Vec<usize> = (0..20).map(|i| i % 2).collect();
        let head = train(
            &x,
            &y,
            vec!["even".into(), "odd".into()],
            &HeadConfig::default(),
            |_, _| {},
        );
        let correct = x.iter().zip(&y).filter(|(xi, &yi)| {
            let l = head.logits(xi);
            (l[1] > l[0]) as usize == yi
        });
        assert_eq!(correct.count(), 20);
    }
}
