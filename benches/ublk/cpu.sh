#!/usr/bin/env bash
# Where the CPU goes per 4k random write: rublk's loop target vs a sitrep tracked disk, in
# the same VM run (a diagnostic, not a benchmark: the numbers are µs of emulated CPU per
# I/O under qemu/TCG; compare the two targets, not runs).
#
#   benches/ublk/cpu.sh [SECONDS_PER_JOB] [ROUNDS]       (defaults: 4 3)
#
# Prints, per target: median IOPS, guest CPU busy µs/IO (user, system), the server's CPU
# µs/IO per thread name, and tracepoint counts per I/O.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/../../scripts/lib.sh"
cd "$SITREP_ROOT"
secs=${1:-4}
rounds=${2:-3}
ensure_vng_on_path
kernel="$(scripts/vm-kernel.sh)"
tools="$SITREP_ROOT/target/bench-tools"
[[ -x "$tools/bin/rublk" ]] || cargo install rublk --locked --root "$tools"
cargo build --release -q -p sitrep-cli
out="${SITREP_BENCH_OUT:-$SITREP_ROOT/target/bench-out/ublk-cpu}"
rm -rf "$out" && mkdir -p "$out"
guest="$(printf '%q ' "$SITREP_ROOT/benches/ublk/cpu-guest.sh" "$out" \
    "$SITREP_ROOT/target/release/sitrep" "$tools/bin/rublk" "$secs" "$rounds")"
timeout --kill-after=30 1800 vng --run "$kernel" --disable-kvm --memory 2G --cpus 2 \
    --rwdir="$out" --exec "$guest" </dev/null >"$out/vm.log" 2>&1 || true
[[ -f "$out/done" ]] || die "the VM run did not finish; see $out/vm.log"
python3 - "$out" "$rounds" <<'PY'
import collections, json, os, re, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
for t in ["rublk", "sitrep"]:
    iops, busy, user, system = [], [], [], []
    threads = collections.defaultdict(list)
    events = collections.defaultdict(list)
    for r in range(1, rounds + 1):
        doc = json.load(open(f"{out}/fio-{r}-{t}.json"))
        w = doc["jobs"][0]["write"]
        ios = w["total_ios"] or 1
        iops.append(w["iops"])
        c0 = list(map(int, open(f"{out}/c0-{r}-{t}").read().split()[1:]))
        c1 = list(map(int, open(f"{out}/c1-{r}-{t}").read().split()[1:]))
        d = [b - a for a, b in zip(c0, c1)]
        us = 1e6 / os.sysconf("SC_CLK_TCK") / ios
        busy.append((sum(d) - d[3] - d[4]) * us)
        user.append(d[0] * us)
        system.append(d[2] * us)
        before = {l.split()[0]: l.split() for l in open(f"{out}/t0-{r}-{t}")}
        per = collections.Counter()
        for l in open(f"{out}/t1-{r}-{t}"):
            f = l.split()
            a = before.get(f[0], f[:2] + ["0", "0"])
            name = re.sub(r"[0-9]+", "N", f[1])
            per[name + " user"] += (int(f[2]) - int(a[2])) * us
            per[name + " sys"] += (int(f[3]) - int(a[3])) * us
        for k, v in per.items():
            threads[k].append(v)
        for l in open(f"{out}/perf-{r}-{t}"):
            f = l.strip().split(",")
            if len(f) > 3 and f[0].isdigit():
                events[f[2].split(":")[1]].append(int(f[0]) / ios)
    med = statistics.median
    print(f"{t}: {med(iops):.0f} IOPS; guest CPU {med(busy):.1f} µs/IO "
          f"(user {med(user):.1f}, system {med(system):.1f})")
    print("  threads µs/IO: " + ", ".join(f"{k} {med(v):.1f}" for k, v in sorted(threads.items()) if med(v) >= 0.1))
    print("  per I/O: " + ", ".join(f"{k} {med(v):.3f}" for k, v in events.items()))
PY
