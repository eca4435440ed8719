"""The vm driver (issue 8): sandboxes as QEMU microVMs with the same routes,
events and guarantees as ns.  Runs in `make test` whatever SBX_TEST_DRIVER
says (it asks for "driver": "vm" itself); `make test-vm` runs the exec,
streaming and exec-record suites against VMs on top of this.

The guest boots under TCG on these machines (KVM hangs nested), a few
seconds per boot, so the tests share sandboxes where they can."""

import asyncio
import json
import os
import signal
import subprocess
import time
import unittest

import websockets

import harness
from harness import SbxTestCase, Server, qemu_pids, unique, vm_images_dir

IMAGE = harness.VM_IMAGE


def vm_fields(**kw):
    f = {"driver": "vm", "image": IMAGE}
    f.update(kw)
    return f


class VmBase(SbxTestCase):
    images_dir = None

    @classmethod
    def setUpClass(cls):
        cls.images_dir = vm_images_dir()
        super().setUpClass()

    def mkvm(self, **kw):
        return self.mk(**vm_fields(**kw))

    def logs(self, ref, **q):
        path = "/v1/sandboxes/%s/logs" % ref
        if q:
            path += "?" + "&".join("%s=%s" % kv for kv in q.items())
        return self.req("GET", path)

    def wait_state(self, ref, state, timeout=30):
        deadline = time.time() + timeout
        o = None
        while time.time() < deadline:
            o = self.req("GET", "/v1/sandboxes/" + ref).json
            if o.get("state") == state:
                return o
            time.sleep(0.2)
        self.fail("sandbox %s not %s after %ss: %r" % (ref, state, timeout, o))


class TestVm(VmBase):
    """One VM, many checks: booting, exec results, isolation from the host
    kernel, limits, the log route, stop/start keeping the disk."""

    @classmethod
    def setUpServer(cls):
        r = cls.srv.request("POST", "/v1/sandboxes",
                            vm_fields(name="vm-main", limits={"memory_mib": 192, "cpus": 1,
                                                              "disk_mib": 300, "pids": 64}),
                            timeout=180)
        if r.status != 201:
            raise AssertionError("creating the VM sandbox: %r" % (r,))
        cls.sb = r.json
        cls.srv.known_sandboxes.add(cls.sb["id"])

    def test_sandbox_object(self):
        v = self.req("GET", "/v1/version").json
        self.assertIn("vm", v["drivers"])
        self.assertIn(v["vm_accelerator"], ("kvm", "tcg"))
        o = self.req("GET", "/v1/sandboxes/vm-main").json
        self.assertEqual((o["state"], o["driver"], o["image"]), ("running", "vm", IMAGE), o)
        self.assertEqual(o["accelerator"], v["vm_accelerator"], o)
        self.assertEqual(set(o), harness.SANDBOX_KEYS, o)

    def test_exec_results(self):
        r = self.exec("vm-main", cmd="echo", args=["hello", "vm"])
        self.assertEqual(r.status, 200, r)
        self.assertEqual((r.json["stdout"], r.json["exit_code"], r.json["success"]),
                         ("hello vm\n", 0, True), r)
        r = self.shell("vm-main", "echo out; echo err >&2; exit 3")
        self.assertEqual(r.status, 200, r)
        self.assertEqual((r.json["stdout"], r.json["stderr"], r.json["exit_code"]),
                         ("out\n", "err\n", 3), r)
        r = self.exec("vm-main", cmd="/no/such/prog")
        self.assertError(r, 422, "exec_failed")
        self.assertEqual(harness.err_field(r.json, "failure")["kind"], "not_found", r)
        r = self.exec("vm-main", cmd="sleep", args=["5"], timeout_ms=300)
        self.assertError(r, 504, "exec_timeout")

    def test_own_kernel_and_limits(self):
        guest = self.sh_ok("vm-main", "uname -r").strip()
        self.assertNotEqual(guest, os.uname().release)
        self.assertIn("cloud-amd64", guest)
        mem_kib = int(self.sh_ok("vm-main", "sed -n 's/^MemTotal: *\\([0-9]*\\).*/\\1/p' "
                                            "/proc/meminfo").strip())
        self.assertLess(mem_kib, 192 * 1024)
        self.assertGreater(mem_kib, 100 * 1024)
        self.assertEqual(self.sh_ok("vm-main", "grep -c ^processor /proc/cpuinfo").strip(), "1")
        # the writable disk is disk_mib large
        size_kib = int(self.sh_ok("vm-main", "df -k / | tail -1").split()[1])
        self.assertLess(size_kib, 300 * 1024)
        self.assertGreater(size_kib, 200 * 1024)
        # the pids limit holds inside the guest (read with builtins: once the
        # limit is reached nothing more can fork)
        r = self.shell("vm-main", "(for i in $(seq 100); do sleep 3 & done) 2>/dev/null; "
                                  "read n < /sys/fs/cgroup/sbx/pids.current; "
                                  "read m < /sys/fs/cgroup/sbx/pids.max; echo $n $m")
        self.assertEqual(r.status, 200, r)
        n, m = r.json["stdout"].split()
        self.assertEqual(m, "64", r)
        self.assertLessEqual(int(n), 64, r)
        self.assertGreater(int(n), 40, r)
        self.assertEqual(self.sh_ok("vm-main", "hostname").strip(), "vm-main")

    def test_qemu_confined(self):
        pids = qemu_pids(os.path.join(self.srv.data_dir, "sandboxes", self.sb["id"]))
        self.assertEqual(len(pids), 1, pids)
        status = dict(line.split(":", 1) for line in
                      open("/proc/%d/status" % pids[0]).read().splitlines())
        self.assertGreaterEqual(int(status["Uid"].split()[0]), 300000, status["Uid"])
        self.assertEqual(int(status["CapEff"], 16), 0)
        self.assertEqual(status["NoNewPrivs"].strip(), "1")
        self.assertEqual(status["Seccomp"].strip(), "2")  # QEMU's own filter
        # its own cgroups, named after the sandbox
        cg = open("/proc/%d/cgroup" % pids[0]).read()
        self.assertIn("/sbx/" + self.sb["id"], cg)

        # sbxd's own descriptors are close-on-exec, but not necessarily what it
        # inherited: one started with a stray pipe must not hand it to QEMU
        r, w = os.pipe()
        os.set_inheritable(w, True)
        srv = Server(images_dir=self.images_dir, pass_fds=(w,))
        try:
            srv.start()
            o = srv.request("POST", "/v1/sandboxes", vm_fields(), timeout=180)
            self.assertEqual(o.status, 201, o)
            q = qemu_pids(os.path.join(srv.data_dir, "sandboxes", o.json["id"]))
            self.assertEqual(len(q), 1, q)
            stray = os.readlink("/proc/%d/fd/%d" % (srv.pid, w))
            mine = [os.readlink("/proc/%d/fd/%s" % (q[0], fd)) for fd in
                    os.listdir("/proc/%d/fd" % q[0])]
            self.assertNotIn(stray, mine)
        finally:
            srv.cleanup()
            os.close(r)
            os.close(w)

    def test_image_read_only_layer_writable(self):
        self.sh_ok("vm-main", "echo changed > /etc/motd-test && cat /etc/motd-test")
        with open(os.path.join(self.images_dir, IMAGE, "etc", "passwd")) as f:
            before = f.read()
        self.sh_ok("vm-main", "echo extra:x:5:5::/:/bin/sh >> /etc/passwd")
        with open(os.path.join(self.images_dir, IMAGE, "etc", "passwd")) as f:
            self.assertEqual(f.read(), before)
        # the image's own disk is mounted read-only in the guest
        r = self.shell("vm-main", "grep ' /lower ' /proc/mounts || true")
        self.assertEqual(r.status, 200, r)

    def test_logs_route(self):
        r = self.logs("vm-main")
        self.assertEqual(r.status, 200, r)
        self.assertTrue(r.headers.get("Content-Type", "").startswith("text/plain"), r.headers)
        text = r.raw.decode("utf-8", "replace")
        self.assertIn("sbxd: booting", text)
        self.assertIn("sbx-init:", text)
        self.assertIn("serving port", text)
        size = int(r.headers.get("X-Sbx-Log-Size"))
        r = self.logs("vm-main", tail_bytes=10)
        self.assertEqual(len(r.raw), 10)
        self.assertEqual(int(r.headers.get("X-Sbx-Offset")), size - 10)
        self.assertError(self.logs("vm-main", tail_bytes=0), 400, "invalid_request",
                         field="tail_bytes")
        self.assertError(self.logs("nope-" + unique()), 404, "sandbox_not_found")

    def test_websocket_stream(self):
        async def go():
            uri = "ws://127.0.0.1:%d/v1/sandboxes/vm-main/exec/ws" % self.srv.port
            async with websockets.connect(uri, subprotocols=["sbx.v1.json"]) as ws:
                await ws.send(json.dumps({"type": "start", "cmd": "sh",
                                          "args": ["-c", "cat; seq 1 20000; echo e >&2"]}))
                await ws.send(json.dumps({"type": "stdin", "data": "ping\n"}))
                await ws.send(json.dumps({"type": "stdin_close"}))
                out, err, types = "", "", []
                while True:
                    ev = json.loads(await asyncio.wait_for(ws.recv(), 60))
                    types.append(ev["type"])
                    if ev["type"] == "stdout":
                        out += ev["data"]
                    elif ev["type"] == "stderr":
                        err += ev["data"]
                    elif ev["type"] == "exited":
                        code = ev["exit_code"]
                    elif ev["type"] == "done":
                        return out, err, types, code
        out, err, types, code = asyncio.run(go())
        self.assertEqual(types[0], "started")
        self.assertEqual(out, "ping\n" + "".join("%d\n" % i for i in range(1, 20001)))
        self.assertEqual((err, code), ("e\n", 0))
        self.assertLess(types.index("stdout"), types.index("exited"))

    def test_background_signal_and_record(self):
        r = self.exec("vm-main", cmd="sleep", args=["1000"], background=True)
        self.assertEqual(r.status, 202, r)
        ex = r.json["exec_id"]
        r = self.req("POST", "/v1/execs/%s/signal" % ex, {"signal": "SIGTERM"})
        self.assertIn(r.status, (200, 202, 204), r)
        o = self.req("GET", "/v1/execs/%s/wait?timeout_ms=20000" % ex).json
        self.assertEqual((o["state"], o["exit_code"], o["signal"]), ("exited", -1, 15), o)

    def test_stop_start_keeps_disk(self):
        name = unique("vmss")
        self.mkvm(name=name)
        self.sh_ok(name, "echo kept > /root/marker && sync")
        o = self.req("POST", "/v1/sandboxes/%s/stop" % name, timeout=120)
        self.assertEqual((o.status, o.json["state"]), (200, "stopped"), o)
        self.assertEqual(qemu_pids(os.path.join(self.srv.data_dir, "sandboxes", o.json["id"])), [])
        # the clean power-off went through the guest kernel, not a kill
        self.assertIn("reboot: Power down", self.logs(name).raw.decode("utf-8", "replace"))
        o = self.req("POST", "/v1/sandboxes/%s/start" % name, timeout=180)
        self.assertEqual((o.status, o.json["state"]), (200, "running"), o)
        self.assertEqual(self.sh_ok(name, "cat /root/marker"), "kept\n")


class TestVmLifecycle(VmBase):
    """Failures and restarts: each needs its own VM or server."""

    def test_host_image_and_unknown_image_refused(self):
        r = self.req("POST", "/v1/sandboxes", {"driver": "vm", "image": "host"})
        self.assertError(r, 400, "invalid_request", field="image")
        self.assertIn("image folder", r.json["error"]["message"])
        r = self.req("POST", "/v1/sandboxes", {"driver": "vm", "image": "nope"})
        self.assertError(r, 400, "invalid_request", field="image")
        r = self.req("POST", "/v1/sandboxes", {"driver": "firecracker"})
        self.assertError(r, 400, "invalid_request", field="driver")

    @harness.ns_only("an ns sandbox's log")
    def test_logs_of_an_ns_sandbox(self):
        o = self.mk(name=unique("nslog"), driver="ns")
        r = self.logs(o["id"])
        self.assertEqual(r.status, 200, r)
        self.assertIn(b"listening on fd", r.raw)
        self.assertIsNone(o["accelerator"], o)

    def test_qemu_crash_marks_failed(self):
        name = unique("vmcrash")
        o = self.mkvm(name=name)
        ex = self.exec(name, cmd="sleep", args=["1000"], background=True).json["exec_id"]
        pids = qemu_pids(os.path.join(self.srv.data_dir, "sandboxes", o["id"]))
        self.assertEqual(len(pids), 1, pids)
        os.kill(pids[0], signal.SIGKILL)
        o = self.wait_state(name, "failed", timeout=20)
        self.assertIn("virtual machine", o.get("error") or "", o)
        e = self.req("GET", "/v1/execs/%s/wait?timeout_ms=10000" % ex).json
        self.assertEqual(e["state"], "killed", e)
        # a failed VM starts again
        o = self.req("POST", "/v1/sandboxes/%s/start" % name, timeout=180)
        self.assertEqual((o.status, o.json["state"]), (200, "running"), o)
        self.assertEqual(self.sh_ok(name, "echo back"), "back\n")

    def test_bad_image_disk_boot_failure(self):
        # an image whose disk the guest cannot mount: init says so on the
        # console, powers off, and create fails with that line
        imgs = os.path.join(self.srv.data_dir, "vm-images")
        name = unique("vmbad")
        self.mkvm(name=name)
        disks = [f for f in os.listdir(imgs) if f.startswith(IMAGE + "-") and
                 f.endswith(".ext4")]
        self.assertEqual(len(disks), 1, disks)
        path = os.path.join(imgs, disks[0])
        with open(path, "r+b") as f:
            f.seek(1024)  # the ext4 superblock
            f.write(b"\0" * 1024)
        try:
            r = self.req("POST", "/v1/sandboxes", vm_fields(name=unique("vmbad")), timeout=180)
            self.assertError(r, 500, "internal")
            msg = r.json["error"]["message"]
            self.assertIn("during boot", msg)
            self.assertIn("sbx-init: error", msg)
            sid = harness.err_field(r.json, "sandbox_id")
            self.track(sid)
            o = self.req("GET", "/v1/sandboxes/" + sid).json
            self.assertEqual(o["state"], "failed", o)
            self.assertIn("sbx-init", self.logs(sid).raw.decode("utf-8", "replace"))
            self.assertEqual(qemu_pids(os.path.join(self.srv.data_dir, "sandboxes", sid)), [])
        finally:
            os.remove(path)  # the next create builds it again

    def test_changed_image_gets_a_new_disk(self):
        import shutil
        image = unique("img")
        src = os.path.join(self.images_dir, image)
        subprocess.run(["cp", "-al", os.path.join(self.images_dir, IMAGE), src], check=True)
        try:
            cache = os.path.join(self.srv.data_dir, "vm-images")
            first = self.mk(**vm_fields(name=unique("img1"), image=image))
            disks1 = [f for f in os.listdir(cache) if f.startswith(image + "-")]
            self.assertEqual(len(disks1), 1, disks1)
            with open(os.path.join(src, "etc", "version"), "w") as f:
                f.write("v2\n")
            second = self.mk(**vm_fields(name=unique("img2"), image=image))
            disks2 = [f for f in os.listdir(cache) if f.startswith(image + "-")]
            self.assertEqual(len(disks2), 1, disks2)
            self.assertNotEqual(disks1, disks2)  # the outdated disk is gone
            self.assertEqual(self.sh_ok(second["id"], "cat /etc/version"), "v2\n")
            # the first VM still runs on the disk it opened
            r = self.shell(first["id"], "cat /etc/version 2>&1; echo alive")
            self.assertEqual(r.status, 200, r)
            self.assertTrue(r.json["stdout"].endswith("alive\n"), r)
        finally:
            shutil.rmtree(src, ignore_errors=True)

    def test_cli(self):
        sbx = os.path.join(harness.BUILD_DIR, "sbx")
        env = dict(os.environ, SBX_URL="http://127.0.0.1:%d" % self.srv.port)

        def run(*args):
            return subprocess.run([sbx] + list(args), env=env, capture_output=True, text=True,
                                  timeout=180)
        name = unique("vmcli")
        r = run("create", "--name", name, "--driver", "vm", "--image", IMAGE)
        self.assertEqual(r.returncode, 0, r)
        self.track(r.stdout.strip())
        r = run("exec", name, "--", "uname", "-r")
        self.assertEqual((r.returncode, r.stdout.strip().endswith("cloud-amd64")), (0, True), r)
        r = run("console", name)
        self.assertEqual(r.returncode, 0, r)
        self.assertIn("sbx-init: exec sbx-agent", r.stdout)
        r = subprocess.run([sbx, "console", name, "--tail", "5"], env=env, capture_output=True,
                           timeout=60)  # bytes: the console ends lines with \r\n
        self.assertEqual((r.returncode, len(r.stdout)), (0, 5), r)
        r = run("console", "nope-" + unique())
        self.assertEqual(r.returncode, 1, r)
        r = run("create", "--driver", "vm")  # no image: the server says which field
        self.assertEqual(r.returncode, 1, r)
        self.assertIn("image", r.stderr)

    def test_missing_kernel(self):
        srv = Server(images_dir=self.images_dir)
        old = os.environ.get("SBX_VM_DIR")
        os.environ["SBX_VM_DIR"] = "/nonexistent-sbx-vm"
        try:
            srv.start()
        finally:
            if old is None:
                del os.environ["SBX_VM_DIR"]
            else:
                os.environ["SBX_VM_DIR"] = old
        try:
            r = srv.request("POST", "/v1/sandboxes", vm_fields())
            self.assertEqual(r.status, 500, r)
            self.assertIn("vmlinuz is missing", r.json["error"]["message"])
            self.assertIn("make", r.json["error"]["message"])
        finally:
            srv.cleanup()

    def test_sbxd_restart_reconnects(self):
        name = unique("vmrs")
        o = self.mkvm(name=name)
        ex = self.exec(name, cmd="sh", args=["-c", "echo before; sleep 3; echo after"],
                       background=True).json["exec_id"]
        pids = qemu_pids(os.path.join(self.srv.data_dir, "sandboxes", o["id"]))
        self.assertEqual(self.srv.stop(), 0)
        self.assertTrue(all(os.path.exists("/proc/%d" % p) for p in pids), pids)
        self.srv.start()
        self.assertEqual(self.req("GET", "/v1/sandboxes/" + name).json["state"], "running")
        e = self.req("GET", "/v1/execs/%s/wait?timeout_ms=30000" % ex).json
        self.assertEqual((e["state"], e["exit_code"]), ("exited", 0), e)
        self.assertEqual(self.sh_ok(name, "echo again"), "again\n")


if __name__ == "__main__":
    unittest.main()
