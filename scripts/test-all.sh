#!/usr/bin/env bash
# THE test command: installs what is missing, then runs every tier and prints a summary.
#
#   sudo scripts/test-all.sh
#
# Tiers (see docs/testing.md):
#   deps   scripts/install-deps.sh (idempotent; ~1 s when everything is present)
#   deny   cargo deny check bans licenses sources (deny.toml)
#   host   cargo test --workspace: unit tests + root tier (tests/tests/root_*.rs); VM-tier tests
#          print SKIP on the host, because the next step runs them
#   vm     scripts/vm-tests.sh: VM tier inside the Debian 6.12 kernel
#   reboot scripts/vm-reboot-test.sh: the same disks booted six times (clean reboots: no
#          resync when trusted; a resync after an untracked write or a killed VM); ~6 min
#   fuzz   scripts/fuzz.sh, if present and executable
#   bench  scripts/bench.sh --quick, then `sitrep-bench check`: a smoke test of the benchmark
#          harness (it runs every scenario and writes a well-formed report; no timing is
#          asserted). SITREP_SKIP_BENCH=1 leaves it out of a local run.
#   package scripts/package-test.sh: builds the .deb (reusing the bench tier's release build),
#          installs it, checks paths and modes, `systemd-analyze verify` on the units, then
#          remove (state kept) and purge (state gone). Starts no unit. ~20 s after the build.
#   systemd scripts/systemd-test.sh: the package installed, its units under systemd as PID 1
#          in a systemd-nspawn container (ready notification, a disk from the config file
#          replicated, reload, restart with no resync, clean stop at shutdown); ~15 s.
#
# SITREP_REQUIRE_TIERS=1 is exported, so a test whose capability is missing fails instead of
# skipping. Every tier runs even if an earlier one failed (except deps, which all depend on);
# exit status is non-zero if any tier failed.
set -uo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$SITREP_ROOT" || exit 1

[[ $(id -u) -eq 0 ]] || die "must run as root (root and VM tiers need it)"
export SITREP_REQUIRE_TIERS=1

names=()
verdicts=()
passed=0
failed=0
skipped=0

# tier NAME COMMAND... — run one tier, record PASS/FAIL and its duration.
tier() {
    local name=$1 start rc
    shift
    log "=== tier $name: $* ==="
    start=$SECONDS
    "$@"
    rc=$?
    names+=("$name")
    if [[ $rc -eq 0 ]]; then
        verdicts+=("PASS  $((SECONDS - start))s")
        passed=$((passed + 1))
    else
        verdicts+=("FAIL  $((SECONDS - start))s (exit $rc)")
        failed=$((failed + 1))
    fi
    log "=== tier $name: ${verdicts[-1]} ==="
    return $rc
}

total_start=$SECONDS
if ! tier deps scripts/install-deps.sh; then
    die "dependencies could not be installed; no test ran"
fi
# The scripts dir of pip (virtme-ng's vng) may be missing from a non-interactive PATH.
ensure_vng_on_path
# Every tier has a hard limit, so a hang fails its tier (and prints what ran) instead of
# holding CI until its own 90-minute limit with nothing to show. A normal run takes ~5, ~6
# and ~3 minutes on 2 cores.
# Dependency policy (deny.toml): banned crates, licenses, sources. Advisories need the RustSec
# database, which CI cannot fetch; docs/security.md records the manual review.
tier deny cargo deny check bans licenses sources
tier host timeout --kill-after=30s 40m cargo test --workspace --no-fail-fast
tier vm timeout --kill-after=30s 25m scripts/vm-tests.sh
tier reboot timeout --kill-after=30s 15m scripts/vm-reboot-test.sh
if [[ -x scripts/fuzz.sh ]]; then
    tier fuzz timeout --kill-after=30s 10m scripts/fuzz.sh
else
    names+=(fuzz)
    verdicts+=("SKIP  (scripts/fuzz.sh not present)")
    skipped=$((skipped + 1))
fi

if [[ ${SITREP_SKIP_BENCH:-0} == 1 ]]; then
    names+=(bench)
    verdicts+=("SKIP  (SITREP_SKIP_BENCH=1)")
    skipped=$((skipped + 1))
else
    tier bench timeout --kill-after=30s 25m scripts/bench-smoke.sh
fi
tier package timeout --kill-after=30s 15m scripts/package-test.sh
tier systemd timeout --kill-after=30s 10m env SITREP_NO_BUILD=1 scripts/systemd-test.sh

log "=== summary ($((SECONDS - total_start))s) ==="
for i in "${!names[@]}"; do
    printf '  %-7s %s\n' "${names[$i]}" "${verdicts[$i]}"
done
echo "tiers: $passed passed, $failed failed, $skipped skipped"
[[ $failed -eq 0 ]]
