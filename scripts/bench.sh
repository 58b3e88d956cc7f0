#!/usr/bin/env bash
# THE benchmark command: installs what is missing, builds the release binaries, runs the
# harness. Needs root (loop devices, network namespaces, eBPF, a VM for the ublk scenario).
#
#   sudo scripts/bench.sh --quick                 # smoke run, about 8 minutes on 2 cores
#   sudo scripts/bench.sh                         # full run, about 45 minutes
#   sudo scripts/bench.sh rpo shipping            # some scenarios (ids: see --help)
#   sudo scripts/bench.sh --out DIR --tmp DIR ... # output dir (default target/bench-out/harness)
#
# Results: OUT/results.json, OUT/report.md, OUT/plots/*.svg, OUT/logs/. The full run's report
# is what docs/benchmarks.md records. `target/release/sitrep-bench --help` explains more.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$SITREP_ROOT"
[[ $(id -u) -eq 0 ]] || die "must run as root (loop devices, network namespaces, eBPF)"
scripts/install-deps.sh
ensure_vng_on_path
log "building the release binaries (sitrep, tracker_overhead, sitrep-bench)"
cargo build --release -q -p sitrep-cli -p sitrep-benches --bins
exec target/release/sitrep-bench run "$@"
