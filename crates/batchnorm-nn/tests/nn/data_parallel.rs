//! Data-parallel training on in-process ranks equals one process on the global batch.

use crate::dp_common;

use std::sync::Arc;

use batchnorm_dist::{local_group, Collective};
use dp_common::{max_rel_diff, run_rank, single};

/// `p` ranks (threads) on shards of the same batches; every rank's final state.
fn data_parallel(p: usize, global: usize, steps: usize, sync: bool) -> Vec<Vec<f64>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = local_group(p)
            .into_iter()
            .map(|comm| {
                let comm: Arc<dyn Collective> = Arc::new(comm);
                s.spawn(move || run_rank(comm, global, steps, sync))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn synchronised_data_parallel_training_is_single_process_training() {
    let steps = 8;
    // Even shards, uneven shards, and one sample per rank.
    for (p, global) in [(2, 8), (3, 7), (2, 4), (3, 3), (2, 2)] {
        let expected = single(global, steps);
        let ranks = data_parallel(p, global, steps, true);
        for (rank, got) in ranks.iter().enumerate() {
            // f64 sums in other orders, carried through 8 steps of a small network: a few
            // hundred roundings of 1e-16.
            let d = max_rel_diff(got, &expected);
            assert!(d <= 1e-12, "p {p}, rank {rank}: {d}");
            // Every rank holds the same bits.
            assert_eq!(got, &ranks[0]);
        }
    }
}

#[test]
fn per_rank_batch_norm_is_not() {
    // The check above can fail: per-rank statistics (what DDP does by default) train another
    // network.
    let (p, global, steps) = (2, 8, 8);
    let expected = single(global, steps);
    let ranks = data_parallel(p, global, steps, false);
    assert!(max_rel_diff(&ranks[0], &expected) > 1e-4);
}
