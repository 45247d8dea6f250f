#!/usr/bin/env python3
"""Ours against PyTorch CPU, row by row: `bnlab bench` and `bench/peers/pytorch_bn.py` run
alternately on the same machine, each row's best median kept.

Usage:
  cargo build --release -p batchnorm-lab
  python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch numpy
  python3 bench/vs_pytorch.py --python /tmp/torchenv/bin/python [--runs 2] [--threads 1 2]
         [--shapes 64,64,56,56 ...] [--samples 21] [--markdown]

The rows are the six bench shapes x their layouts x (forward_train, forward_eval, backward) x
the thread counts: 60 by default. PyTorch's times are its preallocated-output calls
(`native_batch_norm.out`; its backward allocates dx, dweight and dbias as autograd does). Each
side runs `--runs` times, alternating (ours, PyTorch, ours, ...), so that slow phases of a
shared machine hit both; per row the least of the medians is kept. Prints the table, the worst
row, how many rows are at least as fast as PyTorch and the geometric mean of ours / PyTorch.
"""
import argparse
import json
import math
import os
import platform
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPS = ["forward_train", "forward_eval", "backward"]


def run_json(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def machine():
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical CPUs"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", default=sys.executable, help="a Python with torch installed")
    ap.add_argument("--bnlab", default=os.path.join(ROOT, "target", "release", "bnlab"))
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--threads", nargs="+", default=["1", "2"])
    ap.add_argument("--shapes", nargs="+", default=None)
    ap.add_argument("--samples", type=int, default=21)
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    a = ap.parse_args()

    common = ["--threads", *a.threads, "--samples", str(a.samples)]
    if a.shapes:
        common += ["--shapes", *a.shapes]
    ours_cmd = [a.bnlab, "bench", "--json", "--ops", ",".join(OPS), *common]
    torch_cmd = [a.python, os.path.join(ROOT, "bench", "peers", "pytorch_bn.py"), "--json", *common]
    ours, torch, isa = {}, {}, "?"
    for run in range(a.runs):
        print(f"run {run + 1}/{a.runs}: bnlab bench, then PyTorch", file=sys.stderr, flush=True)
        for r in run_json(ours_cmd):
            k = (tuple(r["shape"]), r["layout"], r["op"], r["threads"])
            isa = r.get("isa", isa)
            if k not in ours or r["median_ms"] < ours[k]["median_ms"]:
                ours[k] = r
        for r in run_json(torch_cmd):
            k = (tuple(r["shape"]), r["layout"], r["op"], r["threads"])
            if r["op"] in OPS and (k not in torch or r["median_ms"] < torch[k]["median_ms"]):
                torch[k] = r

    rows = []
    for k, r in ours.items():
        t = torch.get(k)
        if t:
            rows.append((k, r["median_ms"], t["median_ms"], r["yardstick_ms"]))
    if not rows:
        sys.exit("no row measured by both")
    sep = " | " if a.markdown else "  "
    head = ["shape", "layout", "op", "threads", "ours ms", "PyTorch ms", "ours / PyTorch", "yardstick ms"]
    print(f"machine: {machine()}; our kernel path: {isa}; best of {a.runs} alternating runs")
    if a.markdown:
        print("| " + " | ".join(head) + " |")
        print("|---|---|---|---:|---:|---:|---:|---:|")
    else:
        print(f"{'shape':<16}{'layout':<16}{'op':<15}{'thr':>4}{'ours ms':>10}{'torch ms':>10}{'ratio':>8}{'yard ms':>10}")
    for (shape, layout, op, thr), o, t, y in rows:
        dims = "x".join(map(str, shape))
        if a.markdown:
            ratio = f"**{o / t:.2f}**" if o > t else f"{o / t:.2f}"
            print(f"| {dims} | {layout} | {op} | {thr} | {o:.3f} | {t:.3f} | {ratio} | {y:.3f} |")
        else:
            print(f"{dims:<16}{layout:<16}{op:<15}{thr:>4}{o:>10.3f}{t:>10.3f}{o / t:>8.2f}{y:>10.3f}")
    ratios = [o / t for _, o, t, _ in rows]
    worst = max(range(len(rows)), key=lambda i: ratios[i])
    (shape, layout, op, thr), o, t, _ = rows[worst]
    geo = math.exp(sum(map(math.log, ratios)) / len(ratios))
    ahead = sum(r <= 1.0 for r in ratios)
    print(f"\n{ahead}/{len(rows)} rows at least as fast as PyTorch; geo-mean ours / PyTorch {geo:.3f}")
    print(f"worst row: {'x'.join(map(str, shape))} {layout} {op} {thr} thread(s): "
          f"{o:.3f} ms against {t:.3f} ms ({ratios[worst]:.2f})")


if __name__ == "__main__":
    main()
