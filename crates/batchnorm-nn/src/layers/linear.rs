//! Fully connected layer.

use super::{check_batch, widen, BatchNorm, Layer, Mode, Param, StateEntry, StateValue};
use crate::error::{NnError, Result};
use crate::fold::{fold_into_linear, FoldError};
use crate::init;
use crate::matmul::{gemm, MatRef};
use crate::rng::Rng;
use crate::scalar::Scalar;

/// `y = x W^T + b`: `x` is `n x in`, `W` is `out x in` (row-major, PyTorch's convention), `b` has
/// `out` entries.
///
/// Backward, with `dy = dL/dy` (`n x out`):
/// `dL/dW = dy^T x` (`out x in`), `dL/db_j = sum_i dy_ij`, `dL/dx = dy W` (`n x in`).
#[derive(Debug, Clone)]
pub struct Linear<T> {
    /// Weights, `out x in`, row-major.
    pub weight: Vec<T>,
    /// Biases, `out`.
    pub bias: Vec<T>,
    /// Gradient of the loss with respect to `weight`.
    pub weight_grad: Vec<T>,
    /// Gradient of the loss with respect to `bias`.
    pub bias_grad: Vec<T>,
    in_len: usize,
    out_len: usize,
}

impl<T: Scalar> Linear<T> {
    /// A layer with zero weights and biases.
    ///
    /// # Errors
    /// [`NnError::Empty`] if either size is 0, [`NnError::TooLarge`] if their product overflows.
    pub fn new(in_len: usize, out_len: usize) -> Result<Self> {
        if in_len == 0 || out_len == 0 {
            return Err(NnError::Empty {
                what: "linear layer dimension",
            });
        }
        let w = in_len.checked_mul(out_len).ok_or(NnError::TooLarge {
            what: "linear layer weight",
            sizes: vec![out_len, in_len],
        })?;
        Ok(Linear {
            weight: vec![T::ZERO; w],
            bias: vec![T::ZERO; out_len],
            weight_grad: vec![T::ZERO; w],
            bias_grad: vec![T::ZERO; out_len],
            in_len,
            out_len,
        })
    }

    /// Weights from N(0, `std`^2) drawn from `rng` (row by row), zero biases.
    ///
    /// # Errors
    /// As [`Linear::new`], and [`NnError::InvalidConfig`] for a negative or non-finite `std`.
    pub fn gaussian(in_len: usize, out_len: usize, std: f64, rng: &mut Rng) -> Result<Self> {
        let mut l = Self::new(in_len, out_len)?;
        init::gaussian(&mut l.weight, std, rng)?;
        Ok(l)
    }
}

impl<T: Scalar> Layer<T> for Linear<T> {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn in_len(&self) -> usize {
        self.in_len
    }

    fn out_len(&self) -> usize {
        self.out_len
    }

    fn forward(&mut self, x: &[T], n: usize, _mode: Mode, y: &mut [T]) -> Result<()> {
        check_batch("linear x", x.len(), n, self.in_len)?;
        check_batch("linear y", y.len(), n, self.out_len)?;
        for row in y.chunks_exact_mut(self.out_len) {
            row.copy_from_slice(&self.bias);
        }
        let w = MatRef::row_major(&self.weight, self.out_len, self.in_len);
        gemm(
            T::ONE,
            MatRef::row_major(x, n, self.in_len),
            w.t(),
            T::ONE,
            y,
        )
    }

    fn backward(
        &mut self,
        x: &[T],
        _y: &[T],
        dy: &[T],
        n: usize,
        dx: Option<&mut [T]>,
    ) -> Result<()> {
        check_batch("linear x", x.len(), n, self.in_len)?;
        check_batch("linear dy", dy.len(), n, self.out_len)?;
        let dyv = MatRef::row_major(dy, n, self.out_len);
        // dW = dy^T x
        gemm(
            T::ONE,
            dyv.t(),
            MatRef::row_major(x, n, self.in_len),
            T::ZERO,
            &mut self.weight_grad,
        )?;
        // db = column sums of dy
        self.bias_grad.fill(T::ZERO);
        for row in dy.chunks_exact(self.out_len) {
            for (g, &d) in self.bias_grad.iter_mut().zip(row) {
                *g += d;
            }
        }
        if let Some(dx) = dx {
            check_batch("linear dx", dx.len(), n, self.in_len)?;
            // dx = dy W
            let w = MatRef::row_major(&self.weight, self.out_len, self.in_len);
            gemm(T::ONE, dyv, w, T::ZERO, dx)?;
        }
        Ok(())
    }

    fn visit_state(&mut self, f: &mut dyn FnMut(StateEntry<'_, T>)) {
        let (out, inp) = (self.out_len, self.in_len);
        f(StateEntry {
            name: "weight",
            shape: vec![out, inp],
            value: StateValue::Float(&mut self.weight),
        });
        f(StateEntry {
            name: "bias",
            shape: vec![out],
            value: StateValue::Float(&mut self.bias),
        });
    }

    fn boxed_clone(&self) -> Option<Box<dyn Layer<T>>> {
        Some(Box::new(self.clone()))
    }

    fn to_f64(&self) -> Option<Box<dyn Layer<f64>>> {
        Some(Box::new(Linear {
            weight: widen(&self.weight),
            bias: widen(&self.bias),
            weight_grad: widen(&self.weight_grad),
            bias_grad: widen(&self.bias_grad),
            in_len: self.in_len,
            out_len: self.out_len,
        }))
    }

    fn fold_batch_norm(
        &self,
        bn: &BatchNorm<T>,
    ) -> Option<std::result::Result<Box<dyn Layer<T>>, FoldError>> {
        Some(fold_into_linear(self, bn).map(|l| Box::new(l) as Box<dyn Layer<T>>))
    }

    fn visit_params(&mut self, f: &mut dyn FnMut(Param<'_, T>)) {
        f(Param {
            name: "weight",
            value: &mut self.weight,
            grad: &mut self.weight_grad,
        });
        f(Param {
            name: "bias",
            value: &mut self.bias,
            grad: &mut self.bias_grad,
        });
    }
}
