//! Data-parallel training on in-process ranks equals one process on the global batch.

use std::sync::Arc;

use batchnorm::BatchNormConfig;
use batchnorm_dist::{local_group, Collective};
use batchnorm_nn::layers::{BatchNorm, Layer, Linear, Mode, Sigmoid};
use batchnorm_nn::{
    convert_sync_batch_norm, DataParallel, Rng, Sequential, Sgd, SgdConfig, SoftmaxCrossEntropy,
};

const IN: usize = 6;
const CLASSES: usize = 3;

fn model(seed: u64, capacity: usize) -> Sequential<f64> {
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
fn batches(steps: usize, global: usize) -> Vec<(Vec<f64>, Vec<u8>)> {
    let mut rng = Rng::new(99);
    (0..steps)
        .map(|_| {
            let x = (0..global * IN)
                .map(|_| 3.0 + rng.normal())
                .collect();
            let labels = (0..global).map(|_| (rng.next_u64() % 3) as u8).collect();
            (x, labels)
        })
        .collect()
}

fn sgd(model: &mut Sequential<f64>) -> Sgd<f64> {
    let cfg = SgdConfig {
        lr: 0.5,
        momentum: 0.9,
        weight_decay: 1e-3,
    };
    Sgd::new(cfg, model).unwrap()
}

/// Parameters and state (running statistics) of `model`, flattened.
fn state(model: &mut Sequential<f64>) -> Vec<f64> {
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
fn single(global: usize, steps: usize) -> Vec<f64> {
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

/// `p` ranks (threads) on shards of the same batches; every rank's final state.
fn data_parallel(p: usize, global: usize, steps: usize, sync: bool) -> Vec<Vec<f64>> {
    let data = batches(steps, global);
    std::thread::scope(|s| {
        let handles: Vec<_> = local_group(p)
            .into_iter()
            .map(|comm| {
                let data = &data;
                s.spawn(move || {
                    let comm: Arc<dyn Collective> = Arc::new(comm);
                    // Each rank starts from other weights: DataParallel::new makes them rank 0's.
                    let mut m = model(1 + comm.rank() as u64, global);
                    if sync {
                        assert_eq!(convert_sync_batch_norm(&mut m, &comm), 1);
                    }
                    let mut dp = DataParallel::new(comm, &mut m).unwrap();
                    let mut opt = sgd(&mut m);
                    let ce = SoftmaxCrossEntropy::new(CLASSES).unwrap();
                    let mine = dp.shard(global);
                    for (x, labels) in data {
                        let xs = &x[mine.start * IN..mine.end * IN];
                        let ls = &labels[mine.clone()];
                        dp.train_step(&mut m, &mut opt, &ce, xs, ls, global)
                            .unwrap();
                    }
                    state(&mut m)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn max_rel_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .fold(0.0, |m, (x, y)| m.max((x - y).abs() / scale))
}

#[test]
fn synchronised_data_parallel_training_is_single_process_training() {
    let steps = 8;
    // Even shards, uneven shards, and one sample per rank.
    for (p, global) in [(2, 8), (3, 7), (3, 3)] {
        let expected = single(global, steps);
        let ranks = data_parallel(p, global, steps, true);
        for (rank, got) in ranks.iter().enumerate() {
            // f64 sums in other orders, carried through 8 steps of a small network: a few
            // hundred roundings of 1e-16.
            let d = max_rel_diff(got, &expected);
            assert!(d <= 1e-12, "p {p}, rank {rank}: {d}");
            // Every rank holds the same bits.
            assert_eq!(got, &ranks[0]);
        }
    }
}

#[test]
fn per_rank_batch_norm_is_not() {
    // The check above can fail: per-rank statistics (what DDP does by default) train another
    // network.
    let (p, global, steps) = (2, 8, 8);
    let expected = single(global, steps);
    let ranks = data_parallel(p, global, steps, false);
    assert!(max_rel_diff(&ranks[0], &expected) > 1e-4);
}
