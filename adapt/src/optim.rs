//! AdamW (Loshchilov and Hutter) with linear warmup and linear decay.

/// AdamW settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    /// Peak learning rate.
    pub lr: f32,
    /// First-moment decay.
    pub beta1: f32,
    /// Second-moment decay.
    pub beta2: f32,
    /// Denominator guard.
    pub eps: f32,
    /// Decoupled weight decay.
    pub weight_decay: f32,
    /// Fraction of the steps spent warming up linearly from 0 to `lr`.
    pub warmup: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            warmup: 0.1,
        }
    }
}

/// AdamW state for one flat parameter vector.
#[derive(Clone, Debug)]
pub struct AdamW {
    cfg: AdamWConfig,
    m: Vec<f32>,
    v: Vec<f32>,
    step: u32,
    total_steps: u32,
}

impl AdamW {
    /// State for `n` parameters over `total_steps` steps.
    pub fn new(cfg: AdamWConfig, n: usize, total_steps: u32) -> Self {
        AdamW {
            cfg,
            m: vec![0.0; n],
            v: vec![0.0; n],
            step: 0,
            total_steps: total_steps.max(1),
        }
    }

    /// The learning rate of the next step: linear warmup, then linear decay to 0.
    pub fn lr(&self) -> f32 {
        let t = self.step as f32 + 1.0;
        let total = self.total_steps as f32;
        let warm = (self.cfg.warmup * total).max(1.0);
        if t <= warm {
            self.cfg.lr * t / warm
        } else {
            self.cfg.lr * ((total - t) / (total - warm).max(1.0)).max(0.0)
        }
    }

    /// One update of `params` with gradient `grad`; `decay[i]` says whether weight decay
    /// applies to parameter `i` (not to biases, by convention).
    pub fn update(&mut self, params: &mut [f32], grad: &[f32], decay: &dyn Fn(usize) -> bool) {
        let lr = self.lr();
        self.step += 1;
        let c = &self.cfg;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2 = 1.0 - c.beta2.powi(self.step as i32);
        for i in 0..params.len() {
            let g = grad[i];
            self.m[i] = c.beta1 * self.m[i] + (1.0 - c.beta1) * g;
            self.v[i] = c.beta2 * self.v[i] + (1.0 - c.beta2) * g * g;
            let mhat = self.m[i] / bc1;
            let vhat = self.v[i] / bc2;
            if decay(i) {
                params[i] -= lr * c.weight_decay * params[i];
            }
            params[i] -= lr * mhat / (vhat.sqrt() + c.eps);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays() {
        let mut o = AdamW::new(
            AdamWConfig {
                lr: 1.0,
                warmup: 0.1,
                ..Default::default()
            },
            1,
            100,
        );
        let mut lrs = Vec::new();
        let mut p = [0.0f32];
        for _ in 0..100 {
            lrs.push(o.lr());
            o.update(&mut p, &[0.0], &|_| false);
        }
        assert!((lrs[9] - 1.0).abs() < 1e-6);
        assert!(lrs[0] < lrs[5] && lrs[50] > lrs[90]);
        assert!(lrs[99] >= 0.0 && lrs[99] < 0.02);
    }

    #[test]
    fn minimizes_a_quadratic() {
        let mut o = AdamW::new(
            AdamWConfig {
                lr: 0.1,
                weight_decay: 0.0,
                warmup: 0.0,
                ..Default::default()
            },
            2,
            500,
        );
        let mut p = [3.0f32, -2.0];
        for _ in 0..500 {
            let g = [2.0 * (p[0] - 1.0), 2.0 * (p[1] + 0.5)];
            o.update(&mut p, &g, &|_| true);
        }
        assert!(
            (p[0] - 1.0).abs() < 1e-2 && (p[1] + 0.5).abs() < 1e-2,
            "{p:?}"
        );
    }
}
