#!/usr/bin/env bash
# A/B (root): fio 4 KiB random writes QD16 on a protected 1 GiB loop device, the agent (release
# build, cargo build --release -p sitrep-cli) with and without the
# crash sentinel, alternating. Prints IOPS per run.
set -euo pipefail
cd "$(dirname "$0")/../.."
sitrep=$PWD/target/release/sitrep
w=$(mktemp -d /tmp/sab.XXXX)
$sitrep certs init --dir $w/pki-s --name s --san 127.0.0.1 >/dev/null
$sitrep certs issue --ca $w/pki-s --name a --out $w/pki-a >/dev/null
truncate -s 1G $w/disk.img
dev=$(losetup -f --show $w/disk.img)
$sitrep server --store $w/store --pki $w/pki-s --listen 127.0.0.1:19555 --socket $w/s.sock 2>$w/s.log &
spid=$!
run() {
  local sentinel=$1 tag=$2
  rm -rf $w/state
  $sitrep agent --state $w/state --pki $w/pki-a --socket $w/a.sock --crash-sentinel $sentinel --resync-window always 2>$w/a-$tag.log &
  local apid=$!
  for _ in $(seq 100); do $sitrep status --socket $w/a.sock >/dev/null 2>&1 && break; sleep 0.1; done
  $sitrep protect $dev --to 127.0.0.1:19555 --name ab$tag --socket $w/a.sock >/dev/null
  $sitrep wait ab$tag --socket $w/a.sock --timeout 600 >/dev/null
  iops=$(fio --name=ab --filename=$dev --rw=randwrite --bs=4k --direct=1 --ioengine=libaio --iodepth=16 --time_based --runtime=10 --size=1G --output-format=json | jq '.jobs[0].write.iops')
  echo "sentinel=$sentinel iops=$iops"
  $sitrep unprotect ab$tag --socket $w/a.sock >/dev/null || true
  kill $apid; wait $apid || true
}
for i in 1 2 3; do run true t$i; run false f$i; done
kill $spid; wait $spid || true
losetup -d $dev; rm -rf $w
