//! Shared by the integration tests: deterministic inputs, tensors in either memory layout, the
//! plain `f64` reference, and comparisons with tolerances per dtype.
#![allow(dead_code)]

use batchnorm::Layout;
use candle_core::{DType, Device, Result, Tensor, Var};

/// A small deterministic generator (splitmix64) with normal deviates by Box-Muller.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1).
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    /// `n` values `offset + scale * normal`, each channel of a (N, C, ...) tensor given its own
    /// mean shift so that channels differ.
    pub fn values(&mut self, n: usize, offset: f64, scale: f64) -> Vec<f64> {
        (0..n).map(|_| offset + scale * self.normal()).collect()
    }
}

/// Values as exactly representable in `dtype` (so the `f64` reference sees what the kernels see).
pub fn representable(values: &[f64], dtype: DType) -> Result<Vec<f64>> {
    Tensor::new(values, &Device::Cpu)?
        .to_dtype(dtype)?
        .to_dtype(DType::F64)?
        .to_vec1()
}

/// A variable holding `values` (logical order (N, C, spatial...)) stored in `layout`, and the
/// tensor of logical dims over it: the variable itself (channels-first) or a channels-last view
/// (the variable holds (N, spatial..., C) memory, permuted to logical order).
pub fn input(
    values: &[f64],
    dims: &[usize],
    dtype: DType,
    layout: Layout,
) -> Result<(Var, Tensor)> {
    let logical = Tensor::from_vec(values.to_vec(), dims, &Device::Cpu)?.to_dtype(dtype)?;
    match layout {
        Layout::ChannelsFirst => {
            let var = Var::from_tensor(&logical)?;
            let t = var.as_tensor().clone();
            Ok((var, t))
        }
        Layout::ChannelsLast => {
            let rank = dims.len();
            let mut to_last = vec![0];
            to_last.extend(2..rank);
            to_last.push(1);
            let mut to_first = vec![0, rank - 1];
            to_first.extend(1..rank - 1);
            let var = Var::from_tensor(&logical.permute(to_last)?.contiguous()?)?;
            let view = var.as_tensor().permute(to_first)?;
            Ok((var, view))
        }
    }
}

/// The values of a tensor of logical dims in logical order, as `f64`.
pub fn logical(t: &Tensor) -> Result<Vec<f64>> {
    t.to_dtype(DType::F64)?.flatten_all()?.to_vec1()
}

/// The gradient of a variable made by [`input`] in logical order.
pub fn grad_logical(grad: &Tensor, layout: Layout) -> Result<Vec<f64>> {
    match layout {
        Layout::ChannelsFirst => logical(grad),
        Layout::ChannelsLast => {
            let rank = grad.rank();
            let mut to_first = vec![0, rank - 1];
            to_first.extend(1..rank - 1);
            logical(&grad.permute(to_first)?)
        }
    }
}

/// What the reference computes for one call.
#[derive(Debug, Clone)]
pub struct Truth {
    pub y: Vec<f64>,
    pub dx: Vec<f64>,
    pub dweight: Vec<f64>,
    pub dbias: Vec<f64>,
    /// The batch mean and BIASED variance per channel.
    pub mean: Vec<f64>,
    pub var: Vec<f64>,
}

/// Statistics the reference normalises with.
#[derive(Debug, Clone, Copy)]
pub enum Stats<'a> {
    /// The batch's (training, or evaluation without tracking).
    Batch,
    /// Given running mean and variance (evaluation: frozen BN).
    Running(&'a [f64], &'a [f64]),
}

/// PyTorch's batch norm in plain `f64`, two passes per channel, on logical-order data.
pub fn reference(
    x: &[f64],
    dy: &[f64],
    dims: &[usize],
    weight: &[f64],
    bias: &[f64],
    eps: f64,
    stats: Stats,
) -> Truth {
    let c = dims[1];
    let inner: usize = dims[2..].iter().product();
    let ch = |i: usize| (i / inner) % c;
    let m = (x.len() / c) as f64;
    let mut mean = vec![0.0; c];
    for (i, &v) in x.iter().enumerate() {
        mean[ch(i)] += v;
    }
    mean.iter_mut().for_each(|s| *s /= m);
    // The corrected two-pass mean: the sum above loses digits to a large offset.
    let mut correction = vec![0.0; c];
    for (i, &v) in x.iter().enumerate() {
        correction[ch(i)] += v - mean[ch(i)];
    }
    for (mu, d) in mean.iter_mut().zip(&correction) {
        *mu += d / m;
    }
    let mut var = vec![0.0; c];
    for (i, &v) in x.iter().enumerate() {
        var[ch(i)] += (v - mean[ch(i)]).powi(2);
    }
    var.iter_mut().for_each(|s| *s /= m);
    let (use_mean, use_var) = match stats {
        Stats::Batch => (mean.clone(), var.clone()),
        Stats::Running(rm, rv) => (rm.to_vec(), rv.to_vec()),
    };
    let invstd: Vec<f64> = use_var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    let xhat = |i: usize| (x[i] - use_mean[ch(i)]) * invstd[ch(i)];
    let y = (0..x.len())
        .map(|i| xhat(i) * weight[ch(i)] + bias[ch(i)])
        .collect();
    let (mut dbias, mut dweight) = (vec![0.0; c], vec![0.0; c]);
    for i in 0..x.len() {
        dbias[ch(i)] += dy[i];
        dweight[ch(i)] += dy[i] * xhat(i);
    }
    let dx = (0..x.len())
        .map(|i| {
            let k = weight[ch(i)] * invstd[ch(i)];
            match stats {
                Stats::Batch => k * (dy[i] - dbias[ch(i)] / m - xhat(i) * dweight[ch(i)] / m),
                Stats::Running(..) => k * dy[i],
            }
        })
        .collect();
    Truth {
        y,
        dx,
        dweight,
        dbias,
        mean,
        var,
    }
}

/// The largest error of `got` against `truth`, relative to `max(1, max |truth|)`.
pub fn rel_err(got: &[f64], truth: &[f64]) -> f64 {
    assert_eq!(got.len(), truth.len());
    let scale = truth.iter().fold(1.0f64, |a, v| a.max(v.abs()));
    let err = got
        .iter()
        .zip(truth)
        .fold(0.0f64, |a, (g, t)| a.max((g - t).abs()));
    err / scale
}

/// Asserts `got` within `tol` of `truth` relative to `max(1, max |truth|)`.
#[track_caller]
pub fn assert_close(what: &str, got: &[f64], truth: &[f64], tol: f64) {
    let err = rel_err(got, truth);
    if std::env::var_os("SHOW_ERRORS").is_some() {
        eprintln!("{what}: {err:.2e}");
    }
    assert!(err <= tol, "{what}: relative error {err:e} > {tol:e}");
}

/// The representable values of a 16-bit `dtype` next to `v` (a value of that dtype): below and
/// above.
fn neighbours(v: f64, dtype: DType) -> Result<(f64, f64)> {
    let bits = |t: Tensor| -> Result<u16> {
        let t = t.to_dtype(dtype)?;
        Ok(match dtype {
            DType::BF16 => t.to_scalar::<half::bf16>()?.to_bits(),
            _ => t.to_scalar::<half::f16>()?.to_bits(),
        })
    };
    let from_bits = |b: u16| -> f64 {
        match dtype {
            DType::BF16 => half::bf16::from_bits(b).to_f64(),
            _ => half::f16::from_bits(b).to_f64(),
        }
    };
    let b = bits(Tensor::new(v, &Device::Cpu)?)?;
    let (toward_zero, away) = if b & 0x7FFF == 0 {
        (0x8001, 0x0001) // the smallest subnormals on either side of zero
    } else {
        (b - 1, b + 1)
    };
    let (a, b) = (from_bits(toward_zero), from_bits(away));
    Ok((a.min(b), a.max(b)))
}

/// Asserts each of `got` (values of the 16-bit `dtype`) is the representable value nearest to
/// the `f64` truth: correctly rounded.
#[track_caller]
pub fn assert_nearest(what: &str, got: &[f64], truth: &[f64], dtype: DType) -> Result<()> {
    assert_eq!(got.len(), truth.len());
    for (i, (&g, &t)) in got.iter().zip(truth).enumerate() {
        let (below, above) = neighbours(g, dtype)?;
        let err = (g - t).abs();
        assert!(
            err <= (below - t).abs() && err <= (above - t).abs(),
            "{what}[{i}]: {g} is not the {dtype:?} nearest to {t} (neighbours {below}, {above})"
        );
    }
    Ok(())
}
