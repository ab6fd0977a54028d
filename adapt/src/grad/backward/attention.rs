use super::*;

impl<B: AsRef<[u8]>> Back<'_, B> {
    /// Attention backward for layer `l`: from `dctx`, the gradients of q, k, v (and the prefix).
    pub(crate) fn attention(&mut self, l: usize, dctx: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
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
}
