"""Exec records: GET /v1/sandboxes/{ref}/execs and GET /v1/execs/{id}."""

import unittest

from harness import EXEC_KEYS, EX_ID_RE, SbxTestCase, err_field, unique


class TestExecRecords(SbxTestCase):

    def _run(self, name, **body):
        r = self.exec(name, **body)
        if r.status == 200:
            return r.json["exec_id"], r
        ex = err_field(r.json, "exec_id")
        return ex, r

    def test_records(self):
        name = unique("rec")
        sb = self.mk(name=name)
        a, ra = self._run(name, cmd="sh", args=["-c", "printf hello; printf ab >&2"])
        self.assertEqual(ra.status, 200, ra)
        b, rb = self._run(name, cmd="sh", args=["-c", "exit 4"], cwd="/tmp", user="1000")
        self.assertEqual(rb.status, 200, rb)
        c, rc = self._run(name, cmd="/nope")
        self.assertEqual(rc.status, 422, rc)
        d, rd = self._run(name, cmd="sleep", args=["10"], timeout_ms=200)
        self.assertEqual(rd.status, 504, rd)
        e, re_ = self._run(name, cmd="sh", args=["-c", "kill -9 $$"])
        self.assertEqual(re_.status, 200, re_)
        self.assertRegex(d, EX_ID_RE)

        r = self.req("GET", "/v1/sandboxes/%s/execs" % name)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(set(r.json), {"data", "next_cursor"})
        data = r.json["data"]
        for o in data:
            self.assertTrue(EXEC_KEYS <= set(o), "missing %s in %r" % (EXEC_KEYS - set(o), o))
            self.assertEqual(o["sandbox_id"], sb["id"])
        ids = [o["exec_id"] for o in data]
        if c is None:  # a 422 that does not name its exec: take it from the list
            c = ids[2]
        self.assertEqual(ids, [e, d, c, b, a], "not newest first")
        # same list by id
        r2 = self.req("GET", "/v1/sandboxes/%s/execs" % sb["id"])
        self.assertEqual([o["exec_id"] for o in r2.json["data"]], ids)

        def ids_state(st):
            r = self.req("GET", "/v1/sandboxes/%s/execs?state=%s" % (name, st))
            self.assertEqual(r.status, 200, r)
            return [o["exec_id"] for o in r.json["data"]]

        self.assertEqual(ids_state("failed"), [c])
        self.assertEqual(ids_state("timed_out"), [d])
        self.assertEqual(ids_state("running"), [])
        self.assertIn(b, ids_state("exited"))
        self.assertIn(a, ids_state("exited"))
        self.assertError(self.req("GET", "/v1/sandboxes/%s/execs?state=nope" % name),
                         400, "invalid_request", field="state")
        # paging
        r = self.req("GET", "/v1/sandboxes/%s/execs?limit=2" % name)
        self.assertEqual([o["exec_id"] for o in r.json["data"]], [e, d])
        self.assertTrue(r.json["next_cursor"])
        import urllib.parse
        r = self.req("GET", "/v1/sandboxes/%s/execs?limit=2&cursor=%s"
                     % (name, urllib.parse.quote(r.json["next_cursor"], safe="")))
        self.assertEqual([o["exec_id"] for o in r.json["data"]], [c, b])
        self.assertError(self.req("GET", "/v1/sandboxes/%s/execs?limit=0" % name),
                         400, "invalid_request", field="limit")

        # one by one
        oa = self.req("GET", "/v1/execs/" + a).json
        self.assertEqual(oa["state"], "exited")
        self.assertEqual(oa["exit_code"], 0)
        self.assertIsNone(oa["signal"])
        self.assertIsNone(oa["failure"])
        self.assertEqual(oa["stdout_bytes"], 5)
        self.assertEqual(oa["stderr_bytes"], 2)
        self.assertEqual(oa["cmd"], "sh")
        self.assertEqual(oa["args"], ["-c", "printf hello; printf ab >&2"])
        self.assertIs(oa["tty"], False)
        self.assertIsInstance(oa["pid"], int)
        self.assertTime(oa["started_at"])
        self.assertTime(oa["ended_at"])
        self.assertLessEqual(oa["started_at"], oa["ended_at"])

        ob = self.req("GET", "/v1/execs/" + b).json
        self.assertEqual(ob["state"], "exited")
        self.assertEqual(ob["exit_code"], 4)
        self.assertEqual(ob["cwd"], "/tmp")
        self.assertEqual(ob["user"], "1000")

        oc = self.req("GET", "/v1/execs/" + c).json
        self.assertEqual(oc["state"], "failed")
        self.assertEqual(oc["failure"]["kind"], "not_found")
        self.assertEqual(oc["failure"]["errno_name"], "ENOENT")
        self.assertIsNone(oc["exit_code"])

        od = self.req("GET", "/v1/execs/" + d).json
        self.assertEqual(od["state"], "timed_out")
        self.assertTime(od["ended_at"])
        self.assertIn(od["signal"], (9, None))

        oe = self.req("GET", "/v1/execs/" + e).json
        self.assertIn(oe["state"], ("exited", "killed"))
        self.assertEqual(oe["exit_code"], -1)
        self.assertEqual(oe["signal"], 9)

    def test_shell_record(self):
        name = unique("recsh")
        self.mk(name=name)
        r = self.shell(name, "echo hi")
        o = self.req("GET", "/v1/execs/" + r.json["exec_id"]).json
        self.assertEqual(o["state"], "exited")
        self.assertEqual(o["stdout_bytes"], 3)
        self.assertIn("echo hi", o["args"])

    def test_unknown_exec(self):
        for ex in ("ex_0000000000000000", "ex_ffffffffffffffff", "bogus", "sbx_0000000000000000"):
            self.assertError(self.req("GET", "/v1/execs/" + ex), 404, "exec_not_found")

    def test_list_unknown_sandbox(self):
        self.assertError(self.req("GET", "/v1/sandboxes/nosuch/execs"), 404, "sandbox_not_found")

    def test_empty_list(self):
        name = unique("recempty")
        self.mk(name=name)
        r = self.req("GET", "/v1/sandboxes/%s/execs" % name)
        self.assertEqual(r.json, {"data": [], "next_cursor": None})


if __name__ == "__main__":
    unittest.main()
