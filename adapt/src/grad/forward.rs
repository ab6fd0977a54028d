use super::*;

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

pub(crate) fn run_forward<B: AsRef<[u8]>>(
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
pub(crate) struct HeadForward {
    /// Input of the trainable output layer, `[seqs, H]`.
    pub(crate) feats: Vec<f32>,
    /// File head: the pooler's tanh outputs (= feats) and first-token states.
    pub(crate) cls: Vec<f32>,
    /// Pooled head: the embeddings before normalization, and their norms.
    pub(crate) pooled: Vec<f32>,
    pub(crate) norms: Vec<f32>,
}

pub(crate) fn head_input<B: AsRef<[u8]>>(
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
