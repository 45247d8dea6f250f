//! Every cut of a training step (plain and residual) gives the bits of channel groups;
//! non-finite input as PyTorch.

use super::*;
use crate::plan::{channel_cut, Cut};
use crate::stages::GradSums;
use crate::Layout;

/// y and running statistics of a training forward, and dx, dweight, dbias of its backward;
/// then y, dx, dresidual, dweight and dbias of the residual form.
type Outputs<T> = (
    Vec<T>,
    Vec<<T as Element>::Param>,
    Vec<<T as Element>::Param>,
    Vec<T>,
    Vec<<T as Element>::Param>,
    Vec<<T as Element>::Param>,
    Residual<T>,
);

/// y, dx, dresidual, dweight and dbias of `relu(bn(x) + r)`.
type Residual<T> = (
    Vec<T>,
    Vec<T>,
    Vec<T>,
    Vec<<T as Element>::Param>,
    Vec<<T as Element>::Param>,
);

/// A residual of `n` values that lifts about half of the pre-activations above 0.
fn residual<T: Element>(n: usize) -> Vec<T> {
    let r = (0..n).map(|i| T::from_f64(((i * 13) % 29) as f64 * 0.1 - 1.4));
    r.collect()
}

/// The test data of `n` values: x spread over [-100, 275) with a large offset, and dy.
fn inputs<T: Element>(n: usize) -> (Vec<T>, Vec<T>) {
    let x = (0..n).map(|i| T::from_f64(((i * 7919) % 1013) as f64 * 0.37 - 100.0));
    let dy = (0..n).map(|i| T::from_f64(((i * 31) % 97) as f64 * 0.01 - 0.5));
    (x.collect(), dy.collect())
}

fn train_step<T: Element>(dims: &[usize], par: Par, isa: Isa, l2: usize) -> Outputs<T> {
    let shape = Shape::new(dims, Layout::ChannelsFirst).unwrap();
    let n = shape.len();
    let (x, dy) = inputs::<T>(n);
    let mut bn = BatchNorm::<T>::new(shape.channels(), BatchNormConfig::default()).unwrap();
    bn.weight = (0..shape.channels())
        .map(|c| T::Param::from_f64(0.5 + c as f64))
        .collect();
    bn.set_par(par);
    bn.set_isa(isa).unwrap();
    bn.l2_budget = Some(l2);
    let (mut y, mut dx) = (vec![T::default(); n], vec![T::default(); n]);
    let saved = bn.forward(&x, &shape, Mode::Train, &mut y).unwrap();
    let grads = bn.backward(&x, &dy, &shape, &saved, &mut dx).unwrap();
    let running = (bn.running_mean.clone(), bn.running_var.clone());
    // The residual form: its backward reads dy through the mask its forward kept.
    let (mut ya, mut dxa, mut dr) = (
        vec![T::default(); n],
        vec![T::default(); n],
        vec![T::default(); n],
    );
    let r = residual::<T>(n);
    let saved = bn
        .forward_add_relu(&x, &r, &shape, Mode::Train, &mut ya)
        .unwrap();
    let ga = bn
        .backward_add_relu(&x, &ya, &dy, &shape, &saved, &mut dxa, &mut dr)
        .unwrap();
    let res = (ya, dxa, dr, ga.weight, ga.bias);
    (y, running.0, running.1, dx, grads.weight, grads.bias, res)
}

/// [`train_step`] composed from the public stages, on this thread with the baseline kernels.
fn stage_step<T: Element>(dims: &[usize]) -> Outputs<T> {
    use crate::stages::{update_factor, update_running_stats};
    let shape = Shape::new(dims, Layout::ChannelsFirst).unwrap();
    let (n, c) = (shape.len(), shape.channels());
    let (x, dy) = inputs::<T>(n);
    let k = Kernels::new(Par::Seq).with_isa(Isa::Baseline).unwrap();
    let mut moments = vec![Moments::EMPTY; c];
    k.moments(&x, &shape, &mut moments).unwrap();
    let gamma = |ch: usize| T::Param::from_f64(0.5 + ch as f64).to_f64();
    let norms: Vec<Normalization> = (0..c)
        .map(|ch| Normalization::from_moments(&moments[ch], 1e-5, gamma(ch), 0.0))
        .collect();
    let mut y = vec![T::default(); n];
    k.normalize(&x, &shape, &norms, &mut y).unwrap();
    let (mut rm, mut rv) = (vec![T::Param::ZERO; c], vec![T::Param::ONE; c]);
    update_running_stats(&mut rm, &mut rv, &moments, update_factor(Some(0.1), 1)).unwrap();
    let (dx, weight, bias) = stage_backward(&k, &x, &dy, &shape, &norms);
    // The residual form, from its stages: dresidual masks dy by y, the plain backward of it.
    let mut ya = vec![T::default(); n];
    k.normalize_add_relu(&x, &residual::<T>(n), &shape, &norms, &mut ya)
        .unwrap();
    let mut dr = vec![T::default(); n];
    k.relu_grad(&ya, &dy, &shape, &mut dr).unwrap();
    let (dxa, wa, ba) = stage_backward(&k, &x, &dr, &shape, &norms);
    let res = (ya, dxa, dr, wa, ba);
    (y, rm, rv, dx, weight, bias, res)
}

/// dx, dweight and dbias of a backward of `dy` composed from the stages (gradient sums, the
/// input-gradient maps, the dx pass), after the forward normalised by `norms`.
fn stage_backward<T: Element>(
    k: &Kernels,
    x: &[T],
    dy: &[T],
    shape: &Shape,
    norms: &[Normalization],
) -> (Vec<T>, Vec<T::Param>, Vec<T::Param>) {
    let mut sums = vec![GradSums::default(); norms.len()];
    let mean: Vec<f64> = norms.iter().map(|g| g.mean).collect();
    k.grad_sums(x, dy, shape, &mean, &mut sums).unwrap();
    let count = shape.per_channel() as u64;
    let grads: Vec<InputGrad> = (norms.iter().zip(&sums))
        .map(|(norm, &s)| InputGrad::batch(norm, s, count))
        .collect();
    let mut dx = vec![T::default(); x.len()];
    k.input_grad(x, dy, shape, &grads, &mut dx).unwrap();
    let weight = (norms.iter().zip(&sums))
        .map(|(norm, s)| T::Param::from_f64(s.weight_grad(norm.invstd)))
        .collect();
    let bias = sums
        .iter()
        .map(|s| T::Param::from_f64(s.bias_grad()))
        .collect();
    (dx, weight, bias)
}

fn channel_by_channel_is_bitwise_blocked<T: Element>() {
    // Channels of at least MIN_RESIDENT_BYTES: long runs (inner > RUN_CHUNK) and short
    // runs gathered into pieces.
    // Runs twice as long for 16-bit elements, to keep the runs and channels as many bytes.
    let k = 4 / std::mem::size_of::<T>().min(4);
    let shapes: [&[usize]; 2] = [&[4, 3, 128, 130 * k], &[40, 2, 40, 41 * k]];
    for dims in shapes {
        let per_channel = dims[0] * dims[2] * dims[3] * std::mem::size_of::<T>();
        assert!(per_channel >= crate::tuning::MIN_RESIDENT_BYTES, "{dims:?}");
        let blocked = train_step::<T>(dims, Par::Seq, Isa::Baseline, 0);
        assert!(stage_step::<T>(dims) == blocked, "{dims:?}: stages");
        for isa in Isa::available() {
            for par in [Par::Seq, Par::Rayon] {
                let resident = train_step::<T>(dims, par, isa, usize::MAX);
                assert!(resident == blocked, "{dims:?} {isa:?} {par:?}");
            }
        }
        // Teams of 2 and 3 threads sharing each channel: with an L2 budget of half a
        // channel of x the forward shares, with one channel of x the backward does.
        for threads in [2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let geo = Shape::new(dims, Layout::ChannelsFirst).unwrap().geometry();
            for (l2, streams) in [(per_channel / 2, 1), (per_channel, 2)] {
                let exec = Exec {
                    isa: Isa::Baseline,
                    par: true,
                    stream: false,
                    l2_budget: l2,
                };
                let size = std::mem::size_of::<T>();
                let cut = pool.install(|| channel_cut(geo, size, streams, exec));
                assert_eq!(cut, Cut::Shared(threads), "{dims:?} {l2}");
                for isa in Isa::available() {
                    let shared = pool.install(|| train_step::<T>(dims, Par::Rayon, isa, l2));
                    assert!(shared == blocked, "{dims:?} {isa:?} {threads} threads");
                }
            }
        }
    }
}

#[test]
fn channel_by_channel_gives_the_bits_of_channel_groups() {
    channel_by_channel_is_bitwise_blocked::<f32>();
    channel_by_channel_is_bitwise_blocked::<f64>();
    channel_by_channel_is_bitwise_blocked::<crate::bf16>();
}

fn small_channel_groups_are_bitwise_blocked<T: Element>() {
    // 80 channels of 6x20x21 values, too small to go one by one: under a budget of 600
    // KiB they go in as few groups as fit (x alone for the forward, x and dy for the
    // backward), of even size, on one thread or shared out.
    let dims: &[usize] = &[6, 80, 20, 21];
    let geo = Shape::new(dims, Layout::ChannelsFirst).unwrap().geometry();
    let budget = 600 << 10;
    let exec = Exec {
        isa: Isa::Baseline,
        par: false,
        stream: false,
        l2_budget: budget,
    };
    let (size, bytes) = (
        std::mem::size_of::<T>(),
        geo.per_channel() * std::mem::size_of::<T>(),
    );
    for streams in [1, 2] {
        // As few groups as fit the budget, of even size.
        let most = budget / (bytes * streams);
        let Cut::Channels(g) = channel_cut(geo, size, streams, exec) else {
            panic!("{streams} streams: not in groups");
        };
        assert!(g > 1 && g <= most, "{g} of at most {most}");
        assert_eq!(80usize.div_ceil(g), 80usize.div_ceil(most));
    }
    let blocked = train_step::<T>(dims, Par::Seq, Isa::Baseline, 0);
    assert!(stage_step::<T>(dims) == blocked, "stages");
    for isa in Isa::available() {
        for par in [Par::Seq, Par::Rayon] {
            let grouped = train_step::<T>(dims, par, isa, budget);
            assert!(grouped == blocked, "{isa:?} {par:?}");
        }
    }
}

#[test]
fn small_channel_groups_give_the_bits_of_channel_groups() {
    small_channel_groups_are_bitwise_blocked::<f32>();
    small_channel_groups_are_bitwise_blocked::<f64>();
    small_channel_groups_are_bitwise_blocked::<crate::f16>();
}

#[test]
fn shared_channels_under_a_busy_pool() {
    // Calls that share their channels among the pool's threads, eight at once on two
    // threads (each call's team may find its other member busy with another call): every
    // call finishes, with the bits of channel groups.
    use rayon::prelude::*;
    let dims: &[usize] = &[4, 3, 128, 130];
    let per_channel = 4 * 128 * 130 * std::mem::size_of::<f32>();
    let blocked = train_step::<f32>(dims, Par::Seq, Isa::Baseline, 0);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    for l2 in [per_channel / 2, per_channel] {
        let outs: Vec<_> = pool.install(|| {
            (0..8)
                .into_par_iter()
                .map(|_| train_step::<f32>(dims, Par::Rayon, Isa::detect(), l2))
                .collect()
        });
        assert!(outs.iter().all(|o| *o == blocked), "budget {l2}");
    }
}

/// What PyTorch gives a channel holding non-finite values: its running mean, and whether its
/// outputs, running variance and saved invstd are all NaN (they are, for every kind below).
#[derive(Debug, Clone, Copy)]
enum Poison {
    Nan,
    PosInf,
    BothInf,
}

impl Poison {
    /// Plants the values in channel `ch` of `x` at (memory) positions `at`.
    fn plant<T: Element>(self, x: &mut [T], at: &[usize]) {
        let values: &[f64] = match self {
            Poison::Nan => &[f64::NAN],
            Poison::PosInf => &[f64::INFINITY, f64::INFINITY],
            Poison::BothInf => &[f64::INFINITY, f64::NEG_INFINITY],
        };
        for (i, &p) in at.iter().enumerate() {
            x[p] = T::from_f64(values[i % values.len()]);
        }
    }

    fn running_mean_ok(self, v: f64) -> bool {
        match self {
            Poison::PosInf => v == f64::INFINITY,
            Poison::Nan | Poison::BothInf => v.is_nan(),
        }
    }
}

/// The channel of the element at memory position `i`.
fn channel_at(shape: &Shape, i: usize) -> usize {
    let geo = shape.geometry();
    (i / geo.inner) % geo.channels
}

/// Channels 0, 1, 2 poisoned (NaN; +inf twice; +inf and -inf), the value first in a piece and
/// later in it: those channels' y, running variance and saved invstd are NaN, their running
/// mean NaN or +inf as PyTorch's; every other channel gives the bits it gives without them.
fn non_finite_as_pytorch<T: Element>(
    dims: &[usize],
    layout: Layout,
    par: Par,
    isa: Isa,
    l2: usize,
) {
    let shape = Shape::new(dims, layout).unwrap();
    let n = shape.len();
    let c = shape.channels();
    let (x, _) = inputs::<T>(n);
    let positions = |ch: usize| -> Vec<usize> {
        let mine: Vec<usize> = (0..n).filter(|&i| channel_at(&shape, i) == ch).collect();
        let mut at = vec![mine[0], mine[mine.len() / 2], mine[mine.len() - 1]];
        at.dedup();
        at
    };
    let mut poisoned = x.clone();
    let kinds = [Poison::Nan, Poison::PosInf, Poison::BothInf];
    for (ch, kind) in kinds.iter().enumerate() {
        kind.plant(&mut poisoned, &positions(ch));
    }
    let run = |x: &[T]| {
        let mut bn = BatchNorm::<T>::new(c, BatchNormConfig::default()).unwrap();
        bn.set_par(par);
        bn.set_isa(isa).unwrap();
        bn.l2_budget = Some(l2);
        let mut y = vec![T::default(); n];
        let saved = bn.forward(x, &shape, Mode::Train, &mut y).unwrap();
        (y, bn, saved)
    };
    let (y_clean, bn_clean, saved_clean) = run(&x);
    let (y, bn, saved) = run(&poisoned);
    let what = format!("{} {dims:?} {layout:?} {par:?} {isa:?} l2 {l2}", T::NAME);
    for (i, (v, clean)) in y.iter().zip(&y_clean).enumerate() {
        let ch = channel_at(&shape, i);
        if ch < kinds.len() {
            assert!(
                v.to_f64().is_nan(),
                "{what}: y[{i}] of channel {ch} is {v:?}"
            );
        } else {
            assert!(v == clean, "{what}: y[{i}] of clean channel {ch} changed");
        }
    }
    for ch in 0..c {
        let (rm, rv) = (bn.running_mean[ch].to_f64(), bn.running_var[ch].to_f64());
        let invstd = saved.invstd[ch].to_f64();
        if let Some(kind) = kinds.get(ch) {
            assert!(
                kind.running_mean_ok(rm),
                "{what}: {kind:?} running_mean {rm}"
            );
            assert!(rv.is_nan(), "{what}: {kind:?} running_var {rv}");
            assert!(invstd.is_nan(), "{what}: {kind:?} invstd {invstd}");
        } else {
            assert!(
                rm == bn_clean.running_mean[ch].to_f64(),
                "{what}: channel {ch}"
            );
            assert!(
                rv == bn_clean.running_var[ch].to_f64(),
                "{what}: channel {ch}"
            );
            assert!(
                invstd == saved_clean.invstd[ch].to_f64(),
                "{what}: channel {ch}"
            );
        }
    }
}

#[test]
fn non_finite_input_as_pytorch_on_every_cut_and_path() {
    // (dims, layout, L2 budgets): tiny channels (one piece, in waves), channels of up to 64
    // values (which the clamp of M2 once kept finite), long runs in waves or one by one
    // (budget 0 or unbounded), short runs gathered into pieces, channels-last rows.
    let cases: [(&[usize], Layout, &[usize]); 6] = [
        (&[2, 4], Layout::ChannelsFirst, &[0]),
        (&[4, 5, 4, 4], Layout::ChannelsFirst, &[0]),
        (&[4, 4, 128, 130], Layout::ChannelsFirst, &[0, usize::MAX]),
        (&[40, 4, 40, 41], Layout::ChannelsFirst, &[0, usize::MAX]),
        (&[6, 5, 7, 3], Layout::ChannelsLast, &[0]),
        (&[64, 70, 6, 6], Layout::ChannelsLast, &[0]),
    ];
    for (dims, layout, budgets) in cases {
        for isa in Isa::available() {
            for par in [Par::Seq, Par::Rayon] {
                for &l2 in budgets {
                    non_finite_as_pytorch::<f32>(dims, layout, par, isa, l2);
                    non_finite_as_pytorch::<f64>(dims, layout, par, isa, l2);
                    non_finite_as_pytorch::<crate::bf16>(dims, layout, par, isa, l2);
                }
            }
        }
    }
    // Channels shared by a team of two threads.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let dims: &[usize] = &[4, 4, 128, 130];
    let geo = Shape::new(dims, Layout::ChannelsFirst).unwrap().geometry();
    let l2 = 4 * 128 * 130 * 4 / 2;
    let exec = Exec {
        isa: Isa::Baseline,
        par: true,
        stream: false,
        l2_budget: l2,
    };
    assert_eq!(
        pool.install(|| channel_cut(geo, 4, 1, exec)),
        Cut::Shared(2)
    );
    for isa in Isa::available() {
        pool.install(|| {
            non_finite_as_pytorch::<f32>(dims, Layout::ChannelsFirst, Par::Rayon, isa, l2)
        });
    }
}
