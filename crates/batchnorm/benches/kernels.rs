//! Divan benchmarks of the kernels: `cargo bench -p batchnorm`.
//!
//! Each kernel is measured next to its memory yardstick on the same bytes (a copy of x for the
//! forward passes, `c = a + b` for backward), single-threaded, f32. `bnlab bench` reports the
//! same comparison as ratios for every shape, layout and thread count.

use batchnorm::{BatchNorm, BatchNormConfig, Grads, Layout, Mode, Saved, Shape};
use divan::{black_box, Bencher};

fn main() {
    divan::main();
}

const SHAPES: [(&[usize], Layout); 4] = [
    (&[64, 64, 56, 56], Layout::ChannelsFirst),
    (&[64, 64, 56, 56], Layout::ChannelsLast),
    (&[8, 3, 224, 224], Layout::ChannelsLast),
    (&[60, 100], Layout::ChannelsFirst),
];

struct Case {
    shape: Shape,
    bn: BatchNorm<f32>,
    x: Vec<f32>,
    y: Vec<f32>,
    dy: Vec<f32>,
    dx: Vec<f32>,
    saved: Saved<f32>,
    grads: Grads<f32>,
}

fn case(i: usize) -> Case {
    let (dims, layout) = SHAPES[i];
    let shape = Shape::new(dims, layout).unwrap();
    let n = shape.len();
    let mut c = Case {
        shape,
        bn: BatchNorm::new(dims[1], BatchNormConfig::default()).unwrap(),
        x: (0..n).map(|i| ((i * 7919) % 1000) as f32 * 0.01).collect(),
        y: vec![0.0; n],
        dy: (0..n)
            .map(|i| ((i * 31) % 100) as f32 * 0.02 - 1.0)
            .collect(),
        dx: vec![0.0; n],
        saved: Saved::default(),
        grads: Grads::default(),
    };
    c.bn.forward_into(&c.x, &c.shape, Mode::Train, &mut c.y, &mut c.saved)
        .unwrap();
    c
}

/// Argument `i` is the index into `SHAPES`.
#[divan::bench(args = 0..SHAPES.len())]
fn forward_train(b: Bencher, i: usize) {
    let mut c = case(i);
    b.bench_local(|| {
        c.bn.forward_into(&c.x, &c.shape, Mode::Train, &mut c.y, &mut c.saved)
            .unwrap();
    });
}

/// Argument `i` is the index into `SHAPES`.
#[divan::bench(args = 0..SHAPES.len())]
fn forward_eval(b: Bencher, i: usize) {
    let mut c = case(i);
    b.bench_local(|| {
        c.bn.forward_into(&c.x, &c.shape, Mode::Eval, &mut c.y, &mut c.saved)
            .unwrap();
    });
}

/// Argument `i` is the index into `SHAPES`.
#[divan::bench(args = 0..SHAPES.len())]
fn backward(b: Bencher, i: usize) {
    let mut c = case(i);
    b.bench_local(|| {
        let Case {
            bn,
            x,
            dy,
            dx,
            shape,
            saved,
            grads,
            ..
        } = &mut c;
        bn.backward_into(x, dy, shape, saved, dx, grads).unwrap();
    });
}

/// Argument `i` is the index into `SHAPES`.
#[divan::bench(args = 0..SHAPES.len())]
fn yardstick_copy(b: Bencher, i: usize) {
    let mut c = case(i);
    b.bench_local(|| c.y.copy_from_slice(black_box(&c.x)));
}

/// Argument `i` is the index into `SHAPES`.
#[divan::bench(args = 0..SHAPES.len())]
fn yardstick_add(b: Bencher, i: usize) {
    let mut c = case(i);
    b.bench_local(|| {
        for ((o, &a), &d) in c.dx.iter_mut().zip(black_box(&c.x)).zip(&c.dy) {
            *o = a + d;
        }
    });
}
