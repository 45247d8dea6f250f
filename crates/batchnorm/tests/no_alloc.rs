//! Warm calls of the reusing entry points allocate nothing: `forward_into` and `backward_into`
//! with caller-provided outputs, `Saved` and `Grads`, in every layout, sequential and threaded.

use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use batchnorm::{BatchNorm, BatchNormConfig, Grads, Layout, Mode, Par, Saved, Shape};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: defers every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: AllocLayout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: AllocLayout) {
        // SAFETY: `ptr` came from `System.alloc` with this `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: AllocLayout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract for `realloc` is passed on unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn steps(
    bn: &mut BatchNorm<f32>,
    shape: &Shape,
    bufs: &mut [Vec<f32>; 4],
    s: &mut Saved<f32>,
    g: &mut Grads<f32>,
) {
    let [x, y, dy, dx] = bufs;
    for mode in [Mode::Train, Mode::Eval] {
        bn.forward_into(x, shape, mode, y, s).unwrap();
        bn.backward_into(x, dy, shape, s, dx, g).unwrap();
    }
}

/// One test: the counter is global and tests in one binary run on parallel threads.
#[test]
fn warm_calls_allocate_nothing() {
    // Read once, before any kernel runs: the cuts below do not depend on this machine's L2.
    std::env::set_var("BATCHNORM_L2_BUDGET_BYTES", (512 * 1024).to_string());
    sequential_warm_calls_allocate_nothing();
    threaded_warm_calls_allocate_nothing_per_element();
}

/// Allocations during `rounds` warm rounds of [`steps`] (after one round to warm up) on
/// buffers of `dims` in `layout`, with `par`.
fn warm_allocations(dims: &[usize], layout: Layout, par: Par, rounds: usize) -> usize {
    let shape = Shape::new(dims, layout).unwrap();
    let n = shape.len();
    let mut bufs = [
        (0..n).map(|i| (i % 13) as f32).collect(),
        vec![0.0; n],
        (0..n).map(|i| (i % 7) as f32 - 3.0).collect(),
        vec![0.0; n],
    ];
    let mut bn = BatchNorm::<f32>::new(shape.channels(), BatchNormConfig::default()).unwrap();
    bn.set_par(par);
    let (mut saved, mut grads) = (Saved::default(), Grads::default());
    steps(&mut bn, &shape, &mut bufs, &mut saved, &mut grads);
    let before = ALLOCS.load(Ordering::Relaxed);
    for _ in 0..rounds {
        steps(&mut bn, &shape, &mut bufs, &mut saved, &mut grads);
    }
    ALLOCS.load(Ordering::Relaxed) - before
}

fn sequential_warm_calls_allocate_nothing() {
    let cases: [(&[usize], Layout); 5] = [
        (&[60, 100], Layout::ChannelsFirst),
        // 256 KiB channels: reduced and normalised channel by channel from L2 (x, and x with
        // dy, fit the 512 KiB budget).
        (&[64, 4, 32, 32], Layout::ChannelsFirst),
        (&[8, 16, 30, 30], Layout::ChannelsFirst),
        (&[4, 32, 7, 7], Layout::ChannelsFirst),
        (&[8, 3, 30, 30], Layout::ChannelsLast),
    ];
    for (dims, layout) in cases {
        let allocs = warm_allocations(dims, layout, Par::Seq, 3);
        assert_eq!(
            allocs, 0,
            "{dims:?} {layout:?}: {allocs} allocations in warm calls"
        );
    }
}

fn threaded_warm_calls_allocate_nothing_per_element() {
    // On rayon's pool the kernels themselves allocate nothing either; rayon's own bookkeeping
    // may, but not in proportion to the work. A call of about a million elements must stay
    // under a handful.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let cases: [(&[usize], Layout); 3] = [
        (&[16, 24, 56, 56], Layout::ChannelsLast),
        // Channels shared by the two threads under the 512 KiB budget: 768 KiB of x (training
        // forward), 512 KiB of x and as much dy (backward).
        (&[192, 4, 32, 32], Layout::ChannelsFirst),
        (&[128, 4, 32, 32], Layout::ChannelsFirst),
    ];
    for (dims, layout) in cases {
        let allocs = pool.install(|| warm_allocations(dims, layout, Par::Rayon, 1));
        assert!(
            allocs <= 8,
            "{dims:?}: {allocs} allocations in one warm threaded round"
        );
    }
}
