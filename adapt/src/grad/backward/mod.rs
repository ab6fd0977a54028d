//! The backward pass: from the loss's gradient at the last hidden states through every
//! layer, by layer kind (linear layers and their trainable parts, attention, LayerNorm).

mod attention;
mod linear;
mod norm;

pub(crate) use norm::*;

use super::*;

/// Sends `dfeats` (gradient at the classifier's input) back to the last hidden states.
pub(crate) fn head_backward<B: AsRef<[u8]>>(
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
    pub(crate) fn add(&mut self, name: String, len: usize) -> &mut Vec<f32> {
        self.grads.entry(name).or_insert_with(|| vec![0.0; len])
    }

    /// `name.weight += dy^T x`, `name.bias += sum dy`.
    pub(crate) fn linear(
        &mut self,
        name: &str,
        x: &[f32],
        dy: &[f32],
        n: usize,
        inp: usize,
        out: usize,
    ) {
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

/// Context of the backward pass.
pub(crate) struct Back<'a, B> {
    pub(crate) enc: &'a Encoder<B>,
    pub(crate) tape: &'a Tape,
    pub(crate) t: &'a mut Trainables,
    pub(crate) full: Option<&'a mut FullGrads>,
}

impl<B: AsRef<[u8]>> Back<'_, B> {
    pub(crate) fn n(&self) -> usize {
        self.tape.ids.len()
    }

    /// Backward through every layer and the embeddings, from the gradient at the last hidden
    /// states.
    pub(crate) fn run(&mut self, mut dx: Vec<f32>) {
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
