#!/usr/bin/env bash
# Runs INSIDE the VM (see cpu.sh): 4k random writes (QD 32) against rublk's loop target and
# a sitrep tracked disk (extents, flush durability), alternating, and records where the CPU
# goes per I/O: the whole guest (/proc/stat), every thread of the server
# (/proc/PID/task/*/stat: the queue thread and its io-wq workers), and event counts
# (perf stat tracepoints: io_uring_enter, io-wq punts, page faults, context switches).
#
#   cpu-guest.sh OUT SITREP RUBLK SECONDS ROUNDS
set -euo pipefail
out=$1 sitrep=$2 rublk=$3 secs=$4 rounds=$5
# shellcheck source=benches/ublk/guest-setup.sh
source "$(dirname "$0")/guest-setup.sh"
mountpoint -q /sys/kernel/tracing || mount -t tracefs none /sys/kernel/tracing || true
events=syscalls:sys_enter_io_uring_enter,io_uring:io_uring_queue_async_work,sched:sched_switch,exceptions:page_fault_user,syscalls:sys_enter_pwrite64
dev=""
for r in $(seq "$rounds"); do
  for t in rublk sitrep; do
    case $t in
      rublk) "$rublk" add loop -f "$backing" -q 1 -d 128 >/dev/null; pid=$(pgrep -n -x rublk) ;;
      sitrep) rm -rf /tmp/logs/x && mkdir -p /tmp/logs/x
        "$sitrep" disk add --backing "$backing" --log-dir /tmp/logs/x --queues 1 --depth 128 >/dev/null
        pid=$(pgrep -n -x "$(basename "$sitrep")") ;;
    esac
    dev=$(ls -t /dev/ublkb* | head -1)
    udevadm settle 2>/dev/null || true
    for f in /proc/"$pid"/task/*/stat; do awk '{print $1, $2, $14, $15}' "$f"; done >"$out/t0-$r-$t"
    head -1 /proc/stat >"$out/c0-$r-$t"
    perf stat -a -x, -o "$out/perf-$r-$t" -e "$events" -- \
      fio --name=rw --filename="$dev" --rw=randwrite --bs=4k --iodepth=32 --direct=1 \
        --ioengine=io_uring --size=256M --time_based --runtime="$secs" --output-format=json \
        >"$out/fio-$r-$t.json"
    head -1 /proc/stat >"$out/c1-$r-$t"
    for f in /proc/"$pid"/task/*/stat; do awk '{print $1, $2, $14, $15}' "$f"; done >"$out/t1-$r-$t"
    case $t in
      rublk) "$rublk" del -a >/dev/null ;;
      sitrep) "$sitrep" disk del "${dev#/dev/ublkb}" >/dev/null ;;
    esac
    echo "round $r: $t done"
  done
done
echo ok >"$out/done"
