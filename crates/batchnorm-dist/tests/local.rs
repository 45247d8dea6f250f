//! SyncBatchNorm and the collectives on in-process ranks (one thread per rank).

mod common;

use batchnorm::{BatchNormConfig, BatchNormError, Layout, Mode, Shape};
use batchnorm_dist::{local_group, Collective, CommError, DistError, LocalComm, SyncBatchNorm};
use common::{cases, sync_equals_single};

/// Runs `f` on each rank of a fresh group of `p`, one thread each; results in rank order.
fn on_ranks<R: Send>(p: usize, f: impl Fn(LocalComm) -> R + Sync) -> Vec<R> {
    std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = local_group(p)
            .into_iter()
            .map(|comm| s.spawn(move || f(comm)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

// Tolerances: both sides compute every result in f64 from the same values and round once to
// the storage type; the statistics differ only in the order of f64 merges (relative 1e-15), so
// an f32 result differs by at most one rounding (6e-8 relative) and an f64 one by a few units of
// 1e-16 times the condition of the step (the offset 100 over a spread of 3: about 1e2). The
// summed parameter gradients add P values each rounded to the storage type: P roundings.

#[test]
fn sync_equals_single_f32() {
    for p in 1..=4 {
        for case in cases(p) {
            on_ranks(p, |comm| sync_equals_single::<f32, _>(&comm, &case, 1e-6));
        }
    }
}

#[test]
fn sync_equals_single_f64() {
    for p in [2, 3] {
        for case in cases(p) {
            on_ranks(p, |comm| sync_equals_single::<f64, _>(&comm, &case, 1e-12));
        }
    }
}

fn shape(dims: &[usize]) -> Shape {
    Shape::new(dims, Layout::ChannelsFirst).unwrap()
}

/// Training forward of `n[rank]` samples of 2 channels on each rank.
fn train(comm: &LocalComm, n: &[usize]) -> Result<SyncBatchNorm<f32>, DistError> {
    let mut bn = SyncBatchNorm::<f32>::new(2, BatchNormConfig::default())?;
    let local = n[comm.rank()];
    let x = vec![1.0 + comm.rank() as f32; 2 * local];
    let mut y = vec![0.0; 2 * local];
    bn.forward(comm, &x, &shape(&[local, 2]), Mode::Train, &mut y)?;
    Ok(bn)
}

#[test]
fn a_global_count_below_two_fails_on_every_rank() {
    let results = on_ranks(3, |comm| train(&comm, &[0, 1, 0]).map(|_| ()));
    for r in results {
        assert_eq!(r, Err(DistError::TooFewValues { count: 1 }));
    }
    // Two values over the ranks are enough, even one per rank.
    let results = on_ranks(3, |comm| train(&comm, &[1, 0, 1]));
    for r in results {
        let bn = r.unwrap();
        // Values 1 and 3: unbiased variance 2.
        assert!((bn.running_var[0] - (0.9 + 0.1 * 2.0)).abs() < 1e-6);
    }
}

#[test]
fn a_rank_with_bad_input_makes_every_rank_fail() {
    let results = on_ranks(3, |comm| {
        let mut bn = SyncBatchNorm::<f32>::new(2, BatchNormConfig::default()).unwrap();
        let x = vec![1.0; 4];
        // Rank 1's output buffer is too short.
        let mut y = vec![0.0; if comm.rank() == 1 { 3 } else { 4 }];
        let r = bn.forward(&comm, &x, &shape(&[2, 2]), Mode::Train, &mut y);
        (r.map(|_| ()), bn.num_batches_tracked)
    });
    let length = BatchNormError::LengthMismatch {
        buffer: "y",
        expected: 4,
        got: 3,
    };
    assert_eq!(results[1], (Err(length.into()), 0));
    for rank in [0, 2] {
        assert_eq!(
            results[rank],
            (Err(DistError::PeerFailed { rank: Some(1) }), 0)
        );
    }

    // The same in backward: rank 2's dy is too long.
    let results = on_ranks(3, |comm| {
        let mut bn = SyncBatchNorm::<f32>::new(2, BatchNormConfig::default()).unwrap();
        let (x, mut y) = (vec![comm.rank() as f32; 4], vec![0.0; 4]);
        let s = shape(&[2, 2]);
        let saved = bn.forward(&comm, &x, &s, Mode::Train, &mut y).unwrap();
        let dy = vec![1.0; if comm.rank() == 2 { 5 } else { 4 }];
        bn.backward(&comm, &x, &dy, &s, &saved, &mut y).map(|_| ())
    });
    assert!(matches!(results[2], Err(DistError::BatchNorm(_))));
    for rank in [0, 1] {
        assert_eq!(results[rank], Err(DistError::PeerFailed { rank: None }));
    }
}

#[test]
fn a_rank_that_leaves_makes_the_others_fail_not_hang() {
    let results = on_ranks(3, |comm| {
        if comm.rank() == 2 {
            // Returns (dropping its communicator) without taking part.
            return Ok(());
        }
        train(&comm, &[2, 2, 2]).map(|_| ())
    });
    assert_eq!(results[2], Ok(()));
    for rank in [0, 1] {
        assert_eq!(
            results[rank],
            Err(DistError::Comm(CommError::PeerGone { rank: 2 }))
        );
    }
    // A rank that panics leaves the group as its communicator drops while unwinding.
    let results = on_ranks(2, |comm| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if comm.rank() == 0 {
                let _comm = comm;
                panic!("rank 0 fails");
            }
            train(&comm, &[2, 2]).map(|_| ())
        }))
    });
    assert!(results[0].is_err());
    assert_eq!(
        results[1].as_ref().unwrap(),
        &Err(DistError::Comm(CommError::PeerGone { rank: 0 }))
    );
}

#[test]
fn evaluation_does_not_communicate() {
    // Only rank 0 calls: no other rank is needed.
    let comms = local_group(2);
    let bn = SyncBatchNorm::<f64>::new(2, BatchNormConfig::default()).unwrap();
    let (x, mut y) = ([3.0, 4.0], [0.0; 2]);
    let saved = bn
        .forward_without_update(&comms[0], &x, &shape(&[1, 2]), Mode::Eval, &mut y)
        .unwrap();
    assert_eq!(saved.global_count(), 0);
    let invstd = 1.0 / (1.0 + 1e-5f64).sqrt();
    assert_eq!(y, [3.0 * invstd, 4.0 * invstd]);
}

#[test]
fn collectives_combine_in_rank_order() {
    let results = on_ranks(3, |comm| {
        let r = comm.rank() as f64;
        let mut all = [0.0; 6];
        comm.all_gather_f64(&[r, 10.0 * r], &mut all).unwrap();
        let mut all32 = [0.0f32; 3];
        comm.all_gather_f32(&[r as f32], &mut all32).unwrap();
        // f32 sums round after each addition, in rank order: (1 + 2^-24) + 2^-24 = 1, then
        // + 2^-23 is exact: 1 + 2^-23.
        let tiny = [1.0f32, 2f32.powi(-24), 2f32.powi(-23)][comm.rank()];
        let mut sum32 = [tiny];
        comm.all_reduce_sum_f32(&mut sum32).unwrap();
        let mut sum = [r, 1.0];
        comm.all_reduce_sum_f64(&mut sum).unwrap();
        let mut root = [r + 5.0; 2];
        comm.broadcast_f64(&mut root).unwrap();
        let mut root32 = [r as f32 + 7.0];
        comm.broadcast_f32(&mut root32).unwrap();
        (all, all32, sum32, sum, root, root32)
    });
    for r in results {
        assert_eq!(r.0, [0.0, 0.0, 1.0, 10.0, 2.0, 20.0]);
        assert_eq!(r.1, [0.0, 1.0, 2.0]);
        assert_eq!(r.2, [1.0 + 2f32.powi(-23)]);
        assert_eq!(r.3, [3.0, 3.0]);
        assert_eq!(r.4, [5.0, 5.0]);
        assert_eq!(r.5, [7.0]);
    }
}

#[test]
fn mismatched_calls_are_errors() {
    // Whichever rank arrives last, the error compares with rank 0's call.
    for rank0_late in [false, true] {
        mismatches(rank0_late);
    }
}

fn mismatches(rank0_late: bool) {
    let results = on_ranks(2, |comm| {
        let mut buf = vec![1.0; 2 + comm.rank()];
        let lengths = comm.all_reduce_sum_f64(&mut buf);
        if rank0_late && comm.rank() == 0 {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let ops = if comm.rank() == 0 {
            comm.broadcast_f64(&mut [0.0])
        } else {
            comm.all_reduce_sum_f64(&mut [0.0])
        };
        let mut short = [0.0; 3];
        let recv = comm.all_gather_f64(&[1.0, 2.0], &mut short);
        (lengths, ops, recv)
    });
    for (lengths, ops, recv) in results {
        assert_eq!(
            lengths,
            Err(CommError::Mismatch {
                rank: 1,
                op: "all_reduce_sum_f64",
                len: 3,
                op0: "all_reduce_sum_f64",
                len0: 2
            })
        );
        assert_eq!(
            ops,
            Err(CommError::Mismatch {
                rank: 1,
                op: "all_reduce_sum_f64",
                len: 1,
                op0: "broadcast_f64",
                len0: 1
            })
        );
        assert_eq!(
            recv,
            Err(CommError::LengthMismatch {
                buffer: "recv",
                expected: 4,
                got: 3
            })
        );
    }
}
