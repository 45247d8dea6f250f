//! Training steps allocate nothing in this crate: every workspace is allocated up front.
//!
//! A counting global allocator (this test binary only) counts allocations during steady-state
//! training steps. Only `matrixmultiply` allocates (its packing buffer, on every call); the
//! batch-normalization layers and the core kernels under them allocate nothing once warm. Both
//! facts are pinned, so any allocation added per step fails the test.

use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use batchnorm::BatchNormConfig;
use batchnorm_nn::layers::{BatchNorm, Layer, Linear, Mode, Sigmoid};
use batchnorm_nn::{Rng, Sequential, Sgd, SgdConfig, SoftmaxCrossEntropy};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: defers every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: AllocLayout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: AllocLayout) {
        // SAFETY: `ptr` came from `System.alloc` above with this `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: AllocLayout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract for `realloc` is passed on as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by `steps` training steps (after two warm-up steps), batch 60, on the
/// 784-100-100-10 sigmoid MLP with or without batch normalization.
fn allocations_per_run(bn: bool, steps: usize) -> usize {
    let mut rng = Rng::new(9);
    let mut layers: Vec<Box<dyn Layer<f32>>> = Vec::new();
    for (i, w) in [784usize, 100, 100, 10].windows(2).enumerate() {
        layers.push(Box::new(
            Linear::gaussian(w[0], w[1], 0.05, &mut rng).unwrap(),
        ));
        if i < 2 {
            if bn {
                layers.push(Box::new(
                    BatchNorm::new(&[w[1]], BatchNormConfig::default()).unwrap(),
                ));
            }
            layers.push(Box::new(Sigmoid::new(w[1]).unwrap()));
        }
    }
    let mut model = Sequential::new(layers, 60).unwrap();
    let mut sgd = Sgd::new(
        SgdConfig {
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 1e-4,
        },
        &mut model,
    )
    .unwrap();
    let ce = SoftmaxCrossEntropy::new(10).unwrap();
    let x: Vec<f32> = (0..60 * 784)
        .map(|i| ((i * 7919) % 255) as f32 / 255.0)
        .collect();
    let labels: Vec<u8> = (0..60).map(|i| (i % 10) as u8).collect();
    let mut step = |model: &mut Sequential<f32>| {
        model.input_mut(60).unwrap().copy_from_slice(&x);
        model.forward(60, Mode::Train).unwrap();
        let (out, grad) = model.output_and_grad(60).unwrap();
        ce.forward_backward(out, &labels, grad).unwrap();
        model.backward(60, false).unwrap();
        sgd.step(model).unwrap();
    };
    step(&mut model);
    step(&mut model);
    let before = ALLOCS.load(Ordering::Relaxed);
    for _ in 0..steps {
        step(&mut model);
    }
    ALLOCS.load(Ordering::Relaxed) - before
}

/// Allocations made by one call of the GEMM behind `Linear` (matrixmultiply packs its operands
/// into a buffer it allocates per call).
fn allocations_per_gemm(m: usize, k: usize, n: usize) -> usize {
    use batchnorm_nn::matmul::{gemm, MatRef};
    let a = vec![1.0f32; m * k];
    let b = vec![1.0f32; k * n];
    let mut c = vec![0.0f32; m * n];
    let before = ALLOCS.load(Ordering::Relaxed);
    gemm(
        1.0,
        MatRef::row_major(&a, m, k),
        MatRef::row_major(&b, k, n),
        0.0,
        &mut c,
    )
    .unwrap();
    ALLOCS.load(Ordering::Relaxed) - before
}

#[test]
fn training_steps_allocate_only_in_the_kernels() {
    // All in one test: the counter is global, and tests in one binary run on parallel threads.
    // One step of the 3-layer network makes 8 products: 3 forward, 3 weight gradients, 2 input
    // gradients (none for the first layer).
    let per_gemm = [
        (60, 784, 100),
        (100, 60, 784),
        (60, 100, 100),
        (60, 100, 10),
        (10, 60, 100),
    ]
    .map(|(m, k, n)| allocations_per_gemm(m, k, n));
    assert!(per_gemm.iter().all(|&a| a == per_gemm[0]), "{per_gemm:?}");
    let plain = allocations_per_run(false, 10);
    eprintln!(
        "GEMM: {} allocations per call; plain network: {} per step",
        per_gemm[0],
        plain / 10
    );
    assert_eq!(
        plain,
        10 * 8 * per_gemm[0],
        "allocations beyond the GEMM's packing buffers"
    );

    // Batch normalization (the layer and the core kernels under it) allocates nothing per step:
    // the layer reuses its `Saved` and `Grads` through `forward_into` / `backward_into`.
    let with_bn = allocations_per_run(true, 10) - 10 * 8 * per_gemm[0];
    assert_eq!(
        with_bn, 0,
        "batch normalization allocates in training steps"
    );
}
