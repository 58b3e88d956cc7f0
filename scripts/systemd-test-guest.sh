#!/bin/bash
# Runs INSIDE the container booted by scripts/systemd-test.sh, as a oneshot unit, with
# systemd as PID 1 (do not run it on the host). PHASE is the boot (first, again; see
# systemd-test.sh). Writes "ok" or why not to /probe/result, then powers the container off.
set -uo pipefail

result=/probe/result
: >"$result"
finish() {
    echo "$1" >"$result"
    journalctl -u sitrep-agent -u sitrep-server -u srv-p.mount --no-pager \
        >"/probe/journal-$PHASE.txt" 2>&1
    systemctl --no-block poweroff
    exit 0
}
fail() { finish "$*"; }

ctl() { sitrep "$@" --json; }
agent_status() { ctl status --socket /run/sitrep/agent.sock; }
# protected — wait until the agent has started the disk its config declares.
protected() {
    for _ in $(seq 300); do
        agent_status 2>/dev/null | grep -q '"name": "sd"' && return 0
        sleep 0.2
    done
    fail "the agent did not protect the disk its config declares"
}
# no_resync WHEN — this agent process ran no resync and plans none.
no_resync() {
    local st
    st=$(agent_status)
    echo "$st" | grep -q '"resyncs_completed": 0' || fail "a resync $1: $st"
    echo "$st" | grep -q 'resync-required' && fail "a resync is required $1: $st"
}
monotonic() { systemctl show -p ActiveEnterTimestampMonotonic --value "$1"; }

[[ $(ps -p 1 -o comm=) == systemd ]] || fail "PID 1 is not systemd"
for u in sitrep-server sitrep-agent srv-p.mount; do
    # Type=notify: active only once the daemon said READY=1.
    [[ $(systemctl is-active "$u") == active ]] || fail "$u is $(systemctl is-active "$u")"
done
systemctl show sitrep-agent -p Before | grep -q local-fs-pre.target ||
    fail "the agent unit is not ordered before local-fs-pre.target"
# The agent was ready (tracking) before the protected filesystem was mounted.
agent_ready=$(monotonic sitrep-agent)
mounted=$(monotonic srv-p.mount)
((agent_ready > 0 && agent_ready < mounted)) ||
    fail "the agent was ready at ${agent_ready}us, after /srv/p was mounted at ${mounted}us"
protected

case $PHASE in
first)
    sitrep wait sd --timeout 300 >/dev/null || fail "wait after the initial copy"
    head -c 4M /dev/urandom >/srv/p/one && sync -f /srv/p/one || fail "writing /srv/p/one"
    sitrep wait sd --timeout 300 >/dev/null || fail "wait after writes"

    pid=$(systemctl show -p MainPID --value sitrep-agent)
    systemctl reload sitrep-agent || fail "reload"
    sleep 1
    [[ $(systemctl show -p MainPID --value sitrep-agent) == "$pid" ]] ||
        fail "reload replaced the agent process"
    [[ $(systemctl is-active sitrep-agent) == active ]] || fail "the agent died on reload"

    systemctl restart sitrep-agent || fail "restart"
    head -c 4M /dev/urandom >/srv/p/two && sync -f /srv/p/two || fail "writing /srv/p/two"
    protected
    sitrep wait sd --timeout 300 >/dev/null || fail "wait after the restart"
    no_resync "after a clean restart"
    # The restarted agent found the crash sentinel its predecessor pinned, still watching.
    journalctl -u sitrep-agent --no-pager | grep -q "crash sentinel.*adopted=true" ||
        fail "the restarted agent did not adopt the crash sentinel"
    sha256sum /srv/p/one /srv/p/two >/probe/files.sha256
    # Power off with the filesystem mounted: the shutdown unmounts it, then stops the agent.
    finish ok
    ;;
again)
    # The chain continued from the last boot's clean stop: nothing was written untracked.
    no_resync "at the second boot"
    sitrep wait sd --timeout 300 >/dev/null || fail "wait at the second boot"
    (cd /srv/p && sha256sum -c --quiet /probe/files.sha256) || fail "the first boot's files differ"
    systemctl stop srv-p.mount || fail "unmount /srv/p"
    sitrep wait sd --timeout 300 >/dev/null || fail "wait after the unmount"
    no_resync "after the unmount"
    systemctl stop sitrep-agent sitrep-server || fail "stop"
    replica=/var/lib/sitrep/server/disks/sd/replica.img
    cmp "$LOOPDEV" "$replica" || fail "replica differs from the source"
    e2fsck -fn "$replica" >/probe/fsck.txt 2>&1 || fail "the replica's filesystem is not clean"
    # Started again, so that the container's shutdown stops it (the host checks it was clean).
    systemctl start sitrep-agent || fail "start again"
    finish ok
    ;;
*) fail "unknown PHASE '$PHASE'" ;;
esac
