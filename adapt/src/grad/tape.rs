use super::*;

/// Activations of one layer kept for the backward pass.
#[derive(Clone, Debug, Default)]
pub(crate) struct LayerTape {
    pub(crate) x: Vec<f32>,
    pub(crate) q: Vec<f32>,
    pub(crate) k: Vec<f32>,
    pub(crate) v: Vec<f32>,
    pub(crate) ctx: Vec<f32>,
    pub(crate) s1: Vec<f32>,
    pub(crate) a: Vec<f32>,
    pub(crate) u: Vec<f32>,
    pub(crate) g: Vec<f32>,
    pub(crate) s2: Vec<f32>,
}

/// What the trainable parts at one linear layer saw.
#[derive(Clone, Debug, Default)]
pub(crate) struct SiteTape {
    /// LoRA: the dropout mask of the branch's input (0 or `1 / (1 - p)`), and `A` times the
    /// input after dropout (`[n, r]`).
    pub(crate) lora_mask: Option<Vec<f32>>,
    pub(crate) lora_ax: Vec<f32>,
    /// IA3: the output before scaling; for a feed-forward layer, the input before scaling.
    pub(crate) pre_ia3: Vec<f32>,
    pub(crate) ia3_x: Vec<f32>,
    /// Adapter: its input and its hidden layer before the activation.
    pub(crate) adapter_in: Vec<f32>,
    pub(crate) adapter_h: Vec<f32>,
}

/// Everything a forward pass recorded for the backward pass.
#[derive(Debug, Default)]
pub struct Tape {
    pub(crate) emb_pre: Vec<f32>,
    pub(crate) layers: Vec<LayerTape>,
    pub(crate) sites: BTreeMap<(usize, Block), SiteTape>,
    pub(crate) ids: Vec<u32>,
    pub(crate) type_ids: Vec<u32>,
    pub(crate) lens: Vec<usize>,
}

/// The hooks of a training forward pass: applies the trainable parts and records the tape.
pub(crate) struct Recorder<'t> {
    pub(crate) t: &'t Trainables,
    pub(crate) tape: Tape,
    /// Position of each packed token within its sequence.
    pub(crate) pos: Vec<usize>,
    pub(crate) prefix: Vec<(Vec<f32>, Vec<f32>)>,
    /// Dropout generator; `None` in evaluation.
    pub(crate) rng: Option<Rng>,
    /// Whether to keep the tape (training) or only apply the trainable parts (inference).
    pub(crate) record: bool,
}

/// `y[t, o] += sum_i x[t, i] * w[o, i]` (+ `b[o]`): a small trainable linear layer.
pub(crate) fn small_linear(
    x: &[f32],
    n: usize,
    w: &[f32],
    b: Option<&[f32]>,
    out: usize,
    y: &mut [f32],
) {
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
pub(crate) fn small_linear_back(
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
