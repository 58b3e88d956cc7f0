#!/usr/bin/env bash
# Fuzzes the HRL log reader (hrl/fuzz/fuzz_targets/reader.rs) with libFuzzer.
#
#   scripts/fuzz.sh                      # bounded run, as CI does (FUZZ_RUNS, default 100000)
#   FUZZ_SECONDS=3600 scripts/fuzz.sh    # run for an hour instead
#
# cargo-fuzz needs nightly-only rustc flags (sanitizers); the pinned stable toolchain
# accepts them with RUSTC_BOOTSTRAP=1, so no second toolchain has to be downloaded.
# Crashes are saved under hrl/fuzz/artifacts/reader/ and make this script fail; reproduce
# one with: RUSTC_BOOTSTRAP=1 cargo fuzz run reader hrl/fuzz/artifacts/reader/<file>
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz (once)"
  cargo install cargo-fuzz --locked --version 0.13.2
fi

corpus=hrl/fuzz/corpus/reader
mkdir -p "$corpus"
if [ -z "$(ls -A "$corpus")" ]; then
  # Seed with real logs: the demo chain, as whole files (shape byte 0 = even).
  cargo build -q -p sitrep-agent
  seed=$(mktemp -d)
  "$root/target/debug/sitrep" log demo "$seed/logs" >/dev/null
  i=0
  for f in "$seed"/logs/*.hrl; do
    { printf '\0'; cat "$f"; } > "$corpus/seed-$i"
    i=$((i + 1))
  done
  rm -rf "$seed"
fi

args=(-max_len=65536 -timeout=10 -rss_limit_mb=2048)
if [ -n "${FUZZ_SECONDS:-}" ]; then
  args+=(-max_total_time="$FUZZ_SECONDS")
else
  args+=(-runs="${FUZZ_RUNS:-100000}")
fi
cd hrl
echo "fuzz: reader ${args[*]}"
set +e
RUSTC_BOOTSTRAP=1 cargo fuzz run reader "$root/$corpus" -- "${args[@]}" 2>&1 \
  | grep -E --line-buffered 'DONE|Done|ERROR|panicked|SUMMARY|crash-|Test unit'
status=${PIPESTATUS[0]}
set -e
if [ "$status" -ne 0 ]; then
  echo "fuzz: FAILED (exit $status); see hrl/fuzz/artifacts/reader/" >&2
  exit "$status"
fi
echo "fuzz: reader OK"
