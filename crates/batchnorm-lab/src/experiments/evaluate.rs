//! Test-set accuracy in evaluation mode, and what a run's evaluations show.

use batchnorm_nn::data::Split;
use batchnorm_nn::layers::Mode;
use batchnorm_nn::{count_correct, Sequential};

use super::LabError;

/// Test images per evaluation forward pass: a model evaluated with `Accuracy` needs at least
/// this capacity (or the test set's size, if smaller).
pub const EVAL_CHUNK: usize = 1000;

/// Accuracy on a whole split with buffers allocated once.
#[derive(Debug)]
pub(crate) struct Accuracy {
    index: Vec<usize>,
    labels: Vec<u8>,
    /// Rows of the last run's outputs holding a NaN or an infinity (no prediction).
    pub(crate) non_finite_rows: usize,
}

impl Accuracy {
    /// An evaluator for `split`.
    pub(crate) fn new(split: &Split) -> Self {
        Accuracy {
            index: (0..split.len()).collect(),
            labels: vec![0; EVAL_CHUNK.min(split.len())],
            non_finite_rows: 0,
        }
    }

    /// The fraction of `split` that `model` classifies correctly in `mode` (batch normalization
    /// with running statistics in [`Mode::Eval`]), fed in chunks of [`EVAL_CHUNK`] images.
    /// Outputs with a NaN count as wrong.
    ///
    /// # Errors
    /// [`LabError::Nn`] if the model's capacity is below the chunk or its input is not an image.
    pub(crate) fn run(
        &mut self,
        model: &mut Sequential<f32>,
        split: &Split,
        mode: Mode,
    ) -> Result<f64, LabError> {
        self.run_chunked(model, split, mode, EVAL_CHUNK)
    }

    /// As [`Accuracy::run`] with the split fed in consecutive batches of `chunk` images (at
    /// most [`EVAL_CHUNK`]); a last smaller batch is fed as it is, except that a last single
    /// image joins the batch before it when that stays within [`EVAL_CHUNK`]. With [`Mode::BatchStats`], batch normalization
    /// uses each batch's own statistics.
    ///
    /// # Errors
    /// As [`Accuracy::run`]; a split of one image in [`Mode::BatchStats`] (no variance).
    pub(crate) fn run_chunked(
        &mut self,
        model: &mut Sequential<f32>,
        split: &Split,
        mode: Mode,
        chunk: usize,
    ) -> Result<f64, LabError> {
        let mut correct = 0;
        self.non_finite_rows = 0;
        let classes = model.out_len();
        let chunk = chunk.clamp(1, EVAL_CHUNK);
        let len = self.index.len();
        let mut start = 0;
        while start < len {
            let mut end = (start + chunk).min(len);
            if len - end == 1 && end + 1 - start <= EVAL_CHUNK {
                end = len;
            }
            let chunk = &self.index[start..end];
            start = end;
            let n = chunk.len();
            split.gather(chunk, model.input_mut(n)?, &mut self.labels[..n])?;
            let out = model.forward(n, mode)?;
            let labels = &self.labels[..n];
            if out.iter().all(|v| v.is_finite()) {
                correct += count_correct(out, classes, labels)?;
            } else {
                // A diverged network: a row with a NaN or infinity is no prediction.
                for (row, l) in out.chunks_exact(classes).zip(labels.chunks_exact(1)) {
                    if row.iter().all(|v| v.is_finite()) {
                        correct += count_correct(row, classes, l)?;
                    } else {
                        self.non_finite_rows += 1;
                    }
                }
            }
        }
        Ok(correct as f64 / self.index.len().max(1) as f64)
    }
}

/// The first evaluated step whose test accuracy is at or above `threshold`, from
/// `(step, test accuracy)` in the order evaluated.
pub(crate) fn first_step_reaching(
    evals: impl IntoIterator<Item = (usize, f64)>,
    threshold: f64,
) -> Option<usize> {
    evals
        .into_iter()
        .find(|&(_, a)| a >= threshold)
        .map(|(step, _)| step)
}

/// The best test accuracy and its step (the first on ties), from `(step, test accuracy)` in
/// the order evaluated.
pub(crate) fn best_accuracy(evals: impl IntoIterator<Item = (usize, f64)>) -> Option<(f64, usize)> {
    evals
        .into_iter()
        .fold(None, |best: Option<(f64, usize)>, (step, a)| match best {
            Some((b, _)) if b >= a => best,
            _ => Some((a, step)),
        })
}

#[cfg(test)]
mod tests {
    use super::{best_accuracy, first_step_reaching};

    #[test]
    fn first_step_and_best_follow_the_evaluation_order() {
        let evals = [(0, 0.1), (100, 0.9), (200, 0.95), (300, 0.95), (400, 0.93)];
        assert_eq!(first_step_reaching(evals, 0.9), Some(100));
        assert_eq!(first_step_reaching(evals, 0.95), Some(200));
        assert_eq!(first_step_reaching(evals, 0.99), None);
        assert_eq!(best_accuracy(evals), Some((0.95, 200)), "the first on ties");
        assert_eq!(best_accuracy([]), None);
    }
}
