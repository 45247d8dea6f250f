#!/usr/bin/env python3
"""Two builds of bnlab against each other, in alternating runs of `bnlab bench --json`.

Usage:
  python3 bench/ab.py --base-rev HEAD~1 --runs 5 -- --shapes 64,64,56,56 --threads 2 --ops backward
  python3 bench/ab.py --base path/to/bnlab --new path/to/other/bnlab -- --shapes 256,1024
The new build is this checkout's (`cargo build --release -p batchnorm-lab`) unless `--new` names
a binary; the base is a binary (`--base`) or a git revision (`--base-rev`), built from a
temporary worktree into `target/ab-base` (kept, so the next build of a revision is quick).

Runs go base, new, base, new, ...: on a shared machine whose speed drifts over minutes, each
pair of runs sees about the same machine. Prints per row the median time of each build over
the runs, new / base of those medians and the range of the per-run ratios, each build's median
time over its yardstick (measured in the same process, samples alternating: it moves less with
the machine than times do), and for fused rows each build's median `vs_plain` (fused over
plain, measured likewise). A change is worth believing where the range stays on one side of 1
and the yardstick ratios agree. Both binaries run from copies at paths of the same length:
the program's own allocations (its arguments among them) move the heap, and a longer path to
the same binary changed a cache-resident pass by 20% (`docs/benchmarks.md`).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_rev(rev):
    """Builds bnlab at `rev` from a temporary worktree; returns the binary's path."""
    target = os.path.join(ROOT, "target", "ab-base")
    with tempfile.TemporaryDirectory() as tree:
        subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", tree, rev], check=True,
                       stdout=subprocess.DEVNULL)
        try:
            env = dict(os.environ, CARGO_TARGET_DIR=target)
            subprocess.run(["cargo", "build", "--release", "-p", "batchnorm-lab"], cwd=tree, env=env,
                           check=True)
        finally:
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", tree], check=True)
    return os.path.join(target, "release", "bnlab")


def build_here():
    subprocess.run(["cargo", "build", "--release", "-p", "batchnorm-lab"], cwd=ROOT, check=True)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    return os.path.join(target, "release", "bnlab")


def same_length_copies(binaries, where):
    """Copies of `binaries` in `where`, at paths of the same length."""
    copies = []
    for i, binary in enumerate(binaries):
        os.makedirs(os.path.join(where, str(i)))
        copies.append(shutil.copy2(binary, os.path.join(where, str(i), "bnlab")))
    return copies


def key(row):
    shape = row["shape"] if isinstance(row["shape"], str) else "x".join(map(str, row["shape"]))
    return (shape, row["layout"], row.get("dtype", "f32"), row["op"], row["threads"])


def bench(binary, args):
    out = subprocess.run([binary, "bench", "--json", *args], check=True, capture_output=True,
                         text=True).stdout
    return {key(r): r for r in json.loads(out)}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", help="the base build's bnlab binary")
    p.add_argument("--base-rev", help="a git revision to build as the base")
    p.add_argument("--new", help="the new build's bnlab binary (default: this checkout's)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("bench_args", nargs="*", help="arguments of `bnlab bench` (after --)")
    a = p.parse_args()
    if (a.base is None) == (a.base_rev is None):
        p.error("name the base: --base BINARY or --base-rev REVISION")
    if a.runs < 1:
        p.error("--runs must be at least 1")
    base = a.base or build_rev(a.base_rev)
    new = a.new or build_here()
    runs = {"base": [], "new": []}
    with tempfile.TemporaryDirectory() as where:
        base, new = same_length_copies([base, new], where)
        for i in range(a.runs):
            print(f"run {i + 1}/{a.runs}", file=sys.stderr)
            runs["base"].append(bench(base, a.bench_args))
            runs["new"].append(bench(new, a.bench_args))
    print(f"{'shape':14} {'layout':15} {'dtype':5} {'op':23} {'thr':>3} {'base ms':>9} {'new ms':>9} "
          f"{'new/base':>8} {'range':>11} {'/ yardstick':>11} {'vs_plain':>11}")
    for k in runs["base"][0]:
        if any(k not in r for r in runs["new"]):
            continue
        b = [r[k]["median_ms"] for r in runs["base"]]
        n = [r[k]["median_ms"] for r in runs["new"]]
        ratios = [y / x for x, y in zip(b, n)]
        def both(field):
            if runs["base"][0][k].get(field) is None:
                return ""
            vb = statistics.median(r[k][field] for r in runs["base"])
            vn = statistics.median(r[k][field] for r in runs["new"])
            return f"{vb:.2f}->{vn:.2f}"
        bm, nm = statistics.median(b), statistics.median(n)
        print(f"{k[0]:14} {k[1]:15} {k[2]:5} {k[3]:23} {k[4]:3} {bm:9.3f} {nm:9.3f} {nm / bm:8.2f} "
              f"{min(ratios):5.2f}-{max(ratios):5.2f} {both('ratio'):>11} {both('vs_plain'):>11}")


if __name__ == "__main__":
    main()
