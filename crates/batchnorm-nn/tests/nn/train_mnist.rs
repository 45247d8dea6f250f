//! A short training run on real MNIST: the whole stack (IDX reader, layers, loss, SGD) learns.

use std::path::Path;

use batchnorm::BatchNormConfig;
use batchnorm_nn::data::Mnist;
use batchnorm_nn::layers::{BatchNorm, Layer, Linear, Mode, Sigmoid};
use batchnorm_nn::{count_correct, Rng, Sequential, Sgd, SgdConfig, SoftmaxCrossEntropy};

#[test]
fn bn_sigmoid_mlp_learns_mnist_in_300_steps() {
    let data =
        Mnist::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist")).unwrap();
    let mut rng = Rng::new(42);
    let layers: Vec<Box<dyn Layer<f32>>> = vec![
        Box::new(Linear::gaussian(784, 100, 0.05, &mut rng).unwrap()),
        Box::new(BatchNorm::new(&[100], BatchNormConfig::default()).unwrap()),
        Box::new(Sigmoid::new(100).unwrap()),
        Box::new(Linear::gaussian(100, 10, 0.05, &mut rng).unwrap()),
    ];
    let batch = 60;
    let eval_chunk = 500;
    let mut model = Sequential::new(layers, eval_chunk).unwrap();
    let mut sgd = Sgd::new(
        SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.0,
        },
        &mut model,
    )
    .unwrap();
    let ce = SoftmaxCrossEntropy::new(10).unwrap();

    let mut order: Vec<usize> = (0..data.train.len()).collect();
    rng.shuffle(&mut order);
    let mut labels = vec![0u8; batch];
    let mut losses = Vec::new();
    for step in 0..300 {
        let idx = &order[step * batch..(step + 1) * batch];
        data.train
            .gather(idx, model.input_mut(batch).unwrap(), &mut labels)
            .unwrap();
        model.forward(batch, Mode::Train).unwrap();
        let (out, grad) = model.output_and_grad(batch).unwrap();
        losses.push(ce.forward_backward(out, &labels, grad).unwrap().loss);
        model.backward(batch, false).unwrap();
        sgd.step(&mut model).unwrap();
    }
    let first: f64 = losses[..20].iter().sum::<f64>() / 20.0;
    let last: f64 = losses[280..].iter().sum::<f64>() / 20.0;
    // The first 20 steps average 1.8-2.2 (from ln 10 = 2.30 at a near-uniform softmax); the last
    // 20 measured 0.32-0.48: the loss must have fallen well below its start.
    assert!(first > 1.5 && first < 2.4, "initial loss {first}");
    assert!(last < 0.6, "loss after 300 steps {last} (from {first})");

    // Test accuracy on the first 5,000 test images, BN in eval mode (running statistics).
    let n_test = 5000;
    let mut correct = 0;
    let mut lab = vec![0u8; eval_chunk];
    let all: Vec<usize> = (0..n_test).collect();
    for chunk in all.chunks(eval_chunk) {
        data.test
            .gather(
                chunk,
                model.input_mut(chunk.len()).unwrap(),
                &mut lab[..chunk.len()],
            )
            .unwrap();
        let out = model.forward(chunk.len(), Mode::Eval).unwrap();
        correct += count_correct(out, 10, &lab[..chunk.len()]).unwrap();
    }
    let acc = correct as f64 / n_test as f64;
    eprintln!("loss {first:.3} -> {last:.3}, test accuracy {acc:.4}");
    // 300 steps see 18,000 images, under a third of an epoch. Measured with this setup: 0.868 to
    // 0.883 over three seeds and four SGD settings (and 0.907 after 900 steps); chance is 0.10,
    // and a broken gradient, optimiser or data pipeline stays far below. 0.85 leaves room for
    // seed and platform variation.
    assert!(acc > 0.85, "test accuracy after 300 steps: {acc}");
}
