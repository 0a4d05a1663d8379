#!/usr/bin/python3
"""Regression test for bench/plot.py: it renders every plot and the markdown
tables from a committed bench/run result, also when the run left out some
contenders (bench/run --contenders without vmsynth-serial, or without the
parallel engine), which once raised KeyError.

Usage: tests/bench/plot_test.py SOURCE_DIR
"""
import copy
import json
import os
import subprocess
import sys
import tempfile

PLOTS = ["overlay-size", "synthesis-time", "threads", "stages", "time-to-vm"]


def render(plot, result, work, tag):
    path = os.path.join(work, f"e2e-{tag}.json")
    with open(path, "w") as f:
        json.dump(result, f)
    out = os.path.join(work, tag)
    os.makedirs(out)
    for args in ([], ["--markdown"]):
        p = subprocess.run([sys.executable, plot, path, "--out-dir", out] + args, capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"FAIL {tag} {args}: exit {p.returncode}\n{p.stderr}")
        if args and "|" not in p.stdout:
            sys.exit(f"FAIL {tag}: --markdown printed no table")
    for name in PLOTS:
        png = os.path.join(out, f"e2e-{tag}-{name}.png")
        if not os.path.exists(png) or os.path.getsize(png) < 1000:
            sys.exit(f"FAIL {tag}: {png} missing or empty")


def main():
    src = sys.argv[1]
    plot = os.path.join(src, "bench", "plot.py")
    full = json.load(open(os.path.join(src, "perf-data", "e2e-2026-11-27.json")))
    no_serial = copy.deepcopy(full)
    no_parallel = copy.deepcopy(full)
    for pair in no_serial["pairs"].values():
        pair["synthesize"].pop("vmsynth-serial", None)
    for pair in no_parallel["pairs"].values():
        for name in [n for n in pair["synthesize"] if n.startswith("vmsynth-")]:
            del pair["synthesize"][name]
    with tempfile.TemporaryDirectory(prefix="vmsynth-plot-test") as work:
        for tag, result in (("2026-01-01", full), ("2026-01-02", no_serial), ("2026-01-03", no_parallel)):
            render(plot, result, work, tag)
    print("ok: plots and tables rendered for full and partial results")


if __name__ == "__main__":
    main()
