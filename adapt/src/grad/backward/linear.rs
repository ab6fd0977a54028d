use super::*;

impl<B: AsRef<[u8]>> Back<'_, B> {
    /// Backward through linear layer `part` of layer `l` and its trainable parts: given the
    /// gradient `dy` at its (hooked) output and its input `x`, adds the input gradient to `dx`.
    pub(crate) fn linear(
        &mut self,
        l: usize,
        part: Block,
        x: &[f32],
        mut dy: Vec<f32>,
        dx: &mut [f32],
    ) {
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
}
