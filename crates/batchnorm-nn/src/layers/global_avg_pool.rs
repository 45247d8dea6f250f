//! Global average pooling (PyTorch's `AdaptiveAvgPool2d(1)` followed by `Flatten`).

use super::{check_batch, Layer, Mode};
use crate::error::{NnError, Result};
use crate::scalar::Scalar;

/// The mean of each channel of a `C x H x W` sample: `y[c] = sum_{h,w} x[c, h, w] / (H W)`,
/// `C` values a sample (the head of a ResNet). Backward: `dL/dx[c, h, w] = dL/dy[c] / (H W)`.
///
/// ```
/// use batchnorm_nn::layers::{GlobalAvgPool, Layer, Mode};
/// let mut pool = GlobalAvgPool::new(2, 4)?;
/// let mut y = [0.0f32; 2];
/// pool.forward(&[1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 0.0, 8.0], 1, Mode::Train, &mut y)?;
/// assert_eq!(y, [2.5, 2.0]);
/// # Ok::<(), batchnorm_nn::NnError>(())
/// ```
#[derive(Debug, Clone)]
pub struct GlobalAvgPool {
    channels: usize,
    plane: usize,
}

impl GlobalAvgPool {
    /// Pooling of `channels` planes of `plane` (= H W) values each.
    ///
    /// # Errors
    /// [`NnError::Empty`] if either is 0, [`NnError::TooLarge`] if their product overflows.
    pub fn new(channels: usize, plane: usize) -> Result<Self> {
        if channels == 0 || plane == 0 {
            return Err(NnError::Empty {
                what: "global average pool channels or plane",
            });
        }
        channels.checked_mul(plane).ok_or(NnError::TooLarge {
            what: "global average pool input",
            sizes: vec![channels, plane],
        })?;
        Ok(GlobalAvgPool { channels, plane })
    }
}

impl<T: Scalar> Layer<T> for GlobalAvgPool {
    fn name(&self) -> &'static str {
        "global_avg_pool"
    }

    fn in_len(&self) -> usize {
        self.channels * self.plane
    }

    fn out_len(&self) -> usize {
        self.channels
    }

    fn forward(&mut self, x: &[T], n: usize, _mode: Mode, y: &mut [T]) -> Result<()> {
        check_batch("global_avg_pool x", x.len(), n, self.channels * self.plane)?;
        check_batch("global_avg_pool y", y.len(), n, self.channels)?;
        let scale = T::ONE / T::from_f64(self.plane as f64);
        for (o, plane) in y.iter_mut().zip(x.chunks_exact(self.plane)) {
            let mut sum = T::ZERO;
            for &v in plane {
                sum += v;
            }
            *o = sum * scale;
        }
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
        check_batch("global_avg_pool dy", dy.len(), n, self.channels)?;
        if let Some(dx) = dx {
            check_batch(
                "global_avg_pool dx",
                dx.len(),
                n,
                self.channels * self.plane,
            )?;
            let scale = T::ONE / T::from_f64(self.plane as f64);
            for (plane, &g) in dx.chunks_exact_mut(self.plane).zip(dy) {
                plane.fill(g * scale);
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
