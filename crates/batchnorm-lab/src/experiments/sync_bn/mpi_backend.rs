//! Ranks as the processes of an MPI job (the `mpi` feature).

use std::sync::Arc;
use std::time::Instant;

use batchnorm_dist::{Collective, MpiComm};
use batchnorm_nn::NnError;

use super::{rank_main, Backend, Config, Outcome};
use crate::experiments::LabError;

/// Runs this process's rank of the job; rank 0 writes the outputs and returns the outcome.
pub(super) fn run(cfg: &Config) -> Result<Option<Outcome>, LabError> {
    let comm = MpiComm::init().map_err(NnError::from)?;
    cfg.check_global(comm.size())?;
    let start = Instant::now();
    // Setup may fail on one rank only (its output folder, its copy of the data): the ranks
    // agree on it before any exchange of training, so that none waits for a rank that left.
    let setup = (|| {
        if comm.rank() == 0 {
            crate::experiments::output::prepare_out(&cfg.out)?;
        }
        crate::experiments::data::load_mnist(&cfg.data)
    })();
    let mut failed = [f64::from(u8::from(setup.is_err()))];
    comm.all_reduce_sum_f64(&mut failed)
        .map_err(NnError::from)?;
    let (data, _) = setup?;
    if failed[0] > 0.0 {
        return Err(LabError::Setup(
            "another rank failed to set up (its error says why)",
        ));
    }
    let comm: Arc<dyn Collective> = Arc::new(comm);
    rank_main(&comm, Backend::Mpi, cfg, &data, start)
}
