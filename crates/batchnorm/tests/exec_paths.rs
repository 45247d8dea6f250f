//! Every execution path gives bitwise the same results: each instruction set this CPU supports,
//! sequential or on 1, 2 and 3 rayon threads, fresh or reused buffers. The work is cut the same
//! way whatever the threads, and no path fuses or reorders floating-point operations. Batch
//! Renormalization goes through the same passes with corrected coefficients, and the fused
//! ReLU's backward through its gates: checked the same way.

mod common;

use batchnorm::{BatchNorm, BatchNormConfig, Grads, Isa, Layout, Mode, Par, Renorm, Saved, Shape};
use common::{narrow, Rng};

struct Outcome {
    y: Vec<f32>,
    running: (Vec<f32>, Vec<f32>),
    saved: Saved<f32>,
    dx: Vec<f32>,
    grads: Grads<f32>,
    y_eval: Vec<f32>,
    dx_eval: Vec<f32>,
    y_relu: Vec<f32>,
    dx_relu: Vec<f32>,
    grads_relu: Grads<f32>,
}

fn run(cfg: BatchNormConfig, shape: &Shape, x: &[f32], dy: &[f32], isa: Isa, par: Par) -> Outcome {
    let c = shape.channels();
    let mut bn = BatchNorm::<f32>::new(c, cfg).unwrap();
    bn.set_isa(isa).unwrap();
    bn.set_par(par);
    bn.weight = (0..c).map(|i| 1.0 + i as f32 / 7.0).collect();
    bn.bias = (0..c).map(|i| i as f32 / 3.0 - 1.0).collect();
    let n = shape.len();
    let (mut y, mut dx) = (vec![0.0; n], vec![0.0; n]);
    // Twice through the reusing entry points: warm buffers must not change anything.
    let mut saved = Saved::default();
    let mut grads = Grads::default();
    for _ in 0..2 {
        bn.forward_into(x, shape, Mode::Train, &mut y, &mut saved)
            .unwrap();
        bn.backward_into(x, dy, shape, &saved, &mut dx, &mut grads)
            .unwrap();
    }
    let fresh = bn.backward(x, dy, shape, &saved, &mut dx).unwrap();
    assert_eq!(fresh, grads);
    let running = (bn.running_mean.clone(), bn.running_var.clone());
    let mut y_eval = vec![0.0; n];
    let eval_saved = bn.forward(x, shape, Mode::Eval, &mut y_eval).unwrap();
    let mut dx_eval = vec![0.0; n];
    bn.backward(x, dy, shape, &eval_saved, &mut dx_eval)
        .unwrap();
    // The fused ReLU: its backward stops dy by each channel's gate on x, which must give the
    // bits of the plain backward of dy masked by the forward's y > 0, on every cut.
    let mut y_relu = vec![0.0; n];
    let relu_saved = bn.forward_relu(x, shape, Mode::Train, &mut y_relu).unwrap();
    let mut dx_relu = vec![0.0; n];
    let grads_relu = bn
        .backward_relu(x, &y_relu, dy, shape, &relu_saved, &mut dx_relu)
        .unwrap();
    let masked: Vec<f32> = y_relu
        .iter()
        .zip(dy)
        .map(|(&y, &d)| if y > 0.0 { d } else { 0.0 })
        .collect();
    // (Renormalised outputs are near d, about 100: the ReLU zeroes nothing there.)
    if cfg.renorm.is_none() {
        assert!(y_relu.contains(&0.0), "the ReLU zeroes some");
    }
    let mut dx_masked = vec![0.0; n];
    let grads_masked = bn
        .backward(x, &masked, shape, &relu_saved, &mut dx_masked)
        .unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert!(bits(&dx_relu) == bits(&dx_masked), "backward_relu dx");
    assert_eq!(grads_relu, grads_masked, "backward_relu grads");
    Outcome {
        y,
        running,
        saved,
        dx,
        grads,
        y_eval,
        dx_eval,
        y_relu,
        dx_relu,
        grads_relu,
    }
}

fn assert_same(a: &Outcome, b: &Outcome, label: &str) {
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert!(bits(&a.y) == bits(&b.y), "{label}: y");
    assert!(
        bits(&a.running.0) == bits(&b.running.0),
        "{label}: running_mean"
    );
    assert!(
        bits(&a.running.1) == bits(&b.running.1),
        "{label}: running_var"
    );
    assert!(a.saved == b.saved, "{label}: saved");
    assert!(bits(&a.dx) == bits(&b.dx), "{label}: dx");
    assert!(a.grads == b.grads, "{label}: grads");
    assert!(bits(&a.y_eval) == bits(&b.y_eval), "{label}: eval y");
    assert!(bits(&a.dx_eval) == bits(&b.dx_eval), "{label}: eval dx");
    assert!(bits(&a.y_relu) == bits(&b.y_relu), "{label}: relu y");
    assert!(bits(&a.dx_relu) == bits(&b.dx_relu), "{label}: relu dx");
    assert!(a.grads_relu == b.grads_relu, "{label}: relu grads");
}

#[test]
fn every_path_gives_the_same_bits() {
    let pools: Vec<rayon::ThreadPool> = [1, 2, 3]
        .iter()
        .map(|&t| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .unwrap()
        })
        .collect();
    // Small (sequential), channel-first runs long and short, channels-last rows, several
    // channel groups (the largest is 15 MB of f32, above one wave), enough partial results for
    // a merge split over threads, odd sizes everywhere.
    let shapes: [(&[usize], Layout); 10] = [
        (&[3, 5], Layout::ChannelsFirst),
        (&[7, 3, 33, 35], Layout::ChannelsFirst),
        (&[64, 37, 3, 5], Layout::ChannelsFirst),
        (&[9, 13, 31, 29], Layout::ChannelsLast),
        (&[1000, 70], Layout::ChannelsLast),
        (&[7, 1100, 3, 5], Layout::ChannelsLast), // rows in column strips
        (&[5, 16, 20, 21], Layout::ChannelsLast), // widened rows of exactly 64 values
        (&[6, 48, 5, 7], Layout::ChannelsLast),   // rows of 96: 64 columns, then 16 and 16
        (&[2, 16, 400, 300], Layout::ChannelsFirst),
        (&[64, 2048, 4, 4], Layout::ChannelsLast), // 16 blocks x 2048 partials, merged in parallel
    ];
    for (s, (dims, layout)) in shapes.iter().enumerate() {
        let shape = Shape::new(dims, *layout).unwrap();
        let mut rng = Rng::new(s as u64);
        let x: Vec<f32> = narrow(&rng.normals(shape.len(), 100.0, 3.0));
        let dy: Vec<f32> = narrow(&rng.normals(shape.len(), 0.0, 1.0));
        // Renormalised with limits wide enough that r (about 3, then 2) and d (about 100, then
        // 70) are not clipped: every channel's coefficients move.
        let renorm = BatchNormConfig {
            renorm: Some(Renorm::fixed(5.0, 150.0)),
            ..BatchNormConfig::default()
        };
        for cfg in [BatchNormConfig::default(), renorm] {
            let reference = run(cfg, &shape, &x, &dy, Isa::Baseline, Par::Seq);
            for isa in Isa::available() {
                let label = format!("{dims:?} {layout:?} {isa:?} {:?}", cfg.renorm);
                assert_same(
                    &reference,
                    &run(cfg, &shape, &x, &dy, isa, Par::Seq),
                    &label,
                );
                for (t, pool) in pools.iter().enumerate() {
                    let out = pool.install(|| run(cfg, &shape, &x, &dy, isa, Par::Rayon));
                    let label = format!("{label} rayon {} threads", t + 1);
                    assert_same(&reference, &out, &label);
                }
            }
        }
    }
}
