use super::*;

/// LayerNorm backward: from the input `s`, the scale `gamma` and the output gradient `dy`, the
/// input gradient; `dgamma`/`dbeta` accumulate when given.
pub(crate) fn layer_norm_back(
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
pub(crate) fn gelu_grad(u: f32) -> f32 {
    let cdf = 0.5 * (1.0 + libm::erff(u * std::f32::consts::FRAC_1_SQRT_2));
    let pdf = (-0.5 * u * u).exp() * 0.398_942_3;
    cdf + u * pdf
}

impl<B: AsRef<[u8]>> Back<'_, B> {
    pub(crate) fn norm(
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
}
