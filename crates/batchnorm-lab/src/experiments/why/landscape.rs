//! The loss landscape along the gradient (Santurkar et al. 2018, section 3.1 and Figure 4).
//!
//! On one batch at the current parameters `theta`, with `g = grad L(theta)` and for each step
//! size `eta` of a list: the loss `L(theta - eta g)`, the gradient change
//! `||grad L(theta) - grad L(theta - eta g)||_2` (how far the gradient at `theta` mispredicts
//! the gradient a step further: "gradient predictiveness", small is predictive), and the
//! effective beta-smoothness `max over eta of ||grad L(theta) - grad L(theta - eta g)|| /
//! ||eta g||`, a lower bound on the Lipschitz constant of the gradient along the path.

use batchnorm_nn::{NnError, Scalar, Sequential};

use super::params::{loss_and_grad, Params};

/// The landscape along the gradient at one step.
#[derive(Debug, Clone, PartialEq)]
pub struct Landscape {
    /// `L(theta)`.
    pub loss_here: f64,
    /// `||g||_2` over every parameter.
    pub grad_norm: f64,
    /// Per step size `eta`: `(eta, L(theta - eta g), ||g - grad L(theta - eta g)||)`.
    pub points: Vec<(f64, f64, f64)>,
}

impl Landscape {
    /// The smallest and largest loss over the step sizes.
    pub fn loss_range(&self) -> (f64, f64) {
        min_max(self.points.iter().map(|p| p.1))
    }

    /// The smallest and largest gradient change over the step sizes.
    pub fn grad_change_range(&self) -> (f64, f64) {
        min_max(self.points.iter().map(|p| p.2))
    }

    /// `max over eta of ||g - grad L(theta - eta g)|| / (eta ||g||)`; 0 for a zero gradient
    /// (nothing moves); NaN if any step gave a non-finite loss or gradient.
    pub fn beta(&self) -> f64 {
        if self.grad_norm == 0.0 {
            return 0.0;
        }
        self.points
            .iter()
            .map(|&(eta, _, change)| change / (eta * self.grad_norm))
            .fold(0.0, |m: f64, r| {
                if r.is_nan() || m.is_nan() {
                    f64::NAN
                } else {
                    m.max(r)
                }
            })
    }
}

/// `(min, max)` of `values`, NaN if any is NaN (a diverged step is not hidden).
fn min_max(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        if v.is_nan() || lo.is_nan() {
            (f64::NAN, f64::NAN)
        } else {
            (lo.min(v), hi.max(v))
        }
    })
}

/// [`Landscape`] on the `n` samples in `model`'s input buffer with labels `labels`, for each
/// step size of `etas` (each `> 0`). Batch normalization uses batch statistics and its running
/// statistics are untouched; on return the model's parameters and gradients are those at
/// `theta`.
///
/// # Errors
/// Any error of the training stack.
pub fn measure<T: Scalar>(
    model: &mut Sequential<T>,
    n: usize,
    labels: &[u8],
    etas: &[f64],
) -> Result<Landscape, NnError> {
    let theta = Params::values(model);
    let loss_here = loss_and_grad(model, n, labels)?;
    let g = Params::grads(model);
    let count = model.layers().len();
    let mut points = Vec::with_capacity(etas.len());
    for &eta in etas {
        theta.set_moved(model, &g, eta, count);
        let loss = loss_and_grad(model, n, labels)?;
        let change = g.distance(&Params::grads(model));
        points.push((eta, loss, change));
    }
    theta.restore_values(model);
    g.restore_grads(model);
    Ok(Landscape {
        loss_here,
        grad_norm: g.norm(),
        points,
    })
}

#[cfg(test)]
mod tests {
    use super::super::ics::tests::{fd_grad, flat, loss_only, set_flat, tiny_net};
    use super::*;

    #[test]
    fn losses_and_gradient_changes_match_finite_differences_along_the_path() {
        let (mut model, labels) = tiny_net();
        let theta = flat(&mut model);
        let g = fd_grad(&mut model, &labels);
        let gnorm = g.iter().map(|x| x * x).sum::<f64>().sqrt();
        let etas = [0.01, 0.1, 1.0];
        let got = measure(&mut model, super::super::ics::tests::N, &labels, &etas).unwrap();
        // Central differences are good to ~1e-9 on gradients of size ~0.1-1 (see fd_grad).
        assert!((got.grad_norm - gnorm).abs() < 1e-8 * gnorm);
        let mut beta: f64 = 0.0;
        for (&eta, &(e, loss, change)) in etas.iter().zip(&got.points) {
            assert_eq!(e, eta);
            let moved: Vec<f64> = theta.iter().zip(&g).map(|(t, d)| t - eta * d).collect();
            set_flat(&mut model, &moved);
            // The move itself uses the backprop gradient, which differs from g by ~1e-9: the
            // loss moves by at most eta * that * ||g||.
            let want = loss_only(&mut model, &labels);
            assert!((loss - want).abs() < 1e-8, "eta {eta}: {loss} vs {want}");
            let g2 = fd_grad(&mut model, &labels);
            let want = g
                .iter()
                .zip(&g2)
                .map(|(a, b)| (a - b).powi(2))
                .sum::<f64>()
                .sqrt();
            assert!(
                (change - want).abs() < 1e-7,
                "eta {eta}: {change} vs {want}"
            );
            beta = beta.max(want / (eta * gnorm));
        }
        set_flat(&mut model, &theta);
        assert!(
            (got.beta() - beta).abs() < 1e-5 * beta,
            "{} vs {beta}",
            got.beta()
        );
        let (lo, hi) = got.loss_range();
        assert!(lo <= hi && got.points.iter().all(|p| (lo..=hi).contains(&p.1)));
        // Parameters restored bit for bit.
        let mut model_again = model;
        assert_eq!(flat(&mut model_again), theta);
    }

    #[test]
    fn a_non_finite_step_is_reported_not_hidden() {
        let l = Landscape {
            loss_here: 1.0,
            grad_norm: 2.0,
            points: vec![(0.1, 1.0, 0.5), (1.0, f64::NAN, f64::NAN)],
        };
        assert!(l.beta().is_nan());
        assert!(l.loss_range().0.is_nan());
        let flat = Landscape {
            grad_norm: 0.0,
            points: vec![(0.1, 1.0, 0.0)],
            ..l
        };
        assert_eq!(flat.beta(), 0.0);
        assert_eq!(flat.grad_change_range(), (0.0, 0.0));
    }
}
