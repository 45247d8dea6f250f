//! Batch normalization over a batch split across ranks, for data-parallel training.

use std::sync::Arc;

use batchnorm_dist::{Collective, SyncSaved};

use super::batch_norm::{batch_shape, visit_gamma_beta};
use super::{check_batch, BatchNorm, Layer, Mode, Param, StateEntry};
use crate::error::{NnError, Result};
use crate::scalar::Scalar;

/// [`BatchNorm`] whose training statistics are those of the global batch: every rank of
/// `comm` holds a copy of the network and a shard of the batch, and the layer's forward and
/// backward exchange per-channel statistics with the other ranks
/// ([`batchnorm_dist::SyncBatchNorm`]). Its parameter gradients are this rank's
/// contributions: [`crate::DataParallel::all_reduce_grads`] sums them with the others'.
///
/// Evaluation ([`Mode::Eval`]) uses the running statistics and does not communicate. Made
/// from a [`BatchNorm`] layer by [`SyncBatchNorm::from_batch_norm`] or, for a whole model,
/// [`crate::convert_sync_batch_norm`].
#[derive(Debug, Clone)]
pub struct SyncBatchNorm<T: Scalar> {
    /// The synchronised module: `weight` (gamma), `bias` (beta), running statistics.
    pub inner: batchnorm_dist::SyncBatchNorm<T>,
    /// This rank's contribution to the gradient of the loss with respect to `inner.weight`.
    pub weight_grad: Vec<T>,
    /// This rank's contribution to the gradient with respect to `inner.bias`.
    pub bias_grad: Vec<T>,
    comm: Arc<dyn Collective>,
    sample_dims: Vec<usize>,
    sample_len: usize,
    /// Statistics of the last forward and its batch size, for backward.
    saved: Option<(SyncSaved<T>, usize)>,
    /// Scratch for `dx` when the caller does not want it.
    scratch: Vec<T>,
}

impl<T: Scalar> SyncBatchNorm<T> {
    /// The layer `bn` (its parameters, running statistics, configuration and kernels),
    /// synchronised over `comm`.
    pub fn from_batch_norm(bn: &BatchNorm<T>, comm: Arc<dyn Collective>) -> Self {
        let inner = batchnorm_dist::SyncBatchNorm::from(bn.inner.clone());
        SyncBatchNorm {
            weight_grad: vec![T::ZERO; inner.weight.len()],
            bias_grad: vec![T::ZERO; inner.bias.len()],
            inner,
            comm,
            sample_dims: bn.sample_dims().to_vec(),
            sample_len: bn.in_len(),
            saved: None,
            scratch: Vec::new(),
        }
    }
}

impl<T: Scalar> Layer<T> for SyncBatchNorm<T> {
    fn name(&self) -> &'static str {
        "sync_batch_norm"
    }

    fn in_len(&self) -> usize {
        self.sample_len
    }

    fn out_len(&self) -> usize {
        self.sample_len
    }

    fn forward(&mut self, x: &[T], n: usize, mode: Mode, y: &mut [T]) -> Result<()> {
        check_batch("sync_batch_norm x", x.len(), n, self.sample_len)?;
        check_batch("sync_batch_norm y", y.len(), n, self.sample_len)?;
        let shape = batch_shape(&self.sample_dims, n)?;
        self.saved = None;
        let comm = &*self.comm;
        let saved = match mode {
            Mode::Train => self
                .inner
                .forward(comm, x, &shape, batchnorm::Mode::Train, y)?,
            Mode::Eval => self
                .inner
                .forward(comm, x, &shape, batchnorm::Mode::Eval, y)?,
            Mode::BatchStats => {
                self.inner
                    .forward_without_update(comm, x, &shape, batchnorm::Mode::Train, y)?
            }
        };
        self.saved = Some((saved, n));
        Ok(())
    }

    fn backward(
        &mut self,
        x: &[T],
        _y: &[T],
        dy: &[T],
        n: usize,
        dx: Option<&mut [T]>,
    ) -> Result<()> {
        check_batch("sync_batch_norm x", x.len(), n, self.sample_len)?;
        check_batch("sync_batch_norm dy", dy.len(), n, self.sample_len)?;
        let shape = batch_shape(&self.sample_dims, n)?;
        let saved = match &self.saved {
            Some((saved, saved_n)) if *saved_n == n => saved,
            _ => {
                return Err(NnError::BackwardBeforeForward {
                    layer: "sync_batch_norm",
                })
            }
        };
        let dx = match dx {
            Some(dx) => dx,
            None => {
                self.scratch.resize(n * self.sample_len, T::ZERO);
                &mut self.scratch[..]
            }
        };
        let grads = self.inner.backward(&*self.comm, x, dy, &shape, saved, dx)?;
        self.weight_grad.copy_from_slice(&grads.weight);
        self.bias_grad.copy_from_slice(&grads.bias);
        Ok(())
    }

    fn visit_params(&mut self, f: &mut dyn FnMut(Param<'_, T>)) {
        let inner = &mut self.inner;
        let weight = (&mut inner.weight[..], &mut self.weight_grad[..]);
        visit_gamma_beta(weight, (&mut inner.bias[..], &mut self.bias_grad[..]), f);
    }

    fn visit_state(&mut self, f: &mut dyn FnMut(StateEntry<'_, T>)) {
        crate::state_dict::visit_sync_batch_norm_state(&mut self.inner, f);
    }

    fn boxed_clone(&self) -> Option<Box<dyn Layer<T>>> {
        Some(Box::new(self.clone()))
    }
}
