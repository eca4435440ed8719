"""The `sbx` command-line client (issue 5) against a real sbxd: every command,
--json, --help, the exit-code conventions, live streaming, stdin forwarding,
Ctrl-C forwarding, binary output byte-exact and a 100 MiB stream."""

import hashlib
import json
import os
import signal
import subprocess
import time
import unittest

import harness
from harness import EX_ID_RE, SBX_ID_RE, SbxTestCase, unique

SBX = os.environ.get("SBX", os.path.join(harness.BUILD_DIR, "sbx"))


class CliTestCase(SbxTestCase):

    @classmethod
    def setUpServer(cls):
        if not os.path.exists(SBX):
            raise unittest.SkipTest("no sbx binary at %s (make all)" % SBX)
        cls.url = "http://127.0.0.1:%d" % cls.srv.port
        cls.name = unique("cli")
        r = cls.srv.request("POST", "/v1/sandboxes", {"name": cls.name, "env": {"CLI_A": "1"}})
        if r.status != 201:
            raise AssertionError("create: %r" % r)
        cls.sid = r.json["id"]

    def sbx(self, *args, input=None, timeout=120, env_url=True, check=None):
        env = dict(os.environ)
        env.pop("SBX_KEY", None)
        if env_url:
            env["SBX_URL"] = self.url
        else:
            env.pop("SBX_URL", None)
        p = subprocess.run([SBX] + list(args), input=input, capture_output=True, timeout=timeout,
                           env=env)
        if check is not None:
            self.assertEqual(p.returncode, check,
                             "sbx %s -> %d\nstdout: %r\nstderr: %r"
                             % (" ".join(args), p.returncode, p.stdout[:500], p.stderr[:500]))
        return p

    def popen(self, *args, **kw):
        env = dict(os.environ, SBX_URL=self.url)
        return subprocess.Popen([SBX] + list(args), env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, **kw)


class TestCliBasics(CliTestCase):

    def test_help_everywhere(self):
        p = self.sbx("--help", check=0)
        self.assertIn(b"Usage: sbx", p.stdout)
        for cmd in ("create", "ls", "inspect", "stop", "start", "rm", "exec", "shell", "execs",
                    "logs", "kill", "wait"):
            with self.subTest(cmd=cmd):
                p = self.sbx(cmd, "--help", check=0)
                self.assertIn(b"Usage: sbx " + cmd.encode(), p.stdout)
                self.assertIn(b"--json", p.stdout)
                self.assertEqual(p.stderr, b"")

    def test_usage_errors_exit_2(self):
        for args in (["nope"], [], ["exec"], ["exec", self.name], ["create", "--memory", "x"],
                     ["create", "--bogus"], ["inspect"], ["wait"], ["exec", "-t", "soon",
                                                                     self.name, "true"],
                     ["shell", self.name, "echo", "a"]):
            with self.subTest(args=args):
                p = self.sbx(*args, check=2)
                self.assertTrue(p.stderr.startswith(b"sbx: "), p.stderr)

    def test_url_flag_and_transport_error(self):
        p = self.sbx("--url", self.url, "ls", "-q", env_url=False, check=0)
        self.assertIn(self.sid.encode(), p.stdout)
        p = self.sbx("ls", "--url", self.url, "-q", env_url=False, check=0)
        self.assertIn(self.sid.encode(), p.stdout)
        port = harness.free_port()
        p = self.sbx("--url", "http://127.0.0.1:%d" % port, "ls", env_url=False, check=1)
        self.assertIn(b"transport", p.stderr)
        p = self.sbx("--url", "http://127.0.0.1:%d" % port, "exec", "x", "true",
                     env_url=False, check=1)

    def test_sandbox_lifecycle(self):
        name = unique("life")
        p = self.sbx("create", "--name", name, "--memory", "128", "--cpus", "0.5", "-e", "K=V",
                      "--env", "K2=a=b", "--label", "team=cli", "-l", "x=y", check=0)
        sid = p.stdout.decode().strip()
        self.assertRegex(sid, SBX_ID_RE)
        self.track(sid)
        o = json.loads(self.sbx("inspect", name, check=0).stdout)
        self.assertEqual(o["id"], sid)
        self.assertEqual(o["env"], {"K": "V", "K2": "a=b"})
        self.assertEqual(o["labels"], {"team": "cli", "x": "y"})
        self.assertEqual(o["limits"]["memory_mib"], 128)
        self.assertAlmostEqual(o["limits"]["cpus"], 0.5)
        # ls, plain and JSON, with filters
        p = self.sbx("ls", check=0)
        lines = p.stdout.decode().splitlines()
        self.assertTrue(lines[0].startswith("ID"), lines)
        self.assertTrue(any(l.startswith(sid) and name in l and "running" in l for l in lines))
        arr = json.loads(self.sbx("ls", "--json", "--label", "team=cli", check=0).stdout)
        self.assertEqual([s["id"] for s in arr], [sid])
        arr = json.loads(self.sbx("ls", "--json", "--state", "stopped", check=0).stdout)
        self.assertNotIn(sid, [s["id"] for s in arr])
        # duplicate name: API error, exit 1, kind on stderr; --json puts the error on stdout
        p = self.sbx("create", "--name", name, check=1)
        self.assertIn(b"sandbox_already_exists", p.stderr)
        p = self.sbx("create", "--json", "--name", name, check=1)
        self.assertEqual(json.loads(p.stdout)["error"]["kind"], "sandbox_already_exists")
        # stop / start
        p = self.sbx("stop", name, check=0)
        self.assertEqual(p.stdout, name.encode() + b"\n")
        self.assertEqual(json.loads(self.sbx("inspect", sid, check=0).stdout)["state"], "stopped")
        p = self.sbx("exec", name, "true", check=1)
        self.assertIn(b"sandbox_not_running", p.stderr)
        o = json.loads(self.sbx("start", "--json", name, check=0).stdout)
        self.assertEqual(o["state"], "running")
        # rm: several refs, one unknown -> 1, the known one removed
        p = self.sbx("rm", name, "no-such-sandbox-x", check=1)
        self.assertIn(name.encode(), p.stdout)
        self.assertIn(b"sandbox_not_found", p.stderr)
        self.sbx("inspect", name, check=1)

    def test_inspect_unknown(self):
        p = self.sbx("inspect", "no-such-sandbox-y", check=1)
        self.assertIn(b"sandbox_not_found", p.stderr)


class TestCliExec(CliTestCase):

    def test_output_and_exit_codes(self):
        p = self.sbx("exec", self.name, "--", "sh", "-c", "echo out; echo err >&2; exit 3", check=3)
        self.assertEqual(p.stdout, b"out\n")
        self.assertEqual(p.stderr, b"err\n")
        self.sbx("exec", self.name, "true", check=0)
        self.sbx("exec", self.name, "false", check=1)
        self.sbx("shell", self.name, "kill -9 $$", check=137)
        self.sbx("shell", self.name, "kill -TERM $$", check=143)
        p = self.sbx("exec", self.name, "no-such-program-z", check=127)
        self.assertIn(b"not_found", p.stderr)
        p = self.sbx("exec", self.name, "/etc/hostname", check=126)
        p = self.sbx("exec", "-w", "/nonexistent", self.name, "true", check=126)
        self.assertIn(b"bad_cwd", p.stderr)
        p = self.sbx("exec", "-t", "300ms", self.name, "--", "sh", "-c", "echo part; sleep 10",
                     check=124)
        self.assertEqual(p.stdout, b"part\n")
        self.assertIn(b"exec_timeout", p.stderr)
        p = self.sbx("exec", "no-such-sandbox-q", "true", check=1)
        self.assertIn(b"sandbox_not_found", p.stderr)

    def test_options(self):
        p = self.sbx("exec", self.name, "-w", "/tmp", "-e", "CLI_B=2", "-u", "1000", "--",
                     "sh", "-c", "pwd; echo $CLI_A$CLI_B; id -u", check=0)
        self.assertEqual(p.stdout, b"/tmp\n12\n1000\n")
        # program arguments that look like options belong to the program
        p = self.sbx("exec", self.name, "ls", "-d", "/", check=0)
        self.assertEqual(p.stdout, b"/\n")
        p = self.sbx("shell", self.name, "echo hi | tr a-z A-Z", check=0)
        self.assertEqual(p.stdout, b"HI\n")
        p = self.sbx("exec", "-T", self.name, "--", "sh", "-c", "test -t 1 && echo tty", check=0)
        self.assertIn(b"tty", p.stdout)

    def test_json(self):
        p = self.sbx("exec", "--json", self.name, "--", "sh", "-c", "echo a; echo b >&2; exit 2",
                     check=2)
        o = json.loads(p.stdout)
        self.assertRegex(o["exec_id"], EX_ID_RE)
        self.assertEqual((o["stdout"], o["stderr"], o["exit_code"], o["success"], o["signal"]),
                         ("a\n", "b\n", 2, False, None))
        p = self.sbx("shell", "--json", self.name, "exit 0", check=0)
        self.assertEqual(json.loads(p.stdout)["exit_code"], 0)
        p = self.sbx("exec", "--json", self.name, "no-such-program-z", check=127)
        e = json.loads(p.stdout)["error"]
        self.assertEqual(e["kind"], "exec_failed")
        self.assertEqual(e["failure"]["kind"], "not_found")

    def test_stdin_forwarding(self):
        p = self.sbx("exec", "-i", self.name, "--", "wc", "-l", input=b"a\nb\nc\n", check=0)
        self.assertEqual(p.stdout.strip(), b"3")
        # without -i, stdin is not read: EOF at once
        p = self.sbx("exec", self.name, "cat", input=b"ignored", check=0)
        self.assertEqual(p.stdout, b"")

    def test_binary_through_cat(self):
        data = bytes(range(256)) * 4096 + os.urandom(1 << 20)  # 2 MiB, every byte value
        p = self.sbx("exec", "-i", self.name, "cat", input=data, check=0)
        self.assertEqual(len(p.stdout), len(data))
        self.assertTrue(p.stdout == data, "binary output differs")
        p = self.sbx("exec", "-i", self.name, "--", "sh", "-c", "cat >&2", input=data, check=0)
        self.assertTrue(p.stderr == data, "binary stderr differs")

    def test_100mib_stream(self):
        n = 100 << 20
        t0 = time.time()
        gen = ("import hashlib, random, sys; b = random.Random(5).randbytes(%d); "
               "sys.stderr.write(hashlib.sha256(b).hexdigest()); sys.stderr.flush(); "
               "sys.stdout.buffer.write(b)" % n)
        p = self.sbx("exec", self.name, "--", "python3", "-c", gen, timeout=300)
        self.assertEqual(p.returncode, 0, p.stderr[-500:])
        self.assertEqual(len(p.stdout), n)
        want = p.stderr.decode()
        self.assertEqual(hashlib.sha256(p.stdout).hexdigest(), want)
        self.assertLess(time.time() - t0, 120)

    def test_live_streaming(self):
        # output arrives while the program still runs
        proc = self.popen("exec", self.name, "--", "sh", "-c", "echo first; sleep 3; echo second")
        t0 = time.time()
        line = proc.stdout.readline()
        self.assertEqual(line, b"first\n")
        self.assertLess(time.time() - t0, 2.5)
        rest, _ = proc.communicate(timeout=30)
        self.assertEqual(rest, b"second\n")
        self.assertEqual(proc.returncode, 0)

    def test_ctrl_c(self):
        # the first Ctrl-C reaches the program as SIGINT
        proc = self.popen("exec", self.name, "--", "sh", "-c",
                          "trap 'echo got-int; exit 5' INT; echo ready; "
                          "while :; do sleep 0.1; done")
        self.assertEqual(proc.stdout.readline(), b"ready\n")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        self.assertEqual(out, b"got-int\n", err)
        self.assertEqual(proc.returncode, 5)
        # a program that ignores it: the second Ctrl-C kills it
        proc = self.popen("exec", self.name, "--", "sh", "-c",
                          "trap '' INT; echo ready; while :; do sleep 0.1; done")
        self.assertEqual(proc.stdout.readline(), b"ready\n")
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        self.assertIsNone(proc.poll())
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
        self.assertEqual(proc.returncode, 137)


class TestCliExecs(CliTestCase):

    def background(self, command):
        r = self.req("POST", "/v1/sandboxes/%s/shell" % self.name,
                     {"command": command, "background": True})
        self.assertEqual(r.status, 202, r)
        return r.json["exec_id"]

    def test_execs_list(self):
        p = self.sbx("exec", self.name, "--", "echo", "listed", check=0)
        p = self.sbx("execs", self.name, check=0)
        lines = p.stdout.decode().splitlines()
        self.assertTrue(lines[0].startswith("EXEC_ID"))
        self.assertIn("echo", lines[1])
        arr = json.loads(self.sbx("execs", "--json", self.name, check=0).stdout)
        self.assertEqual(arr[0]["cmd"], "echo")
        self.assertEqual(arr[0]["args"], ["listed"])
        self.sbx("execs", "no-such-sandbox-w", check=1)

    def test_logs_kill_wait(self):
        ex = self.background("echo one; echo two >&2; sleep 30")
        deadline = time.time() + 10
        while time.time() < deadline:
            p = self.sbx("logs", ex, check=0)
            if p.stdout == b"one\n" and p.stderr == b"two\n":
                break
            time.sleep(0.1)
        self.assertEqual((p.stdout, p.stderr), (b"one\n", b"two\n"))
        p = self.sbx("logs", ex, "--offset", "2", check=0)
        self.assertEqual(p.stdout, b"e\n")
        o = json.loads(self.sbx("logs", "--json", ex, check=0).stdout)
        self.assertEqual((o["stdout"], o["stderr"]), ("one\n", "two\n"))
        p = self.sbx("wait", ex, "--timeout", "300ms", check=124)
        self.sbx("kill", ex, "--signal", "TERM", check=0)
        p = self.sbx("wait", ex, check=143)
        o = json.loads(self.sbx("wait", "--json", ex, check=143).stdout)
        self.assertEqual(o["signal"], 15)
        # kill (SIGKILL) and wait
        ex = self.background("sleep 30")
        self.sbx("kill", ex, check=0)
        self.sbx("wait", ex, check=137)
        p = self.sbx("kill", ex, check=1)  # no longer running
        self.sbx("kill", "ex_0000000000000000", check=1)
        self.sbx("wait", "ex_0000000000000000", check=1)
        # exit code of a finished exec, and failures
        ex = self.background("exit 7")
        self.sbx("wait", ex, check=7)

    def test_logs_follow(self):
        ex = self.background("echo a; sleep 1; echo b; echo c >&2")
        p = self.sbx("logs", "--follow", ex, timeout=30, check=0)
        self.assertEqual(p.stdout, b"a\nb\n")
        self.assertEqual(p.stderr, b"c\n")
        p = self.sbx("logs", "-f", "--offset", "2", ex, timeout=30, check=0)
        self.assertEqual(p.stdout, b"b\n")


if __name__ == "__main__":
    unittest.main()
