//! `bnlab bench`: times the BatchNorm kernels against a memory-traffic yardstick measured in the
//! same process, on the same buffers and threads.
//!
//! Forward passes read x and write y, so their yardstick is a copy of x into y; backward reads x
//! and dy and writes dx, so its yardstick is `c = a + b` over the same sizes. Samples of the
//! kernel and of its yardstick alternate, so both see the same machine noise; the report gives
//! medians and their ratio. Two more timings make the floor of any algorithm that must read its
//! inputs twice (training forward, backward: the statistics need every input before the first
//! output): reading the inputs once (a sum), then the yardstick's own pass written as the
//! kernels write large outputs, with non-temporal stores: `(read + streamed) / yardstick`.
//!
//! The fused forms (`forward_train_relu`, `forward_eval_relu`, `backward_relu`,
//! `forward_train_add_relu`, `backward_add_relu`) are timed against the yardstick and floor of
//! the plain operation they extend, in the same run, so that their ratio over the plain row is
//! what the fusion costs; their samples also alternate with the plain operation's, whose median
//! the row carries (`plain_ms`, `vs_plain` = fused / plain), so that this ratio sees the same
//! machine noise. Each backward follows an untimed call of its own training forward.
//!
//! By default the buffers stay in cache between calls, as far as they fit ("hot"). With `cold`,
//! every buffer is flushed from all cache levels before each timed call of the kernel and of the
//! yardstick: the regime of a tensor larger than the last-level cache, whatever the machine.
//! With `huge_pages`, every buffer (the kernel's and the yardsticks') is on transparent huge
//! pages ([`crate::huge_pages`]); by default they are on whatever pages the allocator gives.

use std::time::{Duration, Instant};

use anyhow::Context;
use batchnorm::{
    bf16, f16, BatchNorm, BatchNormConfig, BatchNormError, Element, Grads, Isa, Layout, Mode, Par,
    Saved, Shape,
};
use rayon::prelude::*;
use serde_json::json;

/// The shapes of the issue: ResNet-sized activations, a wide fully connected layer, and the
/// small MLP layer of `bnlab fig1` where the cost per call (not bandwidth) counts.
pub const DEFAULT_SHAPES: [&[usize]; 6] = [
    &[64, 64, 56, 56],
    &[32, 256, 14, 14],
    &[8, 3, 224, 224],
    &[256, 1024],
    &[128, 2048, 7, 7],
    &[60, 100],
];

/// The storage type of the tensors measured (parameters and statistics are `f32` for all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    /// 32-bit floats.
    F32,
    /// bfloat16.
    Bf16,
    /// IEEE half precision.
    F16,
}

impl Dtype {
    /// The name used on the command line and in the JSON (`"f32"`, `"bf16"`, `"f16"`).
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => f32::NAME,
            Dtype::Bf16 => bf16::NAME,
            Dtype::F16 => f16::NAME,
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::Bf16 | Dtype::F16 => 2,
        }
    }
}

impl std::str::FromStr for Dtype {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        [Dtype::F32, Dtype::Bf16, Dtype::F16]
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| anyhow::anyhow!("unknown dtype {s:?}: use f32, bf16 or f16"))
    }
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct Config {
    /// Logical shapes (N, C, spatial...).
    pub shapes: Vec<Vec<usize>>,
    /// Memory layouts (2-D shapes are measured once: both layouts are the same memory).
    pub layouts: Vec<Layout>,
    /// Thread counts; each gets its own rayon pool.
    pub threads: Vec<usize>,
    /// Storage types, each measured on every shape (in the same run, so their times compare).
    pub dtypes: Vec<Dtype>,
    /// Timed samples per measurement (the median is reported).
    pub samples: usize,
    /// Minimum duration of one sample: fast calls are repeated until a sample lasts this long
    /// (hot runs only; a cold sample is one call).
    pub min_sample: Duration,
    /// Flush every buffer from the caches before each timed call.
    pub cold: bool,
    /// Put every buffer on transparent huge pages (Linux).
    pub huge_pages: bool,
    /// The kernel path (default: the best this machine has).
    pub isa: Isa,
    /// The operations to measure (default: all of them, [`Op::ALL`]).
    pub ops: Vec<Op>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            shapes: DEFAULT_SHAPES.iter().map(|s| s.to_vec()).collect(),
            layouts: vec![Layout::ChannelsFirst, Layout::ChannelsLast],
            threads: vec![1, 2],
            dtypes: vec![Dtype::F32],
            samples: 21,
            min_sample: Duration::from_millis(2),
            cold: false,
            huge_pages: false,
            isa: Isa::detect(),
            ops: Op::ALL.to_vec(),
        }
    }
}

/// The operations: plain BatchNorm, and the fused ReLU and add+ReLU forms beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Training forward: batch statistics, running-statistics update, normalise.
    ForwardTrain,
    /// Evaluation forward with running statistics.
    ForwardEval,
    /// Backward after a training forward: dx, dweight, dbias.
    Backward,
    /// Training forward with a fused ReLU, `y = relu(bn(x))`.
    ForwardTrainRelu,
    /// Evaluation forward with a fused ReLU.
    ForwardEvalRelu,
    /// Backward after a fused-ReLU training forward, given its output y.
    BackwardRelu,
    /// Training forward of a residual tail, `y = relu(bn(x) + r)`.
    ForwardTrainAddRelu,
    /// Backward after it, given y: dx, dr, dweight, dbias.
    BackwardAddRelu,
}

impl Op {
    /// Every operation, in the order measured (each fused form after the plain one it extends).
    pub const ALL: [Op; 8] = [
        Op::ForwardTrain,
        Op::ForwardEval,
        Op::Backward,
        Op::ForwardTrainRelu,
        Op::ForwardEvalRelu,
        Op::BackwardRelu,
        Op::ForwardTrainAddRelu,
        Op::BackwardAddRelu,
    ];

    /// The name used in the table and the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Op::ForwardTrain => "forward_train",
            Op::ForwardEval => "forward_eval",
            Op::Backward => "backward",
            Op::ForwardTrainRelu => "forward_train_relu",
            Op::ForwardEvalRelu => "forward_eval_relu",
            Op::BackwardRelu => "backward_relu",
            Op::ForwardTrainAddRelu => "forward_train_add_relu",
            Op::BackwardAddRelu => "backward_add_relu",
        }
    }

    /// The operation of a [`name`](Self::name).
    pub fn from_name(s: &str) -> anyhow::Result<Op> {
        Op::ALL
            .into_iter()
            .find(|op| op.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Op::ALL.iter().map(|op| op.name()).collect();
                anyhow::anyhow!("unknown op {s:?}: use one of {}", names.join(", "))
            })
    }

    /// The plain BatchNorm operation a fused one extends (itself for the plain ones): the
    /// fused forms are timed against the same yardstick and floor, so that their ratios
    /// compare with the plain one's directly.
    pub fn plain(self) -> Op {
        match self {
            Op::ForwardTrain | Op::ForwardTrainRelu | Op::ForwardTrainAddRelu => Op::ForwardTrain,
            Op::ForwardEval | Op::ForwardEvalRelu => Op::ForwardEval,
            Op::Backward | Op::BackwardRelu | Op::BackwardAddRelu => Op::Backward,
        }
    }

    /// The yardstick this operation is compared with.
    pub fn yardstick(self) -> &'static str {
        match self.plain() {
            Op::Backward => "add",
            _ => "copy",
        }
    }

    /// Bytes the operation must move at least: every input read once, every output written
    /// once (the fused backward passes read y; the residual forms read r or write dr).
    fn bytes(self, elems: usize, dtype: Dtype) -> usize {
        let streams = match self {
            Op::ForwardTrain | Op::ForwardEval | Op::ForwardTrainRelu | Op::ForwardEvalRelu => 2,
            Op::Backward | Op::ForwardTrainAddRelu => 3,
            Op::BackwardRelu => 4,
            Op::BackwardAddRelu => 5,
        };
        streams * elems * dtype.size()
    }
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Row {
    /// Logical dims.
    pub dims: Vec<usize>,
    /// Memory layout.
    pub layout: Layout,
    /// Storage type of x, y, dy, dx.
    pub dtype: Dtype,
    /// Operation.
    pub op: Op,
    /// Threads in the pool.
    pub threads: usize,
    /// The kernel path.
    pub isa: Isa,
    /// Median time of one call, milliseconds.
    pub median_ms: f64,
    /// Median time of the yardstick on the same bytes, milliseconds.
    pub yardstick_ms: f64,
    /// Median time of reading the operation's inputs once (x; x and dy for backward).
    pub read_ms: f64,
    /// Median time of the yardstick's pass written with non-temporal stores (where the machine
    /// has them), as the kernels write large outputs.
    pub streamed_ms: f64,
    /// For a fused operation, the median time of the plain one it extends, its samples
    /// alternating with the fused one's.
    pub plain_ms: Option<f64>,
    /// Whether the buffers were flushed from the caches before each call.
    pub cold: bool,
    /// Whether the buffers were on transparent huge pages.
    pub huge_pages: bool,
}

impl Row {
    /// Minimum traffic divided by the median time.
    pub fn gb_per_s(&self) -> f64 {
        self.op.bytes(self.dims.iter().product(), self.dtype) as f64 / (self.median_ms * 1e6)
    }

    /// Kernel time over yardstick time: 1.0 is the speed of memory.
    pub fn ratio(&self) -> f64 {
        self.median_ms / self.yardstick_ms
    }

    /// A fused operation's time over its plain operation's, measured alternately (`None` for
    /// the plain operations).
    pub fn vs_plain(&self) -> Option<f64> {
        self.plain_ms.map(|p| self.median_ms / p)
    }

    /// The least ratio an operation that reads its inputs twice from where they are can reach,
    /// estimated as two plain loops: one reading the inputs, one doing the yardstick's work with
    /// streamed stores, `(read + streamed) / yardstick`; 1.0 for evaluation, which reads them
    /// once. Channels-first kernels go below it by keeping a channel in L2 between their passes.
    /// A fused operation has the floor of the plain one it extends.
    pub fn floor(&self) -> f64 {
        match self.op.plain() {
            Op::ForwardEval => 1.0,
            _ => (self.read_ms + self.streamed_ms) / self.yardstick_ms,
        }
    }

    /// The row as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "shape": self.dims,
            "layout": layout_name(self.layout),
            "dtype": self.dtype.name(),
            "op": self.op.name(),
            "threads": self.threads,
            "isa": self.isa.name(),
            "median_ms": self.median_ms,
            "gb_per_s": self.gb_per_s(),
            "yardstick": self.op.yardstick(),
            "yardstick_ms": self.yardstick_ms,
            "ratio": self.ratio(),
            "read_ms": self.read_ms,
            "streamed_ms": self.streamed_ms,
            "floor": self.floor(),
            "plain_ms": self.plain_ms,
            "vs_plain": self.vs_plain(),
            "cache": if self.cold { "cold" } else { "hot" },
            "pages": if self.huge_pages { "huge" } else { "base" },
        })
    }
}

/// `NCHW`-style name of a layout for a rank.
pub fn layout_name(layout: Layout) -> &'static str {
    match layout {
        Layout::ChannelsFirst => "channels_first",
        Layout::ChannelsLast => "channels_last",
    }
}

/// Runs every measurement, calling `report` after each row (for progress output).
///
/// # Errors
/// No samples or a thread count of 0, a shape the kernels reject, a thread pool that cannot be built, or huge pages asked for on a
/// machine that cannot give them (see [`crate::huge_pages::check_available`]).
pub fn run(cfg: &Config, mut report: impl FnMut(&Row)) -> anyhow::Result<Vec<Row>> {
    anyhow::ensure!(cfg.samples >= 1, "--samples = 0: must be at least 1");
    anyhow::ensure!(
        !cfg.threads.contains(&0),
        "--threads = 0: must be at least 1"
    );
    if cfg.huge_pages {
        crate::huge_pages::check_available().context("huge pages asked for, not available")?;
    }
    let mut rows = Vec::new();
    for &threads in &cfg.threads {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()?;
        for dims in &cfg.shapes {
            for (i, &layout) in cfg.layouts.iter().enumerate() {
                if dims.len() == 2 && i > 0 {
                    continue; // 2-D: both layouts are the same memory
                }
                let shape = Shape::new(dims, layout)?;
                for &dtype in &cfg.dtypes {
                    let measure = || match dtype {
                        Dtype::F32 => measure_shape::<f32>(cfg, &shape, threads, dtype),
                        Dtype::Bf16 => measure_shape::<bf16>(cfg, &shape, threads, dtype),
                        Dtype::F16 => measure_shape::<f16>(cfg, &shape, threads, dtype),
                    };
                    for row in pool.install(measure)? {
                        report(&row);
                        rows.push(row);
                    }
                }
            }
        }
    }
    Ok(rows)
}

/// Buffers of one shape, touched once so that no timing pays for page faults: the kernels' x, y,
/// dy, dx, the residual r and its gradient dr; `scratch` is the yardsticks' output, so that the
/// kernel's own inputs stay intact. They are `f32` words, which
/// the kernels see as elements of their storage type (two 16-bit values a word) and the
/// yardsticks as `f32`: both move the same bytes.
struct Buffers {
    x: Vec<f32>,
    y: Vec<f32>,
    dy: Vec<f32>,
    dx: Vec<f32>,
    r: Vec<f32>,
    dr: Vec<f32>,
    scratch: Vec<f32>,
}

impl Buffers {
    /// The buffers of `n` values of `T`, on huge pages when `huge`.
    fn new<T: Element>(n: usize, huge: bool) -> std::io::Result<Self> {
        let words = (n * std::mem::size_of::<T>()).div_ceil(4);
        let buffer = |value: fn(usize) -> f64| -> std::io::Result<Vec<f32>> {
            let mut b = if huge {
                crate::huge_pages::vec_on_huge_pages(words, |_| 1.0)?
            } else {
                vec![1.0; words]
            };
            // No zero: the yardsticks see the same words as f32, which must not be subnormal
            // (slow on some CPUs).
            for (i, v) in as_elements_mut::<T>(&mut b, n).iter_mut().enumerate() {
                *v = T::from_f64(value(i));
            }
            Ok(b)
        };
        Ok(Self {
            x: buffer(|i| ((i * 7919) % 1000) as f64 * 0.01 - 2.995)?,
            y: buffer(|_| 1.0)?,
            dy: buffer(|i| ((i * 104_729) % 1000) as f64 * 0.002 - 0.999)?,
            dx: buffer(|_| 1.0)?,
            // About as large as bn(x), so that relu(bn(x) + r) keeps about half the values.
            r: buffer(|i| ((i * 6007) % 1000) as f64 * 0.003 - 1.4985)?,
            dr: buffer(|_| 1.0)?,
            scratch: buffer(|_| 1.0)?,
        })
    }

    /// The kernel's tensors as `n` elements of `T`, and the yardsticks' buffers as words: x
    /// and dy (their inputs), and their output.
    fn split<T: Element>(&mut self, n: usize) -> (Io<'_, T>, [&[f32]; 2], &mut Vec<f32>) {
        let io = Io {
            x: as_elements(&self.x, n),
            dy: as_elements(&self.dy, n),
            r: as_elements(&self.r, n),
            y: as_elements_mut(&mut self.y, n),
            dx: as_elements_mut(&mut self.dx, n),
            dr: as_elements_mut(&mut self.dr, n),
        };
        (io, [&self.x, &self.dy], &mut self.scratch)
    }

    /// Every buffer as `(address, bytes)`, for [`flush`].
    fn regions(&self) -> Vec<(usize, usize)> {
        self.all()
            .iter()
            .map(|b| (b.as_ptr() as usize, std::mem::size_of_val(&***b)))
            .collect()
    }

    fn all(&self) -> [&Vec<f32>; 7] {
        [
            &self.x,
            &self.y,
            &self.dy,
            &self.dx,
            &self.r,
            &self.dr,
            &self.scratch,
        ]
    }

    /// Warns (on stderr) when the kernel gave fewer huge pages than the buffers hold whole
    /// pages: it falls back to small pages silently when memory is fragmented.
    fn check_huge_pages(&self) {
        let bufs = self.all();
        let inside = |b: &Vec<f32>| {
            crate::huge_pages::whole_pages_inside(b.as_ptr() as usize, std::mem::size_of_val(&**b))
        };
        let wanted: usize = bufs.iter().map(|b| inside(b)).sum();
        match crate::huge_pages::process_huge_bytes() {
            Ok(got) if got < wanted => eprintln!(
                "warning: only {} of the {} MiB of buffers that fit huge pages are on them",
                got >> 20,
                wanted >> 20
            ),
            Ok(_) => {}
            Err(e) => eprintln!("warning: cannot tell whether the buffers are on huge pages: {e}"),
        }
    }
}

fn measure_shape<T: Element<Param = f32>>(
    cfg: &Config,
    shape: &Shape,
    threads: usize,
    dtype: Dtype,
) -> anyhow::Result<Vec<Row>> {
    let n = shape.len();
    let mut b = Buffers::new::<T>(n, cfg.huge_pages).with_context(|| {
        let pages = if cfg.huge_pages { " on huge pages" } else { "" };
        format!("allocating the buffers of {:?}{pages}", shape.dims())
    })?;
    if cfg.huge_pages {
        b.check_huge_pages();
    }
    let mut bn = BatchNorm::<T>::new(shape.channels(), BatchNormConfig::default())?;
    bn.set_par(Par::Rayon);
    bn.set_isa(cfg.isa)?;
    let mut saved = Saved::default();
    let mut grads = Grads::default();

    let mut rows = Vec::new();
    for &op in &cfg.ops {
        // A backward needs the statistics and (fused forms) the output of its own training
        // forward; this untimed call also warms the module's buffers and the caches.
        let forward = match op {
            Op::Backward => Some(Op::ForwardTrain),
            Op::BackwardRelu => Some(Op::ForwardTrainRelu),
            Op::BackwardAddRelu => Some(Op::ForwardTrainAddRelu),
            _ => None,
        };
        for warm in forward.into_iter().chain([op]) {
            let (mut io, ..) = b.split::<T>(n);
            run_op(&mut bn, warm, shape, &mut io, &mut saved, &mut grads)?;
        }
        let mut failure = None;
        let [median_ms, yardstick_ms, read_ms, streamed_ms, plain_ms] = {
            let regions = b.regions();
            let evict = || {
                if cfg.cold {
                    flush(&regions);
                }
            };
            let (mut io, [x, dy], scratch) = b.split::<T>(n);
            let scratch = std::cell::RefCell::new(scratch);
            // A fused operation alternates with its plain one too, so that their ratio sees
            // the same machine noise (the plain backward reads the fused forward's statistics,
            // the same as the plain forward's; the plain forward overwrites nothing a fused
            // forward reads).
            let fused = op.plain() != op;
            let mut kernel = |op: Op| {
                if let Err(e) = run_op(&mut bn, op, shape, &mut io, &mut saved, &mut grads) {
                    failure = Some(e);
                }
            };
            let kernel = std::cell::RefCell::new(&mut kernel);
            let mut fused_kernel = || kernel.borrow_mut()(op);
            let mut plain_kernel = || kernel.borrow_mut()(op.plain());
            let mut yardstick = || match op.plain() {
                Op::Backward => add(x, dy, &mut scratch.borrow_mut(), threads),
                _ => copy(x, &mut scratch.borrow_mut(), threads),
            };
            let mut read = || match op.plain() {
                Op::Backward => read_all(&[x, dy], threads),
                _ => read_all(&[x], threads),
            };
            let mut streamed = || match op.plain() {
                Op::Backward => streamed_sum([x, dy], &mut scratch.borrow_mut(), threads),
                _ => streamed_sum([x], &mut scratch.borrow_mut(), threads),
            };
            let mut fns: Vec<&mut dyn FnMut()> =
                vec![&mut fused_kernel, &mut yardstick, &mut read, &mut streamed];
            if fused {
                fns.push(&mut plain_kernel);
            }
            let t = time_alternating(cfg, &evict, &mut fns);
            [t[0], t[1], t[2], t[3], t.get(4).copied().unwrap_or(0.0)]
        };
        if let Some(e) = failure {
            return Err(e.into());
        }
        rows.push(Row {
            dims: shape.dims().to_vec(),
            layout: shape.layout(),
            dtype,
            op,
            threads,
            isa: cfg.isa,
            median_ms,
            yardstick_ms,
            read_ms,
            streamed_ms,
            plain_ms: (op.plain() != op).then_some(plain_ms),
            cold: cfg.cold,
            huge_pages: cfg.huge_pages,
        });
    }
    Ok(rows)
}

/// The kernel's tensors, as elements of its storage type.
struct Io<'a, T> {
    x: &'a [T],
    dy: &'a [T],
    r: &'a [T],
    y: &'a mut [T],
    dx: &'a mut [T],
    dr: &'a mut [T],
}

/// One call of `op` on `io`: a forward writes y and `saved`, a backward reads them.
fn run_op<T: Element>(
    bn: &mut BatchNorm<T>,
    op: Op,
    shape: &Shape,
    io: &mut Io<'_, T>,
    saved: &mut Saved<T>,
    grads: &mut Grads<T>,
) -> Result<(), BatchNormError> {
    let Io {
        x,
        dy,
        r,
        y,
        dx,
        dr,
    } = io;
    match op {
        Op::ForwardTrain => bn.forward_into(x, shape, Mode::Train, y, saved),
        Op::ForwardEval => bn.forward_into(x, shape, Mode::Eval, y, saved),
        Op::Backward => bn.backward_into(x, dy, shape, saved, dx, grads),
        Op::ForwardTrainRelu => bn.forward_relu_into(x, shape, Mode::Train, y, saved),
        Op::ForwardEvalRelu => bn.forward_relu_into(x, shape, Mode::Eval, y, saved),
        Op::BackwardRelu => bn.backward_relu_into(x, y, dy, shape, saved, dx, grads),
        Op::ForwardTrainAddRelu => bn.forward_add_relu_into(x, r, shape, Mode::Train, y, saved),
        Op::BackwardAddRelu => bn.backward_add_relu_into(x, y, dy, shape, saved, dx, dr, grads),
    }
}

/// The first `n` elements of type `T` in the words `b`.
fn as_elements<T: Element>(b: &[f32], n: usize) -> &[T] {
    assert!(std::mem::size_of::<T>() <= 4 && std::mem::align_of::<T>() <= 4);
    assert!(n * std::mem::size_of::<T>() <= std::mem::size_of_val(b));
    // SAFETY: `T` is `f32`, `bf16` or `f16` (the bench's dtypes; at most 4 bytes, aligned to at
    // most 4, checked above), for which every bit pattern is a value; the `n` elements lie
    // within `b` (checked above), whose borrow the result keeps.
    unsafe { std::slice::from_raw_parts(b.as_ptr().cast::<T>(), n) }
}

/// [`as_elements`], to write.
fn as_elements_mut<T: Element>(b: &mut [f32], n: usize) -> &mut [T] {
    assert!(std::mem::size_of::<T>() <= 4 && std::mem::align_of::<T>() <= 4);
    assert!(n * std::mem::size_of::<T>() <= std::mem::size_of_val(b));
    // SAFETY: as in `as_elements`, with the exclusive borrow of `b`.
    unsafe { std::slice::from_raw_parts_mut(b.as_mut_ptr().cast::<T>(), n) }
}

/// `dst = src`, split over `threads` contiguous pieces (memcpy per piece).
fn copy(src: &[f32], dst: &mut [f32], threads: usize) {
    let piece = src.len().div_ceil(threads);
    dst.par_chunks_mut(piece)
        .zip(src.par_chunks(piece))
        .for_each(|(d, s)| d.copy_from_slice(s));
}

/// `c = a + b`, split over `threads` contiguous pieces.
fn add(a: &[f32], b: &[f32], c: &mut [f32], threads: usize) {
    let piece = a.len().div_ceil(threads);
    c.par_chunks_mut(piece)
        .zip(a.par_chunks(piece).zip(b.par_chunks(piece)))
        .for_each(|(c, (a, b))| {
            for ((c, &a), &b) in c.iter_mut().zip(a).zip(b) {
                *c = a + b;
            }
        });
}

/// Sums every value of `bufs` (all of one length), read side by side as the kernels' first
/// passes read x and dy, each thread over its contiguous piece of all of them, prefetching
/// 4 KiB ahead in each as the kernels do (without it the read ran 1.5x slower and overstated
/// the floor): reads them once.
fn read_all(bufs: &[&[f32]], threads: usize) {
    const STEP: usize = 32;
    let len = bufs.first().map_or(0, |b| b.len());
    let piece = len.div_ceil(threads).max(1);
    let sum: f32 = (0..len.div_ceil(piece))
        .into_par_iter()
        .map(|p| {
            let range = p * piece..((p + 1) * piece).min(len);
            let steps = range.len() / STEP;
            let mut acc = [0.0f32; STEP];
            for i in 0..steps {
                let at = range.start + i * STEP;
                for b in bufs {
                    prefetch_ahead(&b[at..at + STEP]);
                    for (a, v) in acc.iter_mut().zip(&b[at..at + STEP]) {
                        *a += v;
                    }
                }
            }
            let tail = range.start + steps * STEP..range.end;
            let tails = bufs.iter().map(|b| b[tail.clone()].iter().sum::<f32>());
            acc.iter().sum::<f32>() + tails.sum::<f32>()
        })
        .sum();
    std::hint::black_box(sum);
}

/// `dst = the sum of srcs`, each thread over its contiguous piece, written with non-temporal
/// stores on x86-64 with AVX (with plain stores elsewhere), prefetching 4 KiB ahead: the second
/// pass of a two-pass kernel as a plain loop.
fn streamed_sum<const N: usize>(srcs: [&[f32]; N], dst: &mut [f32], threads: usize) {
    let piece = dst.len().div_ceil(threads).max(1);
    dst.par_chunks_mut(piece).enumerate().for_each(|(p, d)| {
        let at = p * piece..p * piece + d.len();
        let srcs = srcs.map(|s| &s[at.clone()]);
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx") {
            // SAFETY: AVX was just detected.
            unsafe { streamed_piece_avx(srcs, d) };
            return;
        }
        for (i, o) in d.iter_mut().enumerate() {
            *o = srcs.iter().map(|s| s[i]).sum();
        }
    });
}

/// [`streamed_sum`] over one piece: plain stores up to the first 32-byte boundary of `dst`,
/// then one aligned non-temporal store per 8 values, fenced at the end.
///
/// # Safety
/// The CPU supports AVX.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn streamed_piece_avx<const N: usize>(srcs: [&[f32]; N], dst: &mut [f32]) {
    use std::arch::x86_64::{_mm256_loadu_ps, _mm256_stream_ps, _mm_sfence};
    let sum = |i: usize| srcs.iter().map(|s| s[i]).sum::<f32>();
    let head = dst.as_ptr().align_offset(32).min(dst.len());
    let (dh, rest) = dst.split_at_mut(head);
    for (i, o) in dh.iter_mut().enumerate() {
        *o = sum(i);
    }
    let (steps, tail) = rest.as_chunks_mut::<8>();
    for (k, o) in steps.iter_mut().enumerate() {
        let at = head + 8 * k;
        let mut v = [0.0f32; 8];
        for s in &srcs {
            prefetch_ahead(&s[at..at + 8]);
            for (v, x) in v.iter_mut().zip(&s[at..at + 8]) {
                *v += x;
            }
        }
        // SAFETY: `o` is 8 values at a 32-byte boundary (after `head`), `v` 8 values; AVX is
        // this function's precondition.
        unsafe { _mm256_stream_ps(o.as_mut_ptr(), _mm256_loadu_ps(v.as_ptr())) };
    }
    let start = head + 8 * steps.len();
    for (i, o) in tail.iter_mut().enumerate() {
        *o = sum(start + i);
    }
    // Orders the streamed stores before whatever follows.
    _mm_sfence();
}

/// Asks for the cache lines 4 KiB past `chunk` (as many bytes as it spans) to be loaded into
/// L1, as the kernels' streaming loops do; a hint that never faults, a no-op off x86-64.
#[inline(always)]
fn prefetch_ahead(chunk: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in (0..std::mem::size_of_val(chunk)).step_by(64) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let at = chunk.as_ptr().cast::<i8>().wrapping_add(4096 + line);
        // SAFETY: a prefetch never dereferences its address in the program's sense and cannot
        // fault; SSE (which provides it) is part of the x86-64 baseline.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(at) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = chunk;
}

/// Medians (ms per call) of each function, sampled in turn, each sample after `evict`.
fn time_alternating(cfg: &Config, evict: &dyn Fn(), fns: &mut [&mut dyn FnMut()]) -> Vec<f64> {
    let reps = if cfg.cold {
        1
    } else {
        fns.iter_mut()
            .map(|f| repetitions(cfg.min_sample, *f))
            .max()
            .unwrap_or(1)
    };
    let mut times = vec![Vec::with_capacity(cfg.samples); fns.len()];
    for _ in 0..cfg.samples {
        for (f, t) in fns.iter_mut().zip(&mut times) {
            evict();
            t.push(sample(reps, *f));
        }
    }
    times.iter_mut().map(|t| median(t)).collect()
}

/// Evicts the cache lines of each `(address, bytes)` region from every cache level.
#[cfg(target_arch = "x86_64")]
fn flush(regions: &[(usize, usize)]) {
    use std::arch::x86_64::{_mm_clflush, _mm_mfence};
    for &(start, bytes) in regions {
        for line in (start..start + bytes).step_by(64) {
            // SAFETY: `line` lies inside a live allocation (the caller's buffers outlive every
            // sample); CLFLUSH writes back and evicts the line without changing its contents,
            // and SSE2 (which provides it) is part of the x86-64 baseline.
            unsafe { _mm_clflush(line as *const u8) };
        }
    }
    // SAFETY: a fence has no memory-safety preconditions.
    unsafe { _mm_mfence() };
}

/// Cold runs flush by writing a buffer larger than common last-level caches.
#[cfg(not(target_arch = "x86_64"))]
fn flush(_regions: &[(usize, usize)]) {
    let mut big = vec![0u8; 256 << 20];
    for (i, b) in big.iter_mut().enumerate().step_by(64) {
        *b = i as u8;
    }
    std::hint::black_box(&big);
}

/// How many calls make one sample last at least `min`.
fn repetitions(min: Duration, f: &mut dyn FnMut()) -> usize {
    let one = sample(1, f).max(1e-6);
    ((min.as_secs_f64() * 1e3 / one).ceil() as usize).clamp(1, 100_000)
}

/// Milliseconds per call over `reps` calls.
fn sample(reps: usize, f: &mut dyn FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    t.elapsed().as_secs_f64() * 1e3 / reps as f64
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
