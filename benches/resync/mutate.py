#!/usr/bin/env python3
"""Overwrite PERCENT % of the 4 KiB blocks of TARGET (a file or a block device) with new
random bytes, at positions chosen by a seeded RNG (the same seed picks the same blocks in
every run), and print what was changed as one JSON object on stdout:

  {"blocks": K, "differing_bytes": K*4096, "regions_1m": R, "fine_blocks": R*256}

where R is the number of distinct 1 MiB regions holding a changed block (what a two-level
checksum resync must compare at 4 KiB granularity).

  mutate.py TARGET SIZE_BYTES PERCENT SEED [--direct]

--direct writes with O_DIRECT (for a block device: the writes reach the device, not the
page cache); otherwise the file is written normally and fsync'ed before exiting.
"""

import json
import mmap
import os
import random
import sys

BLOCK = 4096
REGION = 1 << 20


def main() -> int:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    direct = "--direct" in sys.argv[1:]
    if len(args) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    target, size, percent, seed = args[0], int(args[1]), float(args[2]), int(args[3])
    nblocks = size // BLOCK
    k = round(nblocks * percent / 100.0)
    blocks = sorted(random.Random(seed).sample(range(nblocks), k))

    flags = os.O_WRONLY
    if direct:
        flags |= os.O_DIRECT
    fd = os.open(target, flags)
    # An anonymous mapping is page aligned, as O_DIRECT requires.
    buf = mmap.mmap(-1, BLOCK)
    try:
        chunk = b""
        pos = 0
        for b in blocks:
            if pos == len(chunk):
                chunk, pos = os.urandom(BLOCK * 256), 0
            buf[:] = chunk[pos : pos + BLOCK]
            pos += BLOCK
            if os.pwrite(fd, buf, b * BLOCK) != BLOCK:
                raise OSError(f"short write at block {b} of {target}")
        os.fsync(fd)
    finally:
        buf.close()
        os.close(fd)
    regions = len({b * BLOCK // REGION for b in blocks})
    json.dump(
        {
            "blocks": k,
            "differing_bytes": k * BLOCK,
            "regions_1m": regions,
            "fine_blocks": regions * (REGION // BLOCK),
        },
        sys.stdout,
    )
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
