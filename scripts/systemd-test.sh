#!/usr/bin/env bash
# The package's units under a real systemd as PID 1: the host's /usr booted in a container
# (systemd-nspawn --volatile=yes: a tmpfs root, the host's /usr read-only), with the package
# installed on the host first, a loop device and the config in /etc/sitrep handed in.
#
#   sudo scripts/systemd-test.sh
#
# Inside, scripts/systemd-test-guest.sh (a oneshot unit pulled in by systemd.wants=) checks
# that both daemons come up through their units (Type=notify), the agent protects the disk
# its config file declares, replicates writes, survives `systemctl reload` (same process) and
# `systemctl restart` (no resync), and that the replica equals the source; then it powers the
# container off. After it exits, the agent's clean-stop record proves the unit stopped it
# cleanly at shutdown. nspawn needs `--system-call-filter='bpf perf_event_open'` for the
# tracker and the loop device bound in.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"
trap 'die "unexpected failure at line $LINENO: $BASH_COMMAND"' ERR
cd "$SITREP_ROOT"

[[ $(id -u) -eq 0 ]] || die "must run as root (it installs the package and boots a container)"
command -v systemd-nspawn >/dev/null || die "systemd-nspawn missing; run scripts/install-deps.sh"

work=/var/tmp/sitrep-systemd-test
loopdev=
cleanup() {
    [[ -n $loopdev ]] && losetup -d "$loopdev" 2>/dev/null || true
    umount "$work/bpffs" 2>/dev/null || true
    DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq sitrep >/dev/null 2>&1 || true
}
trap cleanup EXIT
umount "$work/bpffs" 2>/dev/null || true
rm -rf "$work"
mkdir -p "$work/out" "$work/var" "$work/bpffs"
# A bpffs from the host namespace, as systemd mounts /sys/fs/bpf at boot on a real host (in
# the container /sys is read-only and nothing mounts it): the agent's crash sentinel pins
# there and survives a restart of the unit.
mount -t bpf bpf "$work/bpffs"

if [[ ${SITREP_NO_BUILD:-0} != 1 ]]; then
    scripts/package.sh
else
    SITREP_NO_BUILD=1 scripts/package.sh
fi
deb=$(ls -t target/package/sitrep_*_amd64.deb | head -n1)
log "apt-get install ./$deb (on the host: the container sees its /usr)"
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "./$deb" >/dev/null

truncate -s 64M "$work/disk.img"
loopdev=$(losetup -f --show "$work/disk.img")
dd if=/dev/urandom of="$loopdev" bs=1M count=8 seek=4 oflag=direct status=none
sitrep certs init --dir /etc/sitrep/pki --name systemd-test --san 127.0.0.1 --force >/dev/null
# The packaged files, with the test's listen address and disk.
sed -i 's|^#listen = .*|listen = "127.0.0.1:19543"|' /etc/sitrep/server.toml
# The container's network is the host's: its first connection needs no retry schedule.
sed -i 's|^#retry_unit = .*|retry_unit = 1|' /etc/sitrep/agent.toml
cat >>/etc/sitrep/agent.toml <<EOF

[[disk]]
device = "$loopdev"
to = "127.0.0.1:19543"
name = "sd"
EOF

cat >"$work/sitrep-systemd-test.service" <<EOF
[Unit]
Description=sitrep units test
After=sitrep-agent.service sitrep-server.service multi-user.target
[Service]
Type=oneshot
Environment=LOOPDEV=$loopdev
ExecStart=/bin/bash /probe/guest.sh
StandardOutput=journal+console
EOF
cp scripts/systemd-test-guest.sh "$work/out/guest.sh"

log "booting systemd in a container (log: $work/console.log)"
rc=0
timeout --kill-after=30 300 systemd-nspawn -q --register=no --keep-unit --directory=/ \
    --volatile=yes --boot --capability=all --system-call-filter='bpf perf_event_open' \
    --bind=/dev/loop-control --bind="$loopdev" --bind=/etc/sitrep --bind="$work/bpffs:/sys/fs/bpf" \
    --bind="$work/var:/var/lib/sitrep" --bind="$work/out:/probe" \
    --bind-ro="$work/sitrep-systemd-test.service:/etc/systemd/system/sitrep-systemd-test.service" \
    -- systemd.firstboot=off systemd.mask=systemd-networkd-wait-online.service \
    systemd.wants=sitrep-server.service \
    systemd.wants=sitrep-agent.service systemd.wants=sitrep-systemd-test.service \
    </dev/null >"$work/console.log" 2>&1 || rc=$?
res=$(cat "$work/out/result" 2>/dev/null || true)
if [[ $res != ok ]]; then
    tail -n 40 "$work/console.log" >&2
    die "units under systemd: ${res:-the test unit did not finish (nspawn exit $rc)}"
fi
# The agent's unit stopped it at the container's shutdown: a clean stop leaves its record.
state=$(find "$work/var/agent/disks/sd" -name tracker-state.json | head -n1)
[[ -n $state ]] || die "no clean-stop record: the agent was not stopped cleanly at shutdown"
log "units under systemd PID 1: ok (ready notification, config-declared disk replicated, reload, restart with no resync, clean stop at shutdown)"
