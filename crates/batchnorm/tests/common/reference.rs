//! A plain f64 BatchNorm written from the definitions, element by element with logical indices:
//! the oracle the kernels are tested against. Slow and obvious on purpose.

use batchnorm::Layout;

/// The channel of the element at memory position `idx`.
pub fn channel_of(dims: &[usize], layout: Layout, idx: usize) -> usize {
    let c = dims[1];
    let spatial: usize = dims[2..].iter().product();
    match layout {
        Layout::ChannelsFirst => (idx / spatial) % c,
        Layout::ChannelsLast => idx % c,
    }
}

#[derive(Clone, Debug)]
pub struct RefBn {
    pub weight: Vec<f64>,
    pub bias: Vec<f64>,
    pub running_mean: Vec<f64>,
    pub running_var: Vec<f64>,
    pub num_batches_tracked: u64,
    pub eps: f64,
    pub momentum: Option<f64>,
    pub track: bool,
}

#[derive(Clone, Debug)]
pub struct RefOut {
    pub y: Vec<f64>,
    pub mean: Vec<f64>,
    pub var: Vec<f64>,
    pub invstd: Vec<f64>,
    pub batch_stats: bool,
}

impl RefBn {
    pub fn new(c: usize, eps: f64, momentum: Option<f64>, track: bool) -> Self {
        Self {
            weight: vec![1.0; c],
            bias: vec![0.0; c],
            running_mean: vec![0.0; c],
            running_var: vec![1.0; c],
            num_batches_tracked: 0,
            eps,
            momentum,
            track,
        }
    }

    /// Per-channel (mean, biased variance) by the textbook two-pass formulas.
    pub fn batch_stats(x: &[f64], dims: &[usize], layout: Layout) -> (Vec<f64>, Vec<f64>) {
        let c = dims[1];
        let m = (x.len() / c) as f64;
        let mut mean = vec![0.0; c];
        for (i, &v) in x.iter().enumerate() {
            mean[channel_of(dims, layout, i)] += v;
        }
        mean.iter_mut().for_each(|s| *s /= m);
        let mut var = vec![0.0; c];
        for (i, &v) in x.iter().enumerate() {
            let ch = channel_of(dims, layout, i);
            var[ch] += (v - mean[ch]) * (v - mean[ch]);
        }
        var.iter_mut().for_each(|s| *s /= m);
        (mean, var)
    }

    pub fn forward(&mut self, x: &[f64], dims: &[usize], layout: Layout, train: bool) -> RefOut {
        let c = dims[1];
        let m = (x.len() / c) as f64;
        let batch_stats = train || !self.track;
        let (mean, var) = if batch_stats {
            let (mean, var) = Self::batch_stats(x, dims, layout);
            if train && self.track {
                self.num_batches_tracked += 1;
                let f = self
                    .momentum
                    .unwrap_or(1.0 / self.num_batches_tracked as f64);
                for ch in 0..c {
                    self.running_mean[ch] = (1.0 - f) * self.running_mean[ch] + f * mean[ch];
                    self.running_var[ch] =
                        (1.0 - f) * self.running_var[ch] + f * var[ch] * m / (m - 1.0);
                }
            }
            (mean, var)
        } else {
            (self.running_mean.clone(), self.running_var.clone())
        };
        let invstd: Vec<f64> = var.iter().map(|v| 1.0 / (v + self.eps).sqrt()).collect();
        let y = x
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let ch = channel_of(dims, layout, i);
                (v - mean[ch]) * invstd[ch] * self.weight[ch] + self.bias[ch]
            })
            .collect();
        RefOut {
            y,
            mean,
            var,
            invstd,
            batch_stats,
        }
    }

    /// (dx, dweight, dbias) for the forward that produced `out`.
    pub fn backward(
        &self,
        x: &[f64],
        dy: &[f64],
        dims: &[usize],
        layout: Layout,
        out: &RefOut,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let c = dims[1];
        let m = (x.len() / c) as f64;
        let xhat = |i: usize| {
            let ch = channel_of(dims, layout, i);
            (x[i] - out.mean[ch]) * out.invstd[ch]
        };
        let mut dw = vec![0.0; c];
        let mut db = vec![0.0; c];
        for (i, &d) in dy.iter().enumerate() {
            let ch = channel_of(dims, layout, i);
            db[ch] += d;
            dw[ch] += d * xhat(i);
        }
        let dx = (0..x.len())
            .map(|i| {
                let ch = channel_of(dims, layout, i);
                let k = self.weight[ch] * out.invstd[ch];
                if out.batch_stats {
                    k / m * (m * dy[i] - db[ch] - xhat(i) * dw[ch])
                } else {
                    k * dy[i]
                }
            })
            .collect();
        (dx, dw, db)
    }
}
