//! Classification heads held in memory (trained on the device, or loaded from an adapter file),
//! applied to the encoder's output.

use alloc::string::String;
use alloc::vec::Vec;

/// What a head reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadInput {
    /// The sentence embedding, pooled and normalized as the model file says.
    Pooled,
}

/// A linear head `logits = W x + b` over `labels.len()` classes.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearHead {
    /// What `x` is.
    pub input: HeadInput,
    /// Class names, in logit order.
    pub labels: Vec<String>,
    /// `[labels, dim]`, row-major.
    pub weight: Vec<f32>,
    /// `[labels]`.
    pub bias: Vec<f32>,
}

impl LinearHead {
    /// Input size.
    pub fn dim(&self) -> usize {
        self.weight.len() / self.labels.len().max(1)
    }

    /// Logits of input `x` (`dim` values).
    pub fn logits(&self, x: &[f32]) -> Vec<f32> {
        let d = self.dim();
        self.weight
            .chunks_exact(d)
            .zip(&self.bias)
            .map(|(w, b)| crate::kernels::dot(w, x) + b)
            .collect()
    }
}
