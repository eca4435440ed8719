"""Restart survival and clean shutdown: sandboxes outlive sbxd, a new sbxd on
the same data dir re-connects, kill -9 loses no committed record, an agent
that died meanwhile is marked stopped, SIGTERM lets in-flight requests finish."""

import os
import signal
import time
import unittest

from harness import SbxTestCase, agent_pid, in_thread, unique


def wait_gone(pid, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not os.path.exists("/proc/%d" % pid):
            return True
        try:
            with open("/proc/%d/stat" % pid) as f:
                if f.read().split(")")[-1].split()[0] == "Z":
                    return True
        except OSError:
            return True
        time.sleep(0.05)
    return False


class TestRestart(SbxTestCase):

    def tearDown(self):
        if not self.srv.alive():
            self.srv.start()
        super().tearDown()

    def test_sigterm_then_restart(self):
        name = unique("rs")
        o = self.mk(name=name)
        self.sh_ok(name, "echo persisted > /root/f")
        ex = self.exec(name, cmd="true").json["exec_id"]
        pid = agent_pid(self.srv.data_dir, o["id"])
        self.assertIsNotNone(pid, "cannot find the agent of %s on the host" % o["id"])
        rc = self.srv.stop()
        self.assertEqual(rc, 0, "sbxd exit code on SIGTERM:\n" + self.srv.log_tail())
        self.assertTrue(os.path.exists("/proc/%d" % pid), "the sandbox died with sbxd")
        self.srv.start()
        r = self.req("GET", "/v1/sandboxes/" + name)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["state"], "running")
        self.assertEqual(self.sh_ok(name, "cat /root/f"), "persisted\n")
        r = self.req("GET", "/v1/execs/" + ex)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["state"], "exited")
        self.assertEqual(agent_pid(self.srv.data_dir, o["id"]), pid, "a new agent was started")

    def test_kill9_then_restart(self):
        name = unique("k9")
        o = self.mk(name=name)
        self.sh_ok(name, "echo still > /root/g")
        r = self.shell(name, "echo rec; exit 5")
        ex = r.json["exec_id"]
        rc = self.srv.kill9()
        self.assertEqual(rc, -signal.SIGKILL)
        self.srv.start()
        r = self.req("GET", "/v1/sandboxes/" + o["id"])
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["state"], "running")
        r = self.req("GET", "/v1/execs/" + ex)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["state"], "exited")
        self.assertEqual(r.json["exit_code"], 5)
        self.assertEqual(r.json["stdout_bytes"], 4)
        self.assertEqual(self.sh_ok(name, "cat /root/g"), "still\n")
        lst = self.req("GET", "/v1/sandboxes/%s/execs" % name).json["data"]
        self.assertIn(ex, [e["exec_id"] for e in lst])

    def test_agent_died_while_down(self):
        a = unique("dead")
        b = unique("alive")
        oa = self.mk(name=a)
        ob = self.mk(name=b)
        self.sh_ok(a, "echo kept > /root/h")
        pid = agent_pid(self.srv.data_dir, oa["id"])
        self.assertIsNotNone(pid)
        self.assertEqual(self.srv.stop(), 0)
        os.kill(pid, signal.SIGKILL)
        self.assertTrue(wait_gone(pid))
        self.srv.start()
        r = self.req("GET", "/v1/sandboxes/" + a)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["state"], "stopped")
        self.assertTime(r.json["stopped_at"])
        self.assertEqual(self.req("GET", "/v1/sandboxes/" + b).json["state"], "running")
        self.assertError(self.exec(a, cmd="true"), 409, "sandbox_not_running")
        lst = self.req("GET", "/v1/sandboxes?state=stopped").json["data"]
        self.assertIn(oa["id"], [s["id"] for s in lst])
        # it can be started again, with its layer
        r = self.req("POST", "/v1/sandboxes/%s/start" % a, {})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["state"], "running")
        self.assertEqual(self.sh_ok(a, "cat /root/h"), "kept\n")
        self.assertEqual(self.sh_ok(b, "echo ok"), "ok\n")

    def test_sigterm_lets_inflight_finish(self):
        name = unique("inflight")
        self.mk(name=name)
        t, box = in_thread(self.srv.request, "POST", "/v1/sandboxes/%s/shell" % name,
                           {"command": "sleep 1; echo done"}, None, 30)
        time.sleep(0.4)
        proc = self.srv.proc
        rc = self.srv.stop()
        t.join(30)
        self.assertNotIn("error", box, box)
        r = box.get("result")
        self.assertIsNotNone(r)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["stdout"], "done\n")
        self.assertEqual(rc, 0, "exit code %r on SIGTERM" % rc)
        del proc
        self.srv.start()
        lst = self.req("GET", "/v1/sandboxes/%s/execs" % name).json["data"]
        self.assertEqual(lst[0]["state"], "exited")

    def test_sigint_clean(self):
        self.assertEqual(self.srv.stop(signal.SIGINT), 0)
        self.srv.start()
        self.assertEqual(self.req("GET", "/v1/health").status, 200)

    def test_background_exec_across_restart(self):
        name = unique("bgr")
        self.mk(name=name)
        r = self.shell(name, "sleep 1.5; echo late", background=True)
        self.assertEqual(r.status, 202, r)
        ex = r.json["exec_id"]
        self.assertEqual(self.srv.stop(), 0)
        self.srv.start()
        o = self.wait_exec(ex, timeout=15)
        self.assertIn(o["state"], ("exited", "killed", "failed"), o)
        if o["state"] == "exited":
            self.assertEqual(o["exit_code"], 0)
            self.assertEqual(o["stdout_bytes"], 5)

    def test_restart_twice_no_duplicates(self):
        name = unique("twice")
        o = self.mk(name=name)
        self.srv.restart()
        self.srv.restart()
        lst = [s["id"] for s in self.req("GET", "/v1/sandboxes?limit=500").json["data"]]
        self.assertEqual(lst.count(o["id"]), 1)
        self.assertEqual(self.sh_ok(name, "echo x"), "x\n")


if __name__ == "__main__":
    unittest.main()
