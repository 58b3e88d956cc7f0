#!/usr/bin/env bash
# Runs INSIDE the VM (see ab.sh): 4k random writes (QD 32) against rublk's loop target and
# each given sitrep binary (extents, flush durability), alternating round by round; one line
# "ROUND NAME IOPS" per job into OUT/res.
#
#   ab-guest.sh OUT RUBLK SECONDS ROUNDS SITREP...
set -euo pipefail
out=$1 rublk=$2 secs=$3 rounds=$4
shift 4
# shellcheck source=benches/ublk/guest-setup.sh
source "$(dirname "$0")/guest-setup.sh"
for r in $(seq "$rounds"); do
  for t in rublk "$@"; do
    if [[ $t == rublk ]]; then
      "$rublk" add loop -f "$backing" -q 1 -d 128 >/dev/null
    else
      rm -rf /tmp/logs/x && mkdir -p /tmp/logs/x
      "$t" disk add --backing "$backing" --log-dir /tmp/logs/x --queues 1 --depth 128 >/dev/null
    fi
    dev=$(ls -t /dev/ublkb* | head -1)
    udevadm settle 2>/dev/null || true
    fio --name=rw --filename="$dev" --rw=randwrite --bs=4k --iodepth=32 --direct=1 \
      --ioengine=io_uring --size=256M --time_based --runtime="$secs" --output-format=json \
      >/tmp/fio.json
    iops=$(python3 -c 'import json,sys; t=open(sys.argv[1]).read(); print(json.loads(t[t.index("{"):])["jobs"][0]["write"]["iops"])' /tmp/fio.json)
    echo "$r $(basename "$t") $iops" >>"$out/res"
    if [[ $t == rublk ]]; then
      "$rublk" del -a >/dev/null
    else
      "$t" disk del "${dev#/dev/ublkb}" >/dev/null
    fi
  done
  echo "round $r done"
done
echo ok >"$out/done"
