//! `batchnorm_candle::BatchNorm` against `candle_nn::BatchNorm` in one run, on the same tensors:
//! the training forward (`forward_t(x, true)` on a variable), the backward
//! (`(y * dy).sum_all().backward()`) and the whole step, median of several repetitions, and a
//! `c = a + b` of the same size as a memory yardstick.
//!
//! The same step with a one-pass op in place of the batch norm (`x.affine(1, 0)`) shows what
//! candle's graph costs around any op: the loss's own backward (the product's gradient for both
//! factors), a zeroed buffer and an addition per gradient, fresh output buffers (page faults).
//! What a batch norm adds to a step is its time above that floor. The last column is the
//! kernels alone (`batchnorm::BatchNorm` on preallocated buffers, no candle).
//!
//! ```text
//! cargo run --release -p batchnorm-candle --example bench [-- --reps 7]
//! ```

use std::time::{Duration, Instant};

use batchnorm_candle::BatchNormConfig;
use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::{ModuleT, VarBuilder, VarMap};

/// The shapes measured: a ResNet stage activation, and a small MLP's hidden layer.
const SHAPES: [(&str, &[usize]); 2] = [
    ("conv (64, 64, 56, 56)", &[64, 64, 56, 56]),
    ("mlp (256, 512)", &[256, 512]),
];

fn main() -> Result<()> {
    let reps = parse_reps()?;
    println!("machine: {}", machine());
    println!(
        "threads: rayon pool of {} (ours: Par::Rayon), f32, median of {reps} (conv) / {} (mlp) steps",
        rayon::current_num_threads(),
        reps * 10
    );
    println!();
    println!(
        "| shape | layout | pass | candle_nn (ms) | batchnorm-candle (ms) | speed-up \
         | one-pass op (ms) | speed-up above it | c = a + b (ms) | kernels alone (ms) |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for (name, dims) in SHAPES {
        let reps = if dims.len() == 2 { reps * 10 } else { reps };
        let layouts: &[bool] = if dims.len() > 2 {
            &[false, true]
        } else {
            &[false]
        };
        for &channels_last in layouts {
            let theirs = measure(dims, channels_last, reps, Impl::CandleNn)?;
            let ours = measure(dims, channels_last, reps, Impl::Ours)?;
            let floor = measure(dims, channels_last, reps, Impl::OnePass)?;
            let add = yardstick(dims, reps)?;
            let alone = kernels_alone(dims, channels_last, reps)?;
            let layout = if channels_last {
                "NHWC view"
            } else {
                "contiguous"
            };
            for (pass, a, b, f, k) in [
                (
                    "forward",
                    theirs.forward,
                    ours.forward,
                    floor.forward,
                    alone.forward,
                ),
                (
                    "backward",
                    theirs.backward,
                    ours.backward,
                    floor.backward,
                    alone.backward,
                ),
                ("step", theirs.step, ours.step, floor.step, alone.step),
            ] {
                let above = match (a.checked_sub(f), b.checked_sub(f)) {
                    (Some(a), Some(b)) if !b.is_zero() => {
                        format!("{:.1}x", a.as_secs_f64() / b.as_secs_f64())
                    }
                    _ => "-".to_string(),
                };
                println!(
                    "| {name} | {layout} | {pass} | {:.2} | {:.2} | {:.1}x | {:.2} | {above} | {:.2} | {:.2} |",
                    ms(a),
                    ms(b),
                    a.as_secs_f64() / b.as_secs_f64(),
                    ms(f),
                    ms(add),
                    ms(k)
                );
            }
        }
    }
    Ok(())
}

fn parse_reps() -> Result<usize> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => Ok(7),
        [flag, n] if flag == "--reps" => n
            .parse()
            .map_err(|_| candle_core::Error::msg(format!("--reps takes a count, got {n}"))),
        _ => candle_core::bail!("usage: bench [--reps N]"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Impl {
    CandleNn,
    Ours,
    /// `x.affine(1, 0)`: one pass forward, one backward.
    OnePass,
}

/// The floor: a one-pass op with a backward, in place of the batch norm.
#[derive(Debug)]
struct OnePass;

impl candle_core::Module for OnePass {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        xs.affine(1.0, 0.0)
    }
}

/// Medians of the passes.
#[derive(Debug)]
struct Times {
    forward: Duration,
    backward: Duration,
    step: Duration,
}

/// Times `reps` training steps of one implementation (after one warm-up step).
fn measure(dims: &[usize], channels_last: bool, reps: usize, which: Impl) -> Result<Times> {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let c = dims[1];
    let module: Box<dyn ModuleT> = match which {
        Impl::CandleNn => Box::new(candle_nn::batch_norm(c, 1e-5, vb.pp("bn"))?),
        Impl::Ours => Box::new(batchnorm_candle::batch_norm(
            c,
            BatchNormConfig::default(),
            vb.pp("bn"),
        )?),
        Impl::OnePass => Box::new(OnePass),
    };
    let values = Tensor::randn(0f32, 1.0, dims, &dev)?;
    let (leaf, x) = if channels_last {
        // An (N, H, W, C) variable seen as (N, C, H, W).
        let nhwc = Var::from_tensor(&values.permute((0, 2, 3, 1))?.contiguous()?)?;
        let x = nhwc.as_tensor().permute((0, 3, 1, 2))?;
        (nhwc, x)
    } else {
        let var = Var::from_tensor(&values)?;
        let x = var.as_tensor().clone();
        (var, x)
    };
    let dy = Tensor::randn(0f32, 1.0, dims, &dev)?;
    let (mut fwd, mut bwd, mut step) = (Vec::new(), Vec::new(), Vec::new());
    for rep in 0..=reps {
        let t0 = Instant::now();
        let y = module.forward_t(&x, true)?;
        let t1 = Instant::now();
        let grads = y.mul(&dy)?.sum_all()?.backward()?;
        let t2 = Instant::now();
        // Every gradient is there (and dropped outside the timing).
        if grads.get(leaf.as_tensor()).is_none() {
            candle_core::bail!("no gradient for x");
        }
        if rep > 0 {
            fwd.push(t1 - t0);
            bwd.push(t2 - t1);
            step.push(t2 - t0);
        }
    }
    Ok(Times {
        forward: median(fwd),
        backward: median(bwd),
        step: median(step),
    })
}

/// The kernels' training forward and backward on preallocated buffers, on rayon's pool.
fn kernels_alone(dims: &[usize], channels_last: bool, reps: usize) -> Result<Times> {
    use batchnorm::{BatchNorm, Grads, Layout, Mode, Saved, Shape};
    let kernel = |e: batchnorm::BatchNormError| candle_core::Error::wrap(e);
    let layout = if channels_last {
        Layout::ChannelsLast
    } else {
        Layout::ChannelsFirst
    };
    let shape = Shape::new(dims, layout).map_err(kernel)?;
    let flat = |t: Tensor| t.flatten_all()?.to_vec1::<f32>();
    let x = flat(Tensor::randn(0f32, 1.0, dims, &Device::Cpu)?)?;
    let dy = flat(Tensor::randn(0f32, 1.0, dims, &Device::Cpu)?)?;
    let (mut y, mut dx) = (vec![0f32; x.len()], vec![0f32; x.len()]);
    let mut bn = BatchNorm::<f32>::new(dims[1], BatchNormConfig::default()).map_err(kernel)?;
    bn.set_par(batchnorm::Par::Rayon);
    let (mut saved, mut grads) = (Saved::default(), Grads::default());
    let (mut fwd, mut bwd, mut step) = (Vec::new(), Vec::new(), Vec::new());
    for rep in 0..=reps {
        let t0 = Instant::now();
        bn.forward_into(&x, &shape, Mode::Train, &mut y, &mut saved)
            .map_err(kernel)?;
        let t1 = Instant::now();
        bn.backward_into(&x, &dy, &shape, &saved, &mut dx, &mut grads)
            .map_err(kernel)?;
        let t2 = Instant::now();
        if rep > 0 {
            fwd.push(t1 - t0);
            bwd.push(t2 - t1);
            step.push(t2 - t0);
        }
    }
    Ok(Times {
        forward: median(fwd),
        backward: median(bwd),
        step: median(step),
    })
}

/// `c = a + b` over tensors of `dims`: one pass reading two tensors and writing one.
fn yardstick(dims: &[usize], reps: usize) -> Result<Duration> {
    let a = Tensor::randn(0f32, 1.0, dims, &Device::Cpu)?;
    let b = Tensor::randn(0f32, 1.0, dims, &Device::Cpu)?;
    let mut times = Vec::new();
    for rep in 0..=reps {
        let t0 = Instant::now();
        let c = (&a + &b)?;
        let t = t0.elapsed();
        drop(c);
        if rep > 0 {
            times.push(t);
        }
    }
    Ok(median(times))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The CPU model and the instruction sets the kernels use.
fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string());
    format!(
        "{model}, {} logical CPUs, kernels: {:?}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        batchnorm::Isa::detect()
    )
}
