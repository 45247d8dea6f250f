//! Independent runs spread over worker threads, and what a finished run reports.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use super::LabError;
use crate::progress::NetProgress;

/// Closes a finished run's progress bar, showing its step count, final training loss and test
/// accuracy.
pub(crate) fn finish_bar(bar: &NetProgress, steps: usize, loss: f64, test_accuracy: f64) {
    bar.report(steps as u64, loss, f64::NAN, test_accuracy, false);
    bar.finish();
}

/// One line `[experiment i/total] text` on stderr for the finished run `i` (from 0) of
/// `total`, only where stderr is not a terminal (CI, a log file): on a terminal the progress
/// bars show the same.
pub(crate) fn log_run(experiment: &str, i: usize, total: usize, text: impl FnOnce() -> String) {
    if !std::io::stderr().is_terminal() {
        eprintln!("[{experiment} {}/{total}] {}", i + 1, text());
    }
}

/// Runs `f(i, &jobs[i])` for every job on up to `threads` threads (at least one), each thread
/// taking the next job not yet started, and returns the results in the jobs' order. Results do
/// not depend on the number of threads as long as each job is deterministic on its own.
///
/// Stops handing out jobs after the first error and returns the error of the lowest-numbered
/// failed job.
///
/// # Errors
/// The first job error, or [`LabError::Panicked`] naming the job whose thread panicked.
pub(crate) fn run_jobs<J, R, F>(jobs: &[J], threads: usize, f: F) -> Result<Vec<R>, LabError>
where
    J: Sync,
    R: Send,
    F: Fn(usize, &J) -> Result<R, LabError> + Sync,
{
    let next = AtomicUsize::new(0);
    let failed = std::sync::atomic::AtomicBool::new(false);
    let results: Mutex<Vec<Option<Result<R, LabError>>>> =
        Mutex::new((0..jobs.len()).map(|_| None).collect());
    let worker = || loop {
        if failed.load(Ordering::Relaxed) {
            break;
        }
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(job) = jobs.get(i) else { break };
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(i, job)))
            .unwrap_or_else(|_| Err(LabError::Panicked(format!("job {i}"))));
        if r.is_err() {
            failed.store(true, Ordering::Relaxed);
        }
        if let Ok(mut all) = results.lock() {
            all[i] = Some(r);
        }
    };
    let threads = threads.clamp(1, jobs.len().max(1));
    std::thread::scope(|s| {
        for _ in 1..threads {
            s.spawn(worker);
        }
        worker();
    });
    let all = results
        .into_inner()
        .map_err(|_| LabError::Panicked("a worker".into()))?;
    let mut out = Vec::with_capacity(all.len());
    let mut first_err = None;
    for r in all {
        match r {
            Some(Ok(v)) => out.push(v),
            Some(Err(e)) => {
                first_err.get_or_insert(e);
            }
            None => {}
        }
    }
    match first_err {
        Some(e) => Err(e),
        None if out.len() == jobs.len() => Ok(out),
        None => Err(LabError::Setup("a job was not run")),
    }
}

#[cfg(test)]
mod tests {
    use super::run_jobs;
    use crate::experiments::LabError;

    #[test]
    fn results_come_back_in_job_order_with_any_thread_count() {
        let jobs: Vec<u64> = (0..17).collect();
        for threads in [1, 2, 5] {
            let r = run_jobs(&jobs, threads, |i, &j| Ok((i as u64) * 100 + j * j)).unwrap();
            let want: Vec<u64> = (0..17).map(|i| i * 100 + i * i).collect();
            assert_eq!(r, want, "threads {threads}");
        }
    }

    #[test]
    fn an_error_or_a_panic_is_returned_not_swallowed() {
        let jobs = [1, 2, 3];
        let e = run_jobs(&jobs, 2, |_, &j| {
            if j == 2 {
                Err(LabError::Setup("two"))
            } else {
                Ok(j)
            }
        });
        assert!(matches!(e, Err(LabError::Setup("two"))));
        let p = run_jobs(
            &jobs,
            1,
            |_, &j| if j == 3 { panic!("boom") } else { Ok(j) },
        );
        assert!(matches!(p, Err(LabError::Panicked(_))));
    }
}
