//! Training one network, with its periodic evaluations.

use std::time::Instant;

use batchnorm_nn::data::Split;
use batchnorm_nn::layers::Mode;
use batchnorm_nn::Sequential;

use super::checkpoint::{self, NetState, Resumed};
use super::network::{probe_layer, Variant};
use super::{Config, LabError, PROBE_UNIT};
use crate::experiments::evaluate::{best_accuracy, first_step_reaching, Accuracy};
use crate::experiments::sampler::order_seed;
use crate::experiments::trainer::Trainer;
use crate::percentile::percentiles;
use crate::progress::NetProgress;

/// The percentiles of the probed sigmoid input that are tracked.
pub const QUANTILES: [f64; 3] = [15.0, 50.0, 85.0];

/// One evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalRecord {
    /// Training steps done.
    pub step: usize,
    /// Mean training loss over the steps since the previous evaluation (NaN at step 0).
    pub train_loss: f64,
    /// Accuracy on the training batches since the previous evaluation (NaN at step 0).
    pub train_accuracy: f64,
    /// Accuracy on the whole test set (BN in evaluation mode: running statistics).
    pub test_accuracy: f64,
    /// 15th, 50th and 85th percentiles of the probed sigmoid's input over the probe batch.
    pub percentiles: [f64; 3],
}

/// Everything one network's run produced.
#[derive(Debug, Clone)]
pub struct NetRun {
    /// Which network.
    pub variant: Variant,
    /// Evaluations, at step 0, every `eval_every` steps and at the last step.
    pub evals: Vec<EvalRecord>,
    /// Seconds spent in training steps (batch gathering included).
    pub train_seconds: f64,
    /// Seconds spent evaluating.
    pub eval_seconds: f64,
}

impl NetRun {
    /// Training steps per second, evaluation excluded.
    pub fn steps_per_second(&self, steps: usize) -> f64 {
        steps as f64 / self.train_seconds
    }

    /// The first evaluated step at which test accuracy reached `threshold`.
    pub fn steps_to(&self, threshold: f64) -> Option<usize> {
        first_step_reaching(self.accuracies(), threshold)
    }

    /// The last evaluation.
    pub fn last(&self) -> Option<&EvalRecord> {
        self.evals.last()
    }

    /// The best test accuracy and the step it was reached (first on ties).
    pub fn best(&self) -> Option<(f64, usize)> {
        best_accuracy(self.accuracies())
    }

    fn accuracies(&self) -> impl Iterator<Item = (usize, f64)> + '_ {
        self.evals.iter().map(|e| (e.step, e.test_accuracy))
    }
}

/// The data a network trains and is evaluated on, shared read-only between threads.
#[derive(Debug)]
pub struct Inputs<'a> {
    /// When this session of the run started.
    pub start: Instant,
    /// Training split.
    pub train: &'a Split,
    /// Test split.
    pub test: &'a Split,
    /// The probe batch, `PROBE_SIZE * 784` pixels scaled to [0, 1].
    pub probe: &'a [f32],
    /// Number of probe images.
    pub probe_size: usize,
}

/// Trains `model` for `cfg.steps` SGD steps, evaluating at step 0, every `cfg.eval_every`
/// steps and at the end; with `cfg.checkpoint_every`, saves a checkpoint at those steps and
/// at the end. With `resume`, continues from that checkpoint instead of from `model`'s
/// weights and step 0, exactly as the interrupted run would have.
///
/// The batch order depends only on `cfg.seed`, so both networks see the same batches.
///
/// # Errors
/// Any error of the training stack (none is expected with a valid configuration), or a
/// checkpoint that cannot be written or does not fit.
pub fn train(
    variant: Variant,
    model: Sequential<f32>,
    inputs: &Inputs<'_>,
    cfg: &Config,
    progress: &NetProgress,
    resume: Option<Resumed>,
) -> Result<NetRun, LabError> {
    let bs = cfg.batch_size;
    let mut trainer = Trainer::new(model, cfg.lr, bs, order_seed(cfg.seed), inputs.train.len())?;
    let mut evaluator = Evaluator::new(inputs, &trainer.model)?;
    let save_to = cfg
        .checkpoint_every
        .map(|every| (checkpoint::dir(cfg), every));
    // Wall-clock seconds of the run before this session.
    let mut earlier = 0.0;
    let mut st = match resume {
        Some(r) => {
            let st = r.restore(&mut trainer)?;
            earlier = st.wall_seconds;
            progress.set_step(st.step as u64);
            st
        }
        None => NetState::start(inputs.start.elapsed().as_secs_f64()),
    };
    if st.evals.is_empty() {
        let t = Instant::now();
        let first = evaluator.run(&mut trainer.model, 0, f64::NAN, f64::NAN)?;
        st.evals.push(first);
        st.eval_seconds += t.elapsed().as_secs_f64();
    }
    let mut t_train = Instant::now();
    for step in st.step + 1..=cfg.steps {
        let s = trainer.step(inputs.train)?;
        st.step = step;
        st.loss_sum += s.loss;
        st.correct += s.correct;
        st.since += 1;
        if step.is_multiple_of(100) {
            progress.set_step(step as u64);
        }
        if step.is_multiple_of(cfg.eval_every) || step == cfg.steps {
            st.train_seconds += t_train.elapsed().as_secs_f64();
            let t_eval = Instant::now();
            let loss = st.loss_sum / st.since as f64;
            let acc = st.correct as f64 / (st.since * bs) as f64;
            let rec = evaluator.run(&mut trainer.model, step, loss, acc)?;
            let loud = (step / cfg.eval_every).is_multiple_of(10) || step == cfg.steps;
            progress.report(step as u64, loss, acc, rec.test_accuracy, loud);
            st.evals.push(rec);
            (st.loss_sum, st.correct, st.since) = (0.0, 0, 0);
            st.eval_seconds += t_eval.elapsed().as_secs_f64();
            t_train = Instant::now();
        }
        if let Some((dir, every)) = &save_to {
            if step.is_multiple_of(*every) || step == cfg.steps {
                // After the step's evaluation, so the checkpoint holds it; not timed as training.
                st.train_seconds += t_train.elapsed().as_secs_f64();
                st.wall_seconds = earlier + inputs.start.elapsed().as_secs_f64();
                let sampler = trainer.sampler_state();
                checkpoint::save(dir, variant, cfg, &mut trainer.model, &st, &sampler)?;
                t_train = Instant::now();
            }
        }
    }
    progress.set_step(cfg.steps as u64);
    progress.finish();
    Ok(NetRun {
        variant,
        evals: st.evals,
        train_seconds: st.train_seconds,
        eval_seconds: st.eval_seconds,
    })
}

/// Test accuracy and the probe, with their buffers allocated once.
struct Evaluator<'a> {
    inputs: &'a Inputs<'a>,
    accuracy: Accuracy,
    probe_values: Vec<f64>,
    probe_layer: usize,
    width: usize,
}

impl<'a> Evaluator<'a> {
    fn new(inputs: &'a Inputs<'a>, model: &Sequential<f32>) -> Result<Self, LabError> {
        let probe_layer =
            probe_layer(model).ok_or(LabError::Setup("the network has no sigmoid to probe"))?;
        let width = model.layers()[probe_layer].in_len();
        Ok(Evaluator {
            inputs,
            accuracy: Accuracy::new(inputs.test),
            probe_values: Vec::with_capacity(inputs.probe_size),
            probe_layer,
            width,
        })
    }

    fn run(
        &mut self,
        model: &mut Sequential<f32>,
        step: usize,
        loss: f64,
        acc: f64,
    ) -> Result<EvalRecord, LabError> {
        // Test accuracy: running statistics (Mode::Eval).
        let test_accuracy = self.accuracy.run(model, self.inputs.test, Mode::Eval)?;
        // Probe: batch statistics as in training, running statistics untouched.
        let n = self.inputs.probe_size;
        model.forward_from(self.inputs.probe, n, Mode::BatchStats)?;
        let act = model.activation(self.probe_layer, n)?;
        self.probe_values.clear();
        self.probe_values.extend(
            act.chunks_exact(self.width)
                .map(|row| f64::from(row[PROBE_UNIT])),
        );
        let p = percentiles(&mut self.probe_values, &QUANTILES);
        Ok(EvalRecord {
            step,
            train_loss: loss,
            train_accuracy: acc,
            test_accuracy,
            percentiles: [p[0], p[1], p[2]],
        })
    }
}
