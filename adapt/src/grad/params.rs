use super::*;

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
    pub(crate) fn prefix_rows(&self, l: usize, layers: usize, h: usize) -> (Vec<f32>, Vec<f32>) {
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

    pub(crate) fn v(&self, i: usize) -> &[f32] {
        &self.params[i].value
    }
}

pub(crate) fn two_grads(params: &mut [Param], a: usize, b: usize) -> (&mut [f32], &mut [f32]) {
    assert_ne!(a, b);
    if a < b {
        let (x, y) = params.split_at_mut(b);
        (&mut x[a].grad, &mut y[0].grad)
    } else {
        let (x, y) = params.split_at_mut(a);
        (&mut y[0].grad, &mut x[b].grad)
    }
}
