#!/bin/sh
# Collects the runtime image's whole filesystem into a directory:
#   deploy/image/rootfs.sh BINARY CONFIG DIR
# BINARY goes to /usr/local/bin/trident, with exactly the shared libraries `ldd` says it
# loads (and the dynamic loader) at their own paths; CONFIG to /etc/trident/trident.toml;
# the system's CA bundle (upstream TLS without `ca_file` trusts it); /etc/passwd and
# /etc/group naming the non-root user 65532; and /tmp, where Trident keeps its private
# upgrade-socket directory. The Containerfile's build stage runs it, and so do the tests
# on a host-built binary (tests/deploy/test_image.py).
set -eu

if [ $# -ne 3 ]; then
  echo "usage: $0 BINARY CONFIG DIR" >&2
  exit 2
fi
binary=$1
config=$2
root=$3

mkdir -p "$root/usr/local/bin" "$root/etc/trident" "$root/etc/ssl/certs" "$root/tmp"
chmod 1777 "$root/tmp"
cp "$binary" "$root/usr/local/bin/trident"
cp "$config" "$root/etc/trident/trident.toml"

# Lines are `libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)`, or the loader's
# `/lib64/ld-linux-x86-64.so.2 (0x...)`; linux-vdso has no file. `cp -L` copies the
# file a library's symlink names under the name the binary asks for.
ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' |
  while read -r library; do
    mkdir -p "$root$(dirname "$library")"
    cp -L "$library" "$root$library"
  done

cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"

printf 'trident:x:65532:65532:trident:/nonexistent:/sbin/nologin\n' >"$root/etc/passwd"
printf 'trident:x:65532:\n' >"$root/etc/group"
