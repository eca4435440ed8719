"""Exec records and control (issue 4): background execs, wait, signal, kill,
stdin over REST, resize, output with retention, re-attach over WebSocket
(replay exactness, gaps, several viewers, detach), sandbox stop/start,
idle_timeout_s / max_duration_s, sbxd restarts, and bad input.

Every server here runs with --retain-bytes 2097152 (the minimum) so the gap
case needs only a few MiB of output."""

import asyncio
import json
import os
import signal
import time
import unittest

import harness
from harness import EX_ID_RE, SbxTestCase, Server, agent_pid, err_field, ns_only, unique

RETAIN = 2097152
PY = "/usr/bin/python3"
UNKNOWN_EX = "ex_00000000deadbeef"


# -- a server with extra options ------------------------------------------------

class CtlServer(Server):
    """harness.Server with extra sbxd flags (kept for the call sites)."""

    def __init__(self, extra=(), **kw):
        super().__init__(extra=extra, **kw)



# -- WebSocket client (Debian's python3-websockets 10.4) ------------------------

def _parse(frame):
    if isinstance(frame, bytes):
        st = {1: "stdout", 2: "stderr"}.get(frame[0], "bin%d" % frame[0])
        return {"type": st, "offset": int.from_bytes(frame[1:9], "big"), "raw": frame[9:],
                "binary": True}
    return json.loads(frame)


def data_of(m):
    if "raw" in m:
        return m["raw"]
    if "data_b64" in m:
        return harness.unb64(m["data_b64"])
    return m["data"].encode("utf-8")


async def _collect(url, proto="sbx.v1.json", first=None, stop=None, timeout=20):
    """Messages of one WebSocket until the server closes it, `stop(msgs)` is
    true (then we close), or `timeout` passes.  Returns (msgs, close_code,
    subprotocol); close_code None when we closed or timed out."""
    import websockets
    from websockets.exceptions import ConnectionClosed
    msgs = []
    code = None
    async with websockets.connect(url, subprotocols=[proto], open_timeout=10, close_timeout=5,
                                  max_size=None, max_queue=None) as ws:
        chosen = ws.subprotocol
        if first is not None:
            await ws.send(json.dumps(first))
        deadline = time.time() + timeout
        try:
            while True:
                left = deadline - time.time()
                if left <= 0:
                    break
                try:
                    frame = await asyncio.wait_for(ws.recv(), left)
                except asyncio.TimeoutError:
                    break
                msgs.append(_parse(frame))
                if stop is not None and stop(msgs):
                    break
        except ConnectionClosed:
            code = ws.close_code
    return msgs, code, chosen


def rebuild(tc, msgs, start=(0, 0)):
    """Checks the data events' offsets are contiguous per stream (a `gap`
    moves the expected offset to its `to`) and returns
    {"stdout": bytes, "stderr": bytes, "first": {stream: first offset},
     "gaps": [...], "order": [(stream, bytes)...] (adjacent same-stream merged)}."""
    pos = {"stdout": start[0], "stderr": start[1]}
    out = {"stdout": bytearray(), "stderr": bytearray()}
    first = {}
    gaps = []
    order = []
    for m in msgs:
        t = m.get("type")
        if t == "gap":
            tc.assertIn(m["stream"], pos, m)
            tc.assertEqual(m["from"], pos[m["stream"]], "gap does not start where we are: %r" % m)
            tc.assertGreater(m["to"], m["from"], m)
            gaps.append(m)
            pos[m["stream"]] = m["to"]
            first.setdefault(m["stream"], m["to"])
        elif t in ("stdout", "stderr"):
            d = data_of(m)
            tc.assertEqual(m["offset"], pos[t], "%s event at offset %d, expected %d"
                           % (t, m["offset"], pos[t]))
            first.setdefault(t, m["offset"])
            pos[t] += len(d)
            out[t] += d
            if order and order[-1][0] == t:
                order[-1] = (t, order[-1][1] + d)
            else:
                order.append((t, bytes(d)))
    return {"stdout": bytes(out["stdout"]), "stderr": bytes(out["stderr"]), "first": first,
            "gaps": gaps, "order": order}


def types(msgs):
    return [m.get("type") for m in msgs]


# -- programs run in the sandbox --------------------------------------------------

INTERLEAVE_N = 25


def interleave_expected():
    order = []
    for i in range(INTERLEAVE_N):
        order.append(("stdout", ("o%02d:" % i + "x" * (i % 7) + "\n").encode()))
        order.append(("stderr", ("E%02d-" % i + "y" * (i % 5) + "\n").encode()))
    return order


INTERLEAVE_PROG = r'''
import os, time
for i in range(%d):
    os.write(1, ("o%%02d:" %% i + "x" * (i %% 7) + "\n").encode())
    time.sleep(0.02)
    os.write(2, ("E%%02d-" %% i + "y" * (i %% 5) + "\n").encode())
    time.sleep(0.02)
''' % INTERLEAVE_N

SIGNAL_PROG = r'''
import os, signal, time
def h(s, f):
    os.write(1, b"sig%d\n" % s)
signal.signal(signal.SIGUSR1, h)
signal.signal(signal.SIGUSR2, h)
os.write(1, b"ready\n")
while True:
    time.sleep(0.02)
'''

WINCH_PROG = r'''
import fcntl, os, signal, struct, termios, time
def h(s, f):
    r, c = struct.unpack("hh", fcntl.ioctl(0, termios.TIOCGWINSZ, b"1234"))
    os.write(1, b"size %d %d\n" % (r, c))
signal.signal(signal.SIGWINCH, h)
os.write(1, b"ready\n")
while True:
    time.sleep(0.02)
'''

PROC_SLEEPS = ("for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done"
               " | grep -c '^sleep 29.7 *$' || true")

GAP_TOTAL = 6 * 1024 * 1024
GAP_PROG = r'''
import os, time
data = b"".join(b"%015d\n" % i for i in range(393216))
v = memoryview(data)
while v:
    v = v[os.write(1, v[:65536]):]
time.sleep(60)
'''


def gap_expected():
    return b"".join(b"%015d\n" % i for i in range(393216))


def ticks_prog(n, dt, err=True):
    return ("import os, time\n"
            "for i in range(%d):\n"
            "    os.write(1, b'out %%03d\\n' %% i)\n"
            "%s"
            "    time.sleep(%s)\n" % (n, "    os.write(2, b'err %03d\\n' % i)\n" if err else "",
                                     dt))


def ticks_expected(n, err=True):
    out = b"".join(b"out %03d\n" % i for i in range(n))
    errb = b"".join(b"err %03d\n" % i for i in range(n)) if err else b""
    return out, errb


class CtlCase(SbxTestCase):
    extra_args = ["--retain-bytes", str(RETAIN)]

    @classmethod
    def setUpClass(cls):
        cls.srv = CtlServer(extra=cls.extra_args, images_dir=cls.images_dir,
                            data_parent=cls.data_parent)
        try:
            cls.srv.start()
            cls.setUpServer()
        except BaseException:
            cls.srv.cleanup()
            cls.srv = None
            raise

    # -- helpers ----------------------------------------------------------------
    def bg(self, ref, **body):
        body["background"] = True
        r = self.req("POST", "/v1/sandboxes/%s/exec" % ref, body)
        self.assertEqual(r.status, 202, r)
        self.assertEqual(set(r.json), {"exec_id", "state", "pid"}, r)
        self.assertRegex(r.json["exec_id"], EX_ID_RE)
        self.assertEqual(r.json["state"], "running", r)
        self.assertIsInstance(r.json["pid"], int, r)
        return r.json

    def bg_py(self, ref, prog, **body):
        return self.bg(ref, cmd=PY, args=["-c", prog], **body)

    def output(self, ex, stream=None, offset=None):
        q = []
        if stream is not None:
            q.append("stream=" + stream)
        if offset is not None:
            q.append("offset=%s" % offset)
        return self.req("GET", "/v1/execs/%s/output%s" % (ex, "?" + "&".join(q) if q else ""))

    def out_ok(self, ex, stream=None, offset=None):
        """(data, X-Sbx-Offset, X-Sbx-Next-Offset, complete) of a 200 output reply."""
        r = self.output(ex, stream, offset)
        self.assertEqual(r.status, 200, r)
        self.assertTrue((r.headers.get("Content-Type") or "").startswith(
            "application/octet-stream"), r.headers.get("Content-Type"))
        h = r.headers
        for k in ("X-Sbx-Offset", "X-Sbx-Next-Offset", "X-Sbx-Complete"):
            self.assertIsNotNone(h.get(k), "no %s header on %r" % (k, r))
        off, nxt, comp = int(h["X-Sbx-Offset"]), int(h["X-Sbx-Next-Offset"]), h["X-Sbx-Complete"]
        self.assertIn(comp, ("true", "false"))
        self.assertEqual(nxt - off, len(r.raw), "headers %s..%s but %d bytes" % (off, nxt, len(r.raw)))
        return r.raw, off, nxt, comp == "true"

    def poll_output(self, ex, pred, stream="stdout", timeout=10):
        deadline = time.time() + timeout
        while True:
            data = self.out_ok(ex, stream, 0)[0]
            if pred(data) or time.time() > deadline:
                return data
            time.sleep(0.05)

    def get_exec(self, ex):
        r = self.req("GET", "/v1/execs/" + ex)
        self.assertEqual(r.status, 200, r)
        return r.json

    def wait(self, ex, timeout_ms=None, http_timeout=60):
        q = "" if timeout_ms is None else "?timeout_ms=%s" % timeout_ms
        r = self.req("GET", "/v1/execs/%s/wait%s" % (ex, q), timeout=http_timeout)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["exec_id"], ex, r)
        return r.json

    def post_signal(self, ex, sig):
        return self.req("POST", "/v1/execs/%s/signal" % ex, {"signal": sig})

    def ws_url(self, path):
        return "ws://127.0.0.1:%d%s" % (self.srv.port, path)

    def view(self, ex, offset=None, stderr_offset=None, proto="sbx.v1.json", stop=None,
             timeout=20):
        q = []
        if offset is not None:
            q.append("offset=%s" % offset)
        if stderr_offset is not None:
            q.append("stderr_offset=%s" % stderr_offset)
        path = "/v1/execs/%s/ws%s" % (ex, "?" + "&".join(q) if q else "")
        return asyncio.run(_collect(self.ws_url(path), proto, stop=stop, timeout=timeout))

    def assertEnded(self, msgs, code, exit_code=0, sig=None):
        t = types(msgs)
        self.assertTrue(t and t[0] == "started", t[:3])
        self.assertIn("exited", t, t[-5:])
        self.assertEqual(t[-2:], ["exited", "done"], t[-5:])
        ex = msgs[t.index("exited")]
        self.assertEqual(ex["exit_code"], exit_code, ex)
        self.assertEqual(ex["signal"], sig, ex)
        self.assertEqual(code, 1000, "close code")

    def sandbox_state(self, sid):
        """State from the list (GET /v1/sandboxes/{ref} would count as activity)."""
        r = self.req("GET", "/v1/sandboxes?limit=500")
        self.assertEqual(r.status, 200, r)
        for s in r.json["data"]:
            if s["id"] == sid:
                return s
        self.fail("sandbox %s not listed" % sid)


class TestControl(CtlCase):

    @classmethod
    def setUpServer(cls):
        cls.name = unique("ctl")
        r = cls.srv.request("POST", "/v1/sandboxes", {"name": cls.name})
        if r.status != 201:
            raise AssertionError("create: %r" % r)
        cls.sid = r.json["id"]

    # -- background execs, records, lists, wait --------------------------------------
    def test_background_record_list_wait(self):
        t0 = time.time()
        b = self.bg(self.name, cmd="sh", args=["-c", "echo hi; sleep 0.6; echo bye >&2"])
        self.assertLess(time.time() - t0, 0.5, "202 did not come at once")
        ex = b["exec_id"]
        o = self.get_exec(ex)
        self.assertEqual(o["state"], "running", o)
        self.assertEqual(o["pid"], b["pid"], o)
        self.assertEqual(o["sandbox_id"], self.sid)
        self.assertIsNone(o["ended_at"], o)
        lst = self.req("GET", "/v1/sandboxes/%s/execs?state=running" % self.name).json["data"]
        self.assertIn(ex, [e["exec_id"] for e in lst])
        for e in lst:
            self.assertEqual(e["state"], "running", e)
        o = self.wait(ex)
        self.assertGreater(time.time() - t0, 0.5)
        self.assertEqual(o["state"], "exited", o)
        self.assertEqual(o["exit_code"], 0, o)
        self.assertIsNone(o["signal"], o)
        self.assertEqual(o["stdout_bytes"], 3, o)
        self.assertEqual(o["stderr_bytes"], 4, o)
        self.assertTime(o["ended_at"])
        lst = self.req("GET", "/v1/sandboxes/%s/execs" % self.name).json["data"]
        self.assertEqual(lst[0]["exec_id"], ex, "list is not newest first")
        lst = self.req("GET", "/v1/sandboxes/%s/execs?state=exited" % self.name).json["data"]
        self.assertIn(ex, [e["exec_id"] for e in lst])
        lst = self.req("GET", "/v1/sandboxes/%s/execs?state=running" % self.name).json["data"]
        self.assertNotIn(ex, [e["exec_id"] for e in lst])
        # wait on an ended exec answers at once, with any timeout
        self.assertEqual(self.wait(ex, 0)["state"], "exited")
        self.assertEqual(self.wait(ex, 5000)["state"], "exited")

    def test_wait_timeout_and_kill(self):
        ex = self.bg(self.name, cmd="sleep", args=["30"])["exec_id"]
        t0 = time.time()
        o = self.wait(ex, 0)
        self.assertEqual(o["state"], "running", o)
        self.assertLess(time.time() - t0, 1)
        t0 = time.time()
        o = self.wait(ex, 400)
        dt = time.time() - t0
        self.assertEqual(o["state"], "running", o)
        self.assertGreaterEqual(dt, 0.35)
        self.assertLess(dt, 3)
        # a waiter blocked without timeout is released by the kill
        t, box = harness.in_thread(self.srv.request, "GET", "/v1/execs/%s/wait" % ex, None,
                                   None, 30)
        time.sleep(0.3)
        r = self.req("POST", "/v1/execs/%s/kill" % ex)
        self.assertEqual(r.status, 202, r)
        self.assertEqual(r.json, {"exec_id": ex, "signal": 9})
        t.join(10)
        self.assertIn("result", box, box)
        o = box["result"].json
        self.assertEqual(box["result"].status, 200, box["result"])
        self.assertIn(o["state"], ("exited", "killed"), o)
        self.assertEqual(o["signal"], 9, o)
        self.assertEqual(o["exit_code"], -1, o)
        self.assertTime(o["ended_at"])
        # control of an ended exec: 409
        self.assertError(self.req("POST", "/v1/execs/%s/kill" % ex), 409, "sandbox_not_running")
        self.assertError(self.post_signal(ex, "SIGTERM"), 409, "sandbox_not_running")

    def test_signal_names_and_numbers(self):
        ex = self.bg_py(self.name, SIGNAL_PROG)["exec_id"]
        self.assertEqual(self.poll_output(ex, lambda d: b"ready" in d), b"ready\n")
        r = self.post_signal(ex, "SIGUSR1")
        self.assertEqual(r.status, 202, r)
        self.assertEqual(r.json, {"exec_id": ex, "signal": 10})
        self.poll_output(ex, lambda d: d.count(b"sig") == 1)
        r = self.post_signal(ex, 12)
        self.assertEqual(r.status, 202, r)
        self.assertEqual(r.json, {"exec_id": ex, "signal": 12})
        self.assertEqual(self.poll_output(ex, lambda d: d.count(b"sig") == 2),
                         b"ready\nsig10\nsig12\n")
        self.assertEqual(self.get_exec(ex)["state"], "running")
        r = self.post_signal(ex, "SIGTERM")
        self.assertEqual(r.status, 202, r)
        self.assertEqual(r.json, {"exec_id": ex, "signal": 15})
        o = self.wait(ex, 10000)
        self.assertEqual(o["state"], "exited", o)
        self.assertEqual(o["exit_code"], -1, o)
        self.assertEqual(o["signal"], 15, o)

    def test_signal_reaches_process_group(self):
        # sh forks a child sleep; SIGTERM to the group ends both, quickly
        ex = self.bg(self.name, cmd="sh", args=["-c", "sleep 29.7; echo after"])["exec_id"]
        time.sleep(0.3)
        self.assertEqual(self.sh_ok(self.name, PROC_SLEEPS).strip(), "1")
        self.assertEqual(self.post_signal(ex, 15).status, 202)
        t0 = time.time()
        o = self.wait(ex, 10000)
        self.assertLess(time.time() - t0, 5)
        self.assertEqual(o["state"], "exited", o)
        self.assertEqual(o["signal"], 15, o)
        self.assertEqual(o["stdout_bytes"], 0, o)
        self.assertEqual(self.sh_ok(self.name, PROC_SLEEPS).strip(), "0",
                         "the child sleep survived the group signal")

    def test_end_states_failed_timed_out_nonzero(self):
        # never started: 422 at once, a "failed" record with its failure
        r = self.req("POST", "/v1/sandboxes/%s/exec" % self.name,
                     {"cmd": "/nope/prog", "background": True})
        self.assertError(r, 422, "exec_failed")
        ex = err_field(r.json, "exec_id")
        self.assertRegex(ex or "", EX_ID_RE, r)
        o = self.wait(ex)
        self.assertEqual(o["state"], "failed", o)
        self.assertEqual(o["failure"]["kind"], "not_found", o)
        self.assertIsNone(o["pid"], o)
        lst = self.req("GET", "/v1/sandboxes/%s/execs?state=failed" % self.name).json["data"]
        self.assertIn(ex, [e["exec_id"] for e in lst])
        self.assertEqual(self.out_ok(ex, "stdout", 0), (b"", 0, 0, True))
        self.assertError(self.post_signal(ex, "SIGTERM"), 409, "sandbox_not_running")
        msgs, code, _ = self.view(ex)
        self.assertEqual(types(msgs), ["failed", "done"], msgs)
        self.assertEqual(msgs[0]["failure"]["kind"], "not_found")
        self.assertEqual(code, 1000)
        # its timeout passes: timed_out, killed with SIGKILL
        ex = self.bg(self.name, cmd="sh", args=["-c", "echo t; sleep 5"], timeout_ms=300)["exec_id"]
        t0 = time.time()
        o = self.wait(ex, 10000)
        self.assertLess(time.time() - t0, 3)
        self.assertEqual((o["state"], o["exit_code"], o["signal"]), ("timed_out", -1, 9), o)
        self.assertEqual(self.out_ok(ex), (b"t\n", 0, 2, True))
        msgs, code, _ = self.view(ex)
        self.assertEqual(types(msgs), ["started", "stdout", "error", "exited", "done"], msgs)
        self.assertEqual(msgs[2]["error"]["kind"], "exec_timeout", msgs)
        self.assertEqual(code, 1000)
        # a non-zero exit is an ordinary end
        ex = self.bg(self.name, cmd="sh", args=["-c", "exit 7"])["exec_id"]
        o = self.wait(ex, 10000)
        self.assertEqual((o["state"], o["exit_code"], o["signal"]), ("exited", 7, None), o)
        msgs, code, _ = self.view(ex)
        self.assertEnded(msgs, code, exit_code=7)

    # -- stdin ------------------------------------------------------------------------
    def test_stdin_rest(self):
        ex = self.bg(self.name, cmd="cat")["exec_id"]
        r = self.req("POST", "/v1/execs/%s/stdin" % ex, b"hello ",
                     {"Content-Type": "application/octet-stream"})
        self.assertEqual(r.status, 204, r)
        self.assertEqual(r.raw, b"")
        self.assertEqual(self.poll_output(ex, lambda d: d == b"hello "), b"hello ")
        blob = bytes(range(256)) * 3
        r = self.req("POST", "/v1/execs/%s/stdin" % ex, blob,
                     {"Content-Type": "application/octet-stream"})
        self.assertEqual(r.status, 204, r)
        self.assertEqual(self.get_exec(ex)["state"], "running", "cat ended before eof")
        r = self.req("POST", "/v1/execs/%s/stdin?eof=true" % ex, b"end\n",
                     {"Content-Type": "application/octet-stream"})
        self.assertEqual(r.status, 204, r)
        o = self.wait(ex, 10000)
        self.assertEqual(o["state"], "exited", o)
        self.assertEqual(o["exit_code"], 0, o)
        want = b"hello " + blob + b"end\n"
        self.assertEqual(o["stdout_bytes"], len(want), o)
        data, off, nxt, comp = self.out_ok(ex, "stdout", 0)
        self.assertEqual(data, want)
        self.assertEqual((off, nxt, comp), (0, len(want), True))
        # its stdin is closed now: 409
        r = self.req("POST", "/v1/execs/%s/stdin" % ex, b"more")
        self.assertError(r, 409, "sandbox_not_running")

    def test_stdin_large_body(self):
        # more than the agent link's socket buffer in one POST (under --max-body)
        name = unique("bigin")
        self.mk(name=name)
        n = 700000
        ex = self.bg(name, cmd="wc", args=["-c"])["exec_id"]
        r = self.req("POST", "/v1/execs/%s/stdin?eof=true" % ex, b"z" * n,
                     {"Content-Type": "application/octet-stream"}, timeout=15)
        self.assertEqual(r.status, 204, r)
        o = self.wait(ex, 8000, http_timeout=15)
        self.assertEqual((o["state"], o["exit_code"]), ("exited", 0),
                         "wc never got its %d bytes of stdin and EOF: %r" % (n, o))
        self.assertEqual(self.out_ok(ex)[0].strip(), str(n).encode())
        # the sandbox's agent link still works
        r = self.req("POST", "/v1/sandboxes/%s/exec" % name, {"cmd": "echo", "args": ["ok"]},
                     timeout=15)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["stdout"], "ok\n")

    def test_stdin_eof_only_and_given_stdin(self):
        ex = self.bg(self.name, cmd="wc", args=["-c"])["exec_id"]
        r = self.req("POST", "/v1/execs/%s/stdin?eof=true" % ex, b"")
        self.assertEqual(r.status, 204, r)
        o = self.wait(ex, 10000)
        self.assertEqual((o["state"], o["exit_code"]), ("exited", 0), o)
        self.assertEqual(self.out_ok(ex, "stdout")[0].strip(), b"0")
        # a background exec given "stdin" gets exactly that, then EOF
        ex = self.bg(self.name, cmd="cat", stdin="given\n")["exec_id"]
        o = self.wait(ex, 10000)
        self.assertEqual((o["state"], o["exit_code"]), ("exited", 0), o)
        self.assertEqual(self.out_ok(ex)[0], b"given\n")

    # -- resize -------------------------------------------------------------------------
    def test_resize_tty(self):
        ex = self.bg_py(self.name, WINCH_PROG, tty=True, rows=24, cols=80)["exec_id"]
        self.assertIs(self.get_exec(ex)["tty"], True)
        self.poll_output(ex, lambda d: b"ready" in d)
        r = self.req("POST", "/v1/execs/%s/resize" % ex, {"rows": 40, "cols": 120})
        self.assertEqual(r.status, 204, r)
        d = self.poll_output(ex, lambda d: b"size 40 120" in d)
        self.assertIn(b"size 40 120", d)
        r = self.req("POST", "/v1/execs/%s/resize" % ex, {"rows": 1, "cols": 1000})
        self.assertEqual(r.status, 204, r)
        d = self.poll_output(ex, lambda d: b"size 1 1000" in d)
        self.assertIn(b"size 1 1000", d)
        for bad, field in (({"rows": 0, "cols": 80}, "rows"), ({"rows": 24, "cols": 1001}, "cols"),
                           ({"rows": "40", "cols": 80}, "rows"), ({"rows": 40}, "cols"),
                           ({"rows": 40.5, "cols": 80}, "rows"), ({"rows": -3, "cols": 80}, "rows"),
                           ({"rows": 40, "cols": 80, "x": 1}, "x")):
            with self.subTest(body=bad):
                self.assertError(self.req("POST", "/v1/execs/%s/resize" % ex, bad), 400,
                                 "invalid_request", field=field)
        self.assertEqual(self.req("POST", "/v1/execs/%s/kill" % ex).status, 202)
        self.wait(ex, 10000)
        # ended tty exec: 409
        r = self.req("POST", "/v1/execs/%s/resize" % ex, {"rows": 40, "cols": 120})
        self.assertError(r, 409, "sandbox_not_running")

    def test_resize_not_tty(self):
        ex = self.bg(self.name, cmd="sleep", args=["10"])["exec_id"]
        try:
            r = self.req("POST", "/v1/execs/%s/resize" % ex, {"rows": 40, "cols": 120})
            self.assertError(r, 409, "sandbox_not_running")
        finally:
            self.req("POST", "/v1/execs/%s/kill" % ex)

    # -- output and replay exactness --------------------------------------------------------
    def test_output_and_replay_exact(self):
        exp = interleave_expected()
        want_out = b"".join(d for s, d in exp if s == "stdout")
        want_err = b"".join(d for s, d in exp if s == "stderr")
        b = self.bg_py(self.name, INTERLEAVE_PROG)
        ex = b["exec_id"]
        time.sleep(0.25)
        # while it runs: what is there so far is a prefix, not complete
        data, off, nxt, comp = self.out_ok(ex, "stdout", 0)
        self.assertEqual(off, 0)
        self.assertTrue(want_out.startswith(data), data)
        self.assertLess(len(data), len(want_out))
        self.assertFalse(comp, "X-Sbx-Complete true while the program runs")
        # a viewer from 0 while it runs: replay, then live, then the end
        msgs, code, proto = self.view(ex, 0, 0)
        self.assertEqual(proto, "sbx.v1.json")
        self.assertEnded(msgs, code)
        self.assertEqual(msgs[0], {"type": "started", "exec_id": ex, "pid": b["pid"]})
        got = rebuild(self, msgs)
        self.assertEqual(got["gaps"], [])
        self.assertEqual(got["stdout"], want_out)
        self.assertEqual(got["stderr"], want_err)
        self.assertEqual(got["order"], exp, "stdout/stderr interleaving differs")
        seqs = [m["seq"] for m in msgs if m["type"] in ("stdout", "stderr")]
        self.assertEqual(seqs, list(range(1, len(seqs) + 1)), "seq must rise by one from 1")
        o = self.wait(ex, 10000)
        self.assertEqual((o["state"], o["exit_code"]), ("exited", 0), o)
        self.assertEqual((o["stdout_bytes"], o["stderr_bytes"]), (len(want_out), len(want_err)))
        # GET output: whole, default stream, from a middle offset, at the end, past it
        for stream, want in (("stdout", want_out), ("stderr", want_err)):
            with self.subTest(stream=stream):
                self.assertEqual(self.out_ok(ex, stream, 0), (want, 0, len(want), True))
                mid = len(want) // 2 + 1
                self.assertEqual(self.out_ok(ex, stream, mid), (want[mid:], mid, len(want), True))
                self.assertEqual(self.out_ok(ex, stream, len(want)),
                                 (b"", len(want), len(want), True))
                data, off, nxt, comp = self.out_ok(ex, stream, len(want) + 100)
                self.assertEqual((data, nxt, comp), (b"", len(want), True))
        self.assertEqual(self.out_ok(ex), (want_out, 0, len(want_out), True))
        # re-attach from the middle of both streams, after the end
        mo, me = len(want_out) // 2 + 1, len(want_err) // 3 + 2
        msgs, code, _ = self.view(ex, mo, me)
        self.assertEnded(msgs, code)
        self.assertEqual(msgs[0]["type"], "started")
        got = rebuild(self, msgs, (mo, me))
        self.assertEqual(got["gaps"], [])
        self.assertEqual(got["first"], {"stdout": mo, "stderr": me})
        self.assertEqual(got["stdout"], want_out[mo:])
        self.assertEqual(got["stderr"], want_err[me:])
        seqs = [m["seq"] for m in msgs if m["type"] in ("stdout", "stderr")]
        self.assertEqual(seqs, sorted(set(seqs)), "seq not rising")
        # only stdout from the middle (stderr from 0): the order of the
        # replayed part is still the program's
        msgs, code, _ = self.view(ex, mo)
        self.assertEnded(msgs, code)
        got = rebuild(self, msgs, (mo, 0))
        self.assertEqual((got["stdout"], got["stderr"]), (want_out[mo:], want_err))
        # binary subprotocol: offsets in the frame header, the same bytes
        msgs, code, proto = self.view(ex, 0, 0, proto="sbx.v1.binary")
        self.assertEqual(proto, "sbx.v1.binary")
        self.assertEnded(msgs, code)
        got = rebuild(self, msgs)
        self.assertEqual((got["stdout"], got["stderr"]), (want_out, want_err))
        self.assertEqual(got["order"], exp)
        # viewer offsets past the end: nothing replayed, then the end
        msgs, code, _ = self.view(ex, len(want_out) + 10, len(want_err) + 10)
        self.assertEnded(msgs, code)
        self.assertEqual(types(msgs), ["started", "exited", "done"])

    def test_binary_bytes_exact(self):
        blob = bytes(range(256)) * 8
        ex = self.bg(self.name, cmd="cat", stdin_b64=harness.b64(blob))["exec_id"]
        self.wait(ex, 10000)
        self.assertEqual(self.out_ok(ex, "stdout", 0), (blob, 0, len(blob), True))
        self.assertEqual(self.out_ok(ex, "stdout", 300), (blob[300:], 300, len(blob), True))
        msgs, code, _ = self.view(ex, 100, proto="sbx.v1.binary")
        self.assertEnded(msgs, code)
        self.assertEqual(rebuild(self, msgs, (100, 0))["stdout"], blob[100:])

    # -- the gap case ------------------------------------------------------------------------
    def test_gap_viewer_behind_retention(self):
        want = gap_expected()
        self.assertEqual(len(want), GAP_TOTAL)
        ex = self.bg_py(self.name, GAP_PROG)["exec_id"]
        try:
            deadline = time.time() + 20
            while time.time() < deadline:
                _, _, nxt, _ = self.out_ok(ex, "stdout", GAP_TOTAL)
                if nxt >= GAP_TOTAL:
                    break
                time.sleep(0.05)
            self.assertEqual(nxt, GAP_TOTAL, "the program did not get its 6 MiB out")
            data, off, nxt, comp = self.out_ok(ex, "stdout", 0)
            self.assertGreater(off, 0, "output from 0 must start at the oldest kept byte")
            self.assertEqual(nxt, GAP_TOTAL)
            self.assertFalse(comp)
            self.assertEqual(data, want[off:], "retained bytes differ from what was written")
            kept = GAP_TOTAL - off
            self.assertLessEqual(kept, RETAIN + 256 * 1024, "kept %d bytes" % kept)
            self.assertGreaterEqual(kept, RETAIN - 256 * 1024, "kept only %d bytes" % kept)
            # an offset inside the lost part answers from the same oldest byte
            self.assertEqual(self.out_ok(ex, "stdout", 1000)[1], off)
            # a viewer from 0: started, gap 0..off, then the data up to the end
            msgs, code, _ = self.view(
                ex, 0, 0, stop=lambda m: m[-1].get("type") == "stdout"
                and m[-1]["offset"] + len(data_of(m[-1])) >= GAP_TOTAL, timeout=30)
            self.assertIsNone(code, "socket closed by the server: %r" % msgs[-3:])
            t = types(msgs)
            self.assertEqual(t[:2], ["started", "gap"], t[:4])
            self.assertEqual(msgs[1], {"type": "gap", "stream": "stdout", "from": 0, "to": off})
            got = rebuild(self, msgs)
            self.assertEqual(got["stdout"], want[off:])
            self.assertNotIn("exited", t)
            # the program was never blocked and is still running (sleeping)
            o = self.get_exec(ex)
            self.assertEqual(o["state"], "running", o)
            # a viewer from inside the retained part gets no gap
            mid = GAP_TOTAL - 1000
            msgs, code, _ = self.view(
                ex, mid, stop=lambda m: m[-1].get("type") == "stdout"
                and m[-1]["offset"] + len(data_of(m[-1])) >= GAP_TOTAL, timeout=10)
            got = rebuild(self, msgs, (mid, 0))
            self.assertEqual(got["gaps"], [])
            self.assertEqual(got["stdout"], want[mid:])
        finally:
            self.post_signal(ex, "SIGTERM")
        o = self.wait(ex, 10000)
        self.assertEqual((o["state"], o["exit_code"], o["signal"]), ("exited", -1, 15), o)
        self.assertEqual(o["stdout_bytes"], GAP_TOTAL, o)

    def test_gap_live_slow_viewer(self):
        # a live viewer that does not read while 6 MiB go by: the program is
        # not held back, and the viewer later gets gaps, then the right bytes
        want = gap_expected()
        ex = self.bg_py(self.name, "import time; time.sleep(0.5)\n" + GAP_PROG)["exec_id"]
        url = self.ws_url("/v1/execs/%s/ws" % ex)

        async def slow():
            import socket
            import websockets
            # a small receive buffer: otherwise the kernel's socket buffers
            # (several MiB on loopback) hold what the viewer does not read,
            # and it never falls behind the 2 MiB kept
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            sock.connect(("127.0.0.1", self.srv.port))
            async with websockets.connect(url, sock=sock, subprotocols=["sbx.v1.json"],
                                          max_queue=1, read_limit=2 ** 14, max_size=None,
                                          open_timeout=10) as ws:
                msgs = [_parse(await asyncio.wait_for(ws.recv(), 10))]
                deadline = time.time() + 15
                nxt = 0
                while time.time() < deadline and nxt < GAP_TOTAL:
                    await asyncio.sleep(0.1)
                    nxt = int(self.output(ex, "stdout", GAP_TOTAL).headers["X-Sbx-Next-Offset"])
                while True:
                    m = _parse(await asyncio.wait_for(ws.recv(), 10))
                    msgs.append(m)
                    if m["type"] == "stdout" and m["offset"] + len(data_of(m)) >= GAP_TOTAL:
                        return msgs, nxt

        try:
            msgs, nxt = asyncio.run(slow())
            self.assertEqual(nxt, GAP_TOTAL, "a slow viewer held the program back")
            self.assertEqual(msgs[0]["type"], "started")
            got = rebuild(self, msgs)
            self.assertTrue(got["gaps"], "no gap event for a viewer that fell behind")
            # the bytes between the gaps are the program's, at their offsets
            for m in msgs:
                if m["type"] == "stdout":
                    d = data_of(m)
                    self.assertEqual(d, want[m["offset"]:m["offset"] + len(d)], m["offset"])
            self.assertEqual(self.get_exec(ex)["state"], "running")
        finally:
            self.req("POST", "/v1/execs/%s/kill" % ex)
        self.assertEqual(self.wait(ex, 10000)["signal"], 9)

    # -- several viewers, viewers never kill --------------------------------------------------
    def test_concurrent_viewers(self):
        n = 25
        want_out, want_err = ticks_expected(n)
        ex = self.bg_py(self.name, ticks_prog(n, 0.03))["exec_id"]

        async def all_viewers():
            url = self.ws_url("/v1/execs/%s/ws" % ex)
            # a 4th viewer leaves early: it must not affect the exec
            quitter = _collect(url, stop=lambda m: len(m) >= 3)
            return await asyncio.gather(_collect(url), _collect(url), _collect(url), quitter)

        res = asyncio.run(all_viewers())
        got = []
        for msgs, code, _ in res[:3]:
            self.assertEnded(msgs, code)
            g = rebuild(self, msgs)
            got.append((g["stdout"], g["stderr"]))
        self.assertEqual(got[0], (want_out, want_err))
        self.assertEqual(got[1], got[0])
        self.assertEqual(got[2], got[0])
        o = self.wait(ex, 10000)
        self.assertEqual((o["state"], o["exit_code"], o["signal"]), ("exited", 0, None), o)

    def test_viewer_close_does_not_kill(self):
        ex = self.bg(self.name, cmd="sh", args=["-c", "sleep 1; echo fine"])["exec_id"]
        msgs, code, _ = self.view(ex, stop=lambda m: True)
        self.assertEqual(types(msgs), ["started"])
        o = self.wait(ex, 10000)
        self.assertEqual((o["state"], o["exit_code"]), ("exited", 0), o)
        self.assertEqual(self.out_ok(ex)[0], b"fine\n")

    # -- detach --------------------------------------------------------------------------------
    def _start_ws(self, start, stop):
        url = self.ws_url("/v1/sandboxes/%s/exec/ws" % self.name)
        return asyncio.run(_collect(url, first=start, stop=stop, timeout=10))

    def test_detach_survives_socket_close(self):
        n = 20
        want_out, _ = ticks_expected(n, err=False)
        msgs, code, _ = self._start_ws(
            {"type": "start", "cmd": PY, "args": ["-c", ticks_prog(n, 0.05, err=False)],
             "detach": True},
            stop=lambda m: any(x.get("type") == "stdout" for x in m))
        self.assertIsNone(code, msgs)
        self.assertEqual(msgs[0]["type"], "started", msgs)
        ex = msgs[0]["exec_id"]
        first = rebuild(self, msgs)["stdout"]
        self.assertTrue(want_out.startswith(first) and first, first)
        time.sleep(0.2)
        o = self.get_exec(ex)
        self.assertEqual(o["state"], "running", "a detached exec died with its socket: %r" % o)
        msgs, code, _ = self.view(ex, 0)
        self.assertEnded(msgs, code)
        self.assertEqual(rebuild(self, msgs)["stdout"], want_out)
        o = self.wait(ex, 10000)
        self.assertEqual((o["state"], o["exit_code"]), ("exited", 0), o)
        self.assertEqual(o["stdout_bytes"], len(want_out))

    def test_no_detach_socket_close_kills(self):
        msgs, code, _ = self._start_ws({"type": "start", "cmd": "sleep", "args": ["30"]},
                                       stop=lambda m: m[-1].get("type") == "started")
        ex = msgs[0]["exec_id"]
        o = self.wait(ex, 10000)
        self.assertNotEqual(o["state"], "running", o)
        self.assertEqual(o["signal"], 9, o)

    # -- stop / start ----------------------------------------------------------------------------
    def test_stop_start_keeps_files_kills_execs(self):
        name = unique("ss")
        sb = self.mk(name=name)
        self.sh_ok(name, "echo kept > /root/f")
        ex = self.bg(name, cmd="sh", args=["-c", "echo before; sleep 30"])["exec_id"]
        t, box = harness.in_thread(self.srv.request, "GET", "/v1/execs/%s/wait" % ex, None,
                                   None, 30)
        vt, vbox = harness.in_thread(self.view, ex, timeout=15)
        time.sleep(0.3)
        r = self.req("POST", "/v1/sandboxes/%s/stop" % name, {})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["state"], "stopped", r)
        self.assertTime(r.json["stopped_at"])
        t.join(10)
        self.assertIn("result", box, "wait not released by stop: %r" % box)
        self.assertEqual(box["result"].json["state"], "killed", box["result"])
        vt.join(15)
        self.assertIn("result", vbox, vbox)
        msgs, code, _ = vbox["result"]
        self.assertEqual(types(msgs)[0], "started", msgs)
        self.assertEqual(types(msgs)[-1], "done", msgs)
        self.assertIn("exited", types(msgs), msgs)
        self.assertEqual(code, 1000, "a viewer of an exec killed by stop: %r" % msgs)
        o = self.get_exec(ex)
        self.assertEqual(o["state"], "killed", o)
        self.assertTime(o["ended_at"])
        self.assertEqual(self.out_ok(ex), (b"before\n", 0, 7, True))
        lst = self.req("GET", "/v1/sandboxes/%s/execs?state=killed" % name).json["data"]
        self.assertEqual([e["exec_id"] for e in lst], [ex])
        self.assertError(self.exec(name, cmd="true"), 409, "sandbox_not_running")
        self.assertError(self.post_signal(ex, "SIGTERM"), 409, "sandbox_not_running")
        self.assertError(self.req("POST", "/v1/execs/%s/stdin" % ex, b"x"), 409,
                         "sandbox_not_running")
        # a viewer of the killed exec gets its end
        msgs, code, _ = self.view(ex)
        self.assertEqual(types(msgs)[-1:], ["done"], msgs)
        self.assertEqual(code, 1000)
        r = self.req("POST", "/v1/sandboxes/%s/start" % name, {})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["state"], "running", r)
        self.assertEqual(r.json["id"], sb["id"])
        self.assertEqual(self.sh_ok(name, "cat /root/f"), "kept\n")
        self.assertEqual(self.get_exec(ex)["state"], "killed")
        ex2 = self.bg(name, cmd="true")["exec_id"]
        self.assertEqual(self.wait(ex2, 10000)["state"], "exited")

    # -- idle_timeout_s and max_duration_s ------------------------------------------------------
    @ns_only("its 2 s timeouts assume sandboxes are created in milliseconds")
    def test_idle_and_max_duration(self):
        idle = self.mk(name=unique("idle"), idle_timeout_s=2)
        busy = self.mk(name=unique("busy"), idle_timeout_s=2)
        maxd = self.mk(name=unique("maxd"), max_duration_s=2)
        self.assertEqual((idle["idle_timeout_s"], maxd["max_duration_s"]), (2, 2))
        t0 = time.time()
        bex = self.bg(busy["id"], cmd="sleep", args=["6"])["exec_id"]
        mex = self.bg(maxd["id"], cmd="sleep", args=["30"])["exec_id"]
        t_busy = time.time()
        stopped = {}
        deadline = t0 + 14
        while time.time() < deadline and len(stopped) < 3:
            for sb in (idle, busy, maxd):
                if sb["id"] not in stopped and self.sandbox_state(sb["id"])["state"] == "stopped":
                    stopped[sb["id"]] = time.time() - t0
            time.sleep(0.2)
        self.assertIn(idle["id"], stopped, "idle sandbox never stopped")
        self.assertLessEqual(stopped[idle["id"]], 5.5, "idle sandbox stopped late")
        self.assertGreaterEqual(stopped[idle["id"]], 1.5, "idle sandbox stopped early")
        self.assertIn(maxd["id"], stopped, "max_duration_s sandbox never stopped")
        self.assertLessEqual(stopped[maxd["id"]], 5.5, "max_duration_s stopped late")
        self.assertIn(busy["id"], stopped, "idle sandbox never stopped after its exec ended")
        self.assertGreaterEqual(stopped[busy["id"]] + (t0 - t_busy), 5.8,
                                "idle_timeout_s stopped a sandbox with a running exec")
        o = self.get_exec(bex)
        self.assertEqual((o["state"], o["exit_code"]), ("exited", 0), o)
        o = self.get_exec(mex)
        self.assertEqual(o["state"], "killed", o)
        self.assertTime(o["ended_at"])

    # -- bad input ------------------------------------------------------------------------------
    def test_unknown_exec_everywhere(self):
        for ex in (UNKNOWN_EX, "nope"):
            for method, path, body in (
                    ("GET", "", None), ("GET", "/wait", None), ("GET", "/wait?timeout_ms=10", None),
                    ("POST", "/signal", {"signal": "SIGTERM"}), ("POST", "/kill", None),
                    ("POST", "/stdin", b"x"), ("POST", "/stdin?eof=true", b""),
                    ("POST", "/resize", {"rows": 10, "cols": 10}),
                    ("GET", "/output", None), ("GET", "/output?stream=stderr&offset=3", None)):
                with self.subTest(ex=ex, route=method + " " + path):
                    r = self.req(method, "/v1/execs/%s%s" % (ex, path), body)
                    self.assertError(r, 404, "exec_not_found")
            with self.subTest(ex=ex, route="ws"):
                msgs, code, _ = self.view(ex, timeout=10)
                self.assertEqual(code, 4404, msgs)

    def test_bad_query_and_bodies(self):
        ex = self.bg(self.name, cmd="sleep", args=["20"])["exec_id"]
        try:
            for q, field in (("offset=-1", "offset"), ("offset=abc", "offset"),
                             ("offset=", "offset"), ("offset=1.5", "offset"),
                             ("offset=12abc", "offset"),
                             ("stream=stdin", "stream"), ("stream=", "stream"),
                             ("stream=STDOUT", "stream")):
                with self.subTest(output=q):
                    r = self.req("GET", "/v1/execs/%s/output?%s" % (ex, q))
                    self.assertError(r, 400, "invalid_request", field=field)
            for q in ("-1", "abc", "", "1.5", "-0x10", "99999999999999999999"):
                with self.subTest(timeout_ms=q):
                    t0 = time.time()
                    r = self.req("GET", "/v1/execs/%s/wait?timeout_ms=%s" % (ex, q))
                    self.assertError(r, 400, "invalid_request", field="timeout_ms")
                    self.assertLess(time.time() - t0, 2)
            for sig in ("SIGFOO", "FOO", "", 0, 65, -1, 1.5, None, True, [15], "15x"):
                with self.subTest(signal=sig):
                    r = self.post_signal(ex, sig)
                    self.assertError(r, 400, "invalid_request", field="signal")
            with self.subTest(signal="missing"):
                self.assertError(self.req("POST", "/v1/execs/%s/signal" % ex, {}), 400,
                                 "invalid_request", field="signal")
            with self.subTest(signal="unknown field"):
                r = self.req("POST", "/v1/execs/%s/signal" % ex, {"signal": "SIGUSR1", "pid": 1})
                self.assertError(r, 400, "invalid_request", field="pid")
            with self.subTest(signal="not json"):
                r = self.req("POST", "/v1/execs/%s/signal" % ex, b"{nope",
                             {"Content-Type": "application/json"})
                self.assertError(r, 400, "invalid_request")
            with self.subTest(stdin="eof=maybe"):
                r = self.req("POST", "/v1/execs/%s/stdin?eof=maybe" % ex, b"x")
                self.assertError(r, 400, "invalid_request", field="eof")
            for q in ("offset=-1", "offset=x", "stderr_offset=-5", "stderr_offset="):
                with self.subTest(ws=q):
                    url = self.ws_url("/v1/execs/%s/ws?%s" % (ex, q))
                    msgs, code, _ = asyncio.run(_collect(url, timeout=10))
                    self.assertEqual(code, 1008, msgs)
            # nothing of that touched the exec
            self.assertEqual(self.get_exec(ex)["state"], "running")
        finally:
            self.req("POST", "/v1/execs/%s/kill" % ex)
        o = self.wait(ex, 10000)
        self.assertEqual(o["signal"], 9, o)
        # stdin to an exited exec, resize of a non-tty exited exec
        self.assertError(self.req("POST", "/v1/execs/%s/stdin" % ex, b"x"), 409,
                         "sandbox_not_running")
        self.assertError(self.req("POST", "/v1/execs/%s/stdin?eof=true" % ex, b""), 409,
                         "sandbox_not_running")
        self.assertError(self.req("POST", "/v1/execs/%s/resize" % ex, {"rows": 5, "cols": 5}),
                         409, "sandbox_not_running")


class TestControlRestart(CtlCase):
    extra_args = ["--retain-bytes", str(RETAIN), "--retain-after-exit-s", "1"]

    @classmethod
    def setUpServer(cls):
        cls.name = unique("ctlr")
        r = cls.srv.request("POST", "/v1/sandboxes", {"name": cls.name})
        if r.status != 201:
            raise AssertionError("create: %r" % r)
        cls.sid = r.json["id"]

    def tearDown(self):
        if not self.srv.alive():
            self.srv.start()
        super().tearDown()

    def _survives(self, how):
        n = 20
        want_out, want_err = ticks_expected(n)
        b = self.bg_py(self.name, ticks_prog(n, 0.1))
        ex = b["exec_id"]
        self.poll_output(ex, lambda d: len(d) >= 16)
        if how == "sigterm":
            self.assertEqual(self.srv.stop(), 0, self.srv.log_tail())
        else:
            self.assertEqual(self.srv.kill9(), -signal.SIGKILL)
        self.srv.start()
        o = self.get_exec(ex)
        self.assertEqual(o["state"], "running", "after a %s restart: %r" % (how, o))
        self.assertEqual(o["pid"], b["pid"], o)
        self.assertIn(ex, [e["exec_id"] for e in self.req(
            "GET", "/v1/sandboxes/%s/execs?state=running" % self.name).json["data"]])
        msgs, code, _ = self.view(ex, 0, 0)
        self.assertEnded(msgs, code)
        self.assertEqual(msgs[0]["exec_id"], ex)
        got = rebuild(self, msgs)
        ko, ke = got["first"].get("stdout", 0), got["first"].get("stderr", 0)
        self.assertEqual(got["stdout"], want_out[ko:], "stdout after restart (from %d)" % ko)
        self.assertEqual(got["stderr"], want_err[ke:], "stderr after restart (from %d)" % ke)
        self.assertLess(ko, len(want_out) - 8, "nothing live after the restart")
        o = self.wait(ex, 10000)
        self.assertEqual((o["state"], o["exit_code"], o["signal"]), ("exited", 0, None), o)
        self.assertEqual((o["stdout_bytes"], o["stderr_bytes"]), (len(want_out), len(want_err)), o)
        for stream, want in (("stdout", want_out), ("stderr", want_err)):
            data, off, nxt, comp = self.out_ok(ex, stream, 0)
            self.assertEqual((nxt, comp), (len(want), True), stream)
            self.assertEqual(data, want[off:], stream)

    def test_background_survives_sigterm_restart(self):
        self._survives("sigterm")

    def test_background_survives_kill9_restart(self):
        self._survives("kill9")

    def test_control_after_restart(self):
        cat = self.bg(self.name, cmd="cat")["exec_id"]
        sig = self.bg_py(self.name, SIGNAL_PROG)["exec_id"]
        tty = self.bg_py(self.name, WINCH_PROG, tty=True)["exec_id"]
        try:
            self.assertEqual(self.req("POST", "/v1/execs/%s/stdin" % cat, b"one\n").status, 204)
            self.poll_output(sig, lambda d: b"ready" in d)
            self.poll_output(tty, lambda d: b"ready" in d)
            self.assertEqual(self.srv.stop(), 0)
            self.srv.start()
            r = self.req("POST", "/v1/execs/%s/stdin?eof=true" % cat, b"two\n")
            self.assertEqual(r.status, 204, r)
            o = self.wait(cat, 8000)
            self.assertEqual((o["state"], o["exit_code"]), ("exited", 0), o)
            self.assertEqual(o["stdout_bytes"], 8, o)
            data, off, nxt, comp = self.out_ok(cat, "stdout", 0)
            self.assertEqual((b"one\ntwo\n"[off:], nxt, comp), (data, 8, True))
            r = self.post_signal(sig, "SIGUSR2")
            self.assertEqual(r.status, 202, r)
            self.assertIn(b"sig12", self.poll_output(sig, lambda d: b"sig12" in d))
            r = self.req("POST", "/v1/execs/%s/resize" % tty, {"rows": 33, "cols": 44})
            self.assertEqual(r.status, 204, "resize of a tty exec after a restart: %r" % r)
            self.assertIn(b"size 33 44", self.poll_output(tty, lambda d: b"size 33 44" in d))
        finally:
            for ex in (cat, sig, tty):
                self.req("POST", "/v1/execs/%s/kill" % ex)

    def test_exec_ended_while_down(self):
        ex = self.bg(self.name, cmd="sh",
                     args=["-c", "echo a; sleep 0.4; echo bb >&2; exit 3"])["exec_id"]
        time.sleep(0.1)
        self.assertEqual(self.srv.kill9(), -signal.SIGKILL)
        time.sleep(0.8)
        self.srv.start()
        o = self.wait(ex, 5000)
        self.assertEqual((o["state"], o["exit_code"], o["signal"]), ("exited", 3, None), o)
        self.assertEqual((o["stdout_bytes"], o["stderr_bytes"]), (2, 3), o)
        self.assertTime(o["ended_at"])
        data, off, nxt, comp = self.out_ok(ex, "stderr", 0)
        self.assertEqual((data, off, nxt, comp), (b"bb\n", 0, 3, True))

    @ns_only("kills the agent process on the host (test_vm.py kills QEMU instead)")
    def test_agent_killed_while_down(self):
        name = unique("gone")
        sb = self.mk(name=name)
        ex = self.bg(name, cmd="sleep", args=["30"])["exec_id"]
        pid = agent_pid(self.srv.data_dir, sb["id"])
        self.assertIsNotNone(pid, "cannot find the agent")
        self.assertEqual(self.srv.stop(), 0)
        os.kill(pid, signal.SIGKILL)
        deadline = time.time() + 10
        while os.path.exists("/proc/%d" % pid) and time.time() < deadline:
            try:
                with open("/proc/%d/stat" % pid) as f:
                    if f.read().split(")")[-1].split()[0] == "Z":
                        break
            except OSError:
                break
            time.sleep(0.05)
        self.srv.start()
        o = self.get_exec(ex)
        self.assertEqual(o["state"], "killed", o)
        self.assertTime(o["ended_at"])
        t0 = time.time()
        self.assertEqual(self.wait(ex)["state"], "killed")
        self.assertLess(time.time() - t0, 2)
        self.assertError(self.post_signal(ex, "SIGTERM"), 409, "sandbox_not_running")
        self.assertError(self.req("POST", "/v1/execs/%s/stdin" % ex, b"x"), 409,
                         "sandbox_not_running")
        msgs, code, _ = self.view(ex)
        self.assertEqual(types(msgs)[-1:], ["done"], msgs)
        self.assertEqual(code, 1000)
        self.assertEqual(self.req("GET", "/v1/sandboxes/" + name).json["state"], "stopped")

    def test_output_expires_after_exit(self):
        ex = self.bg(self.name, cmd="echo", args=["expiring"])["exec_id"]
        self.wait(ex, 10000)
        self.assertEqual(self.out_ok(ex), (b"expiring\n", 0, 9, True))
        time.sleep(2.5)
        data, off, nxt, comp = self.out_ok(ex, "stdout", 0)
        self.assertEqual((data, off, nxt, comp), (b"", 9, 9, True))
        o = self.get_exec(ex)
        self.assertEqual((o["state"], o["stdout_bytes"]), ("exited", 9), o)
        msgs, code, _ = self.view(ex, 0)
        self.assertEqual(code, 1000, msgs)
        self.assertEqual([m for m in msgs if m["type"] == "gap"],
                         [{"type": "gap", "stream": "stdout", "from": 0, "to": 9}], msgs)
        self.assertEqual(types(msgs)[-2:], ["exited", "done"])


if __name__ == "__main__":
    unittest.main()
