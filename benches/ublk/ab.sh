#!/usr/bin/env bash
# Paired A/B of sitrep builds against rublk's loop target, in ONE VM run: 4k random writes
# (QD 32), rublk and every given build alternating round by round (benches/ublk/ab-guest.sh).
# For deciding whether a change to the data path helps: under qemu/TCG the IOPS of one
# target swing ±10–30 % between rounds, so compare builds round by round, not run by run.
#
#   benches/ublk/ab.sh SECONDS ROUNDS SITREP_BINARY...     e.g.
#   cp target/release/sitrep /tmp/a; (change, build); cp target/release/sitrep /tmp/b
#   benches/ublk/ab.sh 4 6 /tmp/a /tmp/b
#
# Prints per build: median IOPS, the median of its per-round ratios to rublk (and each
# round's), and the median of its per-round ratios to the first build. Binaries are named by
# file name, so give them distinct ones. Output: $SITREP_BENCH_OUT (default
# target/bench-out/ublk-ab): res (every sample), vm.log.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/../../scripts/lib.sh"
cd "$SITREP_ROOT"
(($# >= 3)) || die "usage: benches/ublk/ab.sh SECONDS ROUNDS SITREP_BINARY..."
secs=$1 rounds=$2
shift 2
bins=()
for b in "$@"; do
    [[ -x "$b" ]] || die "$b is not an executable sitrep binary"
    bins+=("$(realpath "$b")")
done
ensure_vng_on_path
kernel="$(scripts/vm-kernel.sh)"
tools="$SITREP_ROOT/target/bench-tools"
[[ -x "$tools/bin/rublk" ]] || cargo install rublk --locked --root "$tools"
out="${SITREP_BENCH_OUT:-$SITREP_ROOT/target/bench-out/ublk-ab}"
rm -rf "$out" && mkdir -p "$out"
guest="$(printf '%q ' "$SITREP_ROOT/benches/ublk/ab-guest.sh" "$out" "$tools/bin/rublk" \
    "$secs" "$rounds" "${bins[@]}")"
log "booting $(basename "$kernel"): $rounds round(s) of rublk + ${#bins[@]} build(s) x ${secs}s"
timeout --kill-after=30 3600 vng --run "$kernel" --disable-kvm --memory 2G --cpus 2 \
    --rwdir="$out" --exec "$guest" </dev/null >"$out/vm.log" 2>&1 || true
[[ -f "$out/done" ]] || die "the VM run did not finish; see $out/vm.log"
python3 - "$out/res" "$(basename "${bins[0]}")" <<'PY'
import collections, statistics, sys
by = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    r, name, iops = line.split()
    by[name][r] = float(iops)
first, med = sys.argv[2], statistics.median
for name, rounds in by.items():
    if name == "rublk":
        continue
    vs_rublk = [v / by["rublk"][r] for r, v in rounds.items()]
    vs_first = [v / by[first][r] for r, v in rounds.items()]
    print(f"{name}: {med(rounds.values()):.0f} IOPS; vs rublk {med(vs_rublk):.3f} "
          f"({' '.join(f'{x:.2f}' for x in vs_rublk)}); vs {first} {med(vs_first):.3f}")
print(f"rublk: {med(by['rublk'].values()):.0f} IOPS")
PY
