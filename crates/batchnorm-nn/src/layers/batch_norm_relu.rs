//! Batch normalization followed by a ReLU, in one pass of the core's fused kernel.

use batchnorm::BatchNormConfig;

use super::batch_norm::Tail;
use super::{BatchNorm, Layer, Mode, Param, StateEntry};
use crate::error::Result;
use crate::scalar::Scalar;

/// `y = relu(BN(x))`, channels first: [`BatchNorm`] and [`Relu`](super::Relu) in one layer,
/// the ReLU applied in the normalising pass ([`batchnorm::BatchNorm::forward_relu_into`]) and
/// its gradient in the backward ([`batchnorm::BatchNorm::backward_relu_into`]: `dy` where
/// `y > 0`, else 0, then the batch normalization's backward). The outputs and gradients are
/// bit for bit those of the two layers in a row.
///
/// Its state dict is the batch normalization's (`weight`, `bias`, `running_mean`,
/// `running_var`, `num_batches_tracked`); in a [`crate::Sequential`] it takes one index where
/// PyTorch's `BatchNorm2d` and `ReLU` take two. [`crate::fold::fold_batch_norm`] copies it
/// unfolded (only a plain batch normalization folds into the layer before it).
///
/// ```
/// use batchnorm::BatchNormConfig;
/// use batchnorm_nn::layers::{BatchNormRelu, Layer, Mode};
/// let mut layer = BatchNormRelu::<f32>::new(&[1, 2], BatchNormConfig::default())?;
/// let (x, mut y) = ([1.0, 2.0, 3.0, 4.0], [0.0; 4]);
/// layer.forward(&x, 2, Mode::Train, &mut y)?;
/// assert_eq!(&y[..2], &[0.0, 0.0]); // below the mean
/// let mut dx = [0.0; 4];
/// layer.backward(&x, &y, &[1.0; 4], 2, Some(&mut dx))?;
/// assert_eq!(layer.bn.bias_grad, [2.0]); // the upstream gradient where y > 0
/// # Ok::<(), batchnorm_nn::NnError>(())
/// ```
#[derive(Debug, Clone)]
pub struct BatchNormRelu<T: Scalar> {
    /// The batch normalization: parameters, running statistics, gradients.
    pub bn: BatchNorm<T>,
}

impl<T: Scalar> BatchNormRelu<T> {
    /// A fused batch normalization and ReLU for samples of `sample_dims` (`[C, spatial...]`).
    ///
    /// # Errors
    /// As [`BatchNorm::new`].
    pub fn new(sample_dims: &[usize], cfg: BatchNormConfig) -> Result<Self> {
        Ok(BatchNormRelu {
            bn: BatchNorm::new(sample_dims, cfg)?,
        })
    }
}

impl<T: Scalar> Layer<T> for BatchNormRelu<T> {
    fn name(&self) -> &'static str {
        "batch_norm_relu"
    }

    fn in_len(&self) -> usize {
        self.bn.in_len()
    }

    fn out_len(&self) -> usize {
        self.bn.out_len()
    }

    fn forward(&mut self, x: &[T], n: usize, mode: Mode, y: &mut [T]) -> Result<()> {
        self.bn.forward_with(x, Tail::Relu, n, mode, y)
    }

    fn backward(
        &mut self,
        x: &[T],
        y: &[T],
        dy: &[T],
        n: usize,
        dx: Option<&mut [T]>,
    ) -> Result<()> {
        super::check_batch("batch_norm_relu y", y.len(), n, self.bn.out_len())?;
        self.bn.backward_with(x, Some(y), dy, n, dx, None)
    }

    fn visit_params(&mut self, f: &mut dyn FnMut(Param<'_, T>)) {
        self.bn.visit_params(f);
    }

    fn visit_state(&mut self, f: &mut dyn FnMut(StateEntry<'_, T>)) {
        self.bn.visit_state(f);
    }

    fn boxed_clone(&self) -> Option<Box<dyn Layer<T>>> {
        Some(Box::new(self.clone()))
    }

    fn to_f64(&self) -> Option<Box<dyn Layer<f64>>> {
        Some(Box::new(BatchNormRelu {
            bn: self.bn.widened()?,
        }))
    }
}
