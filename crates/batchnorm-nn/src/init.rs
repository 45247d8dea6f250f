//! Parameter initialisation.

use crate::error::{NnError, Result};
use crate::rng::Rng;
use crate::scalar::Scalar;

/// Fills `w` with independent draws from N(0, std^2) (Box-Muller on [`Rng`], rounded to `T`).
///
/// `std` must be finite and >= 0; `std = 0` gives zeros.
pub fn gaussian<T: Scalar>(w: &mut [T], std: f64, rng: &mut Rng) -> Result<()> {
    if !(std.is_finite() && std >= 0.0) {
        return Err(NnError::InvalidConfig {
            what: "init std",
            value: std,
            why: "must be finite and >= 0",
        });
    }
    for v in w {
        *v = T::from_f64(std * rng.normal());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_and_determinism() {
        let mut w = vec![0.0f32; 50_000];
        gaussian(&mut w, 0.05, &mut Rng::new(5)).unwrap();
        let var = w.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / w.len() as f64;
        // Sample variance of 5e4 normals: relative standard error sqrt(2/5e4) = 0.6%; allow 3%.
        assert!((var.sqrt() / 0.05 - 1.0).abs() < 0.03, "std {}", var.sqrt());
        let mut w2 = vec![0.0f32; 50_000];
        gaussian(&mut w2, 0.05, &mut Rng::new(5)).unwrap();
        assert_eq!(w, w2);
        assert!(gaussian(&mut w2, -1.0, &mut Rng::new(5)).is_err());
        assert!(gaussian(&mut w2, f64::NAN, &mut Rng::new(5)).is_err());
    }
}
