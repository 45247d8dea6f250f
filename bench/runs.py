#!/usr/bin/env python3
"""Median and range of each ratio over several `bnlab bench --json` runs (noisy machines).

Usage:
  for i in 1 2 3 4 5; do cargo run --release -p batchnorm-lab -- bench --json --shapes 64,64,56,56 > run$i.json; done
  python bench/runs.py run*.json
Prints, per shape, layout, op and thread count: the median ratio to the yardstick over the runs,
its range, and the median two-pass floor.
"""
import json
import statistics
import sys


def main():
    rows = {}
    for path in sys.argv[1:]:
        for r in json.load(open(path)):
            key = ("x".join(map(str, r["shape"])), r["layout"], r["op"], r["threads"], r.get("cache", "hot"),
                   r.get("pages", "base"))
            rows.setdefault(key, []).append(r)
    print("| shape | layout | op | threads | cache | pages | runs | ratio (median) | range | two-pass floor (median) |")
    print("|---|---|---|---:|---|---|---:|---:|---:|---:|")
    for key in sorted(rows, key=lambda k: (k[5], k[4], k[3], k[0], k[1], k[2])):
        rs = rows[key]
        ratios = [r["ratio"] for r in rs]
        floor = statistics.median(r.get("floor", float("nan")) for r in rs)
        print(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {key[4]} | {key[5]} | {len(rs)} | "
              f"**{statistics.median(ratios):.2f}** | {min(ratios):.2f}-{max(ratios):.2f} | {floor:.2f} |")


if __name__ == "__main__":
    main()
