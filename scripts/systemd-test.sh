#!/usr/bin/env bash
# The package's units under a real systemd as PID 1: the host's /usr booted in a container
# (systemd-nspawn --volatile=yes: a tmpfs root, the host's /usr read-only), with the package
# installed on the host first, a loop device and the config in /etc/sitrep handed in.
#
#   sudo scripts/systemd-test.sh
#
# The protected disk carries an ext4 filesystem that systemd mounts at boot (/srv/p), as it
# would from /etc/fstab. systemd ignores fstab's device entries in a container, so the test
# hands in the unit systemd-fstab-generator makes of such a line (srv-p.mount: ordered after
# local-fs-pre.target, before local-fs.target, pulled in by local-fs.target); its ordering
# against the agent's unit is the same as on a real boot.
#
# Two boots of the container, scripts/systemd-test-guest.sh (a oneshot unit pulled in by
# systemd.wants=) checking inside:
#   first  both daemons come up through their units (Type=notify) and the agent is tracking
#          before the filesystem is mounted; the agent protects the disk its config file
#          declares and replicates file writes; it survives `systemctl reload` (same process)
#          and `systemctl restart` (no resync); then the container powers off with the
#          filesystem mounted. The shutdown must unmount it before it stops the agent (read
#          off the console), and the agent must leave its clean-stop record.
#   again  the agent continues the chain from the clean stop with no resync, so the
#          unmount's writes at the last shutdown were tracked (an untracked write would fail
#          the clean-stop check and cost a resync); the mount's writes at this boot are
#          tracked too. Once the filesystem is unmounted, replica == source, and the
#          replica's filesystem is clean and holds the first boot's files.
# nspawn needs `--system-call-filter='bpf perf_event_open'` for the tracker and the loop
# device bound in.
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
# No lazy initialisation: the kernel would zero inode tables in the background after the
# mount, and the test compares the device with the replica once it is unmounted.
mkfs.ext4 -q -E lazy_itable_init=0,lazy_journal_init=0 "$loopdev"
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

# What systemd-fstab-generator makes of "$loopdev /srv/p ext4 defaults 0 0" in /etc/fstab.
mkdir -p "$work/units/local-fs.target.wants"
cat >"$work/units/srv-p.mount" <<EOF
[Unit]
Documentation=man:fstab(5) man:systemd-fstab-generator(8)
SourcePath=/etc/fstab
Before=local-fs.target

[Mount]
What=$loopdev
Where=/srv/p
Type=ext4
Options=defaults
EOF
ln -s ../srv-p.mount "$work/units/local-fs.target.wants/srv-p.mount"
cp scripts/systemd-test-guest.sh "$work/out/guest.sh"

# boot PHASE — boot the container once, the test unit in PHASE; console in console-PHASE.log.
boot() {
    local phase=$1 rc=0 res
    cat >"$work/units/sitrep-systemd-test.service" <<EOF
[Unit]
Description=sitrep units test ($phase)
After=sitrep-agent.service sitrep-server.service multi-user.target
[Service]
Type=oneshot
Environment=LOOPDEV=$loopdev PHASE=$phase
ExecStart=/bin/bash /probe/guest.sh
StandardOutput=journal+console
EOF
    rm -f "$work/out/result"
    log "booting systemd in a container, boot '$phase' (log: $work/console-$phase.log)"
    timeout --kill-after=30 300 systemd-nspawn -q --register=no --keep-unit --directory=/ \
        --volatile=yes --boot --capability=all --system-call-filter='bpf perf_event_open' \
        --bind=/dev/loop-control --bind="$loopdev" --bind=/etc/sitrep \
        --bind="$work/bpffs:/sys/fs/bpf" --bind="$work/var:/var/lib/sitrep" \
        --bind="$work/out:/probe" --bind-ro="$work/units:/etc/systemd/system" \
        -- systemd.firstboot=off systemd.mask=systemd-networkd-wait-online.service \
        systemd.wants=sitrep-server.service \
        systemd.wants=sitrep-agent.service systemd.wants=sitrep-systemd-test.service \
        </dev/null >"$work/console-$phase.log" 2>&1 || rc=$?
    res=$(cat "$work/out/result" 2>/dev/null || true)
    if [[ $res != ok ]]; then
        tail -n 40 "$work/console-$phase.log" >&2
        die "units under systemd, boot '$phase': ${res:-the test unit did not finish (nspawn exit $rc)}"
    fi
}

boot first
# The agent's unit stopped it at the container's shutdown: a clean stop leaves its record.
state=$(find "$work/var/agent/disks/sd" -name tracker-state.json | head -n1)
[[ -n $state ]] || die "no clean-stop record: the agent was not stopped cleanly at shutdown"
# ... and only after the protected filesystem was unmounted (the unmount writes the
# superblock and the journal: an agent stopped first would miss them on a real reboot).
plain=$(sed 's/\x1b\[[0-9;]*m//g' "$work/console-first.log")
unmounted=$(grep -n 'Unmounted srv-p.mount' <<<"$plain" | head -n1 | cut -d: -f1)
# (The last stop: the test restarted the agent once before.)
stopped=$(grep -n 'Stopped sitrep-agent' <<<"$plain" | tail -n1 | cut -d: -f1)
[[ -n $unmounted && -n $stopped ]] ||
    die "the first boot's console shows no unmount of /srv/p or no stop of the agent"
((unmounted < stopped)) ||
    die "at shutdown the agent stopped (console line $stopped) before /srv/p was unmounted (line $unmounted)"

boot again
log "units under systemd PID 1: ok (tracking from before the protected filesystem's mount until after its unmount, ready notification, config-declared disk replicated, reload, restart and a second boot with no resync, clean stop at shutdown)"
