#!/usr/bin/env bash
# The main job, end to end on one machine (root): a server and an agent on loopback, a loop
# device protected over mutual TLS, writes to it, `status`, wait for lag 0, and proof that
# the replica equals the source byte for byte.
#
#   sudo scripts/quickstart.sh [WORKDIR]      (default: a fresh temporary directory)
#
# On a fresh Debian 12 machine with only the Rust toolchain it first installs the build's
# packages (clang, libelf-dev, ...: `scripts/install-deps.sh --build`), so it is the README's
# first command with nothing typed before it.
# Everything it starts is stopped on exit (daemons, loop device); WORKDIR keeps the logs.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) -eq 0 ]] || { echo "quickstart: run as root (eBPF tracking, loop devices)" >&2; exit 1; }

echo "== installing what the build needs (scripts/install-deps.sh --build; ~1 s when present)"
scripts/install-deps.sh --build

echo "== building sitrep (release)"
cargo build --release -q -p sitrep-cli
sitrep=$PWD/target/release/sitrep

work=${1:-$(mktemp -d /tmp/sitrep-quickstart.XXXXXX)}
mkdir -p "$work"
port=${SITREP_QUICKSTART_PORT:-19443}
pids=()
loopdev=
cleanup() {
    # The demo's protection ends with it: the agent's crash sentinel (pinned in bpffs, kept
    # across a stop so that a restart re-ships only what changed) goes with its last disk.
    [[ -S $work/agent.sock ]] && "$sitrep" unprotect quickstart --socket "$work/agent.sock" \
        >/dev/null 2>&1 || true
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [[ -n $loopdev ]] && losetup -d "$loopdev" 2>/dev/null || true
}
trap cleanup EXIT

echo "== 1. a private CA on the 'secondary', a certificate for the 'primary'"
"$sitrep" certs init --dir "$work/pki-secondary" --name secondary --san 127.0.0.1 --force
"$sitrep" certs issue --ca "$work/pki-secondary" --name primary --out "$work/pki-primary" --force

echo
echo "== 2. start the server (secondary) and the agent (primary), both on loopback"
"$sitrep" server --listen "127.0.0.1:$port" --store "$work/store" --pki "$work/pki-secondary" \
    --socket "$work/server.sock" 2>"$work/server.log" &
pids+=($!)
"$sitrep" agent --state "$work/state" --pki "$work/pki-primary" --socket "$work/agent.sock" \
    --retry-unit 1 2>"$work/agent.log" &
pids+=($!)
for _ in $(seq 100); do [[ -S $work/agent.sock && -S $work/server.sock ]] && break; sleep 0.1; done

echo
echo "== 3. a 256 MiB disk (a loop device over a sparse file) with 64 MiB of data"
truncate -s 256M "$work/disk.img"
loopdev=$(losetup -f --show "$work/disk.img")
dd if=/dev/urandom of="$loopdev" bs=1M count=64 seek=32 oflag=direct status=none
echo "$loopdev"

echo
echo "== 4. protect it: tracking starts, then the initial copy (zero regions are not sent)"
"$sitrep" protect "$loopdev" --to "127.0.0.1:$port" --name quickstart --socket "$work/agent.sock"
"$sitrep" wait quickstart --socket "$work/agent.sock" >/dev/null
"$sitrep" jobs --socket "$work/agent.sock"

echo
echo "== 5. write to the protected disk while it replicates continuously"
if command -v fio >/dev/null; then
    fio --name=quickstart --filename="$loopdev" --rw=randwrite --bs=4k --direct=1 \
        --size=256M --io_size=32M --iodepth=16 --ioengine=libaio --output=/dev/null
else
    dd if=/dev/urandom of="$loopdev" bs=1M count=32 seek=160 oflag=direct status=none
fi
"$sitrep" status --socket "$work/agent.sock"

echo
echo "== 6. wait until every change made so far is applied on the replica (lag 0)"
"$sitrep" wait quickstart --socket "$work/agent.sock"
"$sitrep" status --socket "$work/server.sock"

echo
echo "== 7. prove it: the replica equals the source, byte for byte"
blockdev --flushbufs "$loopdev"
cmp "$loopdev" "$work/store/disks/quickstart/replica.img"
echo "replica == source ($(sha256sum < "$loopdev" | cut -c1-16)…)"

echo
echo "== done; logs and the replica are in $work"
