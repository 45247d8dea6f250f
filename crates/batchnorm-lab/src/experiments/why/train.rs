//! Training one of the three networks, measuring at the chosen steps.

use std::time::Instant;

use batchnorm_nn::data::Split;
use batchnorm_nn::layers::Mode;
use batchnorm_nn::Sequential;

use super::drift::{self, LayerStats};
use super::ics::{self, LayerIcs};
use super::landscape::{self, Landscape};
use super::network::{activation_layers, batch_norm_layers, shifted_layers, Net};
use super::params::weight;
use super::Config;
use crate::experiments::evaluate::Accuracy;
use crate::experiments::sampler::order_seed;
use crate::experiments::trainer::Trainer;
use crate::experiments::LabError;
use crate::progress::NetProgress;

/// The test accuracy and the hidden pre-activations at one step.
#[derive(Debug, Clone, PartialEq)]
pub struct Eval {
    /// SGD steps done.
    pub step: usize,
    /// Mean training-batch loss over the steps since the previous evaluation (NaN at step 0).
    pub train_loss: f64,
    /// Accuracy on the 10,000 test images (BN with running statistics, noise at its mean).
    pub test_accuracy: f64,
    /// Per hidden layer, its pre-activations over the probe batch.
    pub layers: Vec<LayerStats>,
    /// Per batch normalization, the mean over channels of the standard deviation of its input
    /// over the probe batch (and the positions of a conv net; empty without BN): sigma in Santurkar et al.'s Theorem 4.1, where
    /// BN scales the gradient by gamma / sigma.
    pub bn_input_std: Vec<f64>,
    /// Per batch normalization, the mean over channels of `gamma / sigma` (gamma its weight, sigma
    /// the std of its input over the probe batch): the factor by which BN scales the gradient
    /// reaching its input (Theorem 4.1); above 1, BN amplifies the gradient.
    pub bn_gain: Vec<f64>,
}

/// The gradient measurements at one step, on that step's training batch before its update.
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    /// SGD steps done before the measurement.
    pub step: usize,
    /// Per layer with weights after the first (layers 2, 3, 4 of the MLP; the second
    /// convolution and the linear layer of the conv net), gradient-based ICS.
    pub ics: Vec<LayerIcs>,
    /// The loss landscape along the gradient.
    pub landscape: Landscape,
}

/// Everything one network's run produced.
#[derive(Debug, Clone)]
pub struct NetRun {
    /// Which network.
    pub net: Net,
    /// At step 0, every `measure_every` steps and at the end.
    pub evals: Vec<Eval>,
    /// At step 0 and every `measure_every` steps before the end.
    pub measured: Vec<Measured>,
    /// Seconds of the run (training and measurements).
    pub seconds: f64,
}

impl NetRun {
    /// The test accuracy at the last evaluation.
    pub fn final_test_accuracy(&self) -> f64 {
        self.evals.last().map_or(f64::NAN, |e| e.test_accuracy)
    }

    /// The [`drift::change`] from evaluation `i - 1` to evaluation `i` (NaN for the first).
    pub fn change_at(&self, i: usize) -> f64 {
        match (
            i.checked_sub(1).and_then(|p| self.evals.get(p)),
            self.evals.get(i),
        ) {
            (Some(a), Some(b)) => drift::change(&a.layers, &b.layers),
            _ => f64::NAN,
        }
    }

    /// The run's drift: the mean change of the hidden units' means and standard deviations
    /// between consecutive evaluations ([`drift::drift`]).
    pub fn drift(&self) -> f64 {
        let stats: Vec<&[LayerStats]> = self.evals.iter().map(|e| e.layers.as_slice()).collect();
        drift::drift(&stats)
    }
}

/// What every run reads.
#[derive(Debug)]
pub(super) struct Inputs<'a> {
    pub train: &'a Split,
    pub test: &'a Split,
    /// The probe batch, `probe_size * 784` pixels.
    pub probe: &'a [f32],
    pub probe_size: usize,
    /// The landscape's step sizes.
    pub etas: &'a [f64],
    /// Per hidden layer, the unit whose percentiles are kept.
    pub probe_units: &'a [usize],
    /// Test images per evaluation forward pass.
    pub eval_batch: usize,
}

/// Trains `model` (the network `net`) for `cfg.steps` SGD steps, measuring as documented on
/// [`NetRun`].
///
/// # Errors
/// Any error of the training stack.
pub(super) fn train(
    net: Net,
    model: Sequential<f32>,
    inputs: &Inputs<'_>,
    cfg: &Config,
    bar: &NetProgress,
) -> Result<NetRun, LabError> {
    let start = Instant::now();
    let bs = cfg.batch_size;
    let acts = activation_layers(&model);
    let bns = batch_norm_layers(&model);
    let shifted = shifted_layers(&model);
    let mut trainer = Trainer::new(model, cfg.lr, bs, order_seed(cfg.seed), inputs.train.len())?;
    let mut accuracy = Accuracy::new(inputs.test);
    let mut evaluate = |model: &mut Sequential<f32>, step, train_loss| {
        let test_accuracy =
            accuracy.run_chunked(model, inputs.test, Mode::Eval, inputs.eval_batch)?;
        let n = inputs.probe_size;
        let layers = drift::measure(model, inputs.probe, n, &acts, inputs.probe_units)?;
        // The BN inputs of the same probe pass, per channel.
        let (mut bn_input_std, mut bn_gain) = (Vec::new(), Vec::new());
        for &i in &bns {
            let gamma = weight(model, i, false).unwrap_or_default();
            let sigma = drift::channel_stds(model.activation(i, n)?, n, gamma.len());
            let gains: Vec<f64> = gamma
                .iter()
                .zip(&sigma)
                .map(|(&g, &s)| f64::from(g) / s)
                .collect();
            bn_input_std.push(mean(&sigma));
            bn_gain.push(mean(&gains));
        }
        Ok::<_, LabError>(Eval {
            step,
            train_loss,
            test_accuracy,
            layers,
            bn_input_std,
            bn_gain,
        })
    };
    let mut evals = vec![evaluate(&mut trainer.model, 0, f64::NAN)?];
    let mut measured = Vec::new();
    let (mut loss_sum, mut correct, mut since) = (0.0, 0usize, 0usize);
    for step in 1..=cfg.steps {
        let s = trainer.forward_backward(inputs.train)?;
        let done = step - 1;
        if done.is_multiple_of(cfg.measure_every) {
            let lr = trainer.lr();
            let labels = trainer.labels().to_vec();
            let ics = ics::measure(&mut trainer.model, bs, &labels, lr, &shifted)?;
            let landscape = landscape::measure(&mut trainer.model, bs, &labels, inputs.etas)?;
            measured.push(Measured {
                step: done,
                ics,
                landscape,
            });
        }
        trainer.update()?;
        loss_sum += s.loss;
        correct += s.correct;
        since += 1;
        if step.is_multiple_of(cfg.measure_every) || step == cfg.steps {
            let e = evaluate(&mut trainer.model, step, loss_sum / since as f64)?;
            let loud = (step / cfg.measure_every).is_multiple_of(10) || step == cfg.steps;
            let batch_accuracy = correct as f64 / (since * bs) as f64;
            bar.report(
                step as u64,
                e.train_loss,
                batch_accuracy,
                e.test_accuracy,
                loud,
            );
            bar.set_step(step as u64);
            evals.push(e);
            (loss_sum, correct, since) = (0.0, 0, 0);
        }
    }
    Ok(NetRun {
        net,
        evals,
        measured,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// The mean of `values` (NaN for none).
fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}
