#!/usr/bin/env bash
# Checksum resync benchmark: sitrep's resync against `rsync --inplace --no-whole-file` over
# the same link (a veth pair between two network namespaces), on an image pair where P % of
# the 4 KiB blocks differ, scattered. Reports wall time and bytes on the wire.
#
# Targets (issue): sitrep's time <= 1/3 of rsync's; sitrep's wire bytes <= 1.1 x (differing
# bytes + digests). Run `benches/resync/run.sh --help` for the options.
set -euo pipefail
export LC_ALL=C # EPOCHREALTIME and awk with a '.' decimal point
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/../../scripts/lib.sh"
here="$SITREP_ROOT/benches/resync"

usage() {
    cat <<EOF
Usage: benches/resync/run.sh [OPTIONS]          (as root)

Checksum resync benchmark: sitrep resync vs rsync --inplace --no-whole-file (no --checksum)
between two network namespaces joined by a veth pair (site A 10.77.0.1, site B 10.77.0.2).
For each percent P and rep: an image with P % of its 4 KiB blocks changed (scattered,
seeded) is brought back in sync with its unchanged copy on site B, by each tool in turn.

Options:
  --size-gib N        image size in GiB (default 4)
  --percents "P..."   percents of differing 4 KiB blocks (default "1 10")
  --reps N            repetitions of each case, rsync and sitrep alternating (default 1)
  --quick             512 MiB image and 1 rep (a later --size-gib/--reps overrides it)
  --only TOOL         rsync, sitrep or all (default all)
  --out DIR           results: DIR/results.json, DIR/report.md, DIR/logs/
                      (default target/bench-out/resync)
  --tmp DIR           where the big image files go (default /var/tmp; not /dev/shm)
  --rsync-block-size B  also run a tuned rsync, \`rsync --block-size=B\` (tool
                      "rsync-bB"), after the plain one (whose blocks are rsync's own choice,
                      about sqrt(size): 64 KiB for 4 GiB); ratios stay against plain rsync
  --no-drop-caches    do not drop the page cache before each timed run
  --no-contract-check run the sitrep half even if target/release/sitrep lacks part of the
                      resync CLI (resync --now --json, agent --resync-window), to see where
                      it breaks
  -h, --help          this text

Per case it records the wall time, the bytes on the link (rx+tx of site A's veth), what the
tool reports, and checks destination == source afterwards. The sitrep case: initial copy of
a loop device over the image, agent killed with SIGKILL (a tracking gap), the same blocks
changed on the device, agent restarted, then \`sitrep resync NAME --now --json\` timed.
EOF
}

size_mib=4096
percents="1 10"
reps=1
only=all
out="$SITREP_ROOT/target/bench-out/resync"
tmp_parent=/var/tmp
drop=1
contract_check=1
rsync_bs=""
while (($#)); do
    case "$1" in
    --size-gib | --percents | --reps | --only | --out | --tmp | --rsync-block-size)
        (($# >= 2)) || die "$1 needs a value"
        ;;&
    --size-gib)
        [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || die "--size-gib needs a whole number of GiB"
        size_mib=$(($2 * 1024))
        shift 2
        ;;
    --percents)
        percents=${2:-}
        shift 2
        ;;
    --reps)
        [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || die "--reps needs a positive number"
        reps=$2
        shift 2
        ;;
    --quick)
        size_mib=512
        reps=1
        shift
        ;;
    --only)
        [[ ${2:-} =~ ^(rsync|sitrep|all)$ ]] || die "--only takes rsync, sitrep or all"
        only=$2
        shift 2
        ;;
    --out)
        [[ -n ${2:-} ]] || die "--out needs a directory"
        out=$(realpath -m "$2")
        shift 2
        ;;
    --tmp)
        [[ -d ${2:-} ]] || die "--tmp needs an existing directory"
        tmp_parent=$(realpath "$2")
        shift 2
        ;;
    --rsync-block-size)
        [[ $2 =~ ^[1-9][0-9]*$ ]] || die "--rsync-block-size needs a number of bytes"
        rsync_bs=$2
        shift 2
        ;;
    --no-drop-caches)
        drop=0
        shift
        ;;
    --no-contract-check)
        contract_check=0
        shift
        ;;
    -h | --help)
        usage
        exit 0
        ;;
    *)
        printf 'unknown option: %s (see --help)\n' "$1" >&2
        exit 2
        ;;
    esac
done
for p in $percents; do
    if ! [[ $p =~ ^[0-9]+(\.[0-9]+)?$ ]] || ! awk -v p="$p" 'BEGIN { exit !(p > 0 && p <= 100) }'; then
        die "--percents: '$p' is not a percentage in (0, 100]"
    fi
done
[[ -n ${percents// /} ]] || die "--percents is empty"
[[ $EUID -eq 0 ]] || die "run as root (network namespaces, loop devices, the eBPF tracker)"
case "$tmp_parent" in
/dev/shm | /dev/shm/*) die "--tmp must be on disk, not in RAM" ;;
esac
run_rsync=0 run_sitrep=0
[[ $only == rsync || $only == all ]] && run_rsync=1
[[ $only == sitrep || $only == all ]] && run_sitrep=1

size=$((size_mib * 1024 * 1024))
ns_a="sitrep-resync-a-$$"
ns_b="sitrep-resync-b-$$"
addr_a=10.77.0.1
addr_b=10.77.0.2
port=9443
sitrep="$SITREP_ROOT/target/release/sitrep"
work=""
daemons=()
loops=()
netns_made=0

# ---- cleanup: only what this script started -------------------------------------------
cleanup() {
    local rc=$?
    set +e
    local pid dev
    for pid in "${daemons[@]}"; do
        kill -9 "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    for dev in "${loops[@]}"; do
        losetup -d "$dev" 2>/dev/null
    done
    if ((netns_made)); then
        ip netns delete "$ns_a" 2>/dev/null
        ip netns delete "$ns_b" 2>/dev/null
    fi
    [[ -n $work && -d $work ]] && rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- helpers ----------------------------------------------------------------------------
now() { printf '%s' "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

# start_daemon NS LOG CMD... — CMD in namespace NS in the background (`ip netns exec` execs
# it, so the pid is the daemon's), output appended to LOG; sets $daemon_pid.
daemon_pid=""
start_daemon() {
    local ns=$1 logf=$2
    shift 2
    RUST_LOG=info ip netns exec "$ns" "$@" </dev/null >>"$logf" 2>&1 &
    daemon_pid=$!
    daemons+=("$daemon_pid")
}

# stop_daemon PID — SIGKILL and reap a daemon this script started.
stop_daemon() {
    local pid=$1 keep=() d
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for d in "${daemons[@]}"; do
        [[ $d == "$pid" ]] || keep+=("$d")
    done
    daemons=("${keep[@]}")
}

# detach_loop DEV
detach_loop() {
    local dev=$1 keep=() d
    losetup -d "$dev"
    for d in "${loops[@]}"; do
        [[ $d == "$dev" ]] || keep+=("$d")
    done
    loops=("${keep[@]}")
}

# wait_ctl SOCK PID LOG — until the sitrep daemon PID answers on SOCK (fail if it exits).
wait_ctl() {
    local sock=$1 pid=$2 logf=$3 i
    for ((i = 0; i < 300; i++)); do
        kill -0 "$pid" 2>/dev/null || {
            tail -n 20 "$logf" >&2
            die "sitrep daemon exited (log: $logf)"
        }
        "$sitrep" status --socket "$sock" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    tail -n 20 "$logf" >&2
    die "sitrep daemon not answering on $sock after 30 s (log: $logf)"
}

# cpu_ticks PID — user + system clock ticks of process PID so far (all its threads).
cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }
clk_tck=$(getconf CLK_TCK)

# veth_bytes — "RX TX" byte counters of site A's end of the link.
veth_bytes() { python3 "$here/report.py" veth "$ns_a" veth0; }

drop_caches() {
    ((drop)) || return 0
    sync
    echo 3 >/proc/sys/vm/drop_caches
}

# mutate TARGET PERCENT SEED [--direct] — change PERCENT % of TARGET's 4 KiB blocks; prints
# the JSON summary (blocks, differing_bytes, regions_1m, fine_blocks).
mutate() { python3 "$here/mutate.py" "$1" "$size" "$2" "$3" "${@:4}"; }

# jget FILE KEY — a top-level field of a JSON file ("" if absent).
jget() {
    python3 -c 'import json,sys; v=json.load(open(sys.argv[1])).get(sys.argv[2]); print("" if v is None else json.dumps(v))' "$1" "$2"
}

# has_flag TEXT FLAG — does a --help text list FLAG?
has_flag() { grep -qE -- "(^|[^a-z-])$2([^a-z-]|$)" <<<"$1"; }

# ---- dependencies -------------------------------------------------------------------------
apt_install() {
    log "installing $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null ||
        { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null; } ||
        die "apt-get install $* failed"
}
need=()
command -v rsync >/dev/null || need+=(rsync)
command -v fio >/dev/null || need+=(fio)
command -v python3 >/dev/null || need+=(python3)
((${#need[@]} == 0)) || apt_install "${need[@]}"
if command -v bdsync >/dev/null; then
    bdsync_note="bdsync: installed ($(command -v bdsync)), but this benchmark has no bdsync case yet"
elif apt-cache show bdsync >/dev/null 2>&1; then
    apt_install bdsync
    bdsync_note="bdsync: installed from Debian, but this benchmark has no bdsync case yet"
else
    bdsync_note="bdsync: not in Debian's archive here"
fi
log "$bdsync_note"

# ---- sitrep build and CLI contract --------------------------------------------------------
if ((run_sitrep)); then
    log "building sitrep (release)"
    (cd "$SITREP_ROOT" && cargo build --release -q -p sitrep-cli) ||
        die "cargo build --release -p sitrep-cli failed"
    missing=()
    if help=$("$sitrep" resync --help 2>&1); then
        for f in --now --json --socket; do
            has_flag "$help" "$f" || missing+=("sitrep resync $f")
        done
    else
        missing+=("the subcommand 'sitrep resync'")
    fi
    help=$("$sitrep" agent --help 2>&1) || true
    for f in --state --pki --socket --resync-window; do
        has_flag "$help" "$f" || missing+=("sitrep agent $f")
    done
    help=$("$sitrep" wait --help 2>&1) || true
    has_flag "$help" --timeout || missing+=("sitrep wait --timeout")
    help=$("$sitrep" protect --help 2>&1) || true
    for f in --to --name --frequency --socket; do
        has_flag "$help" "$f" || missing+=("sitrep protect $f")
    done
    help=$("$sitrep" server --help 2>&1) || true
    for f in --listen --store --pki --socket; do
        has_flag "$help" "$f" || missing+=("sitrep server $f")
    done
    if ((${#missing[@]})); then
        msg="target/release/sitrep lacks part of the resync CLI this benchmark uses: $(printf '%s; ' "${missing[@]}")"
        if ((contract_check)); then
            die "${msg}the sitrep half cannot run (use --only rsync, or --no-contract-check to try anyway)"
        fi
        log "WARNING: ${msg}running anyway (--no-contract-check)"
    fi
fi

# ---- space, work dir, output ---------------------------------------------------------------
# Peak: the base image, and either rsync's source + destination or sitrep's source + replica
# (+ the server's staging/undo data and the agent's logs: budget one more image).
need_bytes=$((size * 4 + (2 << 30)))
avail=$(df -B1 --output=avail "$tmp_parent" | tail -n 1 | tr -d ' ')
((avail >= need_bytes)) ||
    die "$tmp_parent has $((avail >> 30)) GiB free; this run needs about $((need_bytes >> 30)) GiB"
work=$(mktemp -d "$tmp_parent/sitrep-resync.XXXXXX")
rm -rf "$out/cases" "$out/logs" "$out/results.json" "$out/report.md" "$out/meta.json"
mkdir -p "$out/cases" "$out/logs"

tree=$(git -C "$SITREP_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
modified=$(git -C "$SITREP_ROOT" status --porcelain --untracked-files=no 2>/dev/null | wc -l)
python3 "$here/report.py" meta "$out/meta.json" date="$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    tree="$tree" modified_files="$modified" kernel="$(uname -r)" cores="$(nproc)" \
    rsync="$(rsync --version | head -n 1 | awk '{ print $3 }')" size_bytes="$size" \
    percents="$percents" reps="$reps" drop_caches="$drop" tmp="$tmp_parent"

# ---- the two sites --------------------------------------------------------------------------
log "network namespaces $ns_a ($addr_a) and $ns_b ($addr_b), veth pair"
ip netns add "$ns_a"
netns_made=1
ip netns add "$ns_b"
ip -n "$ns_a" link set lo up
ip -n "$ns_b" link set lo up
ip -n "$ns_a" link add veth0 type veth peer name veth0 netns "$ns_b"
ip -n "$ns_a" addr add "$addr_a/24" dev veth0
ip -n "$ns_b" addr add "$addr_b/24" dev veth0
ip -n "$ns_a" link set veth0 up
ip -n "$ns_b" link set veth0 up

# ---- the base image: random data in the first 7/8, zeros in the rest --------------------------
base="$work/base.img"
rand_mib=$((size_mib * 7 / 8))
log "generating the base image: $((size_mib)) MiB, $rand_mib MiB of it random (fio)"
fio --name=gen --filename="$base" --rw=write --bs=1M --size="${rand_mib}M" --ioengine=psync \
    --refill_buffers --randrepeat=0 --end_fsync=1 --output="$out/logs/gen-fio.txt"
truncate -s "$size" "$base"
cmp -s <(head -c 1M "$base") <(head -c 2M "$base" | tail -c 1M) &&
    die "fio did not write distinct random blocks into $base"

# ---- rsync --------------------------------------------------------------------------------------
# run_rsync_case PERCENT REP SEED [BLOCK_SIZE]
run_rsync_case() {
    local pct=$1 rep=$2 seed=$3 bs=${4:-}
    local tool=rsync extra=()
    if [[ -n $bs ]]; then
        tool="rsync-b$bs"
        extra=(--block-size="$bs")
    fi
    local name="$tool-p${pct}-r${rep}" d="$work/rsync"
    local logs="$out/logs/$name"
    mkdir -p "$d/dst" "$logs"
    log "[$name] copying the image pair ($((size_mib)) MiB each)"
    cp --reflink=auto "$base" "$d/dst/dst.img"
    cp --reflink=auto "$base" "$d/src.img"
    mutate "$d/src.img" "$pct" "$seed" >"$logs/mutate.json"
    # The I/O floor of this machine: both images read cold, concurrently (as both ends of
    # either tool must read its whole image once; here both sites share one disk).
    local f0 f1 c1 c2
    drop_caches
    f0=$(now)
    cat "$d/src.img" >/dev/null &
    c1=$!
    cat "$d/dst/dst.img" >/dev/null &
    c2=$!
    wait "$c1" "$c2"
    f1=$(now)
    cat >"$d/rsyncd.conf" <<EOF
uid = root
gid = root
use chroot = no
pid file = $d/rsyncd.pid
log file = $logs/rsyncd.log
[bench]
    path = $d/dst
    read only = no
EOF
    start_daemon "$ns_b" "$logs/rsyncd.log" rsync --daemon --no-detach --config="$d/rsyncd.conf" \
        --address="$addr_b" --port=873
    local rpid=$daemon_pid i
    for ((i = 0; i < 100; i++)); do
        ip netns exec "$ns_a" rsync "rsync://$addr_b/" >/dev/null 2>&1 && break
        kill -0 "$rpid" 2>/dev/null || die "rsync daemon exited (log: $logs/rsyncd.log)"
        sleep 0.1
    done
    drop_caches
    local rx0 tx0 rx1 tx1 t0 t1
    read -r rx0 tx0 < <(veth_bytes)
    log "[$name] rsync --inplace --no-whole-file ${extra[*]} ($pct % of the 4 KiB blocks differ)"
    t0=$(now)
    # --ignore-times: the quick check (size + mtime) must never skip the file; it is not
    # --checksum (no whole-file pre-pass).
    ip netns exec "$ns_a" rsync --inplace --no-whole-file --ignore-times --stats \
        --no-human-readable "${extra[@]}" "$d/src.img" "rsync://$addr_b/bench/dst.img" >"$logs/rsync.txt" 2>&1 ||
        { cat "$logs/rsync.txt" >&2; die "rsync failed"; }
    t1=$(now)
    read -r rx1 tx1 < <(veth_bytes)
    stop_daemon "$rpid"
    python3 "$here/report.py" rsync-stats "$logs/rsync.txt" >"$logs/rsync-stats.json"
    local verified=false
    cmp "$d/src.img" "$d/dst/dst.img" && verified=true
    local sent recv
    sent=$(jget "$logs/rsync-stats.json" bytes_sent)
    recv=$(jget "$logs/rsync-stats.json" bytes_received)
    python3 "$here/report.py" case "$out/cases/$name.json" tool="$tool" percent="$pct" \
        rep="$rep" size_bytes="$size" seconds="$(elapsed "$t0" "$t1")" \
        wire_bytes=$((rx1 - rx0 + tx1 - tx0)) veth_rx=$((rx1 - rx0)) veth_tx=$((tx1 - tx0)) \
        tool_bytes=$((sent + recv)) tool_report="@$logs/rsync-stats.json" \
        differing_bytes="$(jget "$logs/mutate.json" differing_bytes)" \
        fine_blocks="$(jget "$logs/mutate.json" fine_blocks)" \
        mutation="@$logs/mutate.json" verified="$verified" \
        io_floor_seconds="$(elapsed "$f0" "$f1")" rsync_args="${extra[*]}"
    rm -rf "$d"
    [[ $verified == true ]] || die "[$name] destination differs from source after rsync"
    log "[$name] $(elapsed "$t0" "$t1") s, $((rx1 - rx0 + tx1 - tx0)) bytes on the link"
}

# ---- sitrep -------------------------------------------------------------------------------------
run_sitrep_case() {
    local pct=$1 rep=$2 seed=$3
    local name="sitrep-p${pct}-r${rep}" d="$work/sitrep" logs="$out/logs/sitrep-p${pct}-r${rep}"
    mkdir -p "$d" "$logs"
    local pki_a="$d/pki-a" pki_b="$d/pki-b" store="$d/store" state="$d/state"
    local sock_a="$d/a.sock" sock_b="$d/b.sock"
    if ! "$sitrep" certs init --dir "$pki_b" --name siteb --san "$addr_b" >"$logs/certs.txt" 2>&1 ||
        ! "$sitrep" certs issue --ca "$pki_b" --name sitea --out "$pki_a" >>"$logs/certs.txt" 2>&1; then
        cat "$logs/certs.txt" >&2
        die "sitrep certs failed"
    fi
    start_daemon "$ns_b" "$logs/server.log" "$sitrep" server --listen "$addr_b:$port" \
        --store "$store" --pki "$pki_b" --socket "$sock_b"
    local spid=$daemon_pid
    wait_ctl "$sock_b" "$spid" "$logs/server.log"

    log "[$name] copying the image and attaching it to a loop device"
    cp --reflink=auto "$base" "$d/src.img"
    local dev
    dev=$(losetup -f --show --direct-io=on "$d/src.img")
    loops+=("$dev")
    local agent_args=(agent --state "$state" --pki "$pki_a" --socket "$sock_a" --resync-window always)
    start_daemon "$ns_a" "$logs/agent.log" "$sitrep" "${agent_args[@]}"
    local apid=$daemon_pid
    wait_ctl "$sock_a" "$apid" "$logs/agent.log"

    log "[$name] protect $dev, initial copy"
    local t0 t1 t2 t3
    t0=$(now)
    "$sitrep" protect "$dev" --to "$addr_b:$port" --name bench --frequency continuous \
        --socket "$sock_a" >"$logs/protect.txt" 2>&1 ||
        { cat "$logs/protect.txt" >&2; die "sitrep protect failed"; }
    "$sitrep" wait bench --timeout 3600 --socket "$sock_a" >"$logs/wait-initial.txt" 2>&1 ||
        { cat "$logs/wait-initial.txt" >&2; die "sitrep wait (initial copy) failed"; }
    t1=$(now)
    local initial_secs
    initial_secs=$(elapsed "$t0" "$t1")
    log "[$name] initial copy applied in $initial_secs s; SIGKILL the agent (a tracking gap)"
    stop_daemon "$apid"
    mutate "$dev" "$pct" "$seed" --direct >"$logs/mutate.json"
    blockdev --flushbufs "$dev"
    drop_caches

    local rx0 tx0 rx1 tx1 scpu0 scpu1 acpu1
    read -r rx0 tx0 < <(veth_bytes)
    scpu0=$(cpu_ticks "$spid")
    t0=$(now)
    start_daemon "$ns_a" "$logs/agent.log" "$sitrep" "${agent_args[@]}"
    apid=$daemon_pid
    wait_ctl "$sock_a" "$apid" "$logs/agent.log"
    log "[$name] sitrep resync bench --now ($pct % of the 4 KiB blocks differ)"
    t1=$(now)
    "$sitrep" resync bench --now --json --socket "$sock_a" >"$logs/resync.out" 2>"$logs/resync.err" ||
        { cat "$logs/resync.out" "$logs/resync.err" >&2; die "sitrep resync failed"; }
    t2=$(now)
    read -r rx1 tx1 < <(veth_bytes)
    acpu1=$(cpu_ticks "$apid")
    scpu1=$(cpu_ticks "$spid")
    python3 "$here/report.py" last-json "$logs/resync.out" >"$logs/resync.json" ||
        die "sitrep resync printed no JSON object (see $logs/resync.out)"
    local f notes="" absent=()
    for f in disk scope_bytes compared_bytes differing_bytes data_bytes_sent wire_bytes seconds; do
        [[ -n $(jget "$logs/resync.json" "$f") ]] || absent+=("$f")
    done
    ((${#absent[@]} == 0)) || notes="resync JSON lacks: ${absent[*]}. "
    local scope
    scope=$(jget "$logs/resync.json" scope_bytes)
    [[ -z $scope || $scope == "$size" ]] ||
        notes+="resync scope was $scope bytes, not the whole disk ($size). "

    "$sitrep" wait bench --timeout 3600 --socket "$sock_a" >"$logs/wait-final.txt" 2>&1 ||
        { cat "$logs/wait-final.txt" >&2; die "sitrep wait (after the resync) failed"; }
    t3=$(now)
    blockdev --flushbufs "$dev"
    local verified=false
    cmp "$dev" "$store/disks/bench/replica.img" && verified=true
    local tool_wire
    tool_wire=$(jget "$logs/resync.json" wire_bytes)
    python3 "$here/report.py" case "$out/cases/$name.json" tool=sitrep percent="$pct" \
        rep="$rep" size_bytes="$size" seconds="$(elapsed "$t1" "$t2")" \
        seconds_from_restart="$(elapsed "$t0" "$t2")" \
        seconds_until_applied="$(elapsed "$t0" "$t3")" initial_copy_seconds="$initial_secs" \
        agent_cpu_seconds="$(awk -v t="$acpu1" -v h="$clk_tck" 'BEGIN { printf "%.2f", t / h }')" \
        server_cpu_seconds="$(awk -v t="$((scpu1 - scpu0))" -v h="$clk_tck" 'BEGIN { printf "%.2f", t / h }')" \
        wire_bytes=$((rx1 - rx0 + tx1 - tx0)) veth_rx=$((rx1 - rx0)) veth_tx=$((tx1 - tx0)) \
        tool_bytes="${tool_wire:-null}" tool_report="@$logs/resync.json" \
        differing_bytes="$(jget "$logs/mutate.json" differing_bytes)" \
        fine_blocks="$(jget "$logs/mutate.json" fine_blocks)" \
        mutation="@$logs/mutate.json" verified="$verified" notes="${notes% }"

    stop_daemon "$apid"
    stop_daemon "$spid"
    detach_loop "$dev"
    rm -rf "$d"
    [[ $verified == true ]] || die "[$name] the replica differs from the source after the resync"
    log "[$name] resync $(elapsed "$t1" "$t2") s (from restart $(elapsed "$t0" "$t2") s), $((rx1 - rx0 + tx1 - tx0)) bytes on the link"
}

# ---- the runs: per rep, per percent, rsync then sitrep ----------------------------------------
for ((rep = 1; rep <= reps; rep++)); do
    for pct in $percents; do
        # The same blocks for both tools (and every rep) of one percent.
        seed=$(awk -v p="$pct" 'BEGIN { printf "%d", p * 1000 + 7 }')
        if ((run_rsync)); then
            run_rsync_case "$pct" "$rep" "$seed"
            [[ -z $rsync_bs ]] || run_rsync_case "$pct" "$rep" "$seed" "$rsync_bs"
        fi
        if ((run_sitrep)); then run_sitrep_case "$pct" "$rep" "$seed"; fi
    done
done

log "results in $out (results.json, report.md, logs/)"
python3 "$here/report.py" summarize "$out"
echo
echo "$bdsync_note"
