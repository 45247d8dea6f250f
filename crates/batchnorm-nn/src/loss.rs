//! Softmax cross-entropy.

use crate::error::{check_len, NnError, Result};
use crate::scalar::Scalar;

/// Mean softmax cross-entropy over a batch of `n` rows of `classes` logits.
///
/// With `p_ij = e^{z_ij} / sum_k e^{z_ik}` and labels `t_i`,
/// `L = -(1/n) sum_i ln p_{i,t_i}`, computed as `ln sum_k e^{z_ik - m_i} - (z_{i,t_i} - m_i)` with
/// `m_i = max_k z_ik` so nothing overflows. Gradient: `dL/dz_ij = (p_ij - [j = t_i]) / n`.
#[derive(Debug, Clone, Copy)]
pub struct SoftmaxCrossEntropy {
    classes: usize,
}

/// The result of [`SoftmaxCrossEntropy::forward_backward`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossStats {
    /// Mean loss over the batch.
    pub loss: f64,
    /// Number of rows whose largest logit is the label (first maximum on ties).
    pub correct: usize,
}

impl SoftmaxCrossEntropy {
    /// A loss over `classes` classes.
    ///
    /// # Errors
    /// [`NnError::Empty`] if `classes` is 0.
    pub fn new(classes: usize) -> Result<Self> {
        if classes == 0 {
            return Err(NnError::Empty {
                what: "class count",
            });
        }
        Ok(SoftmaxCrossEntropy { classes })
    }

    /// The number of classes.
    pub fn classes(&self) -> usize {
        self.classes
    }

    fn check<L: Copy + Into<usize>>(&self, logits_len: usize, labels: &[L]) -> Result<usize> {
        let n = labels.len();
        check_len("logits", logits_len, n * self.classes)?;
        if n == 0 {
            return Err(NnError::BatchSize {
                capacity: usize::MAX,
                got: 0,
            });
        }
        for (index, &l) in labels.iter().enumerate() {
            let label = l.into();
            if label >= self.classes {
                return Err(NnError::LabelOutOfRange {
                    index,
                    label,
                    classes: self.classes,
                });
            }
        }
        Ok(n)
    }

    /// Mean loss and correct count, and `dlogits = dL/dlogits` (same layout as `logits`).
    ///
    /// # Errors
    /// Length mismatches, an empty batch, or a label outside `0..classes`.
    pub fn forward_backward<T: Scalar, L: Copy + Into<usize>>(
        &self,
        logits: &[T],
        labels: &[L],
        dlogits: &mut [T],
    ) -> Result<LossStats> {
        let n = self.check(logits.len(), labels)?;
        check_len("dlogits", dlogits.len(), logits.len())?;
        let inv_n = T::from_f64(1.0 / n as f64);
        let mut loss = 0.0f64;
        let mut correct = 0;
        for ((z, g), &l) in logits
            .chunks_exact(self.classes)
            .zip(dlogits.chunks_exact_mut(self.classes))
            .zip(labels)
        {
            let t = l.into();
            let (m, arg) = max_arg(z);
            correct += usize::from(arg == t);
            let mut sum = T::ZERO;
            for (gj, &zj) in g.iter_mut().zip(z) {
                let e = (zj - m).exp();
                *gj = e;
                sum += e;
            }
            loss += sum.to_f64().ln() - (z[t] - m).to_f64();
            let scale = inv_n / sum;
            for gj in g.iter_mut() {
                *gj = *gj * scale;
            }
            g[t] = g[t] - inv_n;
        }
        Ok(LossStats {
            loss: loss / n as f64,
            correct,
        })
    }

    /// Mean loss and correct count only (no gradient).
    ///
    /// # Errors
    /// As [`SoftmaxCrossEntropy::forward_backward`].
    pub fn forward<T: Scalar, L: Copy + Into<usize>>(
        &self,
        logits: &[T],
        labels: &[L],
    ) -> Result<LossStats> {
        let n = self.check(logits.len(), labels)?;
        let mut loss = 0.0f64;
        let mut correct = 0;
        for (z, &l) in logits.chunks_exact(self.classes).zip(labels) {
            let t = l.into();
            let (m, arg) = max_arg(z);
            correct += usize::from(arg == t);
            let sum: f64 = z.iter().map(|&zj| (zj - m).exp().to_f64()).sum();
            loss += sum.ln() - (z[t] - m).to_f64();
        }
        Ok(LossStats {
            loss: loss / n as f64,
            correct,
        })
    }
}

/// Count of rows of `logits` (`classes` wide) whose first largest entry is the label.
///
/// # Errors
/// Length mismatch between `logits` and `labels`.
pub fn count_correct<T: Scalar, L: Copy + Into<usize>>(
    logits: &[T],
    classes: usize,
    labels: &[L],
) -> Result<usize> {
    check_len("logits", logits.len(), labels.len() * classes)?;
    if classes == 0 {
        return Ok(0);
    }
    Ok(logits
        .chunks_exact(classes)
        .zip(labels)
        .filter(|(z, &l)| max_arg(z).1 == l.into())
        .count())
}

/// Largest value and the index of its first occurrence; `z` must not be empty.
fn max_arg<T: Scalar>(z: &[T]) -> (T, usize) {
    let mut m = z[0];
    let mut arg = 0;
    for (j, &v) in z.iter().enumerate().skip(1) {
        if v > m {
            m = v;
            arg = j;
        }
    }
    (m, arg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_logits_give_ln_k_and_extremes_stay_finite() {
        let ce = SoftmaxCrossEntropy::new(10).unwrap();
        let z = vec![0.0f64; 20];
        let s = ce.forward(&z, &[3u8, 7u8]).unwrap();
        assert!((s.loss - 10f64.ln()).abs() < 1e-15);
        let mut z = vec![0.0f32; 10];
        z[2] = 1e30;
        let mut g = vec![0.0f32; 10];
        let s = ce.forward_backward(&z, &[2u8], &mut g).unwrap();
        assert_eq!(s.loss, 0.0);
        assert_eq!(s.correct, 1);
        assert!(g.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn bad_labels_and_lengths_are_errors() {
        let ce = SoftmaxCrossEntropy::new(3).unwrap();
        let z = vec![0.0f32; 6];
        let mut g = vec![0.0f32; 6];
        assert!(matches!(
            ce.forward_backward(&z, &[0u8, 3u8], &mut g),
            Err(NnError::LabelOutOfRange { index: 1, .. })
        ));
        assert!(ce.forward(&z, &[0u8]).is_err());
        assert!(ce.forward_backward(&z, &[0u8, 1u8], &mut g[..5]).is_err());
        assert!(ce.forward::<f32, u8>(&[], &[]).is_err());
    }
}
