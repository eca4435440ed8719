"""A rootfs folder under --images-dir as a sandbox's image: a tiny root with
one static binary (built here with gcc -static)."""

import os
import shutil
import subprocess
import tempfile
import unittest

from harness import SbxTestCase, unique

TOOL_C = r"""
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <fcntl.h>
/* tool            -> prints "mini" and its uid
 * tool cat PATH   -> prints PATH's content (exit 1 if it cannot open it)
 * tool write PATH TEXT -> writes TEXT to PATH */
int main(int argc, char **argv) {
  if (argc >= 3 && strcmp(argv[1], "cat") == 0) {
    int fd = open(argv[2], O_RDONLY);
    if (fd < 0) { perror(argv[2]); return 1; }
    char buf[4096]; ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0) fwrite(buf, 1, n, stdout);
    return 0;
  }
  if (argc >= 4 && strcmp(argv[1], "write") == 0) {
    FILE *f = fopen(argv[2], "w");
    if (!f) { perror(argv[2]); return 1; }
    fputs(argv[3], f);
    return fclose(f) ? 1 : 0;
  }
  printf("mini uid=%d\n", (int)getuid());
  return 0;
}
"""


class TestImages(SbxTestCase):

    @classmethod
    def setUpClass(cls):
        cls.images_dir = tempfile.mkdtemp(prefix="sbxit-img-")
        root = os.path.join(cls.images_dir, "mini")
        for d in ("bin", "etc", "tmp", "root", "proc", "dev", "sys"):
            os.makedirs(os.path.join(root, d), exist_ok=True)
        os.chmod(os.path.join(root, "tmp"), 0o1777)
        with open(os.path.join(root, "etc", "passwd"), "w") as f:
            f.write("root:x:0:0:root:/root:/bin/tool\nmini:x:1234:1234::/tmp:/bin/tool\n")
        with open(os.path.join(root, "etc", "group"), "w") as f:
            f.write("root:x:0:\nmini:x:1234:\n")
        with open(os.path.join(root, "etc", "marker"), "w") as f:
            f.write("from-mini-image\n")
        src = os.path.join(cls.images_dir, "tool.c")
        with open(src, "w") as f:
            f.write(TOOL_C)
        subprocess.run(["gcc", "-static", "-O1", "-o", os.path.join(root, "bin", "tool"), src],
                       check=True)
        os.remove(src)
        try:
            super().setUpClass()
        except BaseException:
            shutil.rmtree(cls.images_dir, ignore_errors=True)
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            shutil.rmtree(cls.images_dir, ignore_errors=True)

    def test_rootfs_image(self):
        name = unique("mini")
        o = self.mk(name=name, image="mini", shell="/bin/tool")
        self.assertEqual(o["image"], "mini")
        r = self.exec(name, cmd="/bin/tool")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["stdout"], "mini uid=0\n")
        r = self.exec(name, cmd="/bin/tool", args=["cat", "/etc/marker"])
        self.assertEqual(r.json["stdout"], "from-mini-image\n")
        # the host's root is not there
        r = self.exec(name, cmd="/usr/bin/python3")
        self.assertError(r, 422, "exec_failed")
        r = self.exec(name, cmd="/bin/tool", args=["cat", "/etc/debian_version"])
        self.assertEqual(r.json["exit_code"], 1)
        # user by name from the image's own /etc/passwd
        r = self.exec(name, cmd="/bin/tool", user="mini")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["stdout"], "mini uid=1234\n")
        # writable layer, image untouched
        r = self.exec(name, cmd="/bin/tool", args=["write", "/etc/marker", "changed"])
        self.assertEqual(r.json["exit_code"], 0, r)
        r = self.exec(name, cmd="/bin/tool", args=["cat", "/etc/marker"])
        self.assertEqual(r.json["stdout"], "changed")
        with open(os.path.join(self.images_dir, "mini", "etc", "marker")) as f:
            self.assertEqual(f.read(), "from-mini-image\n")

    def test_two_sandboxes_one_image(self):
        a = self.mk(image="mini")
        b = self.mk(image="mini")
        self.exec(a["id"], cmd="/bin/tool", args=["write", "/tmp/x", "a"])
        r = self.exec(b["id"], cmd="/bin/tool", args=["cat", "/tmp/x"])
        self.assertEqual(r.json["exit_code"], 1)

    def test_unknown_image(self):
        r = self.req("POST", "/v1/sandboxes", {"image": "nonexistent"})
        self.assertError(r, 400, "invalid_request", field="image")
        r = self.req("POST", "/v1/sandboxes", {"image": "../" + os.path.basename(self.images_dir)})
        self.assertError(r, 400, "invalid_request", field="image")


if __name__ == "__main__":
    unittest.main()
