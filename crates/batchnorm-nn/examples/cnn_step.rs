//! Times one training step (forward, softmax cross-entropy, backward) of the `bnlab cnn` network,
//! conv3x3(8)-BN2d-ReLU-maxpool2, conv3x3(16)-BN2d-ReLU-maxpool2, linear(784, 10), on one thread,
//! and the same per layer (minimum and median wall time; the minimum is robust to a busy
//! machine).
//!
//! Run: `cargo run --release -p batchnorm-nn --example cnn_step [-- BATCH STEPS]` (default 64, 200).
//! Input is random pixels: the time does not depend on the values.

use std::time::Instant;

use batchnorm::BatchNormConfig;
use batchnorm_nn::layers::{
    BatchNorm, Conv2d, Conv2dConfig, Flatten, Layer, Linear, MaxPool2d, MaxPool2dConfig, Mode, Relu,
};
use batchnorm_nn::{NnError, Rng, Sequential, SoftmaxCrossEntropy};

fn net(with_bn: bool, batch: usize, rng: &mut Rng) -> Result<Sequential<f32>, NnError> {
    let mut layers: Vec<Box<dyn Layer<f32>>> = Vec::new();
    for (c_in, c_out, hw) in [(1, 8, 28), (8, 16, 14)] {
        let cfg = Conv2dConfig {
            padding: [1, 1],
            ..Conv2dConfig::new(c_in, c_out, 3, [hw, hw])
        };
        let std = (2.0 / (9.0 * c_in as f64)).sqrt();
        layers.push(Box::new(Conv2d::gaussian(cfg, std, rng)?));
        if with_bn {
            let bn = BatchNorm::new(&[c_out, hw, hw], BatchNormConfig::default())?;
            layers.push(Box::new(bn));
        }
        layers.push(Box::new(Relu::new(c_out * hw * hw)?));
        let pool = MaxPool2dConfig::new(c_out, 2, [hw, hw]);
        layers.push(Box::new(MaxPool2d::new(pool)?));
    }
    layers.push(Box::new(Flatten::new(784)?));
    layers.push(Box::new(Linear::gaussian(784, 10, 0.05, rng)?));
    Sequential::new(layers, batch)
}

fn main() -> Result<(), NnError> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("usage: cnn_step [BATCH [STEPS]]"))
        .collect();
    let batch = args.first().copied().unwrap_or(64);
    let steps = args.get(1).copied().unwrap_or(200);
    let mut rng = Rng::new(0);
    let x: Vec<f32> = (0..batch * 784).map(|_| rng.uniform() as f32).collect();
    let labels: Vec<u8> = (0..batch).map(|i| (i % 10) as u8).collect();
    let ce = SoftmaxCrossEntropy::new(10)?;

    for with_bn in [true, false] {
        let mut model = net(with_bn, batch, &mut rng)?;
        let step = |model: &mut Sequential<f32>| -> Result<(f64, f64), NnError> {
            let t0 = Instant::now();
            model.forward_from(&x, batch, Mode::Train)?;
            let (out, grad) = model.output_and_grad(batch)?;
            ce.forward_backward(out, &labels, grad)?;
            let t1 = Instant::now();
            model.backward(batch, false)?;
            let t2 = Instant::now();
            Ok(((t1 - t0).as_secs_f64(), (t2 - t1).as_secs_f64()))
        };
        for _ in 0..10 {
            step(&mut model)?;
        }
        let (mut fwd, mut bwd) = (Vec::new(), Vec::new());
        for _ in 0..steps {
            let (f, b) = step(&mut model)?;
            fwd.push(f);
            bwd.push(b);
        }
        // The machine may be shared: the minimum is the step's cost without interruptions,
        // the median what a run sees.
        let stats = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            (v[0] * 1e3, v[v.len() / 2] * 1e3)
        };
        let ((f_min, f_med), (b_min, b_med)) = (stats(&mut fwd), stats(&mut bwd));
        let mut total: Vec<f64> = fwd.iter().zip(&bwd).map(|(f, b)| f + b).collect();
        let (t_min, t_med) = stats(&mut total);
        println!(
            "{} batch {batch}: step min {t_min:.3} ms (forward {f_min:.3} + backward {b_min:.3}), \
             median {t_med:.3} ms (forward {f_med:.3} + backward {b_med:.3}) over {steps} steps",
            if with_bn { "with BN   " } else { "without BN" },
        );

        // Per layer: forward on the activations of the last step, backward with dx.
        if with_bn {
            let n = batch;
            let mut acts = vec![x.clone()];
            for l in model.layers_mut().iter_mut() {
                let mut y = vec![0.0f32; n * l.out_len()];
                l.forward(acts.last().map_or(&[][..], |a| a), n, Mode::Train, &mut y)?;
                acts.push(y);
            }
            for (i, l) in model.layers_mut().iter_mut().enumerate() {
                let (xi, yi) = (&acts[i], &acts[i + 1]);
                let mut dx = vec![0.0f32; xi.len()];
                let dy = vec![1e-3f32; yi.len()];
                let (mut tf, mut tb) = (f64::INFINITY, f64::INFINITY);
                let mut y = vec![0.0f32; yi.len()];
                for _ in 0..50 {
                    let t0 = Instant::now();
                    l.forward(xi, n, Mode::Train, &mut y)?;
                    let t1 = Instant::now();
                    l.backward(xi, yi, &dy, n, (i > 0).then_some(&mut dx[..]))?;
                    let t2 = Instant::now();
                    tf = tf.min((t1 - t0).as_secs_f64());
                    tb = tb.min((t2 - t1).as_secs_f64());
                }
                println!(
                    "  layer {i} {:<10} forward {:.3} ms, backward {:.3} ms (min of 50){}",
                    l.name(),
                    tf * 1e3,
                    tb * 1e3,
                    if i == 0 { " (no dx)" } else { "" }
                );
            }
        }
    }
    Ok(())
}
