//! Training through the frozen encoder: the trainable parameters of every method, the tape the
//! forward pass records through the runtime's [`Hooks`], and the backward pass.
//!
//! The forward pass is the runtime's own ([`Encoder::forward`]); nothing here re-implements it.
//! The frozen weights stay in the model file's encoding (F32, F16, Q8_0, Q4_0) and are read in
//! place by the forward pass; the backward pass decodes each quantized layer's weights into a
//! temporary f32 copy for its product ([`kernels::linear_backward_input`]). What it needs is recorded once per batch: each
//! layer's input, the attention's queries, keys and values, the LayerNorm inputs, the GELU input
//! and output; attention probabilities are recomputed rather than stored.
//!
//! Every trainable part acts at one of the hooks, in this order at a linear layer:
//! `y = W x + b` (frozen) `+ bitfit_bias + (alpha / r) B A drop(x)` (LoRA), then `y *= l` (IA3),
//! then `y += up(gelu(down(y)))` (bottleneck adapter). Prompt tuning replaces the word
//! embeddings of virtual tokens, prefix tuning adds keys and values to every attention, BitFit's
//! LayerNorm biases add to a LayerNorm's output.

use std::collections::BTreeMap;

use petal_runtime::bert::{AttentionRows, Encoder, Hidden, Hooks, Input, NormSite};
use petal_runtime::config::{HeadActivation, Pooling};
use petal_runtime::gguf::names::tensor::Block;
use petal_runtime::kernels;
use petal_runtime::kernels::gemm::{gemm, Strides, View, ViewMut};

mod backward;
mod forward;
mod loss;
mod params;
mod rng;
mod tape;

pub use backward::FullGrads;
pub use forward::{forward, infer, Batch, Forward};
pub use loss::{
    backward, classification_step, contrastive_step, cross_entropy, embedding_backward, embeddings,
    logits,
};
pub use params::{AdapterSite, HeadParams, LoraSite, Param, SiteParams, Trainables};
pub use rng::Rng;
pub use tape::Tape;

use backward::*;
use forward::*;
use params::*;
use tape::*;
