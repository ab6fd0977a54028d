//! Accuracy, macro-F1 and the confusion matrix.

/// Scores of predictions against gold labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// Class names.
    pub labels: Vec<String>,
    /// `confusion[gold][predicted]`.
    pub confusion: Vec<Vec<usize>>,
    /// Fraction correct.
    pub accuracy: f64,
    /// Unweighted mean of the per-class F1 scores.
    pub macro_f1: f64,
    /// Examples scored.
    pub n: usize,
}

/// Scores `predicted` against `gold` (indices into `labels`).
pub fn report(labels: &[String], gold: &[usize], predicted: &[usize]) -> Report {
    let k = labels.len();
    let mut confusion = vec![vec![0usize; k]; k];
    for (&g, &p) in gold.iter().zip(predicted) {
        confusion[g][p] += 1;
    }
    let n = gold.len();
    let correct: usize = (0..k).map(|i| confusion[i][i]).sum();
    let f1s: Vec<f64> = (0..k)
        .map(|c| {
            let tp = confusion[c][c] as f64;
            let pred: usize = (0..k).map(|g| confusion[g][c]).sum();
            let gold: usize = confusion[c].iter().sum();
            if pred + gold == 0 {
                0.0
            } else {
                2.0 * tp / (pred + gold) as f64
            }
        })
        .collect();
    Report {
        labels: labels.to_vec(),
        confusion,
        accuracy: if n == 0 {
            0.0
        } else {
            correct as f64 / n as f64
        },
        macro_f1: f1s.iter().sum::<f64>() / k.max(1) as f64,
        n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_by_hand() {
        let labels = vec!["a".to_string(), "b".to_string()];
        // gold a a a b, predicted a a b b: acc 3/4; F1(a) = 2*2/(2+3) = 0.8, F1(b) = 2*1/(2+1)
        let r = report(&labels, &[0, 0, 0, 1], &[0, 0, 1, 1]);
        assert_eq!(r.confusion, vec![vec![2, 1], vec![0, 1]]);
        assert!((r.accuracy - 0.75).abs() < 1e-12);
        assert!((r.macro_f1 - (0.8 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
    }
}
