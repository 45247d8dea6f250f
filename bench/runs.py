#!/usr/bin/env python3
"""Median and range of each ratio over several `bnlab bench --json` runs (noisy machines).

Usage:
  for i in 1 2 3 4 5; do cargo run --release -p batchnorm-lab -- bench --json --shapes 64,64,56,56 > run$i.json; done
  python bench/runs.py run*.json
Prints, per shape, layout, dtype, op and thread count: the median time, the median ratio to the yardstick over the runs,
its range, and the median two-pass floor.
"""
import json
import statistics
import sys


def main():
    rows = {}
    for path in sys.argv[1:]:
        for r in json.load(open(path)):
            key = ("x".join(map(str, r["shape"])), r["layout"], r.get("dtype", "f32"), r["op"], r["threads"],
                   r.get("cache", "hot"), r.get("pages", "base"))
            rows.setdefault(key, []).append(r)
    print("| shape | layout | dtype | op | threads | cache | pages | runs | ms (median) | ratio (median) | range "
          "| two-pass floor (median) |")
    print("|---|---|---|---|---:|---|---|---:|---:|---:|---:|---:|")
    for key in sorted(rows, key=lambda k: (k[6], k[5], k[4], k[0], k[1], k[2], k[3])):
        rs = rows[key]
        ratios = [r["ratio"] for r in rs]
        floor = statistics.median(r.get("floor", float("nan")) for r in rs)
        ms = statistics.median(r["median_ms"] for r in rs)
        print(f"| {' | '.join(map(str, key))} | {len(rs)} | {ms:.2f} | "
              f"**{statistics.median(ratios):.2f}** | {min(ratios):.2f}-{max(ratios):.2f} | {floor:.2f} |")


if __name__ == "__main__":
    main()
