#!/usr/bin/env bash
# Fuzzes the HRL log reader (hrl/fuzz/fuzz_targets/reader.rs) and the wire-protocol
# frame decoder (proto/fuzz/fuzz_targets/decode.rs) with libFuzzer, one after the other.
#
#   scripts/fuzz.sh                      # bounded run, as CI does (FUZZ_RUNS, default 100000)
#   FUZZ_SECONDS=3600 scripts/fuzz.sh    # run each target for an hour instead
#
# cargo-fuzz needs nightly-only rustc flags (sanitizers); the pinned stable toolchain
# accepts them with RUSTC_BOOTSTRAP=1, so no second toolchain has to be downloaded.
# Crashes are saved under hrl/fuzz/artifacts/reader/ (proto/fuzz/artifacts/decode/) and
# make this script fail; reproduce one with (in hrl/ or proto/):
#   RUSTC_BOOTSTRAP=1 cargo fuzz run reader fuzz/artifacts/reader/<file>
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
  cargo build -q -p sitrep-cli
  seed=$(mktemp -d)
  "$root/target/debug/sitrep" log demo "$seed/logs" >/dev/null
  i=0
  for f in "$seed"/logs/*.hrl; do
    { printf '\0'; cat "$f"; } > "$corpus/seed-$i"
    i=$((i + 1))
  done
  rm -rf "$seed"
fi

pcorpus=proto/fuzz/corpus/decode
mkdir -p "$pcorpus"
if [ -z "$(ls -A "$pcorpus")" ]; then
  # Seed with the golden frames of proto/tests/golden.rs (Data, Zero, Hello, Welcome,
  # Error), as a raw stream (shape byte 0 = even).
  i=0
  for hex in \
    10000000020000001000000065ab7d2d00100000000000006162636465666768 \
    100000000300000010000000fd4b198e00001000000000000000010000000000 \
    05000000010000000500000026ec90300001010161 \
    040000000100000004000000d2590c4e01010173 \
    08000000010000000800000001fdc6950200016d0201ac02; do
    printf "\\x00$(printf '%s' "$hex" | sed 's/../\\x&/g')" > "$pcorpus/seed-$i"
    i=$((i + 1))
  done
fi

args=(-max_len=65536 -timeout=10 -rss_limit_mb=2048)
if [ -n "${FUZZ_SECONDS:-}" ]; then
  args+=(-max_total_time="$FUZZ_SECONDS")
else
  args+=(-runs="${FUZZ_RUNS:-100000}")
fi

# fuzz <crate dir> <target> <corpus>
fuzz() {
  echo "fuzz: $1 $2 ${args[*]}"
  set +e
  (cd "$root/$1" && RUSTC_BOOTSTRAP=1 cargo fuzz run "$2" "$root/$3" -- "${args[@]}" 2>&1) \
    | grep -E --line-buffered 'DONE|Done|ERROR|panicked|SUMMARY|crash-|Test unit'
  status=${PIPESTATUS[0]}
  set -e
  if [ "$status" -ne 0 ]; then
    echo "fuzz: FAILED (exit $status); see $1/fuzz/artifacts/$2/" >&2
    exit "$status"
  fi
  echo "fuzz: $2 OK"
}

fuzz hrl reader "$corpus"
fuzz proto decode "$pcorpus"
