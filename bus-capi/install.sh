#!/bin/sh
# Installs libshmbus.so, libshmbus.a, shmbus.h and shmbus.pc under PREFIX
# (default /usr/local), from the build in BUILD (default target/release:
# run `cargo build --release -p bus-capi` first). DESTDIR is honoured.
#
#   bus-capi/install.sh [PREFIX [BUILD]]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
prefix=${1:-/usr/local}
case $prefix in /*) ;; *) prefix=$(pwd)/$prefix ;; esac
build=${2:-$here/../target/release}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$here/../Cargo.toml" | head -n 1)
for f in libshmbus.so libshmbus.a; do
  [ -f "$build/$f" ] || { echo "install.sh: no $build/$f: run cargo build --release -p bus-capi first" >&2; exit 1; }
done
dest=${DESTDIR:-}$prefix
mkdir -p "$dest/lib/pkgconfig" "$dest/include"
install -m 755 "$build/libshmbus.so" "$dest/lib/"
install -m 644 "$build/libshmbus.a" "$dest/lib/"
install -m 644 "$here/include/shmbus.h" "$dest/include/"
sed -e "s#@PREFIX@#$prefix#" -e "s#@VERSION@#$version#" "$here/shmbus.pc.in" > "$dest/lib/pkgconfig/shmbus.pc"
# A new library in a directory of the loader's cache (/usr/local/lib, say)
# is found only once the cache knows it.
if [ -z "${DESTDIR:-}" ] && [ "$(id -u)" = 0 ] && command -v ldconfig >/dev/null; then
  ldconfig
fi
echo "installed libshmbus $version under $dest"
