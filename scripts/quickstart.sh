#!/usr/bin/env bash
# The main job, today: build sitrep and walk through the life of a disk's change log —
# write a chain of logs, seal them, inspect one, verify the chain, then damage a log and
# watch verification catch it. Later issues extend this into the real quickstart
# (protect a disk, replicate, fail over).
#
#   scripts/quickstart.sh [WORKDIR]      (default: a fresh temporary directory)
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== building sitrep (release)"
cargo build --release -q -p sitrep-agent
sitrep=$PWD/target/release/sitrep

work=${1:-$(mktemp -d /tmp/sitrep-quickstart.XXXXXX)}
logs=$work/disk0.hrl
rm -rf "$logs"

echo "== 1. write a chain of three logs for a demo 1 GiB disk, sealing each"
"$sitrep" log demo "$logs"

echo
echo "== 2. inspect the first log (header, chain ids, state, records per kind)"
"$sitrep" log inspect "$logs/00000000000000000000.hrl"

echo
echo "== 3. verify every log and every chain link"
"$sitrep" log verify "$logs"

echo
echo "== 4. flip one byte inside a record of the middle log, and verify again"
python3 - "$logs/00000000000000000001.hrl" <<'PY'
import sys
p = sys.argv[1]
b = bytearray(open(p, 'rb').read())
b[4096 + 200] ^= 0x01
open(p, 'wb').write(bytes(b))
PY
set +e
"$sitrep" log verify "$logs"
rc=$?
set -e
echo "(exit status $rc: 3 means a log or the chain failed validation — the disk needs a resync)"
[ "$rc" -eq 3 ]

echo
echo "== done; the logs are in $logs"
