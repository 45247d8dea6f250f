//! Flattening a feature map into a vector (PyTorch's `Flatten`).

use super::{check_batch, Layer, Mode};
use crate::error::{NnError, Result};
use crate::scalar::Scalar;

/// Reshapes each sample `C x H x W` into a vector of `C H W` values, in PyTorch's order
/// (`torch.flatten` of an NCHW tensor from dim 1: index `(c H + h) W + w`).
///
/// Every layer here already sees a sample as a flat run in that memory order, so the map is the
/// identity on memory: `y = x` and `dL/dx = dL/dy`. The layer exists so that a network reads
/// as its PyTorch counterpart, layer for layer (and state-dict indices line up).
#[derive(Debug, Clone)]
pub struct Flatten {
    len: usize,
}

impl Flatten {
    /// Flattening of samples of `len` values.
    ///
    /// # Errors
    /// [`NnError::Empty`] if `len` is 0.
    pub fn new(len: usize) -> Result<Self> {
        if len == 0 {
            return Err(NnError::Empty {
                what: "flatten width",
            });
        }
        Ok(Flatten { len })
    }
}

impl<T: Scalar> Layer<T> for Flatten {
    fn name(&self) -> &'static str {
        "flatten"
    }

    fn in_len(&self) -> usize {
        self.len
    }

    fn out_len(&self) -> usize {
        self.len
    }

    fn forward(&mut self, x: &[T], n: usize, _mode: Mode, y: &mut [T]) -> Result<()> {
        check_batch("flatten x", x.len(), n, self.len)?;
        check_batch("flatten y", y.len(), n, self.len)?;
        y.copy_from_slice(x);
        Ok(())
    }

    fn backward(
        &mut self,
        _x: &[T],
        _y: &[T],
        dy: &[T],
        n: usize,
        dx: Option<&mut [T]>,
    ) -> Result<()> {
        check_batch("flatten dy", dy.len(), n, self.len)?;
        if let Some(dx) = dx {
            check_batch("flatten dx", dx.len(), n, self.len)?;
            dx.copy_from_slice(dy);
        }
        Ok(())
    }

    fn boxed_clone(&self) -> Option<Box<dyn Layer<T>>> {
        Some(Box::new(self.clone()))
    }

    fn to_f64(&self) -> Option<Box<dyn Layer<f64>>> {
        Some(Box::new(self.clone()))
    }
}
