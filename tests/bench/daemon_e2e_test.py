#!/usr/bin/python3
"""bench/daemon-e2e.py --quick runs to its end and writes a result of the expected shape.

Checks structure, never timings. Usage: daemon_e2e_test.py SOURCE_DIR BUILD_DIR
"""
import json
import os
import subprocess
import sys
import tempfile

src, build = sys.argv[1], sys.argv[2]
data = os.path.join(build, "bench-data", "daemon-e2e-test")
with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "daemon-e2e.json")
    r = subprocess.run([sys.executable, os.path.join(src, "bench", "daemon-e2e.py"), "--quick", "--build", build,
                        "--data", data, "--out", out], timeout=300)
    if r.returncode != 0:
        sys.exit(f"bench/daemon-e2e.py --quick exited with {r.returncode}")
    res = json.load(open(out))

errors = []


def need(cond, what):
    if not cond:
        errors.append(what)


for k in ("benchmark", "date", "commit", "machine", "limiter", "config", "pairs", "per_link", "concurrency",
          "hammer", "summary", "launch"):
    need(k in res, f"top-level key {k}")
need(res.get("benchmark") == "daemon-e2e", "benchmark name")
for k in ("cpu", "cpus", "memory_gib", "kernel", "filesystem"):
    need(k in res.get("machine", {}), f"machine.{k}")
need(res.get("limiter", {}).get("kind") in ("netns", "sender"), "limiter.kind")
reps = res.get("config", {}).get("reps", 0)
need(reps >= 1, "config.reps")
need(len(res.get("per_link", {})) >= 1, "at least one link rate")
for key, link in res.get("per_link", {}).items():
    need(link.get("link_check", {}).get("mbit_s", 0) > 0, f"{key}: link check")
    for pair, s in link.get("pairs", {}).items():
        for path in ("daemon", "cli"):
            v = s.get(path, [])
            need(len(v) == reps, f"{key} {pair} {path}: {len(v)} samples, expected {reps}")
            for x in v:
                need(x.get("receiver_s", 0) > 0 and x.get("sender_s", 0) > 0, f"{key} {pair} {path}: timings")
        sm = res.get("summary", {}).get("per_link", {}).get(key, {}).get(pair, {})
        for view in ("receiver", "sender"):
            need("daemon_minus_cli_ms" in sm.get(view, {}), f"summary {key} {pair} {view}.daemon_minus_cli_ms")
for n, runs in res.get("concurrency", {}).get("runs", {}).items():
    need(len(runs) >= 1, f"concurrency {n}: runs")
    for r in runs:
        need(r.get("failed") == 0, f"concurrency {n}: failed uploads {r.get('errors')}")
        need(len(r.get("session_sender_s", [])) == int(n), f"concurrency {n}: sessions")
        need(r.get("health", {}).get("n", 0) > 0, f"concurrency {n}: health probes")
        need(r.get("sampled_max_rss_kib", 0) > 0, f"concurrency {n}: RSS")
need(len(res.get("summary", {}).get("concurrency", {})) >= 1, "summary.concurrency")
for mode in ("new", "keepalive"):
    h = res.get("hammer", {}).get(mode, {})
    need(h.get("requests_ok", 0) > 0, f"hammer {mode}: requests")
    need("latency_p99_ms" in h and "uploads_failed" in h, f"hammer {mode}: keys")
if errors:
    sys.exit("daemon-e2e result is not as expected:\n  " + "\n  ".join(errors))
print("daemon-e2e --quick: result has the expected structure")
