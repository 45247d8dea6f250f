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
    /// The length of every parameter tensor of the model it was built for, in visiting order.
    lens: Vec<usize>,
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
        let mut lens = Vec::new();
        model.visit_params(&mut |p| lens.push(p.value.len()));
        let velocity = if cfg.momentum > 0.0 {
            lens.iter().map(|&l| vec![T::ZERO; l]).collect()
        } else {
            Vec::new()
        };
        Ok(Sgd {
            cfg,
            lens,
            velocity,
            started: false,
        })
    }

    /// The settings.
    pub fn config(&self) -> SgdConfig {
        self.cfg
    }

    /// Applies one update from the gradients the model's last `backward` wrote.
    ///
    /// # Errors
    /// [`NnError::ParamCount`] or [`NnError::ParamLength`] when `model`'s parameters are not
    /// those of the model the optimiser was built for; nothing is updated then.
    pub fn step(&mut self, model: &mut Sequential<T>) -> Result<()> {
        self.check(model)?;
        let lr = T::from_f64(self.cfg.lr);
        let wd = T::from_f64(self.cfg.weight_decay);
        let mu = T::from_f64(self.cfg.momentum);
        let decay = self.cfg.weight_decay > 0.0;
        let started = self.started;
        if self.cfg.momentum > 0.0 {
            let mut vs = self.velocity.iter_mut();
            model.visit_params(&mut |p| {
                // Checked above: the same tensors as in `new`, one buffer each.
                let Some(v) = vs.next() else { return };
                momentum_update(p.value, p.grad, v, lr, wd, decay, mu, started);
            });
        } else {
            model.visit_params(&mut |p| plain_update(p.value, p.grad, lr, wd, decay));
        }
        self.started = true;
        Ok(())
    }

    /// Checks, without allocating, that `model`'s parameter tensors have the lengths of the
    /// model the optimiser was built for.
    fn check(&self, model: &mut Sequential<T>) -> Result<()> {
        let (mut count, mut first_bad) = (0, None);
        model.visit_params(&mut |p| {
            let got = p.value.len();
            if let Some(&expected) = self.lens.get(count) {
                if expected != got && first_bad.is_none() {
                    first_bad = Some(NnError::ParamLength {
                        index: count,
                        expected,
                        got,
                    });
                }
            }
            count += 1;
        });
        if count != self.lens.len() {
            return Err(NnError::ParamCount {
                expected: self.lens.len(),
                got: count,
            });
        }
        first_bad.map_or(Ok(()), Err)
    }
}

/// `w -= lr (g + wd w)`; the branch is outside the loops so each loop vectorises.
fn plain_update<T: Scalar>(w: &mut [T], g: &[T], lr: T, wd: T, decay: bool) {
    if decay {
        for (w, &g) in w.iter_mut().zip(g) {
            *w = *w - lr * (g + wd * *w);
        }
    } else {
        for (w, &g) in w.iter_mut().zip(g) {
            *w = *w - lr * g;
        }
    }
}

/// `v = mu v + (g + wd w)` (`v = g + wd w` at the first step), then `w -= lr v`.
#[allow(clippy::too_many_arguments)]
fn momentum_update<T: Scalar>(
    w: &mut [T],
    g: &[T],
    v: &mut [T],
    lr: T,
    wd: T,
    decay: bool,
    mu: T,
    started: bool,
) {
    let mu = if started { mu } else { T::ZERO };
    let wd = if decay { wd } else { T::ZERO };
    for ((w, &g), v) in w.iter_mut().zip(g).zip(v.iter_mut()) {
        *v = mu * *v + (g + wd * *w);
        *w = *w - lr * *v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::{Layer, Linear};

    /// A model with one 1x2 linear layer (weights w0, w1, bias b) and the given gradients set.
    fn model(w: [f64; 2], b: f64) -> Sequential<f64> {
        let mut l = Linear::<f64>::new(2, 1).unwrap();
        l.weight.copy_from_slice(&w);
        l.bias[0] = b;
        let layers: Vec<Box<dyn Layer<f64>>> = vec![Box::new(l)];
        Sequential::new(layers, 1).unwrap()
    }

    fn set_grads(m: &mut Sequential<f64>, gw: [f64; 2], gb: f64) {
        m.visit_params(&mut |p| match p.name {
            "weight" => p.grad.copy_from_slice(&gw),
            _ => p.grad[0] = gb,
        });
    }

    fn params(m: &mut Sequential<f64>) -> Vec<f64> {
        let mut v = Vec::new();
        m.visit_params(&mut |p| v.extend_from_slice(p.value));
        v
    }

    #[test]
    fn plain_step_with_weight_decay() {
        let mut m = model([1.0, -2.0], 0.5);
        let mut sgd = Sgd::new(
            SgdConfig {
                lr: 0.1,
                momentum: 0.0,
                weight_decay: 0.01,
            },
            &mut m,
        )
        .unwrap();
        set_grads(&mut m, [0.5, 1.0], -1.0);
        sgd.step(&mut m).unwrap();
        // p - lr (g + wd p), worked by hand; f64 rounding only.
        let want = [
            1.0 - 0.1 * (0.5 + 0.01),
            -2.0 - 0.1 * (1.0 - 0.02),
            0.5 - 0.1 * (-1.0 + 0.005),
        ];
        for (g, w) in params(&mut m).iter().zip(want) {
            assert!((g - w).abs() < 1e-15, "{g} vs {w}");
        }
    }

    #[test]
    fn momentum_matches_pytorch_recurrence() {
        let mut m = model([1.0, 0.0], 0.0);
        let mut sgd = Sgd::new(
            SgdConfig {
                lr: 0.1,
                momentum: 0.9,
                weight_decay: 0.0,
            },
            &mut m,
        )
        .unwrap();
        // Constant gradient 1 on w0: v = 1, 1.9, 2.71; w0 = 1 - 0.1 (1 + 1.9 + 2.71) = 0.439.
        for _ in 0..3 {
            set_grads(&mut m, [1.0, 0.0], 0.0);
            sgd.step(&mut m).unwrap();
        }
        let p = params(&mut m);
        assert!((p[0] - 0.439).abs() < 1e-12, "{}", p[0]);
        assert_eq!(p[1..], [0.0, 0.0]);
    }

    #[test]
    fn bad_settings_are_errors() {
        let mut m = model([0.0, 0.0], 0.0);
        for cfg in [
            SgdConfig {
                lr: 0.0,
                ..SgdConfig::default()
            },
            SgdConfig {
                lr: f64::NAN,
                ..SgdConfig::default()
            },
            SgdConfig {
                momentum: 1.0,
                ..SgdConfig::default()
            },
            SgdConfig {
                weight_decay: -1.0,
                ..SgdConfig::default()
            },
        ] {
            assert!(Sgd::new(cfg, &mut m).is_err(), "{cfg:?}");
        }
    }

    #[test]
    fn a_step_on_another_model_is_an_error_and_changes_nothing() {
        let mut built_for = model([1.0, 2.0], 3.0);
        for momentum in [0.0, 0.9] {
            let cfg = SgdConfig {
                lr: 0.1,
                momentum,
                ..SgdConfig::default()
            };
            let mut sgd = Sgd::new(cfg, &mut built_for).unwrap();
            // Another shape: a 3-input linear layer (weight 3 values, bias 1).
            let layers: Vec<Box<dyn Layer<f64>>> = vec![Box::new(Linear::new(3, 1).unwrap())];
            let mut other = Sequential::new(layers, 2).unwrap();
            let e = sgd.step(&mut other).unwrap_err();
            assert!(
                matches!(
                    e,
                    NnError::ParamLength {
                        index: 0,
                        expected: 2,
                        got: 3
                    }
                ),
                "{e}"
            );
            // Another number of tensors: two linear layers.
            let layers: Vec<Box<dyn Layer<f64>>> = vec![
                Box::new(Linear::new(2, 1).unwrap()),
                Box::new(Linear::new(1, 1).unwrap()),
            ];
            let mut deeper = Sequential::new(layers, 2).unwrap();
            deeper.visit_params(&mut |p| p.grad.fill(1.0));
            set_grads(&mut built_for, [1.0, 1.0], 1.0);
            let before = params(&mut deeper);
            let e = sgd.step(&mut deeper).unwrap_err();
            assert!(
                matches!(
                    e,
                    NnError::ParamCount {
                        expected: 2,
                        got: 4
                    }
                ),
                "{e}"
            );
            assert_eq!(params(&mut deeper), before, "nothing updated");
            sgd.step(&mut built_for).unwrap();
        }
    }
}
