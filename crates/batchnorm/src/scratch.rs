//! Per-thread scratch for the leaf kernels, so that warm calls allocate nothing.
//!
//! Every worker thread keeps one growing `f64` buffer. A kernel borrows a zeroed prefix of it for
//! the duration of one call; kernels never call each other while holding it, so the borrow is
//! never re-entered.

use std::cell::RefCell;

thread_local! {
    static SCRATCH: RefCell<Vec<f64>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on `len` zeroed `f64`s of this thread's scratch.
#[inline]
pub(crate) fn with_zeroed<R>(len: usize, f: impl FnOnce(&mut [f64]) -> R) -> R {
    SCRATCH.with(|cell| {
        let mut buf = cell.borrow_mut();
        if buf.len() < len {
            buf.resize(len, 0.0);
        }
        let s = &mut buf[..len];
        s.fill(0.0);
        f(s)
    })
}
