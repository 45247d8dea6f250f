//! The module: parameters and running statistics in a `VarBuilder`, forward through the op.

use std::sync::{Arc, Mutex, OnceLock};

use batchnorm::{BatchNormConfig, BatchNormError, Mode, Par, Shape};
use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::{Init, ModuleT, VarBuilder};

use crate::error::{kernel, Error};
use crate::layout::MemoryOrder;
use crate::op::{BatchNormOp, Running};

/// Batch Normalization for candle tensors, with PyTorch's semantics and the `batchnorm` kernels.
///
/// For each channel c of an input of logical shape (N, C, spatial...), over its
/// m = N * prod(spatial) values:
///
/// ```text
/// y = (x - mean) / sqrt(var + eps) * weight[c] + bias[c]
/// ```
///
/// - `forward_t(x, true)` (training): batch mean and BIASED variance; when tracking, the running
///   mean and UNBIASED variance (m / (m - 1)) move by `new = (1 - f) * old + f * batch`, with
///   `f = momentum`, or `1 / num_batches_tracked` (cumulative average) when momentum is `None`.
///   m must be at least 2.
/// - `forward_t(x, false)` (evaluation): the running statistics, or the batch's own when not
///   tracking. Gradients still flow (frozen BN: `dx = dy * weight / sqrt(running_var + eps)`).
///
/// Gradients for x, weight and bias come from the closed-form backward, through candle's
/// autograd. Statistics accumulate in `f64`; `f32` outputs are within a few roundings of the
/// exact values even for inputs like `1e6 + randn`, and `bf16`/`f16` outputs are correctly
/// rounded (parameters and statistics in `f32`).
///
/// Contiguous input and channels-last views (an (N, H, W, C) tensor permuted to logical
/// (N, C, H, W)) are read in place, and the output has the input's memory layout; other strides
/// are copied to a contiguous tensor first. CPU only: a tensor on another device is an error.
///
/// `BatchNorm` implements [`ModuleT`] but not `Module`: candle's blanket `impl<M: Module> ModuleT
/// for M` would make `forward_t` ignore `train`. [`forward`](Self::forward) is evaluation.
///
/// Calls run on rayon's current pool ([`Par::Rayon`]; [`set_par`](Self::set_par) changes it);
/// results are bitwise the same either way.
///
/// ```
/// use batchnorm_candle::{batch_norm, BatchNorm};
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::{ModuleT, VarBuilder, VarMap};
///
/// let varmap = VarMap::new();
/// let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
/// let bn: BatchNorm = batch_norm(2, batchnorm::BatchNormConfig::default(), vb.pp("bn"))?;
/// let x = Tensor::new(&[[1f32, 10.], [2., 20.], [3., 30.]], &Device::Cpu)?; // (N, C) = (3, 2)
/// let y = bn.forward_t(&x, true)?;
/// let first = y.get(0)?.to_vec1::<f32>()?;
/// assert!((first[0] + 1.2247).abs() < 1e-4); // (1 - 2) / sqrt(2/3 + 1e-5)
/// // running_mean = 0.9 * 0 + 0.1 * [2, 20], kept in the VarMap under "bn.running_mean".
/// let running_mean = varmap.data().lock().unwrap()["bn.running_mean"].to_vec1::<f32>()?;
/// assert_eq!(running_mean, [0.2, 2.0]);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct BatchNorm {
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    running_mean: Option<Var>,
    running_var: Option<Var>,
    /// The count of training batches when a variable holds it (always with `momentum: None`).
    num_batches_tracked: Option<Var>,
    /// The count otherwise; the lock also makes each call's read-update-write of the running
    /// statistics one step (clones share it, as they share the variables).
    batches: Arc<Mutex<u64>>,
    channels: usize,
    config: BatchNormConfig,
    par: Par,
}

/// A [`BatchNorm`] over `channels` channels whose tensors live in `vb`, under the names of
/// `candle_nn::batch_norm` and PyTorch (so existing checkpoints load):
///
/// | name | shape | dtype | when | init |
/// |---|---|---|---|---|
/// | `weight`, `bias` | (C,) | `vb.dtype()` | `affine` | 1, 0 |
/// | `running_mean`, `running_var` | (C,) | `vb.dtype()` | `track_running_stats` | 0, 1 |
/// | `num_batches_tracked` | () | `i64` | tracking, and `momentum: None` or `vb` holds it | 0 |
///
/// With `momentum: Some(_)` the count does not change the arithmetic, and is kept by the module
/// unless `vb` already holds it. For `bf16`/`f16` activations use an `f32` `vb`: the kernels
/// compute with `f32` parameters and statistics (other dtypes are converted at each call, and
/// running statistics kept in 16 bits drift).
///
/// # Errors
/// An invalid `eps` or `momentum`, zero channels, a `vb` that is not on the CPU or not of a
/// float dtype, and whatever `vb` reports (a missing tensor, a shape mismatch).
pub fn batch_norm(channels: usize, config: BatchNormConfig, vb: VarBuilder) -> Result<BatchNorm> {
    config.validate().map_err(kernel)?;
    if channels == 0 {
        return Err(kernel(BatchNormError::ZeroChannels));
    }
    check_device(vb.device())?;
    check_dtype("parameters", vb.dtype())?;
    let (weight, bias) = if config.affine {
        let weight = vb.get_with_hints(channels, "weight", Init::Const(1.))?;
        let bias = vb.get_with_hints(channels, "bias", Init::Const(0.))?;
        (Some(weight), Some(bias))
    } else {
        (None, None)
    };
    let (mut running_mean, mut running_var, mut num_batches_tracked) = (None, None, None);
    if config.track_running_stats {
        let get = |name, init| -> Result<Var> {
            let t = vb.get_with_hints(channels, name, Init::Const(init))?;
            check_dtype(name, t.dtype())?;
            Var::from_tensor(&t)
        };
        running_mean = Some(get("running_mean", 0.)?);
        running_var = Some(get("running_var", 1.)?);
        if config.momentum.is_none() || vb.contains_tensor("num_batches_tracked") {
            let count =
                vb.get_with_hints_dtype((), "num_batches_tracked", Init::Const(0.), DType::I64)?;
            num_batches_tracked = Some(Var::from_tensor(&count)?);
        }
    }
    for (what, t) in [("weight", &weight), ("bias", &bias)] {
        if let Some(t) = t {
            check_dtype(what, t.dtype())?;
        }
    }
    Ok(BatchNorm {
        weight,
        bias,
        running_mean,
        running_var,
        num_batches_tracked,
        batches: Arc::new(Mutex::new(0)),
        channels,
        config,
        par: Par::Rayon,
    })
}

impl BatchNorm {
    /// The number of channels C.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// The configuration.
    pub fn config(&self) -> &BatchNormConfig {
        &self.config
    }

    /// gamma, shape (C,), when affine.
    pub fn weight(&self) -> Option<&Tensor> {
        self.weight.as_ref()
    }

    /// beta, shape (C,), when affine.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The running mean, shape (C,), when tracking.
    pub fn running_mean(&self) -> Option<&Tensor> {
        self.running_mean.as_ref().map(Var::as_tensor)
    }

    /// The running UNBIASED variance, shape (C,), when tracking.
    pub fn running_var(&self) -> Option<&Tensor> {
        self.running_var.as_ref().map(Var::as_tensor)
    }

    /// Training batches seen while tracking (0 when not tracking).
    ///
    /// # Errors
    /// A `num_batches_tracked` variable that is negative or unreadable.
    pub fn num_batches_tracked(&self) -> Result<u64> {
        let batches = self.batches.lock().map_err(|_| poisoned())?;
        self.count(&batches)
    }

    /// Whether calls may use rayon's threads.
    pub fn par(&self) -> Par {
        self.par
    }

    /// Chooses between the calling thread ([`Par::Seq`]) and rayon's current pool
    /// ([`Par::Rayon`], the default). Results are bitwise the same.
    pub fn set_par(&mut self, par: Par) {
        self.par = par;
    }

    /// Evaluation: `forward_t(x, false)`.
    ///
    /// # Errors
    /// As [`forward_t`](ModuleT::forward_t).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_t(x, false)
    }

    /// The batches counted so far, from the variable if there is one.
    fn count(&self, batches: &u64) -> Result<u64> {
        match &self.num_batches_tracked {
            Some(var) => {
                let n = var.as_tensor().to_dtype(DType::I64)?.to_scalar::<i64>()?;
                u64::try_from(n).map_err(|_| {
                    candle_core::Error::msg(format!("batch norm: num_batches_tracked is {n}"))
                })
            }
            None => Ok(*batches),
        }
    }

    /// The running statistics before a call, in `f64`.
    fn running(&self, batches: &u64) -> Result<Option<Running>> {
        let (Some(mean), Some(var)) = (&self.running_mean, &self.running_var) else {
            return Ok(None);
        };
        let values = |v: &Var| v.as_tensor().to_dtype(DType::F64)?.to_vec1::<f64>();
        Ok(Some(Running {
            mean: values(mean)?,
            var: values(var)?,
            num_batches_tracked: self.count(batches)?,
        }))
    }

    /// Writes the running statistics a training call left back to the variables.
    fn store(&self, running: Running, batches: &mut u64) -> Result<()> {
        let (Some(mean), Some(var)) = (&self.running_mean, &self.running_var) else {
            return Ok(());
        };
        let c = self.channels;
        let set = |dst: &Var, values: Vec<f64>| -> Result<()> {
            dst.set(&Tensor::from_vec(values, c, &Device::Cpu)?.to_dtype(dst.dtype())?)
        };
        set(mean, running.mean)?;
        set(var, running.var)?;
        *batches = running.num_batches_tracked;
        if let Some(count) = &self.num_batches_tracked {
            let n = i64::try_from(running.num_batches_tracked).map_err(|_| {
                candle_core::Error::msg("batch norm: num_batches_tracked overflows")
            })?;
            count.set(&Tensor::new(n, &Device::Cpu)?.to_dtype(count.dtype())?)?;
        }
        Ok(())
    }
}

impl ModuleT for BatchNorm {
    /// Normalises `x` (logical shape (N, C), (N, C, L), (N, C, H, W) or (N, C, D, H, W); `f32`,
    /// `f64`, `bf16` or `f16`; on the CPU) with batch statistics when `train`, else with the
    /// running ones (see [`BatchNorm`]). A training call while tracking updates the running
    /// statistics in the variables.
    ///
    /// # Errors
    /// A wrong rank or channel count, one value per channel with batch statistics, an
    /// unsupported dtype, a tensor not on the CPU, a negative running variance in evaluation.
    /// On error nothing is modified.
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        check_device(x.device())?;
        check_dtype("x", x.dtype())?;
        // The dims are checked before any copy of odd strides is made.
        Shape::new(x.dims(), batchnorm::Layout::ChannelsFirst).map_err(kernel)?;
        if x.dim(1)? != self.channels {
            let (expected, got) = (self.channels, x.dim(1)?);
            return Err(kernel(BatchNormError::ChannelMismatch { expected, got }));
        }
        let seen = MemoryOrder::of(x)?;
        let shape = Shape::new(x.dims(), seen.layout).map_err(kernel)?;
        let mode = if train { Mode::Train } else { Mode::Eval };

        let mut batches = self.batches.lock().map_err(|_| poisoned())?;
        let forwarded = Arc::new(OnceLock::new());
        let op = BatchNormOp {
            shape,
            mode,
            config: self.config,
            running: self.running(&batches)?,
            par: self.par,
            forwarded: Arc::clone(&forwarded),
        };
        let y = match (&self.weight, &self.bias) {
            (Some(weight), Some(bias)) => seen.tensor.apply_op3(weight, bias, op)?,
            _ => seen.tensor.apply_op1(op)?,
        };
        if mode == Mode::Train {
            if let Some(running) = forwarded.get().and_then(|f| f.running()) {
                self.store(running, &mut batches)?;
            }
        }
        seen.logical(y)
    }
}

fn poisoned() -> candle_core::Error {
    candle_core::Error::msg("batch norm: a call panicked while updating the running statistics")
}

fn check_device(device: &Device) -> Result<()> {
    if device.is_cpu() {
        Ok(())
    } else {
        let device = format!("{:?}", device.location());
        Err(Error::NotCpu { device }.into())
    }
}

fn check_dtype(what: &'static str, dtype: DType) -> Result<()> {
    match dtype {
        DType::F32 | DType::F64 | DType::BF16 | DType::F16 => Ok(()),
        _ => Err(Error::UnsupportedDType { what, dtype }.into()),
    }
}
