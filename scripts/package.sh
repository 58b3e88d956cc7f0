#!/usr/bin/env bash
# Builds the Debian package: target/package/sitrep_<version>_amd64.deb. Root not needed.
#
#   scripts/package.sh            # builds the release binary first
#   SITREP_NO_BUILD=1 scripts/package.sh   # packages target/release/sitrep as it is
#
# The tree is staged by hand and packed with `dpkg-deb --root-owner-group` rather than with
# cargo-deb: nothing more to compile in CI, and what goes where is this one file
# (packaging/README.md lists it). Man pages, completions and the config files come from the
# binary itself (`sitrep generate`), so they match its flags.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$SITREP_ROOT"

arch=$(dpkg --print-architecture)

if [[ ${SITREP_NO_BUILD:-0} != 1 ]]; then
    log "cargo build --release -p sitrep-cli"
    cargo build --release -p sitrep-cli
fi
bin=target/release/sitrep
[[ -x $bin ]] || die "$bin missing (cargo build --release -p sitrep-cli)"
# The version cli/Cargo.toml gives the binary (`sitrep 0.1.0`).
version=$("$bin" --version | awk '{print $2}')
[[ -n $version ]] || die "$bin --version printed no version"

# Depends: the packages owning the shared libraries the binary links (ldd), as named on
# this build machine's distribution (libelf1 on Debian 12, libelf1t64 on 13). With merged
# /usr, dpkg knows a file by one of its two paths (and a library by its link or its target).
owner() {
    local lib=$1 real p
    real=$(readlink -f "$lib")
    for p in "$lib" "$real" "/usr${lib#/usr}" "${lib#/usr}" "/usr${real#/usr}" "${real#/usr}"; do
        dpkg -S "$p" 2>/dev/null | head -n1 | cut -d: -f1 | grep . && return
    done
    return 0
}
depends() {
    ldd "$bin" | awk '$3 ~ /^\// {print $3}' | while read -r lib; do owner "$lib"; done |
        sort -u | paste -sd, | sed 's/,/, /g'
}
deps=$(depends)
[[ -n $deps ]] || die "could not tell which packages provide the binary's libraries"

out=target/package
stage=$out/stage
rm -rf "$stage"
mkdir -p "$stage/DEBIAN"
install -D -m 0755 "$bin" "$stage/usr/bin/sitrep"
# Symbols are not shipped (the release profile keeps line tables for backtraces).
strip --strip-debug "$stage/usr/bin/sitrep" 2>/dev/null || true

man=$stage/usr/share/man/man1
"$bin" generate man "$man"
gzip -9n "$man"/*.1

comp=$(mktemp -d)
trap 'rm -rf "$comp"' EXIT
for shell in bash zsh fish; do
    "$bin" generate completions "$shell" "$comp" >/dev/null
done
install -D -m 0644 "$comp/sitrep.bash" "$stage/usr/share/bash-completion/completions/sitrep"
install -D -m 0644 "$comp/_sitrep" "$stage/usr/share/zsh/vendor-completions/_sitrep"
install -D -m 0644 "$comp/sitrep.fish" "$stage/usr/share/fish/vendor_completions.d/sitrep.fish"

for unit in packaging/systemd/*.service; do
    install -D -m 0644 "$unit" "$stage/lib/systemd/system/$(basename "$unit")"
done
for f in agent.env server.env; do
    install -D -m 0644 "packaging/etc/$f" "$stage/etc/sitrep/$f"
done
# The config files from the binary too: every flag with its help and default.
for d in agent server; do
    "$bin" generate config "$d" >"$stage/etc/sitrep/$d.toml"
    chmod 0644 "$stage/etc/sitrep/$d.toml"
done
install -D -m 0644 README.md "$stage/usr/share/doc/sitrep/README.md"
install -D -m 0644 packaging/README.md "$stage/usr/share/doc/sitrep/packaging.md"

for s in postinst prerm postrm; do
    install -m 0755 "packaging/debian/$s" "$stage/DEBIAN/$s"
done
(cd "$stage" && find etc -type f | sed 's|^|/|' | sort) >"$stage/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
cat >"$stage/DEBIAN/control" <<CONTROL
Package: sitrep
Version: $version
Architecture: $arch
Maintainer: sitrep developers <sitrep@example.invalid>
Section: admin
Priority: optional
Installed-Size: $size
Depends: $deps
Recommends: util-linux, e2fsprogs
Homepage: https://example.invalid/sitrep
Description: site recovery for Linux block devices
 sitrep records every change to a block device with an eBPF tracker, ships the
 changes over mutual TLS to a server at another site, and keeps recovery points
 there for failover and failback.
 .
 This package holds the sitrep binary (agent, server and operator CLI), systemd
 units for the agent, the server and tracked ublk disks, man pages and shell
 completions. Units are not enabled on install: configure /etc/sitrep first.
CONTROL

deb=$out/sitrep_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
rm -rf "$stage"
log "built $deb ($deps)"
echo "$deb"
