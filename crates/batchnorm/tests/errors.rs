//! Every kind of bad input returns its typed error, and leaves the module untouched.

use batchnorm::{BatchNorm, BatchNormConfig, BatchNormError, Layout, Mode, Shape};

fn bn(c: usize) -> BatchNorm<f32> {
    BatchNorm::new(c, BatchNormConfig::default()).unwrap()
}

#[test]
fn shapes() {
    let cf = Layout::ChannelsFirst;
    assert!(matches!(
        Shape::new(&[4], cf),
        Err(BatchNormError::Rank { got: 1, .. })
    ));
    assert!(matches!(
        Shape::new(&[1; 6], cf),
        Err(BatchNormError::Rank { got: 6, .. })
    ));
    assert_eq!(
        Shape::new(&[4, 0, 3], cf),
        Err(BatchNormError::ZeroChannels)
    );
    let empty = Shape::new(&[0, 3, 2], cf).unwrap();
    assert!(empty.is_empty() && empty.per_channel() == 0);
    assert!(matches!(
        Shape::new(&[2, 3, 0], cf),
        Err(BatchNormError::ZeroDim { axis: 2, .. })
    ));
    let huge = [usize::MAX / 2, 3];
    assert!(matches!(
        Shape::new(&huge, cf),
        Err(BatchNormError::TooLarge { .. })
    ));
}

#[test]
fn config() {
    let bad_eps = [0.0, -1e-5, f64::NAN, f64::INFINITY];
    for eps in bad_eps {
        let cfg = BatchNormConfig {
            eps,
            ..BatchNormConfig::default()
        };
        assert!(matches!(
            BatchNorm::<f32>::new(3, cfg),
            Err(BatchNormError::InvalidEps { .. })
        ));
    }
    for m in [-0.1, 1.5, f64::NAN] {
        let cfg = BatchNormConfig {
            momentum: Some(m),
            ..BatchNormConfig::default()
        };
        let err = BatchNorm::<f32>::new(3, cfg).unwrap_err();
        assert!(
            matches!(err, BatchNormError::InvalidMomentum { .. }),
            "{m}: {err}"
        );
    }
    assert_eq!(
        BatchNorm::<f32>::new(0, BatchNormConfig::default()).unwrap_err(),
        BatchNormError::ZeroChannels
    );
    for m in [0.0, 1.0] {
        let cfg = BatchNormConfig {
            momentum: Some(m),
            ..BatchNormConfig::default()
        };
        assert!(BatchNorm::<f32>::new(3, cfg).is_ok());
    }
    // Batch Renormalization: limits in range, and running statistics to correct towards.
    let renorm = |rmax, dmax| BatchNormConfig {
        renorm: Some(batchnorm::Renorm::fixed(rmax, dmax)),
        ..BatchNormConfig::default()
    };
    for (rmax, dmax, limit) in [
        (0.9, 1.0, "rmax"),
        (f64::NAN, 1.0, "rmax"),
        (3.0, -0.1, "dmax"),
    ] {
        let err = BatchNorm::<f32>::new(3, renorm(rmax, dmax)).unwrap_err();
        assert!(
            matches!(err, BatchNormError::InvalidRenorm { limit: l, .. } if l == limit),
            "{rmax} {dmax}: {err}"
        );
    }
    let untracked = BatchNormConfig {
        track_running_stats: false,
        ..renorm(3.0, 5.0)
    };
    assert_eq!(
        BatchNorm::<f32>::new(3, untracked).unwrap_err(),
        BatchNormError::RenormWithoutRunningStats
    );
    assert!(BatchNorm::<f32>::new(3, renorm(1.0, 0.0)).is_ok());
}

#[test]
fn forward_arguments() {
    let mut m = bn(3);
    let before = m.clone();
    let shape = Shape::new(&[2, 3], Layout::ChannelsFirst).unwrap();
    let x = [0.0f32; 6];
    let mut y = [0.0f32; 6];

    let other = Shape::new(&[2, 4], Layout::ChannelsFirst).unwrap();
    assert_eq!(
        m.forward(&[0.0; 8], &other, Mode::Train, &mut [0.0; 8]),
        Err(BatchNormError::ChannelMismatch {
            expected: 3,
            got: 4
        })
    );
    assert_eq!(
        m.forward(&x[..5], &shape, Mode::Train, &mut y),
        Err(BatchNormError::LengthMismatch {
            buffer: "x",
            expected: 6,
            got: 5
        })
    );
    assert_eq!(
        m.forward(&x, &shape, Mode::Train, &mut [0.0; 7]),
        Err(BatchNormError::LengthMismatch {
            buffer: "y",
            expected: 6,
            got: 7
        })
    );
    // One value per channel: PyTorch's "Expected more than 1 value per channel when training".
    let single = Shape::new(&[1, 3, 1], Layout::ChannelsFirst).unwrap();
    let err = m
        .forward(&[0.0; 3], &single, Mode::Train, &mut [0.0; 3])
        .unwrap_err();
    assert!(matches!(err, BatchNormError::TooFewValues { .. }));
    assert!(err.to_string().contains("more than 1 value per channel"));
    // ... but evaluation with running statistics is fine.
    assert!(m
        .forward(&[0.0; 3], &single, Mode::Eval, &mut [0.0; 3])
        .is_ok());
    assert_eq!(m, before, "failed calls must not modify the module");

    // Public buffers resized by hand.
    m.running_var.pop();
    assert_eq!(
        m.forward(&x, &shape, Mode::Eval, &mut y),
        Err(BatchNormError::LengthMismatch {
            buffer: "running_var",
            expected: 3,
            got: 2
        })
    );
    let mut m = bn(3);
    m.running_var[1] = -1.0;
    assert_eq!(
        m.forward(&x, &shape, Mode::Eval, &mut y),
        Err(BatchNormError::NegativeRunningVar {
            channel: 1,
            value: -1.0
        })
    );
}

/// An empty batch (N = 0) is a valid shape: training on it alone is refused, evaluation and
/// its backward write nothing, every layout, every cut of the kernels.
#[test]
fn empty_batch() {
    for layout in [Layout::ChannelsFirst, Layout::ChannelsLast] {
        for dims in [&[0, 3][..], &[0, 3, 4, 5]] {
            let shape = Shape::new(dims, layout).unwrap();
            let mut m = bn(3);
            let before = m.clone();
            let err = m.forward(&[], &shape, Mode::Train, &mut []).unwrap_err();
            assert!(matches!(err, BatchNormError::TooFewValues { .. }), "{err}");
            assert_eq!(m, before);
            let saved = m.forward(&[], &shape, Mode::Eval, &mut []).unwrap();
            assert_eq!(saved.mean, [0.0; 3]);
            let grads = m.backward(&[], &[], &shape, &saved, &mut []).unwrap();
            assert_eq!((grads.weight, grads.bias), (vec![0.0; 3], vec![0.0; 3]));
            assert_eq!(m, before);
        }
    }
}

#[test]
fn untracked_eval_needs_two_values_too() {
    let cfg = BatchNormConfig {
        track_running_stats: false,
        ..BatchNormConfig::default()
    };
    let m = BatchNorm::<f64>::new(2, cfg).unwrap();
    assert!(m.running_mean.is_empty() && m.running_var.is_empty());
    let single = Shape::new(&[1, 2], Layout::ChannelsFirst).unwrap();
    let err = m.forward_without_update(&[1.0; 2], &single, Mode::Eval, &mut [0.0; 2]);
    assert!(matches!(err, Err(BatchNormError::TooFewValues { .. })));
}

#[test]
fn backward_arguments() {
    let mut m = bn(2);
    let shape = Shape::new(&[3, 2, 2], Layout::ChannelsFirst).unwrap();
    let x: Vec<f32> = (0..12).map(|i| i as f32).collect();
    let mut y = vec![0.0; 12];
    let saved = m.forward(&x, &shape, Mode::Train, &mut y).unwrap();
    let dy = vec![1.0f32; 12];
    let mut dx = vec![0.0; 12];

    let other = Shape::new(&[2, 2, 3], Layout::ChannelsFirst).unwrap();
    assert_eq!(
        m.backward(&x, &dy, &other, &saved, &mut dx),
        Err(BatchNormError::SavedMismatch {
            saved: vec![3, 2, 2],
            got: vec![2, 2, 3]
        })
    );
    let transposed = Shape::new(&[3, 2, 2], Layout::ChannelsLast).unwrap();
    assert!(matches!(
        m.backward(&x, &dy, &transposed, &saved, &mut dx),
        Err(BatchNormError::SavedMismatch { .. })
    ));
    assert_eq!(
        m.backward(&x, &dy[..11], &shape, &saved, &mut dx),
        Err(BatchNormError::LengthMismatch {
            buffer: "dy",
            expected: 12,
            got: 11
        })
    );
    assert_eq!(
        m.backward(&x, &dy, &shape, &saved, &mut dx[..3]),
        Err(BatchNormError::LengthMismatch {
            buffer: "dx",
            expected: 12,
            got: 3
        })
    );
    assert!(m.backward(&x, &dy, &shape, &saved, &mut dx).is_ok());
}
