# nbdsh conformance: NBD_FLAG_CAN_MULTI_CONN (run by scripts/nbd-test.sh,
# twice; see conform.py for the environment).
#
# NBD_PHASE=write: 8 handles connect at once (one thread each) and all see
# can_multi_conn; each writes its own 2 MiB region of a seeded pattern as
# 32 writes of 64 KiB in flight at once, and every write completes; each
# handle reads another handle's region (one export, whatever the
# connection); then ONE flush, on handle 0, and at once, with all 8
# connections still open, SIGKILL of the server ($NBD_SERVER_PID).
# Multi-conn promises that this flush made every write that any
# connection had completed before it durable.
#
# NBD_PHASE=verify (after the shell restarted the server): a fresh handle
# reads every region back intact, and every other byte equal to
# $NBD_BASE (the raw image the export held before the write phase).
#
# Note that SIGKILL loses only what the server held in its own memory;
# the page cache survives it, so this does not model power loss (the
# crash model in `cargo test` does).
import os
import random
import signal
import threading

import nbd

from conform import NAME, SIZE, check, connect, finish, succeeds

N = 8
REGION = 2 << 20
CHUNK = 64 << 10
PHASE = os.environ["NBD_PHASE"]


def region(i):
    return i * (8 << 20) + (1 << 20)


def pattern(i):
    return random.Random(1000 + i).randbytes(REGION)


assert all(region(i) + REGION <= SIZE for i in range(N))

if PHASE == "write":
    handles = [None] * N
    start = threading.Barrier(N)

    def writer(i):
        try:
            h = nbd.NBD()
            h.set_handle_name(f"conn{i}")
            h.set_export_name(NAME)
            start.wait()
            h.connect_unix(os.environ["NBD_SOCK"])
            handles[i] = h
            check(h.can_multi_conn(), f"conn{i}: can_multi_conn is false")
            start.wait()
            data = pattern(i)
            bufs, cookies = [], []
            for k in range(0, REGION, CHUNK):
                bufs.append(nbd.Buffer.from_bytearray(bytearray(data[k:k + CHUNK])))
                cookies.append(h.aio_pwrite(bufs[-1], region(i) + k))
            check(h.aio_in_flight() > 0 or all(h.aio_command_completed(c) for c in cookies),
                  f"conn{i}: no write in flight")
            while h.aio_in_flight() > 0:
                h.poll(-1)
            for c in cookies:
                check(h.aio_command_completed(c), f"conn{i}: write cookie {c} not completed")
        except (nbd.Error, threading.BrokenBarrierError) as e:
            start.abort()
            check(False, f"conn{i}: {e}")

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(N)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    check(all(handles), "not every handle connected")
    if all(handles):
        for i, h in enumerate(handles):
            j = (i + 3) % N
            check(h.pread(REGION, region(j)) == pattern(j),
                  f"conn{i} does not read conn{j}'s completed writes")
        # The one flush, on one connection; then the crash, with every
        # connection still open (no disconnect, no close-time flush).
        flushed = succeeds(handles[0].flush, "the flush on conn0")
        os.kill(int(os.environ["NBD_SERVER_PID"]), signal.SIGKILL)
        check(flushed, "flush failed before the kill")
        print(f"multiconn: {N} connections wrote, one flushed, server killed")
elif PHASE == "verify":
    base = bytearray(open(os.environ["NBD_BASE"], "rb").read())
    check(len(base) == SIZE, f"base image {len(base)} bytes, expected {SIZE}")
    for i in range(N):
        base[region(i):region(i) + REGION] = pattern(i)
    h = connect("")
    for i in range(N):
        got = h.pread(REGION, region(i))
        check(got == pattern(i), f"conn{i}'s region at {region(i)} lost after the flush and kill -9 "
                                 f"({sum(a != b for a, b in zip(got, pattern(i)))} bytes differ)")
    step = 4 << 20
    for off in range(0, SIZE, step):
        n = min(step, SIZE - off)
        check(h.pread(n, off) == base[off:off + n], f"bytes {off}..{off + n} differ from the expected image")
    h.shutdown()
else:
    raise SystemExit(f"NBD_PHASE={PHASE}: expected write or verify")
finish(f"multiconn {PHASE}")
