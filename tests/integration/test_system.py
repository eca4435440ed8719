"""Health, version, OpenAPI (and its agreement with the routes the server
serves), request ids, routing errors, the access log, the WebSocket side."""

import asyncio
import json
import os
import re
import socket
import time
import unittest

from harness import OPENAPI_YAML, SbxTestCase, openapi_routes, unique

ALL_METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH")

# Routes a careless server might answer although SPEC has no such thing.
ABSENT_CANDIDATES = [
    ("GET", "/v1"), ("GET", "/v1/"), ("GET", "/v1/sandbox"), ("GET", "/v1/sandboxes/x/foo"),
    ("POST", "/v1/sandboxes/x/exec/extra"), ("GET", "/v1/sandboxes/x/execs/y"),
    ("GET", "/v1/execs"), ("GET", "/v1/execs/ex_0000000000000000/bogus"),
    ("GET", "/v1/health/x"), ("GET", "/v2/health"), ("GET", "/api/v1/health"),
    ("POST", "/v1/exec"), ("GET", "/openapi"), ("GET", "/openapi.txt"),
    ("GET", "/v1/sandboxes/x/y/z"), ("GET", "/v1/versions"), ("GET", "/healthz"),
    ("GET", "/v1/sandboxes/x/start/now"),
    # routes SPEC names for later issues: served only together with their spec entry
    ("GET", "/v1/execs/ex_0000000000000000/wait"), ("POST", "/v1/execs/ex_0000000000000000/signal"),
    ("POST", "/v1/execs/ex_0000000000000000/kill"), ("POST", "/v1/execs/ex_0000000000000000/stdin"),
    ("POST", "/v1/execs/ex_0000000000000000/resize"),
    ("GET", "/v1/execs/ex_0000000000000000/output"), ("GET", "/metrics"), ("GET", "/"),
]


def _template_re(p):
    return re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(p)) + "$")


def _fill(p):
    p = p.replace("{ref}", "no-such-sandbox")
    p = p.replace("{id}", "ex_0000000000000000")
    p = p.replace("{file}", "app.js")  # a console file that exists
    return re.sub(r"\{[^}]+\}", "x", p)


def _allow_set(v):
    return {m.strip().upper() for m in (v or "").split(",") if m.strip()} - {"HEAD", "OPTIONS"}


class TestSystem(SbxTestCase):

    def test_health(self):
        r = self.req("GET", "/v1/health")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json, {"status": "ok"})
        self.assertIn("application/json", r.headers.get("Content-Type", ""))

    def test_version(self):
        r = self.req("GET", "/v1/version")
        self.assertEqual(r.status, 200, r)
        self.assertIsInstance(r.json.get("version"), str)
        self.assertTrue(r.json["version"])

    def test_openapi_json(self):
        r = self.req("GET", "/openapi.json")
        self.assertEqual(r.status, 200, r)
        self.assertIn("json", r.headers.get("Content-Type", ""))
        self.assertIsInstance(r.json, dict, "openapi.json is not JSON")
        self.assertIn("openapi", r.json)
        self.assertIsInstance(r.json.get("paths"), dict)
        self.assertIn("/v1/sandboxes", r.json["paths"])
        self.assertIn("/v1/sandboxes/{ref}/exec", r.json["paths"])
        # the JSON served describes the same routes as the checked-in yaml
        spec = openapi_routes()
        served = {p: {m.upper() for m in item if m.lower() in
                      ("get", "put", "post", "delete", "patch", "options", "head")}
                  for p, item in r.json["paths"].items()}
        self.assertEqual(served, spec)

    def test_openapi_yaml(self):
        r = self.req("GET", "/openapi.yaml")
        self.assertEqual(r.status, 200, r)
        self.assertIn("yaml", r.headers.get("Content-Type", ""))
        with open(OPENAPI_YAML, "rb") as f:
            self.assertEqual(r.raw, f.read(), "served yaml differs from openapi/openapi.yaml")

    def test_openapi_routes_match_server(self):
        """Every (path, method) in openapi.yaml is served, nothing else is:
        spec routes never answer not_found/405, other methods on spec paths
        answer 405 with Allow == the spec's methods, and plausible paths
        outside the spec answer 404 not_found."""
        spec = openapi_routes()
        self.assertTrue(spec, "no paths in openapi.yaml")
        for p in ("/v1/health", "/v1/version", "/v1/sandboxes", "/v1/sandboxes/{ref}",
                  "/v1/sandboxes/{ref}/stop", "/v1/sandboxes/{ref}/start",
                  "/v1/sandboxes/{ref}/exec", "/v1/sandboxes/{ref}/shell",
                  "/v1/sandboxes/{ref}/execs", "/v1/execs/{id}"):
            self.assertIn(p, spec, "SPEC route %s missing from openapi.yaml" % p)
        problems = []
        for path, methods in sorted(spec.items()):
            url = _fill(path)
            ws = path.endswith("/ws")
            for m in sorted(methods):
                if m in ("HEAD", "OPTIONS"):
                    continue
                body = None if m in ("GET", "DELETE") else {}
                r = self.req(m, url, body)
                kind = (r.json or {}).get("error", {}).get("kind") if isinstance(r.json, dict) else None
                if kind == "not_found" or r.status == 405 or (r.status == 404 and kind is None):
                    problems.append("spec route %s %s -> %s %s (not served)" % (m, url, r.status, kind))
            if ws:
                continue
            for m in ALL_METHODS:
                if m in methods:
                    continue
                r = self.req(m, url, None if m in ("GET", "DELETE") else {})
                kind = r.json.get("error", {}).get("kind") if isinstance(r.json, dict) else None
                if r.status != 405 or kind != "method_not_allowed":
                    problems.append("%s %s (not in spec) -> %s %s, want 405 method_not_allowed"
                                    % (m, url, r.status, kind))
                    continue
                allow = _allow_set(r.headers.get("Allow"))
                want = set(methods) - {"HEAD", "OPTIONS"}
                if allow != want:
                    problems.append("%s %s: Allow %r, spec has %s" % (m, url, r.headers.get("Allow"),
                                                                       sorted(want)))
        templates = [_template_re(p) for p in spec]
        for m, url in ABSENT_CANDIDATES:
            if any(t.match(url) for t in templates):
                continue
            r = self.req(m, url, None if m == "GET" else {})
            kind = r.json.get("error", {}).get("kind") if isinstance(r.json, dict) else None
            if r.status != 404 or kind != "not_found":
                problems.append("%s %s (not in spec) -> %s %s, want 404 not_found"
                                % (m, url, r.status, kind))
        self.assertEqual(problems, [], "\n".join(problems))

    def test_openapi_matches_route_table_source(self):
        """The REST route table in the source ({"METHOD", "/path", ...} rows in
        routes/ and server/) lists exactly the spec's non-WebSocket routes, so a
        route no probe above thinks of still cannot hide from the spec."""
        import glob
        rows = set()
        row_re = re.compile(r'\{\s*"(GET|POST|PUT|DELETE|PATCH|HEAD|OPTIONS)"\s*,\s*"(/[^"]*)"')
        for f in glob.glob(os.path.join(os.path.dirname(OPENAPI_YAML), "..", "routes", "*.c")) + \
                glob.glob(os.path.join(os.path.dirname(OPENAPI_YAML), "..", "server", "*.c")):
            with open(f, errors="replace") as fh:
                for m, p in row_re.findall(fh.read()):
                    rows.add((m, re.sub(r"\{[^}]*\}", "{}", p)))
        if not rows:
            self.skipTest("no {\"METHOD\", \"/path\"} route table found in routes/*.c")
        spec = set()
        for p, methods in openapi_routes().items():
            if p.endswith("/ws"):
                continue
            for m in methods:
                spec.add((m, re.sub(r"\{[^}]*\}", "{}", p)))
        self.assertEqual(sorted(rows - spec), [], "served but not in openapi.yaml")
        self.assertEqual(sorted(spec - rows), [], "in openapi.yaml but not in the route table")

    def test_request_id_generated_everywhere(self):
        cases = [("GET", "/v1/health", None, 200), ("GET", "/nope", None, 404),
                 ("DELETE", "/v1/health", None, 405), ("POST", "/v1/sandboxes", b"{", 400),
                 ("GET", "/v1/sandboxes/nosuch", None, 404), ("GET", "/v1/sandboxes", None, 200),
                 ("GET", "/openapi.json", None, 200)]
        seen = set()
        for m, p, b, st in cases:
            r = self.req(m, p, b)
            self.assertEqual(r.status, st, (m, p, r))
            rid = r.headers.get("X-Request-Id")
            self.assertTrue(rid, "no X-Request-Id on %s %s" % (m, p))
            seen.add(rid)
        self.assertEqual(len(seen), len(cases), "request ids are not unique: %s" % seen)

    def test_request_id_echoed(self):
        for m, p in (("GET", "/v1/health"), ("GET", "/nope"), ("PUT", "/v1/sandboxes"),
                     ("GET", "/v1/sandboxes/nosuch")):
            rid = unique("rid")
            r = self.req(m, p, headers={"X-Request-Id": rid})
            self.assertEqual(r.headers.get("X-Request-Id"), rid, (m, p, r))

    def test_unknown_route(self):
        r = self.req("GET", "/no/such/route")
        self.assertError(r, 404, "not_found")
        self.assertEqual(set(r.json), {"error"})
        r = self.req("POST", "/v1/nothing", {"a": 1})
        self.assertError(r, 404, "not_found")

    def test_wrong_method(self):
        for m, p, allow in (("DELETE", "/v1/health", {"GET"}),
                            ("PUT", "/v1/sandboxes", {"GET", "POST"}),
                            ("GET", "/v1/sandboxes/x/exec", {"POST"}),
                            ("POST", "/v1/execs/ex_0000000000000000", {"GET"}),
                            ("PATCH", "/v1/sandboxes/x", {"GET", "DELETE"})):
            r = self.req(m, p, None if m in ("GET", "DELETE") else {})
            self.assertError(r, 405, "method_not_allowed")
            self.assertEqual(_allow_set(r.headers.get("Allow")), allow, (m, p, r.headers.get("Allow")))

    def test_path_traversal_does_not_escape(self):
        for p in ("/v1/sandboxes/../v1/health", "/v1/sandboxes/..", "/v1/sandboxes/%2e%2e",
                  "/v1/sandboxes/%2e%2e/stop", "/v1/sandboxes/..%2fv1%2fhealth",
                  "/v1/sandboxes/../../v1/health", "/v1/execs/../health",
                  "/v1/sandboxes/%2E%2E%2F%2E%2E%2Fv1%2Fhealth/execs"):
            for via in ("http", "curl"):
                r = self.req("GET", p) if via == "http" else self.srv.curl("GET", p)
                self.assertIn(r.status, (400, 404, 405), (via, p, r))
                self.assertNotEqual(r.json, {"status": "ok"}, (via, p))
                self.assertIn("error", r.json, (via, p, r))

    def test_access_log(self):
        rid = unique("acclog")
        r = self.req("GET", "/v1/health?probe=1", headers={"X-Request-Id": rid})
        self.assertEqual(r.status, 200)
        rid2 = unique("acclog")
        r = self.req("GET", "/v1/sandboxes/nosuch-" + rid2, headers={"X-Request-Id": rid2})
        self.assertEqual(r.status, 404)
        lines, lines2 = [], []
        deadline = time.time() + 3
        while time.time() < deadline:
            text = self.srv.log_text().splitlines()
            lines = [l for l in text if rid in l]
            lines2 = [l for l in text if rid2 in l]
            if lines and lines2:
                break
            time.sleep(0.1)
        self.assertEqual(len(lines), 1, "want one access-log line with %s, got %r" % (rid, lines))
        line = lines[0]
        self.assertIn("GET", line)
        self.assertIn("/v1/health", line)
        self.assertRegex(line, r"\b200\b")
        self.assertRegex(line, r"(?i)(dur|\d\s*ms\b|_ms|ms=|latency|elapsed|took|\d+(\.\d+)?s\b)",
                         "no duration in %r" % line)
        self.assertEqual(len(lines2), 1, lines2)
        self.assertRegex(lines2[0], r"\b404\b")

    def test_error_shape_everywhere(self):
        for m, p, b in (("GET", "/x", None), ("PUT", "/v1/health", {}),
                        ("POST", "/v1/sandboxes", b"nope"),
                        ("GET", "/v1/sandboxes/nosuch", None),
                        ("GET", "/v1/execs/ex_0000000000000000", None),
                        ("GET", "/v1/execs/bogus", None)):
            r = self.req(m, p, b)
            self.assertGreaterEqual(r.status, 400)
            self.assertIsInstance(r.json, dict, (m, p, r))
            self.assertIn("error", r.json)
            self.assertIsInstance(r.json["error"].get("kind"), str)
            self.assertIsInstance(r.json["error"].get("message"), str)
            self.assertIn("application/json", r.headers.get("Content-Type", ""))


class TestWebSocketSide(SbxTestCase):
    """Paths ending in /ws go to the WebSocket side on the same port, which
    refuses an unknown sandbox or exec clearly (close 4404; or, before
    streaming existed, HTTP 501 not_implemented)."""

    PATHS = ("/v1/sandboxes/x/exec/ws", "/v1/execs/ex_0000000000000000/ws")

    def _raw_handshake(self, path):
        s = socket.create_connection(("127.0.0.1", self.srv.port), timeout=10)
        try:
            s.sendall(("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
                       "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                       "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: sbx.v1.json\r\n"
                       "X-Request-Id: ws-probe\r\n\r\n" % (path, self.srv.port)).encode())
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            head, _, rest = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            hdrs = {}
            for l in lines[1:]:
                k, _, v = l.partition(":")
                hdrs[k.strip().lower()] = v.strip()
            if status == 101:
                return status, hdrs, rest  # WebSocket frames follow, not a body
            n = int(hdrs.get("content-length", "-1"))
            deadline = time.time() + 5
            while (n < 0 or len(rest) < n) and time.time() < deadline:
                try:
                    chunk = s.recv(65536)
                except socket.timeout:
                    break
                if not chunk:
                    break
                rest += chunk
            return status, hdrs, rest
        finally:
            s.close()

    def test_ws_dispatch_raw(self):
        # the handshake reaches the WebSocket side: it upgrades (101, then
        # refuses the unknown sandbox/exec in-band), or, before streaming
        # existed, answered a clear 501 not_implemented -- never a REST 404/405
        for p in self.PATHS:
            status, hdrs, body = self._raw_handshake(p)
            self.assertIn(status, (101, 501), (p, status, body))
            if status == 501:
                doc = json.loads(body.decode())
                self.assertEqual(doc["error"]["kind"], "not_implemented", doc)
                self.assertTrue(doc["error"]["message"])
            else:
                self.assertEqual(hdrs.get("upgrade", "").lower(), "websocket", hdrs)
                self.assertEqual(hdrs.get("sec-websocket-accept"), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")

    def test_ws_unknown_refused_websockets_client(self):
        import websockets
        from websockets.exceptions import ConnectionClosed, InvalidStatusCode

        async def attempt(path, first):
            uri = "ws://127.0.0.1:%d%s" % (self.srv.port, path)
            try:
                async with websockets.connect(uri, subprotocols=["sbx.v1.json"],
                                              open_timeout=10, close_timeout=5) as ws:
                    self.assertEqual(ws.subprotocol, "sbx.v1.json")
                    try:
                        if first is not None:
                            await ws.send(json.dumps(first))
                        while True:
                            await asyncio.wait_for(ws.recv(), 10)
                    except ConnectionClosed:
                        pass
                    return ("closed", ws.close_code)
            except InvalidStatusCode as e:
                return ("http", e.status_code)

        got = asyncio.run(attempt(self.PATHS[0], {"type": "start", "cmd": "true"}))
        self.assertIn(got, (("http", 501), ("closed", 4404)), self.PATHS[0])
        got = asyncio.run(attempt(self.PATHS[1], None))
        self.assertIn(got, (("http", 501), ("closed", 4404)), self.PATHS[1])

    def test_rest_still_works_after_ws(self):
        self._raw_handshake(self.PATHS[0])
        r = self.req("GET", "/v1/health")
        self.assertEqual(r.status, 200)


if __name__ == "__main__":
    unittest.main()
