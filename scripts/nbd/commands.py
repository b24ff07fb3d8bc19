# nbdsh conformance: every transmission command against a byte-array
# oracle of the whole export (run by scripts/nbd-test.sh on a fresh,
# all-zero image; see conform.py for the environment).
#
#   READ, WRITE (plain and FUA), FLUSH, TRIM (plain and FUA),
#   WRITE_ZEROES (plain, FUA, NO_HOLE, FUA|NO_HOLE): fixed cases at the
#   start, the end and the 32M maximum, then a seeded random mix of 400,
#   each read compared with the oracle;
#   64 writes in flight on one connection (the async API), then read back;
#   with libnbd's client-side checks off, so that the server answers:
#   reads past the end and overflowing ranges EINVAL, writes and
#   write-zeroes past the end ENOSPC, trims past the end EINVAL (the NBD
#   spec's error values), unaligned reads and writes EINVAL, a read over
#   the 32M maximum EINVAL, CACHE (not advertised) EINVAL, an unknown
#   command flag and NO_HOLE on a write EINVAL, FUA on a read and a flush
#   accepted (the spec says MUST); after each error the connection still
#   works and nothing changed;
#   NBD_CMD_DISC (h.shutdown) with writes still in flight: they are
#   answered first, and a new connection reads them;
#   finally the whole export compared with the oracle, and its sha256
#   written to $NBD_DIGEST for the read-only stage.
import errno
import hashlib
import os
import random

import nbd

from conform import (BLOCK_MAX, NAME, SIZE, check, check_export_info, connect, expect_error,
                     expect_ok, finish, strict, succeeds)

FUA = nbd.CMD_FLAG_FUA
NO_HOLE = nbd.CMD_FLAG_NO_HOLE
oracle = bytearray(SIZE)
rng = random.Random(15)

h = connect(NAME)
check_export_info(h, "commands")
check(h.get_structured_replies_negotiated(), "structured replies not negotiated")


def write(off, data, flags=0, hh=None):
    if succeeds(lambda: (hh or h).pwrite(data, off, flags), f"write {len(data)} at {off} flags {flags}"):
        oracle[off:off + len(data)] = data


def zero_range(op, off, n, flags, name):
    if succeeds(lambda: op(n, off, flags), f"{name} {n} at {off} flags {flags}"):
        oracle[off:off + n] = bytes(n)


def read_check(off, n, what="", hh=None):
    got = None
    try:
        got = (hh or h).pread(n, off)
    except nbd.Error as e:
        return check(False, f"read {n} at {off} {what}: {e.string}")
    if got == oracle[off:off + n]:
        return check(True, "")
    first = next(i for i in range(n) if got[i] != oracle[off + i])
    return check(False, f"read {n} at {off} {what}: differs from the oracle first at byte "
                        f"{off + first} (got {got[first]:#x}, expected {oracle[off + first]:#x})")


def compare_all(hh, what):
    step = 4 << 20
    for off in range(0, SIZE, step):
        if not read_check(off, min(step, SIZE - off), what, hh):
            return False
    return True


# --- Fixed cases: start, end, maximum payload, each command and flag.
write(0, rng.randbytes(4096))
write(4096, rng.randbytes(512), FUA)
read_check(0, 8192)
write(SIZE - 4096, rng.randbytes(4096), FUA)
read_check(SIZE - 512, 512, "(last sector)")
read_check(SIZE - 65536, 65536, "(tail)")
big = rng.randbytes(BLOCK_MAX)
write(8 << 20, big)
read_check(8 << 20, BLOCK_MAX, "(maximum payload)")
succeeds(h.flush, "flush")
zero_range(h.trim, 8 << 20, 1 << 20, 0, "trim")
zero_range(h.trim, (9 << 20) + 512, 4096, FUA, "trim")
zero_range(h.zero, 10 << 20, 65536, 0, "zero")
zero_range(h.zero, (10 << 20) + 3 * 512, 1536, FUA, "zero")
zero_range(h.zero, 11 << 20, 8192, NO_HOLE, "zero")
zero_range(h.zero, (12 << 20) + 512, 512, FUA | NO_HOLE, "zero")
zero_range(h.zero, 16 << 20, 24 << 20, 0, "zero")  # larger than a payload may be
read_check(8 << 20, BLOCK_MAX, "(after trims and zeroes)")
succeeds(h.flush, "flush")

# --- A seeded random mix, every read compared with the oracle.
SECTORS = SIZE // 512
for i in range(400):
    sec = rng.randrange(SECTORS)
    n = min(rng.choice((1, 1, 8, 8, 16, 128, 2048)), SECTORS - sec)
    off, length = sec * 512, n * 512
    op = rng.randrange(10)
    if op < 3:
        write(off, rng.randbytes(length))
    elif op == 3:
        write(off, rng.randbytes(length), FUA)
    elif op == 4:
        zero_range(h.trim, off, length, rng.choice((0, FUA)), "trim")
    elif op == 5:
        zero_range(h.zero, off, length, rng.choice((0, FUA, NO_HOLE, FUA | NO_HOLE)), "zero")
    elif op == 6:
        succeeds(h.flush, "flush")
    else:
        read_check(off, length, f"(random op {i})")

# --- 64 writes in flight on one connection, disjoint, then read back.
cookies = []
bufs = []
for i in range(64):
    off = (40 << 20) + i * 65536 + rng.randrange(0, 65536 - 8192, 512)
    data = rng.randbytes(8192)
    oracle[off:off + 8192] = data
    bufs.append(nbd.Buffer.from_bytearray(bytearray(data)))
    cookies.append(h.aio_pwrite(bufs[-1], off, flags=FUA if i % 8 == 0 else 0))
while h.aio_in_flight() > 0:
    h.poll(-1)
for c in cookies:
    succeeds(lambda: check(h.aio_command_completed(c), f"async write cookie {c} not completed"),
             f"async write cookie {c}")
read_check(40 << 20, 4 << 20, "(after 64 async writes)")

# --- Errors from the server: libnbd's client-side checks off.
strict(h, nbd.STRICT_BOUNDS | nbd.STRICT_ALIGN | nbd.STRICT_COMMANDS | nbd.STRICT_FLAGS)
digest_before = hashlib.sha256(oracle).hexdigest()
expect_error(lambda: h.pread(512, SIZE), errno.EINVAL, "read at the end")
expect_error(lambda: h.pread(4096, SIZE - 512), errno.EINVAL, "read across the end")
expect_error(lambda: h.pread(1024, 2**64 - 512), errno.EINVAL, "read whose range overflows")
expect_error(lambda: h.pwrite(bytes(512), SIZE), errno.ENOSPC, "write at the end")
expect_error(lambda: h.pwrite(bytes(4096), SIZE - 512, FUA), errno.ENOSPC, "FUA write across the end")
expect_error(lambda: h.zero(4096, SIZE - 512), errno.ENOSPC, "write-zeroes across the end")
expect_error(lambda: h.trim(512, SIZE), errno.EINVAL, "trim at the end (spec: EINVAL for read or trim)")
expect_error(lambda: h.trim(4096, SIZE - 512), errno.EINVAL, "trim across the end")
expect_error(lambda: h.pread(100, 1), errno.EINVAL, "unaligned read")
expect_error(lambda: h.pwrite(b"u" * 100, 4097), errno.EINVAL, "unaligned write")
expect_error(lambda: h.pread(BLOCK_MAX + 512, 0), errno.EINVAL, "read over the maximum block size")
expect_error(lambda: h.cache(4096, 0), errno.EINVAL, "NBD_CMD_CACHE (not advertised)")
# Same bytes as the oracle holds: the test stays valid if these succeed.
expect_error(lambda: h.pwrite(bytes(oracle[0:512]), 0, 1 << 15), errno.EINVAL, "write with an unknown flag")
expect_error(lambda: h.pwrite(bytes(oracle[0:512]), 0, NO_HOLE), errno.EINVAL, "write with NO_HOLE")
got = expect_ok(lambda: h.pread(512, 0, FUA), "read with FUA (the spec: MUST be accepted)")
check(got is None or got == oracle[0:512], "read with FUA: data differs from the oracle")
succeeds(lambda: h.flush(FUA), "flush with FUA (the spec: MUST be accepted)")
check(hashlib.sha256(oracle).hexdigest() == digest_before, "the oracle changed (a test bug)")
read_check(0, 8192, "(after the error cases)")
read_check(SIZE - 65536, 65536, "(tail after the error cases)")
h.set_strict_mode(nbd.STRICT_MASK)

# --- Disconnect with writes in flight: answered before the close.
g = connect(NAME)
bufs = []
for i in range(16):
    off = (60 << 20) + i * 65536
    data = rng.randbytes(65536)
    oracle[off:off + 65536] = data
    bufs.append(nbd.Buffer.from_bytearray(bytearray(data)))
    g.aio_pwrite(bufs[-1], off)
g.shutdown()
check(g.aio_is_closed() or g.aio_is_dead(), "after shutdown the handle is closed")
expect_error(lambda: g.pread(512, 0), None, "read after shutdown")
h.shutdown()

# --- The whole export, on a new connection.
h = connect("")
compare_all(h, "(whole export)")
h.shutdown()
with open(os.environ["NBD_DIGEST"], "w") as f:
    f.write(hashlib.sha256(oracle).hexdigest() + "\n")
finish("commands")
