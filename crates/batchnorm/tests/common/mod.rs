//! Shared test support: an independent f64 reference, a seeded normal generator, fixture loading.
#![allow(dead_code)] // each test binary uses a different part of this module

pub mod fixture;
pub mod reference;

/// SplitMix64 with Box-Muller normals: deterministic test data without extra dependencies.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    pub fn normals(&mut self, n: usize, mean: f64, std: f64) -> Vec<f64> {
        (0..n).map(|_| mean + std * self.normal()).collect()
    }
}

/// Largest `|a - b| / (1 + |b|)` over the elements: the error measure of the exactness target.
pub fn max_rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
        .fold(0.0, f64::max)
}

/// Largest `|a - b|` divided by the largest `|b|`: error relative to the largest element.
pub fn max_err_vs_largest(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let err = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    if scale == 0.0 {
        err
    } else {
        err / scale
    }
}

pub fn widen<T: batchnorm::Element>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.to_f64()).collect()
}

pub fn narrow<T: batchnorm::Element>(v: &[f64]) -> Vec<T> {
    v.iter().map(|&x| T::from_f64(x)).collect()
}

/// One unit in the last place of `T` at the magnitude of `t`: the spacing of `T`'s values in
/// the binade of `t` (subnormal spacing below the smallest normal).
pub fn ulp<T: batchnorm::Element>(t: f64) -> f64 {
    let (precision, min_exp) = match T::NAME {
        "bf16" => (8, -126),
        "f16" => (11, -14),
        "f32" => (24, -126),
        "f64" => (53, -1022),
        other => panic!("no format for {other}"),
    };
    let exp = ((t.abs().to_bits() >> 52) & 0x7ff) as i32 - 1023;
    2f64.powi(exp.max(min_exp) - (precision - 1))
}

/// Largest `|ours - truth|` in units in the last place of `T` at `truth` (0.5: correctly
/// rounded). A NaN truth needs a NaN.
pub fn max_ulp_err<T: batchnorm::Element>(ours: &[T], truth: &[f64]) -> f64 {
    assert_eq!(ours.len(), truth.len());
    ours.iter()
        .zip(truth)
        .map(|(o, &t)| {
            let o = o.to_f64();
            if t.is_nan() || o.is_nan() {
                return if t.is_nan() && o.is_nan() {
                    0.0
                } else {
                    f64::INFINITY
                };
            }
            (o - t).abs() / ulp::<T>(t)
        })
        .fold(0.0, f64::max)
}
