#!/usr/bin/env python3
"""Markdown table of `bnlab bench --json` beside `bench/peers/pytorch_bn.py --json`.

Usage:
  cargo run --release -p batchnorm-lab -- bench --json > ours.json
  python bench/peers/pytorch_bn.py --json > torch.json        # optional
  python bench/table.py ours.json [torch.json]
Ratios are each kernel's median time over its yardstick's median time (copy of x for the
forward passes, c = a + b for backward), both measured in the same process; the two-pass floor
is (time to read the inputs once + time of the yardstick's pass with streamed stores) /
yardstick, two plain loops: about the least an operation that must read its inputs twice from
where they lie can reach (1.00 for evaluation, which reads them once), bnlab's "floor"; rows
without one (JSON from older bnlab versions) show "-". When the run has the fused operations
(forward_train_relu, ...), a second table gives each one's time over the plain operation it
extends, measured in the same run with alternating samples (bnlab's "vs_plain").
"""
import json
import sys


def key(r, op):
    return (tuple(r["shape"]), r["layout"], op, r["threads"])


def main():
    ours = json.load(open(sys.argv[1]))
    torch = {}
    if len(sys.argv) > 2:
        for r in json.load(open(sys.argv[2])):
            torch[key(r, r["op"])] = r
    print("| shape | layout | op | threads | ours ms | GB/s | yardstick ms | ours / yardstick | two-pass floor"
          + (" | PyTorch ms (prealloc) | PyTorch / its yardstick | PyTorch ms (allocating)" if torch else "") + " |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|---:|---:|" if torch else ""))
    for r in ours:
        shape = "x".join(map(str, r["shape"]))
        line = (f"| {shape} | {r['layout']} | {r['op']} | {r['threads']} | {r['median_ms']:.3f} | "
                f"{r['gb_per_s']:.1f} | {r['yardstick_ms']:.3f} | **{r['ratio']:.2f}** | "
                + (f"{r['floor']:.2f} |" if "floor" in r else "- |"))
        if torch:
            t = torch.get(key(r, r["op"]))
            a = torch.get(key(r, r["op"] + "_alloc"))
            line += (f" {t['median_ms']:.3f} | {t['ratio']:.2f} |" if t else " - | - |")
            line += (f" {a['median_ms']:.3f} |" if a else " - |")
        print(line)
    fused_table(ours)


PLAIN = {"forward_train_relu": "forward_train", "forward_eval_relu": "forward_eval",
         "backward_relu": "backward", "forward_train_add_relu": "forward_train",
         "backward_add_relu": "backward"}


def fused_table(ours):
    """Each fused operation's median over its plain operation's, same shape, layout, threads."""
    rows = [r for r in ours if r["op"] in PLAIN and r.get("plain_ms")]
    if not rows:
        return
    print()
    print("| shape | layout | op | threads | ours ms | plain op | plain ms | fused / plain |")
    print("|---|---|---|---:|---:|---|---:|---:|")
    for r in rows:
        shape = "x".join(map(str, r["shape"]))
        print(f"| {shape} | {r['layout']} | {r['op']} | {r['threads']} | {r['median_ms']:.3f} | "
              f"{PLAIN[r['op']]} | {r['plain_ms']:.3f} | **{r['vs_plain']:.2f}** |")


if __name__ == "__main__":
    main()
