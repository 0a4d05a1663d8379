#!/usr/bin/env bash
# The API as an embedder sees it: installs the build tree into a temporary
# prefix, checks the installed layout, builds tests/consumer/consumer.c (C99,
# -Wall -Wextra -Werror) against that prefix twice -- with pkg-config and with
# CMake's find_package(vmsynth) -- and runs both builds on a small pair made
# with the vmsynth command; then builds docs/api.md's C example the way its
# comment says and synthesizes the pair's overlay sent to it over loopback TCP.
#
#   run.sh BUILD_DIR SOURCE_DIR VMSYNTH_BIN VERSION [SANITIZE]
#
# Exits 77 (ctest SKIP_RETURN_CODE) when SANITIZE is set: a plain C program
# cannot link a sanitized libvmsynth; tests/api/api_test.cc covers those builds.
set -euo pipefail
build=$1 src=$2 cli=$3 version=$4 sanitize=${5:-}
if [ -n "$sanitize" ]; then
  echo "skipped: a C consumer cannot link a library built with -fsanitize=$sanitize"
  exit 77
fi
build=$(cd "$build" && pwd) src=$(cd "$src" && pwd)

tmp=$(mktemp -d "${TMPDIR:-/tmp}/vmsynth-consumer.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
prefix=$tmp/prefix
fail() { echo "run.sh: FAIL: $*" >&2; exit 1; }
step() { echo "== $*"; }

step "install $build into $prefix"
cmake --install "$build" --prefix "$prefix" >"$tmp/install.log" || { cat "$tmp/install.log"; fail "cmake --install failed"; }

step "installed layout"
for f in include/vmsynth/vmsynth.h include/vmsynth/version.h lib/libvmsynth.so.$version lib/pkgconfig/vmsynth.pc; do
  [ -f "$prefix/$f" ] || fail "$prefix/$f is not installed"
done
[ "$(readlink "$prefix/lib/libvmsynth.so")" = libvmsynth.so.0 ] ||
  fail "lib/libvmsynth.so should link to libvmsynth.so.0, links to '$(readlink "$prefix/lib/libvmsynth.so")'"
[ "$(readlink "$prefix/lib/libvmsynth.so.0")" = "libvmsynth.so.$version" ] ||
  fail "lib/libvmsynth.so.0 should link to libvmsynth.so.$version, links to '$(readlink "$prefix/lib/libvmsynth.so.0")'"
soname=$(readelf -d "$prefix/lib/libvmsynth.so.$version" | sed -n 's/.*(SONAME).*\[\(.*\)\].*/\1/p')
[ "$soname" = libvmsynth.so.0 ] || fail "SONAME is '$soname', not libvmsynth.so.0"
[ -n "$(find "$prefix/lib/cmake/vmsynth" \( -name vmsynthConfig.cmake -o -name vmsynth-config.cmake \))" ] || fail "no package config in $prefix/lib/cmake/vmsynth/"
[ -n "$(find "$prefix/lib/cmake/vmsynth" -iname '*config*version.cmake')" ] ||
  fail "no package version file in $prefix/lib/cmake/vmsynth/"
# Only the public API: no other headers, no static archives.
extra=$(cd "$prefix" && find include lib -name '*.h' ! -path include/vmsynth/vmsynth.h ! -path include/vmsynth/version.h -o -name '*.a')
[ -z "$extra" ] || fail "installed beside the public API: $extra"
installed_version=$(sed -n 's/^#define VMSYNTH_VERSION_STRING "\(.*\)"$/\1/p' "$prefix/include/vmsynth/version.h")
[ "$installed_version" = "$version" ] || fail "installed version.h says '$installed_version', the project is $version"

step "test data: gen-pair and overlay create"
"$cli" gen-pair --out "$tmp/pair" --memory-mib 16 --disk-mib 32 --seed 7 -q >/dev/null
"$cli" overlay create --base "$tmp/pair/base" --launch "$tmp/pair/launch" -o "$tmp/pair/overlay.vmo" -q >/dev/null

# run_consumer NAME BINARY: runs it in a fresh work directory against the prefix.
run_consumer() {
  local name=$1 bin=$2 lib
  lib=$(LD_LIBRARY_PATH=$prefix/lib ldd "$bin" | awk '$1 == "libvmsynth.so.0" {print $3}')
  [ "$lib" = "$prefix/lib/libvmsynth.so.0" ] || fail "$name: libvmsynth.so.0 resolves to '$lib', not the prefix's"
  readelf -d "$bin" | grep -q 'NEEDED.*\[libvmsynth\.so\.0\]' || fail "$name: does not record NEEDED libvmsynth.so.0"
  mkdir "$tmp/work-$name"
  step "run the $name build"
  LD_LIBRARY_PATH=$prefix/lib "$bin" "$tmp/work-$name" "$tmp/pair/base" "$tmp/pair/launch" "$tmp/pair/overlay.vmo" ||
    fail "the $name build of the consumer failed"
  [ -z "$(ls -A "$tmp/work-$name")" ] || fail "$name: the consumer left $(ls -A "$tmp/work-$name")"
}

# The two builds are independent: both run, each in a subshell that a
# `fail` ends, and the script fails if either did.
with_pkgconfig() {
  step "build with pkg-config"
  export PKG_CONFIG_PATH=$prefix/lib/pkgconfig PKG_CONFIG_LIBDIR=$prefix/lib/pkgconfig
  pc_version=$(pkg-config --modversion vmsynth) || fail "pkg-config does not find vmsynth in $PKG_CONFIG_PATH"
  [ "$pc_version" = "$version" ] || fail "vmsynth.pc says version '$pc_version', the project is $version"
  cflags=$(pkg-config --cflags vmsynth) libs=$(pkg-config --libs vmsynth)
  # The .pc file is relocatable (prefix=${pcfiledir}/../..): compare the
  # directories it names, resolved, with the prefix's.
  inc=$(printf '%s\n' $cflags | sed -n 's/^-I//p' | head -1) lib=$(printf '%s\n' $libs | sed -n 's/^-L//p' | head -1)
  [ -n "$inc" ] && [ "$(realpath "$inc")" = "$(realpath "$prefix/include")" ] ||
    fail "pkg-config --cflags is '$cflags', not the prefix's include directory"
  [ -n "$lib" ] && [ "$(realpath "$lib")" = "$(realpath "$prefix/lib")" ] ||
    fail "pkg-config --libs is '$libs', not the prefix's lib directory"
  # shellcheck disable=SC2086  # word splitting of the flags is intended
  cc -std=c99 -Wall -Wextra -Werror -o "$tmp/consumer-pkgconfig" "$src/tests/consumer/consumer.c" $cflags $libs -pthread ||
    fail "the consumer does not build with pkg-config"
  run_consumer pkgconfig "$tmp/consumer-pkgconfig"
}

with_find_package() {
  step "build with find_package(vmsynth)"
  cmake -S "$src/tests/consumer" -B "$tmp/cmake-build" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF -DCMAKE_FIND_USE_SYSTEM_PACKAGE_REGISTRY=OFF >"$tmp/cmake.log" ||
    { cat "$tmp/cmake.log"; fail "the consumer project does not configure against $prefix"; }
  grep -F -q "from $prefix/lib/cmake/vmsynth" "$tmp/cmake.log" ||
    { cat "$tmp/cmake.log"; fail "find_package(vmsynth) did not find the prefix's package"; }
  cmake --build "$tmp/cmake-build" >"$tmp/build.log" 2>&1 || { cat "$tmp/build.log"; fail "the consumer does not build with find_package"; }
  run_consumer cmake "$tmp/cmake-build/consumer"
}

# docs/api.md's C example, built the way its comment says and run for real:
# the overlay sent over a loopback TCP connection, synthesized as it arrives.
docs_example() {
  step "docs/examples/synthesize_socket.c"
  export PKG_CONFIG_PATH=$prefix/lib/pkgconfig PKG_CONFIG_LIBDIR=$prefix/lib/pkgconfig
  # shellcheck disable=SC2046  # word splitting of the flags is intended
  cc -std=c99 -Wall -Wextra -Werror -o "$tmp/synthesize_socket" "$src/docs/examples/synthesize_socket.c" \
    $(pkg-config --cflags --libs vmsynth) || fail "the docs example does not build"
  local port out=$tmp/example-out i
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  LD_LIBRARY_PATH=$prefix/lib "$tmp/synthesize_socket" "$tmp/pair/base" "$out" "$port" >"$tmp/example.json" &
  local pid=$!
  # Connect once it listens (a refused attempt sends nothing), then send the overlay.
  for i in $(seq 100); do
    if (exec 3>"/dev/tcp/127.0.0.1/$port" && cat "$tmp/pair/overlay.vmo" >&3) 2>/dev/null; then break; fi
    sleep 0.1
  done
  wait "$pid" || fail "the example failed: $(cat "$tmp/example.json")"
  for f in memory.img disk.img; do
    cmp -s "$out/$f" "$tmp/pair/launch/$f" || fail "the example's $f differs from the launch VM's"
  done
}

failed=0
(with_pkgconfig) || failed=1
(with_find_package) || failed=1
(docs_example) || failed=1
[ "$failed" = 0 ] || { echo "run.sh: FAILED" >&2; exit 1; }
echo "run.sh: ok"
