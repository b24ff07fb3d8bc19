"""Helpers shared by the nbdsh conformance scripts in scripts/nbd/.

The scripts run under nbdsh (`nbdsh -c - <script.py`, after this
directory is put on sys.path) against `lsvd-ublk serve-nbd`; the shell
stage in scripts/nbd-test.sh passes the server through the environment:

  NBD_SOCK   the unix socket
  NBD_NAME   the export's canonical name (IMG)
  NBD_ALIAS  the other name it answers to (POOL/IMG); '' is accepted too
  NBD_SIZE   the export size in bytes

A failed check is recorded and the script goes on, so one run shows
every deviation; `finish` then exits non-zero listing them all. Nothing
here prints a result that a reader has to judge: a check either holds
or fails the stage.
"""

import errno
import os
import sys

import nbd

SOCK = os.environ["NBD_SOCK"]
NAME = os.environ["NBD_NAME"]
ALIAS = os.environ["NBD_ALIAS"]
SIZE = int(os.environ["NBD_SIZE"])

# What the server advertises (src/nbd/server.rs: the 512-byte sector,
# PREFERRED_BLOCK, MAX_PAYLOAD).
BLOCK_MIN = 512
BLOCK_PREF = 4096
BLOCK_MAX = 32 << 20

_failures = []
_checks = 0


def check(cond, what):
    """Record `what` as a failure unless `cond` holds."""
    global _checks
    _checks += 1
    if not cond:
        _failures.append(what)
        print(f"  FAIL: {what}", file=sys.stderr, flush=True)
    return bool(cond)


def errname(n):
    return errno.errorcode.get(n, str(n))


def expect_error(fn, want, what):
    """`fn()` must raise nbd.Error with errno `want` (None: any errno)."""
    try:
        fn()
    except nbd.Error as e:
        if want is None:
            return check(True, what)
        return check(
            e.errnum == want,
            f"{what}: got {errname(e.errnum)} ({e.string}), expected {errname(want)}",
        )
    return check(False, f"{what}: succeeded, expected an error")


def expect_ok(fn, what):
    """`fn()` must not raise; returns its result (None on failure)."""
    try:
        return fn()
    except nbd.Error as e:
        check(False, f"{what}: {errname(e.errnum)} ({e.string})")
        return None


def succeeds(fn, what):
    """`fn()` must not raise; whether it did not."""
    try:
        fn()
        return True
    except nbd.Error as e:
        return check(False, f"{what}: {errname(e.errnum)} ({e.string})")


def strict(h, clear):
    """Clear libnbd's client-side checks in `clear` (STRICT_* bits), so
    the request reaches the server and the server's answer is tested."""
    h.set_strict_mode(h.get_strict_mode() & ~clear)


def connect(name=NAME, **settings):
    """A new handle connected to export `name`; `settings` are
    set_<key>(value) calls made before connecting."""
    h = nbd.NBD()
    h.set_export_name(name)
    for k, v in settings.items():
        getattr(h, "set_" + k)(v)
    h.connect_unix(SOCK)
    return h


def check_export_info(h, what):
    """Size, block sizes and transmission flags of the read-write export."""
    check(h.get_size() == SIZE, f"{what}: size {h.get_size()}, expected {SIZE}")
    got = tuple(h.get_block_size(t) for t in (nbd.SIZE_MINIMUM, nbd.SIZE_PREFERRED, nbd.SIZE_MAXIMUM))
    check(
        got == (BLOCK_MIN, BLOCK_PREF, BLOCK_MAX),
        f"{what}: block sizes min/pref/max {got}, expected {(BLOCK_MIN, BLOCK_PREF, BLOCK_MAX)}",
    )
    for flag, want in (
        ("is_read_only", False),
        ("can_flush", True),
        ("can_fua", True),
        ("can_trim", True),
        ("can_zero", True),
        ("can_multi_conn", True),
        ("can_fast_zero", False),
        ("can_df", False),
        ("can_cache", False),
    ):
        got = getattr(h, flag)()
        check(got == want, f"{what}: {flag}() is {got}, expected {want}")


def finish(name):
    """Exit non-zero if any check failed."""
    if _failures:
        print(f"{name}: {len(_failures)} of {_checks} checks FAILED:", file=sys.stderr)
        for f in _failures:
            print(f"  - {f}", file=sys.stderr)
        sys.exit(1)
    print(f"{name}: all {_checks} checks passed")
