"""Black-box harness: starts a real sbxd on a free port with a temp data dir
and drives it over HTTP (http.client) and with curl.

Run with Debian's /usr/bin/python3 (it has python3-websockets).  The binaries
come from $BUILD (default "build") under the repository root, or $SBXD.
"""

import atexit
import base64
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest
import uuid

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("BUILD", "build")
BUILD_DIR = BUILD if os.path.isabs(BUILD) else os.path.join(REPO, BUILD)
SBXD = os.environ.get("SBXD", os.path.join(BUILD_DIR, "sbxd"))
OPENAPI_YAML = os.path.join(REPO, "openapi", "openapi.yaml")

# SBX_TEST_DRIVER=vm runs the suite's sandboxes as QEMU microVMs (`make
# test-vm`): every Server gets --default-driver vm and an images dir holding
# VM_IMAGE, a busybox root (a VM cannot use the "host" image), and mk() asks
# for that image.  Tests that need the host's tools inside the sandbox
# (python3) or look at sandbox processes from the host are @ns_only.
DRIVER = os.environ.get("SBX_TEST_DRIVER", "ns")
VM_IMAGE = "busy"
VM_BUSYBOX = "/bin/busybox"  # Debian's busybox-static

SBX_ID_RE = re.compile(r"^sbx_[0-9a-f]{16}$")
EX_ID_RE = re.compile(r"^ex_[0-9a-f]{16}$")
TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

SANDBOX_KEYS = {"id", "name", "state", "image", "env", "workdir", "shell", "limits",
                "network", "labels", "idle_timeout_s", "max_duration_s", "driver", "accelerator",
                "created_at", "started_at", "stopped_at"}
LIMIT_KEYS = {"memory_mib", "cpus", "pids", "disk_mib"}
EXEC_OUTPUT_KEYS = {"exec_id", "exit_code", "success", "signal", "stdout", "stderr",
                    "encoding", "stdout_truncated", "stderr_truncated", "duration_ms"}
EXEC_KEYS = {"exec_id", "sandbox_id", "cmd", "args", "cwd", "user", "tty", "state", "pid",
             "exit_code", "signal", "failure", "started_at", "ended_at",
             "stdout_bytes", "stderr_bytes"}
FAILURE_KEYS = {"kind", "errno", "errno_name", "path", "stage", "message"}
FAILURE_KINDS = {"not_found", "permission_denied", "not_executable", "bad_cwd", "bad_user",
                 "bad_args", "resource_limit", "pty_setup_failed", "other"}


def ns_only(why):
    """Skip a test (or class) when the suite runs against the vm driver."""
    return unittest.skipIf(DRIVER != "ns", "ns driver only: " + why)


def add_host_python(root):
    """Copy the host's python3 (binary, shared libraries, standard library)
    into root: several suites drive their programs with python3."""
    import shutil
    exe = os.path.realpath("/usr/bin/python3")
    ver = os.path.basename(exe)  # python3.11
    os.makedirs(os.path.join(root, "usr", "bin"), exist_ok=True)
    shutil.copy2(exe, os.path.join(root, "usr", "bin", ver))
    if not os.path.lexists(os.path.join(root, "usr", "bin", "python3")):
        os.symlink(ver, os.path.join(root, "usr", "bin", "python3"))
    out = subprocess.run(["ldd", exe], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        m = re.search(r"(/\S+)", line.split("=>")[-1])
        if not m:
            continue
        lib = m.group(1)
        dst = os.path.join(root, lib.lstrip("/"))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copy2(os.path.realpath(lib), dst)
    shutil.copytree("/usr/lib/" + ver, os.path.join(root, "usr", "lib", ver), symlinks=True,
                    ignore=shutil.ignore_patterns("test", "idlelib", "tkinter", "ensurepip",
                                                  "site-packages", "dist-packages"),
                    dirs_exist_ok=True)


def make_busybox_image(root):
    """A minimal root at `root`: static busybox and its applets in /bin, the
    host's python3, /etc/passwd and /etc/group with root and nobody, the
    usual empty dirs."""
    for d in ("bin", "sbin", "etc", "tmp", "root", "proc", "sys", "dev", "run", "home",
              "usr/bin", "var/tmp"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    os.chmod(os.path.join(root, "tmp"), 0o1777)
    bb = os.path.join(root, "bin", "busybox")
    with open(VM_BUSYBOX, "rb") as src, open(bb, "wb") as dst:
        dst.write(src.read())
    os.chmod(bb, 0o755)
    applets = subprocess.run([VM_BUSYBOX, "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    for a in applets:
        link = os.path.join(root, "bin", a)
        if a != "busybox" and not os.path.lexists(link):
            os.symlink("busybox", link)
    add_host_python(root)
    with open(os.path.join(root, "etc", "passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\n"
                "nobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n")
    with open(os.path.join(root, "etc", "group"), "w") as f:
        f.write("root:x:0:\nnogroup:x:65534:\n")


_vm_images = None


def vm_images_dir():
    """One images dir per test process with VM_IMAGE in it (the vm driver
    caches its disk by content, so every server builds it once)."""
    global _vm_images
    if _vm_images is None:
        _vm_images = tempfile.mkdtemp(prefix="sbxit-vmimg-")
        make_busybox_image(os.path.join(_vm_images, VM_IMAGE))
    return _vm_images


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Resp:
    """One HTTP reply.  Unpacks as (status, headers, body) where body is the
    parsed JSON when the reply is JSON, else the raw bytes."""

    def __init__(self, status, headers, raw):
        self.status = status
        self.headers = headers  # case-insensitive .get()
        self.raw = raw
        self.json = None
        try:
            if raw:
                self.json = json.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            self.json = None

    @property
    def body(self):
        return self.json if self.json is not None else self.raw

    def __iter__(self):
        return iter((self.status, self.headers, self.body))

    def __repr__(self):
        txt = self.raw[:600]
        return "<%s %r>" % (self.status, txt)


class CurlHeaders:
    def __init__(self, pairs):
        self._pairs = pairs

    def get(self, name, default=None):
        for k, v in self._pairs:
            if k.lower() == name.lower():
                return v
        return default

    def get_all(self, name):
        return [v for k, v in self._pairs if k.lower() == name.lower()]


def _encode_body(body, headers):
    if body is None:
        return None
    if isinstance(body, (dict, list)):
        headers.setdefault("Content-Type", "application/json")
        return json.dumps(body).encode()
    if isinstance(body, str):
        return body.encode()
    return body


_LIVE_SERVERS = []


def _cleanup_at_exit():
    # a crashed or interrupted run must not leave sbxd or sandboxes behind
    for srv in list(_LIVE_SERVERS):
        try:
            srv.cleanup()
        except Exception:
            pass
    if _vm_images:
        import shutil
        shutil.rmtree(_vm_images, ignore_errors=True)


atexit.register(_cleanup_at_exit)


def _exit_on_signal(signum, frame):
    # KeyboardInterrupt is what unittest lets through (it records anything else)
    raise KeyboardInterrupt("signal %d" % signum)


for _sig in (signal.SIGTERM, signal.SIGHUP):
    signal.signal(_sig, _exit_on_signal)


class Server:
    """A real sbxd process.  One per test class (see SbxTestCase)."""

    def __init__(self, images_dir=None, data_dir=None, data_parent=None, extra=(),
                 host="127.0.0.1", pass_fds=()):
        """extra: more sbxd flags (e.g. ["--retain-bytes", "2097152"]); host: --listen host;
        pass_fds: descriptors sbxd inherits (a careless parent's)."""
        self.pass_fds = tuple(pass_fds)
        _LIVE_SERVERS.append(self)
        self.extra = list(extra)
        self.host = host
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="sbxit-", dir=data_parent)
        self.images_dir = images_dir
        if DRIVER != "ns":
            self.extra += ["--default-driver", DRIVER]
            if self.images_dir is None:
                self.images_dir = vm_images_dir()
        self.log_path = os.path.join(tempfile.gettempdir(),
                                     "sbxd-%s.log" % os.path.basename(self.data_dir))
        self.proc = None
        self.port = None
        self.known_sandboxes = set()

    # -- process control ------------------------------------------------------
    def start(self, timeout=30):
        if not os.path.exists(SBXD):
            raise RuntimeError("no sbxd binary at %s (run make all)" % SBXD)
        self.port = free_port()
        args = [SBXD, "--listen", "%s:%d" % (self.host, self.port), "--data-dir", self.data_dir,
                "--log-level", "debug"] + self.extra
        if self.images_dir:
            args += ["--images-dir", self.images_dir]
        with open(self.log_path, "ab") as log:
            log.write(("\n=== harness: starting %s\n" % " ".join(args)).encode())
            log.flush()
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         cwd=REPO, pass_fds=self.pass_fds)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("sbxd exited with %s at start:\n%s"
                                   % (self.proc.returncode, self.log_tail()))
            try:
                r = self.request("GET", "/v1/health", timeout=2)
                if r.status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("sbxd not healthy after %ss:\n%s" % (timeout, self.log_tail()))

    @property
    def pid(self):
        return self.proc.pid

    def stop(self, sig=signal.SIGTERM, timeout=30):
        """Signal sbxd and wait; returns its exit code (None if it had to be killed)."""
        if self.proc is None or self.proc.poll() is not None:
            rc = self.proc.returncode if self.proc else None
            self.proc = None
            return rc
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            rc = None
        self.proc = None
        return rc

    def kill9(self):
        return self.stop(signal.SIGKILL)

    def restart(self):
        rc = self.stop()
        if rc != 0:
            raise AssertionError("sbxd exited with %r on SIGTERM:\n%s" % (rc, self.log_tail()))
        self.start()

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    # -- logs -------------------------------------------------------------------
    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, n=40):
        return "\n".join(self.log_text().splitlines()[-n:])

    # -- HTTP -------------------------------------------------------------------
    def request(self, method, path, body=None, headers=None, timeout=60):
        headers = dict(headers or {})
        if DRIVER == "vm" and method == "POST" and path.split("?")[0] == "/v1/sandboxes" \
                and isinstance(body, dict) and "image" not in body:
            body = dict(body, image=VM_IMAGE)  # a VM cannot boot the "host" image
            timeout = max(timeout, 180)
        data = _encode_body(body, headers)
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=data, headers=headers)
            r = conn.getresponse()
            raw = r.read()
            return Resp(r.status, r.headers, raw)
        finally:
            conn.close()

    def curl(self, method, path, data=None, headers=None, extra=(), timeout=60):
        """Same as request() but through the curl binary.  `data` goes through
        `--data-binary` (so with curl's default form Content-Type, unless
        headers say otherwise), as a user's `curl -d` would."""
        with tempfile.TemporaryDirectory() as td:
            hfile = os.path.join(td, "h")
            bfile = os.path.join(td, "b")
            args = ["curl", "-sS", "--path-as-is", "-X", method, "-D", hfile, "-o", bfile,
                    "-w", "%{http_code}", "--max-time", str(timeout)]
            for k, v in (headers or {}).items():
                args += ["-H", "%s: %s" % (k, v)]
            if data is not None:
                if isinstance(data, (dict, list)):
                    data = json.dumps(data)
                if isinstance(data, str):
                    data = data.encode()
                dfile = os.path.join(td, "d")
                with open(dfile, "wb") as f:
                    f.write(data)
                args += ["--data-binary", "@" + dfile]
            args += list(extra)
            args.append("http://127.0.0.1:%d%s" % (self.port, path))
            p = subprocess.run(args, capture_output=True, timeout=timeout + 10)
            if p.returncode != 0:
                raise AssertionError("curl failed (%d): %s" % (p.returncode, p.stderr.decode()))
            status = int(p.stdout.decode().strip() or 0)
            pairs = []
            with open(hfile, "rb") as f:
                for line in f.read().decode("latin-1").splitlines():
                    if line.startswith("HTTP/"):
                        pairs = []  # keep the final reply's headers only (100-continue)
                    elif ":" in line:
                        k, v = line.split(":", 1)
                        pairs.append((k.strip(), v.strip()))
            with open(bfile, "rb") as f:
                raw = f.read()
            return Resp(status, CurlHeaders(pairs), raw)

    # -- cleanup ----------------------------------------------------------------
    def delete_all_sandboxes(self):
        if not self.alive():
            return
        try:
            r = self.request("GET", "/v1/sandboxes?limit=500", timeout=30)
            ids = [s["id"] for s in (r.json or {}).get("data", [])]
        except Exception:
            ids = list(self.known_sandboxes)
        for sid in ids:
            try:
                self.request("DELETE", "/v1/sandboxes/" + sid, timeout=60)
            except Exception:
                pass

    def kill_leftover_agents(self):
        """Last resort after the server is gone: kill agents of our data dir."""
        for pid in agent_pids(self.data_dir) + qemu_pids(self.data_dir):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def cleanup(self):
        if self in _LIVE_SERVERS:
            _LIVE_SERVERS.remove(self)
        self.delete_all_sandboxes()
        rc = self.stop()
        self.kill_leftover_agents()
        remove_data_dir(self.data_dir)
        if not os.environ.get("SBX_KEEP_LOGS"):
            try:
                os.remove(self.log_path)
            except OSError:
                pass
        return rc


# -- agent processes on the host ----------------------------------------------

def _read(path, mode="rb"):
    try:
        with open(path, mode) as f:
            return f.read()
    except OSError:
        return None


def _ns_pid1(pid):
    st = _read("/proc/%d/status" % pid, "r") or ""
    for line in st.splitlines():
        if line.startswith("NSpid:"):
            parts = line.split()[1:]
            return len(parts) > 1 and parts[-1] == "1"
    return False


def agent_pid(data_dir, sbx_id):
    """The host pid of a sandbox's agent (PID 1 of its pid namespace), or None."""
    for name in ("pid", "agent.pid"):
        txt = _read(os.path.join(data_dir, "sandboxes", sbx_id, name), "r")
        if txt and txt.strip().isdigit():
            pid = int(txt.strip())
            if os.path.exists("/proc/%d" % pid):
                return pid
    for pid in _all_pids():
        if not _ns_pid1(pid):
            continue
        cmd = (_read("/proc/%d/cmdline" % pid) or b"").decode("utf-8", "replace")
        if "sbx-agent" not in cmd:
            continue
        try:
            root = os.readlink("/proc/%d/root" % pid)
        except OSError:
            root = ""
        cg = (_read("/proc/%d/cgroup" % pid, "r") or "")
        if sbx_id in cmd or sbx_id in root or sbx_id in cg:
            return pid
    return None


def _all_pids():
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def qemu_pids(data_dir):
    """QEMU processes of the vm driver's sandboxes under data_dir."""
    out = []
    for pid in _all_pids():
        cmd = (_read("/proc/%d/cmdline" % pid) or b"").split(b"\0")
        if cmd and cmd[0].endswith(b"qemu-system-x86_64") and \
                any(data_dir.encode() + b"/" in a for a in cmd):
            out.append(pid)
    return out


def agent_pids(data_dir):
    out = []
    sdir = os.path.join(data_dir, "sandboxes")
    try:
        ids = os.listdir(sdir)
    except OSError:
        ids = []
    for sid in ids:
        pid = agent_pid(data_dir, sid)
        if pid:
            out.append(pid)
    return out


def mounts_under(path):
    path = os.path.realpath(path).rstrip("/") + "/"
    out = []
    for line in (_read("/proc/self/mountinfo", "r") or "").splitlines():
        mp = line.split()[4]
        if (mp + "/").startswith(path):
            out.append(mp)
    return out


def remove_data_dir(path):
    # never walk into a mount (a sandbox's overlay or a bind of the host root)
    if mounts_under(path):
        return
    subprocess.run(["rm", "-rf", "--one-file-system", path], check=False)


def host_count(pattern, pidns_of=None):
    """Processes on the host whose command line contains pattern (pgrep -f -c);
    with pidns_of (a host pid), only those in that process's pid namespace."""
    n = 0
    pat = pattern.encode()
    me = os.getpid()
    want_ns = None
    if pidns_of:
        try:
            want_ns = os.readlink("/proc/%d/ns/pid" % pidns_of)
        except OSError:
            want_ns = None
    for pid in _all_pids():
        if pid == me:
            continue
        cmd = (_read("/proc/%d/cmdline" % pid) or b"").replace(b"\0", b" ")
        if pat not in cmd:
            continue
        if want_ns is not None:
            try:
                if os.readlink("/proc/%d/ns/pid" % pid) != want_ns:
                    continue
            except OSError:
                continue
        n += 1
    return n


def is_asan(pid):
    maps = _read("/proc/%d/maps" % pid, "r") or ""
    if "libasan" in maps:
        return True
    return "asan" in BUILD


# -- OpenAPI paths --------------------------------------------------------------

HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def openapi_routes(path=OPENAPI_YAML):
    """{path: set(METHODS)} from openapi.yaml.  Uses PyYAML when present, else a
    small indentation-based reader of the `paths:` block."""
    with open(path, "r") as f:
        text = f.read()
    try:
        import yaml  # python3-yaml
        doc = yaml.safe_load(text)
        return {p: {m.upper() for m in item if m.lower() in HTTP_METHODS}
                for p, item in (doc.get("paths") or {}).items()}
    except ImportError:
        pass
    routes = {}
    in_paths = False
    path_indent = None
    cur = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        s = line.strip()
        if indent == 0:
            in_paths = s.startswith("paths:")
            cur = None
            continue
        if not in_paths:
            continue
        if path_indent is None:
            path_indent = indent
        if indent == path_indent:
            key = s.split(":", 1)[0].strip().strip("'\"")
            cur = key
            routes[cur] = set()
        elif cur is not None and indent > path_indent:
            key = s.split(":", 1)[0].strip()
            if key.lower() in HTTP_METHODS:
                routes[cur].add((indent, key.upper()))
    # methods are the path item's direct children: the shallowest level seen
    out = {}
    for p, ms in routes.items():
        if not ms:
            out[p] = set()
            continue
        lvl = min(i for i, _ in ms)
        out[p] = {m for i, m in ms if i == lvl}
    return out


# -- test case base -------------------------------------------------------------

class SbxTestCase(unittest.TestCase):
    """One sbxd per class.  Sandboxes made with self.mk() are deleted after each test."""

    images_dir = None
    data_parent = None  # where the temp data dir goes (default: $TMPDIR)
    srv = None

    @classmethod
    def setUpClass(cls):
        cls.srv = Server(images_dir=cls.images_dir, data_parent=cls.data_parent)
        try:
            cls.srv.start()
            cls.setUpServer()
        except BaseException:
            cls.srv.cleanup()
            cls.srv = None
            raise

    @classmethod
    def setUpServer(cls):
        """Per-class fixtures on the running server (a failure here still
        stops the server)."""

    @classmethod
    def tearDownClass(cls):
        if cls.srv is not None:
            rc = cls.srv.cleanup()
            cls.srv = None
            if rc not in (0, None):
                raise AssertionError("sbxd exited with %r on SIGTERM at class end" % rc)

    def setUp(self):
        self._made = []

    def tearDown(self):
        if self.srv is None or not self.srv.alive():
            return
        for sid in reversed(self._made):
            try:
                self.srv.request("DELETE", "/v1/sandboxes/" + sid, timeout=60)
            except Exception:
                pass

    # -- helpers ----------------------------------------------------------------
    def req(self, method, path, body=None, headers=None, timeout=60):
        return self.srv.request(method, path, body, headers, timeout)

    def mk(self, **fields):
        r = self.req("POST", "/v1/sandboxes", fields, timeout=180)
        self.assertEqual(r.status, 201, r)
        self._made.append(r.json["id"])
        self.srv.known_sandboxes.add(r.json["id"])
        return r.json

    def track(self, sid):
        self._made.append(sid)

    def exec(self, ref, timeout=60, **body):
        return self.req("POST", "/v1/sandboxes/%s/exec" % ref, body, timeout=timeout)

    def shell(self, ref, command, timeout=60, **body):
        body["command"] = command
        return self.req("POST", "/v1/sandboxes/%s/shell" % ref, body, timeout=timeout)

    def sh_ok(self, ref, command, **body):
        """Run a shell command that must succeed; return its stdout."""
        r = self.shell(ref, command, **body)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["exit_code"], 0, r)
        return r.json["stdout"]

    def assertError(self, r, status, kind, field=None):
        self.assertEqual(r.status, status, r)
        self.assertIsInstance(r.json, dict, r)
        self.assertIn("error", r.json, r)
        e = r.json["error"]
        self.assertIsInstance(e, dict, r)
        self.assertEqual(e.get("kind"), kind, r)
        self.assertIsInstance(e.get("message"), str, r)
        self.assertTrue(e["message"], r)
        self.assertTrue(r.headers.get("X-Request-Id"), "no X-Request-Id on %r" % r)
        if field is not None:
            got = err_field(r.json, "field")
            if callable(field):
                self.assertTrue(field(got), "field %r in %r" % (got, r))
            else:
                self.assertEqual(got, field, r)
        return e

    def assertTime(self, v, msg=None):
        self.assertIsInstance(v, str, msg)
        self.assertRegex(v, TIME_RE, msg)

    def assertSandbox(self, o):
        self.assertTrue(SANDBOX_KEYS <= set(o), "missing %s in %r" % (SANDBOX_KEYS - set(o), o))
        self.assertRegex(o["id"], SBX_ID_RE)
        self.assertIn(o["state"], ("creating", "running", "stopping", "stopped", "failed"))
        self.assertTrue(LIMIT_KEYS <= set(o["limits"]), o)
        self.assertIsInstance(o["env"], dict)
        self.assertIsInstance(o["labels"], dict)
        self.assertTime(o["created_at"])

    def assertExecOutput(self, o):
        self.assertTrue(EXEC_OUTPUT_KEYS <= set(o), "missing %s in %r"
                        % (EXEC_OUTPUT_KEYS - set(o), o))
        self.assertRegex(o["exec_id"], EX_ID_RE)
        self.assertIsInstance(o["duration_ms"], int)
        self.assertIsInstance(o["success"], bool)
        self.assertIsInstance(o["stdout_truncated"], bool)
        self.assertIsInstance(o["stderr_truncated"], bool)

    def wait_exec(self, exec_id, timeout=20, states=("exited", "failed", "timed_out", "killed")):
        deadline = time.time() + timeout
        while True:
            r = self.req("GET", "/v1/execs/" + exec_id)
            self.assertEqual(r.status, 200, r)
            if r.json["state"] in states or time.time() > deadline:
                return r.json
            time.sleep(0.05)


def err_field(body, name):
    """A field an error reply carries: inside "error" (preferred) or beside it."""
    e = body.get("error") if isinstance(body, dict) else None
    if isinstance(e, dict) and name in e:
        return e[name]
    if isinstance(body, dict):
        return body.get(name)
    return None


def unique(prefix="t"):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:10])


def b64(data):
    return base64.b64encode(data).decode()


def unb64(s):
    return base64.b64decode(s)


def in_thread(fn, *args, **kw):
    box = {}

    def run():
        try:
            box["result"] = fn(*args, **kw)
        except BaseException as e:  # noqa: B902 - reported to the caller
            box["error"] = e
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box
