#!/usr/bin/python3
"""Regression test for bench/run's zstd peer: the --memory argument it passes
must be one zstd can parse for any image size, so that an image over zstd's own
2 GB limit is refused by zstd ("Can't handle files larger than 2 GB") and the
result says so. bench/run once passed --memory=8256MB for the 8 GiB disk of
--big, and zstd failed on the argument ("numeric value overflows 32-bit
unsigned int") before it looked at the image.

Usage: tests/bench/run_test.py SOURCE_DIR
"""
import importlib.machinery
import importlib.util
import os
import subprocess
import sys
import tempfile


def load_run(src):
    loader = importlib.machinery.SourceFileLoader("bench_run", os.path.join(src, "bench", "run"))
    spec = importlib.util.spec_from_loader("bench_run", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def zstd(args, cwd):
    return subprocess.run(["zstd", "-q", "-f"] + args, cwd=cwd, capture_output=True, text=True)


def main():
    run = load_run(sys.argv[1])
    with tempfile.TemporaryDirectory() as work:
        small = os.path.join(work, "small")
        with open(small, "wb") as f:
            f.write(b"vmsynth " * 4096)
        # zstd accepts the argument for every size bench/run meets, from the
        # real VM's 512 MiB memory image to disks far past 4 GiB.
        for size in (512 << 20, 2 << 30, 8 << 30, 64 << 30):
            arg = run.zstd_memory_arg(size)
            p = zstd(["--long=31", arg, small, "-o", small + ".zst"], work)
            if p.returncode != 0:
                sys.exit(f"FAIL zstd rejects {arg} (image of {size} bytes): {p.stderr.strip()}")
        if run.zstd_memory_arg(512 << 20) != "--memory=576MB":
            sys.exit(f"FAIL a 512 MiB image should get 64 MiB of headroom, got {run.zstd_memory_arg(512 << 20)}")

        # An 8 GiB pair (sparse files: no disk space used): zstd itself refuses it.
        base, launch = os.path.join(work, "base.img"), os.path.join(work, "launch.img")
        for path in (base, launch):
            with open(path, "wb") as f:
                f.truncate(8 << 30)
        p = zstd(["-19", "--long=31", run.zstd_memory_arg(8 << 30), f"--patch-from={base}", launch,
                  "-o", os.path.join(work, "d.zst")], work)
        if p.returncode == 0:
            sys.exit("FAIL zstd --patch-from accepted an 8 GiB image; bench/run's docs say it refuses")
        if "larger than 2 GB" not in p.stderr:
            sys.exit(f"FAIL zstd refused the 8 GiB image for another reason: {p.stderr.strip()}")
    print("ok")


if __name__ == "__main__":
    main()
