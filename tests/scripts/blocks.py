"""Writes a file into an NBD export, or checks an export against a file,
block by block, over libnbd.

write URI FILE OFFSET
    Writes FILE's bytes at OFFSET and flushes.

check URI FILE [BLOCK]
    Reads FILE's length from the start of the export in BLOCK-byte reads
    (default 256 KiB) and prints one JSON object: how many blocks read back
    equal to FILE ("good"), how many reads failed ("failed"), how many
    returned other bytes ("wrong"), and the offset of the first wrong one.
    A read that fails is fine when the volume has lost data; a wrong one
    never is.
"""

import json
import sys

import nbd


def connect(uri):
    handle = nbd.NBD()
    handle.connect_uri(uri)
    return handle


def write(uri, path, offset):
    handle = connect(uri)
    with open(path, "rb") as source:
        data = source.read()
    step = 4 << 20
    for at in range(0, len(data), step):
        handle.pwrite(data[at : at + step], offset + at)
    handle.flush()
    handle.shutdown()


def check(uri, path, block):
    handle = connect(uri)
    with open(path, "rb") as expected_file:
        expected = expected_file.read()
    counts = {"good": 0, "failed": 0, "wrong": 0, "first_wrong": None, "first_error": None}
    for at in range(0, len(expected), block):
        want = expected[at : at + block]
        try:
            got = handle.pread(len(want), at)
        except nbd.Error as e:
            counts["failed"] += 1
            if counts["first_error"] is None:
                counts["first_error"] = f"offset {at}: {e}"
            continue
        if got == want:
            counts["good"] += 1
        else:
            counts["wrong"] += 1
            if counts["first_wrong"] is None:
                counts["first_wrong"] = at
    handle.shutdown()
    print(json.dumps(counts))


def main():
    command = sys.argv[1]
    if command == "write":
        write(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif command == "check":
        block = int(sys.argv[4]) if len(sys.argv) > 4 else 256 << 10
        check(sys.argv[2], sys.argv[3], block)
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main()
