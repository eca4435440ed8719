"""WebSocket streaming (SPEC "WebSocket streaming", issue 3) against a real
sbxd, driven by an independent client: Debian's python3-websockets (10.4,
asyncio API), plus a raw-socket client for the one case websockets cannot
play (a peer that never answers pings).

Covers every server event, every client message, every close code, the
seq/offset ordering guarantee under heavy output, output before exit,
backpressure memory, disconnect kills, detach + re-attach + replay + gap,
fragmented and oversized messages, both subprotocols, Origin checks, idle
pings, many concurrent sessions, and a plain GET on a /ws route.

SBX_WS_MANY=N overrides the number of concurrent sessions (default 1000, the
issue's number; about 3 s here).
"""

import asyncio
import base64
import json
import os
import socket
import struct
import time
import unittest

import websockets

import harness
from harness import EX_ID_RE, SbxTestCase, Server, unique

JSON_P = "sbx.v1.json"
BIN_P = "sbx.v1.binary"
MANY = int(os.environ.get("SBX_WS_MANY", "1000"))
PROC_CMDLINES = "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done"


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for %d" % pid)


def arun(coro, timeout=90):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def collect(ws, timeout=30, stamp=False):
    """Every message until the server closes: (events, close code, reason).
    Text frames are parsed JSON, binary frames stay bytes.  With stamp, each
    event is a (monotonic time, event) pair."""
    events = []
    try:
        while True:
            m = await asyncio.wait_for(ws.recv(), timeout)
            ev = json.loads(m) if isinstance(m, str) else m
            events.append((time.monotonic(), ev) if stamp else ev)
    except websockets.ConnectionClosed as e:
        return events, e.code, e.reason


async def recv_until(ws, pred, timeout=20):
    """Messages until pred(event) is true; returns the list (last one matched)."""
    got = []
    while True:
        m = await asyncio.wait_for(ws.recv(), timeout)
        ev = json.loads(m) if isinstance(m, str) else m
        got.append(ev)
        if pred(ev):
            return got


def is_type(t):
    return lambda ev: isinstance(ev, dict) and ev.get("type") == t


def bin_frame(data):
    return b"\x00" + data


def parse_bin(frame):
    """An output frame of sbx.v1.binary: (stream 1|2, offset, data)."""
    assert len(frame) >= 9, frame[:20]
    return frame[0], struct.unpack(">Q", frame[1:9])[0], frame[9:]


class FlagServer(Server):
    """A Server whose first argument is its extra sbxd flags."""

    def __init__(self, extra, **kw):
        super().__init__(extra=extra, **kw)



class WsBase(SbxTestCase):
    """Helpers shared by the classes below: self.name is a running sandbox."""

    sandbox_fields = {}

    @classmethod
    def setUpServer(cls):
        cls.name = unique("ws")
        body = dict(cls.sandbox_fields, name=cls.name)
        r = cls.srv.request("POST", "/v1/sandboxes", body)
        if r.status != 201:
            raise AssertionError("create: %r" % r)
        cls.sid = r.json["id"]

    def url(self, path):
        return "ws://127.0.0.1:%d%s" % (self.srv.port, path)

    def connect(self, path=None, proto=JSON_P, **kw):
        kw.setdefault("max_size", None)
        kw.setdefault("ping_interval", None)
        if proto:
            kw["subprotocols"] = [proto]
        path = path or "/v1/sandboxes/%s/exec/ws" % self.name
        return websockets.connect(self.url(path), **kw)

    async def ws_run(self, start, proto=JSON_P, then=(), path=None, timeout=30):
        """Open, send the start message and `then` messages, read to the close."""
        async with self.connect(path, proto) as ws:
            await ws.send(json.dumps(dict(start, type="start")))
            for m in then:
                await ws.send(m if isinstance(m, (bytes, str)) else json.dumps(m))
            return await collect(ws, timeout)

    def run_ws(self, start, **kw):
        return arun(self.ws_run(start, **kw))

    # -- checks ---------------------------------------------------------------
    def check_events(self, events, code, base64_mode=False, first_offsets=(0, 0),
                     started=True, seq_gaps=False):
        """SPEC's guarantees on one complete session: started first, seq up by
        one across both streams, offsets contiguous per stream, all output
        before exited/failed, that before done, done last, close 1000.
        seq_gaps: a replay from offsets may skip whole records.
        Returns (stdout bytes, stderr bytes, the exited/failed event)."""
        self.assertEqual(code, 1000, events[-3:])
        self.assertTrue(events, "no events")
        if started:
            self.assertEqual(events[0].get("type") if isinstance(events[0], dict) else None,
                             "started", events[:3])
            self.assertRegex(events[0]["exec_id"], EX_ID_RE)
            self.assertIsInstance(events[0]["pid"], int)
        self.assertEqual(events[-1], {"type": "done"})
        out = [bytearray(), bytearray()]
        nxt = list(first_offsets)
        last_seq = None
        end = None
        for ev in events[1 if started else 0:-1]:
            if isinstance(ev, bytes):
                st, off, data = parse_bin(ev)
                self.assertIn(st, (1, 2))
                self.assertIsNone(end, "output frame after the end event")
                self.assertEqual(off, nxt[st - 1], "binary offsets not contiguous")
                out[st - 1] += data
                nxt[st - 1] += len(data)
                continue
            t = ev["type"]
            if t in ("stdout", "stderr"):
                self.assertIsNone(end, "output after %r: %r" % (end, ev))
                i = 0 if t == "stdout" else 1
                if last_seq is not None and not seq_gaps:
                    self.assertEqual(ev["seq"], last_seq + 1, "seq not consecutive")
                elif last_seq is not None:
                    self.assertGreater(ev["seq"], last_seq, "seq not rising")
                last_seq = ev["seq"]
                self.assertEqual(ev["offset"], nxt[i], "offset not contiguous in %s" % t)
                if base64_mode:
                    self.assertNotIn("data", ev)
                    data = base64.b64decode(ev["data_b64"])
                else:
                    self.assertNotIn("data_b64", ev)
                    data = ev["data"].encode()
                out[i] += data
                nxt[i] += len(data)
            elif t in ("exited", "failed"):
                self.assertIsNone(end, "two end events")
                end = ev
            elif t in ("error", "stdin_error"):
                pass
            else:
                self.fail("unexpected event %r" % ev)
        self.assertIsNotNone(end, "no exited/failed event")
        return bytes(out[0]), bytes(out[1]), end

    def sandbox_procs(self, cmdline, ref=None):
        """Processes in the sandbox whose command line is exactly cmdline
        (a shell that runs it has a longer one)."""
        r = self.shell(ref or self.name, PROC_CMDLINES)
        self.assertEqual(r.status, 200, r)
        return [l for l in r.json["stdout"].splitlines() if l.strip() == cmdline]

    def wait_no_procs(self, pattern, timeout=8, ref=None):
        deadline = time.time() + timeout
        while True:
            left = self.sandbox_procs(pattern, ref)
            if not left or time.time() > deadline:
                return left
            time.sleep(0.2)


class TestWs(WsBase):
    # a VM's RAM is its memory limit: 1000 programs need more than 512 MiB
    sandbox_fields = {"limits": {"pids": 4096, "memory_mib": 2048 if harness.DRIVER == "vm"
                                 else 512}}

    # -- events -----------------------------------------------------------------
    def test_events_shell(self):
        ev, code, _ = self.run_ws({"shell": "echo out; echo err >&2; exit 3"})
        out, err, end = self.check_events(ev, code)
        self.assertEqual(out, b"out\n")
        self.assertEqual(err, b"err\n")
        self.assertEqual(end, {"type": "exited", "exit_code": 3, "signal": None})
        rec = self.wait_exec(ev[0]["exec_id"])
        self.assertEqual(rec["state"], "exited", rec)
        self.assertEqual(rec["exit_code"], 3, rec)
        self.assertEqual((rec["stdout_bytes"], rec["stderr_bytes"]), (4, 4), rec)

    def test_events_cmd_args(self):
        ev, code, _ = self.run_ws({"cmd": "echo", "args": ["a b", "c"]})
        out, err, end = self.check_events(ev, code)
        self.assertEqual((out, err), (b"a b c\n", b""))
        self.assertEqual(end["exit_code"], 0)

    def test_failed_event(self):
        ev, code, _ = self.run_ws({"cmd": "/no/such/prog"})
        self.assertEqual(code, 1000, ev)
        types = [e["type"] for e in ev]
        self.assertEqual(types, ["failed", "done"], ev)
        f = ev[0]["failure"]
        self.assertEqual(f["kind"], "not_found", f)
        self.assertEqual(f.get("errno_name"), "ENOENT", f)

    def test_error_event_timeout(self):
        t0 = time.monotonic()
        ev, code, _ = self.run_ws({"shell": "echo a; sleep 10", "timeout_ms": 500})
        self.assertLess(time.monotonic() - t0, 6)
        types = [e["type"] for e in ev]
        self.assertEqual(types, ["started", "stdout", "error", "exited", "done"], ev)
        self.assertEqual(ev[2]["error"]["kind"], "exec_timeout", ev)
        self.assertEqual(ev[2]["error"].get("exec_id"), ev[0]["exec_id"], ev)
        self.assertEqual(ev[3]["exit_code"], -1, ev)
        self.assertEqual(ev[3]["signal"], 9, ev)
        self.assertEqual(code, 1000)

    def test_streaming_line_by_line(self):
        ev, code, _ = arun(self._stamped({"shell": "for i in 1 2 3; do echo $i; sleep 0.3; done"}))
        self.assertEqual(code, 1000)
        outs = [(t, e["data"]) for t, e in ev if e["type"] == "stdout"]
        self.assertEqual("".join(d for _, d in outs), "1\n2\n3\n")
        first = next(t for t, d in outs if "1" in d)
        last = next(t for t, d in outs if "3" in d)
        # printed 0.3 s apart: they must arrive spaced, not in one burst at the end
        self.assertGreater(last - first, 0.45, outs)
        end = next(t for t, e in ev if e["type"] == "exited")
        self.assertGreater(end - first, 0.7, "first line arrived only at the end")

    async def _stamped(self, start):
        async with self.connect() as ws:
            await ws.send(json.dumps(dict(start, type="start")))
            return await collect(ws, stamp=True)

    # -- client messages ----------------------------------------------------------
    def test_cat_stdin_text_b64_close(self):
        async def go():
            async with self.connect() as ws:
                await ws.send(json.dumps({"type": "start", "cmd": "cat"}))
                await recv_until(ws, is_type("started"))
                await ws.send(json.dumps({"type": "stdin", "data": "hello\n"}))
                got = await recv_until(ws, is_type("stdout"))
                self.assertEqual(got[-1]["data"], "hello\n")
                await ws.send(json.dumps({"type": "stdin",
                                          "data_b64": base64.b64encode(b"w\xc3\xb6rld\n").decode()}))
                got = await recv_until(ws, is_type("stdout"))
                self.assertEqual(got[-1]["data"], "w\u00f6rld\n")
                await ws.send(json.dumps({"type": "stdin_close"}))
                return await collect(ws)
        ev, code, _ = arun(go())
        self.assertEqual(code, 1000)
        self.assertEqual([e["type"] for e in ev], ["exited", "done"], ev)
        self.assertEqual(ev[0], {"type": "exited", "exit_code": 0, "signal": None})

    def test_binary_stdin_frames(self):
        data = bytes(range(256)) * 40
        ev, code, _ = self.run_ws({"cmd": "cat"}, proto=BIN_P,
                                  then=[bin_frame(data[:5000]), bin_frame(data[5000:]),
                                        {"type": "stdin_close"}])
        out, err, end = self.check_events(ev, code)
        self.assertEqual(out, data)
        self.assertEqual(end["exit_code"], 0)

    def _signal_case(self, msg, want_sig, secs):
        async def go():
            async with self.connect() as ws:
                await ws.send(json.dumps({"type": "start", "cmd": "sleep", "args": [secs]}))
                await recv_until(ws, is_type("started"))
                t0 = time.monotonic()
                await ws.send(json.dumps(msg))
                ev = await collect(ws, timeout=10)
                return ev, time.monotonic() - t0
        (ev, code, _), dt = arun(go())
        self.assertEqual(code, 1000)
        self.assertEqual(ev, [{"type": "exited", "exit_code": -1, "signal": want_sig},
                              {"type": "done"}])
        self.assertLess(dt, 5)

    def test_signal_sigint_by_name(self):
        self._signal_case({"type": "signal", "signal": "SIGINT"}, 2, "1000")

    def test_signal_by_number(self):
        self._signal_case({"type": "signal", "signal": 15}, 15, "1001")

    def test_kill(self):
        self._signal_case({"type": "kill"}, 9, "1002")

    def test_signal_to_process_group(self):
        # the signal reaches the whole group: a shell's background child dies too
        async def go():
            async with self.connect() as ws:
                await ws.send(json.dumps({"type": "start",
                                          "shell": "sleep 1003 & sleep 1003; wait"}))
                await recv_until(ws, is_type("started"))
                await asyncio.sleep(0.3)
                await ws.send(json.dumps({"type": "signal", "signal": "SIGTERM"}))
                return await collect(ws, timeout=10)
        ev, code, _ = arun(go())
        self.assertEqual(code, 1000)
        self.assertEqual(ev[-2]["type"], "exited", ev)
        self.assertEqual(self.wait_no_procs("sleep 1003"), [])

    def test_stdin_error_after_program_closed_stdin(self):
        async def go():
            async with self.connect() as ws:
                await ws.send(json.dumps({"type": "start", "shell": "exec 0<&-; sleep 1"}))
                await recv_until(ws, is_type("started"))
                await asyncio.sleep(0.3)
                await ws.send(json.dumps({"type": "stdin", "data": "x" * 100000}))
                return await collect(ws, timeout=10)
        ev, code, _ = arun(go())
        self.assertEqual(code, 1000)
        types = [e["type"] for e in ev]
        self.assertIn("stdin_error", types, ev)
        se = ev[types.index("stdin_error")]
        self.assertIsInstance(se["failure"], dict, se)
        self.assertIn("kind", se["failure"], se)
        # not terminal: the program still exits normally afterwards
        self.assertEqual(types[-2:], ["exited", "done"], ev)
        self.assertEqual(ev[-2]["exit_code"], 0, ev)

    def test_resize_tty(self):
        async def go():
            async with self.connect() as ws:
                await ws.send(json.dumps({"type": "start", "tty": True, "rows": 24, "cols": 80,
                                          "shell": "stty size; sleep 1; stty size"}))
                await recv_until(ws, is_type("started"))
                await asyncio.sleep(0.3)
                await ws.send(json.dumps({"type": "resize", "rows": 40, "cols": 120}))
                return await collect(ws, timeout=10)
        ev, code, _ = arun(go())
        out, _, end = self.check_events(ev, code, started=False)
        self.assertEqual(out.replace(b"\r", b""), b"24 80\n40 120\n")
        self.assertEqual(end["exit_code"], 0)

    def test_resize_non_tty_is_error_event_not_terminal(self):
        async def go():
            async with self.connect() as ws:
                await ws.send(json.dumps({"type": "start", "cmd": "cat"}))
                await recv_until(ws, is_type("started"))
                await ws.send(json.dumps({"type": "resize", "rows": 40, "cols": 120}))
                got = await recv_until(ws, is_type("error"))
                await ws.send(json.dumps({"type": "stdin", "data": "still\n"}))
                await ws.send(json.dumps({"type": "stdin_close"}))
                rest = await collect(ws)
                return got, rest
        got, (ev, code, _) = arun(go())
        self.assertEqual(got[-1]["error"]["kind"], "invalid_request", got)
        self.assertEqual(code, 1000)
        self.assertEqual(ev[0], {"type": "stdout", "seq": ev[0]["seq"], "offset": 0,
                                 "data": "still\n"})
        self.assertEqual(ev[-2]["exit_code"], 0, ev)

    # -- close codes ----------------------------------------------------------------
    async def _close_after(self, msgs, path=None, proto=JSON_P, wait_started=False):
        async with self.connect(path, proto) as ws:
            for i, m in enumerate(msgs):
                await ws.send(m if isinstance(m, (str, bytes)) else json.dumps(m))
                if i == 0 and wait_started:
                    await recv_until(ws, is_type("started"))
            return await collect(ws, timeout=10)

    def assertClosed(self, res, code, reason_has=None):
        ev, got, reason = res
        self.assertEqual(got, code, (ev, reason))
        self.assertTrue(reason, "close %d without a reason" % got)
        if reason_has:
            self.assertIn(reason_has, reason)
        return ev

    def test_close_1008_bad_json(self):
        self.assertClosed(arun(self._close_after(['{"type": "start", "cmd": '])), 1008)

    def test_close_1008_not_an_object(self):
        self.assertClosed(arun(self._close_after(['[1,2]'])), 1008)

    def test_close_1008_first_message_not_start(self):
        self.assertClosed(arun(self._close_after([{"type": "stdin", "data": "x"}])), 1008,
                          "start")

    def test_close_1008_bad_start(self):
        self.assertClosed(arun(self._close_after([{"type": "start", "args": ["x"]}])), 1008)
        self.assertClosed(arun(self._close_after([{"type": "start", "cmd": "echo",
                                                    "timeout_ms": "soon"}])), 1008)

    def test_close_1008_unknown_type_kills_exec(self):
        ev = self.assertClosed(arun(self._close_after(
            [{"type": "start", "cmd": "sleep", "args": ["1004"]}, {"type": "bogus"}],
            wait_started=True)), 1008, "bogus")
        self.assertEqual(ev, [])
        self.assertEqual(self.wait_no_procs("sleep 1004"), [])

    def test_close_1008_unknown_signal(self):
        self.assertClosed(arun(self._close_after(
            [{"type": "start", "cmd": "sleep", "args": ["1005"]},
             {"type": "signal", "signal": "SIGNOPE"}], wait_started=True)), 1008, "signal")

    def test_close_1008_second_start(self):
        self.assertClosed(arun(self._close_after(
            [{"type": "start", "cmd": "sleep", "args": ["1006"]},
             {"type": "start", "cmd": "true"}], wait_started=True)), 1008)

    def test_close_1003_binary_in_json_mode(self):
        self.assertClosed(arun(self._close_after(
            [{"type": "start", "cmd": "cat"}, b"\x00abc"], wait_started=True)), 1003)

    def test_close_1009_oversized(self):
        big = json.dumps({"type": "stdin", "data": "x" * (1 << 20)})
        self.assertClosed(arun(self._close_after(
            [{"type": "start", "cmd": "cat"}, big], wait_started=True)), 1009)
        # also as the first message, and in fragments that only add up to too much
        self.assertClosed(arun(self._close_after([big])), 1009)
        parts = [big[i:i + 300000] for i in range(0, len(big), 300000)]
        self.assertClosed(arun(self._close_after([{"type": "start", "cmd": "cat"}, parts],
                                                 wait_started=True)), 1009)

    def test_stdin_message_near_limit(self):
        # a stdin message just under 1 MiB is bigger than the socket buffer
        # between sbxd and the agent: it must still arrive whole, every time
        data = "y" * ((1 << 20) - 100)
        msg = json.dumps({"type": "stdin", "data": data})
        self.assertLessEqual(len(msg), 1 << 20)
        for n in (1, 1, 4, 4):
            with self.subTest(messages=n):
                try:
                    ev, code, _ = self.run_ws({"cmd": "wc", "args": ["-c"]},
                                              then=[msg] * n + [{"type": "stdin_close"}],
                                              timeout=5)
                except asyncio.TimeoutError:
                    self.fail("no output 5 s after %d stdin messages of %d bytes + stdin_close"
                              % (n, len(data)))
                out, _, end = self.check_events(ev, code)
                self.assertEqual(out.strip(), str(n * len(data)).encode())

    def test_close_4404_unknown_sandbox(self):
        self.assertClosed(arun(self._close_after(
            [{"type": "start", "cmd": "true"}], path="/v1/sandboxes/no-such-sbx/exec/ws")), 4404)

    def test_close_4404_unknown_exec(self):
        self.assertClosed(arun(self._close_after([], path="/v1/execs/ex_0123456789abcdef/ws")),
                          4404)

    def test_close_4409_stopped_sandbox(self):
        sb = self.mk(name=unique("wsstop"))
        r = self.req("POST", "/v1/sandboxes/%s/stop" % sb["id"])
        self.assertEqual(r.status, 200, r)
        self.assertClosed(arun(self._close_after(
            [{"type": "start", "cmd": "true"}],
            path="/v1/sandboxes/%s/exec/ws" % sb["name"])), 4409)

    def test_plain_get_is_400_json(self):
        for path in ("/v1/sandboxes/%s/exec/ws" % self.name, "/v1/execs/ex_0123456789abcdef/ws"):
            r = self.req("GET", path)
            self.assertEqual(r.status, 400, r)
            self.assertIsInstance(r.json, dict, r)
            self.assertEqual(r.json["error"]["kind"], "invalid_request", r)
            self.assertIn("json", (r.headers.get("Content-Type") or "").lower())

    def test_foreign_origin_refused_by_default(self):
        async def go(origin):
            async with self.connect(origin=origin) as ws:
                await ws.send(json.dumps({"type": "start", "cmd": "true"}))
                return await collect(ws)
        with self.assertRaises(websockets.InvalidStatusCode) as cm:
            arun(go("http://good.example"))
        self.assertEqual(cm.exception.status_code, 403)
        ev, code, _ = arun(go("http://127.0.0.1:%d" % self.srv.port))
        self.check_events(ev, code)

    def test_unknown_subprotocol_only_is_refused(self):
        async def go():
            async with websockets.connect(self.url("/v1/sandboxes/%s/exec/ws" % self.name),
                                          subprotocols=["nope.v9"], ping_interval=None) as ws:
                return ws.subprotocol
        with self.assertRaises((websockets.InvalidHandshake, OSError)):
            arun(go())

    def test_viewer_may_send_control_messages(self):
        async def go():
            async with self.connect() as owner:
                await owner.send(json.dumps({"type": "start", "cmd": "cat"}))
                got = await recv_until(owner, is_type("started"))
                exec_id = got[-1]["exec_id"]
                async with self.connect("/v1/execs/%s/ws" % exec_id) as viewer:
                    await recv_until(viewer, is_type("started"))
                    await viewer.send(json.dumps({"type": "stdin", "data": "from viewer\n"}))
                    await viewer.send(json.dumps({"type": "stdin_close"}))
                    vev = await collect(viewer)
                return vev, await collect(owner)
        (vev, vcode, _), (ev, code, _) = arun(go())
        out, _, end = self.check_events(ev, code, started=False)
        self.assertEqual(out, b"from viewer\n")
        self.assertEqual(end["exit_code"], 0)
        vout, _, _ = self.check_events(vev, vcode, started=False)
        self.assertEqual(vout, b"from viewer\n")

    def test_openapi_describes_ws(self):
        routes = harness.openapi_routes()
        self.assertIn("GET", routes.get("/v1/sandboxes/{ref}/exec/ws", set()))
        self.assertIn("GET", routes.get("/v1/execs/{id}/ws", set()))
        with open(harness.OPENAPI_YAML) as f:
            text = f.read()
        for word in ("sbx.v1.json", "sbx.v1.binary", "WsStart", "stdin_close", "stdin_error",
                     "gap", "exited", "failed", "done", "resize", "4404", "4409", "1009"):
            self.assertIn(word, text)

    # -- framing ------------------------------------------------------------------------
    def test_fragmented_messages(self):
        start = json.dumps({"type": "start", "cmd": "cat"})
        stdin = json.dumps({"type": "stdin", "data": "fragmented\n"})

        async def go():
            async with self.connect() as ws:
                await ws.send([start[:5], start[5:13], start[13:]])
                await recv_until(ws, is_type("started"))
                await ws.send([stdin[i:i + 4] for i in range(0, len(stdin), 4)])
                await ws.send([json.dumps({"type": "stdin_close"})])
                return await collect(ws)
        ev, code, _ = arun(go())
        out, _, end = self.check_events(ev, code, started=False)
        self.assertEqual(out, b"fragmented\n")
        self.assertEqual(end["exit_code"], 0)

    def test_default_subprotocol_is_json(self):
        async def go():
            async with self.connect(proto=None) as ws:
                self.assertIsNone(ws.subprotocol)
                await ws.send(json.dumps({"type": "start", "cmd": "echo", "args": ["x"]}))
                return await collect(ws)
        ev, code, _ = arun(go())
        out, _, _ = self.check_events(ev, code)
        self.assertEqual(out, b"x\n")

    def test_chosen_subprotocol_echoed(self):
        async def go(protos):
            async with websockets.connect(self.url("/v1/sandboxes/%s/exec/ws" % self.name),
                                          subprotocols=protos, ping_interval=None) as ws:
                return ws.subprotocol
        self.assertEqual(arun(go([BIN_P])), BIN_P)
        self.assertEqual(arun(go([JSON_P])), JSON_P)
        self.assertIn(arun(go(["nope.v9", BIN_P])), (BIN_P,))

    # -- encodings ----------------------------------------------------------------------------
    def test_data_b64_encoding(self):
        raw = b"\xff\xfe\x00abc\x80\n"
        ev, code, _ = self.run_ws({"shell": "printf '\\377\\376\\000abc\\200\\n'; "
                                            "printf '\\001\\377' >&2",
                                   "encoding": "base64"})
        out, err, end = self.check_events(ev, code, base64_mode=True)
        self.assertEqual(out, raw)
        self.assertEqual(err, b"\x01\xff")

    def test_utf8_character_split_across_writes(self):
        # the two bytes of 'é' written 0.2 s apart still arrive as one character
        ev, code, _ = self.run_ws({"shell": "printf '\\303'; sleep 0.2; printf '\\251!\\n'"})
        out, _, _ = self.check_events(ev, code)
        self.assertEqual(out.decode(), "\u00e9!\n")

    def test_binary_subprotocol_exact(self):
        n = 3_072_000
        ev, code, _ = self.run_ws(
            {"cmd": "python3", "args": ["-c", "import sys; sys.stdout.buffer.write("
                                        "bytes(range(256))*12000); sys.stdout.flush(); "
                                        "sys.stderr.buffer.write(b'\\xff\\x00err')"]},
            proto=BIN_P)
        self.assertTrue(all(isinstance(e, bytes) for e in ev[1:-2]), "text frame for output")
        self.assertTrue(any(isinstance(e, bytes) and e[0] == 2 for e in ev))
        out, err, end = self.check_events(ev, code)
        self.assertEqual(len(out), n)
        self.assertEqual(out, bytes(range(256)) * 12000)
        self.assertEqual(err, b"\xff\x00err")
        self.assertEqual(end["exit_code"], 0)

    # -- ordering and completeness -------------------------------------------------------
    HEAVY = ("import os\n"
             "for i in range(3000):\n"
             "    fd = 2 if i % 3 == 0 else 1\n"
             "    os.write(fd, b'<%d>' % i + bytes([65 + i % 26]) * (i * 37 % 4099))\n")

    @staticmethod
    def heavy_expected():
        out, err = bytearray(), bytearray()
        for i in range(3000):
            chunk = b"<%d>" % i + bytes([65 + i % 26]) * (i * 37 % 4099)
            (err if i % 3 == 0 else out).extend(chunk)
        return bytes(out), bytes(err)

    def test_ordering_heavy_output(self):
        ev, code, _ = self.run_ws({"cmd": "python3", "args": ["-c", self.HEAVY],
                                   "encoding": "base64"}, timeout=60)
        out, err, end = self.check_events(ev, code, base64_mode=True)
        want_out, want_err = self.heavy_expected()
        self.assertEqual(len(out), len(want_out))
        self.assertEqual(len(err), len(want_err))
        self.assertEqual(out, want_out)
        self.assertEqual(err, want_err)
        self.assertEqual(end["exit_code"], 0)
        seqs = [e["seq"] for e in ev if isinstance(e, dict) and "seq" in e]
        self.assertEqual(seqs, list(range(seqs[0], seqs[0] + len(seqs))))

    def test_interleaving_rebuilt_from_seq(self):
        # writes spaced in time, alternating streams: the seq order is the write order
        prog = ("import os, time\n"
                "for i in range(24):\n"
                "    os.write(1 if i % 2 else 2, b'w%d;' % i)\n"
                "    time.sleep(0.04)\n")
        ev, code, _ = self.run_ws({"cmd": "python3", "args": ["-c", prog]})
        self.check_events(ev, code)
        order = "".join(e["data"] for e in sorted(
            (e for e in ev if e["type"] in ("stdout", "stderr")), key=lambda e: e["seq"]))
        self.assertEqual(order, "".join("w%d;" % i for i in range(24)))

    def test_megabytes_then_exit_at_once(self):
        # 24 MiB + 3 MiB printed, then _exit: every byte arrives before exited
        prog = ("import os\n"
                "b = bytes(range(256)) * 4096\n"
                "for i in range(24): os.write(1, b)\n"
                "for i in range(3): os.write(2, b[::-1])\n"
                "os._exit(7)\n")
        ev, code, _ = self.run_ws({"cmd": "python3", "args": ["-c", prog]}, proto=BIN_P,
                                  timeout=60)
        out, err, end = self.check_events(ev, code)
        self.assertEqual(len(out), 24 << 20)
        self.assertEqual(len(err), 3 << 20)
        b = bytes(range(256)) * 4096
        self.assertEqual(out, b * 24)
        self.assertEqual(err, b[::-1] * 3)
        self.assertEqual(end, {"type": "exited", "exit_code": 7, "signal": None})
        # the JSON mode too, with a shell pipeline that exits as soon as head does
        ev, code, _ = self.run_ws({"shell": "head -c 5000000 /dev/zero | tr '\\0' a"},
                                  timeout=60)
        out, _, end = self.check_events(ev, code)
        self.assertEqual(out, b"a" * 5000000)
        self.assertEqual(end["exit_code"], 0)

    # -- backpressure ------------------------------------------------------------------
    def test_backpressure_slow_reader(self):
        pid = self.srv.pid
        rss0 = rss_kib(pid)

        async def go():
            # max_queue=1: the client library buffers little; we take ~1 frame / 50 ms
            async with self.connect(proto=BIN_P, max_queue=1, read_limit=2 ** 16) as ws:
                await ws.send(json.dumps({"type": "start", "cmd": "cat",
                                          "args": ["/dev/zero"]}))
                got = await recv_until(ws, is_type("started"))
                exec_id = got[-1]["exec_id"]
                nxt, peak = 0, rss0
                t_end = time.monotonic() + 5
                while time.monotonic() < t_end:
                    m = await asyncio.wait_for(ws.recv(), 10)
                    st, off, data = parse_bin(m)
                    self.assertEqual((st, off), (1, nxt), "the owner lost output")
                    self.assertEqual(data.count(0), len(data))
                    nxt += len(data)
                    peak = max(peak, rss_kib(pid))
                    await asyncio.sleep(0.1)
                rec = await asyncio.get_running_loop().run_in_executor(
                    None, self.req, "GET", "/v1/execs/" + exec_id)
                await ws.send(json.dumps({"type": "kill"}))
                # drain: what was produced still comes, in order, before exited
                ev, code, _ = await collect(ws, timeout=30)
                for m in ev:
                    if isinstance(m, bytes):
                        st, off, data = parse_bin(m)
                        self.assertEqual(off, nxt)
                        nxt += len(data)
                return exec_id, rec, nxt, peak, ev, code
        exec_id, rec, received, peak, ev, code = arun(go())
        self.assertEqual(rec.status, 200, rec)
        self.assertEqual(rec.json["state"], "running", rec.json)
        # every byte the program wrote reached the owner (it never loses output)
        produced = self.wait_exec(exec_id)["stdout_bytes"]
        growth = peak - rss0
        print("\n    backpressure: read %d bytes in 5 s; program produced %d; "
              "sbxd RSS %d -> peak %d KiB (+%d KiB)" % (received, produced, rss0, peak, growth),
              end=" ", flush=True)
        self.assertLess(growth, 100 * 1024, "sbxd grew %d KiB under a slow reader" % growth)
        # the program was held back: far less than cat /dev/zero makes in 5 s unthrottled
        self.assertLess(produced, 64 << 20)
        self.assertEqual(code, 1000)
        self.assertEqual(ev[-2]["type"], "exited", ev[-3:])
        self.assertEqual(ev[-2]["signal"], 9)
        self.assertEqual(received, produced)

    # -- disconnect, detach, attach ----------------------------------------------------
    def test_disconnect_kills_process_group(self):
        loop = asyncio.new_event_loop()
        ws = None
        try:
            async def go():
                w = await self.connect()
                await w.send(json.dumps({"type": "start", "shell": "sleep 1000 & sleep 1000"}))
                got = await recv_until(w, is_type("started"))
                await asyncio.sleep(0.4)
                return w, got[-1]["exec_id"]
            ws, exec_id = loop.run_until_complete(asyncio.wait_for(go(), 30))
            self.assertEqual(len(self.sandbox_procs("sleep 1000")), 2)
            loop.run_until_complete(ws.close())
            ws = None
        finally:
            if ws is not None:
                loop.run_until_complete(ws.close())
            loop.close()
        self.assertEqual(self.wait_no_procs("sleep 1000"), [])
        rec = self.wait_exec(exec_id)
        self.assertIn(rec["state"], ("killed", "exited"), rec)
        self.assertEqual(rec["signal"], 9, rec)

    def test_abrupt_disconnect_kills(self):
        # a TCP reset instead of a close frame counts as a disconnect too
        async def go():
            ws = await self.connect()
            await ws.send(json.dumps({"type": "start", "cmd": "sleep", "args": ["1007"]}))
            got = await recv_until(ws, is_type("started"))
            ws.transport.abort()
            return got[-1]["exec_id"]
        exec_id = arun(go())
        self.assertEqual(self.wait_no_procs("sleep 1007"), [])
        self.assertEqual(self.wait_exec(exec_id)["signal"], 9)

    def test_detach_survives_and_reattach_replays(self):
        async def owner():
            async with self.connect() as ws:
                await ws.send(json.dumps({"type": "start", "detach": True,
                                          "shell": "echo one; echo e1 >&2; sleep 1.2; "
                                                   "echo two; echo e2 >&2; sleep 0.3"}))
                got = await recv_until(ws, lambda e: e.get("type") == "stderr")
                return got[0]["exec_id"]
        exec_id = arun(owner())
        time.sleep(0.2)
        rec = self.req("GET", "/v1/execs/" + exec_id).json
        self.assertEqual(rec["state"], "running", rec)

        # a viewer that comes and goes does not affect it
        async def viewer_leaves():
            async with self.connect("/v1/execs/%s/ws" % exec_id) as ws:
                return await recv_until(ws, is_type("stdout"))
        got = arun(viewer_leaves())
        self.assertEqual(got[0]["type"], "started", got)
        self.assertEqual(got[-1]["data"], "one\n")
        self.assertEqual(self.req("GET", "/v1/execs/" + exec_id).json["state"], "running")

        async def viewer(q):
            async with self.connect("/v1/execs/%s/ws%s" % (exec_id, q)) as ws:
                return await collect(ws)
        ev, code, _ = arun(viewer(""))
        out, err, end = self.check_events(ev, code)
        self.assertEqual((out, err), (b"one\ntwo\n", b"e1\ne2\n"))
        self.assertEqual(end, {"type": "exited", "exit_code": 0, "signal": None})
        self.assertEqual(ev[0]["exec_id"], exec_id)
        # after it ended: replay from offsets
        ev, code, _ = arun(viewer("?offset=2&stderr_offset=3"))
        out, err, end = self.check_events(ev, code, first_offsets=(2, 3), seq_gaps=True)
        self.assertEqual((out, err), (b"e\ntwo\n", b"e2\n"))
        ev, code, _ = arun(viewer("?offset=8"))
        out, err, _ = self.check_events(ev, code, first_offsets=(8, 0), seq_gaps=True)
        self.assertEqual((out, err), (b"", b"e1\ne2\n"))
        # binary viewer
        async def bviewer():
            async with self.connect("/v1/execs/%s/ws?offset=4" % exec_id, proto=BIN_P) as ws:
                return await collect(ws)
        ev, code, _ = arun(bviewer())
        out, err, _ = self.check_events(ev, code, first_offsets=(4, 0))
        self.assertEqual((out, err), (b"two\n", b"e1\ne2\n"))

    def test_attach_bad_offset_closes_1008(self):
        ev, code = self.run_ws({"cmd": "echo", "args": ["hi"]})[:2]
        exec_id = ev[0]["exec_id"]
        self.assertClosed(arun(self._close_after(
            [], path="/v1/execs/%s/ws?offset=-1" % exec_id)), 1008)

    def test_attach_to_one_shot_exec(self):
        r = self.exec(self.name, cmd="echo", args=["rest"])
        self.assertEqual(r.status, 200, r)

        async def viewer():
            async with self.connect("/v1/execs/%s/ws" % r.json["exec_id"]) as ws:
                return await collect(ws)
        ev, code, _ = arun(viewer())
        out, _, end = self.check_events(ev, code)
        self.assertEqual(out, b"rest\n")

    # -- many sessions --------------------------------------------------------------------
    def test_many_concurrent_sessions(self):
        n = MANY
        pid = self.srv.pid
        # warm up once so one-time allocations do not count per session
        self.run_ws({"cmd": "true"})
        rss0 = rss_kib(pid)
        sem = asyncio.Semaphore(100)

        async def one(i):
            async with sem:
                ws = await self.connect(open_timeout=60)
                await ws.send(json.dumps({"type": "start", "cmd": "sleep", "args": ["30"]}))
                got = await recv_until(ws, lambda ev: isinstance(ev, dict) and ev.get("type") in
                                       ("started", "failed", "error"), timeout=60)
                self.assertEqual(got[-1]["type"], "started", got)
                return ws

        async def go():
            t0 = time.monotonic()
            socks = await asyncio.gather(*(one(i) for i in range(n)))
            t_open = time.monotonic() - t0
            await asyncio.sleep(0.5)
            rss1 = rss_kib(pid)
            running = await asyncio.get_running_loop().run_in_executor(
                None, lambda: len(self.sandbox_procs("sleep 30")))
            # all still answer: a kill on the last one ends it cleanly
            await socks[-1].send(json.dumps({"type": "kill"}))
            ev, code, _ = await collect(socks[-1])
            await asyncio.gather(*(s.close() for s in socks[:-1]))
            return t_open, rss1, running, ev, code
        t_open, rss1, running, ev, code = arun(go(), timeout=180)
        per = (rss1 - rss0) / n
        print("\n    many: %d sessions open+started in %.1f s; sbxd RSS %d -> %d KiB, "
              "%.1f KiB per idle session" % (n, t_open, rss0, rss1, per), end=" ", flush=True)
        self.assertEqual(running, n)
        self.assertEqual(ev[-2]["signal"], 9, ev)
        self.assertEqual(code, 1000)
        self.assertEqual(self.wait_no_procs("sleep 30", timeout=20), [])
        self.assertLess(per, 256, "%.1f KiB per idle session" % per)


class TestWsFlags(WsBase):
    """A second sbxd with --allow-origin, a 1 s ping interval and the minimum
    retention (2 MiB per stream)."""

    EXTRA = ["--allow-origin", "http://good.example", "--ws-ping-s", "1",
             "--retain-bytes", str(2 << 20)]

    @classmethod
    def setUpClass(cls):
        cls.srv = FlagServer(cls.EXTRA)
        try:
            cls.srv.start()
            cls.setUpServer()
        except BaseException:
            cls.srv.cleanup()
            cls.srv = None
            raise

    def _echo_with_origin(self, origin):
        async def go():
            async with self.connect(origin=origin) as ws:
                await ws.send(json.dumps({"type": "start", "cmd": "echo", "args": ["o"]}))
                return await collect(ws)
        return arun(go())

    def test_origin_allowed(self):
        for origin in ("http://good.example", "http://127.0.0.1:%d" % self.srv.port, None):
            with self.subTest(origin=origin):
                ev, code, _ = self._echo_with_origin(origin)
                out, _, _ = self.check_events(ev, code)
                self.assertEqual(out, b"o\n")

    def test_origin_refused(self):
        for origin in ("http://evil.example", "http://good.example.evil.example",
                       "https://good.example", "http://127.0.0.1:1"):
            with self.subTest(origin=origin):
                with self.assertRaises(websockets.InvalidStatusCode) as cm:
                    self._echo_with_origin(origin)
                self.assertEqual(cm.exception.status_code, 403)  # SPEC: forbidden

    def test_idle_socket_pinged_and_kept(self):
        # a client that answers pings survives 3 s of silence with a 1 s ping interval
        ev, code, _ = self.run_ws({"shell": "sleep 3; echo alive"})
        out, _, end = self.check_events(ev, code)
        self.assertEqual(out, b"alive\n")

    def test_unanswered_pings_drop_and_kill(self):
        s = socket.create_connection(("127.0.0.1", self.srv.port), timeout=10)
        try:
            key = base64.b64encode(os.urandom(16)).decode()
            s.sendall(("GET /v1/sandboxes/%s/exec/ws HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                       "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                       "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: %s\r\n\r\n"
                       % (self.name, self.srv.port, key, JSON_P)).encode())
            buf = b""
            while b"\r\n\r\n" not in buf:
                d = s.recv(4096)
                self.assertTrue(d, "closed during the handshake")
                buf += d
            head, buf = buf.split(b"\r\n\r\n", 1)
            self.assertIn(b" 101 ", head.split(b"\r\n")[0])
            payload = json.dumps({"type": "start", "cmd": "sleep", "args": ["1010"]}).encode()
            mask = os.urandom(4)
            s.sendall(bytes([0x81, 0x80 | len(payload)]) + mask +
                      bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
            t0 = time.monotonic()
            exec_id, pings, closed_at = None, 0, None
            while closed_at is None and time.monotonic() - t0 < 15:
                while True:
                    fr = _take_frame(buf)
                    if fr is None:
                        break
                    op, data, buf = fr
                    if op == 0x9:
                        pings += 1  # never answered
                    elif op == 0x1 and exec_id is None:
                        exec_id = json.loads(data)["exec_id"]
                    elif op == 0x8:
                        closed_at = time.monotonic()
                try:
                    d = s.recv(65536)
                except (ConnectionResetError, socket.timeout):
                    d = b""
                if not d:
                    closed_at = closed_at or time.monotonic()
                buf += d
        finally:
            s.close()
        self.assertIsNotNone(exec_id, "no started event")
        self.assertGreaterEqual(pings, 1, "no ping seen")
        self.assertIsNotNone(closed_at, "not dropped within 15 s")
        self.assertLess(closed_at - t0, 6, "dropped only after %.1f s" % (closed_at - t0))
        rec = self.wait_exec(exec_id, timeout=10)
        self.assertEqual(rec["signal"], 9, rec)
        self.assertEqual(self.wait_no_procs("sleep 1010"), [])

    def test_viewer_behind_retention_gets_gap(self):
        n = 10_000_000

        async def owner():
            async with self.connect() as ws:
                await ws.send(json.dumps({"type": "start", "detach": True,
                                          "shell": "head -c %d /dev/zero; echo -n E >&2" % n}))
                got = await recv_until(ws, is_type("started"))
                return got[-1]["exec_id"]
        exec_id = arun(owner())
        rec = self.wait_exec(exec_id)
        self.assertEqual(rec["state"], "exited", rec)
        self.assertEqual(rec["stdout_bytes"], n, rec)

        async def viewer():
            async with self.connect("/v1/execs/%s/ws" % exec_id, proto=BIN_P) as ws:
                return await collect(ws)
        ev, code, _ = arun(viewer())
        self.assertEqual(code, 1000)
        gaps = [e for e in ev if isinstance(e, dict) and e["type"] == "gap"]
        self.assertEqual(len(gaps), 1, gaps)
        g = gaps[0]
        self.assertEqual((g["stream"], g["from"]), ("stdout", 0), g)
        self.assertGreaterEqual(g["to"], n - (4 << 20), g)  # about 2 MiB kept
        self.assertLess(g["to"], n, g)
        # after the gap, the rest arrives exactly
        frames = [parse_bin(e) for e in ev if isinstance(e, bytes)]
        outs = [f for f in frames if f[0] == 1]
        self.assertEqual(outs[0][1], g["to"])
        total = g["to"]
        for st, off, data in outs:
            self.assertEqual(off, total)
            total += len(data)
        self.assertEqual(total, n)
        self.assertEqual(b"".join(f[2] for f in frames if f[0] == 2), b"E")
        self.assertEqual(ev[-2]["type"], "exited", ev[-3:])


def _take_frame(buf):
    """One unmasked server frame from buf: (opcode, payload, rest) or None."""
    if len(buf) < 2:
        return None
    op, ln = buf[0] & 0x0F, buf[1] & 0x7F
    i = 2
    if ln == 126:
        if len(buf) < 4:
            return None
        ln, i = struct.unpack(">H", buf[2:4])[0], 4
    elif ln == 127:
        if len(buf) < 10:
            return None
        ln, i = struct.unpack(">Q", buf[2:10])[0], 10
    if len(buf) < i + ln:
        return None
    return op, buf[i:i + ln], buf[i + ln:]


if __name__ == "__main__":
    unittest.main()
