#!/usr/bin/env bash
# Cost of decryption in end-to-end synthesis (docs/security.md, "Measured cost").
#
# Generates one base/launch pair (vmsynth gen-pair), creates two overlays of
# it, plain and encrypted (--key-file), then synthesizes each with every engine
# asked for, interleaved (plain, encrypted, then encrypted, plain, ...), REPS
# times, after one untimed warm-up each. Reports the median wall time of the
# synthesis (the --json "seconds.total", fsync included), the median CPU time
# of the process (user + sys, from /usr/bin/time: steadier than wall time on
# a shared machine) and the overheads encrypted/plain - 1. Caches are warm. Generated data lives in --data and is
# deleted at the end. Also runs bench/codec/crypto_bench (AES-256-GCM MB/s).
#
# Usage: bench/encryption-e2e.sh [--build DIR] [--data DIR] [--memory-mib N] [--disk-mib N]
#          [--reps N] [--engines "serial parallel"] [--out perf-data/FILE.json] [--keep]
# --keep leaves --data in place, and a later run with the same --data reuses
# its pair and overlays (so they can be made while the machine is busy).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build="$here/build"
data=/work/bench-data-encryption
memory_mib=512
disk_mib=2048
reps=3
engines="serial parallel"
keep=0
out="$here/perf-data/encryption-$(date +%Y-%m-%d).json"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --build) build=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --memory-mib) memory_mib=$2; shift 2 ;;
    --disk-mib) disk_mib=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --engines) engines=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
vmsynth="$build/cli/vmsynth"
mkdir -p "$data"
((keep)) || trap 'rm -rf "$data"' EXIT
if [[ ! -s "$data/sealed.vmo" ]]; then
"$vmsynth" gen-pair --out "$data/pair" --memory-mib "$memory_mib" --disk-mib "$disk_mib" --force >/dev/null
head -c 32 /dev/urandom > "$data/key"
"$vmsynth" overlay create --base "$data/pair/base" --launch "$data/pair/launch" -o "$data/plain.vmo" --force --json \
  > "$data/create-plain.json"
"$vmsynth" overlay create --base "$data/pair/base" --launch "$data/pair/launch" -o "$data/sealed.vmo" --force --json \
  --key-file "$data/key" > "$data/create-sealed.json"
fi

runs="$data/runs.tsv"
: > "$runs"
synth() {  # synth ENGINE VARIANT REP
  local key=()
  [[ $2 == sealed ]] && key=(--key-file "$data/key")
  /usr/bin/time -f '%U %S' -o "$data/cpu.txt" "$vmsynth" synthesize --engine "$1" --base "$data/pair/base" \
    --overlay "$data/$2.vmo" --out "$data/out" --force --json "${key[@]}" > "$data/last.json"
  local cpu
  cpu=$(awk '{print $1 + $2}' "$data/cpu.txt")
  python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(j["seconds"]["total"], j["seconds"]["apply"])' \
    "$data/last.json" | { read -r total apply; printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$total" "$apply" "$cpu" >> "$runs"; \
    echo "$1 $2 rep $3: ${total}s (apply ${apply}s, cpu ${cpu}s)" >&2; }
  rm -rf "$data/out"
}
for e in $engines; do
  synth "$e" plain warmup; synth "$e" sealed warmup
  for ((r = 0; r < reps; r++)); do
    if ((r % 2 == 0)); then synth "$e" plain "$r"; synth "$e" sealed "$r"; else synth "$e" sealed "$r"; synth "$e" plain "$r"; fi
  done
done
"$build/bench/vmsynth_codec_bench" --benchmark_filter='BM_Gcm|BM_DecodePayload|BM_OpenOverlayKeys' \
  --benchmark_repetitions=5 --benchmark_report_aggregates_only=true --benchmark_format=json > "$data/micro.json"

python3 - "$runs" "$data" "$out" "$memory_mib" "$disk_mib" "$reps" "$here" <<'PY'
import json, os, platform, statistics, subprocess, sys
runs, data, out, mem, disk, reps, repo = sys.argv[1:]
rows = [l.split("\t") for l in open(runs).read().splitlines() if l]
def sh(*c):
    return subprocess.run(c, capture_output=True, text=True, cwd=repo).stdout.strip()
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "")
aes = "aes" in open("/proc/cpuinfo").read().split()
res = {"benchmark": "encryption-e2e", "date": sh("date", "-Iseconds"), "commit": sh("git", "rev-parse", "HEAD"),
       "git_dirty": bool(sh("git", "status", "--porcelain", "--untracked-files=no")),
       "machine": {"cpu_model": cpu, "cores": os.cpu_count(), "kernel": platform.release(), "aes_ni": aes,
                   "openssl": sh("openssl", "version")},
       "pair": {"memory_mib": int(mem), "disk_mib": int(disk), "generator": "vmsynth gen-pair (default profile)"},
       "overlay_bytes": {v: json.load(open(f"{data}/create-{v}.json"))["overlay_bytes"] for v in ("plain", "sealed")},
       "repetitions": int(reps), "unit": "seconds (medians of interleaved runs, warm caches)",
       "load": os.getloadavg(), "engines": {}}
for e in sorted({r[0] for r in rows}):
    d = {}
    for v in ("plain", "sealed"):
        t = [float(r[3]) for r in rows if r[0] == e and r[1] == v and r[2] != "warmup"]
        a = [float(r[4]) for r in rows if r[0] == e and r[1] == v and r[2] != "warmup"]
        c = [float(r[5]) for r in rows if r[0] == e and r[1] == v and r[2] != "warmup"]
        d[v] = {"total": t, "median_total": statistics.median(t), "median_apply": statistics.median(a),
                "cpu": c, "median_cpu": statistics.median(c)}
    d["overhead_total"] = round(d["sealed"]["median_total"] / d["plain"]["median_total"] - 1, 4)
    d["overhead_apply"] = round(d["sealed"]["median_apply"] / d["plain"]["median_apply"] - 1, 4)
    d["overhead_cpu"] = round(d["sealed"]["median_cpu"] / d["plain"]["median_cpu"] - 1, 4)
    res["engines"][e] = d
micro = json.load(open(f"{data}/micro.json"))
res["micro"] = {b["name"]: {"MB_per_s": round(b.get("bytes_per_second", 0) / 1e6, 1), "real_time": round(b["real_time"], 3),
                            "time_unit": b["time_unit"]}
                for b in micro["benchmarks"] if b.get("aggregate_name") == "median"}
os.makedirs(os.path.dirname(out), exist_ok=True)
json.dump(res, open(out, "w"), indent=2)
print(json.dumps(res, indent=2))
PY
