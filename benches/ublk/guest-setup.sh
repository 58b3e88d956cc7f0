# shellcheck shell=bash
# Sourced INSIDE the VM by guest.sh, cpu-guest.sh and ab-guest.sh: the setup they share.
# Loads the drivers, writes the 512 MiB backing file in the guest's tmpfs ($backing) and
# mounts sitrep's log filesystem at /tmp/logs: ext4 over a loop device, so a log sync pays a
# real fdatasync through a filesystem (a log on tmpfs would make logging free). The image
# lives in the guest's tmpfs (half the VM's RAM, shared with the backing file): `discard`
# gives deleted logs' blocks back to it, or a few rounds of journal mode fill it and the log
# writes fail with ENOSPC. Sets: backing, logdev.
modprobe ublk_drv
modprobe loop
backing=/tmp/bench.img
truncate -s 512M "$backing"
# The first 256 MiB (the region the fio jobs use, --size=256M) written once, so the first
# target of round 1 does not pay the tmpfs page allocation for all the others (it ran at
# about half its later rate). Not all 512 MiB: the tmpfs (1 GiB) also holds the log fs.
dd if=/dev/zero of="$backing" bs=1M count=256 conv=notrunc status=none
truncate -s 1G /tmp/logfs.img
logdev=$(losetup -f --show /tmp/logfs.img)
mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$logdev"
mkdir -p /tmp/logs
mount -o discard "$logdev" /tmp/logs
