//! A stack of layers with its workspaces.

use crate::error::{check_len, NnError, Result};
use crate::layers::{Layer, Mode, Param};
use crate::scalar::Scalar;

/// Layers applied in order, with every activation and gradient buffer allocated once, in
/// [`Sequential::new`], for batches of up to `capacity` samples: training steps allocate nothing
/// of their own. (The kernels underneath do: `matrixmultiply` a packing buffer per product, the
/// core batch-normalization kernels their returned statistics; see `tests/no_alloc.rs`.)
///
/// Usage per step: fill [`Sequential::input_mut`], call [`Sequential::forward`], compute the
/// loss gradient into [`Sequential::output_and_grad`], call [`Sequential::backward`], then let an
/// optimiser read the parameter gradients through [`Sequential::visit_params`].
#[derive(Debug)]
pub struct Sequential<T: Scalar> {
    layers: Vec<Box<dyn Layer<T>>>,
    /// `acts[0]` is the input, `acts[i + 1]` the output of layer `i`; each `capacity * len`.
    acts: Vec<Vec<T>>,
    /// Ping-pong buffers for gradients flowing backwards; each `capacity * max len`.
    grad_a: Vec<T>,
    grad_b: Vec<T>,
    /// `dL/dinput` of the last backward that asked for it.
    input_grad: Vec<T>,
    capacity: usize,
    /// Batch size of the last forward (0 = none yet).
    last_n: usize,
}

impl<T: Scalar> Sequential<T> {
    /// Chains `layers`, checking that each one's output fits the next one's input, and allocates
    /// workspaces for batches of up to `capacity` samples.
    ///
    /// # Errors
    /// [`NnError::Empty`] for no layers or `capacity = 0`; [`NnError::LayerMismatch`].
    pub fn new(layers: Vec<Box<dyn Layer<T>>>, capacity: usize) -> Result<Self> {
        let first = layers.first().ok_or(NnError::Empty {
            what: "model (no layers)",
        })?;
        if capacity == 0 {
            return Err(NnError::Empty {
                what: "batch capacity",
            });
        }
        let mut lens = vec![first.in_len()];
        for (index, l) in layers.iter().enumerate() {
            let got = *lens.last().unwrap_or(&0);
            if l.in_len() != got {
                return Err(NnError::LayerMismatch {
                    index,
                    name: l.name(),
                    expected: l.in_len(),
                    got,
                });
            }
            lens.push(l.out_len());
        }
        let too_big = |len: usize| NnError::TooLarge {
            what: "workspace (capacity x values per sample)",
            sizes: vec![capacity, len],
        };
        let max_len = *lens.iter().max().unwrap_or(&0);
        let grad_len = capacity
            .checked_mul(max_len)
            .ok_or_else(|| too_big(max_len))?;
        let mut acts = Vec::with_capacity(lens.len());
        for &len in &lens {
            let size = capacity.checked_mul(len).ok_or_else(|| too_big(len))?;
            acts.push(vec![T::ZERO; size]);
        }
        Ok(Sequential {
            input_grad: vec![T::ZERO; capacity * lens[0]],
            layers,
            acts,
            grad_a: vec![T::ZERO; grad_len],
            grad_b: vec![T::ZERO; grad_len],
            capacity,
            last_n: 0,
        })
    }

    /// The largest batch the workspaces hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The layers, in order.
    pub fn layers(&self) -> &[Box<dyn Layer<T>>] {
        &self.layers
    }

    /// Mutable access to the layers (to copy weights between models, say).
    pub fn layers_mut(&mut self) -> &mut [Box<dyn Layer<T>>] {
        &mut self.layers
    }

    /// Values per input sample.
    pub fn in_len(&self) -> usize {
        self.layers[0].in_len()
    }

    /// Values per output sample.
    pub fn out_len(&self) -> usize {
        self.layers[self.layers.len() - 1].out_len()
    }

    fn check_n(&self, n: usize) -> Result<()> {
        if n == 0 || n > self.capacity {
            return Err(NnError::BatchSize {
                capacity: self.capacity,
                got: n,
            });
        }
        Ok(())
    }

    /// The input buffer for a batch of `n` samples (`n * in_len` values), to fill before
    /// [`Sequential::forward`].
    ///
    /// # Errors
    /// [`NnError::BatchSize`] unless `1 <= n <= capacity`.
    pub fn input_mut(&mut self, n: usize) -> Result<&mut [T]> {
        self.check_n(n)?;
        let len = n * self.in_len();
        Ok(&mut self.acts[0][..len])
    }

    /// Runs every layer on the first `n` samples of the input buffer; returns the output.
    ///
    /// # Errors
    /// [`NnError::BatchSize`], or a layer's error.
    pub fn forward(&mut self, n: usize, mode: Mode) -> Result<&[T]> {
        self.check_n(n)?;
        self.last_n = 0;
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let (before, after) = self.acts.split_at_mut(i + 1);
            let x = &before[i][..n * layer.in_len()];
            let y = &mut after[0][..n * layer.out_len()];
            layer.forward(x, n, mode, y)?;
        }
        self.last_n = n;
        Ok(self.output(n))
    }

    /// Copies `x` (`n * in_len` values) into the input buffer, then runs [`Sequential::forward`].
    ///
    /// # Errors
    /// As [`Sequential::forward`], and a length mismatch.
    pub fn forward_from(&mut self, x: &[T], n: usize, mode: Mode) -> Result<&[T]> {
        let input = self.input_mut(n)?;
        check_len("model input", x.len(), input.len())?;
        input.copy_from_slice(x);
        self.forward(n, mode)
    }

    /// The output of the last forward over `n` samples.
    fn output(&self, n: usize) -> &[T] {
        let out = &self.acts[self.acts.len() - 1];
        &out[..n * self.out_len()]
    }

    /// The activation entering layer `index` (`index = layers().len()` gives the output) from
    /// the last forward, `n * width` values.
    ///
    /// # Errors
    /// [`NnError::BatchSize`] if `n` is not the last forward's batch size; an index past the end
    /// gives [`NnError::IndexOutOfRange`].
    pub fn activation(&self, index: usize, n: usize) -> Result<&[T]> {
        if n != self.last_n || n == 0 {
            return Err(NnError::BatchSize {
                capacity: self.last_n,
                got: n,
            });
        }
        let buf = self.acts.get(index).ok_or(NnError::IndexOutOfRange {
            what: "activation index",
            index,
            len: self.acts.len(),
        })?;
        Ok(&buf[..n * buf.len() / self.capacity])
    }

    /// The output of the last forward and the buffer for `dL/doutput`, both `n * out_len`.
    ///
    /// # Errors
    /// [`NnError::BatchSize`] if `n` is not the last forward's batch size.
    pub fn output_and_grad(&mut self, n: usize) -> Result<(&[T], &mut [T])> {
        if n != self.last_n || n == 0 {
            return Err(NnError::BatchSize {
                capacity: self.last_n,
                got: n,
            });
        }
        let len = n * self.out_len();
        let out = &self.acts[self.acts.len() - 1][..len];
        Ok((out, &mut self.grad_a[..len]))
    }

    /// Back-propagates the gradient written into [`Sequential::output_and_grad`] through every
    /// layer, writing all parameter gradients. The gradient with respect to the input is only
    /// computed when `input_grad` is true (training skips it: nothing consumes it); it is then
    /// available from [`Sequential::input_grad`].
    ///
    /// # Errors
    /// [`NnError::BatchSize`] if `n` is not the last forward's batch size, or a layer's error.
    pub fn backward(&mut self, n: usize, input_grad: bool) -> Result<()> {
        if n != self.last_n || n == 0 {
            return Err(NnError::BatchSize {
                capacity: self.last_n,
                got: n,
            });
        }
        for i in (0..self.layers.len()).rev() {
            let layer = &mut self.layers[i];
            let x = &self.acts[i][..n * layer.in_len()];
            let y = &self.acts[i + 1][..n * layer.out_len()];
            let dy = &self.grad_a[..n * layer.out_len()];
            let dx = if i > 0 {
                Some(&mut self.grad_b[..n * layer.in_len()])
            } else if input_grad {
                Some(&mut self.input_grad[..n * layer.in_len()])
            } else {
                None
            };
            layer.backward(x, y, dy, n, dx)?;
            std::mem::swap(&mut self.grad_a, &mut self.grad_b);
        }
        Ok(())
    }

    /// `dL/dinput` of the last backward run with `input_grad = true`, `n * in_len` values.
    pub fn input_grad(&self, n: usize) -> &[T] {
        &self.input_grad[..(n.min(self.capacity)) * self.in_len()]
    }

    /// Calls `f` on every parameter and its gradient, layer by layer, always in the same order.
    pub fn visit_params(&mut self, f: &mut dyn FnMut(Param<'_, T>)) {
        for l in &mut self.layers {
            l.visit_params(f);
        }
    }

    /// Total number of parameters.
    pub fn param_count(&mut self) -> usize {
        let mut n = 0;
        self.visit_params(&mut |p| n += p.value.len());
        n
    }
}
