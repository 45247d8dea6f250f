//! Conv2d and MaxPool2d against plain-loop oracles and hand-worked cases, PyTorch's tie and NaN
//! rules for pooling, the PyTorch fixture architectures, and bad input giving errors.

use batchnorm::BatchNormConfig;
use batchnorm_nn::layers::{
    BatchNorm, Conv2d, Conv2dConfig, Flatten, Layer, Linear, MaxPool2d, MaxPool2dConfig, Mode,
    Relu, Sigmoid,
};
use batchnorm_nn::{NnError, Rng, Sequential};

/// The definition, summed directly: `y[o,p,q] = b[o] + sum W[o,c,i,j] x[c, pS+i-P, qS+j-P]`.
fn conv_oracle(conv: &Conv2d<f64>, x: &[f64], n: usize) -> Vec<f64> {
    let cfg = *conv.config();
    let (c_in, o_n) = (cfg.in_channels, cfg.out_channels);
    let [h, w] = cfg.input_hw;
    let [kh, kw] = cfg.kernel;
    let [oh, ow] = conv.output_hw();
    let mut y = Vec::new();
    for s in 0..n {
        for o in 0..o_n {
            for p in 0..oh {
                for q in 0..ow {
                    let mut acc = conv.bias.get(o).copied().unwrap_or(0.0);
                    for c in 0..c_in {
                        for i in 0..kh {
                            for j in 0..kw {
                                let ih = (p * cfg.stride[0] + i) as isize - cfg.padding[0] as isize;
                                let iw = (q * cfg.stride[1] + j) as isize - cfg.padding[1] as isize;
                                if ih < 0 || iw < 0 || ih >= h as isize || iw >= w as isize {
                                    continue;
                                }
                                let (ih, iw) = (ih as usize, iw as usize);
                                acc += conv.weight[((o * c_in + c) * kh + i) * kw + j]
                                    * x[((s * c_in + c) * h + ih) * w + iw];
                            }
                        }
                    }
                    y.push(acc);
                }
            }
        }
    }
    y
}

#[test]
fn conv2d_matches_the_definition() {
    let mut rng = Rng::new(1);
    let configs = [
        Conv2dConfig {
            padding: [1, 1],
            ..Conv2dConfig::new(3, 4, 3, [7, 6])
        },
        Conv2dConfig {
            stride: [2, 3],
            padding: [2, 1],
            kernel: [4, 2],
            bias: false,
            ..Conv2dConfig::new(2, 5, 3, [9, 10])
        },
        Conv2dConfig::new(1, 2, 1, [3, 3]),
        Conv2dConfig::new(2, 3, 5, [5, 5]),
    ];
    for cfg in configs {
        let mut conv = Conv2d::<f64>::gaussian(cfg, 1.0, &mut rng).unwrap();
        for b in &mut conv.bias {
            *b = rng.normal();
        }
        let n = 3;
        let x: Vec<f64> = (0..n * Layer::<f64>::in_len(&conv))
            .map(|_| rng.normal())
            .collect();
        let mut y = vec![f64::NAN; n * Layer::<f64>::out_len(&conv)];
        conv.forward(&x, n, Mode::Train, &mut y).unwrap();
        let want = conv_oracle(&conv, &x, n);
        assert_eq!(y.len(), want.len());
        for (k, (a, b)) in y.iter().zip(&want).enumerate() {
            // At most 100 products of O(1) values summed in f64, in another order: a few
            // hundred ulps of 1 at the very worst.
            assert!((a - b).abs() < 1e-12, "{cfg:?} y[{k}]: {a} vs {b}");
        }
    }
}

#[test]
fn conv2d_hand_example_in_pytorch_memory_order() {
    // x = [[1,2,3],[4,5,6],[7,8,9]], one 2x2 kernel [[1,10],[100,1000]] (weight [O,C,KH,KW]),
    // bias 0.5. torch.nn.functional.conv2d (a cross-correlation: the kernel is not flipped)
    // gives [[5421.5, 6532.5], [8754.5, 9865.5]]: the first is 1 + 2*10 + 4*100 + 5*1000 + 0.5.
    let mut conv = Conv2d::<f64>::new(Conv2dConfig::new(1, 1, 2, [3, 3])).unwrap();
    conv.weight.copy_from_slice(&[1.0, 10.0, 100.0, 1000.0]);
    conv.bias[0] = 0.5;
    let x: Vec<f64> = (1..=9).map(f64::from).collect();
    let mut y = [0.0; 4];
    conv.forward(&x, 1, Mode::Eval, &mut y).unwrap();
    assert_eq!(y, [5421.5, 6532.5, 8754.5, 9865.5]);
}

#[test]
fn conv2d_f32_agrees_with_f64() {
    let mut rng = Rng::new(2);
    let cfg = Conv2dConfig {
        padding: [1, 1],
        ..Conv2dConfig::new(8, 16, 3, [14, 14])
    };
    let conv64 = Conv2d::<f64>::gaussian(cfg, 0.3, &mut rng).unwrap();
    let mut conv32 = Conv2d::<f32>::new(cfg).unwrap();
    for (a, &b) in conv32.weight.iter_mut().zip(&conv64.weight) {
        *a = b as f32;
    }
    let x32: Vec<f32> = (0..2 * 8 * 196).map(|_| rng.normal() as f32).collect();
    let x64: Vec<f64> = x32.iter().map(|&v| f64::from(v)).collect();
    let w64: Vec<f64> = conv32.weight.iter().map(|&v| f64::from(v)).collect();
    let mut exact = Conv2d::<f64>::new(cfg).unwrap();
    exact.weight = w64;
    let want = conv_oracle(&exact, &x64, 2);
    let mut y = vec![0.0f32; want.len()];
    conv32.forward(&x32, 2, Mode::Train, &mut y).unwrap();
    // f32 sums of K = 72 products: |error| <= K u sum|w x| with u = 2^-24; sum|w x| <= 72 * 0.3
    // * 4 * 4 ~ 350 at the very worst, so 2e-3 bounds it (typical errors are far smaller).
    let worst = y
        .iter()
        .zip(&want)
        .map(|(&a, b)| (f64::from(a) - b).abs())
        .fold(0.0, f64::max);
    assert!(worst < 2e-3, "f32 conv off by {worst}");
}

#[test]
fn max_pool_matches_hand_example_ties_and_nan() {
    let mut pool = MaxPool2d::new(MaxPool2dConfig::new(1, 2, [2, 4])).unwrap();
    // Window 0: [1, 3; 3, 2] has a tie at 3: the first (index 1) wins.
    // Window 1: [NaN, 5; 9, NaN]: NaN propagates.
    let x = [1.0, 3.0, f64::NAN, 5.0, 3.0, 2.0, 9.0, f64::NAN];
    let mut y = [0.0; 2];
    pool.forward(&x, 1, Mode::Eval, &mut y).unwrap();
    assert_eq!(y[0], 3.0);
    assert!(y[1].is_nan());
    let mut dx = [f64::NAN; 8];
    pool.backward(&x, &y, &[10.0, 20.0], 1, Some(&mut dx))
        .unwrap();
    // The gradient goes to the first maximum, and to the last NaN (PyTorch's CPU scan).
    assert_eq!(dx, [0.0, 10.0, 0.0, 0.0, 0.0, 0.0, 0.0, 20.0]);
}

#[test]
fn max_pool_all_negative_infinity_and_padding_never_wins() {
    let cfg = MaxPool2dConfig {
        stride: [1, 1],
        padding: [1, 1],
        ..MaxPool2dConfig::new(1, 3, [2, 2])
    };
    let mut pool = MaxPool2d::new(cfg).unwrap();
    assert_eq!(pool.output_hw(), [2, 2]);
    // All inputs negative: padding (-inf, not 0) must not win.
    let x = [-4.0, -3.0, -2.0, -1.0];
    let mut y = [0.0; 4];
    pool.forward(&x, 1, Mode::Eval, &mut y).unwrap();
    assert_eq!(y, [-1.0; 4]);
    let mut dx = [0.0; 4];
    pool.backward(&x, &y, &[1.0, 2.0, 3.0, 4.0], 1, Some(&mut dx))
        .unwrap();
    assert_eq!(dx, [0.0, 0.0, 0.0, 10.0], "overlapping windows sum");

    let mut pool = MaxPool2d::new(MaxPool2dConfig::new(1, 2, [2, 2])).unwrap();
    let x = [f64::NEG_INFINITY; 4];
    let mut y = [0.0; 1];
    pool.forward(&x, 1, Mode::Eval, &mut y).unwrap();
    assert_eq!(y, [f64::NEG_INFINITY]);
    let mut dx = [f64::NAN; 4];
    pool.backward(&x, &y, &[1.0], 1, Some(&mut dx)).unwrap();
    assert_eq!(dx, [1.0, 0.0, 0.0, 0.0], "all tied: the first element");
}

/// PyTorch's `cnn_bn` fixture (`/work/shared/fixtures/make_model_fixtures.py`), layer for layer.
fn cnn_bn(rng: &mut Rng) -> Vec<Box<dyn Layer<f32>>> {
    let bn = |dims: &[usize]| BatchNorm::<f32>::new(dims, BatchNormConfig::default()).unwrap();
    let conv1 = Conv2dConfig {
        padding: [1, 1],
        ..Conv2dConfig::new(1, 8, 3, [28, 28])
    };
    let conv2 = Conv2dConfig {
        padding: [1, 1],
        ..Conv2dConfig::new(8, 16, 3, [14, 14])
    };
    vec![
        Box::new(Conv2d::gaussian(conv1, 0.3, rng).unwrap()),
        Box::new(bn(&[8, 28, 28])),
        Box::new(Relu::new(8 * 28 * 28).unwrap()),
        Box::new(MaxPool2d::new(MaxPool2dConfig::new(8, 2, [28, 28])).unwrap()),
        Box::new(Conv2d::gaussian(conv2, 0.1, rng).unwrap()),
        Box::new(bn(&[16, 14, 14])),
        Box::new(Relu::new(16 * 14 * 14).unwrap()),
        Box::new(MaxPool2d::new(MaxPool2dConfig::new(16, 2, [14, 14])).unwrap()),
        Box::new(Flatten::new(784).unwrap()),
        Box::new(Linear::gaussian(784, 10, 0.05, rng).unwrap()),
    ]
}

#[test]
fn pytorch_fixture_architectures_are_expressible() {
    let mut rng = Rng::new(3);
    let mut net = Sequential::new(cnn_bn(&mut rng), 4).unwrap();
    // PyTorch state-dict tensors in order, with their element counts:
    // 0.weight [8,1,3,3], 0.bias, 1.weight, 1.bias, 4.weight [16,8,3,3], 4.bias, 5.weight,
    // 5.bias, 9.weight [10,784], 9.bias.
    let mut sizes = Vec::new();
    net.visit_params(&mut |p| sizes.push((p.name, p.value.len())));
    assert_eq!(
        sizes,
        [
            ("weight", 72),
            ("bias", 8),
            ("weight", 8),
            ("bias", 8),
            ("weight", 1152),
            ("bias", 16),
            ("weight", 16),
            ("bias", 16),
            ("weight", 7840),
            ("bias", 10)
        ]
    );
    let names: Vec<&str> = net.layers().iter().map(|l| l.name()).collect();
    assert_eq!(
        names,
        [
            "conv2d",
            "batch_norm",
            "relu",
            "max_pool2d",
            "conv2d",
            "batch_norm",
            "relu",
            "max_pool2d",
            "flatten",
            "linear"
        ]
    );
    let x: Vec<f32> = (0..4 * 784).map(|i| (i % 255) as f32 / 255.0).collect();
    let out = net.forward_from(&x, 4, Mode::Train).unwrap();
    assert_eq!(out.len(), 40);
    assert!(out.iter().all(|v| v.is_finite()));

    // mlp_bn: Linear(784,100) BN1d Sigmoid x3, Linear(100,10).
    let mut layers: Vec<Box<dyn Layer<f32>>> = Vec::new();
    let mut width = 784;
    for _ in 0..3 {
        layers.push(Box::new(
            Linear::gaussian(width, 100, 0.05, &mut rng).unwrap(),
        ));
        layers.push(Box::new(
            BatchNorm::<f32>::new(&[100], BatchNormConfig::default()).unwrap(),
        ));
        layers.push(Box::new(Sigmoid::new(100).unwrap()));
        width = 100;
    }
    layers.push(Box::new(Linear::gaussian(100, 10, 0.05, &mut rng).unwrap()));
    assert!(Sequential::new(layers, 4).is_ok());
}

#[test]
fn flatten_order_is_pytorch_nchw() {
    // conv -> flatten -> linear whose weight picks out flattened element (c=1, h=0, w=1) of a
    // 2 x 2 x 2 map: index (1 * 2 + 0) * 2 + 1 = 5, as torch.flatten numbers it.
    let mut conv = Conv2d::<f64>::new(Conv2dConfig::new(1, 2, 1, [2, 2])).unwrap();
    conv.weight.copy_from_slice(&[1.0, 10.0]);
    let mut lin = Linear::<f64>::new(8, 1).unwrap();
    lin.weight[5] = 1.0;
    let layers: Vec<Box<dyn Layer<f64>>> = vec![
        Box::new(conv),
        Box::new(Flatten::new(8).unwrap()),
        Box::new(lin),
    ];
    let mut net = Sequential::new(layers, 1).unwrap();
    let out = net
        .forward_from(&[1.0, 2.0, 3.0, 4.0], 1, Mode::Eval)
        .unwrap();
    assert_eq!(out, [20.0], "channel 1 (weight 10) at (0, 1) of x = 2");
}

#[test]
fn bad_configurations_are_errors() {
    let zero_channels = Conv2dConfig::new(0, 4, 3, [8, 8]);
    assert!(matches!(
        Conv2d::<f32>::new(zero_channels),
        Err(NnError::Empty { .. })
    ));
    let zero_stride = Conv2dConfig {
        stride: [0, 1],
        ..Conv2dConfig::new(1, 4, 3, [8, 8])
    };
    assert!(Conv2d::<f32>::new(zero_stride).is_err());
    let big_kernel = Conv2dConfig::new(1, 4, 5, [4, 8]);
    assert!(matches!(
        Conv2d::<f32>::new(big_kernel),
        Err(NnError::InvalidConfig { .. })
    ));
    let huge = Conv2dConfig {
        padding: [usize::MAX / 2, 0],
        ..Conv2dConfig::new(1, 4, 3, [8, 8])
    };
    assert!(matches!(
        Conv2d::<f32>::new(huge),
        Err(NnError::TooLarge { ref sizes, .. }) if sizes == &[8, usize::MAX / 2]
    ));
    // O * C * KH * KW overflows usize: an error before any allocation.
    let too_many = Conv2dConfig::new(usize::MAX / 8, usize::MAX / 8, 3, [4, 4]);
    assert!(matches!(
        Conv2d::<f32>::new(too_many),
        Err(NnError::TooLarge { .. })
    ));
    // 2^40 weights (4 TiB): within usize, refused by the size limit or by the allocator.
    let huge_weights = Conv2dConfig::new(1 << 18, 1 << 18, 4, [4, 4]);
    assert!(
        matches!(
            Conv2d::<f32>::new(huge_weights),
            Err(NnError::TooLarge { .. })
        ),
        "no abort"
    );

    let pool_pad = MaxPool2dConfig {
        padding: [2, 0],
        ..MaxPool2dConfig::new(1, 3, [8, 8])
    };
    assert!(matches!(
        MaxPool2d::new(pool_pad),
        Err(NnError::InvalidConfig { .. })
    ));
    assert!(MaxPool2d::new(MaxPool2dConfig::new(1, 0, [8, 8])).is_err());
    assert!(MaxPool2d::new(MaxPool2dConfig::new(1, 9, [8, 8])).is_err());
    assert!(matches!(
        MaxPool2d::new(MaxPool2dConfig::new(2, 2, [8, usize::MAX])),
        Err(NnError::TooLarge { ref sizes, .. }) if sizes == &[2, 8, usize::MAX]
    ));
    assert!(Flatten::new(0).is_err());
    assert!(matches!(
        Linear::<f32>::new(usize::MAX, 2),
        Err(NnError::TooLarge { ref sizes, .. }) if sizes == &[2, usize::MAX]
    ));
    let cfg = batchnorm::BatchNormConfig::default();
    let e = BatchNorm::<f32>::new(&[3, 2, 2, 2, 2], cfg).unwrap_err();
    assert!(
        matches!(e, NnError::TooManyDims { got: 5, max: 4, .. }),
        "{e}"
    );
    assert!(matches!(
        BatchNorm::<f32>::new(&[usize::MAX, 4], cfg),
        Err(NnError::TooLarge { .. })
    ));
    assert!(matches!(
        BatchNorm::<f32>::new(&[3, 0], cfg),
        Err(NnError::Empty { .. })
    ));
}

#[test]
fn wrong_lengths_are_errors_not_panics() {
    let mut conv = Conv2d::<f32>::new(Conv2dConfig::new(2, 3, 3, [5, 5])).unwrap();
    let x = vec![0.0f32; 2 * 50];
    let mut y = vec![0.0f32; 2 * 27];
    conv.forward(&x, 2, Mode::Train, &mut y).unwrap();
    assert!(conv.forward(&x[1..], 2, Mode::Train, &mut y).is_err());
    assert!(conv.forward(&x, 2, Mode::Train, &mut y[1..]).is_err());
    assert!(conv.forward(&x, 3, Mode::Train, &mut y).is_err());
    let mut dx = vec![0.0f32; x.len()];
    assert!(conv.backward(&x, &y, &y[1..], 2, Some(&mut dx)).is_err());
    assert!(conv.backward(&x, &y, &y, 2, Some(&mut dx[1..])).is_err());
    assert!(conv.backward(&x[1..], &y, &y, 2, None).is_err());
    conv.backward(&x, &y, &y, 2, Some(&mut dx)).unwrap();
    // A batch size whose n * len overflows: an error, not an overflow panic (debug builds).
    let huge = usize::MAX / 4;
    assert!(conv.forward(&x, huge, Mode::Train, &mut y).is_err());
    assert!(conv.backward(&x, &y, &y, huge, None).is_err());

    let mut pool = MaxPool2d::new(MaxPool2dConfig::new(2, 2, [4, 4])).unwrap();
    let x = vec![0.0f32; 32];
    let mut y = vec![0.0f32; 8];
    assert!(pool.forward(&x[1..], 1, Mode::Train, &mut y).is_err());
    assert!(pool.forward(&x, 1, Mode::Train, &mut y[1..]).is_err());
    let mut dx = vec![0.0f32; 32];
    assert!(pool.backward(&x, &y, &y[1..], 1, Some(&mut dx)).is_err());
    assert!(pool.backward(&x, &y, &y, 1, Some(&mut dx[1..])).is_err());
    assert!(pool
        .forward(&x, usize::MAX / 4, Mode::Train, &mut y)
        .is_err());

    let mut flat = Flatten::new(4).unwrap();
    let mut y = [0.0f32; 4];
    assert!(Layer::<f32>::forward(&mut flat, &[0.0; 3], 1, Mode::Eval, &mut y).is_err());
    assert!(
        Layer::<f32>::forward(&mut flat, &[0.0; 4], usize::MAX / 2, Mode::Eval, &mut y).is_err()
    );

    // A pooling layer that does not fit the convolution before it.
    let layers: Vec<Box<dyn Layer<f32>>> = vec![
        Box::new(Conv2d::<f32>::new(Conv2dConfig::new(1, 4, 3, [8, 8])).unwrap()),
        Box::new(MaxPool2d::new(MaxPool2dConfig::new(4, 2, [8, 8])).unwrap()),
    ];
    assert!(matches!(
        Sequential::new(layers, 2),
        Err(NnError::LayerMismatch { index: 1, .. })
    ));
}

#[test]
fn training_step_through_conv_net_reduces_the_loss() {
    // One fixed batch, a few SGD steps: the loss must fall (a sign or routing bug makes it rise).
    use batchnorm_nn::{Sgd, SgdConfig, SoftmaxCrossEntropy};
    let mut rng = Rng::new(4);
    let mut net = Sequential::new(cnn_bn(&mut rng), 8).unwrap();
    let mut sgd = Sgd::new(
        SgdConfig {
            lr: 0.05,
            ..SgdConfig::default()
        },
        &mut net,
    )
    .unwrap();
    let ce = SoftmaxCrossEntropy::new(10).unwrap();
    let x: Vec<f32> = (0..8 * 784).map(|_| rng.uniform() as f32).collect();
    let labels: Vec<u8> = (0..8).map(|i| i as u8).collect();
    let mut losses = Vec::new();
    for _ in 0..10 {
        net.forward_from(&x, 8, Mode::Train).unwrap();
        let (out, grad) = net.output_and_grad(8).unwrap();
        losses.push(ce.forward_backward(out, &labels, grad).unwrap().loss);
        net.backward(8, false).unwrap();
        sgd.step(&mut net).unwrap();
    }
    assert!(
        losses[9] < 0.5 * losses[0],
        "loss should fall on a memorisable batch: {losses:?}"
    );
}

/// PyTorch's CPU scan, plainly: windows row by row, `v > max || isnan(v)` takes `v`.
fn pool_oracle(cfg: &MaxPool2dConfig, x: &[f64], dy: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let [h, w] = cfg.input_hw;
    let [oh, ow] = cfg.output_hw().unwrap();
    let (mut y, mut dx) = (Vec::new(), vec![0.0; x.len()]);
    for c in 0..x.len() / (h * w) {
        for p in 0..oh {
            for q in 0..ow {
                let (mut max, mut best) = (f64::NEG_INFINITY, None);
                for i in 0..cfg.kernel[0] {
                    for j in 0..cfg.kernel[1] {
                        let r = (p * cfg.stride[0] + i) as isize - cfg.padding[0] as isize;
                        let s = (q * cfg.stride[1] + j) as isize - cfg.padding[1] as isize;
                        if r < 0 || s < 0 || r >= h as isize || s >= w as isize {
                            continue;
                        }
                        let k = (c * h + r as usize) * w + s as usize;
                        if best.is_none() || x[k] > max || x[k].is_nan() {
                            (max, best) = (x[k], Some(k));
                        }
                    }
                }
                let k = best.unwrap();
                dx[k] += dy[y.len()];
                y.push(max);
            }
        }
    }
    (y, dx)
}

#[test]
fn max_pool_matches_the_plain_scan_with_many_ties_and_nans() {
    // Values from {0, 1, 2} make ties common (as after a ReLU); a few NaN; odd sizes leave a
    // row and a column in no 2 x 2 window. Covers the unrolled 2 x 2 path and the general one.
    let mut rng = Rng::new(8);
    let configs = [
        MaxPool2dConfig::new(3, 2, [7, 9]),
        MaxPool2dConfig::new(2, 2, [6, 8]),
        MaxPool2dConfig {
            stride: [1, 2],
            padding: [1, 1],
            ..MaxPool2dConfig::new(2, 3, [5, 6])
        },
    ];
    for cfg in configs {
        let mut pool = MaxPool2d::new(cfg).unwrap();
        let (n, len) = (2, Layer::<f64>::in_len(&pool));
        let x: Vec<f64> = (0..n * len)
            .map(|_| match rng.below(40) {
                0 => f64::NAN,
                v => (v % 3) as f64,
            })
            .collect();
        let dy: Vec<f64> = (0..n * Layer::<f64>::out_len(&pool))
            .map(|_| rng.normal())
            .collect();
        let (want_y, want_dx) = pool_oracle(&cfg, &x, &dy);
        let mut y = vec![0.0; want_y.len()];
        pool.forward(&x, n, Mode::Train, &mut y).unwrap();
        let mut dx = vec![f64::NAN; x.len()];
        pool.backward(&x, &y, &dy, n, Some(&mut dx)).unwrap();
        let same = |a: f64, b: f64| a == b || (a.is_nan() && b.is_nan());
        assert!(
            y.iter().zip(&want_y).all(|(&a, &b)| same(a, b)),
            "{cfg:?} y"
        );
        // Each dx is a sum of the same dy values in the same order: bitwise equal.
        assert_eq!(dx, want_dx, "{cfg:?} dx");
    }
}
