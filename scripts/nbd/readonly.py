# nbdsh conformance: `serve-nbd --read-only` (run by scripts/nbd-test.sh
# after commands.py, whose final sha256 of the export is in $NBD_DIGEST).
#
#   the flags: read-only, no trim, no write-zeroes, flush and multi-conn;
#   libnbd refuses writes itself (EPERM) by default; with its client-side
#   checks off, the server refuses WRITE (plain and FUA), TRIM and
#   WRITE_ZEROES with EPERM (the NBD spec's error value), and the
#   connection goes on; FLUSH works; reads return the same bytes as
#   before, on this and a second connection.
import errno
import hashlib
import os

import nbd

from conform import ALIAS, BLOCK_MAX, NAME, SIZE, check, connect, expect_error, finish, strict, succeeds

want = open(os.environ["NBD_DIGEST"]).read().strip()


def digest(hh):
    s = hashlib.sha256()
    for off in range(0, SIZE, BLOCK_MAX):
        s.update(hh.pread(min(BLOCK_MAX, SIZE - off), off))
    return s.hexdigest()


h = connect(ALIAS)
check(h.get_size() == SIZE, f"size {h.get_size()}")
got = (h.is_read_only(), h.can_trim(), h.can_zero(), h.can_flush(), h.can_multi_conn())
check(got == (True, False, False, True, True),
      f"read_only/trim/zero/flush/multi_conn {got}, expected (True, False, False, True, True)")
check(digest(h) == want, "the read-only export differs from what the read-write server left")
expect_error(lambda: h.pwrite(bytes(512), 0), errno.EPERM, "libnbd's own refusal of a write")
strict(h, nbd.STRICT_COMMANDS)
off = 4 << 20
expect_error(lambda: h.pwrite(b"\xee" * 4096, off), errno.EPERM, "write to a read-only export")
expect_error(lambda: h.pwrite(b"\xee" * 4096, off, nbd.CMD_FLAG_FUA), errno.EPERM,
             "FUA write to a read-only export")
expect_error(lambda: h.trim(65536, off), errno.EPERM, "trim on a read-only export")
expect_error(lambda: h.zero(65536, off), errno.EPERM, "write-zeroes on a read-only export")
succeeds(h.flush, "flush on a read-only export")
check(digest(h) == want, "the export changed after refused writes")
h.shutdown()
g = connect(NAME)
check(digest(g) == want, "the export changed (second connection)")
g.shutdown()
finish("readonly")
