"""What a sandbox can see: its own hostname, its agent as PID 1, loopback
only, nothing of the data dir or of other sandboxes."""

import os
import unittest

from harness import SbxTestCase, unique


class TestIsolation(SbxTestCase):
    # not under /tmp: a sandbox's private /tmp would hide it anyway
    data_parent = "/var/tmp"

    def test_hostname_is_name(self):
        name = unique("host")
        self.mk(name=name)
        self.assertEqual(self.sh_ok(name, "hostname"), name + "\n")
        self.assertEqual(self.sh_ok(name, "cat /proc/sys/kernel/hostname"), name + "\n")

    def test_hostname_without_name_is_id(self):
        o = self.mk()
        self.assertEqual(self.sh_ok(o["id"], "hostname"), o["id"] + "\n")

    def test_pid1_is_agent(self):
        name = unique("pid1")
        self.mk(name=name)
        r = self.exec(name, cmd="cat", args=["/proc/1/cmdline"], encoding="base64")
        import base64
        cmd = base64.b64decode(r.json["stdout"])
        self.assertIn(b"sbx-agent", cmd)
        # the exec's own pid is small: a private pid namespace
        out = self.sh_ok(name, "echo $$")
        self.assertLess(int(out), 1000)
        # no host processes visible: only a handful of pids
        n = int(self.sh_ok(name, "ls -d /proc/[0-9]* | wc -l"))
        self.assertLess(n, 20)

    def test_loopback_only(self):
        name = unique("net")
        self.mk(name=name)
        out = self.sh_ok(name, "cat /proc/net/dev")
        ifaces = sorted(l.split(":")[0].strip() for l in out.splitlines()[2:] if ":" in l)
        self.assertEqual(ifaces, ["lo"])
        # loopback works
        r = self.exec(name, cmd="/usr/bin/python3", args=["-c", (
            "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen(1);"
            "c=socket.create_connection(s.getsockname()); a,_=s.accept(); c.sendall(b'ok');"
            "print(a.recv(2).decode())")])
        self.assertEqual(r.json["stdout"], "ok\n", r)
        # the outside world does not
        r = self.exec(name, cmd="/usr/bin/python3", args=["-c", (
            "import socket\n"
            "try:\n socket.create_connection(('1.1.1.1', 53), timeout=2); print('reached')\n"
            "except OSError as e:\n print('blocked')")])
        self.assertEqual(r.json["stdout"], "blocked\n", r)

    def test_data_dir_hidden(self):
        name = unique("dd")
        o = self.mk(name=name)
        dd = self.srv.data_dir
        r = self.shell(name, "ls -A %s" % dd)
        self.assertEqual(r.status, 200, r)
        self.assertTrue(r.json["exit_code"] != 0 or r.json["stdout"] == "",
                        "data dir visible inside the sandbox: %r" % r.json)
        r = self.shell(name, "ls -A %s/sandboxes/%s 2>&1; cat %s/*.db 2>&1 | head -c 100"
                       % (dd, o["id"], dd))
        self.assertNotIn("SQLite", r.json["stdout"])

    def test_host_root_read_only_but_layer_writable(self):
        name = unique("ro")
        self.mk(name=name)
        marker = "/etc/sbx-it-%s" % name
        self.sh_ok(name, "echo hi > %s && cat %s" % (marker, marker))
        self.assertFalse(os.path.exists(marker), "write inside the sandbox reached the host")

    def test_sandboxes_do_not_see_each_other(self):
        a = unique("iso-a")
        b = unique("iso-b")
        self.mk(name=a)
        self.mk(name=b)
        self.sh_ok(a, "echo secret > /root/only-a; echo t > /tmp/only-a")
        r = self.shell(b, "cat /root/only-a /tmp/only-a")
        self.assertEqual(r.status, 200)
        self.assertNotEqual(r.json["exit_code"], 0)
        self.assertNotIn("secret", r.json["stdout"])
        # b cannot see a's processes either
        self.exec(a, cmd="sleep", args=["77"], background=True)
        out = self.sh_ok(b, "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done"
                            " | grep -c 'sleep 7[7]' || true")
        self.assertEqual(out.strip(), "0")


if __name__ == "__main__":
    unittest.main()
