//! Outputs written through non-temporal stores (forced here for every size) are bitwise the
//! ones written normally: the baseline path, which never streams, is the reference.

use batchnorm::{bf16, f16, BatchNorm, BatchNormConfig, Element, Isa, Layout, Mode, Par, Shape};

type Outputs<T> = (Vec<T>, Vec<T>, Vec<T>);

fn run<T: Element>(shape: &Shape, isa: Isa, par: Par) -> Outputs<T> {
    let n = shape.len();
    let x: Vec<T> = (0..n)
        .map(|i| T::from_f64(((i * 7919) % 1013) as f64 * 0.37 - 100.0))
        .collect();
    let dy: Vec<T> = (0..n)
        .map(|i| T::from_f64(((i * 31) % 97) as f64 * 0.01 - 0.5))
        .collect();
    let mut bn = BatchNorm::<T>::new(shape.channels(), BatchNormConfig::default()).unwrap();
    bn.set_isa(isa).unwrap();
    bn.set_par(par);
    let (mut y, mut dx, mut y_eval) = (
        vec![T::default(); n],
        vec![T::default(); n],
        vec![T::default(); n],
    );
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
        same_on_every_path::<f32>(&shape);
        same_on_every_path::<f64>(&shape);
        // 16-bit steps are one 16-byte store each.
        same_on_every_path::<bf16>(&shape);
        same_on_every_path::<f16>(&shape);
    }
}

fn same_on_every_path<T: Element>(shape: &Shape) {
    let reference = run::<T>(shape, Isa::Baseline, Par::Seq);
    for isa in Isa::available() {
        for par in [Par::Seq, Par::Rayon] {
            let what = format!("{} {shape:?} {isa:?} {par:?}", T::NAME);
            assert!(run::<T>(shape, isa, par) == reference, "{what}");
        }
    }
}
