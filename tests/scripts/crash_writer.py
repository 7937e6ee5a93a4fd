"""Writer and verifier for the kill -9 crash test, over libnbd.

write URI SEED LOG STATE
    Issues random writes, write-zeroes, FUA writes and flushes, one at a
    time, to the first REGION bytes of the export until the connection
    breaks (the server is killed). Every block written carries its op id and
    its own offset, so a reader can tell which op put it there. The log
    records each op before it is sent ("intent") and when it is
    acknowledged ("ack"), and each acknowledged flush.

verify URI LOG STATE
    Reads the region back and checks every block against what the log and
    the previous state allow: the value durable at the last acknowledged
    flush (or FUA write of that block), or any op issued after it. Writes
    the observed state for the next round. Exits 1 with a description of
    the first bad block.
"""

import json
import os
import random
import struct
import sys

import nbd

BLOCK = 4096
REGION = 32 << 20
BLOCKS = REGION // BLOCK


def block_bytes(op_id, block):
    header = struct.pack("<QQ", op_id, block)
    return header * (BLOCK // len(header))


def describe(data, block):
    """The op id a block holds: 0 for zeroes, -1 for anything else."""
    if data == bytes(BLOCK):
        return 0
    op_id, at = struct.unpack_from("<QQ", data)
    if at == block and data == block_bytes(op_id, block):
        return op_id
    return -1


def load_state(path):
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return [0] * BLOCKS


def write(uri, seed, log_path, state_path):
    rng = random.Random(seed)
    # Above every id still visible, so each block names exactly one op.
    first_op = max(load_state(state_path)) + 1
    # The log is emptied first: a writer that never got to connect (the
    # server killed before it did) leaves no events, rather than the last
    # round's.
    with open(log_path, "w") as log:
        h = nbd.NBD()
        try:
            h.connect_uri(uri)
        except nbd.Error:
            return  # the server went away before anything was written

        def record(event):
            log.write(json.dumps(event) + "\n")
            log.flush()

        op_id = first_op
        try:
            while True:
                choice = rng.random()
                if choice < 0.08:
                    record({"kind": "flush_intent"})
                    h.flush()
                    record({"kind": "flush_ack"})
                    continue
                count = rng.choice([1, 1, 2, 5, 16, 64, 300])
                first = rng.randrange(0, BLOCKS - count + 1)
                op_id += 1
                if choice < 0.18:
                    record({"kind": "intent", "op": 0, "first": first, "count": count})
                    h.zero(count * BLOCK, first * BLOCK)
                    record({"kind": "ack", "op": 0, "first": first, "count": count, "fua": False})
                    continue
                fua = rng.random() < 0.1
                payload = b"".join(block_bytes(op_id, b) for b in range(first, first + count))
                record({"kind": "intent", "op": op_id, "first": first, "count": count})
                h.pwrite(payload, first * BLOCK, nbd.CMD_FLAG_FUA if fua else 0)
                record({"kind": "ack", "op": op_id, "first": first, "count": count, "fua": fua})
        except nbd.Error:
            pass  # the server went away


def verify(uri, log_path, state_path):
    state = load_state(state_path)
    # durable[b]: the value b must at least have; later[b]: values it may
    # have instead (issued after the durable one).
    durable = list(state)
    pending = [[] for _ in range(BLOCKS)]  # values since the last durable point
    with open(log_path) as f:
        events = [json.loads(line) for line in f if line.endswith("\n")]
    for event in events:
        kind = event["kind"]
        if kind == "intent":
            for b in range(event["first"], event["first"] + event["count"]):
                pending[b].append(event["op"])
        elif kind == "ack" and event["fua"]:
            for b in range(event["first"], event["first"] + event["count"]):
                # This op is durable; anything issued before it is overwritten.
                durable[b] = event["op"]
                pending[b] = pending[b][pending[b].index(event["op"]) + 1:]
        elif kind == "flush_ack":
            # One op at a time: everything issued before the flush was
            # acknowledged before it, so the last of it is the new floor.
            for b in range(BLOCKS):
                if pending[b]:
                    durable[b] = pending[b][-1]
                    pending[b] = []
    h = nbd.NBD()
    h.connect_uri(uri)
    observed = []
    chunk = 1 << 20
    for offset in range(0, REGION, chunk):
        data = h.pread(chunk, offset)
        for i in range(chunk // BLOCK):
            b = offset // BLOCK + i
            value = describe(data[i * BLOCK:(i + 1) * BLOCK], b)
            allowed = {durable[b], *pending[b]}
            if value not in allowed:
                print(
                    f"block {b}: holds {value}, allowed {sorted(allowed)} "
                    f"(durable {durable[b]})",
                    file=sys.stderr,
                )
                sys.exit(1)
            observed.append(value)
    h.shutdown()
    with open(state_path, "w") as f:
        json.dump(observed, f)
    acked = sum(1 for e in events if e["kind"] == "ack")
    flushes = sum(1 for e in events if e["kind"] == "flush_ack")
    print(json.dumps({"acked_ops": acked, "acked_flushes": flushes}))


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "write":
        write(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5])
    elif mode == "verify":
        verify(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit(f"unknown mode {mode}")
