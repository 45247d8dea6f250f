//! Compares `matrixmultiply` with `gemm` (single-threaded, f32) on the matrix products of the
//! fig1 network (784-100-100-100-10, batch 60) and of its 1,000-image evaluation chunks.
//!
//! Run: `cargo run --release -p batchnorm-nn --features bench-gemm --example gemm_bench`
//!
//! Each case is `C (m x n) = A (m x k) B (k x n)` with the strides the layers really use
//! (`W` stored out x in, so forward reads `W^T`; weight gradients read `dy^T`). Reported: the
//! median over repetitions of the time per product, and GFLOP/s = 2 m n k / time.

use std::hint::black_box;
use std::time::Instant;

/// One product shape with its operand strides (row stride, column stride).
struct Case {
    name: &'static str,
    m: usize,
    k: usize,
    n: usize,
    a: (usize, usize),
    b: (usize, usize),
}

fn cases() -> Vec<Case> {
    let (bs, i, h, o, ev) = (60, 784, 100, 10, 1000);
    vec![
        // x (60x784) . W1^T, W1 stored 100x784
        Case {
            name: "fwd L1   60x784 . W^T 784x100",
            m: bs,
            k: i,
            n: h,
            a: (i, 1),
            b: (1, i),
        },
        // dW1 = dy^T (100x60) . x (60x784)
        Case {
            name: "dW  L1  dy^T 100x60 . 60x784",
            m: h,
            k: bs,
            n: i,
            a: (1, h),
            b: (i, 1),
        },
        Case {
            name: "fwd L2   60x100 . W^T 100x100",
            m: bs,
            k: h,
            n: h,
            a: (h, 1),
            b: (1, h),
        },
        Case {
            name: "dW  L2  dy^T 100x60 . 60x100",
            m: h,
            k: bs,
            n: h,
            a: (1, h),
            b: (h, 1),
        },
        Case {
            name: "dx  L2   60x100 . W 100x100",
            m: bs,
            k: h,
            n: h,
            a: (h, 1),
            b: (h, 1),
        },
        Case {
            name: "fwd L4   60x100 . W^T 100x10",
            m: bs,
            k: h,
            n: o,
            a: (h, 1),
            b: (1, h),
        },
        Case {
            name: "eval L1 1000x784 . W^T 784x100",
            m: ev,
            k: i,
            n: h,
            a: (i, 1),
            b: (1, i),
        },
    ]
}

fn fill(len: usize, seed: u32) -> Vec<f32> {
    (0..len)
        .map(|j| {
            ((j as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / 16_777_216.0
                - 0.5
        })
        .collect()
}

fn extent(rows: usize, cols: usize, (rs, cs): (usize, usize)) -> usize {
    (rows - 1) * rs + (cols - 1) * cs + 1
}

/// Median seconds per call of `f`, over `reps` timed batches of `inner` calls.
fn time(mut f: impl FnMut(), inner: usize, reps: usize) -> f64 {
    for _ in 0..inner {
        f(); // warm up caches and any one-time dispatch
    }
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            for _ in 0..inner {
                f();
            }
            s.elapsed().as_secs_f64() / inner as f64
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[reps / 2]
}

fn main() {
    println!("| product (m x k . k x n) | matrixmultiply µs | GFLOP/s | gemm µs | GFLOP/s | gemm / mm time |");
    println!("|---|---:|---:|---:|---:|---:|");
    let (mut tot_mm, mut tot_g) = (0.0, 0.0);
    for c in cases() {
        let a = fill(extent(c.m, c.k, c.a), 1);
        let b = fill(extent(c.k, c.n, c.b), 2);
        let mut c1 = vec![0.0f32; c.m * c.n];
        let mut c2 = vec![0.0f32; c.m * c.n];
        let flops = 2.0 * (c.m * c.n * c.k) as f64;
        let inner = (2e8 / flops).ceil() as usize;
        let t_mm = time(
            || {
                // SAFETY: `a`, `b` cover the strided extents computed above and `c1` holds m x n
                // row-major; `c1` is a distinct allocation from `a` and `b`.
                unsafe {
                    matrixmultiply::sgemm(
                        c.m,
                        c.k,
                        c.n,
                        1.0,
                        a.as_ptr(),
                        c.a.0 as isize,
                        c.a.1 as isize,
                        b.as_ptr(),
                        c.b.0 as isize,
                        c.b.1 as isize,
                        0.0,
                        c1.as_mut_ptr(),
                        c.n as isize,
                        1,
                    )
                };
                black_box(&mut c1);
            },
            inner,
            15,
        );
        let t_g = time(
            || {
                // SAFETY: as above; gemm's argument order is (m, n, k, dst, dst_cs, dst_rs,
                // read_dst, lhs, lhs_cs, lhs_rs, rhs, rhs_cs, rhs_rs, alpha, beta, ...) and
                // computes dst = alpha dst + beta lhs rhs; read_dst = false ignores dst.
                unsafe {
                    gemm::gemm(
                        c.m,
                        c.n,
                        c.k,
                        c2.as_mut_ptr(),
                        1,
                        c.n as isize,
                        false,
                        a.as_ptr(),
                        c.a.1 as isize,
                        c.a.0 as isize,
                        b.as_ptr(),
                        c.b.1 as isize,
                        c.b.0 as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    )
                };
                black_box(&mut c2);
            },
            inner,
            15,
        );
        let max_diff = c1
            .iter()
            .zip(&c2)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        // Products of k values in [-0.5, 0.5): f32 sums differ in order only, |diff| ~ k * 1e-7.
        assert!(max_diff < 1e-3, "{}: results differ by {max_diff}", c.name);
        if !c.name.starts_with("eval") {
            tot_mm += t_mm;
            tot_g += t_g;
        }
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} |",
            c.name,
            t_mm * 1e6,
            flops / t_mm / 1e9,
            t_g * 1e6,
            flops / t_g / 1e9,
            t_g / t_mm
        );
    }
    println!(
        "\nsum of the six training-step shapes: matrixmultiply {:.1} µs, gemm {:.1} µs",
        tot_mm * 1e6,
        tot_g * 1e6
    );
}
