//! The check shared by the in-process and the MPI tests: SyncBatchNorm on every rank's slice
//! of a batch equals one BatchNorm on the whole batch.

use batchnorm::{BatchNorm, BatchNormConfig, Element, Layout, Mode, Shape};
use batchnorm_dist::{Collective, SyncBatchNorm};

/// SplitMix64: the same numbers on every rank for the same seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1) times `scale`, plus `offset`.
    pub fn values(&mut self, n: usize, offset: f64, scale: f64) -> Vec<f64> {
        (0..n)
            .map(|_| offset + scale * ((self.next_u64() >> 11) as f64 / (1u64 << 52) as f64 - 1.0))
            .collect()
    }
}

/// Ways to split `n` samples over `p` ranks: even, an empty and a single-sample rank first,
/// everything on the last rank.
pub fn splits(p: usize, n: usize) -> Vec<Vec<usize>> {
    let mut even = vec![n / p; p];
    even[p - 1] += n % p;
    let mut all_last = vec![0; p];
    all_last[p - 1] = n;
    let mut out = vec![even, all_last];
    if p >= 3 {
        let mut ragged = vec![0, 1];
        let rest = n - 1;
        ragged.extend((2..p).map(|r| if r == p - 1 { rest - (p - 3) } else { 1 }));
        out.push(ragged);
    }
    out
}

/// One configuration of the comparison.
#[derive(Debug, Clone)]
pub struct Case {
    /// The global batch's dims (N first).
    pub dims: Vec<usize>,
    pub layout: Layout,
    /// Samples per rank, in rank order (sums to N).
    pub counts: Vec<usize>,
    pub config: BatchNormConfig,
    /// Training steps before one evaluation step.
    pub steps: usize,
    pub seed: u64,
}

fn round<T: Element>(v: &[f64]) -> Vec<T> {
    v.iter().map(|&x| T::from_f64(x)).collect()
}

fn widen<T: Element>(v: &[T]) -> Vec<f64> {
    v.iter().map(|&x| x.to_f64()).collect()
}

fn params<P: batchnorm::Float>(v: &[P]) -> Vec<f64> {
    v.iter().map(|&x| x.to_f64()).collect()
}

/// `|a - b|` at most `tol` times the largest `|b|` (or `tol` when that is below 1).
fn assert_close(what: &str, a: &[f64], b: &[f64], tol: f64) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = b.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * scale,
            "{what}[{i}]: {x} vs {y} (tolerance {tol} x {scale})"
        );
    }
}

/// Checks that every rank holds the same bits of `v`.
fn assert_same_on_every_rank<C: Collective>(comm: &C, what: &str, v: &[f64]) {
    let mut all = vec![0.0; v.len() * comm.size()];
    comm.all_gather_f64(v, &mut all).unwrap();
    for (rank, theirs) in all.chunks_exact(v.len().max(1)).enumerate() {
        let same = theirs
            .iter()
            .zip(v)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(
            same,
            "{what}: rank {rank} differs from rank {}",
            comm.rank()
        );
    }
}

/// Runs `case` on this rank of `comm` (size = `case.counts.len()`): `steps` training steps
/// (forward, backward) and one evaluation, each against one BatchNorm on the whole batch.
/// y, dx, the summed parameter gradients and the running statistics agree within `tol`
/// (relative to the largest value); the statistics and running statistics are bitwise the
/// same on every rank.
pub fn sync_equals_single<T: Element, C: Collective>(comm: &C, case: &Case, tol: f64) {
    assert_eq!(comm.size(), case.counts.len());
    let (n, c) = (case.dims[0], case.dims[1]);
    let per_sample: usize = case.dims[1..].iter().product();
    let first: usize = case.counts[..comm.rank()].iter().sum();
    let mine = first * per_sample..(first + case.counts[comm.rank()]) * per_sample;
    let mut local_dims = case.dims.clone();
    local_dims[0] = case.counts[comm.rank()];
    let whole = Shape::new(&case.dims, case.layout).unwrap();
    let local = Shape::new(&local_dims, case.layout).unwrap();

    let mut single = BatchNorm::<T>::new(c, case.config).unwrap();
    let mut sync = SyncBatchNorm::<T>::new(c, case.config).unwrap();
    // Non-trivial affine parameters, the same everywhere.
    let mut rng = Rng::new(case.seed);
    if case.config.affine {
        let w = rng.values(c, 1.0, 0.5);
        let b = rng.values(c, 0.0, 0.5);
        single.weight = w.iter().map(|&v| T::Param::from_f64(v)).collect();
        single.bias = b.iter().map(|&v| T::Param::from_f64(v)).collect();
        sync.weight.clone_from(&single.weight);
        sync.bias.clone_from(&single.bias);
    }
    for step in 0..=case.steps {
        let mode = if step < case.steps {
            Mode::Train
        } else {
            Mode::Eval
        };
        let what = |s: &str| format!("{case:?} step {step} {s}");
        // A large offset: the merge must keep the spread.
        let x: Vec<T> = round(&rng.values(n * per_sample, 100.0, 3.0));
        let dy: Vec<T> = round(&rng.values(n * per_sample, 0.0, 1.0));
        let (mut y, mut dx) = (
            vec![T::from_f64(0.0); x.len()],
            vec![T::from_f64(0.0); x.len()],
        );
        let saved = single.forward(&x, &whole, mode, &mut y).unwrap();
        let grads = single.backward(&x, &dy, &whole, &saved, &mut dx).unwrap();

        let (xs, dys) = (&x[mine.clone()], &dy[mine.clone()]);
        let (mut ys, mut dxs) = (
            vec![T::from_f64(0.0); xs.len()],
            vec![T::from_f64(0.0); xs.len()],
        );
        let ssaved = sync.forward(comm, xs, &local, mode, &mut ys).unwrap();
        let sgrads = sync
            .backward(comm, xs, dys, &local, &ssaved, &mut dxs)
            .unwrap();

        assert_close(&what("y"), &widen(&ys), &widen(&y[mine.clone()]), tol);
        assert_close(&what("dx"), &widen(&dxs), &widen(&dx[mine.clone()]), tol);
        let mut summed = [params(&sgrads.weight), params(&sgrads.bias)].concat();
        comm.all_reduce_sum_f64(&mut summed).unwrap();
        let expected = [params(&grads.weight), params(&grads.bias)].concat();
        assert_close(&what("summed grads"), &summed, &expected, tol);
        assert_close(
            &what("mean"),
            &params(&ssaved.mean),
            &params(&saved.mean),
            tol,
        );
        assert_close(
            &what("invstd"),
            &params(&ssaved.invstd),
            &params(&saved.invstd),
            tol,
        );
        assert_eq!(ssaved.renorm().len(), saved.renorm().len());
        for (a, b) in ssaved.renorm().iter().zip(saved.renorm()) {
            assert_close(&what("renorm"), &[a.r, a.d], &[b.r, b.d], tol);
        }
        let running = [params(&sync.running_mean), params(&sync.running_var)].concat();
        let expected = [params(&single.running_mean), params(&single.running_var)].concat();
        assert_close(&what("running stats"), &running, &expected, tol);
        assert_eq!(sync.num_batches_tracked, single.num_batches_tracked);
        let stats = [params(&ssaved.mean), params(&ssaved.invstd), running].concat();
        assert_same_on_every_rank(comm, &what("statistics"), &stats);
    }
}

/// The cases every backend runs for `p` ranks: both layouts, 2-D and 4-D, the splits of
/// [`splits`], momentum and cumulative averaging, with and without affine parameters, with
/// Batch Renormalization (r near 3 and d near 100 at the first step, then moving: unclipped).
pub fn cases(p: usize) -> Vec<Case> {
    let mut out = Vec::new();
    let configs = [
        BatchNormConfig::default(),
        BatchNormConfig {
            momentum: None,
            affine: false,
            ..BatchNormConfig::default()
        },
        BatchNormConfig {
            renorm: Some(batchnorm::Renorm::fixed(5.0, 150.0)),
            ..BatchNormConfig::default()
        },
    ];
    let mut seed = 1;
    for dims in [vec![7, 3], vec![9, 4, 3, 5]] {
        for layout in [Layout::ChannelsFirst, Layout::ChannelsLast] {
            for counts in splits(p, dims[0]) {
                for config in configs {
                    seed += 1;
                    out.push(Case {
                        dims: dims.clone(),
                        layout,
                        counts: counts.clone(),
                        config,
                        steps: 3,
                        seed,
                    });
                }
            }
        }
    }
    out
}
