//! GroupNorm and GhostBatchNorm: finite differences in f64 (the harness of `common`), the
//! definitions, and ghost batches against batch normalization of each virtual batch.

use crate::common::{bn_with_params, check_layer, randn};

use batchnorm::BatchNormConfig;
use batchnorm_nn::layers::{BatchNorm, GhostBatchNorm, GroupNorm, Layer, Mode};
use batchnorm_nn::{NnError, Rng};

fn group_norm(dims: &[usize], groups: usize, rng: &mut Rng) -> GroupNorm<f64> {
    let mut gn = GroupNorm::<f64>::new(dims, groups, 1e-5).unwrap();
    gn.weight = randn(dims[0], 0.5, rng).iter().map(|v| 1.0 + v).collect();
    gn.bias = randn(dims[0], 1.0, rng);
    gn
}

#[test]
fn group_norm_gradients() {
    let mut rng = Rng::new(11);
    for (dims, groups) in [
        (&[6, 2, 3][..], 3),
        (&[4][..], 2),
        (&[4][..], 1),
        (&[3, 5][..], 3),
    ] {
        let mut gn = group_norm(dims, groups, &mut rng);
        let len: usize = dims.iter().product();
        let x: Vec<f64> = randn(3 * len, 2.0, &mut rng)
            .iter()
            .map(|v| v + 3.0)
            .collect();
        assert_eq!(check_layer(&mut gn, &x, 3, Mode::Train, 12), 2);
    }
}

/// f64 against the definition computed plainly, and f32 within the exactness target of the
/// batch-norm kernels (`1e-5 * (1 + |y|)` of the f64 truth) on data offset by 1e4, where a
/// naive f32 one-pass variance would lose every digit.
#[test]
fn group_norm_follows_its_definition() {
    let mut rng = Rng::new(13);
    let (dims, groups, n) = ([6, 4], 2, 3);
    let gn = group_norm(&dims, groups, &mut rng);
    let x: Vec<f64> = randn(n * 24, 1.0, &mut rng)
        .iter()
        .map(|v| v + 1e4)
        .collect();
    let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    let xw: Vec<f64> = x32.iter().map(|&v| f64::from(v)).collect();
    // 3 channels of 4 values a group: runs of 12.
    let truth: Vec<f64> = xw
        .chunks(12)
        .enumerate()
        .flat_map(|(run, g)| {
            let mean = g.iter().sum::<f64>() / 12.0;
            let var = g.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 12.0;
            let c0 = run % groups * 3;
            let gn = &gn;
            g.iter().enumerate().map(move |(i, v)| {
                let c = c0 + i / 4;
                (v - mean) / (var + 1e-5).sqrt() * gn.weight[c] + gn.bias[c]
            })
        })
        .collect();
    let mut g64 = gn.clone();
    let mut y = vec![0.0; x.len()];
    g64.forward(&xw, n, Mode::Eval, &mut y).unwrap();
    for (a, b) in y.iter().zip(&truth) {
        assert!((a - b).abs() <= 1e-12 * (1.0 + b.abs()), "{a} vs {b}");
    }
    let mut g32 = GroupNorm::<f32>::new(&dims, groups, 1e-5).unwrap();
    g32.weight = gn.weight.iter().map(|&v| v as f32).collect();
    g32.bias = gn.bias.iter().map(|&v| v as f32).collect();
    // The f64 truth of the f32 layer: its parameters as stored.
    let mut truth32 = GroupNorm::<f64>::new(&dims, groups, 1e-5).unwrap();
    truth32.weight = g32.weight.iter().map(|&v| f64::from(v)).collect();
    truth32.bias = g32.bias.iter().map(|&v| f64::from(v)).collect();
    let mut y32 = vec![0.0f32; x.len()];
    g32.forward(&x32, n, Mode::Train, &mut y32).unwrap();
    truth32.forward(&xw, n, Mode::Train, &mut y).unwrap();
    for (a, b) in y32.iter().zip(&y) {
        assert!(
            (f64::from(*a) - b).abs() <= 1e-5 * (1.0 + b.abs()),
            "{a} vs {b}"
        );
    }
}

#[test]
fn group_norm_refuses_groups_that_do_not_divide_the_channels() {
    for groups in [0, 4] {
        let err = GroupNorm::<f32>::new(&[6, 2], groups, 1e-5).unwrap_err();
        assert!(matches!(err, NnError::InvalidConfig { .. }), "{err}");
    }
    assert!(GroupNorm::<f32>::new(&[6, 2], 6, 0.0).is_err());
}

#[test]
fn ghost_batch_norm_gradients() {
    let mut rng = Rng::new(17);
    let bn = bn_with_params(&[3, 2], &mut rng);
    let mut ghost = GhostBatchNorm::new(bn, 3).unwrap();
    let x: Vec<f64> = randn(9 * 6, 2.0, &mut rng)
        .iter()
        .map(|v| v + 1.0)
        .collect();
    assert_eq!(check_layer(&mut ghost, &x, 9, Mode::Train, 18), 2);
    assert_eq!(check_layer(&mut ghost, &x, 9, Mode::BatchStats, 19), 2);
}

/// A ghost batch is batch normalization of each virtual batch with the same kernels: the
/// same bits for y and dx; parameter gradients are the sums over virtual batches (rounded
/// once, so within one f32 rounding of the sum of the rounded parts); the running statistics
/// move by the virtual batches' mean mean and mean unbiased variance.
#[test]
fn ghost_batches_are_batch_norm_of_each_virtual_batch() {
    let mut rng = Rng::new(21);
    let (dims, v, k) = ([4, 3], 5, 3);
    let len = 12;
    let n = v * k;
    let cfg = BatchNormConfig::default();
    let mut plain = BatchNorm::<f32>::new(&dims, cfg).unwrap();
    plain.inner.weight = vec![0.5, 1.5, -1.0, 2.0];
    plain.inner.bias = vec![0.1, -0.2, 0.3, 0.0];
    let mut ghost = GhostBatchNorm::new(plain.clone(), v).unwrap();
    let x: Vec<f32> = randn(n * len, 3.0, &mut rng)
        .iter()
        .map(|&a| (a + 10.0) as f32)
        .collect();
    let dy: Vec<f32> = randn(n * len, 1.0, &mut rng)
        .iter()
        .map(|&a| a as f32)
        .collect();
    let (mut y, mut dx) = (vec![0.0f32; n * len], vec![0.0f32; n * len]);
    ghost.forward(&x, n, Mode::Train, &mut y).unwrap();
    ghost.backward(&x, &y, &dy, n, Some(&mut dx)).unwrap();

    let chunk = v * len;
    let (mut dw, mut db) = (vec![0.0f64; 4], vec![0.0f64; 4]);
    let (mut mean, mut var) = (vec![0.0f64; 4], vec![0.0f64; 4]);
    for (i, (xs, dys)) in x.chunks(chunk).zip(dy.chunks(chunk)).enumerate() {
        let mut one = plain.clone();
        let (mut ys, mut dxs) = (vec![0.0f32; chunk], vec![0.0f32; chunk]);
        one.forward(xs, v, Mode::BatchStats, &mut ys).unwrap();
        one.backward(xs, &ys, dys, v, Some(&mut dxs)).unwrap();
        let bits = |s: &[f32]| s.iter().map(|a| a.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&y[i * chunk..(i + 1) * chunk]),
            bits(&ys),
            "y of virtual batch {i}"
        );
        assert_eq!(
            bits(&dx[i * chunk..(i + 1) * chunk]),
            bits(&dxs),
            "dx of virtual batch {i}"
        );
        for ch in 0..4 {
            dw[ch] += f64::from(one.weight_grad[ch]);
            db[ch] += f64::from(one.bias_grad[ch]);
            let vals: Vec<f64> = (0..v)
                .flat_map(|s| (0..3).map(move |p| s * len + ch * 3 + p))
                .map(|j| f64::from(xs[j]))
                .collect();
            let m = vals.iter().sum::<f64>() / 15.0;
            mean[ch] += m / k as f64;
            var[ch] += vals.iter().map(|a| (a - m).powi(2)).sum::<f64>() / 14.0 / k as f64;
        }
    }
    // Sums of k rounded parts against one rounding of the exact sum: k + 1 roundings of values
    // of the sum's magnitude, 2^-24 each.
    for ch in 0..4 {
        let tol = 4.0 * f64::from(f32::EPSILON) * (1.0 + dw[ch].abs() + db[ch].abs()) * k as f64;
        assert!(
            (f64::from(ghost.bn.weight_grad[ch]) - dw[ch]).abs() <= tol,
            "dweight {ch}"
        );
        assert!(
            (f64::from(ghost.bn.bias_grad[ch]) - db[ch]).abs() <= tol,
            "dbias {ch}"
        );
        let rm = f64::from(ghost.bn.inner.running_mean[ch]);
        let rv = f64::from(ghost.bn.inner.running_var[ch]);
        assert!(
            (rm - 0.1 * mean[ch]).abs() <= 1e-6 * (1.0 + rm.abs()),
            "running_mean {ch}"
        );
        assert!(
            (rv - (0.9 + 0.1 * var[ch])).abs() <= 1e-6 * rv,
            "running_var {ch}"
        );
    }
    assert_eq!(ghost.bn.inner.num_batches_tracked, 1);
}

/// Batches of at most one virtual batch, and evaluation, are the wrapped batch normalization.
#[test]
fn ghost_batch_norm_is_batch_norm_within_one_virtual_batch_and_in_evaluation() {
    let mut rng = Rng::new(23);
    let plain = bn_with_params(&[2], &mut rng);
    let mut ghost = GhostBatchNorm::new(plain.clone(), 8).unwrap();
    let mut bn = plain;
    let x = randn(16 * 2, 1.0, &mut rng);
    for (n, mode) in [(8, Mode::Train), (6, Mode::Train), (16, Mode::Eval)] {
        let (mut a, mut b) = (vec![0.0; n * 2], vec![0.0; n * 2]);
        ghost.forward(&x[..n * 2], n, mode, &mut a).unwrap();
        bn.forward(&x[..n * 2], n, mode, &mut b).unwrap();
        assert_eq!(a, b, "{n} {mode:?}");
        assert_eq!(ghost.bn.inner.running_mean, bn.inner.running_mean);
    }
    let mut y = vec![0.0; 12 * 2];
    let err = ghost
        .forward(&x[..24], 12, Mode::Train, &mut y)
        .unwrap_err();
    assert!(matches!(err, NnError::InvalidConfig { .. }), "{err}");
    assert!(GhostBatchNorm::new(bn, 0).is_err());
}

/// Both layers save and load as PyTorch would name them (`nn.GroupNorm`: weight, bias; a ghost
/// batch norm is a `BatchNorm1d`), and a loaded network computes what the saved one did.
#[test]
fn state_dicts_round_trip() {
    use batchnorm_nn::layers::Linear;
    use batchnorm_nn::Sequential;
    let build = |rng: &mut Rng| {
        let layers: Vec<Box<dyn Layer<f32>>> = vec![
            Box::new(Linear::<f32>::gaussian(6, 4, 0.5, rng).unwrap()),
            Box::new(GroupNorm::<f32>::new(&[4], 2, 1e-5).unwrap()),
            Box::new(Linear::<f32>::gaussian(4, 4, 0.5, rng).unwrap()),
            Box::new(
                GhostBatchNorm::new(BatchNorm::new(&[4], BatchNormConfig::default()).unwrap(), 2)
                    .unwrap(),
            ),
        ];
        Sequential::new(layers, 8).unwrap()
    };
    let mut rng = Rng::new(31);
    let mut a = build(&mut rng);
    let x: Vec<f32> = randn(8 * 6, 1.0, &mut rng)
        .iter()
        .map(|&v| v as f32)
        .collect();
    a.forward_from(&x, 8, Mode::Train).unwrap();
    a.visit_params(&mut |p| {
        for v in p.value.iter_mut() {
            *v += 0.25;
        }
    });
    let sd = a.state_dict().unwrap();
    let keys: Vec<&str> = sd.tensors.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "0.bias",
            "0.weight",
            "1.bias",
            "1.weight",
            "2.bias",
            "2.weight",
            "3.bias",
            "3.num_batches_tracked",
            "3.running_mean",
            "3.running_var",
            "3.weight"
        ]
    );
    let mut b = build(&mut Rng::new(99));
    b.load_state_dict(&sd, true).unwrap();
    let ya = a.forward_from(&x, 8, Mode::Eval).unwrap().to_vec();
    let yb = b.forward_from(&x, 8, Mode::Eval).unwrap().to_vec();
    assert_eq!(ya, yb);
}
