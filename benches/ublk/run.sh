#!/usr/bin/env bash
# ublk benchmark (BRIEF §7: a tracked ublk disk reaches >= 1.0x the IOPS of rublk's loop
# target on the same backing file, in the same VM run).
#
#   benches/ublk/run.sh [SECONDS_PER_JOB] [ROUNDS]       (defaults: 4 4)
#
# Output: $SITREP_BENCH_OUT (default target/bench-out/ublk): results.json (every sample:
# target -> job -> [IOPS or bytes/s per round]), vm.log, the fio JSON files.
#
# Boots the Debian 6.12 kernel once under qemu/TCG (no KVM here), runs benches/ublk/guest.sh
# inside it, and prints a markdown table of median IOPS / MB/s per target and job, with
# ratios against rublk. Timings under software emulation are only comparable with other
# timings from the same run.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/../../scripts/lib.sh"
cd "$SITREP_ROOT"
secs=${1:-4}
rounds=${2:-4}

ensure_vng_on_path
kernel="$(scripts/vm-kernel.sh)"
tools="$SITREP_ROOT/target/bench-tools"
if [[ ! -x "$tools/bin/rublk" ]]; then
    log "installing rublk (the reference ublk server) into $tools"
    cargo install rublk --locked --root "$tools"
fi
log "building sitrep (release)"
cargo build --release -q -p sitrep-cli
out="${SITREP_BENCH_OUT:-$SITREP_ROOT/target/bench-out/ublk}"
rm -rf "$out" && mkdir -p "$out"

guest="$(printf '%q ' "$SITREP_ROOT/benches/ublk/guest.sh" "$out" \
    "$SITREP_ROOT/target/release/sitrep" "$tools/bin/rublk" "$secs" "$rounds")"
log "booting $(basename "$kernel") and running $rounds round(s) of 5 targets x 3 jobs x ${secs}s"
# A VM that exits within a minute never got to run the benchmark (seen once in CI: vng
# returned after 11 s with nothing on its console); boot it once more before giving up.
for attempt in 1 2; do
    start=$SECONDS
    rc=0
    timeout --kill-after=30 3600 vng --run "$kernel" --disable-kvm --memory 2G --cpus 2 \
        --rwdir="$out" --exec "$guest" </dev/null >"$out/vm.log" 2>&1 || rc=$?
    [[ -f "$out/done" ]] && break
    wall=$((SECONDS - start))
    if ((attempt == 1 && wall < 60)); then
        log "the VM exited after ${wall}s without running the benchmark (vng exit $rc, $(wc -c <"$out/vm.log") bytes of console); booting it again"
        mv "$out/vm.log" "$out/vm-attempt1.log"
        continue
    fi
    die "the benchmark did not finish in the VM (vng exit $rc after ${wall}s); see $out/vm.log"
done

python3 - "$out" "$rounds" <<'PY'
import json, os, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
targets = ["kloop", "rublk", "extents", "journal", "extents-write"]
jobs = [("randwrite4k", "write", "iops"), ("randread4k", "read", "iops"),
        ("seqwrite1m", "write", "bw_bytes")]
res = {}
raw = {}
for t in targets:
    for j, side, key in jobs:
        vals = []
        for r in range(1, rounds + 1):
            p = os.path.join(out, f"{r}-{t}-{j}.json")
            text = open(p).read()
            doc = json.loads(text[text.index("{"):])
            vals.append(doc["jobs"][0][side][key])
        res[(t, j)] = statistics.median(vals)
        raw.setdefault(t, {})[j] = vals
with open(os.path.join(out, "results.json"), "w") as f:
    json.dump({"rounds": rounds, "samples": raw}, f, indent=2)
names = {"kloop": "kernel loop (direct I/O)", "rublk": "rublk loop target",
         "extents": "sitrep tracked, extents", "journal": "sitrep tracked, journal",
         "extents-write": "sitrep tracked, extents, --durability write"}
print("| target | 4k randwrite IOPS | 4k randread IOPS | 1M seq write MB/s |")
print("|---|---|---|---|")
for t in targets:
    cells = []
    for j, _, key in jobs:
        v, base = res[(t, j)], res[("rublk", j)]
        shown = f"{v / 1e6:.0f}" if key == "bw_bytes" else f"{v:.0f}"
        cells.append(f"{shown} ({v / base:.2f}x)")
    print(f"| {names[t]} | " + " | ".join(cells) + " |")
print(f"\n(medians of {rounds} rounds; ratios against rublk in the same VM run)")
print("\nmedian of per-round ratios against rublk (each round's result over the same round's rublk):")
for t in ["kloop", "extents", "journal", "extents-write"]:
    cells = []
    for j, _, _ in jobs:
        rs = [a / b for a, b in zip(raw[t][j], raw["rublk"][j]) if b > 0]
        cells.append(f"{j} {statistics.median(rs):.2f}x ({min(rs):.2f}-{max(rs):.2f})")
    print(f"- {names[t]}: " + ", ".join(cells))
PY
