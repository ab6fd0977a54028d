use super::*;

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
pub(crate) fn cosine_and_grad(a: &[f32], b: &[f32]) -> (f32, Vec<f32>) {
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
