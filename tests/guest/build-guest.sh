#!/bin/sh
# Builds vmsynth's tiny test guest from Debian packages.
#
#   tests/guest/build-guest.sh OUTDIR
#
# OUTDIR receives:
#   vmlinuz     the Debian cloud kernel (linux-image-cloud-amd64 -> its versioned package)
#   initrd.img  busybox-static + the virtio-blk/ext4 modules + /init (cpio newc, gzip)
#   disk.img    a 64 MiB raw ext4 data disk (label VMSYNTH) made with mkfs.ext4 -d
#   append.txt  the kernel command line to boot it with
#
# The guest's /init mounts the data disk on /data and runs a counter: every
# ~0.5 s it prints "COUNTER n" on the serial console (ttyS0) and writes n to
# /data/counter. When the counter reaches APP_AT (default 20; kernel arg
# vmsynth.app_at=N) it starts a second process ("the app") that appends to
# /data/app.log, and writes /data/launched. Every 4 ticks it prints
# "STATUS counter=n app=running|absent marker=present|absent". The line
# "VMSYNTH-GUEST BOOT" is printed exactly once per cold boot, so a resumed
# guest is recognisable by its absence.
#
# Idempotent: downloads are cached under ${VMSYNTH_CACHE:-$HOME/.cache/vmsynth}/guest
# and OUTDIR files are rebuilt only when missing (or when this script is newer).
# Needs: apt-get (Debian mirror), dpkg-deb, depmod (kmod), cpio, gzip, mkfs.ext4, busybox-static.
set -eu

if [ $# -ne 1 ]; then
  echo "usage: $0 OUTDIR" >&2
  exit 2
fi
OUT=$1
CACHE=${VMSYNTH_CACHE:-$HOME/.cache/vmsynth}/guest
SELF=$(readlink -f "$0")
mkdir -p "$OUT" "$CACHE"
OUT=$(readlink -f "$OUT")

up_to_date() {  # up_to_date FILE: exists and newer than this script
  [ -s "$1" ] && [ "$1" -nt "$SELF" ]
}

if up_to_date "$OUT/vmlinuz" && up_to_date "$OUT/initrd.img" && up_to_date "$OUT/disk.img" &&
   up_to_date "$OUT/append.txt"; then
  echo "guest up to date in $OUT"
  exit 0
fi

# The cache is shared: tests running at once (ctest -j) each build a guest.
# One at a time fills it (flock, util-linux); the others wait, then reuse it.
exec 9>"$CACHE/.lock"
flock 9

for tool in apt-get dpkg-deb cpio gzip mkfs.ext4; do
  command -v "$tool" >/dev/null 2>&1 || { echo "$0: missing tool: $tool" >&2; exit 1; }
done
BUSYBOX=/bin/busybox
if ! file -L "$BUSYBOX" 2>/dev/null | grep -q 'statically linked'; then
  # Fall back to the busybox-static package's binary if /bin/busybox is dynamic.
  if [ ! -x "$CACHE/busybox-static/bin/busybox" ]; then
    (cd "$CACHE" && apt-get download busybox-static >/dev/null)
    dpkg-deb -x "$(ls -t "$CACHE"/busybox-static_*.deb | head -1)" "$CACHE/busybox-static"
  fi
  BUSYBOX=$CACHE/busybox-static/bin/busybox
fi

# --- kernel: resolve the metapackage to the real versioned image package ---
if [ ! -f "$CACHE/kernel.ok" ]; then
  (cd "$CACHE" && rm -f linux-image-*.deb && apt-get download linux-image-cloud-amd64)
  META=$(ls "$CACHE"/linux-image-cloud-amd64_*.deb | head -1)
  REAL=$(dpkg-deb -f "$META" Depends | tr ',' '\n' | sed 's/[ (].*//;s/^ *//' |
         grep '^linux-image-[0-9]' | head -1)
  [ -n "$REAL" ] || { echo "$0: cannot resolve the kernel package from $META" >&2; exit 1; }
  (cd "$CACHE" && apt-get download "$REAL")
  rm -rf "$CACHE/kernel"
  dpkg-deb -x "$(ls "$CACHE"/"$REAL"_*.deb | head -1)" "$CACHE/kernel"
  echo "$REAL" > "$CACHE/kernel.ok"
fi
KREL=$(ls "$CACHE/kernel/lib/modules" | head -1)
MODDIR=$CACHE/kernel/lib/modules/$KREL
# The .deb ships no modules.dep (the postinst runs depmod); generate it in the cache.
if [ ! -s "$MODDIR/modules.dep" ]; then
  DEPMOD=$(command -v depmod || echo /usr/sbin/depmod)
  [ -x "$DEPMOD" ] || { echo "$0: depmod not found (apt-get install -y kmod)" >&2; exit 1; }
  "$DEPMOD" -b "$CACHE/kernel" "$KREL"
fi
flock -u 9  # the cache is complete; what follows writes only OUT
cp "$CACHE/kernel/boot/vmlinuz-$KREL" "$OUT/vmlinuz.tmp"
mv "$OUT/vmlinuz.tmp" "$OUT/vmlinuz"

# --- initramfs ---
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/bin" "$STAGE/dev" "$STAGE/proc" "$STAGE/sys" "$STAGE/data" "$STAGE/tmp" \
         "$STAGE/lib/modules"
cp "$BUSYBOX" "$STAGE/bin/busybox"

# Modules for virtio-blk + ext4, with their dependencies in load order
# (modules.dep lists a module's dependencies; built-in ones are absent).
: > "$STAGE/lib/modules/load-order"
add_module() {  # add_module NAME: appends NAME's deps, then NAME, to load-order
  local name rel deps d file
  name=$1
  rel=$(grep -E "(^|/)${name}\.ko(\.xz|\.zst)?:" "$MODDIR/modules.dep" | head -1 | cut -d: -f1) || true
  if [ -z "$rel" ]; then
    if grep -qE "/${name}\.ko\$" "$MODDIR/modules.builtin" 2>/dev/null; then return 0; fi
    echo "$0: module $name is neither built in nor in modules.dep" >&2
    exit 1
  fi
  deps=$(grep -E "^${rel}:" "$MODDIR/modules.dep" | cut -d: -f2)
  # modules.dep lists dependencies so that the last one must be loaded first.
  for d in $(echo $deps | tr ' ' '\n' | tac); do
    add_module "$(basename "$d" | sed 's/\.ko.*//')"
  done
  file=$(basename "$rel")
  if ! grep -qx "$file" "$STAGE/lib/modules/load-order"; then
    case "$file" in
      *.ko.xz) xz -dc "$MODDIR/$rel" > "$STAGE/lib/modules/${file%.xz}"; file=${file%.xz} ;;
      *.ko.zst) zstd -qdc "$MODDIR/$rel" > "$STAGE/lib/modules/${file%.zst}"; file=${file%.zst} ;;
      *) cp "$MODDIR/$rel" "$STAGE/lib/modules/$file" ;;
    esac
    grep -qx "$file" "$STAGE/lib/modules/load-order" || echo "$file" >> "$STAGE/lib/modules/load-order"
  fi
}
# virtio_ring must come before virtio; list it explicitly first.
for m in virtio_ring virtio virtio_pci virtio_blk crc16 mbcache jbd2 ext4; do
  add_module "$m"
done

cat > "$STAGE/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /lib/modules/load-order); do
  insmod /lib/modules/$m 2>/dev/null
done
APP_AT=20
for a in $(cat /proc/cmdline); do
  case $a in vmsynth.app_at=*) APP_AT=${a#vmsynth.app_at=} ;; esac
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
if ! mount -t ext4 /dev/vda /data; then
  echo "VMSYNTH-GUEST ERROR cannot mount /dev/vda"
fi
echo "VMSYNTH-GUEST BOOT app_at=$APP_AT"
n=0
while true; do
  n=$((n + 1))
  echo "COUNTER $n"
  echo $n > /data/counter
  if [ $n -eq $APP_AT ]; then
    # The "app": a second process that keeps its own state on the disk.
    sh -c 'k=0; while true; do k=$((k + 1)); echo "app tick $k" >> /data/app.log; sleep 1; done' &
    echo $! > /tmp/app.pid
    echo "launched at counter $n" > /data/launched
    sync
    echo "APP STARTED pid=$(cat /tmp/app.pid)"
  fi
  if [ $((n % 4)) -eq 0 ]; then
    app=absent
    [ -f /tmp/app.pid ] && kill -0 $(cat /tmp/app.pid) 2>/dev/null && app=running
    marker=absent
    [ -f /data/launched ] && marker=present
    echo "STATUS counter=$n app=$app marker=$marker"
    sync
  fi
  sleep 0.5
done
INIT
chmod 755 "$STAGE/init"
(cd "$STAGE" && find . | sort | cpio -o -H newc --quiet | gzip -6 > "$OUT/initrd.img.tmp")
mv "$OUT/initrd.img.tmp" "$OUT/initrd.img"

# --- data disk ---
DSTAGE=$STAGE/diskroot
mkdir -p "$DSTAGE"
echo "vmsynth test guest data disk" > "$DSTAGE/README"
rm -f "$OUT/disk.img.tmp"
mkfs.ext4 -q -F -L VMSYNTH -d "$DSTAGE" "$OUT/disk.img.tmp" 64M >/dev/null
mv "$OUT/disk.img.tmp" "$OUT/disk.img"

echo "console=ttyS0 panic=-1 quiet" > "$OUT/append.txt"
echo "guest built in $OUT (kernel $KREL)"
