#!/usr/bin/env bash
# VM tier, reboots: the same two virtio disks (the protected one, and one holding the
# agent's state and the server's store) booted six times under qemu, each boot a new kernel
# boot id (scripts/vm-reboot-guest.sh does the work inside):
#
#   first      protect the disk, write, replicate, stop cleanly (SIGTERM)
#   trusted    the agent resumes with NO resync; write, replicate, replica == source
#   untracked  a write before the agent starts in the new boot → a resync repairs it
#   distrust   --trust-clean-reboot false → a resync although nothing was written
#   killed     the VM dies while replicating (sysrq b)
#   afterkill  → a resync repairs it
#
# No systemd in these VMs (the host's root filesystem, shared read-only, and virtme-ng's
# init): the daemons are started and stopped by the guest script as the units would.
#
#   scripts/vm-reboot-test.sh
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"
trap 'die "unexpected failure at line $LINENO: $BASH_COMMAND"' ERR
cd "$SITREP_ROOT"

ensure_vng_on_path
kernel="$(scripts/vm-kernel.sh)"
dir="$SITREP_ROOT/target/vm-reboot"
rm -rf "$dir"
mkdir -p "$dir"

log "building the sitrep binary (target/debug/sitrep)"
cargo build -q -p sitrep-cli
sitrep=target/debug/sitrep
"$sitrep" certs init --dir "$dir/pki-server" --name siteb --san 127.0.0.1 >/dev/null
"$sitrep" certs issue --ca "$dir/pki-server" --name sitea --out "$dir/pki-agent" >/dev/null
truncate -s 64M "$dir/prot.img"
truncate -s 512M "$dir/data.img"

drive() { printf -- '-drive file=%s,if=none,id=%s,format=raw -device virtio-blk-pci,drive=%s,serial=%s ' "$1" "$2" "$2" "$3"; }
qemu_opts="$(drive "$dir/prot.img" p sitrep-prot)$(drive "$dir/data.img" d sitrep-data)"

for phase in first trusted untracked distrust killed afterkill; do
    guest_cmd="$(printf '%q ' "$SITREP_ROOT/scripts/vm-reboot-guest.sh" "$phase" "$dir")"
    log "boot: $phase"
    rc=0
    timeout --kill-after=30 600 vng --run "$kernel" --disable-kvm --memory 2G --cpus 2 \
        --rwdir="$dir" --qemu-opts="$qemu_opts" --exec "$guest_cmd" </dev/null \
        >"$dir/vm-$phase.log" 2>&1 || rc=$?
    tail -n 5 "$dir/vm-$phase.log"
    res=$(cat "$dir/result-$phase" 2>/dev/null || true)
    if [[ $res != ok ]]; then
        die "clean-reboot test, boot '$phase': ${res:-the guest did not finish (vng exit $rc)}; logs in $dir"
    fi
done
log "reboot test passed: a trusted clean reboot needed no resync; an untracked write, --trust-clean-reboot false and a killed VM did"
