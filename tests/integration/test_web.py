"""The browser console (issue 6): GET / and GET /web/{file} as HTTP (content
types, caching, 304s, 404s, nothing from elsewhere), then the whole console
driven in headless Chromium through playwright-core (web_console.mjs): create
a sandbox, `echo hi` in its terminal, `stty size` before and after a page
resize, a one-shot command, re-attach to a running exec, remove, all with an
API key entered.  Screenshots are kept under a temp dir printed in the output.

The browser part needs Debian's chromium (scripts/browser-deps.sh), node, and
web/node_modules (npm ci in web/, which `make` runs); it skips, saying so,
when one is missing."""

import os
import re
import shutil
import subprocess
import sys
import tempfile

from harness import REPO, SbxTestCase, unique

CHROMIUM = os.environ.get("SBX_CHROMIUM", "/usr/bin/chromium")
DRIVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "web_console.mjs")
PLAYWRIGHT = os.path.join(REPO, "web", "node_modules", "playwright-core")

ASSET_RE = re.compile(r'(?:src|href)="/web/([A-Za-z0-9_.-]+)\?v=([0-9a-f]+)"')
TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}


class TestWebConsole(SbxTestCase):

    def index(self):
        r = self.req("GET", "/")
        self.assertEqual(r.status, 200, r)
        return r

    def test_index(self):
        r = self.index()
        self.assertTrue(r.headers.get("Content-Type", "").startswith("text/html"), r.headers)
        self.assertIn("charset=utf-8", r.headers.get("Content-Type", ""))
        self.assertEqual(r.headers.get("Cache-Control"), "no-cache")
        self.assertRegex(r.headers.get("ETag", ""), r'^"[0-9a-f]+"$')
        self.assertIn("default-src 'none'", r.headers.get("Content-Security-Policy", ""))
        self.assertEqual(r.headers.get("X-Content-Type-Options"), "nosniff")
        self.assertTrue(r.headers.get("X-Request-Id"))
        html = r.raw.decode()
        self.assertIn("<title>sbx console</title>", html)
        # xterm.js is served by sbxd itself: no CDN, no other origin
        self.assertNotRegex(html, r'(?:src|href)="(?:https?:)?//', "index.html loads from elsewhere")
        names = {m[0] for m in ASSET_RE.findall(html)}
        self.assertTrue({"xterm.js", "xterm.css", "addon-fit.js", "app.js", "style.css"} <= names,
                        names)

    def test_versioned_assets_are_immutable(self):
        for name, v in ASSET_RE.findall(self.index().raw.decode()):
            with self.subTest(file=name):
                r = self.req("GET", "/web/%s?v=%s" % (name, v))
                self.assertEqual(r.status, 200, r)
                self.assertTrue(r.headers.get("Content-Type", "").startswith(
                    TYPES[os.path.splitext(name)[1]]), r.headers.get("Content-Type"))
                self.assertEqual(r.headers.get("ETag"), '"%s"' % v)
                self.assertEqual(r.headers.get("Cache-Control"), "public, max-age=31536000, immutable")
                self.assertEqual(int(r.headers.get("Content-Length")), len(r.raw))
                self.assertGreater(len(r.raw), 0)
                # the same file unversioned, or under a stale version: revalidated
                for q in ("", "?v=0000"):
                    r2 = self.req("GET", "/web/%s%s" % (name, q))
                    self.assertEqual(r2.status, 200)
                    self.assertEqual(r2.raw, r.raw)
                    self.assertEqual(r2.headers.get("Cache-Control"), "no-cache")
        xterm = self.req("GET", "/web/xterm.js")
        self.assertIn(b"Terminal", xterm.raw)
        self.assertNotIn(b"sourceMappingURL", xterm.raw)

    def test_etag_304(self):
        for path in ("/", "/web/app.js", "/web/xterm.css"):
            with self.subTest(path=path):
                r = self.req("GET", path)
                tag = r.headers.get("ETag")
                self.assertTrue(tag)
                for inm in (tag, "W/" + tag, '"nope", ' + tag, "*"):
                    r2 = self.req("GET", path, headers={"If-None-Match": inm})
                    self.assertEqual(r2.status, 304, inm)
                    self.assertEqual(r2.raw, b"")
                    self.assertEqual(r2.headers.get("ETag"), tag)
                    self.assertEqual(r2.headers.get("Cache-Control"), r.headers.get("Cache-Control"))
                r3 = self.req("GET", path, headers={"If-None-Match": '"0123"'})
                self.assertEqual(r3.status, 200)
                self.assertEqual(r3.raw, r.raw)

    def test_unknown_files(self):
        for path in ("/web/nope.js", "/web/index.html", "/web/..", "/web/", "/web/a/b.js",
                     "/index.html", "/web"):
            with self.subTest(path=path):
                r = self.req("GET", path)
                self.assertError(r, 404, "not_found")
        r = self.req("POST", "/", {})
        self.assertError(r, 405, "method_not_allowed")
        self.assertEqual(r.headers.get("Allow"), "GET")

    def test_browser(self):
        if not os.path.exists(CHROMIUM):
            self.skipTest("%s is missing: run scripts/browser-deps.sh (Debian's chromium) "
                          "to run the browser test" % CHROMIUM)
        node = shutil.which("node")
        if not node:
            self.skipTest("node is missing (scripts/deps.sh installs it)")
        if not os.path.isdir(PLAYWRIGHT):
            self.skipTest("web/node_modules/playwright-core is missing: run `npm ci` in web/ "
                          "(or scripts/browser-deps.sh)")
        artifacts = tempfile.mkdtemp(prefix="sbx-web-artifacts-")
        name = unique("web")
        print("\n    browser artifacts (screenshots): %s" % artifacts, flush=True)
        try:
            p = subprocess.run([node, DRIVER, "http://127.0.0.1:%d/" % self.srv.port, artifacts, name],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=240, cwd=REPO)
        finally:
            # the console removes its sandbox; a failed run may leave it behind
            r = self.req("GET", "/v1/sandboxes/" + name)
            if r.status == 200:
                self.track(r.json["id"])
        out = p.stdout.decode(errors="replace")
        sys.stdout.write("".join("    | " + l + "\n" for l in out.splitlines()))
        sys.stdout.flush()
        if p.returncode == 77:
            self.skipTest("chromium would not start: " + out.strip().splitlines()[-1])
        self.assertEqual(p.returncode, 0, "the browser run failed (screenshot in %s)" % artifacts)
        self.assertIn("ok: every step passed", out)
        for shot in ("console-terminal.png", "console-attached.png"):
            path = os.path.join(artifacts, shot)
            self.assertTrue(os.path.exists(path), "no screenshot " + path)
            with open(path, "rb") as f:
                self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
        self.assertEqual(self.req("GET", "/v1/sandboxes/" + name).status, 404,
                         "the console did not remove its sandbox")
