//! SyncBatchNorm over MPI: run under `mpirun -np P` (any P; `cargo test --features mpi` runs it
//! as a group of one). Every rank runs the same checks as the in-process tests; a failed check
//! panics, which ends the job with an error.

mod common;

use batchnorm::{BatchNormConfig, Layout, Mode, Shape};
use batchnorm_dist::{Collective, DistError, MpiComm, SyncBatchNorm};
use common::{cases, sync_equals_single};

fn main() {
    let comm = MpiComm::init().expect("MPI initialises once");
    let (rank, p) = (comm.rank(), comm.size());
    let mut checks = 0;
    // Tolerances as in tests/local.rs.
    for case in cases(p) {
        sync_equals_single::<f32, _>(&comm, &case, 1e-6);
        sync_equals_single::<f64, _>(&comm, &case, 1e-12);
        checks += 2;
    }

    // One value per channel over all ranks: an error on every rank.
    let mut bn = SyncBatchNorm::<f32>::new(2, BatchNormConfig::default()).unwrap();
    let local = usize::from(rank == p - 1);
    let shape = Shape::new(&[local, 2], Layout::ChannelsLast).unwrap();
    let (x, mut y) = (vec![1.0; 2 * local], vec![0.0; 2 * local]);
    let err = bn.forward(&comm, &x, &shape, Mode::Train, &mut y);
    assert_eq!(err.unwrap_err(), DistError::TooFewValues { count: 1 });
    checks += 1;

    // A rank with a bad buffer: its own error there, PeerFailed elsewhere.
    if p > 1 {
        let shape = Shape::new(&[2, 2], Layout::ChannelsFirst).unwrap();
        let x = vec![rank as f32; 4];
        let mut y = vec![0.0; if rank == 1 { 3 } else { 4 }];
        let err = bn
            .forward(&comm, &x, &shape, Mode::Train, &mut y)
            .unwrap_err();
        if rank == 1 {
            assert!(matches!(err, DistError::BatchNorm(_)), "{err}");
        } else {
            assert_eq!(err, DistError::PeerFailed { rank: Some(1) });
        }
        checks += 1;
    }
    assert_eq!(
        bn.num_batches_tracked, 0,
        "failed calls leave the module unchanged"
    );
    println!("mpi: rank {rank} of {p}: {checks} checks passed");
}
