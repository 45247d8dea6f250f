//! "Noisy BN": a random per-channel affine map placed after a batch normalization, redrawn at
//! every training step (Santurkar et al. 2018, section 2.1), so that the distribution a layer
//! feeds the next keeps moving however well BN normalises it.

use batchnorm_nn::layers::{Layer, Mode};
use batchnorm_nn::{NnError, Rng, Scalar};

/// The widths of the noise: per channel `c` and step `t`, `y = x * s_t,c + m_t,c` with
/// `m_t,c ~ U(-shift, shift)` and `s_t,c ~ U(1, scale)`, drawn independently.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Noise {
    /// Half-width of the shift's uniform distribution (finite, `>= 0`).
    pub shift: f64,
    /// Upper end of the scale's uniform distribution on `[1, scale]` (finite, `>= 1`).
    pub scale: f64,
}

impl Noise {
    /// The mean of the scale, `(1 + scale) / 2` (the shift's mean is 0).
    pub fn mean_scale(self) -> f64 {
        0.5 * (1.0 + self.scale)
    }
}

/// `y = x * s_c + m_c` per channel of samples of `channels x inner` values (channels first: a
/// feature of an MLP is a channel with `inner = 1`, a conv net's channel has `inner = H x W`).
///
/// - [`Mode::Train`] draws new `s` and `m` for every channel, then applies them: each training
///   step sees a new map.
/// - [`Mode::BatchStats`] applies the current draw (a measurement at the weights of a step sees
///   the map of that step).
/// - [`Mode::Eval`] applies the expected map, `x * (1 + scale) / 2`.
///
/// Backward: `dx = dy * s_c` with the map of the last forward. No parameters.
///
/// ```
/// use batchnorm_lab::experiments::why::{Noise, NoisyAffine};
/// use batchnorm_nn::layers::{Layer, Mode};
///
/// let noise = Noise { shift: 1.0, scale: 3.0 };
/// let mut layer = NoisyAffine::new(2, 1, noise, 7)?;
/// let x = [1.0f32, 1.0, 1.0, 1.0]; // two samples of two channels
/// let mut y = [0.0f32; 4];
/// Layer::<f32>::forward(&mut layer, &x, 2, Mode::Train, &mut y)?; // a new draw
/// for (c, (s, m)) in layer.draw().enumerate() {
///     assert!((1.0..=3.0).contains(&s) && (-1.0..=1.0).contains(&m));
///     assert_eq!(y[c], y[2 + c]); // one map per channel, every sample
/// }
/// Layer::<f32>::forward(&mut layer, &x, 2, Mode::Eval, &mut y)?; // the expected map: 2 x
/// assert_eq!(y, [2.0; 4]);
/// # Ok::<(), batchnorm_nn::NnError>(())
/// ```
#[derive(Debug, Clone)]
pub struct NoisyAffine {
    channels: usize,
    /// Values per channel and sample.
    inner: usize,
    noise: Noise,
    rng: Rng,
    /// The current draw, one per channel.
    scale: Vec<f64>,
    shift: Vec<f64>,
    /// The map of the last forward: the current draw, or the expected one after `Mode::Eval`.
    applied_scale: Vec<f64>,
}

impl NoisyAffine {
    /// A noise layer over samples of `channels x inner` values whose draws come from
    /// `Rng::new(seed)`; the first draw is made here (so a measurement before any training step
    /// sees noise too).
    ///
    /// # Errors
    /// [`NnError::Empty`] for `channels` or `inner` 0; [`NnError::InvalidConfig`] for noise
    /// widths out of range.
    pub fn new(channels: usize, inner: usize, noise: Noise, seed: u64) -> Result<Self, NnError> {
        if channels == 0 || inner == 0 {
            return Err(NnError::Empty {
                what: "noise layer width",
            });
        }
        if !(noise.shift.is_finite() && noise.shift >= 0.0) {
            return Err(NnError::InvalidConfig {
                what: "noise shift",
                value: noise.shift,
                why: "must be finite and >= 0",
            });
        }
        if !(noise.scale.is_finite() && noise.scale >= 1.0) {
            return Err(NnError::InvalidConfig {
                what: "noise scale",
                value: noise.scale,
                why: "must be finite and >= 1",
            });
        }
        let mut layer = NoisyAffine {
            channels,
            inner,
            noise,
            rng: Rng::new(seed),
            scale: vec![1.0; channels],
            shift: vec![0.0; channels],
            applied_scale: vec![1.0; channels],
        };
        layer.redraw();
        Ok(layer)
    }

    /// Draws a new map for every channel.
    fn redraw(&mut self) {
        let Noise { shift, scale } = self.noise;
        for (s, m) in self.scale.iter_mut().zip(&mut self.shift) {
            *s = 1.0 + (scale - 1.0) * self.rng.uniform();
            *m = shift * (2.0 * self.rng.uniform() - 1.0);
        }
    }

    /// The current draw: per channel `(s, m)`.
    pub fn draw(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        self.scale.iter().copied().zip(self.shift.iter().copied())
    }
}

/// Checks that `buf` holds `n` samples of `width` values.
fn check(buffer: &'static str, got: usize, n: usize, width: usize) -> Result<(), NnError> {
    if n.checked_mul(width) != Some(got) {
        return Err(NnError::LengthMismatch {
            buffer,
            expected: n.saturating_mul(width),
            got,
        });
    }
    Ok(())
}

impl<T: Scalar> Layer<T> for NoisyAffine {
    fn name(&self) -> &'static str {
        "noisy_affine"
    }

    fn in_len(&self) -> usize {
        self.channels * self.inner
    }

    fn out_len(&self) -> usize {
        self.channels * self.inner
    }

    fn forward(&mut self, x: &[T], n: usize, mode: Mode, y: &mut [T]) -> Result<(), NnError> {
        let width = self.channels * self.inner;
        check("noisy_affine x", x.len(), n, width)?;
        check("noisy_affine y", y.len(), n, width)?;
        match mode {
            Mode::Train => {
                self.redraw();
                self.applied_scale.copy_from_slice(&self.scale);
            }
            Mode::BatchStats => self.applied_scale.copy_from_slice(&self.scale),
            Mode::Eval => self.applied_scale.fill(self.noise.mean_scale()),
        }
        let eval = mode == Mode::Eval;
        // One run of `inner` values per channel and sample, channels in order.
        let runs = x
            .chunks_exact(self.inner)
            .zip(y.chunks_exact_mut(self.inner));
        for (k, (xr, yr)) in runs.enumerate() {
            let c = k % self.channels;
            let (s, m) = (
                self.applied_scale[c],
                if eval { 0.0 } else { self.shift[c] },
            );
            for (&xi, yi) in xr.iter().zip(yr.iter_mut()) {
                *yi = T::from_f64(xi.to_f64() * s + m);
            }
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
    ) -> Result<(), NnError> {
        let width = self.channels * self.inner;
        check("noisy_affine dy", dy.len(), n, width)?;
        if let Some(dx) = dx {
            check("noisy_affine dx", dx.len(), n, width)?;
            let runs = dy
                .chunks_exact(self.inner)
                .zip(dx.chunks_exact_mut(self.inner));
            for (k, (dyr, dxr)) in runs.enumerate() {
                let s = self.applied_scale[k % self.channels];
                for (&d, g) in dyr.iter().zip(dxr.iter_mut()) {
                    *g = T::from_f64(d.to_f64() * s);
                }
            }
        }
        Ok(())
    }

    fn boxed_clone(&self) -> Option<Box<dyn Layer<T>>> {
        Some(Box::new(self.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOISE: Noise = Noise {
        shift: 0.5,
        scale: 3.0,
    };

    /// `sum(w * layer(x))` for fixed weights `w`: a scalar loss for finite differences.
    fn loss(layer: &mut NoisyAffine, x: &[f64], w: &[f64], n: usize) -> f64 {
        let mut y = vec![0.0; x.len()];
        layer.forward(x, n, Mode::BatchStats, &mut y).unwrap();
        y.iter().zip(w).map(|(a, b)| a * b).sum()
    }

    #[test]
    fn backward_matches_central_differences_of_the_current_draw() {
        // 3 samples of 2 channels of 2 values (a conv net's layout, channels first).
        let (n, width) = (3, 4);
        let mut layer = NoisyAffine::new(2, 2, NOISE, 9).unwrap();
        let mut rng = Rng::new(2);
        let x: Vec<f64> = (0..n * width).map(|_| rng.normal()).collect();
        let w: Vec<f64> = (0..n * width).map(|_| rng.normal()).collect();
        let mut y = vec![0.0; n * width];
        layer.forward(&x, n, Mode::Train, &mut y).unwrap();
        // Channel 0 owns values 0 and 1 of each sample, channel 1 values 2 and 3.
        let draw: Vec<(f64, f64)> = layer.draw().collect();
        for (i, (&xi, &yi)) in x.iter().zip(&y).enumerate() {
            let (s, m) = draw[(i % width) / 2];
            assert_eq!(yi, xi * s + m, "{i}");
        }
        let mut dx = vec![0.0; n * width];
        Layer::<f64>::backward(&mut layer, &x, &y, &w, n, Some(&mut dx)).unwrap();
        // The map is affine in x: a central difference is exact up to rounding of values of
        // size ~10 divided by 2h = 2e-3, so within ~1e-12.
        let h = 1e-3;
        for i in 0..x.len() {
            let (mut up, mut down) = (x.clone(), x.clone());
            up[i] += h;
            down[i] -= h;
            let fd = (loss(&mut layer, &up, &w, n) - loss(&mut layer, &down, &w, n)) / (2.0 * h);
            assert!((fd - dx[i]).abs() < 1e-9, "{i}: {fd} vs {}", dx[i]);
        }
    }

    #[test]
    fn each_training_step_draws_a_new_map_within_the_widths() {
        let (n, width) = (2, 50);
        let mut layer = NoisyAffine::new(width, 1, NOISE, 1).unwrap();
        let x = vec![1.0f64; n * width];
        let mut y = vec![0.0; n * width];
        let mut draws = Vec::new();
        for _ in 0..3 {
            layer.forward(&x, n, Mode::Train, &mut y).unwrap();
            let draw: Vec<(f64, f64)> = layer.draw().collect();
            for (c, &(s, m)) in draw.iter().enumerate() {
                assert!(
                    (1.0..=3.0).contains(&s) && (-0.5..=0.5).contains(&m),
                    "{s} {m}"
                );
                // Every sample of channel c gets the same map: x = 1 gives s + m.
                assert_eq!(y[c], s + m);
                assert_eq!(y[width + c], s + m);
            }
            // A measurement in BatchStats mode sees the same map as the step.
            let mut z = vec![0.0; n * width];
            layer.forward(&x, n, Mode::BatchStats, &mut z).unwrap();
            assert_eq!(z, y);
            draws.push(draw);
        }
        assert_ne!(draws[0], draws[1]);
        assert_ne!(draws[1], draws[2]);
        // Evaluation applies the expected map: scale (1 + 3) / 2, no shift.
        layer.forward(&x, n, Mode::Eval, &mut y).unwrap();
        assert!(y.iter().all(|&v| v == 2.0));
        // The draws depend only on the seed.
        let mut again = NoisyAffine::new(width, 1, NOISE, 1).unwrap();
        again.forward(&x, n, Mode::Train, &mut y).unwrap();
        assert_eq!(again.draw().collect::<Vec<_>>(), draws[0]);
    }

    #[test]
    fn bad_widths_are_errors() {
        for noise in [
            Noise {
                shift: -1.0,
                scale: 2.0,
            },
            Noise {
                shift: 0.0,
                scale: 0.5,
            },
            Noise {
                shift: f64::NAN,
                scale: 2.0,
            },
        ] {
            assert!(NoisyAffine::new(3, 1, noise, 1).is_err(), "{noise:?}");
        }
        assert!(NoisyAffine::new(0, 1, NOISE, 1).is_err());
        assert!(NoisyAffine::new(3, 0, NOISE, 1).is_err());
    }
}
