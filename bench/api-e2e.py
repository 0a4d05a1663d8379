#!/usr/bin/env python3
"""The public API against the command line tool, on one generated pair.

Two questions (docs/performance.md, "The library"):
  1. Does pushing the overlay through vmsynth_synth_feed from the caller's
     buffer cost more than the CLI reading the file? (target: <= 1.05x)
       cli-file   vmsynth synthesize --overlay FILE (a process; timed around it)
       api-file   vmsynth_synthesize from the path, in-process (bench/api/api_driver.c)
       api-feed   the overlay in memory, fed in 1 MiB pieces, in-process
  2. Do 4 syntheses in one process do as well as 4 processes?
       api-4      4 threads of api-feed in one process
       cli-4      4 vmsynth synthesize processes started together
Repetitions are interleaved and their order rotates; outputs are removed
before each run (untimed), caches are warm. Results: medians and ratios,
with the commit and the machine, in perf-data/api-e2e-<date>.json.

Usage: bench/api-e2e.py [--build build] [--data DIR] [--memory-mib N]
         [--disk-mib N] [--reps N] [--threads N] [--out FILE]
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--build", default=os.path.join(here, "build"))
ap.add_argument("--data", default="/work/bench-data/api-e2e")
ap.add_argument("--memory-mib", type=int, default=512)
ap.add_argument("--disk-mib", type=int, default=2048)
ap.add_argument("--reps", type=int, default=5)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--out", default=os.path.join(here, "perf-data", f"api-e2e-{datetime.date.today()}.json"))
args = ap.parse_args()

cli = os.path.join(args.build, "cli", "vmsynth")
driver = os.path.join(args.build, "bench", "vmsynth_api_driver")
for f in (cli, driver):
    if not os.access(f, os.X_OK):
        sys.exit(f"{f} is missing: build first (scripts/build)")
env = dict(os.environ, LD_LIBRARY_PATH=os.path.join(args.build, "lib"))

os.makedirs(args.data, exist_ok=True)
pair = os.path.join(args.data, "pair")
overlay = os.path.join(args.data, "app.vmo")
base = os.path.join(pair, "base")
if not os.path.exists(overlay):
    subprocess.run([cli, "gen-pair", "--out", pair, "--memory-mib", str(args.memory_mib), "--disk-mib",
                    str(args.disk_mib), "--force", "-q"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([cli, "overlay", "create", "--base", base, "--launch", os.path.join(pair, "launch"), "-o",
                    overlay, "--force", "-q"], check=True, stdout=subprocess.DEVNULL)
outs = [os.path.join(args.data, f"out{i}") for i in range(4)]


def clean():
    for o in outs:
        shutil.rmtree(o, ignore_errors=True)
    subprocess.run(["sync"], check=True)


def cli_cmd(out):
    return [cli, "synthesize", "--base", base, "--overlay", overlay, "--out", out, "--threads", str(args.threads),
            "-q"]


def run_cli(n):
    t0 = time.monotonic()
    procs = [subprocess.Popen(cli_cmd(outs[i]), stdout=subprocess.DEVNULL) for i in range(n)]
    if any(p.wait() != 0 for p in procs):
        sys.exit("vmsynth synthesize failed")
    return time.monotonic() - t0


def run_driver(argv):
    r = subprocess.run([driver] + argv, env=env, check=True, capture_output=True, text=True)
    return json.loads(r.stdout)["seconds"]


t = str(args.threads)
cases = {
    "cli-file": lambda: run_cli(1),
    "api-file": lambda: run_driver(["file", base, overlay, outs[0], t]),
    "api-feed": lambda: run_driver(["feed", base, overlay, outs[0], t]),
    "cli-4": lambda: run_cli(4),
    "api-4": lambda: run_driver(["concurrent", "4", "feed", base, overlay, os.path.join(args.data, "out"), t]),
}
names = list(cases)
samples = {n: [] for n in names}
for rep in range(args.reps):
    order = names[rep % len(names):] + names[:rep % len(names)]
    for n in order:
        clean()
        samples[n].append(cases[n]())
        print(f"rep {rep + 1}/{args.reps} {n}: {samples[n][-1]:.3f} s", file=sys.stderr)
clean()

med = {n: statistics.median(v) for n, v in samples.items()}
commit = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
fs = subprocess.run(["stat", "-f", "-c", "%T", args.data], capture_output=True, text=True).stdout.strip()
result = {
    "benchmark": "api-e2e",
    "date": str(datetime.date.today()),
    "commit": commit,
    "machine": {"cpus": os.cpu_count(), "cpu": cpu, "kernel": platform.release(), "filesystem": fs,
                "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)},
    "pair": {"memory_mib": args.memory_mib, "disk_mib": args.disk_mib, "overlay_bytes": os.path.getsize(overlay)},
    "threads_per_synthesis": args.threads,
    "reps": args.reps,
    "seconds": samples,
    "median_seconds": med,
    "ratios": {
        "api-feed / cli-file": med["api-feed"] / med["cli-file"],
        "api-feed / api-file": med["api-feed"] / med["api-file"],
        "api-file / cli-file": med["api-file"] / med["cli-file"],
        "api-4 / cli-4": med["api-4"] / med["cli-4"],
    },
}
os.makedirs(os.path.dirname(args.out), exist_ok=True)
with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
    f.write("\n")
print(json.dumps({"median_seconds": med, "ratios": result["ratios"]}, indent=2))
print(f"wrote {args.out}", file=sys.stderr)
