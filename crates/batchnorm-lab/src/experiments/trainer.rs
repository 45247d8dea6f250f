//! One network's training state and its SGD step.

use std::time::Instant;

use batchnorm_nn::data::{Mnist, Split};
use batchnorm_nn::layers::Mode;
use batchnorm_nn::{LossStats, Sequential, Sgd, SgdConfig, SoftmaxCrossEntropy};

use super::evaluate::Accuracy;
use super::sampler::{Sampler, SamplerState};
use super::LabError;
use crate::progress::NetProgress;

/// A model, plain SGD (no momentum, no weight decay), softmax cross-entropy over 10 classes and
/// a seeded batch order.
#[derive(Debug)]
pub(crate) struct Trainer {
    /// The network being trained.
    pub(crate) model: Sequential<f32>,
    sgd: Sgd<f32>,
    ce: SoftmaxCrossEntropy,
    sampler: Sampler,
    labels: Vec<u8>,
    batch: usize,
}

impl Trainer {
    /// Trains `model` with learning rate `lr` on batches of `batch` images of a training set
    /// of `train_len`, in the order fixed by `order_seed`.
    ///
    /// # Errors
    /// [`LabError::Nn`] for a bad learning rate.
    pub(crate) fn new(
        mut model: Sequential<f32>,
        lr: f64,
        batch: usize,
        order_seed: u64,
        train_len: usize,
    ) -> Result<Self, LabError> {
        let sgd = Sgd::new(
            SgdConfig {
                lr,
                momentum: 0.0,
                weight_decay: 0.0,
            },
            &mut model,
        )?;
        Ok(Trainer {
            model,
            sgd,
            ce: SoftmaxCrossEntropy::new(10)?,
            sampler: Sampler::new(order_seed, train_len, batch),
            labels: vec![0; batch],
            batch,
        })
    }

    /// Forward and backward on the next batch, without updating the weights: the gradients are
    /// left in the model's parameters. Returns the batch's loss and correct count.
    ///
    /// # Errors
    /// Any error of the training stack.
    pub(crate) fn forward_backward(&mut self, train: &Split) -> Result<LossStats, LabError> {
        let bs = self.batch;
        self.sampler.advance();
        train.gather(
            self.sampler.current(),
            self.model.input_mut(bs)?,
            &mut self.labels,
        )?;
        if let Some(next) = self.sampler.upcoming() {
            // Random rows of a 47 MB array miss every cache: fetch the next batch meanwhile.
            train.prefetch(next);
        }
        self.model.forward(bs, Mode::Train)?;
        let (out, grad) = self.model.output_and_grad(bs)?;
        let s = self.ce.forward_backward(out, &self.labels, grad)?;
        self.model.backward(bs, false)?;
        Ok(s)
    }

    /// The batch order's state (for checkpoints). Plain SGD keeps no state of its own: the
    /// model and this are all a resumed run needs.
    pub(crate) fn sampler_state(&self) -> SamplerState {
        self.sampler.state()
    }

    /// Continues the batch order from `state` (taken by [`Trainer::sampler_state`]).
    ///
    /// # Errors
    /// A message if `state` does not fit this training set and batch size.
    pub(crate) fn restore_sampler(&mut self, state: SamplerState) -> Result<(), String> {
        self.sampler = Sampler::from_state(state, self.sampler.epoch_len(), self.batch)?;
        Ok(())
    }

    /// One SGD step on the next batch; returns the batch's loss (before the update) and
    /// correct count.
    ///
    /// # Errors
    /// Any error of the training stack.
    pub(crate) fn step(&mut self, train: &Split) -> Result<LossStats, LabError> {
        let s = self.forward_backward(train)?;
        self.update()?;
        Ok(s)
    }

    /// The SGD update from the gradients left in the model's parameters (by
    /// [`Trainer::forward_backward`]): `step` is `forward_backward` then `update`, with room
    /// between the two to measure at the current weights.
    ///
    /// # Errors
    /// Only if the model's parameters changed shape.
    pub(crate) fn update(&mut self) -> Result<(), LabError> {
        self.sgd.step(&mut self.model)?;
        Ok(())
    }

    /// The labels of the current batch (its images are in the model's input buffer).
    pub(crate) fn labels(&self) -> &[u8] {
        &self.labels
    }

    /// The learning rate.
    pub(crate) fn lr(&self) -> f64 {
        self.sgd.config().lr
    }
}

/// A run of `steps` SGD steps of `trainer` on batches of `batch`, evaluating test accuracy
/// (running statistics) at step 0 and `evals` times evenly spaced; `on_loss(step, loss)` sees
/// every step's training loss. Returns the (examples seen, test accuracy) curve and the seconds
/// of training (evaluations excluded).
///
/// # Errors
/// Any error of the training stack.
pub(crate) fn train_evaluating(
    trainer: &mut Trainer,
    data: &Mnist,
    steps: usize,
    evals: usize,
    bar: &NetProgress,
    mut on_loss: impl FnMut(usize, f64),
) -> Result<(Vec<(usize, f64)>, f64), LabError> {
    let mut acc = Accuracy::new(&data.test);
    let eval_at: Vec<usize> = (1..=evals).map(|k| (steps * k / evals).max(1)).collect();
    let mut curve = vec![(0, acc.run(&mut trainer.model, &data.test, Mode::Eval)?)];
    let mut train_seconds = 0.0;
    let mut t = Instant::now();
    for step in 1..=steps {
        on_loss(step, trainer.step(&data.train)?.loss);
        if step.is_multiple_of(1000) {
            bar.set_step(step as u64);
        }
        if eval_at.contains(&step) {
            train_seconds += t.elapsed().as_secs_f64();
            let a = acc.run(&mut trainer.model, &data.test, Mode::Eval)?;
            curve.push((step * trainer.batch, a));
            t = Instant::now();
        }
    }
    train_seconds += t.elapsed().as_secs_f64();
    Ok((curve, train_seconds))
}
