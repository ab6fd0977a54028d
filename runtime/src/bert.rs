//! The encoder: one implementation for BERT (MiniLM), DistilBERT, RoBERTa and XLM-R, and for
//! every weight type. It reads top to bottom like the paper: embeddings, self-attention,
//! feed-forward, layer, encoder, pooling, head.
//!
//! Sequences of a batch are packed one after another, without padding: a batch of lengths
//! `[n0, n1, ...]` is `n0 + n1 + ...` rows of hidden states, and attention runs within each
//! sequence, so padded positions are never computed.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use crate::config::{HeadActivation, LoadError, ModelConfig, Pooling};
use crate::gguf::names::tensor::Block;
use crate::gguf::Gguf;
use crate::kernels::{self, Activations};
use crate::quant::TensorType;
use crate::weights::{Linear, Norm, Weights};

/// Token ids of a batch of sequences, concatenated.
#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    /// Token ids of every sequence, one after another.
    pub ids: &'a [u32],
    /// Token type ids, as `ids` (all 0 when `None`).
    pub type_ids: Option<&'a [u32]>,
    /// Length of each sequence; they add up to `ids.len()`.
    pub lens: &'a [usize],
}

/// Why a forward pass was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ForwardError {
    /// A token id is not in the vocabulary.
    TokenOutOfRange {
        /// The id.
        id: u32,
        /// Vocabulary size.
        vocab: usize,
    },
    /// A token type id has no embedding.
    TypeOutOfRange {
        /// The id.
        id: u32,
        /// Token types available.
        types: usize,
    },
    /// A sequence is longer than the model's positions.
    TooLong {
        /// Its length.
        len: usize,
        /// The most tokens a sequence may have.
        max: usize,
    },
    /// A sequence has no tokens.
    EmptySequence,
    /// `lens` does not add up to the number of ids, or `type_ids` has another length.
    LengthMismatch,
}

impl fmt::Display for ForwardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForwardError::TokenOutOfRange { id, vocab } => {
                write!(f, "token id {id} is outside the vocabulary of {vocab}")
            }
            ForwardError::TypeOutOfRange { id, types } => {
                write!(f, "token type {id} is outside the {types} types")
            }
            ForwardError::TooLong { len, max } => {
                write!(f, "sequence of {len} tokens exceeds the model's {max}")
            }
            ForwardError::EmptySequence => write!(f, "empty sequence"),
            ForwardError::LengthMismatch => {
                write!(f, "sequence lengths do not match the token ids")
            }
        }
    }
}

impl core::error::Error for ForwardError {}

/// Where a LayerNorm sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NormSite {
    /// After the embeddings.
    Embeddings,
    /// After self-attention in layer `n`.
    Attention(usize),
    /// After the feed-forward in layer `n`.
    Output(usize),
}

/// Points where training and adapters plug into the forward pass. Every method defaults to
/// doing nothing; the training tape records what the backward pass needs through them.
pub trait Hooks {
    /// Sees the hidden states after the embeddings (`index` 0) and after layer `index - 1`.
    fn hidden_state(&mut self, _index: usize, _states: &[f32]) {}

    /// Sees, and may replace, the word embedding of token `token` (its index in the packed
    /// batch): prompt tuning puts its virtual tokens here.
    fn word_embedding(&mut self, _token: usize, _row: &mut [f32]) {}

    /// May replace the input `x` (`[tokens, in]`) of linear layer `part` of layer `layer`: IA3
    /// scales the input of feed-forward layers.
    fn linear_input(&mut self, _layer: usize, _part: Block, _x: &[f32]) -> Option<Vec<f32>> {
        None
    }

    /// Sees, and may change, the output `y` (`[tokens, out]`) that linear layer `part` of layer
    /// `layer` computed from `x` (`[tokens, in]`): LoRA, IA3, BitFit and bottleneck adapters
    /// act here.
    fn linear_output(&mut self, _layer: usize, _part: Block, _x: &[f32], _y: &mut [f32]) {}

    /// Whether [`Hooks::linear_input`] and [`Hooks::linear_output`] must see every linear
    /// layer. Plain inference ([`NoHooks`]) says no, which lets the feed-forward's first layer
    /// apply GELU as its kernels store the outputs (no second pass over them).
    fn sees_linear_layers(&self) -> bool {
        true
    }

    /// Sees the input of a LayerNorm (`[tokens, H]`).
    fn norm_input(&mut self, _site: NormSite, _x: &[f32]) {}

    /// Whether [`Hooks::norm_input`] and [`Hooks::norm_output`] must see the LayerNorms after
    /// the attention and the feed-forward. Plain inference ([`NoHooks`]) says no, which lets
    /// the residual sum be taken as the LayerNorm reads its rows, on the pool.
    fn sees_norms(&self) -> bool {
        true
    }

    /// Sees, and may change, the output of a LayerNorm.
    fn norm_output(&mut self, _site: NormSite, _y: &mut [f32]) {}

    /// Positions to skip before each sequence's first token: prefix tuning's virtual tokens
    /// occupy the first positions, as in Hugging Face models given past keys and values.
    fn position_shift(&self) -> usize {
        0
    }

    /// Keys and values (`[P, H]` each, after their projections) that every sequence attends to
    /// before its own tokens in layer `layer`: prefix tuning.
    fn attention_prefix(&self, _layer: usize) -> Option<(&[f32], &[f32])> {
        None
    }
}

/// Hooks that do nothing: plain inference.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoHooks;

impl Hooks for NoHooks {
    fn sees_linear_layers(&self) -> bool {
        false
    }

    fn sees_norms(&self) -> bool {
        false
    }
}

/// Tokens of a batch's part that runs through the encoder on its own in [`Encoder::infer`]
/// (whole sequences, at least one): its intermediate states (a few hundred KB) stay in L2,
/// where a whole batch's (8 x 128 tokens: 6 MB for the feed-forward's inner layer) went out to
/// memory and back at every layer.
pub const PART_TOKENS: usize = 128;

/// Hidden states of a packed batch.
#[derive(Clone, Debug, PartialEq)]
pub struct Hidden {
    /// `[tokens, hidden]`, row-major.
    pub states: Vec<f32>,
    /// Length of each sequence.
    pub lens: Vec<usize>,
    /// Hidden size.
    pub hidden: usize,
}

impl Hidden {
    /// The states of sequence `s`, `[lens[s], hidden]`.
    pub fn sequence(&self, s: usize) -> &[f32] {
        let start: usize = self.lens[..s].iter().sum();
        &self.states[start * self.hidden..(start + self.lens[s]) * self.hidden]
    }
}

/// Buffers handed from layer to layer within one forward pass, so that each layer's outputs
/// reuse the memory of the layer before instead of fresh zeroed allocations (their zeroing and
/// first-touch page faults were a tenth of a 128-token pass).
#[derive(Debug, Default)]
struct Buffers(Vec<Vec<f32>>, kernels::ActStorage);

impl Buffers {
    /// A buffer of `len` values whose contents are unspecified: the smallest free one that
    /// holds `len` values, else a new one.
    fn take(&mut self, len: usize) -> Vec<f32> {
        let fit = (self.0.iter().enumerate())
            .filter(|(_, b)| b.len() >= len)
            .min_by_key(|(_, b)| b.len())
            .map(|(i, _)| i);
        match fit {
            Some(i) => {
                let mut b = self.0.swap_remove(i);
                b.truncate(len);
                b
            }
            None => vec![0f32; len],
        }
    }

    /// Activations of `n` tokens of `x` on the pool's storage for packed activations;
    /// [`Buffers::keep`] takes it back.
    fn activations<'a>(&mut self, x: &'a [f32], n: usize) -> Activations<'a> {
        Activations::reusing(x, n, core::mem::take(&mut self.1))
    }

    /// Takes back the packed activations' storage of `act`.
    fn keep(&mut self, act: Activations<'_>) {
        self.1 = act.into_storage();
    }

    /// Gives buffers back for reuse.
    fn give(&mut self, bufs: impl IntoIterator<Item = Vec<f32>>) {
        self.0.extend(bufs);
    }

    /// The buffers a pass starts with: those the last pass on this thread left (see
    /// [`Buffers::end_pass`]), else none.
    fn for_pass() -> Self {
        #[cfg(feature = "std")]
        return KEPT.with(|kept| kept.take());
        #[cfg(not(feature = "std"))]
        Buffers::default()
    }

    /// Keeps the buffers for the next pass on this thread, unless they hold more than
    /// [`KEEP_MAX_BYTES`] (a long input's are let go). A pass's first layer then finds its
    /// buffers mapped and written already, with no zeroing or page faults.
    fn end_pass(self) {
        #[cfg(feature = "std")]
        {
            let bytes: usize = self.0.iter().map(|b| b.capacity() * 4).sum();
            if bytes + self.1.bytes() <= KEEP_MAX_BYTES {
                KEPT.with(|kept| kept.replace(self));
            }
        }
    }
}

/// Rows of the attention's context per task as the heads' outputs are gathered into it.
const CTX_ROWS: usize = 32;

/// Most bytes of buffers a thread keeps from one pass to the next: a 128-token MiniLM pass's
/// (about 4 MB) fit.
#[cfg(feature = "std")]
const KEEP_MAX_BYTES: usize = 8 << 20;

#[cfg(feature = "std")]
std::thread_local! {
    /// The buffers the last pass on this thread left.
    static KEPT: core::cell::RefCell<Buffers> = core::cell::RefCell::new(Buffers::default());
}

/// The encoder over a model file's bytes `B` (a memory mapping, a buffer, or a `&'static [u8]`
/// in flash).
#[derive(Debug)]
pub struct Encoder<B> {
    bytes: B,
    config: ModelConfig,
    weights: Weights,
}

impl<B: AsRef<[u8]>> Encoder<B> {
    /// Validates the file in `bytes` and resolves the encoder's tensors in it.
    pub fn new(bytes: B) -> Result<Self, LoadError> {
        Self::new_with(bytes, |_| Ok(())).map(|(e, ())| e)
    }

    /// [`Encoder::new`], also returning what `read` takes from the same parse of the file (the
    /// parse checks every metadata string: a model's vocabulary is read once, not twice).
    pub fn new_with<T>(
        bytes: B,
        read: impl FnOnce(&Gguf<'_>) -> Result<T, LoadError>,
    ) -> Result<(Self, T), LoadError> {
        let (config, weights, extra) = {
            let g = Gguf::parse(bytes.as_ref())?;
            let config = ModelConfig::from_gguf(&g)?;
            let weights = Weights::resolve(&g, &config)?;
            let extra = read(&g)?;
            (config, weights, extra)
        };
        Ok((
            Encoder {
                bytes,
                config,
                weights,
            },
            extra,
        ))
    }

    /// The configuration read from the file.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The resolved tensors.
    pub fn weights(&self) -> &Weights {
        &self.weights
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        self.bytes.as_ref()
    }

    /// Most tokens one sequence may have.
    pub fn max_tokens(&self) -> usize {
        self.config.context_length
    }

    fn linear(&self, lin: &Linear, x: &[f32], n: usize) -> Vec<f32> {
        self.linear_with(
            lin,
            &mut Activations::new(x, n),
            &mut Buffers::default(),
            false,
        )
    }

    /// The layer's output in a buffer from `pool` (the kernels write every value), through
    /// GELU if `gelu`.
    fn linear_with(
        &self,
        lin: &Linear,
        x: &mut Activations<'_>,
        pool: &mut Buffers,
        gelu: bool,
    ) -> Vec<f32> {
        let bytes = self.bytes();
        let w = lin.weight.view(bytes);
        let mut y = pool.take(x.tokens() * w.rows);
        let (w, bias) = (&w, &lin.bias.f32s(bytes));
        if gelu {
            kernels::linear_gelu_with(x, w, bias, &mut y);
        } else {
            kernels::linear_with(x, w, bias, &mut y);
        }
        y
    }

    fn norm(&self, norm: &Norm, x: &mut [f32]) {
        let bytes = self.bytes();
        kernels::layer_norm(
            x,
            &norm.weight.f32s(bytes),
            &norm.bias.f32s(bytes),
            self.config.eps,
        );
    }

    fn hooked_norm(&self, norm: &Norm, site: NormSite, x: &mut [f32], hooks: &mut dyn Hooks) {
        hooks.norm_input(site, x);
        self.norm(norm, x);
        hooks.norm_output(site, x);
    }

    /// `x + residual` through the LayerNorm `norm` in place, seen by the hooks at `site`.
    fn residual_norm(
        &self,
        norm: &Norm,
        site: NormSite,
        x: &mut [f32],
        residual: &[f32],
        hooks: &mut dyn Hooks,
    ) {
        if hooks.sees_norms() {
            x.iter_mut().zip(residual).for_each(|(x, r)| *x += r);
            return self.hooked_norm(norm, site, x, hooks);
        }
        let bytes = self.bytes();
        kernels::add_layer_norm(
            x,
            residual,
            &norm.weight.f32s(bytes),
            &norm.bias.f32s(bytes),
            self.config.eps,
        );
    }

    fn check(&self, input: &Input<'_>, shift: usize) -> Result<(), ForwardError> {
        if input.lens.iter().sum::<usize>() != input.ids.len()
            || input.type_ids.is_some_and(|t| t.len() != input.ids.len())
        {
            return Err(ForwardError::LengthMismatch);
        }
        let max = self.config.context_length.saturating_sub(shift);
        if let Some(&len) = input.lens.iter().find(|&&l| l > max) {
            return Err(ForwardError::TooLong { len, max });
        }
        if input.lens.contains(&0) {
            return Err(ForwardError::EmptySequence);
        }
        let vocab = self.weights.token_embd.rows;
        if let Some(&id) = input.ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(ForwardError::TokenOutOfRange { id, vocab });
        }
        let types = self.weights.token_types.map_or(1, |t| t.rows);
        if let Some(&id) = input
            .type_ids
            .and_then(|t| t.iter().find(|&&id| id as usize >= types))
        {
            return Err(ForwardError::TypeOutOfRange { id, types });
        }
        Ok(())
    }

    /// Embeddings: word + position (+ token type), then LayerNorm. `[tokens, H]`.
    fn embeddings(&self, input: &Input<'_>, hooks: &mut dyn Hooks) -> Vec<f32> {
        let (bytes, h) = (self.bytes(), self.config.hidden);
        let words = self.weights.token_embd.view(bytes);
        let positions = self.weights.position_embd.view(bytes);
        let types = self.weights.token_types.map(|t| t.view(bytes));
        let mut x = vec![0f32; input.ids.len() * h];
        let mut row = vec![0f32; h];
        let first = self.config.position_offset + hooks.position_shift();
        let mut t = 0;
        for &len in input.lens {
            for pos in 0..len {
                let out = &mut x[t * h..(t + 1) * h];
                words.dequantize_row(input.ids[t] as usize, out);
                hooks.word_embedding(t, out);
                positions.dequantize_row(first + pos, &mut row);
                out.iter_mut().zip(&row).for_each(|(o, p)| *o += p);
                if let Some(types) = &types {
                    let ty = input.type_ids.map_or(0, |ids| ids[t]) as usize;
                    types.dequantize_row(ty, &mut row);
                    out.iter_mut().zip(&row).for_each(|(o, p)| *o += p);
                }
                t += 1;
            }
        }
        self.hooked_norm(&self.weights.embd_norm, NormSite::Embeddings, &mut x, hooks);
        x
    }

    /// Multi-head self-attention within each sequence, after the `prefix` keys and values if
    /// any; returns the context `[tokens, H]` before the output projection. Models with
    /// quantized weights (`quantized`) may take the bf16 kernels for heads without a prefix.
    /// The context's buffer comes from `pool`.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        lens: &[usize],
        prefix: Option<(&[f32], &[f32])>,
        quantized: bool,
        pool: &mut Buffers,
    ) -> Vec<f32> {
        let (h, heads) = (self.config.hidden, self.config.heads);
        let dh = h / heads;
        let scale = 1.0 / libm::sqrtf(dh as f32);
        let starts = starts(lens);
        // One task per (sequence, head): softmax(q k^T / sqrt(dh)) v, as `[n, dh]`, in f32
        // matrix products over the head's columns (prefix rows first).
        let tasks = kernels::par_map_init(
            lens.len() * heads,
            kernels::AttentionScratch::default,
            |scratch, task| {
                use kernels::gemm::{gemm, Strides, View, ViewMut};
                let (s, head) = (task / heads, task % heads);
                let (start, n, col) = (starts[s], lens[s], head * dh);
                let (pk, pv) = prefix.unwrap_or((&[], &[]));
                let np = pk.len() / h;
                if np == 0 && quantized {
                    let (at, ld) = (start * h + col, h);
                    let head = kernels::Head {
                        q: &q[at..],
                        k: &k[at..],
                        v: &v[at..],
                        ld,
                        n,
                        dh,
                        scale,
                    };
                    let attended = kernels::attention_bf16(&head, scratch);
                    if let Some(out) = attended {
                        return out;
                    }
                }
                let m = np + n;
                let rows = Strides::rows(h);
                let qh = &q[start * h + col..];
                // scores[i, j] = q_i . key_j, as `[n, np + n]`.
                let mut scores = vec![0f32; n * m];
                if np > 0 {
                    let kt = Strides::transposed(h);
                    gemm(
                        n,
                        dh,
                        np,
                        View::new(qh, rows),
                        View::new(&pk[col..], kt),
                        0.0,
                        ViewMut::new(&mut scores, Strides::rows(m)),
                    );
                }
                let kh = &k[start * h + col..];
                let own = Strides::rows(m);
                gemm(
                    n,
                    dh,
                    n,
                    View::new(qh, rows),
                    View::new(kh, Strides::transposed(h)),
                    0.0,
                    ViewMut::new(&mut scores[np..], own),
                );
                for row in scores.chunks_exact_mut(m) {
                    row.iter_mut().for_each(|v| *v *= scale);
                    kernels::softmax(row);
                }
                let mut out = vec![0f32; n * dh];
                if np > 0 {
                    gemm(
                        n,
                        np,
                        dh,
                        View::new(&scores, own),
                        View::new(&pv[col..], rows),
                        0.0,
                        ViewMut::new(&mut out, Strides::rows(dh)),
                    );
                }
                let vh = &v[start * h + col..];
                let beta = if np > 0 { 1.0 } else { 0.0 };
                gemm(
                    n,
                    n,
                    dh,
                    View::new(&scores[np..], own),
                    View::new(vh, rows),
                    beta,
                    ViewMut::new(&mut out, Strides::rows(dh)),
                );
                out
            },
        );
        // Every value is written: the sequences cover the tokens, the heads the columns. Rows
        // in chunks on the pool, each row gathered from its sequence's heads.
        let mut ctx = pool.take(q.len());
        kernels::par_chunks_mut(&mut ctx, CTX_ROWS * h, |c, chunk| {
            for (r, row) in chunk.chunks_exact_mut(h).enumerate() {
                let t = c * CTX_ROWS + r;
                // The sequence holding token t: the last that starts at or before it.
                let s = starts.partition_point(|&start| start <= t) - 1;
                let i = t - starts[s];
                for (head, cols) in row.chunks_exact_mut(dh).enumerate() {
                    cols.copy_from_slice(&tasks[s * heads + head][i * dh..(i + 1) * dh]);
                }
            }
        });
        ctx
    }

    /// Runs the encoder; returns the last hidden states.
    pub fn forward(
        &self,
        input: &Input<'_>,
        hooks: &mut dyn Hooks,
    ) -> Result<Hidden, ForwardError> {
        self.check(input, hooks.position_shift())?;
        Ok(self.forward_checked(input, hooks))
    }

    /// [`Encoder::forward`] on an input that passed [`Encoder::check`].
    fn forward_checked(&self, input: &Input<'_>, hooks: &mut dyn Hooks) -> Hidden {
        let n = input.ids.len();
        let mut x = self.embeddings(input, hooks);
        hooks.hidden_state(0, &x);
        let mut pool = Buffers::for_pass();
        for (l, layer) in self.weights.layers.iter().enumerate() {
            // Each projection reads prepared activations (quantized once for all layers reading
            // them) unless a hook replaces its input.
            let proj = |hooks: &mut dyn Hooks,
                        pool: &mut Buffers,
                        part: Block,
                        lin: &Linear,
                        act: &mut Activations<'_>| {
                let inp = act.input();
                if let Some(replaced) = hooks.linear_input(l, part, inp) {
                    let mut y = self.linear(lin, &replaced, n);
                    hooks.linear_output(l, part, &replaced, &mut y);
                    return y;
                }
                let mut y = self.linear_with(lin, act, pool, false);
                hooks.linear_output(l, part, inp, &mut y);
                y
            };
            // Self-attention, then residual and LayerNorm (post-LN). Q, K and V share their input.
            let mut shared = pool.activations(&x, n);
            let q = proj(hooks, &mut pool, Block::AttnQ, &layer.q, &mut shared);
            let k = proj(hooks, &mut pool, Block::AttnK, &layer.k, &mut shared);
            let v = proj(hooks, &mut pool, Block::AttnV, &layer.v, &mut shared);
            pool.keep(shared);
            let quantized = matches!(layer.q.weight.ty, TensorType::Q8_0 | TensorType::Q4_0);
            let prefix = hooks.attention_prefix(l);
            let ctx = self.attention(&q, &k, &v, input.lens, prefix, quantized, &mut pool);
            pool.give([q, k, v]);
            let mut ctx_in = pool.activations(&ctx, n);
            let mut a = proj(hooks, &mut pool, Block::AttnOutput, &layer.o, &mut ctx_in);
            pool.keep(ctx_in);
            pool.give([ctx]);
            self.residual_norm(&layer.attn_norm, NormSite::Attention(l), &mut a, &x, hooks);
            // Feed-forward with exact GELU, then residual and LayerNorm.
            let mut up_in = pool.activations(&a, n);
            let u = if hooks.sees_linear_layers() {
                let mut u = proj(hooks, &mut pool, Block::FfnUp, &layer.up, &mut up_in);
                kernels::gelu(&mut u);
                u
            } else {
                self.linear_with(&layer.up, &mut up_in, &mut pool, true)
            };
            pool.keep(up_in);
            let mut down_in = pool.activations(&u, n);
            let mut d = proj(hooks, &mut pool, Block::FfnDown, &layer.down, &mut down_in);
            pool.keep(down_in);
            self.residual_norm(&layer.out_norm, NormSite::Output(l), &mut d, &a, hooks);
            pool.give([core::mem::replace(&mut x, d), a, u]);
            hooks.hidden_state(l + 1, &x);
        }
        pool.end_pass();
        Hidden {
            states: x,
            lens: input.lens.to_vec(),
            hidden: self.config.hidden,
        }
    }

    /// Sentence embeddings: pooled as the file says (mean or CLS), L2-normalized if it says so.
    pub fn pool(&self, hidden: &Hidden) -> Vec<Vec<f32>> {
        self.pool_with(hidden, self.config.normalize)
    }

    /// [`Encoder::pool`], L2-normalized when `normalize` says so instead of the file.
    pub fn pool_with(&self, hidden: &Hidden, normalize: bool) -> Vec<Vec<f32>> {
        let h = hidden.hidden;
        (0..hidden.lens.len())
            .map(|s| {
                let seq = hidden.sequence(s);
                let mut e = match self.config.pooling {
                    Pooling::Cls => seq[..h].to_vec(),
                    Pooling::Mean => mean_rows(seq, h),
                };
                if normalize {
                    l2_normalize(&mut e);
                }
                e
            })
            .collect()
    }

    /// Classification logits of each sequence, from its first token, or `None` without a head.
    pub fn logits(&self, hidden: &Hidden) -> Option<Vec<Vec<f32>>> {
        let head = self.weights.head?;
        let h = hidden.hidden;
        let first: Vec<f32> = (0..hidden.lens.len())
            .flat_map(|s| hidden.sequence(s)[..h].to_vec())
            .collect();
        let n = hidden.lens.len();
        let mut z = self.linear(&head.dense, &first, n);
        match self.config.head_activation {
            HeadActivation::Tanh => z.iter_mut().for_each(|v| *v = libm::tanhf(*v)),
            HeadActivation::Relu => z.iter_mut().for_each(|v| *v = v.max(0.0)),
        }
        let logits = self.linear(&head.out, &z, n);
        Some(
            logits
                .chunks_exact(head.out.weight.rows)
                .map(|c| c.to_vec())
                .collect(),
        )
    }
}

impl<B: AsRef<[u8]> + Sync> Encoder<B> {
    /// Plain inference ([`Encoder::forward`] with [`NoHooks`]), a batch of more than
    /// [`PART_TOKENS`] tokens in parts of whole sequences of at most that many tokens (or one
    /// longer sequence), on the thread pool (one part per thread at a time); the states are
    /// those of one pass over the whole batch. Parts keep each sequence's states in L2, which
    /// one pass over a long batch does not.
    pub fn infer(&self, input: &Input<'_>) -> Result<Hidden, ForwardError> {
        self.check(input, 0)?;
        if input.lens.len() < 2 || input.ids.len() <= PART_TOKENS {
            return Ok(self.forward_checked(input, &mut NoHooks));
        }
        // Sequence ranges of the parts.
        let mut parts = Vec::new();
        let (mut first, mut tokens) = (0, 0);
        for (s, &len) in input.lens.iter().enumerate() {
            if s > first && tokens + len > PART_TOKENS {
                parts.push(first..s);
                (first, tokens) = (s, 0);
            }
            tokens += len;
        }
        parts.push(first..input.lens.len());
        let starts = starts(input.lens);
        let run = |seqs: &core::ops::Range<usize>| {
            let (t0, t1) = (
                starts[seqs.start],
                starts[seqs.end - 1] + input.lens[seqs.end - 1],
            );
            let part = Input {
                ids: &input.ids[t0..t1],
                type_ids: input.type_ids.map(|t| &t[t0..t1]),
                lens: &input.lens[seqs.clone()],
            };
            // Whole sequences of a checked input: checked too.
            self.forward_checked(&part, &mut NoHooks).states
        };
        #[cfg(feature = "std")]
        let states: Vec<Vec<f32>> = {
            use rayon::prelude::*;
            parts.par_iter().map(run).collect()
        };
        #[cfg(not(feature = "std"))]
        let states: Vec<Vec<f32>> = parts.iter().map(run).collect();
        Ok(Hidden {
            states: states.concat(),
            lens: input.lens.to_vec(),
            hidden: self.config.hidden,
        })
    }
}

/// The keys and values one head of one sequence attends to, in a packed batch: the prefix's
/// rows first (prefix tuning), then the sequence's own. Shared by the forward pass and the
/// training backward pass.
#[derive(Clone, Copy, Debug)]
pub struct AttentionRows<'a> {
    /// Keys of the batch, `[tokens, H]`.
    pub k: &'a [f32],
    /// Values of the batch, `[tokens, H]`.
    pub v: &'a [f32],
    /// Prefix keys, `[P, H]` (empty without a prefix).
    pub pk: &'a [f32],
    /// Prefix values, `[P, H]`.
    pub pv: &'a [f32],
    /// Hidden size.
    pub h: usize,
    /// First token of the sequence in the batch.
    pub start: usize,
    /// First column of the head.
    pub col: usize,
    /// Head size.
    pub dh: usize,
}

impl<'a> AttentionRows<'a> {
    /// Rows before the sequence's own.
    pub fn prefix_len(&self) -> usize {
        self.pk.len() / self.h
    }

    fn row(&self, j: usize, prefix: &'a [f32], own: &'a [f32]) -> &'a [f32] {
        let np = self.prefix_len();
        let r = if j < np { j } else { self.start + j - np };
        let src = if j < np { prefix } else { own };
        &src[r * self.h + self.col..r * self.h + self.col + self.dh]
    }

    /// Key `j` of this head (prefix rows first).
    pub fn key(&self, j: usize) -> &'a [f32] {
        self.row(j, self.pk, self.k)
    }

    /// Value `j` of this head (prefix rows first).
    pub fn value(&self, j: usize) -> &'a [f32] {
        self.row(j, self.pv, self.v)
    }
}

/// Where each sequence of a packed batch starts.
pub fn starts(lens: &[usize]) -> Vec<usize> {
    lens.iter()
        .scan(0, |s, &n| {
            let a = *s;
            *s += n;
            Some(a)
        })
        .collect()
}

/// Mean of the rows of `x` (`[n, h]`).
pub fn mean_rows(x: &[f32], h: usize) -> Vec<f32> {
    let n = x.len() / h;
    let mut m = vec![0f32; h];
    for row in x.chunks_exact(h) {
        m.iter_mut().zip(row).for_each(|(m, v)| *m += v);
    }
    m.iter_mut().for_each(|v| *v /= n as f32);
    m
}

/// Scales `x` to unit L2 norm (leaves a zero vector alone).
pub fn l2_normalize(x: &mut [f32]) {
    let norm = libm::sqrtf(x.iter().map(|v| v * v).sum());
    if norm > 0.0 {
        x.iter_mut().for_each(|v| *v /= norm);
    }
}

/// Softmax of logits into probabilities.
pub fn probabilities(logits: &[f32]) -> Vec<f32> {
    let mut p = logits.to_vec();
    kernels::softmax(&mut p);
    p
}
