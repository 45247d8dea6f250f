//! Outputs written through non-temporal stores (forced here for every size) are bitwise the
//! ones written normally: the baseline path, which never streams, is the reference.

use batchnorm::{BatchNorm, BatchNormConfig, Isa, Layout, Mode, Par, Shape};

fn run(shape: &Shape, isa: Isa, par: Par) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let n = shape.len();
    let x: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 1013) as f32 * 0.37 - 100.0)
        .collect();
    let dy: Vec<f32> = (0..n)
        .map(|i| ((i * 31) % 97) as f32 * 0.01 - 0.5)
        .collect();
    let mut bn = BatchNorm::<f32>::new(shape.channels(), BatchNormConfig::default()).unwrap();
    bn.set_isa(isa).unwrap();
    bn.set_par(par);
    let (mut y, mut dx, mut y_eval) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    let saved = bn.forward(&x, shape, Mode::Train, &mut y).unwrap();
    bn.backward(&x, &dy, shape, &saved, &mut dx).unwrap();
    bn.forward(&x, shape, Mode::Eval, &mut y_eval).unwrap();
    (y, dx, y_eval)
}

#[test]
fn streamed_outputs_are_the_normal_ones() {
    // Read once, before any kernel runs: every output in this process is streamed.
    std::env::set_var("BATCHNORM_STREAM_MIN_BYTES", "0");
    let shapes: [(&[usize], Layout); 4] = [
        (&[3, 5, 7, 9], Layout::ChannelsFirst),
        (&[2, 3, 150, 150], Layout::ChannelsFirst),
        (&[5, 3, 7, 3], Layout::ChannelsLast),
        (&[9, 100, 6, 6], Layout::ChannelsLast),
    ];
    for (dims, layout) in shapes {
        let shape = Shape::new(dims, layout).unwrap();
        let reference = run(&shape, Isa::Baseline, Par::Seq);
        for isa in Isa::available() {
            for par in [Par::Seq, Par::Rayon] {
                assert!(
                    run(&shape, isa, par) == reference,
                    "{dims:?} {layout:?} {isa:?} {par:?}"
                );
            }
        }
    }
}
