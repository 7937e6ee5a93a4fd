"""Sends a fixed mix of NBD requests to an export over libnbd, prints one
JSON line saying what it sent, then keeps the connection open until its
standard input closes, so a test can look at the server meanwhile.

traffic.py URI

Sent, in order: 4 writes of 64 KiB, 3 reads of 128 KiB, a flush, a trim
and a write-zeroes of 64 KiB, a cache of 64 KiB, a block-status query of
the whole export, and a 4 KiB read past the end (refused by the server;
strict mode is off so libnbd sends it).
"""

import json
import sys

import nbd

BLOCK = 64 << 10


def main():
    handle = nbd.NBD()
    handle.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    handle.connect_uri(sys.argv[1])
    size = handle.get_size()
    for i in range(4):
        handle.pwrite(bytes([i + 1]) * BLOCK, i * BLOCK)
    for _ in range(3):
        handle.pread(2 * BLOCK, 0)
    handle.flush()
    handle.trim(BLOCK, 4 * BLOCK)
    handle.zero(BLOCK, 5 * BLOCK)
    handle.cache(BLOCK, 0)
    handle.block_status(size, 0, lambda *args: 0)
    handle.set_strict_mode(0)
    refused = False
    try:
        handle.pread(4096, size)
    except nbd.Error:
        refused = True
    print(json.dumps({"size": size, "refused": refused}), flush=True)
    sys.stdin.read()
    handle.shutdown()


if __name__ == "__main__":
    main()
