# nbdsh conformance: every handshake option the server answers, driven by
# libnbd (run by scripts/nbd-test.sh; see conform.py for the environment).
# Reads only: the commands script checks the whole image against an
# oracle afterwards, so this one must not change it.
#
#   NBD_OPT_LIST            one export, the canonical name
#   NBD_OPT_INFO            size, block sizes 512/4096/32M, every flag, the
#                           canonical name, for the name and both aliases
#                           ('' and POOL/IMG); an unknown name gets
#                           NBD_REP_ERR_UNKNOWN and the negotiation goes on
#   NBD_OPT_GO              same, then transmission; an unknown name first
#   NBD_OPT_ABORT           the server acks and closes; it keeps serving
#   NBD_OPT_EXPORT_NAME     libnbd sends it only to a server it treats as
#                           non-fixed newstyle, so the client's
#                           FIXED_NEWSTYLE handshake flag is cleared; with
#                           and without NO_ZEROES (the 124 bytes of
#                           padding), for every name; an unknown name
#                           closes the connection (the option has no error
#                           reply)
#   NBD_OPT_STRUCTURED_REPLY  accepted: libnbd asks (its default); a
#                           client that does not ask gets simple replies
#   NBD_OPT_STARTTLS        refused: TLS_ALLOW connects in clear,
#                           TLS_REQUIRE fails to connect
#   NBD_OPT_LIST_META_CONTEXT  lists base:allocation (refused without
#                           structured replies)
#   NBD_OPT_SET_META_CONTEXT   base:allocation, then block status: a fresh
#                           image is one hole (HOLE|ZERO); an unknown
#                           context is ignored
import errno

import nbd

from conform import (ALIAS, NAME, SIZE, SOCK, check, check_export_info, connect,
                     expect_error, expect_ok, finish, succeeds)

ALL_NAMES = (NAME, "", ALIAS)

# --- LIST, INFO (each name, and an unknown one), GO on one connection.
h = nbd.NBD()
h.set_opt_mode(True)
h.set_full_info(True)
h.connect_unix(SOCK)
check(h.aio_is_negotiating(), "opt mode: the handle is negotiating after connect")
check(h.get_protocol() == "newstyle-fixed", f"protocol {h.get_protocol()}, expected newstyle-fixed")
for attempt in (1, 2):
    listed = []
    n = expect_ok(lambda: h.opt_list(lambda name, desc: listed.append(name)), f"NBD_OPT_LIST #{attempt}")
    check(n == 1 and listed == [NAME], f"NBD_OPT_LIST #{attempt}: {n} exports {listed}, expected ['{NAME}']")
for name in ALL_NAMES:
    h.set_export_name(name)
    if not succeeds(h.opt_info, f"NBD_OPT_INFO '{name}'"):
        continue
    check_export_info(h, f"NBD_OPT_INFO '{name}'")
    canon = expect_ok(h.get_canonical_export_name, f"NBD_OPT_INFO '{name}': NBD_INFO_NAME")
    check(canon == NAME, f"NBD_OPT_INFO '{name}': canonical name '{canon}', expected '{NAME}'")
    check(h.aio_is_negotiating(), f"NBD_OPT_INFO '{name}': still negotiating afterwards")
h.set_export_name("no-such-export")
expect_error(h.opt_info, errno.ENOENT, "NBD_OPT_INFO of an unknown export (NBD_REP_ERR_UNKNOWN)")
check(h.aio_is_negotiating(), "after a failed NBD_OPT_INFO the negotiation goes on")
expect_error(h.opt_go, errno.ENOENT, "NBD_OPT_GO of an unknown export (NBD_REP_ERR_UNKNOWN)")
check(h.aio_is_negotiating(), "after a failed NBD_OPT_GO the negotiation goes on")
expect_error(lambda: h.opt_list_meta_context(lambda ctx: 0), None,
             "NBD_OPT_LIST_META_CONTEXT of an unknown export")
h.set_export_name(ALIAS)
listed = []
n = expect_ok(lambda: h.opt_list_meta_context(lambda ctx: listed.append(ctx)), "NBD_OPT_LIST_META_CONTEXT")
check(n == 1 and listed == [nbd.CONTEXT_BASE_ALLOCATION],
      f"NBD_OPT_LIST_META_CONTEXT: {n} contexts {listed}, expected ['{nbd.CONTEXT_BASE_ALLOCATION}']")
h.set_export_name(ALIAS)
succeeds(h.opt_go, f"NBD_OPT_GO '{ALIAS}' after the failures")
check(h.aio_is_ready(), "NBD_OPT_GO: the handle is ready for transmission")
check_export_info(h, "NBD_OPT_GO")
check(h.get_canonical_export_name() == NAME, "NBD_OPT_GO: canonical name")
check(h.get_structured_replies_negotiated(), "NBD_OPT_GO: structured replies were not negotiated")
check(len(expect_ok(lambda: h.pread(4096, 0), "read after NBD_OPT_GO") or b"") == 4096,
      "read after NBD_OPT_GO returns 4096 bytes")
h.shutdown()

# --- GO with each name (libnbd's default path: no opt mode).
for name in ALL_NAMES:
    g = expect_ok(lambda: connect(name), f"connect (NBD_OPT_GO) '{name}'")
    if g is None:
        continue
    check_export_info(g, f"NBD_OPT_GO '{name}'")
    check(len(g.pread(512, 0)) == 512, f"read through '{name}'")
    g.shutdown()
g = nbd.NBD()
g.set_export_name("no-such-export")
expect_error(lambda: g.connect_unix(SOCK), errno.ENOENT, "connect (NBD_OPT_GO) to an unknown export")

# --- ABORT: acknowledged, the connection closes, the server serves on.
g = nbd.NBD()
g.set_opt_mode(True)
g.connect_unix(SOCK)
succeeds(g.opt_abort, "NBD_OPT_ABORT")
check(g.aio_is_closed(), "NBD_OPT_ABORT: the connection is closed")
g = nbd.NBD()
g.set_opt_mode(True)
g.connect_unix(SOCK)
listed = []
g.opt_list(lambda name, desc: listed.append(name))
succeeds(g.opt_abort, "NBD_OPT_ABORT after NBD_OPT_LIST")
g = expect_ok(lambda: connect(NAME), "connect after two aborted negotiations")
if g is not None:
    check(len(g.pread(512, 0)) == 512, "read after two aborted negotiations")
    g.shutdown()

# --- EXPORT_NAME. libnbd uses NBD_OPT_GO with any fixed-newstyle server
# (it never falls back while GO works), so the only way to make it send
# NBD_OPT_EXPORT_NAME is to clear its FIXED_NEWSTYLE handshake flag; the
# libnbd debug trace shows which option it sent.
for flags, label in ((0, "no handshake flags: 124 zero bytes of padding"),
                     (nbd.HANDSHAKE_FLAG_NO_ZEROES, "NO_ZEROES")):
    for name in ALL_NAMES:
        what = f"NBD_OPT_EXPORT_NAME '{name}' ({label})"
        trace = []
        g = nbd.NBD()
        g.set_debug_callback(lambda ctx, msg: trace.append(msg))
        g.set_debug(True)
        g.set_handshake_flags(flags)
        g.set_export_name(name)
        if not succeeds(lambda: g.connect_unix(SOCK), what):
            continue
        g.set_debug(False)
        check(any("OPT_EXPORT_NAME.SEND" in m for m in trace), f"{what}: libnbd did not send it")
        check(not any("OPT_GO.SEND" in m for m in trace), f"{what}: libnbd sent NBD_OPT_GO")
        check(g.get_protocol() == "newstyle", f"{what}: protocol {g.get_protocol()}")
        check(g.get_size() == SIZE, f"{what}: size {g.get_size()}")
        check_flags = (g.can_flush(), g.can_fua(), g.can_trim(), g.can_zero(), g.can_multi_conn(),
                       g.is_read_only())
        check(check_flags == (True, True, True, True, True, False),
              f"{what}: flush/fua/trim/zero/multi_conn/read_only {check_flags}")
        # Transmission works: reads and a flush line up with their replies.
        check(len(g.pread(65536, 0)) == 65536 and len(g.pread(512, 4096)) == 512, f"{what}: reads")
        succeeds(g.flush, f"{what}: flush")
        g.shutdown()
g = nbd.NBD()
g.set_handshake_flags(0)
g.set_export_name("no-such-export")
expect_error(lambda: g.connect_unix(SOCK), None,
             "NBD_OPT_EXPORT_NAME of an unknown export (the server must close)")

# --- STRUCTURED_REPLY (libnbd's default) and base:allocation.
g = nbd.NBD()
check(g.get_request_structured_replies(), "libnbd asks for structured replies by default")
g.add_meta_context("x-unknown:context")
g.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
g.set_opt_mode(True)
g.set_export_name(NAME)
g.connect_unix(SOCK)
succeeds(g.opt_go, "NBD_OPT_GO with NBD_OPT_SET_META_CONTEXT")
check(g.get_structured_replies_negotiated(), "structured replies not negotiated")
check(g.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION), "base:allocation not negotiated")
check(not g.can_meta_context("x-unknown:context"), "an unknown context was selected")
seen = []
expect_ok(lambda: g.block_status(SIZE, 0, lambda ctx, off, ents, err: seen.append((ctx, off, list(ents))) or 0),
          "block status")
check(seen == [(nbd.CONTEXT_BASE_ALLOCATION, 0, [SIZE, 3])],
      f"block status of a fresh image: {seen}, expected one hole|zero extent of {SIZE}")
check(len(g.pread(4096, 0)) == 4096, "read with structured replies")
g.shutdown()
g = expect_ok(lambda: connect(NAME, request_structured_replies=False),
              "connect without asking for structured replies")
if g is not None:
    check(not g.get_structured_replies_negotiated(), "structured replies negotiated unasked")
    check(len(g.pread(4096, 0)) == 4096, "read without structured replies")
    g.shutdown()

# --- STARTTLS: refused; TLS_ALLOW falls back to clear, TLS_REQUIRE fails.
if nbd.NBD().supports_tls():
    g = expect_ok(lambda: connect(NAME, tls=nbd.TLS_ALLOW), "connect with TLS_ALLOW")
    if g is not None:
        check(not g.get_tls_negotiated(), "TLS negotiated (the server has no TLS)")
        check(len(g.pread(4096, 0)) == 4096, "read after a refused NBD_OPT_STARTTLS")
        g.shutdown()
    g = nbd.NBD()
    g.set_tls(nbd.TLS_REQUIRE)
    g.set_export_name(NAME)
    expect_error(lambda: g.connect_unix(SOCK), errno.ENOTSUP,
                 "TLS_REQUIRE against a server that refuses NBD_OPT_STARTTLS")
else:
    check(False, "this libnbd has no TLS support: NBD_OPT_STARTTLS cannot be tested")

finish("options")
