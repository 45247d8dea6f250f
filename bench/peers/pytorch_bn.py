#!/usr/bin/env python3
"""The `bnlab bench` measurements on PyTorch CPU, for a side-by-side comparison.

Usage: python bench/peers/pytorch_bn.py [--threads 1 2] [--samples 21] [--shapes 64,64,56,56 ...] [--json]
Needs: pip install torch   (not needed by the project's tests)

For each shape, layout (NCHW = contiguous, NHWC = torch.channels_last) and thread count it
times, like `bnlab bench`: train forward, eval forward and backward (dx, dweight, dbias) of
torch.nn.BatchNorm{1,2}d in float32, each both allocating (the usual module call) and with
preallocated outputs (torch.ops.aten.native_batch_norm.out / native_batch_norm_backward), and
the yardsticks on the same bytes: a copy of x into y (forward) and c = a + b (backward). The
report gives medians in ms and the ratio to the yardstick, measured in the same process.
"""
import argparse
import json
import statistics
import time

import torch

SHAPES = [(64, 64, 56, 56), (32, 256, 14, 14), (8, 3, 224, 224), (256, 1024), (128, 2048, 7, 7), (60, 100)]


def median_ms(fn, samples, min_sample_s=0.002):
    fn()
    t = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t, 1e-7)
    reps = max(1, int(min_sample_s / one + 0.999))
    out = []
    for _ in range(samples):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        out.append((time.perf_counter() - t) * 1e3 / reps)
    return statistics.median(out)


def bench_shape(dims, layout, samples):
    c = dims[1]
    x = torch.randn(*dims)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    bn = (torch.nn.BatchNorm2d if len(dims) == 4 else torch.nn.BatchNorm1d)(c)
    weight, bias = bn.weight.detach(), bn.bias.detach()
    rm, rv = bn.running_mean, bn.running_var
    y = torch.empty_like(x)
    dy = torch.randn_like(x)
    dx = torch.empty_like(x)
    save_mean, save_invstd = torch.empty(c), torch.empty(c)
    scratch = torch.empty_like(x)
    rows = []

    def train_alloc():
        bn.train()
        with torch.no_grad():
            bn(x)

    def eval_alloc():
        bn.eval()
        with torch.no_grad():
            bn(x)

    def train_out():
        torch.ops.aten.native_batch_norm.out(x, weight, bias, rm, rv, True, 0.1, 1e-5,
                                             out=y, save_mean=save_mean, save_invstd=save_invstd)

    def eval_out():
        torch.ops.aten.native_batch_norm.out(x, weight, bias, rm, rv, False, 0.1, 1e-5,
                                             out=y, save_mean=save_mean, save_invstd=save_invstd)

    train_out()

    def backward():
        torch.ops.aten.native_batch_norm_backward(dy, x, weight, rm, rv, save_mean, save_invstd,
                                                  True, 1e-5, [True, True, True])

    copy = lambda: scratch.copy_(x)
    add = lambda: torch.add(x, dy, out=scratch)
    yard = {"copy": median_ms(copy, samples), "add": median_ms(add, samples)}
    for op, fn, y_name in [("forward_train_alloc", train_alloc, "copy"), ("forward_train", train_out, "copy"),
                           ("forward_eval_alloc", eval_alloc, "copy"), ("forward_eval", eval_out, "copy"),
                           ("backward", backward, "add")]:
        ms = median_ms(fn, samples)
        rows.append(dict(shape=list(dims), layout=layout, op=op, threads=torch.get_num_threads(),
                         median_ms=ms, yardstick=y_name, yardstick_ms=yard[y_name], ratio=ms / yard[y_name]))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--samples", type=int, default=21)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--shapes", nargs="+", help="logical dims, e.g. 64,64,56,56 (default: the bnlab bench shapes)")
    a = ap.parse_args()
    shapes = [tuple(int(d) for d in s.split(",")) for s in a.shapes] if a.shapes else SHAPES
    rows = []
    for t in a.threads:
        torch.set_num_threads(t)
        for dims in shapes:
            for layout in (["channels_first", "channels_last"] if len(dims) == 4 else ["channels_first"]):
                for r in bench_shape(dims, layout, a.samples):
                    rows.append(r)
                    if not a.json:
                        print(f"{','.join(map(str, r['shape'])):<18} {layout:<14} {r['op']:<20} {t:>3} "
                              f"{r['median_ms']:>10.3f} {r['yardstick']:>5} {r['yardstick_ms']:>9.3f} {r['ratio']:>6.2f}",
                              flush=True)
    if a.json:
        print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
