#!/usr/bin/env bash
# Print the path of the kernel image the VM tier boots (newest unpacked by install-deps.sh).
#
#   scripts/vm-kernel.sh            -> /var/lib/sitrep/vm-kernels/<kver>/boot/vmlinuz-<kver>
#   scripts/vm-kernel.sh --version  -> <kver>
#
# SITREP_VM_KERNEL=<path to vmlinuz> overrides the choice.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"
trap 'die "unexpected failure at line $LINENO: $BASH_COMMAND"' ERR

if [[ -n "${SITREP_VM_KERNEL:-}" ]]; then
    [[ -f "$SITREP_VM_KERNEL" ]] || die "SITREP_VM_KERNEL=$SITREP_VM_KERNEL does not exist"
    img="$SITREP_VM_KERNEL"
    kver="$(basename "$img")"
    kver="${kver#vmlinuz-}"
else
    kver="$(newest_vm_kernel_version)"
    [[ -n "$kver" ]] || die "no VM kernel unpacked in $SITREP_VM_DIR; run scripts/install-deps.sh"
    img="$SITREP_VM_DIR/$kver/boot/vmlinuz-$kver"
fi

if [[ "${1:-}" == "--version" ]]; then
    echo "$kver"
else
    echo "$img"
fi
