//! Data-parallel training over MPI equals one process on the global batch: run under
//! `mpirun -np P` (`cargo test --features mpi` runs it as a group of one).

mod dp_common;

use std::sync::Arc;

use batchnorm_dist::{Collective, MpiComm};
use dp_common::{max_rel_diff, run_rank, single};

fn main() {
    let comm: Arc<dyn Collective> = Arc::new(MpiComm::init().expect("MPI initialises once"));
    let (rank, p) = (comm.rank(), comm.size());
    let steps = 8;
    // Even shards, uneven shards, one sample per rank.
    for global in [2 * p, 2 * p + 1, p.max(2)] {
        let expected = single(global, steps);
        let got = run_rank(Arc::clone(&comm), global, steps, true);
        // As tests/nn/data_parallel.rs.
        let d = max_rel_diff(&got, &expected);
        assert!(d <= 1e-12, "rank {rank} of {p}, global batch {global}: {d}");
        let mut all = vec![0.0; got.len() * p];
        comm.all_gather_f64(&got, &mut all).unwrap();
        assert!(
            all.chunks_exact(got.len()).all(|r| r == got),
            "ranks differ"
        );
    }
    println!("mpi data-parallel: rank {rank} of {p}: synchronised training = single process");
}
