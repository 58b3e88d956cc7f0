#!/usr/bin/env bash
# The package tier: builds the Debian package, installs it on this host, checks what it put
# where, verifies the systemd units, then removes (state and keys kept) and purges (gone).
# Needs root. Starts no unit (PID 1 need not be systemd here).
#
#   sudo scripts/package-test.sh          # builds target/release/sitrep if needed
#
# Refuses to run where the sitrep package is already installed: it would purge that
# host's configuration and state.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$SITREP_ROOT"

[[ $(id -u) -eq 0 ]] || die "must run as root (it installs the package)"
if dpkg-query -W -f='${Status}' sitrep 2>/dev/null | grep -q 'install ok installed'; then
    die "the sitrep package is installed on this host; this test would purge it"
fi
command -v systemd-analyze >/dev/null || die "systemd-analyze missing (scripts/install-deps.sh)"

deb=$(scripts/package.sh | tail -n1)
[[ -f $deb ]] || die "scripts/package.sh made no package"

cleanup() { apt-get purge -y -qq sitrep >/dev/null 2>&1 || true; }
trap cleanup EXIT

failures=0
check() {
    local what=$1
    shift
    if "$@"; then
        log "ok: $what"
    else
        log "FAIL: $what"
        failures=$((failures + 1))
    fi
}
mode_is() { [[ $(stat -c %a "$2") == "$1" ]]; }

log "apt-get install ./$deb"
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "./$deb" >/dev/null

check "/usr/bin/sitrep --version" bash -c '/usr/bin/sitrep --version | grep -q "^sitrep "'
check "man pages" test -f /usr/share/man/man1/sitrep.1.gz -a -f /usr/share/man/man1/sitrep-protect.1.gz
check "bash completion" test -s /usr/share/bash-completion/completions/sitrep
check "zsh completion" test -s /usr/share/zsh/vendor-completions/_sitrep
check "fish completion" test -s /usr/share/fish/vendor_completions.d/sitrep.fish
check "agent state 0700" mode_is 700 /var/lib/sitrep/agent
check "server store 0700" mode_is 700 /var/lib/sitrep/server
check "pki dir 0700" mode_is 700 /etc/sitrep/pki
for f in agent.toml server.toml agent.env server.env; do
    check "conffile $f" bash -c "dpkg-query -W -f='\${Conffiles}' sitrep | grep -q /etc/sitrep/$f"
done
# verify needs the units' binaries to exist: run it against the installed package.
units=(/lib/systemd/system/sitrep-agent.service /lib/systemd/system/sitrep-server.service
    /lib/systemd/system/sitrep-ublk@.service)
check "systemd-analyze verify" systemd-analyze verify "${units[@]}"

# The packaged config files are what the units run: each daemon starts from its file alone
# (a test socket and listen address added on the command line, which wins) and serves.
/usr/bin/sitrep certs init --dir /etc/sitrep/pki --name pkgtest --san 127.0.0.1 >/dev/null
runs_from_config() {
    local daemon=$1 sock pid rc=1
    sock=$(mktemp -u "/tmp/sitrep-pkg-$daemon.XXXXXX")
    local extra=()
    [[ $daemon == server ]] && extra=(--listen 127.0.0.1:0)
    /usr/bin/sitrep "$daemon" --config "/etc/sitrep/$daemon.toml" --socket "$sock" "${extra[@]}" \
        2>"/tmp/sitrep-pkg-$daemon.log" &
    pid=$!
    for _ in $(seq 150); do
        if /usr/bin/sitrep status --socket "$sock" --json >/dev/null 2>&1; then
            rc=0
            break
        fi
        sleep 0.2
    done
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true
    [[ $rc == 0 ]] || cat "/tmp/sitrep-pkg-$daemon.log" >&2
    return $rc
}
check "server runs from /etc/sitrep/server.toml" runs_from_config server
check "agent runs from /etc/sitrep/agent.toml" runs_from_config agent

# Removal keeps keys, policy and state; purge deletes them.
touch /etc/sitrep/pki/key.pem /var/lib/sitrep/agent/marker
DEBIAN_FRONTEND=noninteractive apt-get remove -y -qq sitrep >/dev/null
check "remove: binary gone" test ! -e /usr/bin/sitrep
check "remove: keys kept" test -f /etc/sitrep/pki/key.pem
check "remove: policy kept" test -f /etc/sitrep/agent.toml
check "remove: state kept" test -f /var/lib/sitrep/agent/marker
DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq sitrep >/dev/null
check "purge: /etc/sitrep gone" test ! -e /etc/sitrep
check "purge: state gone" test ! -e /var/lib/sitrep/agent -a ! -e /var/lib/sitrep/server

[[ $failures -eq 0 ]] || die "$failures package check(s) failed"
log "package checks passed"
