//! Element-wise activations.

use super::{check_batch, Layer, Mode};
use crate::error::{NnError, Result};
use crate::scalar::Scalar;

/// The logistic sigmoid `y = 1 / (1 + e^-x)`, element-wise.
///
/// Backward: `dy/dx = y (1 - y)`, so `dL/dx = dL/dy * y (1 - y)` (uses the saved output only).
#[derive(Debug, Clone)]
pub struct Sigmoid {
    len: usize,
}

impl Sigmoid {
    /// A sigmoid over samples of `len` values.
    ///
    /// # Errors
    /// [`NnError::Empty`] if `len` is 0.
    pub fn new(len: usize) -> Result<Self> {
        if len == 0 {
            return Err(NnError::Empty {
                what: "sigmoid width",
            });
        }
        Ok(Sigmoid { len })
    }
}

impl<T: Scalar> Layer<T> for Sigmoid {
    fn name(&self) -> &'static str {
        "sigmoid"
    }

    fn in_len(&self) -> usize {
        self.len
    }

    fn out_len(&self) -> usize {
        self.len
    }

    fn forward(&mut self, x: &[T], n: usize, _mode: Mode, y: &mut [T]) -> Result<()> {
        check_batch("sigmoid x", x.len(), n, self.len)?;
        check_batch("sigmoid y", y.len(), n, self.len)?;
        T::sigmoid_slice(x, y);
        Ok(())
    }

    fn backward(
        &mut self,
        _x: &[T],
        y: &[T],
        dy: &[T],
        n: usize,
        dx: Option<&mut [T]>,
    ) -> Result<()> {
        check_batch("sigmoid y", y.len(), n, self.len)?;
        check_batch("sigmoid dy", dy.len(), n, self.len)?;
        if let Some(dx) = dx {
            check_batch("sigmoid dx", dx.len(), n, self.len)?;
            for ((g, &o), &d) in dx.iter_mut().zip(y).zip(dy) {
                *g = d * o * (T::ONE - o);
            }
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

/// The rectifier `y = max(x, 0)`, element-wise.
///
/// Backward: `dL/dx = dL/dy` where `x > 0`, else 0 (the subgradient 0 is taken at `x = 0`).
#[derive(Debug, Clone)]
pub struct Relu {
    len: usize,
}

impl Relu {
    /// A ReLU over samples of `len` values.
    ///
    /// # Errors
    /// [`NnError::Empty`] if `len` is 0.
    pub fn new(len: usize) -> Result<Self> {
        if len == 0 {
            return Err(NnError::Empty { what: "relu width" });
        }
        Ok(Relu { len })
    }
}

impl<T: Scalar> Layer<T> for Relu {
    fn name(&self) -> &'static str {
        "relu"
    }

    fn in_len(&self) -> usize {
        self.len
    }

    fn out_len(&self) -> usize {
        self.len
    }

    fn forward(&mut self, x: &[T], n: usize, _mode: Mode, y: &mut [T]) -> Result<()> {
        check_batch("relu x", x.len(), n, self.len)?;
        check_batch("relu y", y.len(), n, self.len)?;
        for (o, &i) in y.iter_mut().zip(x) {
            *o = if i > T::ZERO { i } else { T::ZERO };
        }
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
        check_batch("relu x", x.len(), n, self.len)?;
        check_batch("relu dy", dy.len(), n, self.len)?;
        if let Some(dx) = dx {
            check_batch("relu dx", dx.len(), n, self.len)?;
            for ((g, &i), &d) in dx.iter_mut().zip(x).zip(dy) {
                *g = if i > T::ZERO { d } else { T::ZERO };
            }
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
