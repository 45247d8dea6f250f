//! The three ways of training: data-parallel with synchronised or per-rank BN (every rank),
//! and one process on the global batch (rank 0).

use std::sync::Arc;
use std::time::Instant;

use batchnorm_dist::Collective;
use batchnorm_nn::data::Mnist;
use batchnorm_nn::layers::{Linear, Mode};
use batchnorm_nn::{
    convert_sync_batch_norm, DataParallel, NnError, Sequential, Sgd, SgdConfig, SoftmaxCrossEntropy,
};

use super::counting::Counting;
use super::{Config, Variant, VariantRun, WIDTHS};
use crate::experiments::evaluate::Accuracy;
use crate::experiments::mlp::{self, Activation};
use crate::experiments::sampler::{order_seed, Sampler};
use crate::experiments::trainer::Trainer;
use crate::experiments::{LabError, EVAL_CHUNK};
use crate::progress::NetProgress;

/// The step after which parameters are compared between `sync` and `single`.
pub(super) const COMPARE_AT: usize = 100;

/// What rank 0 keeps of a run besides its evaluations: the parameters after
/// [`COMPARE_AT`] steps.
pub(super) type Snapshot = Option<Vec<Vec<f32>>>;

/// Every parameter tensor of `model` that its output depends on, in order: all but the
/// biases of layers followed by batch normalization, which subtracts them (their gradient is 0
/// up to rounding, their values rounding noise, so their relative differences mean nothing).
fn params(model: &mut Sequential<f32>) -> Vec<Vec<f32>> {
    let mut out = Vec::new();
    let names: Vec<&str> = model.layers().iter().map(|l| l.name()).collect();
    for (i, layer) in model.layers_mut().iter_mut().enumerate() {
        let before_bn = matches!(names.get(i + 1), Some(&("batch_norm" | "sync_batch_norm")));
        layer.visit_params(&mut |p| {
            if !(before_bn && p.name == "bias") {
                out.push(p.value.to_vec());
            }
        });
    }
    out
}

/// Evaluations: test accuracy (running statistics) on rank 0, the mean training loss since the
/// last evaluation over the global batch.
struct Evaluator<'a> {
    data: &'a Mnist,
    acc: Option<Accuracy>,
    bar: Option<&'a NetProgress>,
    evals: Vec<(usize, f64, f64)>,
    seconds: f64,
}

impl<'a> Evaluator<'a> {
    fn new(data: &'a Mnist, rank0: bool, bar: Option<&'a NetProgress>) -> Self {
        Self {
            data,
            acc: rank0.then(|| Accuracy::new(&data.test)),
            bar,
            evals: Vec::new(),
            seconds: 0.0,
        }
    }

    /// Records step `step` with mean training loss `loss`; test accuracy on rank 0 only (NaN
    /// elsewhere).
    fn eval(
        &mut self,
        model: &mut Sequential<f32>,
        step: usize,
        loss: f64,
        steps: usize,
    ) -> Result<(), LabError> {
        let start = Instant::now();
        let test = match &mut self.acc {
            Some(acc) => acc.run(model, &self.data.test, Mode::Eval)?,
            None => f64::NAN,
        };
        self.seconds += start.elapsed().as_secs_f64();
        self.evals.push((step, test, loss));
        if let Some(bar) = self.bar {
            bar.set_step(step as u64);
            bar.report(step as u64, loss, f64::NAN, test, step == steps);
        }
        Ok(())
    }
}

/// Data-parallel training on this rank's shard of every global batch of `ranks x
/// per_rank_batch` images, BN synchronised (`sync`) or per rank (`local`). Every rank calls
/// it; rank 0 evaluates.
pub(super) fn distributed(
    comm: &Arc<dyn Collective>,
    cfg: &Config,
    data: &Mnist,
    linears: &[Linear<f32>],
    variant: Variant,
    bar: Option<&NetProgress>,
) -> Result<(VariantRun, Snapshot), LabError> {
    let counting = Arc::new(Counting::new(Arc::clone(comm)));
    let counted: Arc<dyn Collective> = counting.clone();
    let mut model = mlp::build(linears, Activation::Sigmoid, true, EVAL_CHUNK)?;
    if variant == Variant::Sync {
        convert_sync_batch_norm(&mut model, &counted);
    }
    let mut dp = DataParallel::new(Arc::clone(&counted), &mut model)?;
    counting.take();
    let mut sgd = Sgd::new(plain_sgd(cfg.lr), &mut model)?;
    let ce = SoftmaxCrossEntropy::new(10)?;
    let global = comm.size() * cfg.per_rank_batch;
    let mut sampler = Sampler::new(order_seed(cfg.seed), data.train.len(), global);
    let shard = dp.shard(global);
    let mut x = vec![0.0f32; shard.len() * WIDTHS[0]];
    let mut labels = vec![0u8; shard.len()];
    let rank0 = comm.rank() == 0;
    let mut ev = Evaluator::new(data, rank0, bar);
    ev.eval(&mut model, 0, f64::NAN, cfg.steps)?;
    let (mut loss_sum, mut since, mut snapshot) = (0.0, 0, None);
    let mut train_seconds = 0.0;
    let mut t = Instant::now();
    for step in 1..=cfg.steps {
        sampler.advance();
        data.train
            .gather(&sampler.current()[shard.clone()], &mut x, &mut labels)?;
        let s = dp.train_step(&mut model, &mut sgd, &ce, &x, &labels, global)?;
        loss_sum += s.loss * shard.len() as f64;
        since += 1;
        if step == COMPARE_AT && rank0 {
            snapshot = Some(params(&mut model));
        }
        if step % cfg.eval_every == 0 || step == cfg.steps {
            train_seconds += t.elapsed().as_secs_f64();
            // The global batch's mean loss (uncounted: not part of training).
            let mut sum = [loss_sum];
            comm.all_reduce_sum_f64(&mut sum).map_err(NnError::from)?;
            let loss = sum[0] / (since * global) as f64;
            ev.eval(&mut model, step, loss, cfg.steps)?;
            (loss_sum, since) = (0.0, 0);
            t = Instant::now();
        }
    }
    let run = VariantRun {
        variant,
        evals: ev.evals,
        train_seconds,
        bytes_per_step: counting.take() as f64 / cfg.steps as f64,
    };
    Ok((run, snapshot))
}

/// One process on the whole global batch of every step (rank 0 only).
pub(super) fn single(
    ranks: usize,
    cfg: &Config,
    data: &Mnist,
    linears: &[Linear<f32>],
    bar: Option<&NetProgress>,
) -> Result<(VariantRun, Snapshot), LabError> {
    let global = ranks * cfg.per_rank_batch;
    let model = mlp::build(linears, Activation::Sigmoid, true, EVAL_CHUNK)?;
    let mut trainer = Trainer::new(
        model,
        cfg.lr,
        global,
        order_seed(cfg.seed),
        data.train.len(),
    )?;
    let mut ev = Evaluator::new(data, true, bar);
    ev.eval(&mut trainer.model, 0, f64::NAN, cfg.steps)?;
    let (mut loss_sum, mut since, mut snapshot) = (0.0, 0, None);
    let mut train_seconds = 0.0;
    let mut t = Instant::now();
    for step in 1..=cfg.steps {
        loss_sum += trainer.step(&data.train)?.loss;
        since += 1;
        if step == COMPARE_AT {
            snapshot = Some(params(&mut trainer.model));
        }
        if step % cfg.eval_every == 0 || step == cfg.steps {
            train_seconds += t.elapsed().as_secs_f64();
            ev.eval(&mut trainer.model, step, loss_sum / since as f64, cfg.steps)?;
            (loss_sum, since) = (0.0, 0);
            t = Instant::now();
        }
    }
    let run = VariantRun {
        variant: Variant::Single,
        evals: ev.evals,
        train_seconds,
        bytes_per_step: 0.0,
    };
    Ok((run, snapshot))
}

fn plain_sgd(lr: f64) -> SgdConfig {
    SgdConfig {
        lr,
        momentum: 0.0,
        weight_decay: 0.0,
    }
}

/// The largest `|a - b|` over every parameter, relative to the largest `|b|` of its tensor.
pub(super) fn max_rel_param_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(ta, tb)| {
            let scale = tb.iter().fold(0.0f64, |m, &v| m.max(f64::from(v).abs()));
            let diff = ta.iter().zip(tb).fold(0.0f64, |m, (&x, &y)| {
                m.max((f64::from(x) - f64::from(y)).abs())
            });
            if scale > 0.0 {
                diff / scale
            } else {
                diff
            }
        })
        .fold(0.0, f64::max)
}
