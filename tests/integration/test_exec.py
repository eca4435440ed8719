"""One-shot exec and shell: output, env, cwd, user, stdin, encodings, caps,
failures, timeouts, signals, grace, zombies, concurrency, background."""

import json
import threading
import time
import unittest

from harness import (EX_ID_RE, FAILURE_KEYS, SbxTestCase, agent_pid, b64, err_field, host_count,
                     ns_only,
                     unb64, unique)

PROC_CMDLINES = "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done"


class TestExec(SbxTestCase):

    @classmethod
    def setUpServer(cls):
        cls.name = unique("ex")
        r = cls.srv.request("POST", "/v1/sandboxes",
                            {"name": cls.name, "env": {"SBX_A": "1", "SBX_B": "2"}})
        if r.status != 201:
            raise AssertionError("create: %r" % r)
        cls.sid = r.json["id"]

    # -- basics -------------------------------------------------------------------
    def test_python(self):
        r = self.exec(self.name, cmd="python3", args=["-c", "print(1+1)"])
        self.assertEqual(r.status, 200, r)
        o = r.json
        self.assertExecOutput(o)
        self.assertEqual(o["stdout"], "2\n")
        self.assertEqual(o["stderr"], "")
        self.assertEqual(o["exit_code"], 0)
        self.assertIs(o["success"], True)
        self.assertIsNone(o["signal"])
        self.assertEqual(o["encoding"], "utf8")
        self.assertIs(o["stdout_truncated"], False)
        self.assertIs(o["stderr_truncated"], False)
        self.assertGreaterEqual(o["duration_ms"], 0)

    def test_by_id(self):
        r = self.exec(self.sid, cmd="echo", args=["by", "id"])
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["stdout"], "by id\n")

    def test_shell_nonzero(self):
        r = self.shell(self.name, "echo hi >&2; exit 3")
        self.assertEqual(r.status, 200, r)
        o = r.json
        self.assertExecOutput(o)
        self.assertIs(o["success"], False)
        self.assertEqual(o["exit_code"], 3)
        self.assertEqual(o["stderr"], "hi\n")
        self.assertEqual(o["stdout"], "")
        self.assertIsNone(o["signal"])

    def test_shell_pipe(self):
        r = self.shell(self.name, "echo hi | tr a-z A-Z")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["stdout"], "HI\n")

    def test_args_not_through_shell(self):
        r = self.exec(self.name, cmd="echo", args=["$HOME", "a b", "*", ";", "`id`"])
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["stdout"], "$HOME a b * ; `id`\n")

    def test_env_merge(self):
        r = self.shell(self.name, 'echo "$SBX_A-$SBX_B-$SBX_C"', env={"SBX_B": "3", "SBX_C": "4"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["stdout"], "1-3-4\n")
        r = self.shell(self.name, 'echo "$SBX_A-$SBX_B-$SBX_C"')
        self.assertEqual(r.json["stdout"], "1-2-\n")

    def test_cwd(self):
        r = self.exec(self.name, cmd="pwd")
        self.assertEqual(r.json["stdout"], "/\n")
        r = self.exec(self.name, cmd="pwd", cwd="/tmp")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["stdout"], "/tmp\n")

    def test_user(self):
        r = self.exec(self.name, cmd="id", args=["-u"])
        self.assertEqual(r.json["stdout"], "0\n")
        r = self.exec(self.name, cmd="id", args=["-u"], user="1000")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["stdout"], "1000\n")
        r = self.exec(self.name, cmd="id", args=["-u"], user="nobody")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["stdout"], "65534\n")
        r = self.exec(self.name, cmd="id", args=["-u"], user="0")
        self.assertEqual(r.json["stdout"], "0\n")
        # a non-root user really is one: it cannot write /root
        r = self.shell(self.name, "touch /root/nope", user="1000")
        self.assertEqual(r.status, 200, r)
        self.assertNotEqual(r.json["exit_code"], 0, r)

    def test_stdin_text(self):
        r = self.exec(self.name, cmd="cat", stdin="hello\nwörld\n")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["stdout"], "hello\nwörld\n")

    def test_stdin_b64(self):
        data = bytes(range(256)) * 4
        r = self.exec(self.name, cmd="cat", stdin_b64=b64(data), encoding="base64")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["encoding"], "base64")
        self.assertEqual(unb64(r.json["stdout"]), data)

    def test_stdin_large(self):
        # well past a pipe's 64 KiB, under the server's body and stdin limits
        data = ("0123456789abcdef" * 1024 * 25)  # 400 KiB
        r = self.exec(self.name, cmd="wc", args=["-c"], stdin=data)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["stdout"].strip(), str(len(data)))

    def test_no_stdin_is_eof(self):
        t0 = time.time()
        r = self.exec(self.name, cmd="cat", timeout_ms=10000)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["stdout"], "")
        self.assertEqual(r.json["exit_code"], 0)
        self.assertLess(time.time() - t0, 5)

    def test_base64_all_bytes(self):
        data = bytes(range(256))
        r = self.exec(self.name, cmd="/usr/bin/python3",
                      args=["-c", "import sys; sys.stdout.buffer.write(bytes(range(256)));"
                                  " sys.stderr.buffer.write(bytes(range(255, -1, -1)))"],
                      encoding="base64")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["encoding"], "base64")
        self.assertEqual(unb64(r.json["stdout"]), data)
        self.assertEqual(unb64(r.json["stderr"]), data[::-1])

    def test_utf8_replacement(self):
        r = self.exec(self.name, cmd="/usr/bin/python3",
                      args=["-c", "import sys; sys.stdout.buffer.write(b'a\\xffb\\xc3\\xa9c\\xe2\\x82')"])
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["encoding"], "utf8")
        out = r.json["stdout"]
        self.assertTrue(out.startswith("a\ufffdb\u00e9c"), repr(out))
        self.assertTrue(out.endswith("\ufffd"), repr(out))
        self.assertNotIn("\\x", out)

    def test_bad_encoding(self):
        r = self.exec(self.name, cmd="true", encoding="latin1")
        self.assertError(r, 400, "invalid_request", field="encoding")

    def test_max_output_bytes(self):
        t0 = time.time()
        r = self.shell(self.name, "head -c 10000000 /dev/zero | tr '\\0' a; echo err >&2",
                       max_output_bytes=10, timeout_ms=60000)
        self.assertEqual(r.status, 200, r)
        o = r.json
        self.assertEqual(o["stdout"], "a" * 10)
        self.assertIs(o["stdout_truncated"], True)
        self.assertEqual(o["stderr"], "err\n")
        self.assertIs(o["stderr_truncated"], False)
        self.assertEqual(o["exit_code"], 0)
        self.assertLess(time.time() - t0, 30)
        # stderr capped on its own
        r = self.shell(self.name, "echo out; head -c 5000000 /dev/zero | tr '\\0' b >&2",
                       max_output_bytes=7)
        self.assertEqual(r.json["stdout"], "out\n")
        self.assertIs(r.json["stdout_truncated"], False)
        self.assertEqual(r.json["stderr"], "b" * 7)
        self.assertIs(r.json["stderr_truncated"], True)
        # exact cap is not truncation
        r = self.shell(self.name, "printf 12345", max_output_bytes=5)
        self.assertEqual(r.json["stdout"], "12345")
        self.assertIs(r.json["stdout_truncated"], False)
        # base64 caps raw bytes, not encoded ones
        r = self.shell(self.name, "head -c 100 /dev/zero", max_output_bytes=10, encoding="base64")
        self.assertEqual(unb64(r.json["stdout"]), b"\0" * 10)
        self.assertIs(r.json["stdout_truncated"], True)

    def test_default_cap_reasonable(self):
        # a few MiB pass under the default cap untouched
        r = self.shell(self.name, "head -c 3000000 /dev/zero | tr '\\0' z")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(len(r.json["stdout"]), 3000000)
        self.assertIs(r.json["stdout_truncated"], False)

    # -- failures -------------------------------------------------------------------
    def _failure(self, r, kind):
        e = self.assertError(r, 422, "exec_failed")
        f = err_field(r.json, "failure")
        self.assertIsInstance(f, dict, r)
        self.assertTrue(FAILURE_KEYS <= set(f), "failure %r lacks %s" % (f, FAILURE_KEYS - set(f)))
        self.assertEqual(f["kind"], kind, f)
        self.assertIsInstance(f["errno"], int)
        self.assertIsInstance(f["errno_name"], str)
        self.assertIsInstance(f["stage"], str)
        self.assertTrue(f["message"])
        return f

    def test_fail_not_found(self):
        r = self.exec(self.name, cmd="/nope")
        f = self._failure(r, "not_found")
        self.assertEqual(f["errno"], 2)
        self.assertEqual(f["errno_name"], "ENOENT")
        self.assertEqual(f["path"], "/nope")
        r = self.exec(self.name, cmd="no-such-program-xyz")
        f = self._failure(r, "not_found")
        self.assertEqual(f["errno_name"], "ENOENT")

    def test_fail_permission_denied(self):
        self.sh_ok(self.name, "printf x > /tmp/f; chmod 644 /tmp/f")
        r = self.exec(self.name, cmd="/tmp/f")
        f = self._failure(r, "permission_denied")
        self.assertEqual(f["errno_name"], "EACCES")
        self.assertEqual(f["path"], "/tmp/f")

    def test_fail_not_executable(self):
        self.sh_ok(self.name, "printf '\\001\\002garbage' > /tmp/g; chmod 755 /tmp/g")
        r = self.exec(self.name, cmd="/tmp/g")
        f = self._failure(r, "not_executable")
        self.assertEqual(f["errno_name"], "ENOEXEC")
        self.assertEqual(f["path"], "/tmp/g")

    def test_fail_bad_args(self):
        # one argument over the kernel's MAX_ARG_STRLEN (128 KiB): E2BIG
        r = self.exec(self.name, cmd="echo", args=["a" * 200000])
        f = self._failure(r, "bad_args")
        self.assertEqual(f["errno_name"], "E2BIG")

    def test_fail_directory(self):
        self.sh_ok(self.name, "mkdir -p /tmp/adir")
        r = self.exec(self.name, cmd="/tmp/adir")
        self._failure(r, "permission_denied")

    def test_fail_bad_cwd(self):
        r = self.exec(self.name, cmd="true", cwd="/no/such/dir")
        f = self._failure(r, "bad_cwd")
        self.assertEqual(f["errno_name"], "ENOENT")
        self.assertEqual(f["path"], "/no/such/dir")
        self.assertEqual(f["stage"], "chdir")
        r = self.exec(self.name, cmd="true", cwd="/etc/passwd")
        f = self._failure(r, "bad_cwd")
        self.assertEqual(f["errno_name"], "ENOTDIR")

    def test_fail_bad_user(self):
        r = self.exec(self.name, cmd="true", user="nosuchuser")
        f = self._failure(r, "bad_user")
        self.assertIn("nosuchuser", f["message"] + str(f.get("path")))

    def test_failed_exec_is_recorded(self):
        r = self.exec(self.name, cmd="/nope")
        self.assertEqual(r.status, 422)
        ex = err_field(r.json, "exec_id")
        if ex is None:
            # find it in the list
            lst = self.req("GET", "/v1/sandboxes/%s/execs?state=failed" % self.name).json["data"]
            self.assertTrue(lst)
            ex = lst[0]["exec_id"]
        o = self.req("GET", "/v1/execs/" + ex).json
        self.assertEqual(o["state"], "failed")
        self.assertEqual(o["failure"]["kind"], "not_found")

    # -- bad requests -------------------------------------------------------------------
    def test_bad_exec_requests(self):
        cases = [({}, "cmd"), ({"cmd": ""}, "cmd"), ({"cmd": 5}, "cmd"),
                 ({"cmd": "true", "args": "x"}, "args"),
                 ({"cmd": "true", "args": [1]}, lambda f: f is not None and f.startswith("args")),
                 ({"cmd": "true", "env": []}, "env"),
                 ({"cmd": "true", "env": {"A": 1}}, lambda f: f is not None and f.startswith("env")),
                 ({"cmd": "true", "timeout_ms": -1}, "timeout_ms"),
                 ({"cmd": "true", "timeout_ms": "5"}, "timeout_ms"),
                 ({"cmd": "true", "max_output_bytes": -5}, "max_output_bytes"),
                 ({"cmd": "true", "stdin_b64": "!!notbase64!!"}, "stdin_b64"),
                 ({"cmd": "true", "stdin": "a", "stdin_b64": "YQ=="},
                  lambda f: f in ("stdin", "stdin_b64")),
                 ({"cmd": "true", "user": ""}, "user"),
                 ({"cmd": "true", "background": "yes"}, "background"),
                 ({"cmd": "true", "cwd": 7}, "cwd"),
                 ({"cmd": "true", "bogus": 1}, "bogus"),
                 # NUL cannot reach argv: refused by the JSON reader or by field checks
                 ({"cmd": "true", "args": ["a\u0000b"]}, lambda f: f is None or f.startswith("args")),
                 ({"cmd": "tr\u0000ue"}, lambda f: f in (None, "cmd")),
                 ({"cmd": "true", "env": {"A\u0000": "b"}}, lambda f: f is None or f.startswith("env")),
                 ({"cmd": "true", "env": {"A=B": "c"}}, lambda f: f is not None and f.startswith("env")),
                 ({"cmd": "true", "env": {"A": "b\u0000"}}, lambda f: f is None or f.startswith("env"))]
        for body, field in cases:
            r = self.exec(self.name, **body)
            with self.subTest(body=body):
                self.assertError(r, 400, "invalid_request", field=field)
        r = self.shell(self.name, 5)
        self.assertError(r, 400, "invalid_request", field="command")
        r = self.req("POST", "/v1/sandboxes/%s/shell" % self.name, {})
        self.assertError(r, 400, "invalid_request", field="command")
        r = self.req("POST", "/v1/sandboxes/%s/shell" % self.name, {"command": "true", "cmd": "x"})
        self.assertError(r, 400, "invalid_request")

    def test_invalid_utf8_and_malformed(self):
        p = "/v1/sandboxes/%s/exec" % self.name
        for raw in (b'{"cmd": "echo", "args": ["\xff"]}', b'{"cmd": "ec\xc3ho"}',
                    b'{"cmd": "echo", "args": ["a\xed\xa0\x80b"]}', b'{"cmd": "echo"',
                    b'{"cmd": "echo", "args": ["\\ud800"]}'):
            r = self.req("POST", p, raw)
            self.assertError(r, 400, "invalid_request")

    # -- timeouts, signals, grace ---------------------------------------------------
    @ns_only("counts the sandbox's processes from the host")
    def test_timeout_kills_group(self):
        agent = agent_pid(self.srv.data_dir, self.sid)
        self.assertIsNotNone(agent, "cannot find the sandbox's agent on the host")
        base = host_count("sleep 100", agent)
        # a witness that the host-side count sees the sandbox's processes at all
        w = self.exec(self.name, cmd="sleep", args=["100"], background=True)
        self.assertEqual(w.status, 202, w)
        deadline = time.time() + 5
        while host_count("sleep 100", agent) <= base and time.time() < deadline:
            time.sleep(0.05)
        self.assertEqual(host_count("sleep 100", agent), base + 1)
        self.srv.request("POST", "/v1/sandboxes/%s/shell" % self.name,
                         {"command": "kill %d" % w.json["pid"]})
        deadline = time.time() + 5
        while host_count("sleep 100", agent) > base and time.time() < deadline:
            time.sleep(0.05)
        t0 = time.time()
        r = self.shell(self.name, "echo started; echo e >&2; sleep 100 & sleep 100", timeout_ms=500)
        dt = time.time() - t0
        e = self.assertError(r, 504, "exec_timeout")
        ex = err_field(r.json, "exec_id")
        self.assertRegex(ex or "", EX_ID_RE)
        self.assertEqual(err_field(r.json, "stdout"), "started\n", r)
        self.assertEqual(err_field(r.json, "stderr"), "e\n", r)
        self.assertLess(dt, 10)
        # everything in the group is gone, in the sandbox and on the host
        deadline = time.time() + 5
        while True:
            left = self.sh_ok(self.name, PROC_CMDLINES + " | grep -c 'sleep 10[0]' || true").strip()
            h = host_count("sleep 100", agent)
            if (left == "0" and h <= base) or time.time() > deadline:
                break
            time.sleep(0.2)
        self.assertEqual(left, "0", "sleep 100 survived the timeout inside the sandbox")
        self.assertLessEqual(h, base, "sleep 100 survived the timeout on the host")
        o = self.req("GET", "/v1/execs/" + ex).json
        self.assertEqual(o["state"], "timed_out")
        self.assertTime(o["ended_at"])

    def test_timeout_plain(self):
        # a plain program exceeding its timeout
        r = self.exec(self.name, cmd="sleep", args=["30"], timeout_ms=300)
        self.assertError(r, 504, "exec_timeout")

    def test_timeout_not_hit(self):
        r = self.shell(self.name, "sleep 0.2; echo ok", timeout_ms=5000)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["stdout"], "ok\n")

    def test_killed_by_signal(self):
        r = self.shell(self.name, "kill -9 $$")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["exit_code"], -1)
        self.assertEqual(r.json["signal"], 9)
        self.assertIs(r.json["success"], False)
        r = self.shell(self.name, "kill -TERM $$")
        self.assertEqual(r.json["exit_code"], -1)
        self.assertEqual(r.json["signal"], 15)

    def test_descendant_holding_stdout(self):
        t0 = time.time()
        r = self.shell(self.name, "echo hi; sleep 30 &")
        dt = time.time() - t0
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["stdout"], "hi\n")
        self.assertEqual(r.json["exit_code"], 0)
        self.assertLess(dt, 10, "reply took %.1fs" % dt)

    def test_zombies_reaped(self):
        for _ in range(5):
            r = self.shell(self.name, "sleep 0.1 & exec true")
            self.assertEqual(r.status, 200, r)
        time.sleep(1.0)
        out = self.sh_ok(self.name, "cat /proc/[0-9]*/stat 2>/dev/null | awk '{print $3}' | grep -c Z || true")
        self.assertEqual(out.strip(), "0")

    def test_concurrent(self):
        errors = []

        def worker(t):
            for j in range(10):
                try:
                    r = self.srv.request("POST", "/v1/sandboxes/%s/shell" % self.name,
                                         {"command": "echo out-%d-%d; echo err-%d-%d >&2; exit %d"
                                                     % (t, j, t, j, j % 3)}, timeout=60)
                    want = ("out-%d-%d\n" % (t, j), "err-%d-%d\n" % (t, j), j % 3)
                    got = (r.json["stdout"], r.json["stderr"], r.json["exit_code"]) \
                        if r.status == 200 else r
                    if got != want:
                        errors.append((t, j, got))
                except Exception as e:  # reported below
                    errors.append((t, j, repr(e)))

        ths = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
        t0 = time.time()
        for t in ths:
            t.start()
        for t in ths:
            t.join(120)
        self.assertEqual(errors, [])
        self.assertLess(time.time() - t0, 120)
        # all 80 have records
        r = self.req("GET", "/v1/sandboxes/%s/execs?limit=500" % self.name)
        cmds = [e for e in r.json["data"] if "out-" in json.dumps(e)]
        self.assertGreaterEqual(len(cmds), 80)

    # -- background -------------------------------------------------------------------
    def test_background(self):
        r = self.shell(self.name, "sleep 0.5; echo bg", background=True)
        self.assertEqual(r.status, 202, r)
        self.assertEqual(set(r.json), {"exec_id", "state", "pid"})
        self.assertRegex(r.json["exec_id"], EX_ID_RE)
        self.assertEqual(r.json["state"], "running")
        self.assertIsInstance(r.json["pid"], int)
        ex = r.json["exec_id"]
        o = self.req("GET", "/v1/execs/" + ex).json
        self.assertEqual(o["state"], "running")
        self.assertIsNone(o["ended_at"])
        o = self.wait_exec(ex)
        self.assertEqual(o["state"], "exited")
        self.assertEqual(o["exit_code"], 0)
        self.assertEqual(o["stdout_bytes"], 3)
        self.assertTime(o["ended_at"])

    def test_background_failure(self):
        r = self.exec(self.name, cmd="/nope", background=True)
        if r.status == 202:
            o = self.wait_exec(r.json["exec_id"])
            self.assertEqual(o["state"], "failed")
            self.assertEqual(o["failure"]["kind"], "not_found")
        else:
            self._failure(r, "not_found")


if __name__ == "__main__":
    unittest.main()
