"""Sandboxes: create/get/list/stop/start/delete and every bad input."""

import os
import subprocess
import tempfile
import unittest

from harness import SBX_ID_RE, SbxTestCase, err_field, unique


FORK_BOMB = """
import os, signal
kids = []
try:
    for i in range(100):
        p = os.fork()
        if p == 0:
            signal.pause()
            os._exit(0)
        kids.append(p)
except OSError:
    pass
print(len(kids))
for k in kids:
    os.kill(k, 9)
for k in kids:
    os.waitpid(k, 0)
"""


class TestSandboxes(SbxTestCase):

    def test_create_defaults(self):
        r = self.req("POST", "/v1/sandboxes", {})
        self.assertEqual(r.status, 201, r)
        self.track(r.json["id"])
        o = r.json
        self.assertSandbox(o)
        self.assertRegex(o["id"], SBX_ID_RE)
        self.assertEqual(o["state"], "running")
        self.assertEqual(o["image"], "host")
        self.assertEqual(o["driver"], "ns")
        self.assertEqual(o["network"], "none")
        self.assertEqual(o["workdir"], "/")
        self.assertEqual(o["shell"], "/bin/sh")
        self.assertEqual(o["labels"], {})
        self.assertTime(o["started_at"])
        self.assertIsNone(o["stopped_at"])
        self.assertIn("application/json", r.headers.get("Content-Type", ""))
        self.assertTrue(r.headers.get("X-Request-Id"))

    def test_create_no_body(self):
        r = self.req("POST", "/v1/sandboxes")
        self.assertEqual(r.status, 201, r)
        self.track(r.json["id"])
        self.assertEqual(r.json["state"], "running")

    def test_create_with_fields(self):
        name = unique("full")
        o = self.mk(name=name, env={"FOO": "bar"}, labels={"team": "a", "tier": "x"},
                    limits={"memory_mib": 256, "pids": 128, "cpus": 0.5},
                    workdir="/tmp")
        self.assertEqual(o["name"], name)
        self.assertEqual(o["env"].get("FOO"), "bar")
        self.assertEqual(o["labels"], {"team": "a", "tier": "x"})
        self.assertEqual(o["limits"]["memory_mib"], 256)
        self.assertEqual(o["limits"]["pids"], 128)
        self.assertAlmostEqual(o["limits"]["cpus"], 0.5)
        self.assertEqual(o["workdir"], "/tmp")
        r = self.shell(name, "echo $FOO; pwd")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["stdout"], "bar\n/tmp\n")

    def test_content_type_ignored(self):
        name = unique("ct")
        for ct in ("text/plain", "application/x-www-form-urlencoded"):
            r = self.req("POST", "/v1/sandboxes", ('{"name": "%s-%d"}' % (name, len(ct))).encode(),
                         headers={"Content-Type": ct})
            self.assertEqual(r.status, 201, (ct, r))
            self.track(r.json["id"])
            self.assertEqual(r.json["name"], "%s-%d" % (name, len(ct)))

    def test_get_by_id_and_name(self):
        name = unique("get")
        o = self.mk(name=name)
        for ref in (o["id"], name):
            r = self.req("GET", "/v1/sandboxes/" + ref)
            self.assertEqual(r.status, 200, r)
            self.assertSandbox(r.json)
            self.assertEqual(r.json["id"], o["id"])
            self.assertEqual(r.json["name"], name)
            self.assertEqual(r.json["state"], "running")

    def test_unknown_sandbox(self):
        for m, suffix, body in (("GET", "", None), ("DELETE", "", None), ("POST", "/stop", {}),
                                ("POST", "/start", {}), ("GET", "/execs", None),
                                ("POST", "/exec", {"cmd": "true"}),
                                ("POST", "/shell", {"command": "true"})):
            for ref in ("nosuch", "sbx_0123456789abcdef"):
                r = self.req(m, "/v1/sandboxes/" + ref + suffix, body)
                self.assertError(r, 404, "sandbox_not_found")

    def test_duplicate_name(self):
        name = unique("dup")
        self.mk(name=name)
        r = self.req("POST", "/v1/sandboxes", {"name": name})
        self.assertError(r, 409, "sandbox_already_exists")

    def test_replace(self):
        name = unique("rep")
        a = self.mk(name=name)
        self.sh_ok(name, "echo old > /root/marker")
        r = self.req("POST", "/v1/sandboxes", {"name": name, "replace": True})
        self.assertEqual(r.status, 201, r)
        self.track(r.json["id"])
        b = r.json
        self.assertNotEqual(a["id"], b["id"])
        self.assertEqual(b["name"], name)
        self.assertError(self.req("GET", "/v1/sandboxes/" + a["id"]), 404, "sandbox_not_found")
        r = self.req("GET", "/v1/sandboxes/" + name)
        self.assertEqual(r.json["id"], b["id"])
        r = self.shell(name, "cat /root/marker")
        self.assertEqual(r.status, 200)
        self.assertNotEqual(r.json["exit_code"], 0, "replaced sandbox kept the old layer")
        # replace with no existing sandbox just creates
        name2 = unique("rep2")
        r = self.req("POST", "/v1/sandboxes", {"name": name2, "replace": True})
        self.assertEqual(r.status, 201, r)
        self.track(r.json["id"])

    def test_bad_names(self):
        for bad in ("", "a" * 64, "-abc", ".abc", "_abc", "a/b", "..", ".", "a b", "a\u00e9",
                    "a:b", "../etc"):
            r = self.req("POST", "/v1/sandboxes", {"name": bad})
            self.assertError(r, 400, "invalid_request", field="name")
        ok = "A" + "b" * 61 + "9"  # 63 characters
        o = self.mk(name=ok)
        self.assertEqual(o["name"], ok)
        o = self.mk(name="x.y_z-1")
        self.assertEqual(o["name"], "x.y_z-1")

    def test_name_that_looks_like_an_id(self):
        r = self.req("POST", "/v1/sandboxes", {"name": "sbx_0123456789abcdef"})
        # either refused (ambiguous ref) or accepted; if accepted it is reachable
        if r.status == 201:
            self.track(r.json["id"])
            g = self.req("GET", "/v1/sandboxes/sbx_0123456789abcdef")
            self.assertEqual(g.status, 200)
        else:
            self.assertError(r, 400, "invalid_request", field="name")

    def test_wrong_types(self):
        cases = [({"name": 5}, "name"), ({"env": "x"}, "env"),
                 ({"env": {"A": 1}}, lambda f: f is not None and f.startswith("env")),
                 ({"labels": [1]}, "labels"), ({"replace": "yes"}, "replace"),
                 ({"image": 3}, "image"), ({"limits": 5}, "limits"),
                 ({"limits": {"memory_mib": "x"}}, lambda f: f is not None and f.startswith("limits")),
                 ({"limits": {"pids": -1}}, lambda f: f is not None and f.startswith("limits")),
                 ({"idle_timeout_s": "1"}, "idle_timeout_s"), ({"workdir": 1}, "workdir")]
        for body, field in cases:
            r = self.req("POST", "/v1/sandboxes", body)
            self.assertError(r, 400, "invalid_request", field=field)

    def test_unknown_field(self):
        r = self.req("POST", "/v1/sandboxes", {"nmae": "typo"})
        self.assertError(r, 400, "invalid_request", field="nmae")

    def test_malformed_json(self):
        for raw in (b"{", b'{"name":', b"nope", b'{"name": "a",}', b"[]", b'"str"', b"1",
                    b'{"name": "a"} trailing'):
            r = self.req("POST", "/v1/sandboxes", raw, headers={"Content-Type": "application/json"})
            self.assertError(r, 400, "invalid_request")

    def test_body_too_large(self):
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            f.write(b'{"name": "' + b"a" * (10 * 1024 * 1024) + b'"}')
            f.flush()
            p = subprocess.run(["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", "-XPOST",
                                "--data-binary", "@" + f.name, "-H", "Content-Type: application/json",
                                "http://127.0.0.1:%d/v1/sandboxes" % self.srv.port],
                               capture_output=True, timeout=60)
        out = p.stdout.decode()
        body, _, code = out.rpartition("\n")
        self.assertEqual(code, "413", (out[:300], p.stderr))
        import json
        doc = json.loads(body)
        self.assertEqual(doc["error"]["kind"], "payload_too_large")
        # and the server still serves
        self.assertEqual(self.req("GET", "/v1/health").status, 200)

    def test_body_too_large_exec(self):
        o = self.mk()
        import json
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            f.write(json.dumps({"cmd": "cat", "stdin": "x" * (12 * 1024 * 1024)}).encode())
            f.flush()
            p = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-XPOST",
                                "--data-binary", "@" + f.name,
                                "http://127.0.0.1:%d/v1/sandboxes/%s/exec" % (self.srv.port, o["id"])],
                               capture_output=True, timeout=60)
        self.assertEqual(p.stdout.decode(), "413")

    def test_bad_image(self):
        for img in ("no-such-image", "../etc", "/", "a/b", ""):
            r = self.req("POST", "/v1/sandboxes", {"image": img})
            self.assertError(r, 400, "invalid_request", field="image")

    def test_list_and_filters(self):
        tag = unique("lst")
        a = self.mk(name=tag + "-a", labels={"suite": tag, "team": "a"})
        b = self.mk(name=tag + "-b", labels={"suite": tag, "team": "b", "env": "x"})
        c = self.mk(name=tag + "-c", labels={"suite": tag, "team": "a", "env": "x"})
        r = self.req("GET", "/v1/sandboxes")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(set(r.json), {"data", "next_cursor"})
        ids = {s["id"] for s in r.json["data"]}
        self.assertTrue({a["id"], b["id"], c["id"]} <= ids)
        for s in r.json["data"]:
            self.assertSandbox(s)

        def ids_of(q):
            r = self.req("GET", "/v1/sandboxes?" + q)
            self.assertEqual(r.status, 200, (q, r))
            return {s["id"] for s in r.json["data"]}

        self.assertEqual(ids_of("label=suite=" + tag), {a["id"], b["id"], c["id"]})
        self.assertEqual(ids_of("label=suite=%s&label=team=a" % tag), {a["id"], c["id"]})
        self.assertEqual(ids_of("label=suite=%s&label=team=a&label=env=x" % tag), {c["id"]})
        self.assertEqual(ids_of("label=suite%%3D%s&label=team%%3Db" % tag), {b["id"]})
        self.assertEqual(ids_of("label=suite=%s&label=team=zzz" % tag), set())
        # state filter
        r = self.req("POST", "/v1/sandboxes/%s/stop" % b["id"], {})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(ids_of("state=stopped&label=suite=" + tag), {b["id"]})
        self.assertEqual(ids_of("state=running&label=suite=" + tag), {a["id"], c["id"]})
        r = self.req("GET", "/v1/sandboxes?state=bogus")
        self.assertError(r, 400, "invalid_request", field="state")
        r = self.req("GET", "/v1/sandboxes?label=novalue")
        self.assertError(r, 400, "invalid_request", field="label")

    def test_paging(self):
        tag = unique("pg")
        made = {self.mk(labels={"page": tag})["id"] for _ in range(3)}
        r = self.req("GET", "/v1/sandboxes?limit=2&label=page=" + tag)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(len(r.json["data"]), 2)
        cur = r.json["next_cursor"]
        self.assertIsInstance(cur, str)
        self.assertTrue(cur)
        first = [s["id"] for s in r.json["data"]]
        import urllib.parse
        r = self.req("GET", "/v1/sandboxes?limit=2&label=page=%s&cursor=%s"
                     % (tag, urllib.parse.quote(cur, safe="")))
        self.assertEqual(r.status, 200, r)
        self.assertEqual(len(r.json["data"]), 1)
        self.assertIsNone(r.json["next_cursor"])
        second = [s["id"] for s in r.json["data"]]
        self.assertEqual(set(first + second), made)
        self.assertEqual(len(set(first + second)), 3)
        # exactly a full page: no dangling empty page afterwards, or an empty final page
        r = self.req("GET", "/v1/sandboxes?limit=3&label=page=" + tag)
        self.assertEqual(len(r.json["data"]), 3)
        if r.json["next_cursor"] is not None:
            r2 = self.req("GET", "/v1/sandboxes?limit=3&label=page=%s&cursor=%s"
                          % (tag, urllib.parse.quote(r.json["next_cursor"], safe="")))
            self.assertEqual(r2.json["data"], [])
            self.assertIsNone(r2.json["next_cursor"])
        r = self.req("GET", "/v1/sandboxes?limit=500")
        self.assertEqual(r.status, 200)

    def test_bad_limit_and_cursor(self):
        for q in ("limit=0", "limit=-1", "limit=abc", "limit=501", "limit=1.5"):
            r = self.req("GET", "/v1/sandboxes?" + q)
            self.assertError(r, 400, "invalid_request", field="limit")
        r = self.req("GET", "/v1/sandboxes?cursor=notacursor")
        self.assertError(r, 400, "invalid_request", field="cursor")

    def test_stop_start_keeps_layer(self):
        name = unique("ss")
        o = self.mk(name=name)
        self.sh_ok(name, "echo x > /root/f")
        r = self.req("POST", "/v1/sandboxes/%s/stop" % name, {})
        self.assertEqual(r.status, 200, r)
        self.assertSandbox(r.json)
        self.assertEqual(r.json["state"], "stopped")
        self.assertTime(r.json["stopped_at"])
        r = self.req("GET", "/v1/sandboxes/" + o["id"])
        self.assertEqual(r.json["state"], "stopped")
        r = self.exec(name, cmd="true")
        self.assertError(r, 409, "sandbox_not_running")
        r = self.shell(name, "true")
        self.assertError(r, 409, "sandbox_not_running")
        # stopping again is fine
        r = self.req("POST", "/v1/sandboxes/%s/stop" % name, {})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["state"], "stopped")
        r = self.req("POST", "/v1/sandboxes/%s/start" % name, {})
        self.assertEqual(r.status, 200, r)
        self.assertSandbox(r.json)
        self.assertEqual(r.json["state"], "running")
        self.assertIsNone(r.json["stopped_at"])
        self.assertEqual(self.sh_ok(name, "cat /root/f"), "x\n")

    def test_stop_kills_processes(self):
        name = unique("sk")
        self.mk(name=name)
        r = self.exec(name, cmd="sleep", args=["1000"], background=True)
        self.assertEqual(r.status, 202, r)
        self.assertEqual(self.req("POST", "/v1/sandboxes/%s/stop" % name, {}).status, 200)
        self.assertEqual(self.req("POST", "/v1/sandboxes/%s/start" % name, {}).status, 200)
        out = self.sh_ok(name, "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done"
                               " | grep -c 'sleep 100[0]' || true")
        self.assertEqual(out.strip(), "0")

    def test_delete(self):
        name = unique("del")
        o = self.mk(name=name)
        r = self.exec(name, cmd="true")
        self.assertEqual(r.status, 200, r)
        ex = r.json["exec_id"]
        r = self.req("DELETE", "/v1/sandboxes/" + name)
        self.assertEqual(r.status, 204, r)
        self.assertEqual(r.raw, b"")
        self.assertTrue(r.headers.get("X-Request-Id"))
        self.assertError(self.req("GET", "/v1/sandboxes/" + o["id"]), 404, "sandbox_not_found")
        self.assertError(self.req("GET", "/v1/sandboxes/" + name), 404, "sandbox_not_found")
        self.assertError(self.req("GET", "/v1/execs/" + ex), 404, "exec_not_found")
        self.assertError(self.req("DELETE", "/v1/sandboxes/" + o["id"]), 404, "sandbox_not_found")
        # its directory is gone and the name is free again
        self.assertFalse(os.path.exists(os.path.join(self.srv.data_dir, "sandboxes", o["id"])))
        o2 = self.mk(name=name)
        self.assertNotEqual(o2["id"], o["id"])

    def test_delete_stopped(self):
        o = self.mk()
        self.assertEqual(self.req("POST", "/v1/sandboxes/%s/stop" % o["id"], {}).status, 200)
        r = self.req("DELETE", "/v1/sandboxes/" + o["id"])
        self.assertEqual(r.status, 204, r)

    def test_memory_limit_enforced(self):
        name = unique("mem")
        self.mk(name=name, limits={"memory_mib": 64})
        r = self.exec(name, cmd="/usr/bin/python3",
                      args=["-c", "b = b'x' * (300 * 1024 * 1024); print('survived')"], timeout=120)
        self.assertEqual(r.status, 200, r)
        self.assertFalse(r.json["success"], r)
        self.assertNotIn("survived", r.json["stdout"])

    def test_pids_limit_enforced(self):
        name = unique("pids")
        self.mk(name=name, limits={"pids": 20})
        r = self.exec(name, cmd="/usr/bin/python3", args=["-c", FORK_BOMB], timeout=120)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["exit_code"], 0, r)
        n = int(r.json["stdout"].split()[-1])
        self.assertLess(n, 20, r.json)
        self.assertGreater(n, 0, r.json)


if __name__ == "__main__":
    unittest.main()
