//! Training through the frozen encoder: the trainable parameters of every method, the tape the
//! forward pass records through the runtime's [`Hooks`], and the backward pass.
//!
//! The forward pass is the runtime's own ([`Encoder::forward`]); nothing here re-implements it.
//! The frozen weights stay in the model file's encoding (F32, F16, Q8_0, Q4_0) and are read in
//! place in both directions. What the backward pass needs is recorded once per batch: each
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

/// One trainable tensor, with its gradient.
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    /// Name (PEFT's where PEFT has one).
    pub name: String,
    /// Shape, row-major.
    pub shape: Vec<usize>,
    /// Values.
    pub value: Vec<f32>,
    /// Gradient accumulated by [`backward`].
    pub grad: Vec<f32>,
    /// Whether AdamW's weight decay applies.
    pub decay: bool,
}

impl Param {
    /// A parameter with zero gradient.
    pub fn new(name: impl Into<String>, shape: &[usize], value: Vec<f32>, decay: bool) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), value.len());
        let grad = vec![0.0; value.len()];
        Param {
            name: name.into(),
            shape: shape.to_vec(),
            value,
            grad,
            decay,
        }
    }
}

/// A LoRA pair at one linear layer: `delta = scaling * B A`, `A` `[r, in]`, `B` `[out, r]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoraSite {
    /// Index of `A` in [`Trainables::params`].
    pub a: usize,
    /// Index of `B`.
    pub b: usize,
    /// `alpha / r`.
    pub scaling: f32,
    /// Dropout probability on the LoRA branch's input while training.
    pub dropout: f32,
}

/// A bottleneck adapter after one linear layer: `y + up(gelu(down(y)))`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdapterSite {
    /// `[bottleneck, H]`.
    pub down_w: usize,
    /// `[bottleneck]`.
    pub down_b: usize,
    /// `[H, bottleneck]`.
    pub up_w: usize,
    /// `[H]`.
    pub up_b: usize,
}

/// What is trained at one linear layer.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SiteParams {
    /// BitFit: a trainable shift of the bias.
    pub bias: Option<usize>,
    /// LoRA.
    pub lora: Option<LoraSite>,
    /// IA3: a per-output scale.
    pub ia3: Option<usize>,
    /// IA3 on a feed-forward layer: a per-input scale (PEFT's `feedforward_modules`).
    pub ia3_input: Option<usize>,
    /// Bottleneck adapter.
    pub adapter: Option<AdapterSite>,
}

/// The classifier trained on top of the encoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadParams {
    /// The model file's head (BERT's pooler: dense + tanh on the first token, frozen) with a
    /// trainable copy of its output layer (PEFT's `modules_to_save` classifier).
    File {
        /// `[labels, H]`.
        w: usize,
        /// `[labels]`.
        b: usize,
        /// BitFit: a trainable shift of the pooler's bias.
        dense_bias: Option<usize>,
    },
    /// A linear layer on the sentence embedding (pooled and normalized as the file says).
    Pooled {
        /// `[labels, H]`.
        w: usize,
        /// `[labels]`.
        b: usize,
    },
}

impl HeadParams {
    /// Indices of the trainable output layer's weight and bias.
    pub fn classifier(self) -> (usize, usize) {
        match self {
            HeadParams::File { w, b, .. } | HeadParams::Pooled { w, b } => (w, b),
        }
    }
}

/// Every trainable parameter of a method, and where each acts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Trainables {
    /// The tensors.
    pub params: Vec<Param>,
    /// Parts at linear layers, by (layer, sub-layer).
    pub sites: BTreeMap<(usize, Block), SiteParams>,
    /// BitFit shifts of LayerNorm biases.
    pub norm_bias: Vec<(NormSite, usize)>,
    /// Prompt tuning: `[N, H]` virtual token embeddings before every sequence.
    pub prompt: Option<usize>,
    /// Prefix tuning: `[N, layers * 2 * H]`, PEFT's layout (per virtual token, per layer the
    /// keys then the values, heads in order).
    pub prefix: Option<usize>,
    /// The classifier, when one is trained.
    pub head: Option<HeadParams>,
}

impl Trainables {
    /// Adds a parameter; returns its index.
    pub fn push(&mut self, p: Param) -> usize {
        self.params.push(p);
        self.params.len() - 1
    }

    /// The parameter called `name`.
    pub fn get(&self, name: &str) -> Option<&Param> {
        self.params.iter().find(|p| p.name == name)
    }

    /// Sets every gradient to zero.
    pub fn zero_grad(&mut self) {
        self.params
            .iter_mut()
            .for_each(|p| p.grad.iter_mut().for_each(|g| *g = 0.0));
    }

    /// Number of virtual tokens prompt tuning puts before each sequence.
    pub fn prompt_len(&self) -> usize {
        self.prompt.map_or(0, |i| self.params[i].shape[0])
    }

    /// Number of virtual tokens prefix tuning puts before each sequence (positions they take).
    pub fn prefix_len(&self) -> usize {
        self.prefix.map_or(0, |i| self.params[i].shape[0])
    }

    /// Trainable values in all.
    pub fn count(&self) -> usize {
        self.params.iter().map(|p| p.value.len()).sum()
    }

    /// Prefix tuning's keys and values of layer `l` (`[N, H]` each) out of PEFT's layout;
    /// empty without prefix tuning.
    fn prefix_rows(&self, l: usize, layers: usize, h: usize) -> (Vec<f32>, Vec<f32>) {
        let Some(i) = self.prefix else {
            return (Vec::new(), Vec::new());
        };
        let p = &self.params[i];
        let rows = |j: usize| -> Vec<f32> {
            p.value
                .chunks_exact(layers * 2 * h)
                .flat_map(|r| r[j * h..(j + 1) * h].iter().copied())
                .collect()
        };
        (rows(2 * l), rows(2 * l + 1))
    }

    fn v(&self, i: usize) -> &[f32] {
        &self.params[i].value
    }
}

/// Activations of one layer kept for the backward pass.
#[derive(Clone, Debug, Default)]
struct LayerTape {
    x: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    ctx: Vec<f32>,
    s1: Vec<f32>,
    a: Vec<f32>,
    u: Vec<f32>,
    g: Vec<f32>,
    s2: Vec<f32>,
}

/// What the trainable parts at one linear layer saw.
#[derive(Clone, Debug, Default)]
struct SiteTape {
    /// LoRA: the dropout mask of the branch's input (0 or `1 / (1 - p)`), and `A` times the
    /// input after dropout (`[n, r]`).
    lora_mask: Option<Vec<f32>>,
    lora_ax: Vec<f32>,
    /// IA3: the output before scaling; for a feed-forward layer, the input before scaling.
    pre_ia3: Vec<f32>,
    ia3_x: Vec<f32>,
    /// Adapter: its input and its hidden layer before the activation.
    adapter_in: Vec<f32>,
    adapter_h: Vec<f32>,
}

/// Everything a forward pass recorded for the backward pass.
#[derive(Debug, Default)]
pub struct Tape {
    emb_pre: Vec<f32>,
    layers: Vec<LayerTape>,
    sites: BTreeMap<(usize, Block), SiteTape>,
    ids: Vec<u32>,
    type_ids: Vec<u32>,
    lens: Vec<usize>,
}

/// A small deterministic generator (SplitMix64) for dropout masks, initialization and shuffles:
/// the same seed gives the same adapter on every machine.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x5eed_7e7a_1000_0000)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = self.uniform().max(1e-7);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
    }

    /// Shuffles `v` in place (Fisher-Yates).
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

/// The hooks of a training forward pass: applies the trainable parts and records the tape.
struct Recorder<'t> {
    t: &'t Trainables,
    tape: Tape,
    /// Position of each packed token within its sequence.
    pos: Vec<usize>,
    prefix: Vec<(Vec<f32>, Vec<f32>)>,
    /// Dropout generator; `None` in evaluation.
    rng: Option<Rng>,
    /// Whether to keep the tape (training) or only apply the trainable parts (inference).
    record: bool,
}

/// `y[t, o] += sum_i x[t, i] * w[o, i]` (+ `b[o]`): a small trainable linear layer.
fn small_linear(x: &[f32], n: usize, w: &[f32], b: Option<&[f32]>, out: usize, y: &mut [f32]) {
    let inp = w.len() / out;
    gemm(
        n,
        inp,
        out,
        View::new(x, Strides::rows(inp)),
        View::new(w, Strides::transposed(inp)),
        1.0,
        ViewMut::new(y, Strides::rows(out)),
    );
    if let Some(b) = b {
        for row in y.chunks_exact_mut(out) {
            row.iter_mut().zip(b).for_each(|(y, b)| *y += b);
        }
    }
}

/// Backward of [`small_linear`]: `dw += dy^T x`, `db += sum dy`, `dx += dy w` (when given).
#[allow(clippy::too_many_arguments)]
fn small_linear_back(
    x: &[f32],
    n: usize,
    w: &[f32],
    dy: &[f32],
    out: usize,
    dw: &mut [f32],
    db: Option<&mut [f32]>,
    dx: Option<&mut [f32]>,
) {
    let inp = w.len() / out;
    gemm(
        out,
        n,
        inp,
        View::new(dy, Strides::transposed(out)),
        View::new(x, Strides::rows(inp)),
        1.0,
        ViewMut::new(dw, Strides::rows(inp)),
    );
    if let Some(db) = db {
        for row in dy.chunks_exact(out) {
            db.iter_mut().zip(row).for_each(|(d, &g)| *d += g);
        }
    }
    if let Some(dx) = dx {
        gemm(
            n,
            out,
            inp,
            View::new(dy, Strides::rows(out)),
            View::new(w, Strides::rows(inp)),
            1.0,
            ViewMut::new(dx, Strides::rows(inp)),
        );
    }
}

impl Hooks for Recorder<'_> {
    fn word_embedding(&mut self, token: usize, row: &mut [f32]) {
        if let Some(p) = self.t.prompt {
            let pos = self.pos[token];
            if pos < self.t.prompt_len() {
                let h = row.len();
                row.copy_from_slice(&self.t.v(p)[pos * h..(pos + 1) * h]);
            }
        }
    }

    fn linear_input(&mut self, l: usize, part: Block, x: &[f32]) -> Option<Vec<f32>> {
        let i = self.t.sites.get(&(l, part))?.ia3_input?;
        let scale = self.t.v(i);
        if self.record {
            self.tape.sites.entry((l, part)).or_default().ia3_x = x.to_vec();
        }
        Some(
            x.chunks_exact(scale.len())
                .flat_map(|row| row.iter().zip(scale).map(|(x, s)| x * s))
                .collect(),
        )
    }

    fn linear_output(&mut self, l: usize, part: Block, x: &[f32], y: &mut [f32]) {
        if self.tape.layers.len() <= l {
            self.tape.layers.resize_with(l + 1, LayerTape::default);
        }
        if self.record {
            match part {
                Block::AttnQ => self.tape.layers[l].x = x.to_vec(),
                Block::AttnOutput => self.tape.layers[l].ctx = x.to_vec(),
                Block::FfnUp => self.tape.layers[l].a = x.to_vec(),
                Block::FfnDown => self.tape.layers[l].g = x.to_vec(),
                _ => {}
            }
        }
        if let Some(sp) = self.t.sites.get(&(l, part)) {
            let n = self.tape.lens.iter().sum::<usize>().max(1);
            let out = y.len() / n;
            let mut st = self.tape.sites.remove(&(l, part)).unwrap_or_default();
            if let Some(b) = sp.bias {
                for row in y.chunks_exact_mut(out) {
                    row.iter_mut().zip(self.t.v(b)).for_each(|(y, b)| *y += b);
                }
            }
            if let Some(lo) = sp.lora {
                let (a, b) = (self.t.v(lo.a), self.t.v(lo.b));
                let r = self.t.params[lo.a].shape[0];
                let mask: Option<Vec<f32>> = match (&mut self.rng, lo.dropout > 0.0) {
                    (Some(rng), true) => {
                        let keep = 1.0 / (1.0 - lo.dropout);
                        Some(
                            x.iter()
                                .map(|_| {
                                    if rng.uniform() < lo.dropout {
                                        0.0
                                    } else {
                                        keep
                                    }
                                })
                                .collect(),
                        )
                    }
                    _ => None,
                };
                let dropped: Option<Vec<f32>> = mask
                    .as_ref()
                    .map(|m| x.iter().zip(m).map(|(v, m)| v * m).collect());
                let mut ax = vec![0f32; n * r];
                small_linear(dropped.as_deref().unwrap_or(x), n, a, None, r, &mut ax);
                let scaled: Vec<f32> = ax.iter().map(|v| v * lo.scaling).collect();
                small_linear(&scaled, n, b, None, out, y);
                st.lora_mask = mask;
                st.lora_ax = ax;
            }
            if let Some(i) = sp.ia3 {
                st.pre_ia3 = y.to_vec();
                for row in y.chunks_exact_mut(out) {
                    row.iter_mut().zip(self.t.v(i)).for_each(|(y, s)| *y *= s);
                }
            }
            if let Some(ad) = sp.adapter {
                st.adapter_in = y.to_vec();
                let m = self.t.params[ad.down_b].value.len();
                let mut hid = vec![0f32; n * m];
                small_linear(
                    &st.adapter_in,
                    n,
                    self.t.v(ad.down_w),
                    Some(self.t.v(ad.down_b)),
                    m,
                    &mut hid,
                );
                let pre = hid.clone();
                petal_runtime::kernels::generic::gelu(&mut hid);
                small_linear(&hid, n, self.t.v(ad.up_w), Some(self.t.v(ad.up_b)), out, y);
                st.adapter_h = pre;
            }
            if self.record {
                self.tape.sites.insert((l, part), st);
            }
        }
        if self.record {
            match part {
                Block::AttnQ => self.tape.layers[l].q = y.to_vec(),
                Block::AttnK => self.tape.layers[l].k = y.to_vec(),
                Block::AttnV => self.tape.layers[l].v = y.to_vec(),
                Block::FfnUp => self.tape.layers[l].u = y.to_vec(),
                _ => {}
            }
        }
    }

    fn norm_input(&mut self, site: NormSite, x: &[f32]) {
        if !self.record {
            return;
        }
        match site {
            NormSite::Embeddings => self.tape.emb_pre = x.to_vec(),
            NormSite::Attention(l) => {
                if self.tape.layers.len() <= l {
                    self.tape.layers.resize_with(l + 1, LayerTape::default);
                }
                self.tape.layers[l].s1 = x.to_vec()
            }
            NormSite::Output(l) => self.tape.layers[l].s2 = x.to_vec(),
        }
    }

    fn norm_output(&mut self, site: NormSite, y: &mut [f32]) {
        if let Some(&(_, i)) = self.t.norm_bias.iter().find(|(s, _)| *s == site) {
            let d = self.t.v(i);
            for row in y.chunks_exact_mut(d.len()) {
                row.iter_mut().zip(d).for_each(|(y, b)| *y += b);
            }
        }
    }

    fn position_shift(&self) -> usize {
        self.t.prefix_len()
    }

    fn attention_prefix(&self, layer: usize) -> Option<(&[f32], &[f32])> {
        self.prefix
            .get(layer)
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
    }
}

/// One labelled batch, already tokenized (without the virtual tokens of prompt tuning).
#[derive(Clone, Debug, Default)]
pub struct Batch {
    /// Token ids of each sequence.
    pub ids: Vec<Vec<u32>>,
    /// Token type ids of each sequence (empty: all 0).
    pub type_ids: Vec<Vec<u32>>,
    /// Label of each sequence.
    pub labels: Vec<usize>,
}

/// Result of a training forward pass.
#[derive(Debug)]
pub struct Forward {
    /// Last hidden states.
    pub hidden: Hidden,
    /// The tape for [`backward`].
    pub tape: Tape,
}

/// Runs the encoder over `batch` with the trainable parts of `t` in place, recording the tape.
/// `dropout` draws LoRA dropout masks (training); `None` runs without dropout (evaluation).
pub fn forward<B: AsRef<[u8]>>(
    enc: &Encoder<B>,
    t: &Trainables,
    batch: &Batch,
    dropout: Option<&mut Rng>,
) -> Result<Forward, petal_runtime::bert::ForwardError> {
    run_forward(enc, t, batch, dropout, true)
}

/// Runs the encoder over `batch` with the trainable parts of `t` in place, keeping no tape:
/// inference with an adapter. Returns the last hidden states.
pub fn infer<B: AsRef<[u8]>>(
    enc: &Encoder<B>,
    t: &Trainables,
    batch: &Batch,
) -> Result<Hidden, petal_runtime::bert::ForwardError> {
    Ok(run_forward(enc, t, batch, None, false)?.hidden)
}

fn run_forward<B: AsRef<[u8]>>(
    enc: &Encoder<B>,
    t: &Trainables,
    batch: &Batch,
    dropout: Option<&mut Rng>,
    record: bool,
) -> Result<Forward, petal_runtime::bert::ForwardError> {
    let np = t.prompt_len();
    // Virtual tokens take positions: a text that would no longer fit keeps its first tokens and
    // its last (the closing special token).
    let shift = t.prefix_len();
    let room = enc
        .config()
        .context_length
        .saturating_sub(np + shift)
        .max(1);
    let fit = |v: &[u32]| -> Vec<u32> {
        if v.len() <= room {
            v.to_vec()
        } else {
            v[..room - 1].iter().chain(v.last()).copied().collect()
        }
    };
    let (mut ids, mut type_ids, mut lens) = (Vec::new(), Vec::new(), Vec::new());
    for (s, seq) in batch.ids.iter().enumerate() {
        let seq = fit(seq);
        // Virtual tokens: token id 0 and type 0; their word embeddings are replaced.
        ids.extend(std::iter::repeat_n(0, np));
        ids.extend_from_slice(&seq);
        type_ids.extend(std::iter::repeat_n(0, np));
        match batch.type_ids.get(s) {
            Some(tt) if !tt.is_empty() => type_ids.extend(fit(tt)),
            _ => type_ids.extend(std::iter::repeat_n(0, seq.len())),
        }
        lens.push(seq.len() + np);
    }
    let pos = lens.iter().flat_map(|&n| 0..n).collect();
    let h = enc.config().hidden;
    let layers = enc.config().layers;
    let prefix = (0..if t.prefix.is_some() { layers } else { 0 })
        .map(|l| t.prefix_rows(l, layers, h))
        .collect();
    let mut rec = Recorder {
        t,
        tape: Tape {
            lens: lens.clone(),
            ..Tape::default()
        },
        pos,
        prefix,
        rng: dropout.map(|r| Rng::new(r.next_u64())),
        record,
    };
    let input = Input {
        ids: &ids,
        type_ids: Some(&type_ids),
        lens: &lens,
    };
    let hidden = enc.forward(&input, &mut rec)?;
    let mut tape = rec.tape;
    tape.ids = ids;
    tape.type_ids = type_ids;
    Ok(Forward { hidden, tape })
}

/// The classifier's input for each sequence and how to send a gradient back from it.
struct HeadForward {
    /// Input of the trainable output layer, `[seqs, H]`.
    feats: Vec<f32>,
    /// File head: the pooler's tanh outputs (= feats) and first-token states.
    cls: Vec<f32>,
    /// Pooled head: the embeddings before normalization, and their norms.
    pooled: Vec<f32>,
    norms: Vec<f32>,
}

fn head_input<B: AsRef<[u8]>>(
    enc: &Encoder<B>,
    t: &Trainables,
    head: HeadParams,
    hidden: &Hidden,
) -> HeadForward {
    let h = hidden.hidden;
    let seqs = hidden.lens.len();
    match head {
        HeadParams::File { dense_bias, .. } => {
            let fh = enc
                .weights()
                .head
                .expect("checked when the trainables were built");
            let cls: Vec<f32> = (0..seqs)
                .flat_map(|s| hidden.sequence(s)[..h].to_vec())
                .collect();
            let w = fh.dense.weight.view(enc.bytes());
            let mut z = vec![0f32; seqs * h];
            kernels::linear(&cls, seqs, &w, &fh.dense.bias.f32s(enc.bytes()), &mut z);
            if let Some(i) = dense_bias {
                for row in z.chunks_exact_mut(h) {
                    row.iter_mut().zip(t.v(i)).for_each(|(z, b)| *z += b);
                }
            }
            match enc.config().head_activation {
                HeadActivation::Tanh => z.iter_mut().for_each(|v| *v = v.tanh()),
                HeadActivation::Relu => z.iter_mut().for_each(|v| *v = v.max(0.0)),
            }
            HeadForward {
                feats: z,
                cls,
                pooled: Vec::new(),
                norms: Vec::new(),
            }
        }
        HeadParams::Pooled { .. } => {
            let mut pooled = Vec::with_capacity(seqs * h);
            for s in 0..seqs {
                let seq = hidden.sequence(s);
                match enc.config().pooling {
                    Pooling::Cls => pooled.extend_from_slice(&seq[..h]),
                    Pooling::Mean => pooled.extend(petal_runtime::bert::mean_rows(seq, h)),
                }
            }
            let mut feats = pooled.clone();
            let mut norms = vec![1f32; seqs];
            if enc.config().normalize {
                for (row, n) in feats.chunks_exact_mut(h).zip(&mut norms) {
                    *n = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                    row.iter_mut().for_each(|v| *v /= *n);
                }
            }
            HeadForward {
                feats,
                cls: Vec::new(),
                pooled,
                norms,
            }
        }
    }
}

/// Sends `dfeats` (gradient at the classifier's input) back to the last hidden states.
fn head_backward<B: AsRef<[u8]>>(
    enc: &Encoder<B>,
    t: &mut Trainables,
    head: HeadParams,
    hf: &HeadForward,
    hidden: &Hidden,
    dfeats: &[f32],
    full: Option<&mut FullGrads>,
) -> Vec<f32> {
    let h = hidden.hidden;
    let seqs = hidden.lens.len();
    let mut dh = vec![0f32; hidden.states.len()];
    let starts = petal_runtime::bert::starts(&hidden.lens);
    match head {
        HeadParams::File { dense_bias, .. } => {
            let fh = enc
                .weights()
                .head
                .expect("checked when the trainables were built");
            let dz: Vec<f32> = match enc.config().head_activation {
                HeadActivation::Tanh => dfeats
                    .iter()
                    .zip(&hf.feats)
                    .map(|(g, a)| g * (1.0 - a * a))
                    .collect(),
                HeadActivation::Relu => dfeats
                    .iter()
                    .zip(&hf.feats)
                    .map(|(g, a)| if *a > 0.0 { *g } else { 0.0 })
                    .collect(),
            };
            if let Some(i) = dense_bias {
                for row in dz.chunks_exact(h) {
                    t.params[i]
                        .grad
                        .iter_mut()
                        .zip(row)
                        .for_each(|(g, d)| *g += d);
                }
            }
            let mut dcls = vec![0f32; seqs * h];
            kernels::linear_backward_input(
                &dz,
                seqs,
                &fh.dense.weight.view(enc.bytes()),
                &mut dcls,
            );
            if let Some(full) = full {
                full.linear(
                    petal_runtime::gguf::names::tensor::CLS,
                    &hf.cls,
                    &dz,
                    seqs,
                    h,
                    h,
                );
            }
            for s in 0..seqs {
                dh[starts[s] * h..starts[s] * h + h].copy_from_slice(&dcls[s * h..(s + 1) * h]);
            }
        }
        HeadParams::Pooled { .. } => {
            for s in 0..seqs {
                let g = &dfeats[s * h..(s + 1) * h];
                let mut dp = g.to_vec();
                if enc.config().normalize {
                    // y = p / |p|: dp = (g - y (y . g)) / |p|.
                    let y = &hf.feats[s * h..(s + 1) * h];
                    let yg: f32 = y.iter().zip(g).map(|(a, b)| a * b).sum();
                    dp.iter_mut()
                        .zip(y)
                        .for_each(|(d, &yv)| *d = (*d - yv * yg) / hf.norms[s]);
                }
                let _ = &hf.pooled;
                let n = hidden.lens[s];
                match enc.config().pooling {
                    Pooling::Cls => dh[starts[s] * h..starts[s] * h + h].copy_from_slice(&dp),
                    Pooling::Mean => {
                        for t in 0..n {
                            let row = &mut dh[(starts[s] + t) * h..(starts[s] + t + 1) * h];
                            row.iter_mut()
                                .zip(&dp)
                                .for_each(|(d, &g)| *d = g / n as f32);
                        }
                    }
                }
            }
        }
    }
    dh
}

/// Gradients of the frozen weights (full fine-tuning), by GGUF tensor name. Only computed when
/// asked for: the golden check of the backward pass uses them.
#[derive(Clone, Debug, Default)]
pub struct FullGrads {
    /// Gradient of each tensor, row-major in the file's shape.
    pub grads: BTreeMap<String, Vec<f32>>,
}

impl FullGrads {
    fn add(&mut self, name: String, len: usize) -> &mut Vec<f32> {
        self.grads.entry(name).or_insert_with(|| vec![0.0; len])
    }

    /// `name.weight += dy^T x`, `name.bias += sum dy`.
    fn linear(&mut self, name: &str, x: &[f32], dy: &[f32], n: usize, inp: usize, out: usize) {
        let dw = self.add(format!("{name}.weight"), out * inp);
        gemm(
            out,
            n,
            inp,
            View::new(dy, Strides::transposed(out)),
            View::new(x, Strides::rows(inp)),
            1.0,
            ViewMut::new(dw, Strides::rows(inp)),
        );
        let db = self.add(format!("{name}.bias"), out);
        for row in dy.chunks_exact(out) {
            db.iter_mut().zip(row).for_each(|(d, &g)| *d += g);
        }
    }
}

/// LayerNorm backward: from the input `s`, the scale `gamma` and the output gradient `dy`, the
/// input gradient; `dgamma`/`dbeta` accumulate when given.
fn layer_norm_back(
    s: &[f32],
    gamma: &[f32],
    eps: f32,
    dy: &[f32],
    ds: &mut [f32],
    mut dgb: Option<(&mut [f32], &mut [f32])>,
) {
    let h = gamma.len();
    let mut xhat = vec![0f32; h];
    for ((srow, dyrow), dsrow) in s
        .chunks_exact(h)
        .zip(dy.chunks_exact(h))
        .zip(ds.chunks_exact_mut(h))
    {
        let mean = srow.iter().map(|&v| v as f64).sum::<f64>() / h as f64;
        let var = srow.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / h as f64;
        let inv = 1.0 / (var + eps as f64).sqrt();
        xhat.iter_mut()
            .zip(srow)
            .for_each(|(x, &v)| *x = ((v as f64 - mean) * inv) as f32);
        let (mut m1, mut m2) = (0f64, 0f64);
        for j in 0..h {
            let g = (dyrow[j] * gamma[j]) as f64;
            m1 += g;
            m2 += g * xhat[j] as f64;
        }
        m1 /= h as f64;
        m2 /= h as f64;
        for j in 0..h {
            let g = (dyrow[j] * gamma[j]) as f64;
            dsrow[j] = (inv * (g - m1 - xhat[j] as f64 * m2)) as f32;
        }
        if let Some((dg, db)) = dgb.as_mut() {
            for j in 0..h {
                dg[j] += dyrow[j] * xhat[j];
                db[j] += dyrow[j];
            }
        }
    }
}

/// Exact GELU's derivative: `Phi(u) + u phi(u)`.
fn gelu_grad(u: f32) -> f32 {
    let cdf = 0.5 * (1.0 + libm::erff(u * std::f32::consts::FRAC_1_SQRT_2));
    let pdf = (-0.5 * u * u).exp() * 0.398_942_3;
    cdf + u * pdf
}

/// Context of the backward pass.
struct Back<'a, B> {
    enc: &'a Encoder<B>,
    tape: &'a Tape,
    t: &'a mut Trainables,
    full: Option<&'a mut FullGrads>,
}

impl<B: AsRef<[u8]>> Back<'_, B> {
    fn n(&self) -> usize {
        self.tape.ids.len()
    }

    /// Backward through linear layer `part` of layer `l` and its trainable parts: given the
    /// gradient `dy` at its (hooked) output and its input `x`, adds the input gradient to `dx`.
    fn linear(&mut self, l: usize, part: Block, x: &[f32], mut dy: Vec<f32>, dx: &mut [f32]) {
        let n = self.n();
        let lw = self.enc.weights().layers[l];
        let lin = *lw.linear(part).expect("a linear sub-layer");
        let w = lin.weight.view(self.enc.bytes());
        let out = w.rows;
        if let (Some(sp), Some(st)) = (
            self.t.sites.get(&(l, part)).copied(),
            self.tape.sites.get(&(l, part)),
        ) {
            if let Some(ad) = sp.adapter {
                // y = y2 + up(gelu(down(y2))); the tape holds down(y2).
                let m = self.t.params[ad.down_b].value.len();
                let mut dhid = vec![0f32; n * m];
                let (upw, downw) = (
                    self.t.params[ad.up_w].value.clone(),
                    self.t.params[ad.down_w].value.clone(),
                );
                let mut act = st.adapter_h.clone();
                petal_runtime::kernels::generic::gelu(&mut act);
                {
                    let (gw, gb) = two_grads(&mut self.t.params, ad.up_w, ad.up_b);
                    small_linear_back(&act, n, &upw, &dy, out, gw, Some(gb), Some(&mut dhid));
                }
                dhid.iter_mut()
                    .zip(&st.adapter_h)
                    .for_each(|(g, &pre)| *g *= gelu_grad(pre));
                let (gw, gb) = two_grads(&mut self.t.params, ad.down_w, ad.down_b);
                small_linear_back(
                    &st.adapter_in,
                    n,
                    &downw,
                    &dhid,
                    m,
                    gw,
                    Some(gb),
                    Some(&mut dy),
                );
            }
            if let Some(i) = sp.ia3 {
                let scale = self.t.params[i].value.clone();
                let g = &mut self.t.params[i].grad;
                for (dyr, pre) in dy.chunks_exact_mut(out).zip(st.pre_ia3.chunks_exact(out)) {
                    for o in 0..out {
                        g[o] += dyr[o] * pre[o];
                        dyr[o] *= scale[o];
                    }
                }
            }
            if let Some(lo) = sp.lora {
                let r = self.t.params[lo.a].shape[0];
                let inp = x.len() / n;
                let (a, b) = (
                    self.t.params[lo.a].value.clone(),
                    self.t.params[lo.b].value.clone(),
                );
                // y += scaling * (A x) B^T: dB += scaling dy^T (A x); d(Ax) = scaling dy B.
                let sax: Vec<f32> = st.lora_ax.iter().map(|v| v * lo.scaling).collect();
                let mut dax = vec![0f32; n * r];
                small_linear_back(
                    &sax,
                    n,
                    &b,
                    &dy,
                    out,
                    &mut self.t.params[lo.b].grad,
                    None,
                    Some(&mut dax),
                );
                dax.iter_mut().for_each(|v| *v *= lo.scaling);
                let dropped: Option<Vec<f32>> = st
                    .lora_mask
                    .as_ref()
                    .map(|m| x.iter().zip(m).map(|(v, m)| v * m).collect());
                let mut dxs = vec![0f32; n * inp];
                small_linear_back(
                    dropped.as_deref().unwrap_or(x),
                    n,
                    &a,
                    &dax,
                    r,
                    &mut self.t.params[lo.a].grad,
                    None,
                    Some(&mut dxs),
                );
                match &st.lora_mask {
                    // Dropout: the gradient passes where the input was kept, scaled alike.
                    Some(m) => dx
                        .iter_mut()
                        .zip(&dxs)
                        .zip(m)
                        .for_each(|((d, g), m)| *d += g * m),
                    None => dx.iter_mut().zip(&dxs).for_each(|(d, g)| *d += g),
                }
            }
            if let Some(i) = sp.bias {
                let g = &mut self.t.params[i].grad;
                for row in dy.chunks_exact(out) {
                    g.iter_mut().zip(row).for_each(|(g, d)| *g += d);
                }
            }
        }
        if let Some(full) = self.full.as_deref_mut() {
            full.linear(&format!("blk.{l}.{}", part.stem()), x, &dy, n, w.cols, out);
        }
        let ia3_input = self.t.sites.get(&(l, part)).and_then(|sp| sp.ia3_input);
        match (ia3_input, self.tape.sites.get(&(l, part))) {
            (Some(i), Some(st)) => {
                // x_scaled = x * s: ds += sum_t dx_scaled * x, dx += dx_scaled * s.
                let mut dxs = vec![0f32; dx.len()];
                kernels::linear_backward_input(&dy, n, &w, &mut dxs);
                let p = &mut self.t.params[i];
                let inp = p.value.len();
                for ((d, g), xo) in dx
                    .chunks_exact_mut(inp)
                    .zip(dxs.chunks_exact(inp))
                    .zip(st.ia3_x.chunks_exact(inp))
                {
                    for j in 0..inp {
                        p.grad[j] += g[j] * xo[j];
                        d[j] += g[j] * p.value[j];
                    }
                }
            }
            _ => kernels::linear_backward_input(&dy, n, &w, dx),
        }
    }

    fn norm(
        &mut self,
        site: NormSite,
        norm: petal_runtime::weights::Norm,
        s: &[f32],
        dy: &[f32],
    ) -> Vec<f32> {
        if let Some(&(_, i)) = self.t.norm_bias.iter().find(|(x, _)| *x == site) {
            let g = &mut self.t.params[i].grad;
            for row in dy.chunks_exact(g.len()) {
                g.iter_mut().zip(row).for_each(|(g, d)| *g += d);
            }
        }
        let bytes = self.enc.bytes();
        let gamma = norm.weight.f32s(bytes);
        let mut ds = vec![0f32; s.len()];
        let eps = self.enc.config().eps;
        match self.full.as_deref_mut() {
            Some(full) => {
                let name = match site {
                    NormSite::Embeddings => {
                        petal_runtime::gguf::names::tensor::TOKEN_EMBD_NORM.to_string()
                    }
                    NormSite::Attention(l) => format!("blk.{l}.{}", Block::AttnOutputNorm.stem()),
                    NormSite::Output(l) => format!("blk.{l}.{}", Block::LayerOutputNorm.stem()),
                };
                let h = gamma.len();
                let mut dg = std::mem::take(full.add(format!("{name}.weight"), h));
                let mut db = std::mem::take(full.add(format!("{name}.bias"), h));
                layer_norm_back(s, &gamma, eps, dy, &mut ds, Some((&mut dg, &mut db)));
                full.grads.insert(format!("{name}.weight"), dg);
                full.grads.insert(format!("{name}.bias"), db);
            }
            None => layer_norm_back(s, &gamma, eps, dy, &mut ds, None),
        }
        ds
    }

    /// Attention backward for layer `l`: from `dctx`, the gradients of q, k, v (and the prefix).
    fn attention(&mut self, l: usize, dctx: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let lt = &self.tape.layers[l];
        let cfg = self.enc.config();
        let (h, heads) = (cfg.hidden, cfg.heads);
        let dh = h / heads;
        let scale = 1.0 / (dh as f32).sqrt();
        let lens = &self.tape.lens;
        let starts = petal_runtime::bert::starts(lens);
        // Prefix keys and values of this layer, as in the forward pass.
        let layers = cfg.layers;
        let (pk, pv) = self.t.prefix_rows(l, layers, h);
        let np = pk.len() / h;
        let (q, k, v) = (&lt.q, &lt.k, &lt.v);
        // One task per (sequence, head): gradients for its rows of q, k, v, and the prefix.
        let tasks = kernels::par_map(lens.len() * heads, |task| {
            let (s, head) = (task / heads, task % heads);
            let (start, n, col) = (starts[s], lens[s], head * dh);
            let rows = AttentionRows {
                k,
                v,
                pk: &pk,
                pv: &pv,
                h,
                start,
                col,
                dh,
            };
            let (key, value) = (|j| rows.key(j), |j| rows.value(j));
            let m = np + n;
            let (mut dq, mut dk, mut dv) =
                (vec![0f32; n * dh], vec![0f32; m * dh], vec![0f32; m * dh]);
            let mut p = vec![0f32; m];
            let mut dp = vec![0f32; m];
            for i in 0..n {
                let qi = &q[(start + i) * h + col..(start + i) * h + col + dh];
                for (j, pj) in p.iter_mut().enumerate() {
                    *pj = kernels::dot(qi, key(j)) * scale;
                }
                kernels::softmax(&mut p);
                let dci = &dctx[(start + i) * h + col..(start + i) * h + col + dh];
                let mut sum = 0f32;
                for j in 0..m {
                    dp[j] = kernels::dot(dci, value(j));
                    sum += p[j] * dp[j];
                    dv[j * dh..(j + 1) * dh]
                        .iter_mut()
                        .zip(dci)
                        .for_each(|(d, &g)| *d += p[j] * g);
                }
                for j in 0..m {
                    let ds = p[j] * (dp[j] - sum) * scale;
                    if ds != 0.0 {
                        dq[i * dh..(i + 1) * dh]
                            .iter_mut()
                            .zip(key(j))
                            .for_each(|(d, &kv)| *d += ds * kv);
                        dk[j * dh..(j + 1) * dh]
                            .iter_mut()
                            .zip(qi)
                            .for_each(|(d, &qv)| *d += ds * qv);
                    }
                }
            }
            (dq, dk, dv)
        });
        let nt = self.n();
        let (mut dq, mut dk, mut dv) = (vec![0f32; nt * h], vec![0f32; nt * h], vec![0f32; nt * h]);
        let mut dprefix = self
            .t
            .prefix
            .map(|i| vec![0f32; self.t.params[i].value.len()]);
        for (task, (tq, tk, tv)) in tasks.iter().enumerate() {
            let (s, head) = (task / heads, task % heads);
            let col = head * dh;
            for i in 0..lens[s] {
                let at = (starts[s] + i) * h + col;
                dq[at..at + dh].copy_from_slice(&tq[i * dh..(i + 1) * dh]);
                dk[at..at + dh].copy_from_slice(&tk[(np + i) * dh..(np + i + 1) * dh]);
                dv[at..at + dh].copy_from_slice(&tv[(np + i) * dh..(np + i + 1) * dh]);
            }
            if let Some(dpre) = dprefix.as_mut() {
                for j in 0..np {
                    let base = j * layers * 2 * h;
                    let (ko, vo) = (base + 2 * l * h + col, base + (2 * l + 1) * h + col);
                    dpre[ko..ko + dh]
                        .iter_mut()
                        .zip(&tk[j * dh..(j + 1) * dh])
                        .for_each(|(d, g)| *d += g);
                    dpre[vo..vo + dh]
                        .iter_mut()
                        .zip(&tv[j * dh..(j + 1) * dh])
                        .for_each(|(d, g)| *d += g);
                }
            }
        }
        if let (Some(i), Some(d)) = (self.t.prefix, dprefix) {
            self.t.params[i]
                .grad
                .iter_mut()
                .zip(&d)
                .for_each(|(g, d)| *g += d);
        }
        (dq, dk, dv)
    }

    /// Backward through every layer and the embeddings, from the gradient at the last hidden
    /// states.
    fn run(&mut self, mut dx: Vec<f32>) {
        let enc = self.enc;
        let n = self.n();
        for l in (0..enc.weights().layers.len()).rev() {
            let lw = enc.weights().layers[l];
            let lt = &self.tape.layers[l];
            // Output LayerNorm, residual, feed-forward.
            let ds2 = self.norm(NormSite::Output(l), lw.out_norm, &lt.s2, &dx);
            let mut da = ds2.clone();
            let f = lw.up.weight.rows;
            let mut dg = vec![0f32; n * f];
            self.linear(l, Block::FfnDown, &lt.g, ds2, &mut dg);
            let du: Vec<f32> = dg
                .iter()
                .zip(&lt.u)
                .map(|(g, &u)| g * gelu_grad(u))
                .collect();
            self.linear(l, Block::FfnUp, &lt.a, du, &mut da);
            // Attention LayerNorm, residual, attention.
            let ds1 = self.norm(NormSite::Attention(l), lw.attn_norm, &lt.s1, &da);
            let mut dxl = ds1.clone();
            let mut dctx = vec![0f32; n * enc.config().hidden];
            self.linear(l, Block::AttnOutput, &lt.ctx, ds1, &mut dctx);
            let (dq, dk, dv) = self.attention(l, &dctx);
            self.linear(l, Block::AttnQ, &lt.x, dq, &mut dxl);
            self.linear(l, Block::AttnK, &lt.x, dk, &mut dxl);
            self.linear(l, Block::AttnV, &lt.x, dv, &mut dxl);
            dx = dxl;
        }
        let demb = self.norm(
            NormSite::Embeddings,
            enc.weights().embd_norm,
            &self.tape.emb_pre,
            &dx,
        );
        let h = enc.config().hidden;
        let np = self.t.prompt_len();
        let mut t = 0;
        for &len in &self.tape.lens {
            for pos in 0..len {
                let g = &demb[t * h..(t + 1) * h];
                if pos < np {
                    let p = self
                        .t
                        .prompt
                        .expect("virtual tokens come from prompt tuning");
                    self.t.params[p].grad[pos * h..(pos + 1) * h]
                        .iter_mut()
                        .zip(g)
                        .for_each(|(d, v)| *d += v);
                }
                if let Some(full) = self.full.as_deref_mut() {
                    use petal_runtime::gguf::names::tensor as names;
                    let w = enc.weights();
                    if pos >= np {
                        let id = self.tape.ids[t] as usize;
                        let words = full.add(names::TOKEN_EMBD.to_string(), w.token_embd.rows * h);
                        words[id * h..(id + 1) * h]
                            .iter_mut()
                            .zip(g)
                            .for_each(|(d, v)| *d += v);
                    }
                    let p = enc.config().position_offset + self.t.prefix_len() + pos;
                    let positions =
                        full.add(names::POSITION_EMBD.to_string(), w.position_embd.rows * h);
                    positions[p * h..(p + 1) * h]
                        .iter_mut()
                        .zip(g)
                        .for_each(|(d, v)| *d += v);
                    if let Some(tt) = w.token_types {
                        let ty = self.tape.type_ids[t] as usize;
                        let types = full.add(names::TOKEN_TYPES.to_string(), tt.rows * h);
                        types[ty * h..(ty + 1) * h]
                            .iter_mut()
                            .zip(g)
                            .for_each(|(d, v)| *d += v);
                    }
                }
                t += 1;
            }
        }
    }
}

fn two_grads(params: &mut [Param], a: usize, b: usize) -> (&mut [f32], &mut [f32]) {
    assert_ne!(a, b);
    if a < b {
        let (x, y) = params.split_at_mut(b);
        (&mut x[a].grad, &mut y[0].grad)
    } else {
        let (x, y) = params.split_at_mut(a);
        (&mut y[0].grad, &mut x[b].grad)
    }
}

/// Cross-entropy of `logits` (`[seqs, k]`) against `labels`, mean over the sequences, and its
/// gradient.
pub fn cross_entropy(logits: &[f32], labels: &[usize], k: usize) -> (f32, Vec<f32>) {
    let seqs = labels.len() as f32;
    let mut loss = 0f32;
    let mut d = vec![0f32; logits.len()];
    for (s, (row, &y)) in logits.chunks_exact(k).zip(labels).enumerate() {
        let p = petal_runtime::bert::probabilities(row);
        loss -= p[y].max(1e-30).ln();
        for c in 0..k {
            d[s * k + c] = (p[c] - if c == y { 1.0 } else { 0.0 }) / seqs;
        }
    }
    (loss / seqs, d)
}

/// The classifier's logits for a forward pass (`[seqs, labels]`).
pub fn logits<B: AsRef<[u8]>>(enc: &Encoder<B>, t: &Trainables, hidden: &Hidden) -> Vec<f32> {
    let head = t.head.expect("a method with a classifier");
    let hf = head_input(enc, t, head, hidden);
    let (w, b) = head.classifier();
    let k = t.params[b].value.len();
    let mut z = vec![0f32; hidden.lens.len() * k];
    small_linear(
        &hf.feats,
        hidden.lens.len(),
        &t.params[w].value,
        Some(&t.params[b].value),
        k,
        &mut z,
    );
    z
}

/// Classification loss of one batch and the gradients of every trainable parameter (added to
/// `Param::grad`); with `full`, also the gradients of every frozen weight. Returns the loss and
/// the logits.
pub fn classification_step<B: AsRef<[u8]>>(
    enc: &Encoder<B>,
    t: &mut Trainables,
    batch: &Batch,
    dropout: Option<&mut Rng>,
    mut full: Option<&mut FullGrads>,
) -> Result<(f32, Vec<f32>), petal_runtime::bert::ForwardError> {
    let head = t.head.expect("a method with a classifier");
    let fw = forward(enc, t, batch, dropout)?;
    let hf = head_input(enc, t, head, &fw.hidden);
    let (w, b) = head.classifier();
    let k = t.params[b].value.len();
    let seqs = batch.labels.len();
    let mut z = vec![0f32; seqs * k];
    let wv = t.params[w].value.clone();
    small_linear(&hf.feats, seqs, &wv, Some(&t.params[b].value), k, &mut z);
    let (loss, dz) = cross_entropy(&z, &batch.labels, k);
    let mut dfeats = vec![0f32; hf.feats.len()];
    {
        let (gw, gb) = two_grads(&mut t.params, w, b);
        small_linear_back(
            &hf.feats,
            seqs,
            &wv,
            &dz,
            k,
            gw,
            Some(gb),
            Some(&mut dfeats),
        );
    }
    let dh = head_backward(enc, t, head, &hf, &fw.hidden, &dfeats, full.as_deref_mut());
    backward(enc, &fw.tape, t, dh, full);
    Ok((loss, z))
}

/// Sentence embeddings of last hidden states, pooled and normalized as the file says
/// (`[seqs, H]`).
pub fn embeddings<B: AsRef<[u8]>>(enc: &Encoder<B>, hidden: &Hidden) -> Vec<f32> {
    head_input(
        enc,
        &Trainables::default(),
        HeadParams::Pooled { w: 0, b: 0 },
        hidden,
    )
    .feats
}

/// Backward from a gradient at the sentence embeddings of `fw` (`[seqs, H]`).
pub fn embedding_backward<B: AsRef<[u8]>>(
    enc: &Encoder<B>,
    fw: &Forward,
    t: &mut Trainables,
    demb: &[f32],
) {
    let head = HeadParams::Pooled { w: 0, b: 0 };
    let hf = head_input(enc, t, head, &fw.hidden);
    let dh = head_backward(enc, t, head, &hf, &fw.hidden, demb, None);
    backward(enc, &fw.tape, t, dh, None);
}

/// The backward pass: from the gradient at the last hidden states (`[tokens, H]`), adds the
/// gradients of the trainable parameters (and with `full`, of the frozen weights).
pub fn backward<B: AsRef<[u8]>>(
    enc: &Encoder<B>,
    tape: &Tape,
    t: &mut Trainables,
    dhidden: Vec<f32>,
    full: Option<&mut FullGrads>,
) {
    Back { enc, tape, t, full }.run(dhidden);
}

/// Cosine similarity of `a` and `b` and its gradient with respect to `a`.
fn cosine_and_grad(a: &[f32], b: &[f32]) -> (f32, Vec<f32>) {
    let na = a.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
    let nb = b.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
    let cos = a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>() / (na * nb);
    let g = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| y / (na * nb) - cos * x / (na * na))
        .collect();
    (cos, g)
}

/// SetFit's contrastive objective on one batch of texts: for each pair `(i, j, target)` (target
/// 1 for the same label, 0 otherwise), the squared error between the cosine similarity of the
/// two sentence embeddings and the target, averaged over the pairs. Adds the gradients of the
/// trainable parameters; returns the loss.
pub fn contrastive_step<B: AsRef<[u8]>>(
    enc: &Encoder<B>,
    t: &mut Trainables,
    batch: &Batch,
    pairs: &[(usize, usize, f32)],
    dropout: Option<&mut Rng>,
) -> Result<f32, petal_runtime::bert::ForwardError> {
    let fw = forward(enc, t, batch, dropout)?;
    let e = embeddings(enc, &fw.hidden);
    let h = enc.config().hidden;
    let mut de = vec![0f32; e.len()];
    let mut loss = 0f32;
    let np = pairs.len().max(1) as f32;
    for &(i, j, target) in pairs {
        let (a, b) = (&e[i * h..(i + 1) * h], &e[j * h..(j + 1) * h]);
        let (cos, ga) = cosine_and_grad(a, b);
        let (_, gb) = cosine_and_grad(b, a);
        let r = cos - target;
        loss += r * r / np;
        let s = 2.0 * r / np;
        de[i * h..(i + 1) * h]
            .iter_mut()
            .zip(&ga)
            .for_each(|(d, g)| *d += s * g);
        de[j * h..(j + 1) * h]
            .iter_mut()
            .zip(&gb)
            .for_each(|(d, g)| *d += s * g);
    }
    embedding_backward(enc, &fw, t, &de);
    Ok(loss)
}
