//! The public stages (`batchnorm::stages`): composed, they give `BatchNorm::forward` and
//! `backward` bit for bit; the moments of any split of a batch, merged in any grouping, are the
//! whole batch's; a batch split over "ranks" (statistics merged, gradient sums added, the
//! global count) has the gradient of the whole batch, checked by finite differences.

mod common;

use batchnorm::stages::{
    update_factor, update_running_stats, GradSums, InputGrad, Kernels, Normalization,
};
use batchnorm::{
    bf16, f16, BatchNorm, BatchNormConfig, BatchNormError, Element, Isa, Layout, Mode, Moments,
    Par, Saved, Shape,
};
use common::{narrow, Rng};

/// y, running mean and variance, dx, dweight, dbias.
type Outputs<T> = (
    Vec<T>,
    Vec<<T as Element>::Param>,
    Vec<<T as Element>::Param>,
    Vec<T>,
    Vec<<T as Element>::Param>,
    Vec<<T as Element>::Param>,
);

struct Case<T: Element> {
    shape: Shape,
    x: Vec<T>,
    dy: Vec<T>,
    weight: Vec<T::Param>,
    bias: Vec<T::Param>,
    running_mean: Vec<T::Param>,
    running_var: Vec<T::Param>,
}

impl<T: Element> Case<T> {
    fn new(dims: &[usize], layout: Layout, rng: &mut Rng) -> Self {
        let shape = Shape::new(dims, layout).unwrap();
        let (n, c) = (shape.len(), shape.channels());
        let param = |v: Vec<f64>| v.iter().map(|&x| T::Param::from_f64(x)).collect::<Vec<_>>();
        Self {
            x: narrow(&rng.normals(n, 3.0, 2.0)),
            dy: narrow(&rng.normals(n, 0.0, 1.0)),
            weight: param(rng.normals(c, 1.0, 0.3)),
            bias: param(rng.normals(c, 0.0, 0.3)),
            running_mean: param(rng.normals(c, 3.0, 0.3)),
            running_var: param((0..c).map(|_| 1.0 + rng.uniform()).collect()),
            shape,
        }
    }

    fn module(&self, kernels: Kernels) -> BatchNorm<T> {
        let mut bn =
            BatchNorm::<T>::new(self.shape.channels(), BatchNormConfig::default()).unwrap();
        bn.set_par(kernels.par());
        bn.set_isa(kernels.isa()).unwrap();
        bn.weight.clone_from(&self.weight);
        bn.bias.clone_from(&self.bias);
        bn.running_mean.clone_from(&self.running_mean);
        bn.running_var.clone_from(&self.running_var);
        bn
    }

    /// One step through the module.
    fn module_step(&self, kernels: Kernels, mode: Mode) -> Outputs<T> {
        let mut bn = self.module(kernels);
        let n = self.shape.len();
        let (mut y, mut dx) = (vec![T::default(); n], vec![T::default(); n]);
        let saved = bn.forward(&self.x, &self.shape, mode, &mut y).unwrap();
        let grads = bn
            .backward(&self.x, &self.dy, &self.shape, &saved, &mut dx)
            .unwrap();
        (
            y,
            bn.running_mean,
            bn.running_var,
            dx,
            grads.weight,
            grads.bias,
        )
    }

    /// The same step, stage by stage.
    fn stage_step(&self, k: Kernels, mode: Mode) -> Outputs<T> {
        let (shape, c, n) = (&self.shape, self.shape.channels(), self.shape.len());
        let eps = BatchNormConfig::default().eps;
        let (w, b) = (
            |ch: usize| self.weight[ch].to_f64(),
            |ch: usize| self.bias[ch].to_f64(),
        );
        let (mut rm, mut rv) = (self.running_mean.clone(), self.running_var.clone());
        let mut moments = vec![Moments::EMPTY; c];
        let norms: Vec<Normalization> = if mode == Mode::Train {
            k.moments(&self.x, shape, &mut moments).unwrap();
            update_running_stats(&mut rm, &mut rv, &moments, update_factor(Some(0.1), 1)).unwrap();
            (0..c)
                .map(|ch| Normalization::from_moments(&moments[ch], eps, w(ch), b(ch)))
                .collect()
        } else {
            let (m, v) = (&self.running_mean, &self.running_var);
            (0..c)
                .map(|ch| {
                    Normalization::from_mean_var(m[ch].to_f64(), v[ch].to_f64(), eps, w(ch), b(ch))
                })
                .collect()
        };
        let mut y = vec![T::default(); n];
        k.normalize(&self.x, shape, &norms, &mut y).unwrap();
        let mean: Vec<f64> = norms.iter().map(|g| g.mean).collect();
        let mut sums = vec![GradSums::default(); c];
        k.grad_sums(&self.x, &self.dy, shape, &mean, &mut sums)
            .unwrap();
        let grads: Vec<InputGrad> = (0..c)
            .map(|ch| match mode {
                Mode::Train => InputGrad::batch(&norms[ch], sums[ch], shape.per_channel() as u64),
                Mode::Eval => InputGrad::frozen(&norms[ch]),
            })
            .collect();
        let mut dx = vec![T::default(); n];
        k.input_grad(&self.x, &self.dy, shape, &grads, &mut dx)
            .unwrap();
        let dw = (0..c).map(|ch| T::Param::from_f64(sums[ch].weight_grad(norms[ch].invstd)));
        let db = sums.iter().map(|s| T::Param::from_f64(s.bias_grad()));
        (y, rm, rv, dx, dw.collect(), db.collect())
    }
}

fn stages_are_the_module<T: Element>() {
    let mut rng = Rng::new(7);
    let shapes: [(&[usize], Layout); 5] = [
        (&[2, 3], Layout::ChannelsFirst),
        (&[16, 5, 9, 7], Layout::ChannelsFirst),
        (&[4, 3, 64, 70], Layout::ChannelsFirst),
        (&[6, 9, 5, 5], Layout::ChannelsLast),
        (&[32, 130, 4, 4], Layout::ChannelsLast),
    ];
    for (dims, layout) in shapes {
        let case = Case::<T>::new(dims, layout, &mut rng);
        for isa in Isa::available() {
            for par in [Par::Seq, Par::Rayon] {
                let k = Kernels::new(par).with_isa(isa).unwrap();
                for mode in [Mode::Train, Mode::Eval] {
                    let what = format!("{} {dims:?} {layout:?} {isa:?} {par:?} {mode:?}", T::NAME);
                    assert!(
                        case.stage_step(k, mode) == case.module_step(k, mode),
                        "{what}"
                    );
                }
            }
        }
    }
}

#[test]
fn composed_stages_give_the_bits_of_the_module() {
    stages_are_the_module::<f32>();
    stages_are_the_module::<f64>();
    stages_are_the_module::<bf16>();
    stages_are_the_module::<f16>();
}

/// The moments of `x` (channels-first, `dims`) split along the batch after the samples in
/// `cuts`: one [`Moments`] per piece and channel.
fn pieces(x: &[f64], dims: &[usize], cuts: &[usize]) -> Vec<Vec<Moments>> {
    let per_sample: usize = dims[1..].iter().product();
    let bounds: Vec<usize> = [0].iter().chain(cuts).chain([&dims[0]]).copied().collect();
    let k = Kernels::default();
    bounds
        .windows(2)
        .map(|w| {
            let mut d = dims.to_vec();
            d[0] = w[1] - w[0];
            let shape = Shape::new(&d, Layout::ChannelsFirst).unwrap();
            let mut m = vec![Moments::EMPTY; dims[1]];
            k.moments(&x[w[0] * per_sample..w[1] * per_sample], &shape, &mut m)
                .unwrap();
            m
        })
        .collect()
}

fn merge_all(parts: &[Vec<Moments>]) -> Vec<Moments> {
    let c = parts[0].len();
    (0..c)
        .map(|ch| parts.iter().fold(Moments::EMPTY, |acc, p| acc.merge(p[ch])))
        .collect()
}

#[test]
fn moments_of_any_split_merge_to_the_whole_batch() {
    let mut rng = Rng::new(11);
    let dims = [37, 3, 5, 6];
    // A large offset: the merge must not lose the spread to it.
    let x = rng.normals(dims.iter().product(), 1e4, 1.0);
    let whole = &pieces(&x, &dims, &[])[0];
    for _ in 0..50 {
        let ranks = 2 + (rng.next_u64() % 6) as usize;
        // Cuts may repeat or sit at either end: empty pieces (ranks without a sample) too.
        let mut cuts: Vec<usize> = (1..ranks).map(|_| (rng.next_u64() % 38) as usize).collect();
        cuts.sort_unstable();
        let parts = pieces(&x, &dims, &cuts);
        // In rank order, and as a tree of pairs (another grouping of the same pieces).
        let in_order = merge_all(&parts);
        let tree = parts.chunks(2).map(merge_all).collect::<Vec<_>>();
        let tree = merge_all(&tree);
        for merged in [&in_order, &tree] {
            for (m, w) in merged.iter().zip(whole) {
                assert_eq!(m.count, w.count);
                // The mean to a few f64 roundings of 1e4. M2 to the bound of the shifted
                // sums (`stats.rs`: about n roundings, relative), which also covers the merge:
                // each piece's mean is off by a rounding of 1e4, and Chan's update multiplies
                // the difference of two means by delta * n_a n_b / n.
                let m2_tol = w.count as f64 * f64::EPSILON * w.m2;
                assert!(
                    (m.mean - w.mean).abs() <= 8.0 * f64::EPSILON * w.mean.abs(),
                    "{cuts:?}"
                );
                assert!(
                    (m.m2 - w.m2).abs() <= m2_tol,
                    "{cuts:?}: {} vs {}",
                    m.m2,
                    w.m2
                );
            }
        }
        // The same pieces merged in the same order: the same bits.
        assert_eq!(merge_all(&parts), in_order);
    }
}

/// A training step of a batch split over ranks, as SyncBatchNorm runs it: per-rank moments,
/// merged in rank order; per-rank gradient sums, added; the global count. Returns the loss
/// `sum(y * probe)` and dx of the whole batch (ranks' pieces concatenated).
fn split_step(x: &[f64], dims: &[usize], cuts: &[usize], probe: &[f64]) -> (f64, Vec<f64>) {
    let (c, per_sample) = (dims[1], dims[1..].iter().product::<usize>());
    let weight: Vec<f64> = (0..c).map(|ch| 0.5 + ch as f64).collect();
    let bias: Vec<f64> = (0..c).map(|ch| 0.25 * ch as f64).collect();
    let bounds: Vec<usize> = [0].iter().chain(cuts).chain([&dims[0]]).copied().collect();
    let ranks: Vec<(std::ops::Range<usize>, Shape)> = bounds
        .windows(2)
        .map(|w| {
            let mut d = dims.to_vec();
            d[0] = w[1] - w[0];
            let range = w[0] * per_sample..w[1] * per_sample;
            (range, Shape::new(&d, Layout::ChannelsFirst).unwrap())
        })
        .collect();
    let k = Kernels::default();
    let moments = merge_all(&pieces(x, dims, cuts));
    let norms: Vec<Normalization> = (0..c)
        .map(|ch| Normalization::from_moments(&moments[ch], 1e-5, weight[ch], bias[ch]))
        .collect();
    let mean: Vec<f64> = norms.iter().map(|n| n.mean).collect();
    let mut y = vec![0.0; x.len()];
    let mut sums = vec![GradSums::default(); c];
    for (range, shape) in &ranks {
        k.normalize(&x[range.clone()], shape, &norms, &mut y[range.clone()])
            .unwrap();
        let mut rank_sums = vec![GradSums::default(); c];
        k.grad_sums(
            &x[range.clone()],
            &probe[range.clone()],
            shape,
            &mean,
            &mut rank_sums,
        )
        .unwrap();
        for (s, r) in sums.iter_mut().zip(&rank_sums) {
            *s += *r;
        }
    }
    let count = moments[0].count;
    let grads: Vec<InputGrad> = (0..c)
        .map(|ch| InputGrad::batch(&norms[ch], sums[ch], count))
        .collect();
    let mut dx = vec![0.0; x.len()];
    for (range, shape) in &ranks {
        let r = range.clone();
        k.input_grad(&x[r.clone()], &probe[r.clone()], shape, &grads, &mut dx[r])
            .unwrap();
    }
    let loss = y.iter().zip(probe).map(|(a, b)| a * b).sum();
    (loss, dx)
}

#[test]
fn a_batch_split_over_ranks_has_the_whole_batch_gradient() {
    let mut rng = Rng::new(13);
    let dims = [7, 2, 3, 2];
    let n: usize = dims.iter().product();
    let x = rng.normals(n, 1.0, 2.0);
    let probe = rng.normals(n, 0.0, 1.0);
    let (_, whole) = split_step(&x, &dims, &[], &probe);
    // Even, single-sample and empty ranks.
    for cuts in [&[3][..], &[1, 2, 6], &[6], &[0, 3, 3, 7]] {
        let (_, dx) = split_step(&x, &dims, cuts, &probe);
        for (a, b) in dx.iter().zip(&whole) {
            // Sums in other orders: a few f64 roundings of terms of order 1.
            assert!((a - b).abs() <= 1e-13, "{cuts:?}: {a} vs {b}");
        }
        // Central differences of the loss, h = 1e-5: truncation error h^2 * f''' (order 1e-10
        // here), rounding 1e-16 / h.
        let h = 1e-5;
        for i in 0..n {
            let (mut up, mut down) = (x.clone(), x.clone());
            up[i] += h;
            down[i] -= h;
            let numeric = (split_step(&up, &dims, cuts, &probe).0
                - split_step(&down, &dims, cuts, &probe).0)
                / (2.0 * h);
            assert!(
                (numeric - dx[i]).abs() <= 1e-7 * (1.0 + numeric.abs()),
                "{cuts:?} [{i}]: {numeric} vs {}",
                dx[i]
            );
        }
    }
}

#[test]
fn stages_reject_bad_lengths_and_tiny_counts() {
    let k = Kernels::default();
    let shape = Shape::new(&[4, 2], Layout::ChannelsFirst).unwrap();
    let x = [0.0f32; 8];
    let err = k.moments(&x, &shape, &mut [Moments::EMPTY; 3]).unwrap_err();
    assert_eq!(
        err,
        BatchNormError::LengthMismatch {
            buffer: "moments",
            expected: 2,
            got: 3
        }
    );
    let err = k
        .normalize(&x[..7], &shape, &[], &mut [0.0; 8])
        .unwrap_err();
    assert_eq!(
        err,
        BatchNormError::LengthMismatch {
            buffer: "x",
            expected: 8,
            got: 7
        }
    );
    let one = Moments {
        count: 1,
        mean: 0.0,
        m2: 0.0,
    };
    let (mut rm, mut rv) = ([0.0f32; 2], [1.0f32; 2]);
    let err = update_running_stats(&mut rm, &mut rv, &[Moments { count: 4, ..one }, one], 0.1);
    assert_eq!(
        err.unwrap_err(),
        BatchNormError::TooFewMoments {
            channel: 1,
            count: 1
        }
    );
    assert_eq!((rm, rv), ([0.0; 2], [1.0; 2]), "nothing modified on error");
}

/// The fused forms, `relu(bn(x))` and `relu(bn(x) + r)`: the module's fused calls give the bits
/// of the stages composed (`normalize_relu`, `normalize_add_relu`, `relu_grad`, then the plain
/// backward stages), the ReLU form the bits of a ReLU applied to the plain output, and
/// `relu(bn(x) + r)` is within the exactness target of the f64 reference, for every storage
/// type, layout, path and threading.
mod fused {
    use super::*;
    use common::reference::RefBn;
    use common::{max_err_vs_largest, max_rel_err, max_ulp_err, widen};

    /// y, dx, dresidual, dweight, dbias.
    type FusedOutputs<T> = (
        Vec<T>,
        Vec<T>,
        Vec<T>,
        Vec<<T as Element>::Param>,
        Vec<<T as Element>::Param>,
    );

    fn module_fused<T: Element>(
        case: &Case<T>,
        r: Option<&[T]>,
        k: Kernels,
        mode: Mode,
    ) -> FusedOutputs<T> {
        let mut bn = case.module(k);
        let (shape, n) = (&case.shape, case.shape.len());
        let (mut y, mut dx, mut dr) = (
            vec![T::default(); n],
            vec![T::default(); n],
            vec![T::default(); n],
        );
        let grads = match r {
            Some(r) => {
                // The reusing forms, `saved` first filled by a call with the residual negated:
                // the mask it keeps, reused without clearing, gives the same bits.
                let mut saved = Saved::default();
                let other: Vec<T> = r.iter().map(|v| T::from_f64(-v.to_f64())).collect();
                bn.forward_add_relu_into(&case.x, &other, shape, mode, &mut y, &mut saved)
                    .unwrap();
                bn.forward_add_relu_into(&case.x, r, shape, mode, &mut y, &mut saved)
                    .unwrap();
                let mut grads = Default::default();
                let (x, dy) = (&case.x, &case.dy);
                bn.backward_add_relu_into(x, &y, dy, shape, &saved, &mut dx, &mut dr, &mut grads)
                    .unwrap();
                grads
            }
            None => {
                let saved = bn.forward_relu(&case.x, shape, mode, &mut y).unwrap();
                let mut grads = Default::default();
                // The reusing form, twice: warm scratch gives the same bits.
                for _ in 0..2 {
                    bn.backward_relu_into(
                        &case.x, &y, &case.dy, shape, &saved, &mut dx, &mut grads,
                    )
                    .unwrap();
                }
                grads
            }
        };
        (y, dx, dr, grads.weight, grads.bias)
    }

    fn stage_fused<T: Element>(
        case: &Case<T>,
        r: Option<&[T]>,
        k: Kernels,
        mode: Mode,
    ) -> FusedOutputs<T> {
        let (shape, c, n) = (&case.shape, case.shape.channels(), case.shape.len());
        let eps = BatchNormConfig::default().eps;
        let (w, b) = (
            |ch: usize| case.weight[ch].to_f64(),
            |ch: usize| case.bias[ch].to_f64(),
        );
        let norms: Vec<Normalization> = (0..c)
            .map(|ch| {
                if mode == Mode::Train {
                    let mut m = vec![Moments::EMPTY; c];
                    k.moments(&case.x, shape, &mut m).unwrap();
                    Normalization::from_moments(&m[ch], eps, w(ch), b(ch))
                } else {
                    let (m, v) = (
                        case.running_mean[ch].to_f64(),
                        case.running_var[ch].to_f64(),
                    );
                    Normalization::from_mean_var(m, v, eps, w(ch), b(ch))
                }
            })
            .collect();
        let mut y = vec![T::default(); n];
        match r {
            Some(r) => k
                .normalize_add_relu(&case.x, r, shape, &norms, &mut y)
                .unwrap(),
            None => k.normalize_relu(&case.x, shape, &norms, &mut y).unwrap(),
        }
        let mut masked = vec![T::default(); n];
        k.relu_grad(&y, &case.dy, shape, &mut masked).unwrap();
        let mean: Vec<f64> = norms.iter().map(|g| g.mean).collect();
        let mut sums = vec![GradSums::default(); c];
        k.grad_sums(&case.x, &masked, shape, &mean, &mut sums)
            .unwrap();
        let grads: Vec<InputGrad> = (0..c)
            .map(|ch| match mode {
                Mode::Train => InputGrad::batch(&norms[ch], sums[ch], shape.per_channel() as u64),
                Mode::Eval => InputGrad::frozen(&norms[ch]),
            })
            .collect();
        let mut dx = vec![T::default(); n];
        k.input_grad(&case.x, &masked, shape, &grads, &mut dx)
            .unwrap();
        let dw = (0..c).map(|ch| T::Param::from_f64(sums[ch].weight_grad(norms[ch].invstd)));
        let db = sums.iter().map(|s| T::Param::from_f64(s.bias_grad()));
        let dr = if r.is_some() {
            masked
        } else {
            vec![T::default(); n]
        };
        (y, dx, dr, dw.collect(), db.collect())
    }

    /// Exactness targets against the f64 reference: f32 within 1e-5 of `1 + |y|` (about two
    /// f32 roundings of order-1 terms happen: bn(x), then the residual's addition), gradients
    /// within 1e-5 of the largest element; 16-bit y and dx correctly rounded (the sum is formed
    /// in f64 and rounded once, see `mixed_precision.rs` for the 0.5 ulp bound); f64 within
    /// 1e-12 (a few f64 roundings of order-1 terms).
    fn check_against_reference<T: Element>(
        case: &Case<T>,
        r: &[T],
        out: &FusedOutputs<T>,
        mode: Mode,
        what: &str,
    ) {
        let (dims, layout) = (case.shape.dims(), case.shape.layout());
        let c = dims[1];
        let mut reference = RefBn::new(c, 1e-5, Some(0.1), true);
        reference.weight = widen(&case.weight);
        reference.bias = widen(&case.bias);
        reference.running_mean = widen(&case.running_mean);
        reference.running_var = widen(&case.running_var);
        let (x64, r64) = (widen(&case.x), widen(r));
        let bn = reference.forward(&x64, dims, layout, mode == Mode::Train);
        let y_ref: Vec<f64> =
            bn.y.iter()
                .zip(&r64)
                .map(|(a, b)| (a + b).max(0.0))
                .collect();
        // The mask of the stored y (y > 0): where rounding takes a tiny positive value to 0
        // the gradient stops too, as it does in PyTorch, whose ReLU backward reads its output.
        let dr: Vec<f64> = widen(&out.0)
            .iter()
            .zip(widen(&case.dy))
            .map(|(&y, d)| if y > 0.0 { d } else { 0.0 })
            .collect();
        if r.iter().any(|v| v.to_f64() != 0.0) {
            assert_eq!(widen(&out.2), dr, "{what}: dresidual");
        }
        let (dx_ref, dw_ref, db_ref) = reference.backward(&x64, &dr, dims, layout, &bn);
        let (y, dx) = (&out.0, &out.1);
        match T::NAME {
            "bf16" | "f16" => {
                let err = max_ulp_err(y, &y_ref);
                assert!(err <= 0.5, "{what}: y {err} ulp");
                let err = max_ulp_err(dx, &dx_ref);
                assert!(err <= 0.5, "{what}: dx {err} ulp");
            }
            name => {
                let tol = if name == "f32" { 1e-5 } else { 1e-12 };
                let err = max_rel_err(&widen(y), &y_ref);
                assert!(err <= tol, "{what}: y {err:e}");
                let err = max_err_vs_largest(&widen(dx), &dx_ref);
                assert!(err <= tol, "{what}: dx {err:e}");
            }
        }
        // Parameter gradients: sums in f64, rounded once to f32 (or f64).
        let tol = if T::NAME == "f64" { 1e-12 } else { 1e-6 };
        let err = max_rel_err(&widen(&out.3), &dw_ref).max(max_rel_err(&widen(&out.4), &db_ref));
        assert!(err <= tol, "{what}: dweight, dbias {err:e}");
    }

    fn fused_forms<T: Element>() {
        let mut rng = Rng::new(21);
        let shapes: [(&[usize], Layout); 5] = [
            (&[5, 3], Layout::ChannelsFirst),
            (&[16, 5, 9, 7], Layout::ChannelsFirst),
            (&[6, 9, 5, 5], Layout::ChannelsLast),
            (&[32, 130, 4, 4], Layout::ChannelsLast),
            // Rows of 96 positions: reduced 64 columns, then 16 and 16, at a time.
            (&[5, 48, 3, 3], Layout::ChannelsLast),
        ];
        for (dims, layout) in shapes {
            let case = Case::<T>::new(dims, layout, &mut rng);
            // x has mean 3 and spread 2 around running means near 3: about half the
            // pre-activations are negative.
            let r: Vec<T> = narrow(&rng.normals(case.shape.len(), 0.0, 1.0));
            for isa in Isa::available() {
                for par in [Par::Seq, Par::Rayon] {
                    let k = Kernels::new(par).with_isa(isa).unwrap();
                    for mode in [Mode::Train, Mode::Eval] {
                        let what =
                            format!("{} {dims:?} {layout:?} {isa:?} {par:?} {mode:?}", T::NAME);
                        let relu = module_fused(&case, None, k, mode);
                        assert!(
                            relu == stage_fused(&case, None, k, mode),
                            "{what}: relu stages"
                        );
                        let (plain, ..) = case.module_step(k, mode);
                        let relu_of_plain: Vec<T> = plain
                            .iter()
                            .map(|v| if v.to_f64() <= 0.0 { T::default() } else { *v })
                            .collect();
                        assert!(relu.0 == relu_of_plain, "{what}: relu of the plain output");
                        let zeros = vec![T::default(); case.shape.len()];
                        check_against_reference(&case, &zeros, &relu, mode, &what);

                        let add = module_fused(&case, Some(&r), k, mode);
                        assert!(
                            add == stage_fused(&case, Some(&r), k, mode),
                            "{what}: add stages"
                        );
                        check_against_reference(&case, &r, &add, mode, &what);
                    }
                }
            }
        }
    }

    #[test]
    fn fused_forms_are_the_stages_and_exact() {
        fused_forms::<f32>();
        fused_forms::<f64>();
        fused_forms::<bf16>();
        fused_forms::<f16>();
    }

    /// A channel whose map is flat (weight 0) or not finite (a NaN input) has no gate on x: the
    /// ReLU's backward then reads y, and gives the bits of the plain backward of dy masked by
    /// y > 0 all the same, on every path and both layouts.
    #[test]
    fn relu_backward_without_a_gate_masks_by_y() {
        let mut rng = Rng::new(5);
        for layout in [Layout::ChannelsFirst, Layout::ChannelsLast] {
            let shape = Shape::new(&[16, 3, 5], layout).unwrap();
            let n = shape.len();
            for flaw in ["zero weight", "nan input"] {
                let mut x: Vec<f32> = narrow(&rng.normals(n, 1.0, 2.0));
                let dy: Vec<f32> = narrow(&rng.normals(n, 0.0, 1.0));
                let mut bn = BatchNorm::<f32>::new(3, BatchNormConfig::default()).unwrap();
                bn.bias = vec![-0.5, 0.0, 0.5];
                match flaw {
                    "zero weight" => bn.weight[1] = 0.0,
                    _ => x[7] = f32::NAN,
                }
                for isa in Isa::available() {
                    for par in [Par::Seq, Par::Rayon] {
                        let what = format!("{layout:?} {flaw} {isa:?} {par:?}");
                        let mut bn = bn.clone();
                        bn.set_isa(isa).unwrap();
                        bn.set_par(par);
                        let mut y = vec![0.0f32; n];
                        let saved = bn.forward_relu(&x, &shape, Mode::Train, &mut y).unwrap();
                        let (mut dx, mut dx_masked) = (vec![0.0f32; n], vec![0.0f32; n]);
                        let grads = bn
                            .backward_relu(&x, &y, &dy, &shape, &saved, &mut dx)
                            .unwrap();
                        let masked: Vec<f32> = y
                            .iter()
                            .zip(&dy)
                            .map(|(&y, &d)| if y <= 0.0 { 0.0 } else { d }) // NaN passes
                            .collect();
                        let plain = bn
                            .backward(&x, &masked, &shape, &saved, &mut dx_masked)
                            .unwrap();
                        let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                        assert!(bits(&dx) == bits(&dx_masked), "{what}: dx");
                        let bits_of = |g: &batchnorm::Grads<f32>| (bits(&g.weight), bits(&g.bias));
                        assert!(bits_of(&grads) == bits_of(&plain), "{what}: grads");
                        assert!(y.iter().any(|v| v.is_nan()) == (flaw == "nan input"));
                    }
                }
            }
        }
    }

    /// `relu_grad` passes dy exactly where `y > 0` or y is NaN, and gives +0 elsewhere (-0,
    /// +0, negative values, -inf), whatever the value's size (subnormals, infinities), for
    /// every storage type, path and threading, at lengths that end mid-step and mid-pair
    /// (`streaming.rs` checks the same pass with its output streamed).
    fn relu_grad_masks<T: Element>() {
        let specials = [
            0.0,
            -0.0,
            1.0,
            -1.0,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            -f64::NAN,
            1e-40,
            -1e-40,
            1e-300,
            -1e-300,
            65504.0,
            3e38,
        ];
        let mut rng = Rng::new(9);
        for n in [1usize, 2, 15, 16, 17, 257, 4099] {
            let shape = Shape::new(&[n, 1], Layout::ChannelsFirst).unwrap();
            let y: Vec<T> = (0..n)
                .map(|i| T::from_f64(specials[(i + n) % specials.len()]))
                .collect();
            let dy: Vec<T> = narrow(&rng.normals(n, 0.0, 1.0));
            let want: Vec<T> = y
                .iter()
                .zip(&dy)
                .map(|(&y, &d)| if y.to_f64() <= 0.0 { T::default() } else { d })
                .collect();
            for isa in Isa::available() {
                for par in [Par::Seq, Par::Rayon] {
                    let k = Kernels::new(par).with_isa(isa).unwrap();
                    let mut out = vec![T::from_f64(7.0); n];
                    k.relu_grad(&y, &dy, &shape, &mut out).unwrap();
                    let what = format!("{} n = {n} {isa:?} {par:?}", T::NAME);
                    // Compared as bits: +0, not -0, where the gradient stops.
                    let bits = |v: &[T]| v.iter().map(|v| v.to_f64().to_bits()).collect::<Vec<_>>();
                    assert!(bits(&out) == bits(&want), "{what}");
                }
            }
        }
    }

    #[test]
    fn relu_grad_passes_dy_where_y_is_positive_or_nan() {
        relu_grad_masks::<f32>();
        relu_grad_masks::<f64>();
        relu_grad_masks::<bf16>();
        relu_grad_masks::<f16>();
    }

    #[test]
    fn fused_calls_report_bad_lengths_and_write_nothing() {
        let shape = Shape::new(&[4, 2], Layout::ChannelsFirst).unwrap();
        let mut bn = BatchNorm::<f32>::new(2, BatchNormConfig::default()).unwrap();
        let x = [1.0f32, 2.0, 3.0, 5.0, 2.0, 1.0, 0.0, 4.0];
        let (mut y, mut dx, mut dr) = ([0.0f32; 8], [7.0f32; 8], [7.0f32; 8]);
        let short = BatchNormError::LengthMismatch {
            buffer: "residual",
            expected: 8,
            got: 7,
        };
        let before = bn.clone();
        assert_eq!(
            bn.forward_add_relu(&x, &x[..7], &shape, Mode::Train, &mut y),
            Err(short.clone())
        );
        assert!(
            bn == before && y == [0.0; 8],
            "a failed call modifies nothing"
        );
        let k = Kernels::default();
        let norms = [Normalization::from_mean_var(0.0, 1.0, 1e-5, 1.0, 0.0); 2];
        assert_eq!(
            k.normalize_add_relu(&x, &x[..7], &shape, &norms, &mut y),
            Err(short)
        );
        let saved = bn
            .forward_add_relu(&x, &x, &shape, Mode::Train, &mut y)
            .unwrap();
        let mismatch = |buffer, got| BatchNormError::LengthMismatch {
            buffer,
            expected: 8,
            got,
        };
        assert_eq!(
            bn.backward_add_relu(&x, &y, &x, &shape, &saved, &mut dx, &mut dr[..3]),
            Err(mismatch("dresidual", 3))
        );
        assert_eq!(
            bn.backward_add_relu(&x, &y[..5], &x, &shape, &saved, &mut dx, &mut dr),
            Err(mismatch("y", 5))
        );
        assert_eq!(
            bn.backward_relu(&x, &y, &x[..6], &shape, &saved, &mut dx),
            Err(mismatch("dy", 6))
        );
        assert!(
            dx == [7.0; 8] && dr == [7.0; 8],
            "a failed call writes nothing"
        );
        assert_eq!(
            k.relu_grad(&y, &x, &shape, &mut dr[..2]),
            Err(mismatch("out", 2))
        );
        assert!(bn
            .backward_add_relu(&x, &y, &x, &shape, &saved, &mut dx, &mut dr)
            .is_ok());
    }
}
