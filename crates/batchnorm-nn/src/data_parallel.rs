//! Data-parallel training: every rank holds a copy of the network and trains on its shard of
//! each global batch; the gradients are summed over the ranks so that every copy takes the
//! same step, the step of one process on the global batch.

use std::ops::Range;
use std::sync::Arc;

use batchnorm_dist::Collective;

use crate::error::{check_len, Result};
use crate::layers::{BatchNorm, Param, StateValue, SyncBatchNorm};
use crate::loss::{LossStats, SoftmaxCrossEntropy};
use crate::model::Sequential;
use crate::optim::Sgd;
use crate::scalar::Scalar;

/// Replaces every [`BatchNorm`] layer of `model` by a [`SyncBatchNorm`] over `comm` (with its
/// parameters and running statistics), as PyTorch's `convert_sync_batchnorm`; returns how
/// many it replaced.
pub fn convert_sync_batch_norm<T: Scalar>(
    model: &mut Sequential<T>,
    comm: &Arc<dyn Collective>,
) -> usize {
    let mut replaced = 0;
    for layer in model.layers_mut() {
        if let Some(bn) = layer.downcast_ref::<BatchNorm<T>>() {
            *layer = Box::new(SyncBatchNorm::from_batch_norm(bn, Arc::clone(comm)));
            replaced += 1;
        }
    }
    replaced
}

/// The exchanges of data-parallel training over `comm`.
///
/// ```
/// use std::sync::Arc;
/// use batchnorm_dist::{local_group, Collective};
/// use batchnorm_nn::{layers::{Layer, Linear}, DataParallel, Rng, Sequential, Sgd, SgdConfig, SoftmaxCrossEntropy};
///
/// // Two ranks (threads), each with its own copy, train on halves of one batch of 4.
/// let x = [0.1f64, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8];
/// let labels = [0u8, 1, 1, 0];
/// let weights: Vec<Vec<f64>> = std::thread::scope(|s| {
///     let handles: Vec<_> = local_group(2).into_iter().map(|comm| s.spawn(move || {
///         let comm: Arc<dyn Collective> = Arc::new(comm);
///         // Different seeds: the broadcast from rank 0 makes the copies equal.
///         let mut rng = Rng::new(comm.rank() as u64);
///         let layers: Vec<Box<dyn Layer<f64>>> = vec![Box::new(Linear::gaussian(2, 2, 0.5, &mut rng)?)];
///         let mut model = Sequential::new(layers, 2)?;
///         let mut dp = DataParallel::new(comm, &mut model)?;
///         let mut sgd = Sgd::new(SgdConfig { lr: 0.1, ..SgdConfig::default() }, &mut model)?;
///         let ce = SoftmaxCrossEntropy::new(2)?;
///         let mine = dp.shard(4);
///         dp.train_step(&mut model, &mut sgd, &ce, &x[mine.start * 2..mine.end * 2], &labels[mine], 4)?;
///         let mut w = Vec::new();
///         model.visit_params(&mut |p| w.extend_from_slice(p.value));
///         Ok::<_, batchnorm_nn::NnError>(w)
///     })).collect();
///     handles.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
/// });
/// assert_eq!(weights[0], weights[1]);
/// ```
#[derive(Debug)]
pub struct DataParallel<T: Scalar> {
    comm: Arc<dyn Collective>,
    /// Every parameter gradient, flattened for one all-reduce.
    flat: Vec<T>,
}

impl<T: Scalar> DataParallel<T> {
    /// Makes every rank's `model` rank 0's: broadcasts its parameters and state (running
    /// statistics and counters). Collective: every rank calls it with the same architecture.
    ///
    /// # Errors
    /// [`crate::NnError::Dist`] when the exchange fails.
    pub fn new(comm: Arc<dyn Collective>, model: &mut Sequential<T>) -> Result<Self> {
        let mut failed = None;
        let mut counts = Vec::new();
        for layer in model.layers_mut() {
            layer.visit_state(&mut |entry| match entry.value {
                StateValue::Float(v) => {
                    if let Err(e) = T::broadcast(&*comm, v) {
                        failed.get_or_insert(e);
                    }
                }
                StateValue::Count(n) => counts.push(*n as f64),
            });
        }
        if let Some(e) = failed {
            return Err(e.into());
        }
        comm.broadcast_f64(&mut counts)?;
        let mut counts = counts.into_iter();
        for layer in model.layers_mut() {
            layer.visit_state(&mut |entry| {
                if let (StateValue::Count(n), Some(c)) = (entry.value, counts.next()) {
                    *n = c as u64;
                }
            });
        }
        // Parameters too, for a layer that lists them in no state dict.
        let mut flat = Vec::new();
        exchange_flat(
            model,
            &mut flat,
            |p| p.value,
            |buf| T::broadcast(&*comm, buf),
        )?;
        Ok(Self { comm, flat })
    }

    /// The communicator.
    pub fn comm(&self) -> &Arc<dyn Collective> {
        &self.comm
    }

    /// This rank's samples of a global batch of `global`: rank `r` of `p` takes samples
    /// `r * global / p .. (r + 1) * global / p` (shards differ by at most one sample).
    pub fn shard(&self, global: usize) -> Range<usize> {
        let (r, p) = (self.comm.rank(), self.comm.size());
        r * global / p..(r + 1) * global / p
    }

    /// Replaces every parameter gradient of `model` by its sum over the ranks, in one
    /// all-reduce of one flat buffer.
    ///
    /// # Errors
    /// [`crate::NnError::Dist`] when the exchange fails.
    pub fn all_reduce_grads(&mut self, model: &mut Sequential<T>) -> Result<()> {
        let comm = &*self.comm;
        exchange_flat(
            model,
            &mut self.flat,
            |p| p.grad,
            |buf| T::all_reduce_sum(comm, buf),
        )
    }

    /// Bytes each rank sends in [`all_reduce_grads`](Self::all_reduce_grads) (the flat
    /// gradient).
    pub fn grad_bytes(&self) -> usize {
        self.flat.len() * std::mem::size_of::<T>()
    }

    /// One SGD step of the loss averaged over the global batch of `global` samples, given this
    /// rank's shard (`x`: `labels.len()` samples; empty shards are not supported by
    /// [`Sequential`]): forward, the loss gradient scaled by `shard / global`, backward, the
    /// gradients summed over the ranks, the update. Returns the shard's loss and correct count.
    ///
    /// # Errors
    /// Length mismatches, the model's and the exchange's errors.
    pub fn train_step<L: Copy + Into<usize>>(
        &mut self,
        model: &mut Sequential<T>,
        sgd: &mut Sgd<T>,
        loss: &SoftmaxCrossEntropy,
        x: &[T],
        labels: &[L],
        global: usize,
    ) -> Result<LossStats> {
        let n = labels.len();
        check_len("x", x.len(), n * model.in_len())?;
        model.forward_from(x, n, crate::layers::Mode::Train)?;
        let (out, grad) = model.output_and_grad(n)?;
        let stats = loss.forward_backward(out, labels, grad)?;
        let scale = T::from_f64(n as f64 / global as f64);
        grad.iter_mut().for_each(|g| *g = *g * scale);
        model.backward(n, false)?;
        self.all_reduce_grads(model)?;
        sgd.step(model)?;
        Ok(stats)
    }
}

/// Copies one field of every parameter (`field`: the values or the gradients) into `flat`, in
/// the model's order, runs `exchange` on it, and copies the result back.
fn exchange_flat<T: Scalar>(
    model: &mut Sequential<T>,
    flat: &mut Vec<T>,
    field: for<'a> fn(Param<'a, T>) -> &'a mut [T],
    exchange: impl FnOnce(&mut [T]) -> std::result::Result<(), batchnorm_dist::CommError>,
) -> Result<()> {
    flat.clear();
    model.visit_params(&mut |p| flat.extend_from_slice(field(p)));
    exchange(flat)?;
    let mut at = 0;
    model.visit_params(&mut |p| {
        let v = field(p);
        v.copy_from_slice(&flat[at..at + v.len()]);
        at += v.len();
    });
    Ok(())
}
