#!/bin/bash
# Runs INSIDE the container booted by scripts/systemd-test.sh, as a oneshot unit, with
# systemd as PID 1 (do not run it on the host). Writes "ok" or why not to /probe/result,
# then powers the container off.
set -uo pipefail

result=/probe/result
: >"$result"
finish() {
    echo "$1" >"$result"
    journalctl -u sitrep-agent -u sitrep-server --no-pager >/probe/journal.txt 2>&1
    systemctl --no-block poweroff
    exit 0
}
fail() { finish "$*"; }

[[ $(ps -p 1 -o comm=) == systemd ]] || fail "PID 1 is not systemd"
for u in sitrep-server sitrep-agent; do
    # Type=notify: active only once the daemon said READY=1.
    [[ $(systemctl is-active "$u") == active ]] || fail "$u is $(systemctl is-active "$u")"
done
systemctl show sitrep-agent -p Before | grep -q local-fs-pre.target ||
    fail "the agent unit is not ordered before local-fs-pre.target"

ctl() { sitrep "$@" --json; }
for _ in $(seq 300); do
    ctl status --socket /run/sitrep/agent.sock 2>/dev/null | grep -q '"name": "sd"' && break
    sleep 0.2
done
ctl status --socket /run/sitrep/agent.sock | grep -q '"name": "sd"' ||
    fail "the agent did not protect the disk its config declares"
sitrep wait sd --timeout 300 >/dev/null || fail "wait after the initial copy"

dd if=/dev/urandom of="$LOOPDEV" bs=64k count=16 seek=100 oflag=direct status=none
sitrep wait sd --timeout 300 >/dev/null || fail "wait after writes"

pid=$(systemctl show -p MainPID --value sitrep-agent)
systemctl reload sitrep-agent || fail "reload"
sleep 1
[[ $(systemctl show -p MainPID --value sitrep-agent) == "$pid" ]] ||
    fail "reload replaced the agent process"
[[ $(systemctl is-active sitrep-agent) == active ]] || fail "the agent died on reload"

systemctl restart sitrep-agent || fail "restart"
dd if=/dev/urandom of="$LOOPDEV" bs=64k count=16 seek=300 oflag=direct status=none
for _ in $(seq 300); do
    ctl status --socket /run/sitrep/agent.sock 2>/dev/null | grep -q '"name": "sd"' && break
    sleep 0.2
done
sitrep wait sd --timeout 300 >/dev/null || fail "wait after the restart"
st=$(ctl status --socket /run/sitrep/agent.sock)
echo "$st" | grep -q '"resyncs_completed": 0' || fail "a resync after a clean restart: $st"
# The restarted agent found the crash sentinel its predecessor pinned, still watching.
journalctl -u sitrep-agent --no-pager | grep -q "crash sentinel.*adopted=true" ||
    fail "the restarted agent did not adopt the crash sentinel"

systemctl stop sitrep-agent sitrep-server || fail "stop"
cmp "$LOOPDEV" /var/lib/sitrep/server/disks/sd/replica.img || fail "replica differs from the source"
# Started again, so that the container's shutdown stops it (the host checks it was clean).
systemctl start sitrep-agent || fail "start again"
finish ok
