#!/usr/bin/env bash
# Runs INSIDE the VM (see run.sh): the same fio jobs, on the same backing file, against
#   kloop   the kernel loop driver with --direct-io=on
#   rublk   rublk's loop target (the reference ublk server)
#   extents a sitrep tracked ublk disk, extents mode (default durability: log synced at flushes)
#   journal a sitrep tracked ublk disk, journal mode (the same)
#   extents-write  extents mode, --durability write (log synced before every change)
# alternating the targets round by round. Writes one fio JSON per (round, target, job) into
# OUT, which run.sh reads on the host.
#
#   guest.sh OUT SITREP RUBLK SECONDS ROUNDS
set -euo pipefail
out=$1 sitrep=$2 rublk=$3 secs=$4 rounds=$5
# shellcheck source=benches/ublk/guest-setup.sh
source "$(dirname "$0")/guest-setup.sh"

jobs=(
  "randwrite4k --rw=randwrite --bs=4k --iodepth=32"
  "randread4k --rw=randread --bs=4k --iodepth=32"
  "seqwrite1m --rw=write --bs=1M --iodepth=8"
)

dev=""
setup() {
  case $1 in
    kloop) dev=$(losetup --direct-io=on -f --show "$backing") ;;
    rublk)
      "$rublk" add loop -f "$backing" -q 1 -d 128 >/dev/null
      dev=$(ls -t /dev/ublkb* | head -1) ;;
    extents | journal | extents-write)
      rm -rf "/tmp/logs/$1" && mkdir -p "/tmp/logs/$1"
      durability=flush
      [[ $1 == *-write ]] && durability=write
      "$sitrep" disk add --backing "$backing" --mode "${1%-write}" --durability "$durability" \
        --log-dir "/tmp/logs/$1" --queues 1 --depth 128 >/dev/null
      dev=$(ls -t /dev/ublkb* | head -1) ;;
  esac
  udevadm settle 2>/dev/null || true
  for _ in $(seq 50); do [ -b "$dev" ] && break; sleep 0.1; done
}

teardown() {
  case $1 in
    kloop) losetup -d "$dev" ;;
    rublk) "$rublk" del -a >/dev/null ;;
    extents | journal | extents-write)
      "$sitrep" disk del "${dev#/dev/ublkb}" >/dev/null
      rm -rf "/tmp/logs/$1" ;;
  esac
}

for r in $(seq "$rounds"); do
  for t in kloop rublk extents journal extents-write; do
    setup "$t"
    for j in "${jobs[@]}"; do
      name=${j%% *}
      # shellcheck disable=SC2086 # job options are words
      fio --name="$name" --filename="$dev" ${j#* } --direct=1 --ioengine=io_uring \
        --size=256M --time_based --runtime="$secs" --output-format=json \
        >"$out/$r-$t-$name.json"
    done
    teardown "$t"
    echo "round $r: $t done"
  done
done
umount /tmp/logs
losetup -d "$logdev"
echo ok >"$out/done"
