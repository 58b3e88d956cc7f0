#!/usr/bin/env bash
# VM tier: build the `vm_*` test binaries of sitrep-tests on the host, boot the Debian 6.12
# kernel ONCE under qemu (virtme-ng, software emulation), and run them all inside it.
#
#   scripts/vm-tests.sh [-- libtest args...]    e.g. scripts/vm-tests.sh -- --nocapture dm
#
# The guest shares the host's root filesystem read-only (so it sees the binaries in target/
# and the kernel's modules), has its own /tmp, and writes its status into target/vm-status/
# (shared read-write). We check both vng's exit status (virtme-ng propagates the guest
# command's status; verified with 1.42) and the status files, which also tell "the VM did
# not boot" apart from "tests failed".
#
# Environment:
#   SITREP_VM_TIMEOUT  seconds for the whole VM run (default 900)
#   SITREP_VM_VERBOSE  =1 shows the kernel console (for boot problems)
#   SITREP_VM_KERNEL   path of a vmlinuz to boot instead of scripts/vm-kernel.sh's choice
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"
trap 'die "unexpected failure at line $LINENO: $BASH_COMMAND"' ERR
cd "$SITREP_ROOT"

[[ "${1:-}" == "--" ]] && shift
timeout_s="${SITREP_VM_TIMEOUT:-900}"
status_dir="$SITREP_ROOT/target/vm-status"

ensure_vng_on_path
kernel="$(scripts/vm-kernel.sh)"
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 missing; run scripts/install-deps.sh"

rm -rf "$status_dir"
mkdir -p "$status_dir"

log "building the sitrep binary (VM tests drive the CLI too: target/debug/sitrep)"
cargo build -q -p sitrep-cli
log "building VM-tier test binaries (cargo test -p sitrep-tests -p sitrep-cli --test 'vm_*' --no-run)"
cargo test -p sitrep-tests -p sitrep-cli --test 'vm_*' --no-run --message-format=json >"$status_dir/build.json"
python3 - "$status_dir/build.json" >"$status_dir/binaries" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    if (msg.get("reason") == "compiler-artifact" and msg.get("executable")
            and msg["profile"]["test"] and msg["target"]["name"].startswith("vm_")):
        print(msg["executable"])
EOF
[[ -s "$status_dir/binaries" ]] || die "cargo built no vm_* test binary (see $status_dir/build.json)"
log "test binaries: $(xargs -n1 basename <"$status_dir/binaries" | tr '\n' ' ')"

vng_args=(--run "$kernel" --disable-kvm --memory 2G --cpus 2 --rwdir="$status_dir")
[[ "${SITREP_VM_VERBOSE:-0}" == 1 ]] && vng_args+=(--verbose)
guest_cmd="$(printf '%q ' "$SITREP_ROOT/scripts/vm-guest.sh" "$status_dir" "$@")"

log "booting $(basename "$kernel") under qemu/TCG (timeout ${timeout_s}s; log: $status_dir/vm.log)"
for attempt in 1 2; do
    start=$SECONDS
    set +e
    # timeout signals its whole process group on expiry, so qemu (vng's child) dies with vng.
    timeout --kill-after=30 "$timeout_s" vng "${vng_args[@]}" --exec "$guest_cmd" </dev/null 2>&1 |
        tee "$status_dir/vm.log"
    vng_rc=${PIPESTATUS[0]}
    set -e
    wall=$((SECONDS - start))
    # A VM that never booted and exited quickly (seen once in CI with the benchmark's VM:
    # vng returned after 11 s with nothing on its console) gets one more boot.
    if ((attempt == 1 && wall < 60 && vng_rc != 124 && vng_rc != 137)) &&
        [[ ! -f "$status_dir/booted" ]]; then
        log "the VM exited after ${wall}s without booting (vng exit $vng_rc); booting it again"
        mv "$status_dir/vm.log" "$status_dir/vm-attempt1.log"
        continue
    fi
    break
done

if [[ $vng_rc -eq 124 || $vng_rc -eq 137 ]]; then
    booted=no
    [[ -f "$status_dir/booted" ]] && booted="yes, after $(cat "$status_dir/booted") s"
    die "VM run exceeded ${timeout_s}s (booted: $booted); see $status_dir/vm.log"
fi
if [[ ! -f "$status_dir/booted" ]]; then
    die "the VM did not boot (vng exit $vng_rc, ${wall}s); rerun with SITREP_VM_VERBOSE=1 for the kernel console; log: $status_dir/vm.log"
fi
if [[ ! -f "$status_dir/exit-code" ]]; then
    die "the guest stopped before finishing (vng exit $vng_rc; kernel panic or OOM?); log: $status_dir/vm.log"
fi
guest_rc="$(cat "$status_dir/exit-code")"
if [[ "$guest_rc" != "$vng_rc" ]]; then
    log "warning: vng exit $vng_rc differs from the guest's $guest_rc; trusting the guest"
fi

log "VM tier: kernel $(scripts/vm-kernel.sh --version), boot $(cat "$status_dir/booted") s (guest uptime at start), total ${wall}s wall"
while read -r r bin; do
    log "  $( ((r == 0)) && echo PASS || echo "FAIL (exit $r)") $(basename "$bin")"
done <"$status_dir/results"
if [[ "$guest_rc" != 0 ]]; then
    die "VM tier failed (guest exit $guest_rc)"
fi
log "VM tier passed"
