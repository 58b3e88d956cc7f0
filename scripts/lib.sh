# shellcheck shell=bash
# Shared helpers for sitrep's scripts. Source it; it defines functions and variables only.
#
# Where the VM kernel lives: one machine-wide directory (not the work tree), so a fresh clone
# (as CI makes) reuses a kernel another clone already unpacked, and `git clean` never drops it.
# Not under /var/cache, /var/tmp or /var/lib/apt: virtme-ng mounts empty tmpfs there in the
# guest, which would hide the modules (the guest's /lib/modules/<kver> symlinks to this dir).

# Directory holding unpacked VM kernels: $SITREP_VM_DIR/<kver>/{boot,lib/modules/<kver>}.
SITREP_VM_DIR="${SITREP_VM_DIR:-/var/lib/sitrep/vm-kernels}"

# Root of the repository this file belongs to.
# shellcheck disable=SC2034  # used by the scripts that source this file
SITREP_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# log MESSAGE... — a timestamped progress line on stderr.
log() {
    printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2
}

# die MESSAGE... — print an error naming the script and exit 1.
die() {
    printf '[%s] ERROR (%s): %s\n' "$(date +%H:%M:%S)" "$(basename "$0")" "$*" >&2
    exit 1
}

# pip_scripts_dir — where `pip install` puts console scripts for the python3 on PATH.
# (With pyenv, `vng` lands there and is reachable only through a shim that may be missing
# from a non-interactive PATH, so we put this directory on PATH explicitly.)
pip_scripts_dir() {
    python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'
}

# ensure_vng_on_path — make `vng` callable or fail with the reason.
ensure_vng_on_path() {
    if ! command -v vng >/dev/null 2>&1; then
        PATH="$(pip_scripts_dir):$PATH"
        export PATH
    fi
    command -v vng >/dev/null 2>&1 ||
        die "vng (virtme-ng) not found on PATH nor in $(pip_scripts_dir); run scripts/install-deps.sh"
}

# newest_vm_kernel_version — version string of the newest complete kernel in $SITREP_VM_DIR,
# or nothing.
newest_vm_kernel_version() {
    local d
    [[ -d "$SITREP_VM_DIR" ]] || return 0
    for d in "$SITREP_VM_DIR"/*/; do
        d="${d%/}"
        [[ -f "$d/.complete" ]] && basename "$d"
    done | sort -V | tail -n 1
}
