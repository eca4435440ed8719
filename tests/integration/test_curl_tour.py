"""The README's happy path, driven with the curl binary exactly as a user
would (`curl -d` sends a form Content-Type; the server parses JSON anyway)."""

import json
import unittest

from harness import EX_ID_RE, SBX_ID_RE, SbxTestCase, unique


class TestCurlTour(SbxTestCase):

    def test_tour(self):
        c = self.srv.curl
        r = c("GET", "/v1/health")
        self.assertEqual((r.status, r.json), (200, {"status": "ok"}))
        self.assertTrue(r.headers.get("X-Request-Id"))
        r = c("GET", "/v1/version")
        self.assertEqual(r.status, 200)
        self.assertIn("version", r.json)
        r = c("GET", "/openapi.json")
        self.assertEqual(r.status, 200)
        self.assertIn("paths", r.json)

        name = unique("demo")
        r = c("POST", "/v1/sandboxes", '{"name":"%s","labels":{"tour":"yes"}}' % name)
        self.assertEqual(r.status, 201, r)
        sid = r.json["id"]
        self.track(sid)
        self.assertRegex(sid, SBX_ID_RE)
        self.assertEqual(r.json["state"], "running")

        r = c("POST", "/v1/sandboxes/%s/exec" % name,
              '{"cmd":"python3","args":["-c","print(1+1)"]}')
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["stdout"], "2\n")
        self.assertEqual(r.json["exit_code"], 0)
        self.assertIs(r.json["success"], True)
        ex1 = r.json["exec_id"]
        self.assertRegex(ex1, EX_ID_RE)

        r = c("POST", "/v1/sandboxes/%s/shell" % name, '{"command":"echo hi >&2; exit 3"}')
        self.assertEqual(r.status, 200, r)
        self.assertEqual((r.json["exit_code"], r.json["success"], r.json["stderr"]), (3, False, "hi\n"))
        ex2 = r.json["exec_id"]

        r = c("GET", "/v1/sandboxes?label=tour=yes")
        self.assertEqual([s["id"] for s in r.json["data"]], [sid])
        r = c("GET", "/v1/sandboxes/" + sid)
        self.assertEqual(r.json["name"], name)

        r = c("GET", "/v1/sandboxes/%s/execs" % name)
        self.assertEqual([e["exec_id"] for e in r.json["data"]], [ex2, ex1])
        r = c("GET", "/v1/execs/" + ex1)
        self.assertEqual(r.json["state"], "exited")
        self.assertEqual(r.json["stdout_bytes"], 2)

        r = c("POST", "/v1/sandboxes/%s/stop" % name)
        self.assertEqual((r.status, r.json["state"]), (200, "stopped"))
        r = c("POST", "/v1/sandboxes/%s/start" % name)
        self.assertEqual((r.status, r.json["state"]), (200, "running"))
        r = c("POST", "/v1/sandboxes/%s/exec" % name, '{"cmd":"hostname"}')
        self.assertEqual(r.json["stdout"], name + "\n")

        r = c("DELETE", "/v1/sandboxes/" + name)
        self.assertEqual(r.status, 204)
        r = c("GET", "/v1/sandboxes/" + name)
        self.assertEqual(r.status, 404)
        self.assertEqual(r.json["error"]["kind"], "sandbox_not_found")

    def test_curl_errors(self):
        c = self.srv.curl
        r = c("POST", "/v1/sandboxes", "{not json")
        self.assertEqual((r.status, r.json["error"]["kind"]), (400, "invalid_request"))
        r = c("PUT", "/v1/sandboxes")
        self.assertEqual(r.status, 405)
        self.assertTrue(r.headers.get("Allow"))
        r = c("GET", "/v1/nope", headers={"X-Request-Id": "curl-rid-1"})
        self.assertEqual(r.status, 404)
        self.assertEqual(r.headers.get("X-Request-Id"), "curl-rid-1")

    def test_curl_keepalive_many(self):
        # several requests on one connection (curl reuses it for multiple URLs)
        import subprocess
        base = "http://127.0.0.1:%d" % self.srv.port
        p = subprocess.run(["curl", "-sS", "-w", "\\n%{http_code}\\n"] +
                           [base + "/v1/health"] * 5, capture_output=True, timeout=30)
        self.assertEqual(p.returncode, 0, p.stderr)
        codes = [l for l in p.stdout.decode().splitlines() if l.strip() == "200"]
        self.assertEqual(len(codes), 5)


if __name__ == "__main__":
    unittest.main()
