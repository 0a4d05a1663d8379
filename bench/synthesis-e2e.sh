#!/usr/bin/env bash
# End-to-end synthesis benchmark with the vmsynth CLI (docs/performance.md).
#
# For each profile: generate a base/launch pair (vmsynth gen-pair), create its
# overlay, then run, with interleaved repetitions (the order rotates each
# repetition):
#   serial           vmsynth synthesize --engine serial
#   parallel         vmsynth synthesize --engine parallel --threads T (io_uring writes)
#   parallel-pwrite  the same with --write-backend pwrite (which write path to default to)
#   qcow2            the parallel engine with --disk-format qcow2: the base disk
#                    is not copied; disk.qcow2 holds the changed blocks
#   serial-qcow2     the serial engine with --disk-format qcow2 (the engines
#                    compared without the base disk copy)
#   floor            cp --sparse=always of the finished launch images into the same
#                    filesystem + sync -f: the cost of writing the output with nothing
#                    to decode
# Every run is timed by /usr/bin/time (wall seconds, maximum resident set
# size, CPU seconds user + system). Synthesis fsyncs its output before it
# returns, so both sides are synced. Caches are warm (no drop_caches here).
# Generated data lives in --data (outside the repository) and is deleted at
# the end.
#
# Usage: bench/synthesis-e2e.sh [--vmsynth BIN] [--data DIR] [--memory-mib N]
#          [--disk-mib N] [--reps N] [--threads N] [--profiles "typical decode-heavy"]
#          [--out perf-data/FILE.json]
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
vmsynth="$here/build/cli/vmsynth"
data=/work/bench-data
memory_mib=2048
disk_mib=8192
reps=3
threads=2
profiles="typical decode-heavy"
out="$here/perf-data/synthesis-e2e-$(date +%Y-%m-%d).json"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --vmsynth) vmsynth=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --memory-mib) memory_mib=$2; shift 2 ;;
    --disk-mib) disk_mib=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --profiles) profiles=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[[ -x /usr/bin/time ]] || { echo "needs /usr/bin/time (apt-get install time)" >&2; exit 2; }
mkdir -p "$data" "$(dirname "$out")"
runs="$data/runs.tsv"
: > "$runs"
trap 'rm -rf "$data"/pair-* ' EXIT

# run NAME PROFILE REP CMD...: appends "profile name rep seconds maxrss_kib".
run() {
  local name=$1 profile=$2 rep=$3; shift 3
  /usr/bin/time -f '%e %M %U %S' -o "$data/time.txt" "$@" > "$data/last.json"
  read -r secs rss usr sys < "$data/time.txt"
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$profile" "$name" "$rep" "$secs" "$rss" \
    "$(awk -v u="$usr" -v s="$sys" 'BEGIN { print u + s }')" >> "$runs"
  echo "$profile $name rep $rep: ${secs}s, max RSS ${rss} KiB, CPU ${usr}+${sys}s" >&2
}

for profile in $profiles; do
  pair="$data/pair-$profile"
  "$vmsynth" gen-pair --out "$pair" --memory-mib "$memory_mib" --disk-mib "$disk_mib" \
    --profile "$profile" --force > /dev/null
  "$vmsynth" overlay create --base "$pair/base" --launch "$pair/launch" -o "$pair/app.vmo" --force \
    --json > "$data/create-$profile.json"
  # Warm-up: base id cache and page cache, not timed.
  "$vmsynth" synthesize --base "$pair/base" --overlay "$pair/app.vmo" --out "$pair/out" --force \
    --json > /dev/null
  rm -rf "$pair/out"
  variants=(serial parallel parallel-pwrite qcow2 serial-qcow2 floor)
  for ((rep = 0; rep < reps; rep++)); do
    for ((i = 0; i < ${#variants[@]}; i++)); do
      v=${variants[$(((i + rep) % ${#variants[@]}))]}
      case $v in
        serial | serial-qcow2)
          extra=()
          [[ $v == serial-qcow2 ]] && extra=(--disk-format qcow2)
          run "$v" "$profile" "$rep" "$vmsynth" synthesize --engine serial "${extra[@]}" --base "$pair/base" \
            --overlay "$pair/app.vmo" --out "$pair/out" --json
          cp "$data/last.json" "$data/$v-$profile.json" ;;
        parallel | parallel-pwrite | qcow2)
          extra=()
          [[ $v == parallel-pwrite ]] && extra=(--write-backend pwrite)
          [[ $v == qcow2 ]] && extra=(--disk-format qcow2)
          run "$v" "$profile" "$rep" "$vmsynth" synthesize --engine parallel --threads "$threads" "${extra[@]}" \
            --base "$pair/base" --overlay "$pair/app.vmo" --out "$pair/out" --json
          cp "$data/last.json" "$data/$v-$profile.json" ;;
        floor)
          mkdir -p "$pair/out"
          run floor "$profile" "$rep" sh -c "cp --sparse=always '$pair/launch/disk.img' '$pair/launch/memory.img' \
            '$pair/out/' && sync -f '$pair/out/disk.img'" ;;
      esac
      rm -rf "$pair/out"
    done
  done
  rm -rf "$pair"
done

python3 - "$runs" "$data" "$out" "$memory_mib" "$disk_mib" "$threads" "$reps" "$profiles" "$here" <<'EOF'
import json, os, platform, statistics, subprocess, sys
runs, data, out, mem, disk, threads, reps, profiles, repo = sys.argv[1:]
rows = [l.split("\t") for l in open(runs).read().splitlines() if l]
def sh(*c):
    return subprocess.run(c, capture_output=True, text=True, cwd=repo).stdout.strip()
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "")
res = {"benchmark": "synthesis-e2e", "date": sh("date", "-Iseconds"), "git_head": sh("git", "rev-parse", "HEAD"),
       "git_dirty": bool(sh("git", "status", "--porcelain", "--untracked-files=no")),
       "machine": {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
                   "filesystem": sh("findmnt", "-no", "FSTYPE", "-T", data),
                   "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)},
       "caches": "warm (drop_caches not available)", "memory_mib": int(mem), "disk_mib": int(disk),
       "parallel_threads": int(threads), "repetitions": int(reps), "profiles": {}}
for p in profiles.split():
    r = {}
    names = [n for n in ("serial", "parallel", "parallel-pwrite", "qcow2", "serial-qcow2", "floor") if any(x[0] == p and x[1] == n for x in rows)]
    for name in names:
        secs = [float(x[3]) for x in rows if x[0] == p and x[1] == name]
        rss = [int(x[4]) for x in rows if x[0] == p and x[1] == name]
        cpu = [float(x[5]) for x in rows if x[0] == p and x[1] == name]
        r[name] = {"seconds": secs, "median_seconds": statistics.median(secs), "max_rss_mib": round(max(rss) / 1024, 1),
                   "cpu_seconds": cpu, "median_cpu_seconds": statistics.median(cpu)}
    med = lambda n: r[n]["median_seconds"]
    for a, b in (("parallel", "serial"), ("parallel", "floor"), ("serial", "floor"), ("parallel-pwrite", "parallel"),
                 ("qcow2", "floor"), ("qcow2", "parallel"), ("qcow2", "serial"), ("qcow2", "serial-qcow2")):
        if a in r and b in r:
            r[f"{a}_vs_{b}".replace("-", "_")] = round(med(a) / med(b), 3)
    for name in names:
        try:
            j = json.load(open(f"{data}/{name}-{p}.json"))
            r[name]["last_run"] = {k: j.get(k) for k in ("seconds", "write_backend", "write_backend_reason", "clone_method", "disk_format", "threads", "overlay_bytes")}
        except Exception:
            pass
    try:
        r["overlay"] = json.load(open(f"{data}/create-{p}.json"))
    except Exception:
        pass
    res["profiles"][p] = r
json.dump(res, open(out, "w"), indent=2)
print(json.dumps({p: {k: v for k, v in r.items() if "_vs_" in k}
                  for p, r in res["profiles"].items()}, indent=2))
EOF
rm -f "$runs" "$data"/time.txt "$data"/last.json "$data"/serial-*.json "$data"/parallel*.json "$data"/qcow2-*.json "$data"/serial-qcow2-*.json \
  "$data"/create-*.json
echo "results: $out" >&2
