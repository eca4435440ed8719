"""`sbx attach` and `sbx shell REF` (issue 6) driven by a real terminal: tmux
runs a bash, the bash runs build/sbx against a real sbxd, send-keys types and
capture-pane reads the screen.

Covers: keys reach the remote shell and its output comes back, the remote
terminal has the local window's size and follows a tmux resize, Ctrl-C
interrupts the remote foreground job, the remote exit code becomes sbx's, the
local terminal is restored (icanon, echo, isig, opost back on) after a remote
exit, a detach, SIGTERM to sbx and a server killed with SIGKILL; the detach
key (default Ctrl-], or --detach-keys) leaves the exec running and
`sbx attach --exec` joins it again.
"""

import os
import re
import shutil
import signal
import subprocess
import time
import unittest
import uuid

import harness
from harness import EX_ID_RE, SbxTestCase, unique

SBX = os.environ.get("SBX", os.path.join(harness.BUILD_DIR, "sbx"))
TMUX = shutil.which("tmux")
MODES = r"""echo "MODES:$(stty -a | tr ' ;' '\n\n' | grep -xE -- '-?(icanon|echo|isig|opost)' | tr '\n' ' ')" """
RESTORED = {"icanon", "echo", "isig", "opost"}


class Term:
    """A tmux server of our own (-L) with one window running bash."""

    def __init__(self, cols=100, rows=30):
        self.sock = "sbxtest-%s" % uuid.uuid4().hex[:8]
        self.tmux("-f", "/dev/null", "new-session", "-d", "-s", "t", "-x", str(cols), "-y",
                  str(rows), "env -i PATH=/usr/bin:/bin HOME=/root TERM=xterm PS1='$ ' "
                  "bash --norc --noprofile")
        self.tmux("set-option", "-g", "history-limit", "5000")
        self.wait_for(r"^\$ ?$")

    def tmux(self, *args):
        p = subprocess.run([TMUX, "-L", self.sock] + list(args), capture_output=True, timeout=10)
        if p.returncode != 0:
            raise AssertionError("tmux %s: %s" % (" ".join(args), p.stderr.decode()))
        return p.stdout.decode()

    def type(self, text, enter=True):
        self.tmux("send-keys", "-t", "t", "-l", text)
        if enter:
            self.tmux("send-keys", "-t", "t", "Enter")

    def key(self, *keys):
        self.tmux("send-keys", "-t", "t", *keys)

    def screen(self):
        # -S - : the whole history too; no -J: a long command line that exactly fills a row would otherwise be
        # joined with the output row after it
        return self.tmux("capture-pane", "-p", "-S", "-", "-t", "t")

    def lines(self):
        lines = [l.rstrip() for l in self.screen().splitlines()]
        while lines and not lines[-1]:
            lines.pop()  # the pane's empty rows below the cursor
        return lines

    def wait_for(self, pattern, timeout=10, after=0):
        """Wait for a line (from line index `after`) matching pattern; returns the match."""
        rx = re.compile(pattern)
        deadline = time.time() + timeout
        while True:
            for line in self.lines()[after:]:
                m = rx.search(line)
                if m:
                    return m
            if time.time() > deadline:
                raise AssertionError("no line matching %r on the screen:\n%s"
                                     % (pattern, self.screen()))
            time.sleep(0.05)

    def mark(self):
        """The cursor's line: output from now on is there or below (wait_for's after)."""
        return max(0, len(self.lines()) - 1)

    def resize(self, cols, rows):
        self.tmux("resize-window", "-t", "t", "-x", str(cols), "-y", str(rows))

    def shell_pid(self):
        return int(self.tmux("display-message", "-p", "-t", "t", "#{pane_pid}").strip())

    def child_pid(self, comm):
        """The pid of the shell's child named comm (the sbx being tested)."""
        parent = self.shell_pid()
        deadline = time.time() + 10
        while time.time() < deadline:
            for d in os.listdir("/proc"):
                if not d.isdigit():
                    continue
                try:
                    with open("/proc/%s/stat" % d) as f:
                        st = f.read()
                except OSError:
                    continue
                name = st[st.index("(") + 1:st.rindex(")")]
                ppid = int(st[st.rindex(")") + 2:].split()[1])
                if ppid == parent and name == comm:
                    return int(d)
            time.sleep(0.05)
        raise AssertionError("no %s child of the tmux shell" % comm)

    def close(self):
        subprocess.run([TMUX, "-L", self.sock, "kill-server"], capture_output=True, timeout=10)


class AttachBase(SbxTestCase):

    @classmethod
    def setUpServer(cls):
        if not TMUX:
            raise unittest.SkipTest("tmux is not installed (scripts/deps.sh installs it)")
        if not os.path.exists(SBX):
            raise unittest.SkipTest("no sbx binary at %s (make all)" % SBX)
        cls.name = unique("att")
        r = cls.srv.request("POST", "/v1/sandboxes", {"name": cls.name})
        if r.status != 201:
            raise AssertionError("create: %r" % r)
        cls.sid = r.json["id"]

    def setUp(self):
        super().setUp()
        self.term = Term()

    def tearDown(self):
        self.term.close()
        # execs left running (a failed test) must not pile up in the sandbox
        if self.srv is not None and self.srv.alive():
            r = self.req("GET", "/v1/sandboxes/%s/execs?state=running" % self.name)
            for x in (r.json or {}).get("data", []):
                self.req("POST", "/v1/execs/%s/kill" % x["exec_id"])
        super().tearDown()

    def sbx_line(self, *args):
        url = "http://127.0.0.1:%d" % self.srv.port
        return " ".join([SBX, "--url", url] + list(args))

    def run_in_term(self, *args):
        """Type `sbx ARGS; echo rc=$?; <modes>` into the terminal's bash."""
        self.term.type("%s; echo rc=$?; %s" % (self.sbx_line(*args), MODES))

    def wait_prompt(self, after=0):
        """The remote shell's prompt (sh's default "# " as root)."""
        return self.term.wait_for(r"^[#$] ?$", after=after)

    def wait_end(self, rc, after=0, timeout=15):
        """sbx ended with rc and the terminal's modes are restored."""
        # (after a remote exit the remote prompt may still sit on that line)
        self.term.wait_for(r"(^|\s)rc=%d$" % rc, after=after, timeout=timeout)
        # the output line, not the typed command (which holds "MODES:$(stty ...")
        m = self.term.wait_for(r"^MODES:((?:\s*-?[a-z]+)*)\s*$", after=after)
        modes = set(m.group(1).split())
        self.assertEqual(modes, RESTORED, "terminal not restored:\n%s" % self.term.screen())

    def running_execs(self):
        r = self.req("GET", "/v1/sandboxes/%s/execs?state=running" % self.name)
        self.assertEqual(r.status, 200, r)
        return [x["exec_id"] for x in r.json["data"]]


class TestAttach(AttachBase):

    def test_keys_size_resize_ctrl_c_exit_code(self):
        t = self.term
        self.run_in_term("attach", self.name)
        self.wait_prompt(after=1)
        mark = t.mark()
        t.type("echo hi-$((40+2))")
        t.wait_for(r"^hi-42$", after=mark)
        # the local window's size, then tmux resizes it: SIGWINCH -> resize
        mark = t.mark()
        t.type("stty size")
        t.wait_for(r"^30 100$", after=mark)
        t.resize(120, 40)
        for attempt in range(10):  # SIGWINCH -> sbx -> sbxd -> the pty takes a moment
            mark = t.mark()
            t.type("stty size")
            try:
                t.wait_for(r"^40 120$", after=mark, timeout=1)
                break
            except AssertionError:
                if attempt == 9:
                    raise
        # Ctrl-C goes to the remote terminal: it interrupts the foreground job
        mark = t.mark()
        t.type("sleep 100; echo slept-$?")
        time.sleep(0.5)
        t0 = time.time()
        t.key("C-c")
        t.type("echo status-$?")
        t.wait_for(r"^status-130$", after=mark)
        self.assertLess(time.time() - t0, 5)
        self.assertNotIn("slept-0", t.screen())
        # the remote exit code is sbx's, and the terminal is back
        mark = t.mark()
        t.type("exit 3")
        self.wait_end(3, after=mark)
        self.assertEqual(self.running_execs(), [])

    def test_shell_without_command_and_tty_inside(self):
        t = self.term
        self.run_in_term("shell", self.name)
        self.wait_prompt(after=1)
        mark = t.mark()
        t.type("tty; echo term=$TERM")
        t.wait_for(r"^/dev/pts/\d+$", after=mark)
        t.wait_for(r"^term=\S+$", after=mark)
        mark = t.mark()
        t.type("exit")
        self.wait_end(0, after=mark)

    def test_attach_cmd_args(self):
        t = self.term
        self.run_in_term("attach", self.name, "--", "sh", "-c", "'read x; echo got-$x; exit 7'")
        time.sleep(0.5)
        mark = t.mark()
        t.type("abc")
        t.wait_for(r"^got-abc$", after=mark)
        self.wait_end(7, after=mark)

    def test_detach_and_reattach(self):
        t = self.term
        self.run_in_term("attach", self.name)
        self.wait_prompt(after=1)
        mark = t.mark()
        t.type("echo first-$((1+1))")
        t.wait_for(r"^first-2$", after=mark)
        mark = t.mark()
        t.key("C-]")
        m = t.wait_for(r"detached; (ex_[0-9a-f]{16}) keeps running .*sbx attach --exec (ex_\S+)\)",
                       after=mark)
        ex = m.group(1)
        self.assertEqual(m.group(2), ex)
        self.assertRegex(ex, EX_ID_RE)
        self.wait_end(0, after=mark)
        # still running on the server, and the detach key never reached it
        r = self.req("GET", "/v1/execs/" + ex)
        self.assertEqual(r.json["state"], "running", r)
        self.assertEqual(r.json["tty"], True, r)
        self.assertEqual(self.running_execs(), [ex])
        time.sleep(0.3)
        self.assertEqual(self.req("GET", "/v1/execs/" + ex).json["state"], "running")
        # join it again: the recent output is replayed, keys and size work
        mark = t.mark()
        self.run_in_term("attach", "--exec", ex)
        t.wait_for(r"^first-2$", after=mark + 1)
        mark = t.mark()
        t.type("echo second-$((2+1)); stty size")
        t.wait_for(r"^second-3$", after=mark)
        t.wait_for(r"^30 100$", after=mark)
        mark = t.mark()
        t.type("exit 5")
        self.wait_end(5, after=mark)
        x = self.wait_exec(ex)
        self.assertEqual((x["state"], x["exit_code"]), ("exited", 5), x)

    def test_attach_exec_without_tty(self):
        # a pipe-based background exec: the local terminal stays cooked (its
        # line editing and Ctrl-C are local), lines go to the program's stdin
        r = self.exec(self.name, cmd="sh", args=["-c", "echo hello-viewer; read x; echo got-$x; exit 2"],
                      background=True)
        self.assertEqual(r.status, 202, r)
        ex = r.json["exec_id"]
        t = self.term
        self.run_in_term("attach", "--exec", ex)
        t.wait_for(r"^hello-viewer$", after=1)
        mark = t.mark()
        t.type("abc")
        t.wait_for(r"^got-abc$", after=mark)
        self.wait_end(2, after=mark)
        self.assertNotIn("sbx:", t.screen())

    def test_custom_detach_keys(self):
        t = self.term
        self.run_in_term("attach", "--detach-keys", "ctrl-x", self.name)
        self.wait_prompt(after=1)
        # Ctrl-] is an ordinary key now (the remote terminal gets it: its
        # line discipline echoes ^] and Ctrl-U erases it), Ctrl-X detaches
        mark = t.mark()
        t.key("C-]")
        t.wait_for(r"\^\]$", after=mark)
        t.key("C-u")
        t.type("echo still-$((3*3))")
        t.wait_for(r"^still-9$", after=mark)
        mark = t.mark()
        t.key("C-x")
        m = t.wait_for(r"detached; (ex_[0-9a-f]{16}) keeps running", after=mark)
        self.wait_end(0, after=mark)
        ex = m.group(1)
        self.assertEqual(self.req("GET", "/v1/execs/" + ex).json["state"], "running")
        self.req("POST", "/v1/execs/%s/kill" % ex)
        # a sequence, and a malformed one
        mark = t.mark()
        self.run_in_term("attach", "-d", "ctrl-p,ctrl-q", self.name)
        self.wait_prompt(after=mark + 1)
        mark = t.mark()
        t.key("C-p", "C-q")
        m = t.wait_for(r"detached; (ex_[0-9a-f]{16}) keeps running", after=mark)
        self.wait_end(0, after=mark)
        self.req("POST", "/v1/execs/%s/kill" % m.group(1))
        mark = t.mark()
        self.run_in_term("attach", "-d", "ctrl-", self.name)
        t.wait_for(r"bad --detach-keys", after=mark)
        self.wait_end(2, after=mark)

    def test_sigterm_restores_terminal_and_ends_exec(self):
        t = self.term
        self.run_in_term("attach", self.name)
        self.wait_prompt(after=1)
        [ex] = self.running_execs()
        pid = t.child_pid("sbx")
        mark = t.mark()
        os.kill(pid, signal.SIGTERM)
        self.wait_end(128 + signal.SIGTERM, after=mark)
        x = self.wait_exec(ex)
        self.assertEqual(x["state"], "killed", x)

    def test_errors(self):
        t = self.term
        self.run_in_term("attach", "no-such-sandbox")
        t.wait_for(r"sandbox_not_found", after=1)
        self.wait_end(1, after=1)
        mark = t.mark()
        self.run_in_term("attach", "--exec", "ex_0000000000000000")
        t.wait_for(r"exec_not_found", after=mark)
        self.wait_end(1, after=mark)
        mark = t.mark()
        self.run_in_term("attach")
        t.wait_for(r"missing REF", after=mark)
        self.wait_end(2, after=mark)


class TestAttachServerKilled(AttachBase):
    """Its own sbxd: the test kills it."""

    def test_sigkill_sbxd_restores_terminal(self):
        t = self.term
        self.run_in_term("attach", self.name)
        self.wait_prompt(after=1)
        mark = t.mark()
        t.type("echo up")
        t.wait_for(r"^up$", after=mark)
        mark = t.mark()
        self.srv.kill9()
        t.wait_for(r"sbx: .*\(transport\)$", after=mark)
        t.wait_for(r"^sbx: (ex_[0-9a-f]{16}) may still be running", after=mark)
        self.wait_end(1, after=mark)
        # a restarted server re-connects to the sandbox; the exec it leaves
        # behind is cleaned up with it
        self.srv.start()


if __name__ == "__main__":
    unittest.main()
