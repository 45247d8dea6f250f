//! The custom op that puts the kernels in candle's graph.
//!
//! [`BatchNormOp`] is a [`CustomOp3`] over (x, weight, bias), or a [`CustomOp1`] over x without
//! affine parameters. Its `cpu_fwd` runs [`batchnorm::BatchNorm::forward`] on x's memory and
//! keeps the module and the [`Saved`] statistics in the op; candle keeps the op in the graph, so
//! its `bwd` runs [`batchnorm::BatchNorm::backward`] with exactly what the forward used and
//! returns dx, dweight and dbias. The running statistics go in with the op and come out updated
//! ([`Forwarded::running`]); the module writes them back to its variables.

use std::fmt::Debug;
use std::sync::{Arc, OnceLock};

use batchnorm::{BatchNorm as CoreBatchNorm, BatchNormConfig, Element, Mode, Par, Saved, Shape};
use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp3, Device, Layout as CandleLayout, Result, Shape as CandleShape,
    Storage, Tensor, WithDType,
};

use crate::error::{kernel, Error};

/// Running mean and UNBIASED variance (one per channel, in `f64`) and the training batches seen.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Running {
    pub mean: Vec<f64>,
    pub var: Vec<f64>,
    pub num_batches_tracked: u64,
}

/// One batch normalization of one tensor, as a node of candle's graph.
#[derive(Debug)]
pub(crate) struct BatchNormOp {
    /// Logical dims and the layout of x's memory.
    pub shape: Shape,
    pub mode: Mode,
    pub config: BatchNormConfig,
    /// Before the call; `None` when not tracking.
    pub running: Option<Running>,
    pub par: Par,
    /// What the forward pass left for the backward pass and the module.
    pub forwarded: Arc<OnceLock<Box<dyn Forwarded>>>,
}

/// The state a forward pass leaves behind, whatever the element type.
pub(crate) trait Forwarded: Send + Sync + Debug {
    /// The running statistics after the call (updated by a training call while tracking).
    fn running(&self) -> Option<Running>;

    /// dx (x's dtype, x's memory order), and dweight and dbias in `T::Param` (when affine), for
    /// the upstream gradient `dy` of the output.
    fn backward(&self, x: &Tensor, dy: &Tensor) -> Result<(Tensor, Option<(Tensor, Tensor)>)>;
}

/// The kernels' module as the forward pass set it up and left it, with its statistics.
#[derive(Debug)]
struct Run<T: Element> {
    module: CoreBatchNorm<T>,
    saved: Saved<T>,
    shape: Shape,
}

impl<T> Forwarded for Run<T>
where
    T: Element + WithDType,
    T::Param: WithDType,
{
    fn running(&self) -> Option<Running> {
        self.module.config().track_running_stats.then(|| Running {
            mean: self
                .module
                .running_mean
                .iter()
                .map(|&v| Element::to_f64(v))
                .collect(),
            var: self
                .module
                .running_var
                .iter()
                .map(|&v| Element::to_f64(v))
                .collect(),
            num_batches_tracked: self.module.num_batches_tracked,
        })
    }

    fn backward(&self, x: &Tensor, dy: &Tensor) -> Result<(Tensor, Option<(Tensor, Tensor)>)> {
        // The upstream gradient arrives contiguous from candle's gradient store; anything else
        // is put in x's memory order first.
        let dy = dy.contiguous()?;
        let mut dx = vec![T::default(); self.shape.len()];
        let grads = read::<T, _>(x, |x| {
            read::<T, _>(&dy, |dy| {
                let shape = &self.shape;
                self.module
                    .backward(x, dy, shape, &self.saved, &mut dx)
                    .map_err(kernel)
            })
        })?;
        let dx = Tensor::from_vec(dx, x.shape(), &Device::Cpu)?;
        let params = if self.module.config().affine {
            let c = self.module.channels();
            let weight = Tensor::from_vec(grads.weight, c, &Device::Cpu)?;
            let bias = Tensor::from_vec(grads.bias, c, &Device::Cpu)?;
            Some((weight, bias))
        } else {
            None
        };
        Ok((dx, params))
    }
}

/// Calls `f` with the contiguous `T` elements of `t` (from its start offset).
fn read<T: WithDType, R>(t: &Tensor, f: impl FnOnce(&[T]) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        let device = format!("{:?}", t.device().location());
        return Err(Error::NotCpu { device }.into());
    };
    f(contiguous(cpu.as_slice::<T>()?, layout)?)
}

/// The elements of a contiguous layout.
fn contiguous<'a, T>(data: &'a [T], layout: &CandleLayout) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("batch norm: the kernels need a contiguous tensor"),
    }
}

/// The C values of a per-channel tensor, in `f64` (exact for every supported dtype).
fn per_channel(
    what: &'static str,
    storage: &CpuStorage,
    layout: &CandleLayout,
    channels: usize,
) -> Result<Vec<f64>> {
    if layout.dims() != [channels] {
        let got = layout.dims().to_vec();
        return Err(Error::ParameterShape {
            what,
            channels,
            got,
        }
        .into());
    }
    fn gather<T: WithDType>(data: &[T], layout: &CandleLayout) -> Vec<f64> {
        let (start, stride) = (layout.start_offset(), layout.stride()[0]);
        let c = layout.dims()[0];
        (0..c).map(|i| data[start + i * stride].to_f64()).collect()
    }
    Ok(match storage {
        CpuStorage::F32(v) => gather(v, layout),
        CpuStorage::F64(v) => gather(v, layout),
        CpuStorage::BF16(v) => gather(v, layout),
        CpuStorage::F16(v) => gather(v, layout),
        other => {
            let dtype = other.dtype();
            return Err(Error::UnsupportedDType { what, dtype }.into());
        }
    })
}

impl BatchNormOp {
    /// Runs the forward pass on x's storage; `affine` holds weight and bias.
    fn forward(
        &self,
        x: &CpuStorage,
        layout: &CandleLayout,
        affine: Option<(Vec<f64>, Vec<f64>)>,
    ) -> Result<(CpuStorage, CandleShape)> {
        let y = match x {
            CpuStorage::F32(x) => self.forward_as(contiguous(x, layout)?, affine)?,
            CpuStorage::F64(x) => self.forward_as(contiguous(x, layout)?, affine)?,
            CpuStorage::BF16(x) => self.forward_as(contiguous(x, layout)?, affine)?,
            CpuStorage::F16(x) => self.forward_as(contiguous(x, layout)?, affine)?,
            other => {
                let dtype = other.dtype();
                return Err(Error::UnsupportedDType { what: "x", dtype }.into());
            }
        };
        Ok((y, layout.shape().clone()))
    }

    fn forward_as<T>(&self, x: &[T], affine: Option<(Vec<f64>, Vec<f64>)>) -> Result<CpuStorage>
    where
        T: Element + WithDType,
        T::Param: WithDType,
    {
        let param = |v: &Vec<f64>| -> Vec<T::Param> {
            v.iter()
                .map(|&v| <T::Param as Element>::from_f64(v))
                .collect()
        };
        let mut module =
            CoreBatchNorm::<T>::new(self.shape.channels(), self.config).map_err(kernel)?;
        module.set_par(self.par);
        if let Some((weight, bias)) = &affine {
            module.weight = param(weight);
            module.bias = param(bias);
        }
        if let Some(running) = &self.running {
            module.running_mean = param(&running.mean);
            module.running_var = param(&running.var);
            module.num_batches_tracked = running.num_batches_tracked;
        }
        let mut y = vec![T::default(); x.len()];
        let saved = module
            .forward(x, &self.shape, self.mode, &mut y)
            .map_err(kernel)?;
        let run = Run {
            module,
            saved,
            shape: self.shape,
        };
        if self.forwarded.set(Box::new(run)).is_err() {
            candle_core::bail!("batch norm: one op ran its forward pass twice");
        }
        Ok(T::to_cpu_storage_owned(y))
    }

    /// What the forward pass left, for the backward pass.
    fn forwarded(&self) -> Result<&dyn Forwarded> {
        match self.forwarded.get() {
            Some(run) => Ok(run.as_ref()),
            None => Err(Error::NoForward.into()),
        }
    }
}

impl CustomOp3 for BatchNormOp {
    fn name(&self) -> &'static str {
        "batchnorm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &CandleLayout,
        weight: &CpuStorage,
        weight_layout: &CandleLayout,
        bias: &CpuStorage,
        bias_layout: &CandleLayout,
    ) -> Result<(CpuStorage, CandleShape)> {
        let c = self.shape.channels();
        let weight = per_channel("weight", weight, weight_layout, c)?;
        let bias = per_channel("bias", bias, bias_layout, c)?;
        self.forward(x, x_layout, Some((weight, bias)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, params) = self.forwarded()?.backward(x, dy)?;
        let Some((dweight, dbias)) = params else {
            candle_core::bail!("batch norm: an affine op without parameter gradients");
        };
        let dweight = dweight.to_dtype(weight.dtype())?;
        let dbias = dbias.to_dtype(bias.dtype())?;
        Ok((Some(dx), Some(dweight), Some(dbias)))
    }
}

impl CustomOp1 for BatchNormOp {
    fn name(&self) -> &'static str {
        "batchnorm"
    }

    fn cpu_fwd(&self, x: &CpuStorage, layout: &CandleLayout) -> Result<(CpuStorage, CandleShape)> {
        self.forward(x, layout, None)
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let (dx, _) = self.forwarded()?.backward(x, dy)?;
        Ok(Some(dx))
    }
}
