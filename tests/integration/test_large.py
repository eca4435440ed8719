"""100 MiB through a one-shot exec, with sbxd's peak memory bounded by the
cap plus a small constant.  Its own sbxd, so VmHWM is this test's alone."""

import time
import unittest

from harness import SbxTestCase, is_asan, unique

MIB = 1024 * 1024


def vm_hwm(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


class TestLargeOutput(SbxTestCase):

    def test_3_100mib(self):
        name = unique("big")
        self.mk(name=name)
        cap = 110 * MIB
        size = 100 * MIB
        t0 = time.time()
        r = self.shell(name, "head -c %d /dev/zero | tr '\\0' a; echo tail >&2" % size,
                       max_output_bytes=cap, timeout_ms=300000, timeout=600)
        dt = time.time() - t0
        self.assertEqual(r.status, 200, repr(r)[:300])
        o = r.json
        self.assertEqual(o["exit_code"], 0)
        self.assertEqual(len(o["stdout"]), size)
        self.assertEqual(o["stdout"].count("a"), size)
        self.assertIs(o["stdout_truncated"], False)
        self.assertEqual(o["stderr"], "tail\n")
        del r, o
        hwm = vm_hwm(self.srv.pid)
        print("[100 MiB in %.1fs, sbxd VmHWM %.0f MiB] " % (dt, hwm / MIB), end="", flush=True)
        if is_asan(self.srv.pid):
            return  # ASan's shadow memory and quarantine make RSS meaningless
        self.assertLess(hwm, cap + 64 * MIB,
                        "sbxd peak RSS %.0f MiB for a %d MiB cap" % (hwm / MIB, cap // MIB))
        # and the record counts every byte
        ex = self.req("GET", "/v1/sandboxes/%s/execs?limit=1" % name).json["data"][0]
        self.assertEqual(ex["stdout_bytes"], size)

    def test_2_big_binary_base64(self):
        name = unique("bigb")
        self.mk(name=name)
        size = 8 * MIB
        r = self.exec(name, cmd="head", args=["-c", str(size), "/dev/urandom"], encoding="base64",
                      max_output_bytes=16 * MIB, timeout=120)
        self.assertEqual(r.status, 200)
        import base64
        self.assertEqual(len(base64.b64decode(r.json["stdout"])), size)

    def test_1_truncated_big_output_does_not_grow_memory(self):
        name = unique("bigt")
        self.mk(name=name)
        before = vm_hwm(self.srv.pid)
        r = self.shell(name, "head -c %d /dev/zero" % (200 * MIB), max_output_bytes=1024,
                       timeout_ms=120000, timeout=300)
        self.assertEqual(r.status, 200)
        self.assertIs(r.json["stdout_truncated"], True)
        self.assertEqual(r.json["exit_code"], 0)
        if not is_asan(self.srv.pid):
            self.assertLess(vm_hwm(self.srv.pid), max(before, 64 * MIB) + 64 * MIB)


if __name__ == "__main__":
    unittest.main()
