#!/usr/bin/env bash
# CI's smoke test of the benchmark harness: the quick run of every scenario must finish and
# leave a well-formed report (results.json, report.md, SVG plots). Timings are not judged.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$SITREP_ROOT"
out=target/bench-out/smoke
scripts/bench.sh --quick --out "$out"
target/release/sitrep-bench check "$out"
