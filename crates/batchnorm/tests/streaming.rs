//! Outputs written through non-temporal stores (forced here for every size) are bitwise the
//! ones written normally: the baseline path, which never streams, is the reference for every
//! path that streams (AVX2); on a machine without one there is nothing to compare, and the
//! test says so.

use batchnorm::{bf16, f16, BatchNorm, BatchNormConfig, Element, Isa, Layout, Mode, Par, Shape};

/// y, dx and the evaluation's y; then y, dx and dresidual of BN + add + ReLU.
type Outputs<T> = [Vec<T>; 6];

fn run<T: Element>(shape: &Shape, isa: Isa, par: Par) -> Outputs<T> {
    let n = shape.len();
    let x: Vec<T> = (0..n)
        .map(|i| T::from_f64(((i * 7919) % 1013) as f64 * 0.37 - 100.0))
        .collect();
    let dy: Vec<T> = (0..n)
        .map(|i| T::from_f64(((i * 31) % 97) as f64 * 0.01 - 0.5))
        .collect();
    // A residual that lifts about half of the values above the ReLU's threshold.
    let residual: Vec<T> = (0..n)
        .map(|i| T::from_f64(((i * 13) % 29) as f64 * 0.1 - 1.4))
        .collect();
    let mut bn = BatchNorm::<T>::new(shape.channels(), BatchNormConfig::default()).unwrap();
    bn.set_isa(isa).unwrap();
    bn.set_par(par);
    let mut out: Outputs<T> = std::array::from_fn(|_| vec![T::default(); n]);
    let [y, dx, y_eval, y_add, dx_add, dr] = &mut out;
    let saved = bn.forward(&x, shape, Mode::Train, y).unwrap();
    bn.backward(&x, &dy, shape, &saved, dx).unwrap();
    bn.forward(&x, shape, Mode::Eval, y_eval).unwrap();
    let saved = bn
        .forward_add_relu(&x, &residual, shape, Mode::Train, y_add)
        .unwrap();
    bn.backward_add_relu(&x, y_add, &dy, shape, &saved, dx_add, dr)
        .unwrap();
    out
}

#[test]
fn streamed_outputs_are_the_normal_ones() {
    // Only the SIMD paths stream; comparing the baseline with itself would check nothing.
    let streaming: Vec<Isa> = Isa::available()
        .into_iter()
        .filter(|&isa| isa != Isa::Baseline)
        .collect();
    if streaming.is_empty() {
        eprintln!("no path that streams on this machine (no AVX2): nothing compared");
        return;
    }
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
        same_as_baseline::<f32>(&shape, &streaming);
        same_as_baseline::<f64>(&shape, &streaming);
        // 16-bit maps store normally (steps of 16 bytes); their ReLU masking pass streams
        // pairs of values.
        same_as_baseline::<bf16>(&shape, &streaming);
        same_as_baseline::<f16>(&shape, &streaming);
    }
}

fn same_as_baseline<T: Element>(shape: &Shape, streaming: &[Isa]) {
    let reference = run::<T>(shape, Isa::Baseline, Par::Seq);
    for &isa in streaming {
        for par in [Par::Seq, Par::Rayon] {
            let what = format!("{} {shape:?} {isa:?} {par:?}", T::NAME);
            assert!(run::<T>(shape, isa, par) == reference, "{what}");
        }
    }
}
