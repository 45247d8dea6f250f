//! Folding evaluation-mode batch normalization into Linear and Conv2d: folded outputs against
//! unfolded ones, with tolerances derived from f32 rounding, and every unfoldable structure
//! giving an error.

use batchnorm::BatchNormConfig;
use batchnorm_nn::fold::{fold_batch_norm, fold_into_conv2d, fold_into_linear, FoldError};
use batchnorm_nn::layers::{
    BatchNorm, Conv2d, Conv2dConfig, Flatten, Layer, Linear, MaxPool2d, MaxPool2dConfig, Mode,
    Relu, Sigmoid,
};
use batchnorm_nn::{Rng, Scalar, Sequential};

/// Unit roundoff of f32.
const U: f64 = f32::EPSILON as f64 / 2.0;

/// A batch normalization over `dims` with random gamma, beta and running statistics: means
/// offset by up to `offset`, variances spread over three decades.
fn trained_bn<T: Scalar>(dims: &[usize], offset: f64, rng: &mut Rng) -> BatchNorm<T> {
    let mut bn = BatchNorm::<T>::new(dims, BatchNormConfig::default()).unwrap();
    let inner = &mut bn.inner;
    for c in 0..inner.channels() {
        inner.weight[c] = T::from_f64(1.0 + 0.5 * rng.normal());
        inner.bias[c] = T::from_f64(rng.normal());
        inner.running_mean[c] = T::from_f64(offset * rng.normal());
        inner.running_var[c] = T::from_f64(10f64.powf(3.0 * rng.uniform() - 2.0));
    }
    bn
}

/// `(s, t, b)` per channel, in f64: `BN(z) = s z + t`, `b` the preceding layer's bias
/// (0 without one).
fn maps(bn: &BatchNorm<f32>, bias: &[f32]) -> Vec<(f64, f64, f64)> {
    let i = &bn.inner;
    (0..i.channels())
        .map(|c| {
            let s = f64::from(i.weight[c]) / (f64::from(i.running_var[c]) + 1e-5).sqrt();
            let t = f64::from(i.bias[c]) - f64::from(i.running_mean[c]) * s;
            (s, t, bias.get(c).map_or(0.0, |&b| f64::from(b)))
        })
        .collect()
}

/// Checks `|folded - unfolded| <= bound` element by element, where, for output `j` of channel
/// `o` with `K` products, `A_j = sum_k |w_k x_k|` and `b` the layer's bias:
///
/// - unfolded: the f32 GEMM with the bias has error at most `gamma_{K+1} (A_j + |b_o|)`
///   (`gamma_n = n u / (1 - n u)`, any summation order, FMA or not); batch normalization maps it
///   in f64 and rounds once, so `|y - y*| <= |s_o| gamma_{K+1} (A_j + |b_o|) + u |y*|`;
/// - folded: rounding `W' = s W` and `b' = s b + t` costs `u (|s_o| A_j + |b'_o|)`, the f32 GEMM
///   `gamma_{K+1} (1 + u) (|s_o| A_j + |b'_o|)`.
///
/// Both together stay below `(2K + 6) u (|s_o| (A_j + |b_o|) + |b'_o| + |y*|)`, the bound used.
fn check_folded(
    what: &str,
    unfolded: &[f32],
    folded: &[f32],
    abs_sums: &[f64],
    channel_of: impl Fn(usize) -> usize,
    maps: &[(f64, f64, f64)],
    k: usize,
) {
    assert_eq!(unfolded.len(), folded.len());
    let mut worst = 0.0f64;
    for j in 0..unfolded.len() {
        let o = channel_of(j);
        let (s, t, b) = maps[o];
        let y = f64::from(unfolded[j]);
        let bound = (2 * k + 6) as f64
            * U
            * (s.abs() * (abs_sums[j] + b.abs()) + (s * b + t).abs() + y.abs());
        let diff = (y - f64::from(folded[j])).abs();
        assert!(
            diff <= bound,
            "{what}[{j}]: unfolded {y}, folded {}, |diff| {diff:e} > bound {bound:e}",
            folded[j]
        );
        worst = worst.max(diff / bound);
    }
    eprintln!("{what}: worst |diff| / bound = {worst:.3}");
}

#[test]
fn linear_then_batch_norm() {
    let mut rng = Rng::new(1);
    let (n, k, out) = (16, 50, 12);
    let mut lin = Linear::<f32>::gaussian(k, out, 0.3, &mut rng).unwrap();
    for b in &mut lin.bias {
        *b = rng.normal() as f32;
    }
    // Offsets of 100 next to unit-scale activations: the folded bias absorbs a large mean.
    let mut bn = trained_bn::<f32>(&[out], 100.0, &mut rng);
    let folded = fold_into_linear(&lin, &bn).unwrap();
    let x: Vec<f32> = (0..n * k).map(|_| rng.normal() as f32).collect();

    let mut z = vec![0.0f32; n * out];
    lin.forward(&x, n, Mode::Eval, &mut z).unwrap();
    let mut y = vec![0.0f32; n * out];
    bn.forward(&z, n, Mode::Eval, &mut y).unwrap();
    let mut f = folded.clone();
    let mut y_folded = vec![0.0f32; n * out];
    f.forward(&x, n, Mode::Train, &mut y_folded).unwrap();

    let abs_sums: Vec<f64> = (0..n * out)
        .map(|j| {
            let (s, o) = (j / out, j % out);
            (0..k)
                .map(|i| (f64::from(lin.weight[o * k + i]) * f64::from(x[s * k + i])).abs())
                .sum()
        })
        .collect();
    check_folded(
        "linear",
        &y,
        &y_folded,
        &abs_sums,
        |j| j % out,
        &maps(&bn, &lin.bias),
        k,
    );
    assert!(
        folded.weight_grad.iter().all(|&g| g == 0.0),
        "a fresh layer"
    );
}

/// `sum |W[o,c,i,j] x[c, ...]|` over each output's window, in f64 (padding contributes 0).
fn conv_abs_sums(conv: &Conv2d<f32>, x: &[f32], n: usize) -> Vec<f64> {
    let cfg = *conv.config();
    let [h, w] = cfg.input_hw;
    let [kh, kw] = cfg.kernel;
    let [oh, ow] = conv.output_hw();
    let c_in = cfg.in_channels;
    let mut sums = Vec::new();
    for s in 0..n {
        for o in 0..cfg.out_channels {
            for p in 0..oh {
                for q in 0..ow {
                    let mut acc = 0.0;
                    for c in 0..c_in {
                        for i in 0..kh {
                            for j in 0..kw {
                                let ih = (p * cfg.stride[0] + i) as isize - cfg.padding[0] as isize;
                                let iw = (q * cfg.stride[1] + j) as isize - cfg.padding[1] as isize;
                                if ih < 0 || iw < 0 || ih >= h as isize || iw >= w as isize {
                                    continue;
                                }
                                let xv = x[((s * c_in + c) * h + ih as usize) * w + iw as usize];
                                let wv = conv.weight[((o * c_in + c) * kh + i) * kw + j];
                                acc += (f64::from(wv) * f64::from(xv)).abs();
                            }
                        }
                    }
                    sums.push(acc);
                }
            }
        }
    }
    sums
}

fn check_conv_fold(cfg: Conv2dConfig, seed: u64) {
    let mut rng = Rng::new(seed);
    let n = 3;
    let mut conv = Conv2d::<f32>::gaussian(cfg, 0.3, &mut rng).unwrap();
    for b in &mut conv.bias {
        *b = rng.normal() as f32;
    }
    let [oh, ow] = conv.output_hw();
    let mut bn = trained_bn::<f32>(&[cfg.out_channels, oh, ow], 10.0, &mut rng);
    let mut folded = fold_into_conv2d(&conv, &bn).unwrap();
    assert_eq!(
        folded.bias.len(),
        cfg.out_channels,
        "the folded conv has a bias"
    );
    let x: Vec<f32> = (0..n * Layer::<f32>::in_len(&conv))
        .map(|_| rng.normal() as f32)
        .collect();
    let len = Layer::<f32>::out_len(&conv);
    let mut z = vec![0.0f32; n * len];
    conv.forward(&x, n, Mode::Eval, &mut z).unwrap();
    let mut y = vec![0.0f32; n * len];
    bn.forward(&z, n, Mode::Eval, &mut y).unwrap();
    let mut y_folded = vec![0.0f32; n * len];
    folded.forward(&x, n, Mode::Eval, &mut y_folded).unwrap();
    let k = cfg.in_channels * cfg.kernel[0] * cfg.kernel[1];
    check_folded(
        "conv2d",
        &y,
        &y_folded,
        &conv_abs_sums(&conv, &x, n),
        |j| (j % len) / (oh * ow),
        &maps(&bn, &conv.bias),
        k,
    );
}

#[test]
fn conv2d_then_batch_norm_2d() {
    check_conv_fold(
        Conv2dConfig {
            padding: [1, 1],
            ..Conv2dConfig::new(3, 5, 3, [8, 7])
        },
        2,
    );
    check_conv_fold(
        Conv2dConfig {
            stride: [2, 2],
            padding: [1, 0],
            bias: false,
            ..Conv2dConfig::new(2, 4, 3, [9, 9])
        },
        3,
    );
}

/// The fixture's `cnn_bn` shape at 12 x 12, with BN statistics as after training.
fn cnn<T: Scalar>(rng: &mut Rng) -> Sequential<T> {
    let c1 = Conv2dConfig {
        padding: [1, 1],
        ..Conv2dConfig::new(1, 4, 3, [12, 12])
    };
    let c2 = Conv2dConfig {
        padding: [1, 1],
        ..Conv2dConfig::new(4, 6, 3, [6, 6])
    };
    let layers: Vec<Box<dyn Layer<T>>> = vec![
        Box::new(Conv2d::gaussian(c1, 0.4, rng).unwrap()),
        Box::new(trained_bn::<T>(&[4, 12, 12], 1.0, rng)),
        Box::new(Relu::new(4 * 144).unwrap()),
        Box::new(MaxPool2d::new(MaxPool2dConfig::new(4, 2, [12, 12])).unwrap()),
        Box::new(Conv2d::gaussian(c2, 0.2, rng).unwrap()),
        Box::new(trained_bn::<T>(&[6, 6, 6], 1.0, rng)),
        Box::new(Relu::new(6 * 36).unwrap()),
        Box::new(MaxPool2d::new(MaxPool2dConfig::new(6, 2, [6, 6])).unwrap()),
        Box::new(Flatten::new(54).unwrap()),
        Box::new(Linear::gaussian(54, 10, 0.1, rng).unwrap()),
        Box::new(trained_bn::<T>(&[10], 1.0, rng)),
        Box::new(Sigmoid::new(10).unwrap()),
    ];
    Sequential::new(layers, 8).unwrap()
}

fn eval<T: Scalar>(net: &mut Sequential<T>, x: &[T]) -> Vec<f64> {
    net.forward_from(x, x.len() / net.in_len(), Mode::Eval)
        .unwrap()
        .iter()
        .map(|v| v.to_f64())
        .collect()
}

#[test]
fn whole_conv_net_f64_is_exact_up_to_rounding() {
    let mut rng = Rng::new(4);
    let mut net = cnn::<f64>(&mut rng);
    let x: Vec<f64> = (0..6 * 144).map(|_| rng.uniform()).collect();
    let mut folded = fold_batch_norm(&net).unwrap();
    let names: Vec<&str> = folded.layers().iter().map(|l| l.name()).collect();
    assert_eq!(
        names,
        [
            "conv2d",
            "relu",
            "max_pool2d",
            "conv2d",
            "relu",
            "max_pool2d",
            "flatten",
            "linear",
            "sigmoid"
        ]
    );
    let want = eval(&mut net, &x);
    let got = eval(&mut folded, &x);
    // Folding is exact in real arithmetic; f64 rounding of sums of at most 54 terms through
    // three layers leaves errors near 1e-14 of the activations' scale (O(1) here).
    for (a, b) in want.iter().zip(&got) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }
    // The original model is untouched: evaluating again gives the same bits.
    assert_eq!(eval(&mut net, &x), want);
}

#[test]
fn whole_conv_net_f32_is_as_accurate_as_unfolded() {
    let mut rng = Rng::new(5);
    let mut net32 = cnn::<f32>(&mut rng);
    // The same network in f64, with the f32 parameters and statistics exactly: the truth.
    let mut rng = Rng::new(5);
    let mut net64 = cnn::<f64>(&mut rng);
    let mut values: Vec<Vec<f32>> = Vec::new();
    net32.visit_params(&mut |p| values.push(p.value.to_vec()));
    let mut t = 0;
    net64.visit_params(&mut |p| {
        for (d, &s) in p.value.iter_mut().zip(&values[t]) {
            *d = f64::from(s);
        }
        t += 1;
    });
    for (l32, l64) in net32.layers().iter().zip(net64.layers_mut()) {
        if let (Some(a), Some(b)) = (
            l32.downcast_ref::<BatchNorm<f32>>(),
            l64.downcast_mut::<BatchNorm<f64>>(),
        ) {
            b.inner.running_mean = a.inner.running_mean.iter().map(|&v| v.into()).collect();
            b.inner.running_var = a.inner.running_var.iter().map(|&v| v.into()).collect();
        }
    }
    let x32: Vec<f32> = (0..8 * 144).map(|_| rng.uniform() as f32).collect();
    let x64: Vec<f64> = x32.iter().map(|&v| v.into()).collect();
    let truth = eval(&mut net64, &x64);
    let unfolded = eval(&mut net32, &x32);
    let folded = eval(&mut fold_batch_norm(&net32).unwrap(), &x32);
    let err = |v: &[f64]| {
        v.iter()
            .zip(&truth)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max)
    };
    let (e_unfolded, e_folded) = (err(&unfolded), err(&folded));
    eprintln!("max |error| vs f64 truth: unfolded {e_unfolded:e}, folded {e_folded:e}");
    // Folding adds one rounding per weight and bias (relative u), the same order as a single
    // product in the GEMMs both networks run, so the folded network must be about as accurate
    // as the unfolded one: within 4x of its error, plus a floor of 64 u for the case where the
    // unfolded error happens to be tiny (outputs are sigmoids, at most 1).
    assert!(
        e_folded <= 4.0 * e_unfolded + 64.0 * U,
        "folded error {e_folded:e}, unfolded {e_unfolded:e}"
    );
    // And both are f32-accurate in absolute terms: K <= 54 products per output, three layers
    // whose BN scales stay below 10: well under 1e-4.
    assert!(e_unfolded < 1e-4 && e_folded < 1e-4);
}

#[test]
fn unfoldable_structures_are_errors() {
    let mut rng = Rng::new(6);
    let bn = |rng: &mut Rng| -> Box<dyn Layer<f32>> { Box::new(trained_bn::<f32>(&[4], 1.0, rng)) };
    let lin = |rng: &mut Rng| -> Box<dyn Layer<f32>> {
        Box::new(Linear::gaussian(4, 4, 0.5, rng).unwrap())
    };

    let first = Sequential::new(vec![bn(&mut rng), lin(&mut rng)], 2).unwrap();
    assert!(matches!(
        fold_batch_norm(&first),
        Err(FoldError::NotAfterAffine {
            index: 0,
            previous: "input"
        })
    ));
    let after_relu = Sequential::new(
        vec![lin(&mut rng), Box::new(Relu::new(4).unwrap()), bn(&mut rng)],
        2,
    )
    .unwrap();
    assert!(matches!(
        fold_batch_norm(&after_relu),
        Err(FoldError::NotAfterAffine {
            index: 2,
            previous: "relu"
        })
    ));
    let twice = Sequential::new(vec![lin(&mut rng), bn(&mut rng), bn(&mut rng)], 2).unwrap();
    assert!(matches!(
        fold_batch_norm(&twice),
        Err(FoldError::NotAfterAffine {
            index: 2,
            previous: "batch_norm"
        })
    ));

    let untracked = BatchNormConfig {
        track_running_stats: false,
        ..BatchNormConfig::default()
    };
    let no_stats: Box<dyn Layer<f32>> = Box::new(BatchNorm::<f32>::new(&[4], untracked).unwrap());
    let net = Sequential::new(vec![lin(&mut rng), no_stats], 2).unwrap();
    match fold_batch_norm(&net) {
        Err(FoldError::AtLayer { index: 1, source }) => {
            assert!(matches!(*source, FoldError::NoRunningStats))
        }
        other => panic!("expected NoRunningStats at layer 1, got {other:?}"),
    }

    let mut bad_var = trained_bn::<f32>(&[4], 1.0, &mut rng);
    bad_var.inner.running_var[2] = -1.0;
    let l = Linear::<f32>::gaussian(4, 4, 0.5, &mut rng).unwrap();
    assert!(matches!(
        fold_into_linear(&l, &bad_var),
        Err(FoldError::BadVariance { channel: 2, .. })
    ));
    bad_var.inner.running_var[2] = f32::NAN;
    assert!(fold_into_linear(&l, &bad_var).is_err());

    // A BatchNorm over [2, 2] (2 channels) after a Linear with 4 outputs: not per output.
    let bn22 = trained_bn::<f32>(&[2, 2], 1.0, &mut rng);
    assert!(matches!(
        fold_into_linear(&l, &bn22),
        Err(FoldError::ChannelMismatch {
            bn_channels: 2,
            channels: 4,
            ..
        })
    ));
    // A BatchNorm whose channels do not match a convolution's.
    let conv = Conv2d::<f32>::new(Conv2dConfig::new(1, 4, 1, [2, 2])).unwrap();
    let bn_wrong = trained_bn::<f32>(&[2, 2, 2], 1.0, &mut rng);
    assert!(matches!(
        fold_into_conv2d(&conv, &bn_wrong),
        Err(FoldError::ChannelMismatch { .. })
    ));
}

#[test]
fn affine_free_batch_norm_folds_and_unknown_layers_are_reported() {
    let mut rng = Rng::new(7);
    let cfg = BatchNormConfig {
        affine: false,
        ..BatchNormConfig::default()
    };
    let mut bn = BatchNorm::<f64>::new(&[3], cfg).unwrap();
    bn.inner.running_mean = vec![1.0, -2.0, 0.5];
    bn.inner.running_var = vec![4.0, 0.25, 1.0];
    let mut lin = Linear::<f64>::gaussian(2, 3, 1.0, &mut rng).unwrap();
    lin.bias = vec![0.1, 0.2, 0.3];
    let folded = fold_into_linear(&lin, &bn).unwrap();
    // gamma = 1, beta = 0: b' = (b - mean) / sqrt(var + eps).
    let want = (0.1 - 1.0) / (4.0f64 + 1e-5).sqrt();
    assert!((folded.bias[0] - want).abs() < 1e-15);
    assert_eq!(
        folded.weight[0],
        lin.weight[0] / (4.0f64 + 1e-5).sqrt(),
        "one rounding"
    );

    /// A layer type `fold_batch_norm` has never heard of.
    #[derive(Debug)]
    struct Negate(usize);
    impl Layer<f64> for Negate {
        fn name(&self) -> &'static str {
            "negate"
        }
        fn in_len(&self) -> usize {
            self.0
        }
        fn out_len(&self) -> usize {
            self.0
        }
        fn forward(
            &mut self,
            x: &[f64],
            _n: usize,
            _m: Mode,
            y: &mut [f64],
        ) -> batchnorm_nn::Result<()> {
            for (o, i) in y.iter_mut().zip(x) {
                *o = -i;
            }
            Ok(())
        }
        fn backward(
            &mut self,
            _x: &[f64],
            _y: &[f64],
            dy: &[f64],
            _n: usize,
            dx: Option<&mut [f64]>,
        ) -> batchnorm_nn::Result<()> {
            if let Some(dx) = dx {
                for (o, i) in dx.iter_mut().zip(dy) {
                    *o = -i;
                }
            }
            Ok(())
        }
    }
    let net = Sequential::new(
        vec![
            Box::new(lin) as Box<dyn Layer<f64>>,
            Box::new(bn),
            Box::new(Negate(3)),
        ],
        2,
    )
    .unwrap();
    assert!(matches!(
        fold_batch_norm(&net),
        Err(FoldError::UnsupportedLayer {
            index: 2,
            name: "negate"
        })
    ));
}
