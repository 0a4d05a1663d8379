#!/usr/bin/env bash
# Builds the real disk-only base/launch pair for bench/run from Debian packages.
#
#   base   = Debian bookworm minbase (debootstrap --variant=minbase) in a raw
#            ext4 image made loop-free with mkfs.ext4 -d
#   launch = the same tree after `apt-get install python3 python3-numpy` in a
#            chroot, packed with the identical mkfs.ext4 invocation
#
# Both VMs get the same memory.img: a sparse all-zero file of --memory-mib
# (default 64). This is a *disk-only* pair: the memory image contributes
# nothing to any overlay, it only satisfies the VM directory layout.
#
# Layout written (OUTDIR defaults to ${VMSYNTH_CACHE:-/work/bench-data}/real-debian):
#   OUTDIR/base/{disk.img,memory.img}  OUTDIR/launch/{disk.img,memory.img}
#   OUTDIR/build.json                  timings and sizes of this build
# Work trees and the package cache live in OUTDIR/work and are removed at the
# end unless --keep-work. Nothing here belongs in git.
#
# Needs root (debootstrap, chroot), debootstrap, e2fsprogs >= 1.43 (mkfs -d),
# and Debian's mirror. Takes ~3-6 minutes on the 2-core dev machine, most of it
# downloading and unpacking packages.
#
# Determinism: mkfs gets a fixed UUID, hash seed and timestamp
# (E2FSPROGS_FAKE_TIME) so that metadata that would differ by chance does not.
# Files are still *placed* by mkfs's allocator in directory-walk order, so
# installing packages shifts the blocks of every file that comes after the new
# ones: a file-level rebuild scatters unchanged content to new offsets. That
# costs peers that match only at the same offset or within a window, and not
# tools that match content anywhere (vmsynth's base index, casync's chunk
# store, zstd/xdelta within their windows). See docs/performance.md.
#
# Usage: bench/corpus/build-real-pair.sh [OUTDIR] [--disk-mib N]
#          [--memory-mib N] [--mirror URL] [--packages "python3 python3-numpy"]
#          [--keep-work] [--force]
set -euo pipefail

out=""
disk_mib=2048
memory_mib=64
mirror=http://deb.debian.org/debian
packages="python3 python3-numpy"
keep_work=0
force=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --disk-mib) disk_mib=$2; shift 2 ;;
    --memory-mib) memory_mib=$2; shift 2 ;;
    --mirror) mirror=$2; shift 2 ;;
    --packages) packages=$2; shift 2 ;;
    --keep-work) keep_work=1; shift ;;
    --force) force=1; shift ;;
    -h|--help) sed -n '2,35p' "$0"; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) out=$1; shift ;;
  esac
done
out=${out:-${VMSYNTH_CACHE:-/work/bench-data}/real-debian}

[[ $(id -u) -eq 0 ]] || { echo "needs root (debootstrap, chroot)" >&2; exit 2; }
command -v debootstrap > /dev/null || { echo "needs debootstrap (apt-get install debootstrap)" >&2; exit 2; }
if [[ -e $out/launch/disk.img && $force -eq 0 ]]; then
  echo "$out already holds a pair (use --force to rebuild)" >&2
  exit 0
fi

work=$out/work
rm -rf "$out/base" "$out/launch" "$work"
mkdir -p "$work/debs" "$out/base" "$out/launch"
t0=$(date +%s.%N)
elapsed() { python3 -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 1))" "$1" "$(date +%s.%N)"; }

# Same metadata for both images: fixed UUID, directory hash seed and clock.
uuid=5c1e7a1b-0000-4000-8000-000000000001
export E2FSPROGS_FAKE_TIME=1700000000
pack() {  # pack TREE IMAGE
  rm -f "$2"
  mkfs.ext4 -q -F -b 4096 -I 256 -U "$uuid" -E "hash_seed=$uuid,root_owner=0:0" \
    -L vmsynth-root -d "$1" "$2" "${disk_mib}M"
}

echo "debootstrap --variant=minbase bookworm ..." >&2
debootstrap --variant=minbase --cache-dir="$work/debs" bookworm "$work/base-root" "$mirror" \
  > "$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
t_debootstrap=$(elapsed "$t0")

# The launch tree starts as an exact copy of the base tree (hard links are
# preserved by cp -a; timestamps too).
cp -a "$work/base-root" "$work/launch-root"

t1=$(date +%s.%N)
pack "$work/base-root" "$out/base/disk.img"
t_mkfs=$(elapsed "$t1")

echo "chroot apt-get install $packages ..." >&2
t2=$(date +%s.%N)
root=$work/launch-root
printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
chmod +x "$root/usr/sbin/policy-rc.d"
cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
echo "deb $mirror bookworm main" > "$root/etc/apt/sources.list"
mount -t proc proc "$root/proc"
trap 'umount "$root/proc" 2>/dev/null || true' EXIT
chroot "$root" env DEBIAN_FRONTEND=noninteractive LC_ALL=C apt-get update -q > "$work/apt.log" 2>&1
chroot "$root" env DEBIAN_FRONTEND=noninteractive LC_ALL=C apt-get install -y -q --no-install-recommends \
  $packages >> "$work/apt.log" 2>&1 || { tail -20 "$work/apt.log" >&2; exit 1; }
# A user's install keeps the package lists but not the downloaded .debs.
chroot "$root" apt-get clean
umount "$root/proc"
trap - EXIT
rm -f "$root/usr/sbin/policy-rc.d"
t_install=$(elapsed "$t2")

pack "$root" "$out/launch/disk.img"

for vm in base launch; do
  rm -f "$out/$vm/memory.img"
  truncate -s "${memory_mib}M" "$out/$vm/memory.img"
done

total=$(elapsed "$t0")
base_used=$(du -sb "$work/base-root" | cut -f1)
launch_used=$(du -sb "$work/launch-root" | cut -f1)
cat > "$out/build.json" <<EOF
{"corpus": "real-debian-disk", "packages": "$packages", "disk_mib": $disk_mib, "memory_mib": $memory_mib,
 "memory": "identical sparse zero images (disk-only pair)",
 "base_tree_bytes": $base_used, "launch_tree_bytes": $launch_used,
 "seconds": {"debootstrap": $t_debootstrap, "mkfs_each": $t_mkfs, "install": $t_install, "total": $total},
 "date": "$(date -Iseconds)"}
EOF
[[ $keep_work -eq 1 ]] || rm -rf "$work"
cat "$out/build.json"
