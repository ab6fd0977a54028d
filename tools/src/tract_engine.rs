//! `--engine tract`: an ONNX encoder run by tract instead of petal's own encoder, behind the same
//! embed interface. Used for ONNX models petal cannot map, and as an independent oracle in tests.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use tokenizers::{Tokenizer, TruncationParams};
use tract_onnx::prelude::*;

type Plan = Arc<TypedRunnableModel>;

/// An ONNX sentence encoder run by tract.
pub struct TractEncoder {
    model: InferenceModel,
    /// Names of the model's inputs, in order.
    inputs: Vec<String>,
    tokenizer: Tokenizer,
    /// Plans specialized to one sequence length, built on first use.
    plans: Mutex<HashMap<usize, Plan>>,
    hidden: Option<usize>,
}

impl std::fmt::Debug for TractEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TractEncoder")
            .field("inputs", &self.inputs)
            .finish_non_exhaustive()
    }
}

impl TractEncoder {
    /// Loads `onnx` with the tokenizer at `tokenizer` (truncating at `max_length` tokens).
    pub fn load(onnx: &Path, tokenizer: &Path, max_length: usize) -> Result<Self> {
        let model = tract_onnx::onnx()
            .model_for_path(onnx)
            .map_err(|e| anyhow!("{}: tract cannot load this ONNX file: {e}", onnx.display()))?;
        let inputs = model
            .input_outlets()?
            .iter()
            .map(|o| model.node(o.node).name.clone())
            .collect::<Vec<_>>();
        for i in &inputs {
            if !["input_ids", "attention_mask", "token_type_ids"].contains(&i.as_str()) {
                bail!("{}: unexpected model input \"{i}\"", onnx.display());
            }
        }
        let mut tok =
            Tokenizer::from_file(tokenizer).map_err(|e| anyhow!("{}: {e}", tokenizer.display()))?;
        tok.with_padding(None);
        tok.with_truncation(Some(TruncationParams {
            max_length,
            ..Default::default()
        }))
        .map_err(|e| anyhow!("{}: {e}", tokenizer.display()))?;
        Ok(TractEncoder {
            model,
            inputs,
            tokenizer: tok,
            plans: Mutex::new(HashMap::new()),
            hidden: None,
        })
    }

    fn plan(&self, n: usize) -> Result<Plan> {
        if let Some(p) = self
            .plans
            .lock()
            .map_err(|_| anyhow!("poisoned plan cache"))?
            .get(&n)
        {
            return Ok(p.clone());
        }
        let mut m = self.model.clone();
        for i in 0..self.inputs.len() {
            m.set_input_fact(i, InferenceFact::dt_shape(i64::datum_type(), tvec!(1, n)))?;
        }
        let plan = m
            .into_optimized()
            .context("tract cannot optimize this model")?
            .into_runnable()?;
        self.plans
            .lock()
            .map_err(|_| anyhow!("poisoned plan cache"))?
            .insert(n, plan.clone());
        Ok(plan)
    }

    /// The last hidden states `[n, H]` of token ids `ids`: the first rank-3 output.
    pub fn token_states(&self, ids: &[u32], type_ids: &[u32]) -> Result<(Vec<f32>, usize)> {
        let n = ids.len();
        let plan = self.plan(n)?;
        let tensor =
            |v: Vec<i64>| -> Result<TValue> { Ok(Tensor::from_shape(&[1, n], &v)?.into()) };
        let mut values = TVec::new();
        for name in &self.inputs {
            values.push(match name.as_str() {
                "input_ids" => tensor(ids.iter().map(|&i| i as i64).collect())?,
                "attention_mask" => tensor(vec![1; n])?,
                _ => tensor(type_ids.iter().map(|&i| i as i64).collect())?,
            });
        }
        let outputs = plan.run(values)?;
        for o in outputs.iter() {
            if o.shape().len() == 3
                && o.shape()[1] == n
                && self.hidden.is_none_or(|h| h == o.shape()[2])
            {
                let h = o.shape()[2];
                let v = o.to_plain_array_view::<f32>()?.iter().copied().collect();
                return Ok((v, h));
            }
        }
        bail!("the model has no [1, {n}, hidden] output")
    }

    /// Mean-pooled (optionally L2-normalized) embeddings of `texts`.
    pub fn embed(&self, texts: &[&str], normalize: bool) -> Result<Vec<Vec<f32>>> {
        texts
            .iter()
            .map(|t| {
                let enc = self
                    .tokenizer
                    .encode(*t, true)
                    .map_err(|e| anyhow!("tokenizer: {e}"))?;
                let (states, h) = self.token_states(enc.get_ids(), enc.get_type_ids())?;
                let mut e = petal_runtime::bert::mean_rows(&states, h);
                if normalize {
                    petal_runtime::bert::l2_normalize(&mut e);
                }
                Ok(e)
            })
            .collect()
    }
}
