"""API keys, scopes, label-limited keys, rate limits, Origins/CORS, the
loopback rule and capacity limits (issue 7, README "Auth" and "Browsers")
against a real sbxd.

Once a key exists in a server's database that server requires keys for
everything but the open routes, so each class below runs its own sbxd with
its own data dir (AuthServer adds the extra flags, and its cleanup uses the
class's admin key).
"""

import asyncio
import glob
import hashlib
import json
import os
import re
import socket
import subprocess
import tempfile
import time
import unittest

import websockets

import harness
from harness import SbxTestCase, Server, unique

JSON_P = "sbx.v1.json"
KEY_RE = re.compile(r"^sbxk_([0-9a-f]{12})_([0-9a-f]{32})$")


def arun(coro, timeout=60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def bearer(key):
    return {"Authorization": "Bearer " + key}


def non_loopback_ipv4():
    """An address of this host that is not 127/8, or None."""
    try:
        out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True,
                             timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        m = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", line)
        if m and not m.group(1).startswith("127."):
            return m.group(1)
    return None


class AuthServer(Server):
    """sbxd with extra flags; cleanup deletes sandboxes with `admin_key`."""

    def __init__(self, extra=(), host="127.0.0.1", **kw):
        super().__init__(extra=extra, host=host, **kw)
        self.admin_key = None


    def delete_all_sandboxes(self):
        if not self.alive():
            return
        hdr = bearer(self.admin_key) if self.admin_key else {}
        try:
            r = self.request("GET", "/v1/sandboxes?limit=500", headers=hdr, timeout=30)
            ids = [s["id"] for s in (r.json or {}).get("data", [])]
        except Exception:
            ids = list(self.known_sandboxes)
        for sid in set(ids) | self.known_sandboxes:
            try:
                self.request("DELETE", "/v1/sandboxes/" + sid, headers=hdr, timeout=60)
            except Exception:
                pass

    def keys(self, *args, check=True):
        """`sbxd keys ARGS --data-dir DIR`: the CompletedProcess (text)."""
        p = subprocess.run([harness.SBXD, "keys"] + list(args) + ["--data-dir", self.data_dir],
                           capture_output=True, text=True, timeout=30)
        if check and p.returncode != 0:
            raise AssertionError("sbxd keys %s: rc=%d\n%s" % (args, p.returncode, p.stderr))
        return p

    def new_key(self, *args):
        p = self.keys("create", *args)
        key = p.stdout.strip()
        if not KEY_RE.match(key):
            raise AssertionError("keys create printed %r" % p.stdout)
        return key

    def wait_auth_on(self, timeout=5):
        """auth_enabled() caches for a second: wait until a keyless GET is a 401."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.request("GET", "/v1/sandboxes").status == 401:
                return
            time.sleep(0.1)
        raise AssertionError("auth did not turn on within %ss" % timeout)


class AuthCase(SbxTestCase):
    """One AuthServer per class; sandboxes made with self.mk() are deleted with
    the admin key after each test."""

    EXTRA = []

    @classmethod
    def setUpClass(cls):
        cls.srv = AuthServer(cls.EXTRA)
        try:
            cls.srv.start()
            cls.setUpServer()
        except BaseException:
            cls.srv.cleanup()
            cls.srv = None
            raise

    def tearDown(self):
        if self.srv is None or not self.srv.alive():
            return
        hdr = bearer(self.srv.admin_key) if self.srv.admin_key else {}
        for sid in reversed(self._made):
            try:
                self.srv.request("DELETE", "/v1/sandboxes/" + sid, headers=hdr, timeout=60)
            except Exception:
                pass

    def call(self, method, path, key=None, body=None, headers=None, timeout=60):
        h = dict(headers or {})
        if key is not None:
            h.update(bearer(key))
        return self.srv.request(method, path, body, h, timeout)

    def mk_as(self, key, **fields):
        r = self.call("POST", "/v1/sandboxes", key, fields)
        self.assertEqual(r.status, 201, r)
        self._made.append(r.json["id"])
        self.srv.known_sandboxes.add(r.json["id"])
        return r.json

    def ws_url(self, path):
        return "ws://127.0.0.1:%d%s" % (self.srv.port, path)

    def ws_session(self, path, protos=(JSON_P,), headers=None, start=None, timeout=30):
        """Open a WebSocket, optionally send a start message, read to the close.
        Returns (101 subprotocol, 101 headers, events, close code, reason)."""
        async def go():
            async with websockets.connect(self.ws_url(path), subprotocols=list(protos),
                                          extra_headers=headers or {}, max_size=None,
                                          ping_interval=None) as ws:
                sub, rh = ws.subprotocol, ws.response_headers
                if start is not None:
                    try:
                        await ws.send(json.dumps(dict(start, type="start")))
                    except websockets.ConnectionClosed:
                        pass
                events = []
                try:
                    while True:
                        m = await asyncio.wait_for(ws.recv(), timeout)
                        events.append(json.loads(m) if isinstance(m, str) else m)
                except websockets.ConnectionClosed as e:
                    return sub, rh, events, e.code, e.reason
        return arun(go(), timeout + 30)


class TestKeys(AuthCase):
    """Keys, scopes and label-limited keys on one server (rate limit off so the
    many requests here never hit it; TestRate covers --rate)."""

    EXTRA = ["--rate", "0"]

    @classmethod
    def setUpServer(cls):
        srv = cls.srv
        # before any key: loopback clients are served without one
        r = srv.request("GET", "/v1/sandboxes")
        if r.status != 200:
            raise AssertionError("keyless GET before any key: %r" % r)
        cls.create_out = srv.keys("create", "--scope", "admin", "--name", "ops")
        srv.admin_key = cls.admin = cls.create_out.stdout.strip()
        cls.exec_key = srv.new_key("--scope", "exec", "--name", "ci")
        cls.read_key = srv.new_key("--scope", "read")
        cls.default_key = srv.new_key()  # scope defaults to exec
        cls.team_key = srv.new_key("--scope", "admin", "--label", "team=a", "--name", "team-a")
        cls.team_read = srv.new_key("--scope", "read", "--label", "team=a")
        cls.all_keys = [cls.admin, cls.exec_key, cls.read_key, cls.default_key, cls.team_key,
                        cls.team_read]
        srv.wait_auth_on()
        # fixtures: one sandbox of team a, one of team b (made by the admin)
        r = srv.request("POST", "/v1/sandboxes",
                        {"name": unique("ta"), "labels": {"team": "a"}}, bearer(cls.admin))
        if r.status != 201:
            raise AssertionError("create a: %r" % r)
        cls.sa = r.json
        r = srv.request("POST", "/v1/sandboxes",
                        {"name": unique("tb"), "labels": {"team": "b", "x": "y"}},
                        bearer(cls.admin))
        if r.status != 201:
            raise AssertionError("create b: %r" % r)
        cls.sb = r.json
        srv.known_sandboxes |= {cls.sa["id"], cls.sb["id"]}

    # -- sbxd keys ---------------------------------------------------------------
    def test_create_prints_key_once_and_stores_only_a_hash(self):
        out = self.create_out
        self.assertEqual(out.returncode, 0, out.stderr)
        # stdout is exactly the key and a newline (scripts do KEY=$(sbxd keys create))
        m = KEY_RE.match(out.stdout.rstrip("\n"))
        self.assertTrue(m, out.stdout)
        self.assertEqual(out.stdout.count("\n"), 1, out.stdout)
        kid, secret = m.groups()
        self.assertIn(kid, out.stderr)
        self.assertIn("admin", out.stderr)
        self.assertIn("not shown again", out.stderr)
        self.assertNotIn(secret, out.stderr)
        blobs = b""
        for f in glob.glob(os.path.join(self.srv.data_dir, "sbx.db*")):
            with open(f, "rb") as fh:
                blobs += fh.read()
        self.assertTrue(blobs, "no sbx.db* files under %s" % self.srv.data_dir)
        for key in self.all_keys:
            kid, secret = KEY_RE.match(key).groups()
            self.assertNotIn(secret.encode(), blobs, "a key's secret is stored in the database")
            self.assertNotIn(key.encode(), blobs)
            self.assertIn(kid.encode(), blobs)  # the id is stored (list/revoke use it)
        # what is stored is the SHA-256 of the whole key (README)
        digest = hashlib.sha256(self.admin.encode()).hexdigest()
        self.assertIn(digest.encode(), blobs)

    def test_keys_differ(self):
        self.assertEqual(len(set(self.all_keys)), len(self.all_keys))
        ids = [KEY_RE.match(k).group(1) for k in self.all_keys]
        self.assertEqual(len(set(ids)), len(ids))

    def test_list_shows_records_never_a_key_or_hash(self):
        p = self.srv.keys("list")
        recs = json.loads(p.stdout)
        self.assertIsInstance(recs, list)
        by_id = {r["id"]: r for r in recs}
        for key in self.all_keys:
            kid, secret = KEY_RE.match(key).groups()
            self.assertIn(kid, by_id, p.stdout)
            self.assertNotIn(secret, p.stdout)
        admin = by_id[KEY_RE.match(self.admin).group(1)]
        for field in ("id", "scope", "labels", "name", "created_at", "revoked_at"):
            self.assertIn(field, admin)
        self.assertNotIn("hash", admin)
        self.assertEqual(admin["scope"], "admin")
        self.assertEqual(admin["name"], "ops")
        self.assertIsNone(admin["revoked_at"])
        self.assertEqual(by_id[KEY_RE.match(self.default_key).group(1)]["scope"], "exec")
        self.assertEqual(by_id[KEY_RE.match(self.team_key).group(1)]["labels"], {"team": "a"})
        self.assertIsNone(re.search(r"[0-9a-f]{64}", p.stdout), "a hash in keys list")
        digest = hashlib.sha256(self.admin.encode()).hexdigest()
        self.assertNotIn(digest, p.stdout)

    def test_create_bad_arguments(self):
        for args in (["--scope", "root"], ["--label", "novalue"], ["--label", "=v"],
                     ["--bogus"]):
            with self.subTest(args=args):
                p = self.srv.keys("create", *args, check=False)
                self.assertNotEqual(p.returncode, 0, p.stdout)
                self.assertEqual(p.stdout.strip(), "", "printed a key on bad input")
                self.assertTrue(p.stderr.strip())
        p = self.srv.keys("frobnicate", check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("usage", p.stderr)

    def test_revoke_makes_key_401(self):
        key = self.srv.new_key("--scope", "read")
        kid = KEY_RE.match(key).group(1)
        self.assertEqual(self.call("GET", "/v1/sandboxes", key).status, 200)
        self.srv.keys("revoke", kid)
        t0 = time.time()
        while True:
            r = self.call("GET", "/v1/sandboxes", key)
            if r.status == 401 or time.time() - t0 > 1.5:
                break
            time.sleep(0.05)
        self.assertError(r, 401, "unauthorized")
        self.assertLess(time.time() - t0, 1.5)
        recs = {x["id"]: x for x in json.loads(self.srv.keys("list").stdout)}
        self.assertIsNotNone(recs[kid]["revoked_at"])
        # the other keys are unaffected, auth stays on
        self.assertEqual(self.call("GET", "/v1/sandboxes", self.read_key).status, 200)
        self.assertEqual(self.call("GET", "/v1/sandboxes").status, 401)

    def test_revoke_unknown_id_fails(self):
        p = self.srv.keys("revoke", "000000000000", check=False)
        self.assertNotEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertTrue(p.stderr.strip())

    # -- 401 ---------------------------------------------------------------------
    def test_no_key_401(self):
        for method, path, body in (("GET", "/v1/sandboxes", None),
                                   ("POST", "/v1/sandboxes", {}),
                                   ("GET", "/v1/sandboxes/" + self.sa["id"], None),
                                   ("POST", "/v1/sandboxes/%s/exec" % self.sa["id"],
                                    {"cmd": "true"}),
                                   ("GET", "/v1/execs/ex_0000000000000000", None)):
            with self.subTest(method=method, path=path):
                self.assertError(self.call(method, path, body=body), 401, "unauthorized")

    def test_bad_key_401(self):
        kid = KEY_RE.match(self.admin).group(1)
        bad = ["sbxk_%s_%s" % (kid, "0" * 32),            # right id, wrong secret
               self.admin[:-1] + ("0" if self.admin[-1] != "0" else "1"),
               self.admin + "x",
               "sbxk_000000000000_" + "0" * 32,          # unknown id
               "nonsense", "sbxk_", "sbxk__abc"]
        for key in bad:
            with self.subTest(key=key):
                self.assertError(self.call("GET", "/v1/sandboxes", key), 401, "unauthorized")
        for hdr in ("Basic " + self.admin, self.admin, "Bearer", "Bearer "):
            with self.subTest(header=hdr):
                r = self.call("GET", "/v1/sandboxes", headers={"Authorization": hdr})
                self.assertError(r, 401, "unauthorized")

    def test_bearer_is_case_insensitive(self):
        r = self.call("GET", "/v1/sandboxes", headers={"Authorization": "bearer " + self.admin})
        self.assertEqual(r.status, 200, r)

    # -- scopes (403) ------------------------------------------------------------
    def test_read_scope(self):
        k, sid = self.read_key, self.sa["id"]
        self.assertEqual(self.call("GET", "/v1/sandboxes", k).status, 200)
        self.assertEqual(self.call("GET", "/v1/sandboxes/" + sid, k).status, 200)
        self.assertEqual(self.call("GET", "/v1/sandboxes/%s/execs" % sid, k).status, 200)
        self.assertError(self.call("POST", "/v1/sandboxes/%s/exec" % sid, k, {"cmd": "true"}),
                         403, "forbidden")
        self.assertError(self.call("POST", "/v1/sandboxes/%s/shell" % sid, k,
                                   {"command": "true"}), 403, "forbidden")
        self.assertError(self.call("POST", "/v1/sandboxes", k, {}), 403, "forbidden")
        self.assertError(self.call("DELETE", "/v1/sandboxes/" + sid, k), 403, "forbidden")
        # an exec's record and output are readable
        r = self.call("POST", "/v1/sandboxes/%s/exec" % sid, self.exec_key,
                      {"cmd": "echo", "args": ["hi"]})
        self.assertEqual(r.status, 200, r)
        ex = r.json["exec_id"]
        self.assertEqual(self.call("GET", "/v1/execs/" + ex, k).status, 200)
        self.assertEqual(self.call("GET", "/v1/execs/%s/output" % ex, k).status, 200)
        self.assertError(self.call("POST", "/v1/execs/%s/kill" % ex, k), 403, "forbidden")

    def test_exec_scope(self):
        for k in (self.exec_key, self.default_key):
            with self.subTest(key=k[:17]):
                r = self.call("POST", "/v1/sandboxes/%s/exec" % self.sa["id"], k,
                              {"cmd": "echo", "args": ["ok"]})
                self.assertEqual(r.status, 200, r)
                self.assertEqual(r.json["stdout"], "ok\n")
                r = self.call("POST", "/v1/sandboxes/%s/shell" % self.sa["id"], k,
                              {"command": "echo sh"})
                self.assertEqual(r.status, 200, r)
                self.assertEqual(self.call("GET", "/v1/sandboxes", k).status, 200)
                self.assertError(self.call("POST", "/v1/sandboxes", k, {}), 403, "forbidden")
                self.assertError(self.call("DELETE", "/v1/sandboxes/" + self.sb["id"], k),
                                 403, "forbidden")
                self.assertError(self.call("POST", "/v1/sandboxes/%s/stop" % self.sb["id"], k),
                                 403, "forbidden")

    def test_admin_can_create_and_delete(self):
        sb = self.mk_as(self.admin, name=unique("adm"))
        self.assertEqual(sb["labels"], {})
        r = self.call("DELETE", "/v1/sandboxes/" + sb["id"], self.admin)
        self.assertIn(r.status, (200, 204), r)

    def test_open_routes_need_no_key(self):
        for path in ("/v1/health", "/v1/version", "/openapi.json", "/openapi.yaml", "/"):
            with self.subTest(path=path):
                self.assertEqual(self.call("GET", path).status, 200)
                # a bad key on an open route does not matter either
                self.assertEqual(self.call("GET", path, "nonsense").status, 200)
        r = self.call("OPTIONS", "/v1/sandboxes")
        self.assertEqual(r.status, 204, r)

    def test_401_before_404(self):
        # an unauthenticated client learns nothing about which sandboxes exist
        self.assertError(self.call("GET", "/v1/sandboxes/nope-" + unique()), 401, "unauthorized")
        self.assertError(self.call("GET", "/v1/sandboxes/nope-" + unique(), self.read_key),
                         404, "sandbox_not_found")

    def test_bad_origin_403_even_with_key(self):
        r = self.call("GET", "/v1/sandboxes", self.admin,
                      headers={"Origin": "http://evil.example"})
        self.assertError(r, 403, "forbidden")

    # -- label-limited keys ------------------------------------------------------
    def test_label_key_list_filtered(self):
        for k in (self.team_key, self.team_read):
            with self.subTest(key=k[:17]):
                r = self.call("GET", "/v1/sandboxes?limit=500", k)
                self.assertEqual(r.status, 200, r)
                ids = {s["id"] for s in r.json["data"]}
                self.assertIn(self.sa["id"], ids)
                self.assertNotIn(self.sb["id"], ids)
                for s in r.json["data"]:
                    self.assertEqual(s["labels"].get("team"), "a", s)
                # asking for another team's label gives nothing, not a widening
                r = self.call("GET", "/v1/sandboxes?label=team=b", k)
                self.assertEqual(r.status, 200, r)
                self.assertEqual(r.json["data"], [])
                r = self.call("GET", "/v1/sandboxes?label=x=y", k)
                self.assertEqual(r.status, 200, r)
                self.assertEqual(r.json["data"], [])
        r = self.call("GET", "/v1/sandboxes?limit=500", self.admin)
        ids = {s["id"] for s in r.json["data"]}
        self.assertTrue({self.sa["id"], self.sb["id"]} <= ids)

    def test_label_key_other_sandbox_403(self):
        k, other = self.team_key, self.sb
        for ref in (other["id"], other["name"]):
            with self.subTest(ref=ref):
                self.assertError(self.call("GET", "/v1/sandboxes/" + ref, k), 403, "forbidden")
                self.assertError(self.call("POST", "/v1/sandboxes/%s/exec" % ref, k,
                                           {"cmd": "true"}), 403, "forbidden")
                self.assertError(self.call("POST", "/v1/sandboxes/%s/shell" % ref, k,
                                           {"command": "true"}), 403, "forbidden")
                self.assertError(self.call("GET", "/v1/sandboxes/%s/execs" % ref, k),
                                 403, "forbidden")
                self.assertError(self.call("POST", "/v1/sandboxes/%s/stop" % ref, k),
                                 403, "forbidden")
                self.assertError(self.call("DELETE", "/v1/sandboxes/" + ref, k),
                                 403, "forbidden")
        # still there and running
        r = self.call("GET", "/v1/sandboxes/" + other["id"], self.admin)
        self.assertEqual(r.json["state"], "running", r)
        # its own sandbox works
        self.assertEqual(self.call("GET", "/v1/sandboxes/" + self.sa["id"], k).status, 200)
        r = self.call("POST", "/v1/sandboxes/%s/exec" % self.sa["id"], k,
                      {"cmd": "echo", "args": ["a"]})
        self.assertEqual(r.status, 200, r)

    def test_label_key_create_merges_label(self):
        sb = self.mk_as(self.team_key, name=unique("tm"), labels={"env": "dev"})
        self.assertEqual(sb["labels"], {"env": "dev", "team": "a"})
        sb2 = self.mk_as(self.team_key, name=unique("tm"))
        self.assertEqual(sb2["labels"], {"team": "a"})
        sb3 = self.mk_as(self.team_key, name=unique("tm"), labels={"team": "a"})
        self.assertEqual(sb3["labels"], {"team": "a"})
        r = self.call("GET", "/v1/sandboxes/" + sb["id"], self.admin)
        self.assertEqual(r.json["labels"], {"env": "dev", "team": "a"})
        r = self.call("GET", "/v1/sandboxes?limit=500", self.team_key)
        self.assertIn(sb["id"], {s["id"] for s in r.json["data"]})

    def test_label_key_conflicting_label_403(self):
        name = unique("tm")
        r = self.call("POST", "/v1/sandboxes", self.team_key, {"name": name,
                                                               "labels": {"team": "b"}})
        self.assertError(r, 403, "forbidden")
        r = self.call("GET", "/v1/sandboxes/" + name, self.admin)
        self.assertEqual(r.status, 404, "a refused create left a sandbox: %r" % r)

    def test_label_key_cannot_replace_other_sandbox(self):
        r = self.call("POST", "/v1/sandboxes", self.team_key,
                      {"name": self.sb["name"], "replace": True})
        self.assertError(r, 403, "forbidden")
        r = self.call("GET", "/v1/sandboxes/" + self.sb["id"], self.admin)
        self.assertEqual(r.status, 200, "the other team's sandbox was replaced: %r" % r)

    def test_label_key_other_exec_403(self):
        r = self.call("POST", "/v1/sandboxes/%s/exec" % self.sb["id"], self.admin,
                      {"cmd": "sleep", "args": ["30"], "background": True})
        self.assertEqual(r.status, 202, r)
        ex = r.json["exec_id"]
        try:
            for k in (self.team_key, self.team_read):
                for method, path in (("GET", "/v1/execs/" + ex),
                                     ("GET", "/v1/execs/%s/output" % ex),
                                     ("GET", "/v1/execs/%s/wait?timeout_ms=10" % ex),
                                     ("POST", "/v1/execs/%s/kill" % ex),
                                     ("POST", "/v1/execs/%s/stdin" % ex)):
                    with self.subTest(key=k[:17], method=method, path=path):
                        self.assertError(self.call(method, path, k), 403, "forbidden")
            # the exec was not touched
            r = self.call("GET", "/v1/execs/" + ex, self.admin)
            self.assertEqual(r.json["state"], "running", r)
            # an exec of its own sandbox is reachable
            r = self.call("POST", "/v1/sandboxes/%s/exec" % self.sa["id"], self.team_key,
                          {"cmd": "true"})
            self.assertEqual(r.status, 200, r)
            own = r.json["exec_id"]
            self.assertEqual(self.call("GET", "/v1/execs/" + own, self.team_read).status, 200)
            # a WebSocket viewer of the other exec is closed with 4403
            _, _, ev, code, _ = self.ws_session("/v1/execs/%s/ws" % ex,
                                                (JSON_P, "sbx.token." + self.team_read))
            self.assertEqual(code, 4403, ev)
        finally:
            self.call("POST", "/v1/execs/%s/kill" % ex, self.admin)

    # -- WebSockets --------------------------------------------------------------
    def test_ws_token_subprotocol_not_echoed(self):
        sub, rh, ev, code, _ = self.ws_session(
            "/v1/sandboxes/%s/exec/ws" % self.sa["id"], (JSON_P, "sbx.token." + self.exec_key),
            start={"cmd": "echo", "args": ["ws"]})
        self.assertEqual(sub, JSON_P)
        self.assertEqual(rh.get_all("Sec-WebSocket-Protocol"), [JSON_P])
        for name, value in rh.raw_items():
            self.assertNotIn(KEY_RE.match(self.exec_key).group(2), value, name)
        self.assertEqual(code, 1000, ev)
        self.assertEqual(ev[0]["type"], "started", ev)
        self.assertIn({"type": "stdout", "seq": 1, "offset": 0, "data": "ws\n"}, ev)
        # the token may come first too
        sub, rh, ev, code, _ = self.ws_session(
            "/v1/sandboxes/%s/exec/ws" % self.sa["id"], ("sbx.token." + self.exec_key, JSON_P),
            start={"cmd": "true"})
        self.assertEqual(sub, JSON_P)
        self.assertEqual(code, 1000, ev)

    def test_ws_no_or_bad_token_4401(self):
        path = "/v1/sandboxes/%s/exec/ws" % self.sa["id"]
        for protos, hdr in (((JSON_P,), None),
                            ((JSON_P, "sbx.token.nonsense"), None),
                            ((JSON_P, "sbx.token." + self.exec_key + "0"), None),
                            ((JSON_P,), {"Authorization": "Bearer nonsense"})):
            with self.subTest(protos=protos, hdr=hdr):
                sub, _, ev, code, reason = self.ws_session(path, protos, hdr,
                                                           start={"cmd": "true"})
                self.assertEqual(sub, JSON_P)
                self.assertEqual(code, 4401, (ev, reason))
                self.assertFalse([e for e in ev if isinstance(e, dict)
                                  and e.get("type") == "started"], ev)

    def test_ws_read_key_start_4403_attach_ok(self):
        path = "/v1/sandboxes/%s/exec/ws" % self.sa["id"]
        _, _, ev, code, reason = self.ws_session(path, (JSON_P, "sbx.token." + self.read_key),
                                                 start={"cmd": "true"})
        self.assertEqual(code, 4403, (ev, reason))
        # a read key may attach a viewer
        r = self.call("POST", "/v1/sandboxes/%s/exec" % self.sa["id"], self.exec_key,
                      {"cmd": "echo", "args": ["seen"]})
        self.assertEqual(r.status, 200, r)
        _, _, ev, code, _ = self.ws_session("/v1/execs/%s/ws" % r.json["exec_id"],
                                            (JSON_P, "sbx.token." + self.read_key))
        self.assertEqual(code, 1000, ev)
        self.assertIn("seen\n", [e.get("data") for e in ev if isinstance(e, dict)])

    def test_ws_label_key_other_sandbox_4403(self):
        _, _, ev, code, _ = self.ws_session("/v1/sandboxes/%s/exec/ws" % self.sb["id"],
                                            (JSON_P, "sbx.token." + self.team_key),
                                            start={"cmd": "true"})
        self.assertEqual(code, 4403, ev)

    def test_ws_authorization_header(self):
        _, _, ev, code, _ = self.ws_session("/v1/sandboxes/%s/exec/ws" % self.sa["id"],
                                            (JSON_P,), bearer(self.exec_key),
                                            start={"cmd": "echo", "args": ["hdr"]})
        self.assertEqual(code, 1000, ev)
        self.assertIn("hdr\n", [e.get("data") for e in ev if isinstance(e, dict)])

    def test_zz_keys_never_logged(self):
        # runs last in the class (alphabetical): every key was used above, over
        # REST and as a WebSocket subprotocol; add a refused token for good measure
        self.ws_session("/v1/sandboxes/%s/exec/ws" % self.sa["id"],
                        (JSON_P, "sbx.token." + self.read_key), start={"cmd": "true"})
        self.call("GET", "/v1/sandboxes", self.admin + "x")
        time.sleep(0.2)
        log = self.srv.log_text()
        self.assertIn("access method=", log)  # the log is really captured
        for key in self.all_keys:
            secret = KEY_RE.match(key).group(2)
            self.assertNotIn(secret, log, "a key's secret is in sbxd's log")
        self.assertNotIn("sbx.token.", log)


class TestRate(AuthCase):
    """--rate 5: burst 10, then 429 rate_limited with Retry-After, per key."""

    EXTRA = ["--rate", "5"]

    @classmethod
    def setUpServer(cls):
        cls.srv.admin_key = cls.key = cls.srv.new_key("--scope", "admin")
        cls.other = cls.srv.new_key("--scope", "read")
        cls.srv.wait_auth_on()
        time.sleep(2.5)  # refill the bucket the keyless probes did not touch

    def burst(self, key, n=30, path="/v1/sandboxes"):
        return [self.call("GET", path, key) for _ in range(n)]

    def test_burst_gets_429(self):
        rs = self.burst(self.key)
        ok = [r for r in rs if r.status == 200]
        limited = [r for r in rs if r.status == 429]
        self.assertEqual(len(ok) + len(limited), len(rs), [r.status for r in rs])
        self.assertGreaterEqual(len(ok), 5, [r.status for r in rs])
        self.assertGreaterEqual(len(limited), 10, [r.status for r in rs])
        for r in limited:
            self.assertError(r, 429, "rate_limited")
            ra = r.headers.get("Retry-After")
            self.assertTrue(ra and ra.isdigit() and int(ra) >= 1, r.headers)
        # other keys have their own bucket; open routes are not limited
        self.assertEqual(self.call("GET", "/v1/sandboxes", self.other).status, 200)
        self.assertEqual(self.call("GET", "/v1/health", self.key).status, 200)
        # the WebSocket side says 4429
        _, _, ev, code, _ = self.ws_session("/v1/execs/ex_0000000000000000/ws",
                                            (JSON_P, "sbx.token." + self.key))
        self.assertEqual(code, 4429, ev)
        # after Retry-After the key works again
        time.sleep(1.5)
        self.assertEqual(self.call("GET", "/v1/sandboxes", self.key).status, 200)


class TestRevokeLast(AuthCase):
    """Auth is on while one unrevoked key exists; revoking the last one turns
    it off again (README "Auth"), without a restart."""

    def test_revoke_last_key_turns_auth_off(self):
        self.assertEqual(self.call("GET", "/v1/sandboxes").status, 200)
        key = self.srv.new_key("--scope", "read")
        self.srv.wait_auth_on(timeout=3)
        self.assertEqual(self.call("GET", "/v1/sandboxes", key).status, 200)
        self.srv.keys("revoke", KEY_RE.match(key).group(1))
        deadline = time.time() + 3
        while True:
            r = self.call("GET", "/v1/sandboxes")
            if r.status == 200 or time.time() > deadline:
                break
            time.sleep(0.1)
        self.assertEqual(r.status, 200, "auth still on after the last key was revoked: %r" % r)
        # the revoked key itself is not an admin pass now: a key sent to a
        # keyless server is ignored, as on any keyless server
        self.assertEqual(self.call("GET", "/v1/sandboxes", key).status, 200)


class TestOrigins(AuthCase):
    """--allow-origin http://good.example, no keys (loopback clients)."""

    EXTRA = ["--allow-origin", "http://good.example"]

    def test_evil_origin_403(self):
        for origin in ("http://evil.example", "http://good.example.evil.example",
                       "https://good.example", "http://127.0.0.1:1", "null"):
            for method, path, body in (("GET", "/v1/sandboxes", None),
                                       ("POST", "/v1/sandboxes", "{}")):
                with self.subTest(origin=origin, method=method):
                    r = self.call(method, path, body=body,
                                  headers={"Origin": origin, "Content-Type": "text/plain"})
                    self.assertError(r, 403, "forbidden")
                    self.assertIsNone(r.headers.get("Access-Control-Allow-Origin"))
        r = self.call("GET", "/v1/sandboxes?limit=500")
        self.assertEqual(r.json["data"], [], "a refused cross-site POST created a sandbox")

    def test_allowed_origin_cors_headers(self):
        for origin in ("http://good.example", "HTTP://GOOD.EXAMPLE"):
            with self.subTest(origin=origin):
                r = self.call("GET", "/v1/sandboxes", headers={"Origin": origin})
                self.assertEqual(r.status, 200, r)
                self.assertEqual(r.headers.get("Access-Control-Allow-Origin"), origin)
                self.assertIn("Origin", r.headers.get("Vary", ""))
                exp = r.headers.get("Access-Control-Expose-Headers", "")
                self.assertIn("X-Request-Id", exp)
                self.assertIn("Retry-After", exp)
        # errors carry them too (a browser must be able to read the error)
        r = self.call("GET", "/v1/sandboxes/nope-" + unique(),
                      headers={"Origin": "http://good.example"})
        self.assertEqual(r.status, 404, r)
        self.assertEqual(r.headers.get("Access-Control-Allow-Origin"), "http://good.example")

    def test_no_origin_no_cors_headers(self):
        r = self.call("GET", "/v1/sandboxes")
        self.assertEqual(r.status, 200, r)
        self.assertIsNone(r.headers.get("Access-Control-Allow-Origin"))

    def test_preflight(self):
        hdr = {"Origin": "http://good.example", "Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": "authorization, content-type"}
        r = self.call("OPTIONS", "/v1/sandboxes", headers=hdr)
        self.assertEqual(r.status, 204, r)
        methods = {m.strip() for m in r.headers.get("Access-Control-Allow-Methods", "").split(",")}
        self.assertEqual(methods, {"GET", "POST"}, r.headers)
        allow_h = r.headers.get("Access-Control-Allow-Headers", "").lower()
        for h in ("authorization", "content-type", "x-request-id"):
            self.assertIn(h, allow_h)
        self.assertEqual(r.headers.get("Access-Control-Allow-Origin"), "http://good.example")
        self.assertIn("Origin", r.headers.get("Vary", ""))
        self.assertEqual(r.headers.get("Access-Control-Max-Age"), "600")
        allow = {m.strip() for m in r.headers.get("Allow", "").split(",")}
        self.assertEqual(allow, {"GET", "POST"})
        r = self.call("OPTIONS", "/v1/execs/ex_0000000000000000/kill", headers=hdr)
        self.assertEqual(r.status, 204, r)
        self.assertEqual(r.headers.get("Access-Control-Allow-Methods"), "POST")
        # a preflight from a refused Origin is refused
        r = self.call("OPTIONS", "/v1/sandboxes", headers=dict(hdr, Origin="http://evil.example"))
        self.assertEqual(r.status, 403, r)
        self.assertIsNone(r.headers.get("Access-Control-Allow-Methods"))
        # plain OPTIONS: Allow but no CORS headers
        r = self.call("OPTIONS", "/v1/sandboxes")
        self.assertEqual(r.status, 204, r)
        self.assertIsNone(r.headers.get("Access-Control-Allow-Methods"))
        # unknown path
        r = self.call("OPTIONS", "/v1/nope", headers=hdr)
        self.assertEqual(r.status, 404, r)

    def test_same_host_origin_allowed(self):
        origin = "http://127.0.0.1:%d" % self.srv.port
        r = self.call("GET", "/v1/sandboxes", headers={"Origin": origin})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.headers.get("Access-Control-Allow-Origin"), origin)


class TestSameHostOnly(AuthCase):
    """No --allow-origin: only the server's own host:port is an allowed Origin."""

    def test_same_host_without_flag(self):
        origin = "http://127.0.0.1:%d" % self.srv.port
        r = self.call("GET", "/v1/sandboxes", headers={"Origin": origin})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.headers.get("Access-Control-Allow-Origin"), origin)
        r = self.call("GET", "/v1/sandboxes", headers={"Origin": "http://good.example"})
        self.assertError(r, 403, "forbidden")
        # the open routes are guarded by Origin too
        r = self.call("GET", "/v1/health", headers={"Origin": "http://evil.example"})
        self.assertError(r, 403, "forbidden")


class TestLoopbackRule(unittest.TestCase):
    """Without keys sbxd refuses a non-loopback --listen unless --insecure."""

    def setUp(self):
        self.dirs = []
        self.procs = []

    def tearDown(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for d in self.dirs:
            harness.remove_data_dir(d)

    def tmpdir(self):
        d = tempfile.mkdtemp(prefix="sbxit-auth-")
        self.dirs.append(d)
        return d

    def popen(self, args):
        """sbxd with stderr to a temp file (read it with stderr_of)."""
        err = tempfile.TemporaryFile()
        p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=err, cwd=harness.REPO)
        p.errfile = err
        self.procs.append(p)
        return p

    @staticmethod
    def stderr_of(p):
        p.errfile.seek(0)
        return p.errfile.read().decode("utf-8", "replace")

    def spawn(self, *extra, host="0.0.0.0"):
        port = harness.free_port()
        d = self.tmpdir()
        p = self.popen([harness.SBXD, "--listen", "%s:%d" % (host, port), "--data-dir", d]
                       + list(extra))
        return p, port, d

    def wait_healthy(self, p, port, timeout=20):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if p.poll() is not None:
                self.fail("sbxd exited with %s: %s" % (p.returncode, self.stderr_of(p)))
            try:
                if harness_request(port, "GET", "/v1/health").status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        self.fail("sbxd not healthy")

    def test_refuses_without_keys(self):
        p, _, d = self.spawn()
        t0 = time.time()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.fail("sbxd kept running on 0.0.0.0 without keys")
        self.assertLess(time.time() - t0, 10)
        self.assertNotEqual(p.returncode, 0)
        msg = self.stderr_of(p)
        self.assertIn("refusing", msg)
        self.assertIn("keys create", msg)
        self.assertIn("--insecure", msg)
        self.assertIn(d, msg)

    def test_insecure_starts(self):
        p, port, _ = self.spawn("--insecure")
        self.wait_healthy(p, port)
        self.assertEqual(harness_request(port, "GET", "/v1/sandboxes").status, 200)

    def test_starts_with_a_key(self):
        port = harness.free_port()
        d = self.tmpdir()
        c = subprocess.run([harness.SBXD, "keys", "create", "--scope", "read", "--data-dir", d],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(c.returncode, 0, c.stderr)
        key = c.stdout.strip()
        p = self.popen([harness.SBXD, "--listen", "0.0.0.0:%d" % port, "--data-dir", d])
        self.wait_healthy(p, port)
        self.assertEqual(harness_request(port, "GET", "/v1/sandboxes").status, 401)
        self.assertEqual(harness_request(port, "GET", "/v1/sandboxes", bearer(key)).status, 200)
        ip = non_loopback_ipv4()
        if ip:
            # a non-loopback client with a key is served
            r = harness_request(port, "GET", "/v1/sandboxes", bearer(key), host=ip)
            self.assertEqual(r.status, 200, r)

    def test_insecure_keyless_server_serves_everyone(self):
        ip = non_loopback_ipv4()
        if not ip:
            self.skipTest("no non-loopback IPv4 address on this host")
        # --insecure is the operator saying "no keys, serve every client"
        p, port, _ = self.spawn("--insecure")
        self.wait_healthy(p, port)
        r = harness_request(port, "GET", "/v1/sandboxes", host=ip)
        self.assertEqual(r.status, 200, r)
        # loopback clients are served
        self.assertEqual(harness_request(port, "GET", "/v1/sandboxes").status, 200)


def harness_request(port, method, path, headers=None, host="127.0.0.1", timeout=10):
    import http.client
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, headers=headers or {})
        r = conn.getresponse()
        return harness.Resp(r.status, r.headers, r.read())
    finally:
        conn.close()


class TestCapacity(AuthCase):
    """--max-sandboxes 2, --max-execs 2, --max-conns-per-ip 3 and the
    listener's 10 s handshake timeout (no keys: loopback)."""

    EXTRA = ["--max-sandboxes", "2", "--max-execs", "2", "--max-conns-per-ip", "3"]

    def test_max_sandboxes(self):
        a = self.mk(name=unique("c"))
        self.mk(name=unique("c"))
        r = self.req("POST", "/v1/sandboxes", {"name": unique("c")})
        self.assertError(r, 503, "capacity")
        self.assertEqual(r.headers.get("Retry-After"), "1")
        # freeing one makes room again
        self.assertIn(self.req("DELETE", "/v1/sandboxes/" + a["id"]).status, (200, 204))
        self.mk(name=unique("c"))

    def test_max_execs(self):
        sb = self.mk(name=unique("e"))
        ids = []
        try:
            for _ in range(2):
                r = self.exec(sb["id"], cmd="sleep", args=["5"], background=True)
                self.assertEqual(r.status, 202, r)
                ids.append(r.json["exec_id"])
            r = self.exec(sb["id"], cmd="true")
            self.assertError(r, 503, "capacity")
            self.assertEqual(r.headers.get("Retry-After"), "1")
            r = self.exec(sb["id"], cmd="true", background=True)
            self.assertError(r, 503, "capacity")
        finally:
            for ex in ids:
                self.req("POST", "/v1/execs/%s/kill" % ex)
        for ex in ids:
            self.wait_exec(ex)
        deadline = time.time() + 5
        while True:
            r = self.exec(sb["id"], cmd="true")
            if r.status == 200 or time.time() > deadline:
                break
            time.sleep(0.1)
        self.assertEqual(r.status, 200, r)

    def test_max_conns_per_ip(self):
        held = []
        try:
            for _ in range(3):
                s = socket.create_connection(("127.0.0.1", self.srv.port), timeout=5)
                s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
                self.assertIn(b"200", s.recv(4096).split(b"\r\n")[0])
                held.append(s)  # keep-alive: each still holds a slot
            s = socket.create_connection(("127.0.0.1", self.srv.port), timeout=5)
            held.append(s)
            s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                got = s.recv(4096)
            except ConnectionResetError:
                got = b"(connection reset)"
            # SPEC: capacity (503, Retry-After) covers "too many ... connections"
            head, _, body = got.partition(b"\r\n\r\n")
            self.assertTrue(head.startswith(b"HTTP/1.1 503"),
                            "over --max-conns-per-ip: expected a 503 capacity, got %r" % got)
            self.assertIn(b"retry-after:", head.lower())
            self.assertIn(b'"capacity"', body)
        finally:
            for s in held:
                s.close()
        time.sleep(0.3)
        self.assertEqual(self.req("GET", "/v1/health").status, 200)

    def test_slowloris_closed_by_handshake_timeout(self):
        def hold(payload):
            s = socket.create_connection(("127.0.0.1", self.srv.port), timeout=20)
            try:
                if payload:
                    s.sendall(payload)
                t0 = time.time()
                try:
                    data = s.recv(4096)
                except ConnectionResetError:
                    data = b""  # closed with unread input pending: an RST is a close too
                except socket.timeout:
                    data = b"(still open after 20 s)"
                return time.time() - t0, data
            finally:
                s.close()
        threads = [harness.in_thread(hold, p) for p in (b"", b"GET /v1/hea")]
        # the server stays usable meanwhile
        self.assertEqual(self.req("GET", "/v1/health").status, 200)
        for t, box in threads:
            t.join(25)
            self.assertNotIn("error", box, box.get("error"))
            dt, data = box["result"]
            self.assertLess(dt, 12.5, "a silent client held its connection %.1fs" % dt)
            self.assertGreater(dt, 5, "closed suspiciously early (%.1fs): %r" % (dt, data))
            self.assertEqual(data, b"", "expected a plain close, got %r" % data)


if __name__ == "__main__":
    unittest.main()


class TestHeadLimits(AuthCase):
    """--max-header-bytes 2048 and --handshake-timeout-s 2: an over-long
    request head is a 413 payload_too_large from the listener, before any
    HTTP machinery; a head that does not arrive whole in time is closed."""

    EXTRA = ["--max-header-bytes", "2048", "--handshake-timeout-s", "2"]

    def raw(self, head, timeout=10):
        s = socket.create_connection(("127.0.0.1", self.srv.port), timeout=timeout)
        try:
            s.sendall(head)
            data = b""
            while True:
                try:
                    chunk = s.recv(65536)
                except (ConnectionResetError, socket.timeout):
                    break
                if not chunk:
                    break
                data += chunk
            return data
        finally:
            s.close()

    def test_header_over_limit_is_413(self):
        head = b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 3000 + b"\r\n\r\n"
        data = self.raw(head)
        self.assertTrue(data.startswith(b"HTTP/1.1 413 "), data[:200])
        body = json.loads(data.split(b"\r\n\r\n", 1)[1])
        self.assertEqual(body["error"]["kind"], "payload_too_large")
        self.assertIn("max-header-bytes", body["error"]["message"])

    def test_header_under_limit_is_served(self):
        head = b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 1500 + \
               b"\r\nConnection: close\r\n\r\n"
        data = self.raw(head)
        self.assertTrue(data.startswith(b"HTTP/1.1 200 "), data[:200])

    def test_partial_head_closed_after_handshake_timeout(self):
        t0 = time.time()
        data = self.raw(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n", timeout=15)
        dt = time.time() - t0
        self.assertEqual(data, b"")
        self.assertGreater(dt, 1.5)
        self.assertLess(dt, 6, "a partial head held the connection %.1fs" % dt)
