#!/usr/bin/env bash
# Runs INSIDE the VM started by scripts/vm-tests.sh (do not run it on the host).
#
#   vm-guest.sh STATUS_DIR [libtest args...]
#
# STATUS_DIR is shared read-write with the host (vng --rwdir). It holds `binaries` (one test
# executable per line, written by the host) and receives:
#   booted     guest uptime (s) when this script started: proof the VM booted
#   results    "<exit code> <binary>" per test binary
#   exit-code  0 if every module loaded and every binary passed, else the first failure's
#              code; written last, so its absence means the guest died mid-run
# Deliberately no `set -e`: every binary runs even after a failure, to report them all.
set -uo pipefail

# Kernel modules the VM tier needs. Add here when a new VM test needs another one.
MODULES=(ublk_drv loop dm-mod)
# Per-binary limit; the host has its own limit on the whole VM.
BINARY_TIMEOUT_S=600

status_dir=$1
shift

uptime_s() { cut -d' ' -f1 /proc/uptime; }
log() { printf '[vm %7ss] %s\n' "$(uptime_s)" "$*"; }

uptime_s >"$status_dir/booted"
log "booted $(uname -r) with $(nproc) CPUs, $(free -m | awk '/^Mem:/{print $2}') MiB"

rc=0
for m in "${MODULES[@]}"; do
    if ! modprobe "$m"; then
        log "FAILED: modprobe $m"
        rc=1
    fi
done

export SITREP_IN_VM=1 SITREP_REQUIRE_TIERS=1 TMPDIR=/tmp RUST_BACKTRACE=1
: >"$status_dir/results"
while IFS= read -r bin; do
    [[ -n "$bin" ]] || continue
    log "running $(basename "$bin") $*"
    timeout "$BINARY_TIMEOUT_S" "$bin" "$@"
    r=$?
    [[ $r -eq 124 ]] && log "TIMEOUT: $(basename "$bin") ran longer than ${BINARY_TIMEOUT_S}s"
    echo "$r $bin" >>"$status_dir/results"
    if [[ $r -ne 0 && $rc -eq 0 ]]; then
        rc=$r
    fi
done <"$status_dir/binaries"

log "done, exit code $rc"
echo "$rc" >"$status_dir/exit-code"
exit "$rc"
