#!/usr/bin/env bash
# Runs INSIDE the VMs started by scripts/vm-reboot-test.sh (do not run it on the host): one
# boot of the clean-reboot test per call.
#
#   vm-reboot-guest.sh PHASE DIR
#
# The VM has two virtio disks that outlive it: serial `sitrep-prot` (the protected disk) and
# serial `sitrep-data` (ext4: the agent's state, the server's store). DIR is shared read-write
# with the host: the certificates, and this script's result (`result-PHASE`: "ok" or why not)
# and log. The server and the agent run in the VM, on loopback.
#
#   first     protect the disk, write, wait until replicated, stop both daemons cleanly
#   trusted   reboot: the agent resumes the chain with no resync; write, replicate, compare
#   untracked reboot with a write made before the agent starts: a resync must repair it
#   distrust  reboot with --trust-clean-reboot false: a resync although nothing was written
#   killed    write while replicating, then the VM dies (sysrq b: no stop, no sync)
#   afterkill reboot after that: the agent did not stop cleanly, so a resync repairs it
#
# Each phase but `killed` ends with replica == source, byte for byte, with both daemons
# stopped cleanly.
set -uo pipefail

phase=$1
dir=$2
sitrep="$(dirname "$0")/../target/debug/sitrep"
result="$dir/result-$phase"
: >"$result"

uptime_s() { cut -d' ' -f1 /proc/uptime; }
log() { printf '[vm %7ss] %s\n' "$(uptime_s)" "$*"; }
fail() {
    log "FAIL: $*"
    echo "$*" >"$result"
    [[ -f /tmp/agent.log ]] && cp /tmp/agent.log "$dir/agent-$phase.log"
    [[ -f /tmp/server.log ]] && cp /tmp/server.log "$dir/server-$phase.log"
    exit 1
}

# The disks by serial (no udev here: sysfs).
disk_with_serial() {
    local s
    for s in /sys/block/*/serial; do
        [[ $(cat "$s" 2>/dev/null) == "$1" ]] && { echo "/dev/$(basename "$(dirname "$s")")"; return; }
    done
}
prot=$(disk_with_serial sitrep-prot)
data=$(disk_with_serial sitrep-data)
[[ -n $prot && -n $data ]] || fail "virtio disks sitrep-prot / sitrep-data not found"
log "booted $(uname -r); boot id $(cat /proc/sys/kernel/random/boot_id); protected $prot, data $data"

mnt=/tmp/sitrep-data # the root filesystem is the host's, read-only
mkdir -p "$mnt"
if [[ $phase == first ]]; then
    mkfs.ext4 -q -F "$data" || fail "mkfs.ext4 $data"
fi
mount "$data" "$mnt" || fail "mount $data"
mkdir -p "$mnt/state" "$mnt/store"

agent_sock=/tmp/agent.sock
server_sock=/tmp/server.sock
trust=true
[[ $phase == distrust ]] && trust=false

start_server() {
    "$sitrep" server --store "$mnt/store" --pki "$dir/pki-server" --listen 127.0.0.1:9443 \
        --socket "$server_sock" 2>>/tmp/server.log &
    server_pid=$!
}
start_agent() {
    "$sitrep" agent --state "$mnt/state" --pki "$dir/pki-agent" --socket "$agent_sock" \
        --resync-window always --trust-clean-reboot "$trust" 2>>/tmp/agent.log &
    agent_pid=$!
}
# Stops a daemon with SIGTERM (a clean stop) and waits for it.
stop() {
    kill -TERM "$1" 2>/dev/null
    wait "$1" || fail "a daemon exited with status $? on SIGTERM"
}
ctl() { "$sitrep" "$@" --socket "$agent_sock" --json; }
# Waits until the agent answers on its socket (it loads BPF and resumes its disks first).
agent_ready() {
    local i
    for i in $(seq 300); do
        ctl status >/dev/null 2>&1 && return
        sleep 0.2
    done
    fail "the agent did not start: $(tail -n 5 /tmp/agent.log)"
}
status_of() {
    local i
    for i in $(seq 300); do
        if out=$(ctl status 2>/dev/null) && [[ $(jq -r '.disks[0].name // empty' <<<"$out") == r ]]; then
            jq -c '.disks[0]' <<<"$out"
            return
        fi
        sleep 0.2
    done
    fail "the agent never reported disk r"
}
# Random data at a few 64 KiB-aligned offsets of the protected disk, direct I/O.
scribble() {
    local i
    for i in $(seq "$1"); do
        dd if=/dev/urandom of="$prot" bs=64k count=1 seek=$((RANDOM % 1000)) oflag=direct \
            conv=notrunc status=none || fail "writing $prot"
    done
}
# Both daemons stopped cleanly, then the replica compared with the source.
finish() {
    stop "$agent_pid"
    stop "$server_pid"
    cmp "$prot" "$mnt/store/disks/r/replica.img" || fail "replica differs from the source"
    log "replica == source"
}

start_server
case $phase in
first)
    start_agent
    agent_ready
    ctl protect "$prot" --to 127.0.0.1:9443 --name r >/dev/null || fail "protect"
    scribble 20
    ctl wait r --timeout 600 >/dev/null || fail "wait after the first writes"
    ;;
trusted | distrust)
    start_agent
    st=$(status_of)
    log "after the reboot: $st"
    scribble 10
    ctl wait r --timeout 600 >/dev/null || fail "wait after the reboot"
    st=$(ctl status | jq -c '.disks[0]')
    if [[ $phase == trusted ]]; then
        [[ $(jq -r '.resyncs_completed' <<<"$st") == 0 && $(jq -r '.resync' <<<"$st") == null ]] ||
            fail "a resync after a trusted clean reboot: $st"
        grep -q "tracking gap" /tmp/agent.log && fail "a tracking gap after a trusted clean reboot"
    else
        grep -q "clean reboots are not trusted" /tmp/agent.log ||
            fail "no gap with --trust-clean-reboot false"
        [[ $(jq -r '.resyncs_completed' <<<"$st") -ge 1 ]] || fail "no resync: $st"
    fi
    ;;
killed)
    start_agent
    status_of >/dev/null
    ctl wait r --timeout 600 >/dev/null || fail "wait before the kill"
    scribble 10
    # The result first (the share is the host's), then the VM dies mid-flight.
    echo ok >"$result"
    sync
    log "phase killed: sysrq b"
    echo 1 >/proc/sys/kernel/sysrq
    echo b >/proc/sysrq-trigger
    sleep 60
    fail "still running after sysrq b"
    ;;
afterkill)
    start_agent
    status_of >/dev/null
    ctl wait r --timeout 600 >/dev/null || fail "wait after the kill"
    st=$(ctl status | jq -c '.disks[0]')
    grep -q "tracking gap" /tmp/agent.log || fail "no tracking gap after the VM was killed"
    [[ $(jq -r '.resyncs_completed' <<<"$st") -ge 1 ]] || fail "no resync after the kill: $st"
    ;;
untracked)
    # Written in this boot before tracking began: the agent must not trust the clean stop.
    scribble 3
    start_agent
    status_of >/dev/null
    ctl wait r --timeout 600 >/dev/null || fail "wait after the untracked write"
    st=$(ctl status | jq -c '.disks[0]')
    grep -q "before tracking began" /tmp/agent.log || fail "no gap for the untracked write"
    [[ $(jq -r '.resyncs_completed' <<<"$st") -ge 1 ]] || fail "no resync: $st"
    ;;
*) fail "unknown phase $phase" ;;
esac
finish
umount "$mnt" || fail "umount"
cp /tmp/agent.log "$dir/agent-$phase.log"
echo ok >"$result"
log "phase $phase: ok"
