//! Stochastic gradient descent.

use crate::error::{NnError, Result};
use crate::model::Sequential;
use crate::scalar::Scalar;

/// Settings of [`Sgd`]; defaults are plain SGD with learning rate 0.01.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdConfig {
    /// Step size `lr`. Default 0.01. Must be finite and > 0.
    pub lr: f64,
    /// Momentum `mu` (0 = none). Default 0. Must lie in [0, 1).
    pub momentum: f64,
    /// L2 penalty `lambda`, added to the gradient as `lambda * p`. Default 0. Must be finite and >= 0.
    pub weight_decay: f64,
}

impl Default for SgdConfig {
    fn default() -> Self {
        SgdConfig {
            lr: 0.01,
            momentum: 0.0,
            weight_decay: 0.0,
        }
    }
}

/// SGD with optional momentum and weight decay, in PyTorch's formulation:
/// `g = grad + lambda p`; with momentum `v = mu v + g` (`v = g` at the first step) and
/// `p -= lr v`; without, `p -= lr g`.
///
/// The velocity buffers are allocated once, in [`Sgd::new`], for the model given there.
#[derive(Debug, Clone)]
pub struct Sgd<T> {
    cfg: SgdConfig,
    velocity: Vec<Vec<T>>,
    started: bool,
}

impl<T: Scalar> Sgd<T> {
    /// An optimiser for `model`'s parameters.
    ///
    /// # Errors
    /// [`NnError::InvalidConfig`] for a setting out of range.
    pub fn new(cfg: SgdConfig, model: &mut Sequential<T>) -> Result<Self> {
        if !(cfg.lr.is_finite() && cfg.lr > 0.0) {
            return Err(NnError::InvalidConfig {
                what: "learning rate",
                value: cfg.lr,
                why: "must be finite and > 0",
            });
        }
        if !(0.0..1.0).contains(&cfg.momentum) {
            return Err(NnError::InvalidConfig {
                what: "momentum",
                value: cfg.momentum,
                why: "must lie in [0, 1)",
            });
        }
        if !(cfg.weight_decay.is_finite() && cfg.weight_decay >= 0.0) {
            return Err(NnError::InvalidConfig {
                what: "weight decay",
                value: cfg.weight_decay,
                why: "must be finite and >= 0",
            });
        }
        let mut velocity = Vec::new();
        if cfg.momentum > 0.0 {
            model.visit_params(&mut |p| velocity.push(vec![T::ZERO; p.value.len()]));
        }
        Ok(Sgd {
            cfg,
            velocity,
            started: false,
        })
    }

    /// The settings.
    pub fn config(&self) -> SgdConfig {
        self.cfg
    }

    /// Applies one update from the gradients the model's last `backward` wrote.
    pub fn step(&mut self, model: &mut Sequential<T>) {
        let lr = T::from_f64(self.cfg.lr);
        let wd = T::from_f64(self.cfg.weight_decay);
        let mu = T::from_f64(self.cfg.momentum);
        let decay = self.cfg.weight_decay > 0.0;
        let started = self.started;
        if self.cfg.momentum > 0.0 {
            let mut vs = self.velocity.iter_mut();
            model.visit_params(&mut |p| {
                // The same model and visiting order as in `new`, so there is one buffer per tensor.
                let Some(v) = vs.next() else { return };
                for ((w, &g), v) in p.value.iter_mut().zip(p.grad.iter()).zip(v.iter_mut()) {
                    let g = if decay { g + wd * *w } else { g };
                    *v = if started { mu * *v + g } else { g };
                    *w = *w - lr * *v;
                }
            });
        } else {
            model.visit_params(&mut |p| {
                for (w, &g) in p.value.iter_mut().zip(p.grad.iter()) {
                    let g = if decay { g + wd * *w } else { g };
                    *w = *w - lr * g;
                }
            });
        }
        self.started = true;
    }
}
