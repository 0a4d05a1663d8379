#!/usr/bin/env bash
# Builds the real *booted* base/launch VM pair (memory + disk + device state)
# for bench/run, from Debian packages only, with `vmsynth vm create/start/
# capture/resume`.
#
#   base   = Debian bookworm minbase (debootstrap --variant=minbase) in a raw
#            2 GiB ext4 disk (mkfs.ext4 -d, deterministic metadata), booted
#            with the Debian cloud kernel under QEMU (KVM when usable, else
#            TCG; `vm create --accel auto` decides), 512 MiB RAM, captured as
#            soon as the guest prints BASE-READY on ttyS0.
#   launch = the base resumed (`vm resume base --work W`); the guest installs
#            python3 + python3-numpy from .debs that the base disk already
#            carries in /opt/app-debs (not installed in the base), starts a
#            numpy computation on a 64 MiB array that keeps running, prints
#            APP-RUNNING; the host waits for one more APP-TICK and captures.
#
# The trigger is time: the guest's init (/usr/local/sbin/cloudlet-init, put
# in the tree; the kernel boots with init=... via a small busybox initrd that
# mounts /dev/vda and switch_root's to it, so no systemd and a fast boot
# under TCG) waits --app-at seconds of *guest* time after BASE-READY, then
# runs `apt-get install /opt/app-debs/*.deb` (offline), starts the app and
# prints APP-RUNNING. Guest time stands still while the VM is paused, so the
# host captures the base right after BASE-READY (it checks the captured
# serial log shows no install yet). Consequence: the base VM, if resumed and
# left running for --app-at seconds, installs and starts the app itself;
# that is how the launch VM is made. The guest has no network and no input.
#
# Layout written (OUTDIR defaults to ${VMSYNTH_CACHE:-/work/bench-data}/real-vm):
#   OUTDIR/base/     captured VM: disk.img memory.img devstate.bin vm.json kernel initrd
#   OUTDIR/launch/   captured VM, same files
#   OUTDIR/boot/     kernel, initrd (names as in vm.json: `vm resume X
#                    --boot-files OUTDIR/boot` finds them by SHA-256), append.txt
#   OUTDIR/logs/     guest serial logs of the base boot and of the launch run
#   OUTDIR/build.json timings of every step and sizes
#   OUTDIR/cache/    debootstrap tree, app .debs, kernel/busybox .debs: kept by
#                    --force so a rebuild downloads nothing (--refresh-cache
#                    drops it). Work files in OUTDIR/work are removed at the
#                    end unless --keep-work. Nothing here belongs in git.
# A complete OUTDIR (build.json written last) is left alone without --force.
#
# Time on the 2-core dev machine (TCG; other builds running): 2.4 min from
# an empty cache (debootstrap 23 s and downloads 2 s from a fast mirror, boot
# to BASE-READY 3.4 s, app-at wait 21 s, apt-get install of the 28 .debs in
# the guest under TCG 78-96 s, captures 0.2-1.3 s); about the same with the
# cache (140 s), because the in-guest install dominates. build.json records each run's figures.
#
# Needs root (debootstrap, chroot, mkfs), debootstrap, e2fsprogs >= 1.43,
# kmod (depmod), cpio, gzip, QEMU (qemu-system-x86, qemu-utils), a vmsynth
# binary, and Debian's mirror (only while the cache is empty).
#
# Usage: bench/corpus/build-real-vm.sh [OUTDIR] [--vmsynth PATH] [--disk-mib N]
#          [--memory-mib N] [--app-at SECONDS] [--accel auto|kvm|tcg]
#          [--mirror URL] [--packages "python3 python3-numpy"]
#          [--timeout SECONDS] [--keep-work] [--force] [--refresh-cache]
set -euo pipefail

export LC_ALL=C
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=""
vmsynth=""
disk_mib=2048
memory_mib=512
app_at=20
accel=auto
mirror=http://deb.debian.org/debian
packages="python3 python3-numpy"
timeout=1800
keep_work=0
force=0
refresh=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --vmsynth) vmsynth=$2; shift 2 ;;
    --disk-mib) disk_mib=$2; shift 2 ;;
    --memory-mib) memory_mib=$2; shift 2 ;;
    --app-at) app_at=$2; shift 2 ;;
    --accel) accel=$2; shift 2 ;;
    --mirror) mirror=$2; shift 2 ;;
    --packages) packages=$2; shift 2 ;;
    --timeout) timeout=$2; shift 2 ;;
    --keep-work) keep_work=1; shift ;;
    --force) force=1; shift ;;
    --refresh-cache) refresh=1; force=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    -*) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    *) out=$1; shift ;;
  esac
done
out=${out:-${VMSYNTH_CACHE:-/work/bench-data}/real-vm}
if [[ -z $vmsynth ]]; then
  for b in build-bench build build-corpus; do
    if [[ -x $repo/$b/cli/vmsynth ]]; then vmsynth=$repo/$b/cli/vmsynth; break; fi
  done
fi
[[ -n $vmsynth && -x $vmsynth ]] || { echo "no vmsynth binary (build one, or pass --vmsynth PATH)" >&2; exit 2; }
vmsynth=$(readlink -f "$vmsynth")

[[ $(id -u) -eq 0 ]] || { echo "needs root (debootstrap, chroot, mkfs)" >&2; exit 2; }
for tool in debootstrap mkfs.ext4 depmod cpio gzip dpkg-deb qemu-system-x86_64 qemu-img; do
  command -v "$tool" > /dev/null || { echo "needs $tool" >&2; exit 2; }
done
if [[ -s $out/build.json && -e $out/base/devstate.bin && -e $out/launch/devstate.bin && $force -eq 0 ]]; then
  echo "$out already holds a complete real-vm pair (use --force to rebuild)" >&2
  exit 0
fi
mkdir -p "$out"
out=$(readlink -f "$out")
cache=$out/cache
work=$out/work

now() { echo "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
step() { echo "[$(date +%T)] $*" >&2; }
t_start=$(now)

# ---------------------------------------------------------------- cleanup --
# Stop any QEMU we started and unmount the download chroot's /proc, also on
# failure or Ctrl-C.
cleanup() {
  local rc=$?
  for d in "$work/boot-vm" "$work/run"; do
    if [[ -e $d/qemu.pid ]]; then "$vmsynth" vm stop "$d" > /dev/null 2>&1 || true; fi
  done
  mountpoint -q "$work/dl-root/proc" 2>/dev/null && umount "$work/dl-root/proc" || true
  if [[ $rc -ne 0 ]]; then echo "build-real-vm: FAILED (exit $rc); work files kept in $work" >&2; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[[ $refresh -eq 1 ]] && rm -rf "$cache"
rm -rf "$out/base" "$out/launch" "$out/boot" "$out/logs" "$out/build.json" "$work"
mkdir -p "$cache" "$work" "$out/boot" "$out/logs"

# ----------------------------------------------------------- debootstrap --
# The minbase tree is cached as a tree (cp -a keeps hard links, owners and
# times), so rebuilds produce the identical base disk and download nothing.
t=$(now)
cached_debootstrap=true
if [[ ! -e $cache/minbase.ok ]]; then
  cached_debootstrap=false
  step "debootstrap --variant=minbase bookworm (into the cache) ..."
  rm -rf "$cache/minbase"
  debootstrap --variant=minbase bookworm "$cache/minbase" "$mirror" > "$work/debootstrap.log" 2>&1 ||
    { tail -20 "$work/debootstrap.log" >&2; exit 1; }
  rm -f "$cache/minbase/var/cache/apt/archives/"*.deb
  touch "$cache/minbase.ok"
fi
t_debootstrap=$(since "$t")

# ------------------------------------------------------------- downloads --
# In a throw-away copy of the minbase tree: `apt-get install --download-only`
# yields exactly the .debs the minbase system lacks for $packages; the kernel
# and busybox-static are fetched with `apt-get download` from the same
# release.
t=$(now)
cached_downloads=true
if [[ ! -e $cache/downloads.ok ]]; then
  cached_downloads=false
  step "downloading the app, kernel and busybox .debs (chroot apt-get) ..."
  root=$work/dl-root
  cp -a "$cache/minbase" "$root"
  echo "deb $mirror bookworm main" > "$root/etc/apt/sources.list"
  cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
  mount -t proc proc "$root/proc"
  dlog=$work/download.log
  in_root() {  # runs a command in the chroot, logged; on failure shows the log's end and stops
    chroot "$root" env DEBIAN_FRONTEND=noninteractive LC_ALL=C "$@" >> "$dlog" 2>&1 ||
      { tail -20 "$dlog" >&2; exit 1; }
  }
  in_root apt-get update -q
  in_root apt-get install -y -q --download-only --no-install-recommends $packages
  mkdir -p "$root/tmp/dl"
  in_root sh -c 'cd /tmp/dl && apt-get download linux-image-cloud-amd64 busybox-static'
  kpkg=$(dpkg-deb -f "$root"/tmp/dl/linux-image-cloud-amd64_*.deb Depends | tr ',' '\n' |
         sed 's/[ (].*//;s/^ *//' | grep '^linux-image-[0-9]' | head -1) || true
  [[ -n $kpkg ]] || { echo "cannot resolve the kernel package of linux-image-cloud-amd64" >&2; exit 1; }
  in_root sh -c "cd /tmp/dl && apt-get download $kpkg"
  umount "$root/proc"
  rm -rf "$cache/app-debs" "$cache/boot-debs"
  mkdir -p "$cache/app-debs" "$cache/boot-debs"
  cp "$root"/var/cache/apt/archives/*.deb "$cache/app-debs/"
  cp "$root"/tmp/dl/*.deb "$cache/boot-debs/"
  rm -rf "$root"
  touch "$cache/downloads.ok"
fi
t_downloads=$(since "$t")
app_deb_count=$(ls "$cache/app-debs/"*.deb | wc -l)
app_deb_bytes=$(cat "$cache/app-debs/"*.deb | wc -c)

# ---------------------------------------------------------- kernel, initrd --
# Kernel: the versioned image package behind linux-image-cloud-amd64.
# Initrd: busybox-static + the virtio-blk modules (ext4 is built in to the
# cloud kernel); /init mounts /dev/vda read-only and switch_root's to the
# init= program. cpio and gzip are made reproducible (sorted, fixed times).
t=$(now)
step "kernel and initrd ..."
kx=$work/kernel-x
mkdir -p "$kx" "$work/busybox-x"
kdeb=$(ls "$cache"/boot-debs/linux-image-[0-9]*.deb | head -1)
dpkg-deb -x "$kdeb" "$kx"
dpkg-deb -x "$(ls "$cache"/boot-debs/busybox-static_*.deb | head -1)" "$work/busybox-x"
krel=$(ls "$kx/lib/modules" | head -1)
depmod -b "$kx" "$krel"
moddir=$kx/lib/modules/$krel
cp "$kx/boot/vmlinuz-$krel" "$out/boot/kernel"

stage=$work/initrd
mkdir -p "$stage"/{bin,dev,proc,sys,newroot,lib/modules}
cp "$work/busybox-x/bin/busybox" "$stage/bin/busybox"
: > "$stage/lib/modules/load-order"
add_module() {  # add_module NAME: appends NAME's dependencies, then NAME, to load-order
  local name=$1 rel deps d file
  rel=$(grep -E "(^|/)${name}\.ko(\.xz|\.zst)?:" "$moddir/modules.dep" | head -1 | cut -d: -f1) || true
  if [[ -z $rel ]]; then
    grep -qE "/${name}\.ko\$" "$moddir/modules.builtin" && return 0
    echo "module $name is neither built in nor in modules.dep" >&2
    exit 1
  fi
  deps=$(grep -E "^${rel}:" "$moddir/modules.dep" | cut -d: -f2)
  for d in $(echo $deps | tr ' ' '\n' | tac); do add_module "$(basename "$d" | sed 's/\.ko.*//')"; done
  file=$(basename "$rel")
  case "$file" in
    *.ko.xz) file=${file%.xz}; [[ -e $stage/lib/modules/$file ]] || xz -dc "$moddir/$rel" > "$stage/lib/modules/$file" ;;
    *.ko.zst) file=${file%.zst}; [[ -e $stage/lib/modules/$file ]] || zstd -qdc "$moddir/$rel" > "$stage/lib/modules/$file" ;;
    *) cp "$moddir/$rel" "$stage/lib/modules/$file" ;;
  esac
  grep -qx "$file" "$stage/lib/modules/load-order" || echo "$file" >> "$stage/lib/modules/load-order"
}
for m in virtio_ring virtio virtio_pci virtio_blk crc16 mbcache jbd2 ext4; do add_module "$m"; done

cat > "$stage/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /lib/modules/load-order); do insmod /lib/modules/$m 2>/dev/null; done
ROOT=/dev/vda
INIT=/usr/local/sbin/cloudlet-init
for a in $(cat /proc/cmdline); do
  case $a in root=*) ROOT=${a#root=} ;; init=*) INIT=${a#init=} ;; esac
done
i=0
while [ ! -b "$ROOT" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
if ! mount -t ext4 -o ro "$ROOT" /newroot; then
  echo "CLOUDLET-ERROR initrd: cannot mount $ROOT"
  exec sh
fi
mount --move /dev /newroot/dev
umount /sys /proc
exec switch_root /newroot "$INIT"
INIT
chmod 755 "$stage/init"
find "$stage" -exec touch -h -d @1700000000 {} +
(cd "$stage" && find . | LC_ALL=C sort | cpio -o -H newc --reproducible --quiet | gzip -n -6 > "$out/boot/initrd")
append="console=ttyS0 root=/dev/vda init=/usr/local/sbin/cloudlet-init quiet cloudlet.app_at=$app_at"
echo "$append" > "$out/boot/append.txt"
t_kernel_initrd=$(since "$t")

# ------------------------------------------------------------------- disk --
t=$(now)
step "base tree + mkfs.ext4 -d (${disk_mib} MiB) ..."
root=$work/root
cp -a "$cache/minbase" "$root"
mkdir -p "$root/opt/app-debs" "$root/opt/app" "$root/usr/local/sbin"
cp "$cache/app-debs/"*.deb "$root/opt/app-debs/"
echo cloudlet > "$root/etc/hostname"

cat > "$root/usr/local/sbin/cloudlet-init" <<'GUESTINIT'
#!/bin/sh
# PID 1 of the vmsynth real-VM corpus guest (bench/corpus/build-real-vm.sh).
# Prints BASE-READY, waits cloudlet.app_at seconds of guest time, installs
# /opt/app-debs/*.deb offline, starts /opt/app/compute.py, prints APP-RUNNING.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C
exec < /dev/console > /dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -o remount,rw / || echo "CLOUDLET-ERROR cannot remount / read-write"
echo cloudlet > /proc/sys/kernel/hostname
APP_AT=20
for a in $(cat /proc/cmdline); do
  case $a in cloudlet.app_at=*) APP_AT=${a#cloudlet.app_at=} ;; esac
done
echo "CLOUDLET-BOOT kernel $(uname -r), uptime $(cut -d' ' -f1 /proc/uptime) s"
echo "BASE-READY app_at=$APP_AT"
i=0
while [ $i -lt "$APP_AT" ]; do sleep 1; i=$((i + 1)); done
echo "APP-INSTALL-START uptime $(cut -d' ' -f1 /proc/uptime) s"
if DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends /opt/app-debs/*.deb \
     > /var/log/app-install.log 2>&1; then
  echo "APP-INSTALLED uptime $(cut -d' ' -f1 /proc/uptime) s"
else
  echo "CLOUDLET-ERROR app install failed:"
  tail -20 /var/log/app-install.log
fi
rm -f /run/app.ready
python3 /opt/app/compute.py &
APP=$!
i=0
while [ ! -e /run/app.ready ] && kill -0 $APP 2>/dev/null && [ $i -lt 6000 ]; do sleep 0.1; i=$((i + 1)); done
sync
if [ -e /run/app.ready ]; then
  echo "APP-RUNNING pid=$APP uptime $(cut -d' ' -f1 /proc/uptime) s"
else
  echo "CLOUDLET-ERROR app did not start"
fi
# PID 1 must not exit; reap children now and then.
while true; do sleep 60; done
GUESTINIT
chmod 755 "$root/usr/local/sbin/cloudlet-init"

cat > "$root/opt/app/compute.py" <<'APP'
"""The launch VM's application: numpy on a 64 MiB float64 array, forever.

One in-place iteration, then 0.5 s of rest (to spare the shared host); an
APP-TICK line on the console at most every 5 s of guest time.
"""
import os
import time

import numpy as np

N = 8 * 1024 * 1024  # 8 Mi float64 = 64 MiB
a = np.linspace(0.0, 1.0, N)
it, last = 0, 0.0
while True:
    np.sin(a, out=a)
    a *= 1.5
    a += 0.25
    it += 1
    s = float(a.sum())
    if it == 1:
        with open("/run/app.ready", "w") as f:
            f.write(str(os.getpid()))
    now = time.monotonic()
    if now - last >= 5:
        print(f"APP-TICK {it} sum={s:.6f} pid={os.getpid()}", flush=True)
        last = now
    time.sleep(0.5)
APP

# Same metadata as build-real-pair.sh: fixed UUID, hash seed and clock. Inode
# tables and journal are initialised by mkfs (holes in the sparse image), so
# the guest kernel's ext4lazyinit thread does not zero them in the background
# while the base is captured; the base looks like a settled image.
uuid=5c1e7a1b-0000-4000-8000-000000000002
export E2FSPROGS_FAKE_TIME=1700000000
mkfs.ext4 -q -F -b 4096 -I 256 -U "$uuid" \
  -E "hash_seed=$uuid,root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0" \
  -L vmsynth-root -d "$root" "$work/disk.img" "${disk_mib}M"
unset E2FSPROGS_FAKE_TIME
tree_bytes=$(du -sb "$root" | cut -f1)
rm -rf "$root"
t_disk=$(since "$t")

# -------------------------------------------------------------- boot, base --
wait_line() {  # wait_line RUNDIR PATTERN TIMEOUT_S: until PATTERN is in RUNDIR/serial.log
  local dir=$1 pat=$2 limit=$3 t0=$EPOCHSECONDS
  while ! grep -q "$pat" "$dir/serial.log" 2>/dev/null; do
    if grep -qE 'CLOUDLET-ERROR|Kernel panic' "$dir/serial.log" 2>/dev/null; then
      echo "guest error (serial log $dir/serial.log):" >&2; tail -25 "$dir/serial.log" >&2; exit 1
    fi
    if [[ ! -e $dir/qemu.pid ]] || ! kill -0 "$(cat "$dir/qemu.pid")" 2>/dev/null; then
      echo "QEMU in $dir is gone; serial log:" >&2; tail -25 "$dir/serial.log" >&2 || true; exit 1
    fi
    if (( EPOCHSECONDS - t0 > limit )); then
      echo "no '$pat' after $limit s; serial log:" >&2; tail -25 "$dir/serial.log" >&2; exit 1
    fi
    sleep 0.2
  done
}
jfield() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."): d=d[k]
print(d)' "$1" "$2"; }

t=$(now)
step "vm create (${memory_mib} MiB RAM, --accel $accel) ..."
"$vmsynth" vm create --out "$work/boot-vm" --disk "$work/disk.img" --memory-mib "$memory_mib" \
  --kernel "$out/boot/kernel" --initrd "$out/boot/initrd" --append "$append" --accel "$accel" --json \
  > "$work/create.json"
rm -f "$work/disk.img"
accelerator=$(jfield "$work/create.json" accelerator)
t_create=$(since "$t")

t=$(now)
step "boot ($accelerator) until BASE-READY ..."
"$vmsynth" vm start "$work/boot-vm" --boot-timeout 600 > /dev/null
wait_line "$work/boot-vm" BASE-READY 600
t_boot=$(since "$t")

t=$(now)
step "capture base ..."
"$vmsynth" vm capture "$work/boot-vm" --out "$out/base" --json > "$work/capture-base.json"
t_capture_base=$(since "$t")
"$vmsynth" vm stop "$work/boot-vm" > /dev/null
cp "$work/boot-vm/serial.log" "$out/logs/base-boot-serial.log"
if grep -q APP-INSTALL-START "$out/logs/base-boot-serial.log"; then
  echo "the base was captured after the guest began installing the app; raise --app-at" >&2
  exit 1
fi
rm -rf "$work/boot-vm"

# ----------------------------------------------------------- app, launch --
t=$(now)
step "resume base --work, guest installs and starts the app (~$app_at s + install under $accelerator) ..."
"$vmsynth" vm resume "$out/base" --work "$work/run" > /dev/null
wait_line "$work/run" APP-INSTALL-START "$timeout"
t_until_install=$(since "$t")
t=$(now)
wait_line "$work/run" APP-INSTALLED "$timeout"
t_install=$(since "$t")
t=$(now)
wait_line "$work/run" APP-RUNNING "$timeout"
t_app_start=$(since "$t")
# One more APP-TICK after APP-RUNNING: the app is in its steady loop.
ticks=$(grep -c APP-TICK "$work/run/serial.log" || true)
t0=$EPOCHSECONDS
while (( $(grep -c APP-TICK "$work/run/serial.log" || true) <= ticks )); do
  (( EPOCHSECONDS - t0 < 300 )) || { echo "no APP-TICK after APP-RUNNING" >&2; exit 1; }
  sleep 0.2
done

t=$(now)
step "capture launch ..."
"$vmsynth" vm capture "$work/run" --out "$out/launch" --json > "$work/capture-launch.json"
t_capture_launch=$(since "$t")
"$vmsynth" vm stop "$work/run" > /dev/null
cp "$work/run/serial.log" "$out/logs/launch-serial.log"

# ------------------------------------------------------------ build.json --
total=$(since "$t_start")
alloc() { du -B1 "$1" | cut -f1; }
cat > "$out/build.json" <<EOF
{"corpus": "real-vm", "what": "booted Debian bookworm minbase VM (base) and the same VM after installing and starting $packages (launch), captured with vmsynth vm capture",
 "packages": "$packages", "app": "numpy in-place loop on a 64 MiB float64 array (/opt/app/compute.py)",
 "kernel": "$krel", "append": "$append", "accelerator": "$accelerator",
 "memory_mib": $memory_mib, "disk_mib": $disk_mib, "app_at_guest_seconds": $app_at,
 "app_debs": {"count": $app_deb_count, "bytes": $app_deb_bytes}, "base_tree_bytes": $tree_bytes,
 "cached": {"debootstrap": $cached_debootstrap, "downloads": $cached_downloads},
 "seconds": {"debootstrap": $t_debootstrap, "downloads": $t_downloads, "kernel_initrd": $t_kernel_initrd,
             "disk_mkfs": $t_disk, "vm_create": $t_create, "boot_to_base_ready": $t_boot,
             "capture_base": $t_capture_base, "resume_to_install_start": $t_until_install,
             "guest_install": $t_install, "app_start": $t_app_start, "capture_launch": $t_capture_launch,
             "total": $total},
 "bytes": {"base": {"disk_allocated": $(alloc "$out/base/disk.img"), "memory_allocated": $(alloc "$out/base/memory.img"),
                    "devstate": $(stat -c %s "$out/base/devstate.bin")},
           "launch": {"disk_allocated": $(alloc "$out/launch/disk.img"), "memory_allocated": $(alloc "$out/launch/memory.img"),
                      "devstate": $(stat -c %s "$out/launch/devstate.bin")}},
 "vmsynth": "$vmsynth", "date": "$(date -Iseconds)"}
EOF
[[ $keep_work -eq 1 ]] || rm -rf "$work"
step "done in ${total} s"
cat "$out/build.json"
