//! What the in-process and the MPI data-parallel tests share: a small BN network, its
//! batches, one process on the global batch, and one rank's data-parallel run.

use std::sync::Arc;

use batchnorm::BatchNormConfig;
use batchnorm_dist::Collective;
use batchnorm_nn::layers::{BatchNorm, Layer, Linear, Mode, Sigmoid};
use batchnorm_nn::{
    convert_sync_batch_norm, DataParallel, Rng, Sequential, Sgd, SgdConfig, SoftmaxCrossEntropy,
};

pub const IN: usize = 6;
pub const CLASSES: usize = 3;

pub fn model(seed: u64, capacity: usize) -> Sequential<f64> {
    let mut rng = Rng::new(seed);
    let layers: Vec<Box<dyn Layer<f64>>> = vec![
        Box::new(Linear::gaussian(IN, 5, 0.7, &mut rng).unwrap()),
        Box::new(BatchNorm::new(&[5], BatchNormConfig::default()).unwrap()),
        Box::new(Sigmoid::new(5).unwrap()),
        Box::new(Linear::gaussian(5, CLASSES, 0.7, &mut rng).unwrap()),
    ];
    Sequential::new(layers, capacity).unwrap()
}

/// The global batches of `steps` steps: inputs with an offset, labels.
pub fn batches(steps: usize, global: usize) -> Vec<(Vec<f64>, Vec<u8>)> {
    let mut rng = Rng::new(99);
    (0..steps)
        .map(|_| {
            let x = (0..global * IN).map(|_| 3.0 + rng.normal()).collect();
            let labels = (0..global).map(|_| (rng.next_u64() % 3) as u8).collect();
            (x, labels)
        })
        .collect()
}

pub fn sgd(model: &mut Sequential<f64>) -> Sgd<f64> {
    let cfg = SgdConfig {
        lr: 0.5,
        momentum: 0.9,
        weight_decay: 1e-3,
    };
    Sgd::new(cfg, model).unwrap()
}

/// Parameters and state (running statistics) of `model`, flattened.
pub fn state(model: &mut Sequential<f64>) -> Vec<f64> {
    let mut out = Vec::new();
    for layer in model.layers_mut() {
        layer.visit_state(&mut |e| match e.value {
            batchnorm_nn::layers::StateValue::Float(v) => out.extend_from_slice(v),
            batchnorm_nn::layers::StateValue::Count(n) => out.push(*n as f64),
        });
    }
    out
}

/// One process on the global batches.
pub fn single(global: usize, steps: usize) -> Vec<f64> {
    let mut m = model(1, global);
    let mut opt = sgd(&mut m);
    let ce = SoftmaxCrossEntropy::new(CLASSES).unwrap();
    for (x, labels) in batches(steps, global) {
        m.forward_from(&x, global, Mode::Train).unwrap();
        let (out, grad) = m.output_and_grad(global).unwrap();
        ce.forward_backward(out, &labels, grad).unwrap();
        m.backward(global, false).unwrap();
        opt.step(&mut m).unwrap();
    }
    state(&mut m)
}

/// This rank's run: shards of `batches(steps, global)`, BN synchronised or per rank; its
/// final state.
pub fn run_rank(comm: Arc<dyn Collective>, global: usize, steps: usize, sync: bool) -> Vec<f64> {
    // Each rank starts from other weights: DataParallel::new makes them rank 0's.
    let mut m = model(1 + comm.rank() as u64, global);
    if sync {
        assert_eq!(convert_sync_batch_norm(&mut m, &comm), 1);
    }
    let mut dp = DataParallel::new(comm, &mut m).unwrap();
    let mut opt = sgd(&mut m);
    let ce = SoftmaxCrossEntropy::new(CLASSES).unwrap();
    let mine = dp.shard(global);
    for (x, labels) in batches(steps, global) {
        let xs = &x[mine.start * IN..mine.end * IN];
        dp.train_step(&mut m, &mut opt, &ce, xs, &labels[mine.clone()], global)
            .unwrap();
    }
    state(&mut m)
}

pub fn max_rel_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .fold(0.0, |m, (x, y)| m.max((x - y).abs() / scale))
}
