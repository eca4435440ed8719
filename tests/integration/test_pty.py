"""PTY execs (issue 6) through a real sbxd: what a program sees on a
`"tty": true` exec, driven over the WebSocket with Debian's python3-websockets
(10.4, asyncio API) and over REST.

Covers: the program's stdio is a terminal (isatty, `tty`), TERM is set (and
the caller's TERM wins), `stty size` is the start's rows/cols and follows a
resize message, the program gets SIGWINCH, Ctrl-C typed as the byte 0x03
interrupts the foreground job (and only it: an interactive shell survives),
the signal message goes to the foreground process group, stdin_close is the
terminal's EOF (cat ends), full-screen ("vi"-style) output and raw input pass
byte-exact in sbx.v1.binary, the REST resize route on a background tty exec,
exit codes and signals as usual.

Not covered: `pty_setup_failed` (it needs /dev/ptmx to fail inside a running
sandbox, which a black-box test cannot arrange without breaking the sandbox).
"""

import asyncio
import json
import time
import unittest

import websockets

from harness import SbxTestCase, unique

JSON_P = "sbx.v1.json"
BIN_P = "sbx.v1.binary"
PY = "/usr/bin/python3"

# Prints its terminal size on every SIGWINCH; READY first, ends after two.
WINCH_PROG = r"""
import os, signal, sys
n = [0]
def size():
    s = os.get_terminal_size(1)
    return "%d %d" % (s.lines, s.columns)
def on_winch(sig, frame):
    n[0] += 1
    print("WINCH %s" % size(), flush=True)
signal.signal(signal.SIGWINCH, on_winch)
print("READY %s" % size(), flush=True)
while n[0] < 2:
    signal.pause()
"""

# A full-screen program: raw mode as vi sets it, the alternate screen, every
# byte value, cursor moves; then it echoes 256 raw input bytes back as hex.
SCREEN_PROG = r"""
import os, sys, tty
tty.setraw(0)
out = (b"\x1b[?1049h\x1b[2J\x1b[H" + bytes(range(256)) + b"\x1b[10;20Hxyz\n\r"
       + "h\u00e9llo \u2603".encode() + b"\x1b[?1049l")
os.write(1, out)
os.write(1, b"<READY>")
got = b""
while len(got) < 256:
    got += os.read(0, 256 - len(got))
os.write(1, b"<" + got.hex().encode() + b">")
"""
SCREEN_OUT = (b"\x1b[?1049h\x1b[2J\x1b[H" + bytes(range(256)) + b"\x1b[10;20Hxyz\n\r"
              + "h\u00e9llo \u2603".encode() + b"\x1b[?1049l")


def arun(coro, timeout=60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


class Session:
    """One WebSocket exec: its events as they come, stdout collected
    (JSON or binary frames alike)."""

    def __init__(self, ws, binary):
        self.ws = ws
        self.binary = binary
        self.events = []
        self.out = b""
        self.code = None

    async def send(self, msg):
        if isinstance(msg, dict):
            msg = json.dumps(msg)
        await self.ws.send(msg)

    async def stdin(self, data):
        if isinstance(data, str):
            data = data.encode()
        if self.binary:
            await self.ws.send(b"\x00" + data)
        else:
            await self.send({"type": "stdin", "data": data.decode()})

    async def _next(self, timeout):
        m = await asyncio.wait_for(self.ws.recv(), timeout)
        if isinstance(m, bytes):
            assert m[0] == 1, "tty output on stream %d" % m[0]
            self.out += m[9:]
            ev = {"type": "stdout", "raw": m[9:]}
        else:
            ev = json.loads(m)
            if ev.get("type") == "stdout":
                self.out += ev["data"].encode()
            if ev.get("type") == "stderr":
                raise AssertionError("stderr event on a tty exec: %r" % ev)
        self.events.append(ev)
        return ev

    async def until_out(self, needle, timeout=15):
        """Read until stdout contains needle (bytes or str)."""
        if isinstance(needle, str):
            needle = needle.encode()
        while needle not in self.out:
            await self._next(timeout)

    async def until_type(self, t, timeout=15):
        while True:
            ev = await self._next(timeout)
            if ev.get("type") == t:
                return ev

    async def finish(self, timeout=20):
        """Read to the close; returns the exited event."""
        try:
            while True:
                await self._next(timeout)
        except websockets.ConnectionClosed as e:
            self.code = e.code
        ends = [e for e in self.events if e.get("type") in ("exited", "failed")]
        assert ends, "no exited/failed in %r" % self.events[-5:]
        assert self.events[-1].get("type") == "done", self.events[-3:]
        return ends[-1]


class TestPty(SbxTestCase):

    @classmethod
    def setUpServer(cls):
        cls.name = unique("pty")
        r = cls.srv.request("POST", "/v1/sandboxes", {"name": cls.name})
        if r.status != 201:
            raise AssertionError("create: %r" % r)

    def ws_url(self, path=None):
        return "ws://127.0.0.1:%d%s" % (self.srv.port,
                                        path or "/v1/sandboxes/%s/exec/ws" % self.name)

    def session(self, start, go, binary=False, timeout=60):
        """Start an exec over the WebSocket and run `await go(sess)`."""
        async def main():
            async with websockets.connect(self.ws_url(), subprotocols=[BIN_P if binary else JSON_P],
                                          max_size=None, ping_interval=None) as ws:
                sess = Session(ws, binary)
                await sess.send(dict(start, type="start"))
                started = await sess.until_type("started")
                self.assertIn("exec_id", started)
                sess.exec_id = started["exec_id"]
                return await go(sess)
        return arun(main(), timeout)

    # -- a terminal --------------------------------------------------------------

    def test_program_sees_a_terminal(self):
        prog = "import os; print(os.isatty(0), os.isatty(1), os.isatty(2))"

        async def go(s):
            return await s.finish(), s.out
        end, out = self.session({"cmd": PY, "args": ["-c", prog], "tty": True}, go)
        self.assertEqual(end["exit_code"], 0)
        self.assertEqual(out.replace(b"\r", b""), b"True True True\n")
        # the same without a tty: pipes
        r = self.exec(self.name, cmd=PY, args=["-c", prog])
        self.assertEqual(r.json["stdout"], "False False False\n", r)
        # `tty` names the pty; stderr goes to the terminal too
        r = self.exec(self.name, cmd="sh", args=["-c", "tty; echo to-stderr >&2"], tty=True)
        self.assertEqual(r.status, 200, r)
        self.assertRegex(r.json["stdout"], r"^/dev/pts/\d+\r\nto-stderr\r\n$", r)
        self.assertEqual(r.json["stderr"], "", r)

    def test_controlling_terminal_and_session(self):
        prog = ("import os, sys; fd = os.open('/dev/tty', os.O_RDWR); "
                "print(os.getsid(0) == os.getpid(), os.tcgetpgrp(fd) == os.getpgrp())")
        r = self.exec(self.name, cmd=PY, args=["-c", prog], tty=True)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["stdout"].replace("\r", ""), "True True\n", r)

    def test_term_is_set(self):
        r = self.exec(self.name, cmd="sh", args=["-c", "echo TERM=$TERM"], tty=True)
        self.assertEqual(r.status, 200, r)
        term = r.json["stdout"].strip()
        self.assertRegex(term, r"^TERM=\S+$", r)
        # the caller's TERM wins
        r = self.exec(self.name, cmd="sh", args=["-c", "echo TERM=$TERM"], tty=True,
                      env={"TERM": "vt100"})
        self.assertEqual(r.json["stdout"].strip(), "TERM=vt100", r)

    # -- size and SIGWINCH ----------------------------------------------------------

    def test_stty_size_follows_resize(self):
        async def go(s):
            await s.until_out("\n")
            first = s.out
            await s.send({"type": "resize", "rows": 40, "cols": 132})
            await s.stdin("\n")  # `read` returns: stty runs after the resize
            end = await s.finish()
            return first, s.out, end
        first, out, end = self.session(
            {"cmd": "sh", "args": ["-c", "stty size; read x; stty size"], "tty": True,
             "rows": 33, "cols": 101}, go)
        self.assertEqual(first.replace(b"\r", b""), b"33 101\n")
        lines = out.replace(b"\r", b"").split(b"\n")
        self.assertEqual(lines[0], b"33 101")
        self.assertEqual(lines[-2], b"40 132", out)
        self.assertEqual(end["exit_code"], 0)

    def test_sigwinch_reaches_the_program(self):
        async def go(s):
            await s.until_out("READY")
            await s.send({"type": "resize", "rows": 50, "cols": 160})
            await s.until_out("WINCH 50 160")
            await s.send({"type": "resize", "rows": 20, "cols": 70})
            await s.until_out("WINCH 20 70")
            return await s.finish(), s.out
        end, out = self.session({"cmd": PY, "args": ["-c", WINCH_PROG], "tty": True,
                                 "rows": 24, "cols": 80}, go)
        self.assertIn(b"READY 24 80", out)
        self.assertEqual(end["exit_code"], 0, out)

    def test_default_size(self):
        r = self.exec(self.name, cmd="stty", args=["size"], tty=True)
        self.assertEqual(r.status, 200, r)
        rows, cols = map(int, r.json["stdout"].split())
        self.assertGreater(rows, 0)
        self.assertGreater(cols, 0)

    # -- signals ---------------------------------------------------------------------

    def test_ctrl_c_byte_interrupts_sleep(self):
        async def go(s):
            await asyncio.sleep(0.3)  # sleep is running, not the spawn
            t0 = time.monotonic()
            await s.stdin("\x03")
            end = await s.finish()
            return end, time.monotonic() - t0
        end, dt = self.session({"cmd": "sleep", "args": ["100"], "tty": True}, go)
        self.assertEqual(end["exit_code"], -1, end)
        self.assertEqual(end["signal"], 2, end)
        self.assertLess(dt, 10)

    def test_ctrl_c_in_a_shell_interrupts_only_the_foreground_job(self):
        async def go(s):
            await s.until_out("$ ")
            await s.stdin("sleep 100\n")
            await asyncio.sleep(0.5)
            await s.stdin("\x03")
            await s.until_out("$ ")
            await s.stdin("echo alive-$?\n")
            await s.until_out("alive-130")
            # the signal message goes to the foreground group too
            await s.stdin("sleep 100\n")
            await asyncio.sleep(0.5)
            await s.send({"type": "signal", "signal": "SIGINT"})
            await s.stdin("echo again-$?\n")
            await s.until_out("again-130")
            await s.stdin("exit 4\n")
            return await s.finish()
        end = self.session({"cmd": "sh", "args": ["-i"], "tty": True, "env": {"PS1": "$ "}}, go)
        self.assertEqual(end["exit_code"], 4, end)

    def test_signal_message_interrupts_sleep(self):
        async def go(s):
            await asyncio.sleep(0.3)
            await s.send({"type": "signal", "signal": "SIGINT"})
            return await s.finish()
        end = self.session({"cmd": "sleep", "args": ["100"], "tty": True}, go)
        self.assertEqual((end["exit_code"], end["signal"]), (-1, 2), end)

    # -- stdin ----------------------------------------------------------------------

    def test_stdin_close_is_eof(self):
        async def go(s):
            await s.stdin("abc\n")
            await s.until_out("abc\r\nabc\r\n")  # the terminal's echo, then cat's copy
            await s.send({"type": "stdin_close"})
            return await s.finish(), s.out
        end, out = self.session({"cmd": "cat", "tty": True}, go)
        self.assertEqual(end["exit_code"], 0, end)
        self.assertEqual(out, b"abc\r\nabc\r\n")

    def test_no_stdin_is_eof_at_once(self):
        r = self.exec(self.name, cmd="cat", tty=True, timeout=20)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["exit_code"], 0, r)

    # -- full-screen output ---------------------------------------------------------------

    def test_full_screen_output_and_raw_input_byte_exact(self):
        keys = bytes(range(256))

        async def go(s):
            await s.until_out(b"<READY>")
            await s.stdin(keys)
            end = await s.finish()
            return end, s.out
        end, out = self.session({"cmd": PY, "args": ["-c", SCREEN_PROG], "tty": True,
                                 "rows": 30, "cols": 100}, go, binary=True)
        self.assertEqual(end["exit_code"], 0, out[-300:])
        self.assertTrue(out.startswith(SCREEN_OUT + b"<READY>"), out[:600])
        self.assertEqual(out, SCREEN_OUT + b"<READY><" + keys.hex().encode() + b">")

    def test_cooked_output_translates_newlines_only(self):
        # without raw mode the terminal does what terminals do: \n -> \r\n;
        # everything else, escapes and high bytes too, passes unchanged
        payload = b"\x1b[2J\x1b[H\x1b[1;31mred\x1b[0m" + bytes(range(0x80, 0x100)) + b"\n"

        async def go(s):
            return await s.finish(), s.out
        prog = "import os; os.write(1, bytes.fromhex('%s'))" % payload.hex()
        end, out = self.session({"cmd": PY, "args": ["-c", prog], "tty": True}, go, binary=True)
        self.assertEqual(end["exit_code"], 0)
        self.assertEqual(out, payload[:-1] + b"\r\n")

    # -- REST ----------------------------------------------------------------------

    def test_rest_resize_on_background_tty_exec(self):
        r = self.exec(self.name, cmd=PY, args=["-c", WINCH_PROG], tty=True, rows=24, cols=80,
                      background=True)
        self.assertEqual(r.status, 202, r)
        ex = r.json["exec_id"]
        try:
            self.wait_output(ex, b"READY 24 80")
            r = self.req("POST", "/v1/execs/%s/resize" % ex, {"rows": 41, "cols": 121})
            self.assertEqual(r.status, 204, r)
            self.wait_output(ex, b"WINCH 41 121")
            r = self.req("POST", "/v1/execs/%s/resize" % ex, {"rows": 0, "cols": 121})
            self.assertError(r, 400, "invalid_request")
            r = self.req("POST", "/v1/execs/%s/resize" % ex, {"rows": 12, "cols": 34})
            self.assertEqual(r.status, 204, r)
            self.wait_output(ex, b"WINCH 12 34")
            x = self.wait_exec(ex)
            self.assertEqual((x["state"], x["exit_code"], x["tty"]), ("exited", 0, True), x)
        finally:
            self.req("POST", "/v1/execs/%s/kill" % ex)
        # no terminal: refused
        r = self.exec(self.name, cmd="sleep", args=["5"], background=True)
        ex = r.json["exec_id"]
        r = self.req("POST", "/v1/execs/%s/resize" % ex, {"rows": 40, "cols": 120})
        self.assertIn(r.status, (400, 409), r)
        self.assertIn("tty", r.json["error"]["message"], r)
        self.req("POST", "/v1/execs/%s/kill" % ex)

    def wait_output(self, ex, needle, timeout=15):
        deadline = time.time() + timeout
        while True:
            r = self.req("GET", "/v1/execs/%s/output?stream=stdout" % ex)
            self.assertEqual(r.status, 200, r)
            if needle in r.raw:
                return r.raw
            if time.time() > deadline:
                self.fail("%r not in %r" % (needle, r.raw))
            time.sleep(0.05)

    def test_exit_code_and_signal_as_usual(self):
        r = self.exec(self.name, cmd="sh", args=["-c", "echo out; echo err >&2; exit 7"], tty=True)
        self.assertEqual(r.status, 200, r)
        self.assertEqual((r.json["exit_code"], r.json["success"], r.json["signal"]),
                         (7, False, None), r)
        self.assertEqual(r.json["stdout"].replace("\r", ""), "out\nerr\n", r)
        r = self.exec(self.name, cmd="sh", args=["-c", "kill -TERM $$"], tty=True)
        self.assertEqual((r.json["exit_code"], r.json["signal"]), (-1, 15), r)

        async def go(s):
            return await s.finish()
        end = self.session({"cmd": "sh", "args": ["-c", "exit 9"], "tty": True}, go)
        self.assertEqual((end["exit_code"], end["signal"]), (9, None), end)

    # -- default shell ------------------------------------------------------------------

    def test_default_shell_when_no_cmd(self):
        # issue 6: a tty exec without cmd runs the sandbox's shell
        async def go(s):
            await s.stdin("echo $0-ok\nexit 0\n")
            await s.until_out("-ok")
            return await s.finish()
        end = self.session({"tty": True}, go)
        self.assertEqual(end["exit_code"], 0)

    @unittest.skip("pty_setup_failed needs /dev/ptmx to fail inside a live sandbox; "
                   "not reachable black-box")
    def test_pty_setup_failed(self):
        pass


if __name__ == "__main__":
    unittest.main()
