/* test_ns.c - the ns driver with real namespaces (needs root).
 *
 * Most tests run this very binary as the sandbox's agent ("fake agent" mode,
 * entered when argv[1] is --listen-fd): per connection it sends a HELLO frame,
 * then reads one shell command line, runs it inside the sandbox and writes
 * back its output.  That lets the tests look at the sandbox from inside
 * without depending on the real agent.  When build/sbx-agent exists, one more
 * test drives it with real EXEC frames.
 *
 * Environment: SBX_LAUNCH (the sbx-launch binary; default: ../sbx-launch next
 * to this binary), SBX_AGENT (the real agent; default ../sbx-agent).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* `make asan` overrides CFLAGS, dropping -D_GNU_SOURCE */
#endif
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent/proto.h"
#include "common/util.h"
#include "vmm/cgroup.h"
#include "vmm/driver.h"
#include "vmm/ns.h"

/* snprintf into a char array, failing the test if it does not fit */
#define PATHF(buf, ...) ck_assert_int_lt(snprintf(buf, sizeof buf, __VA_ARGS__), (int)sizeof buf)

static char self_exe[PATH_MAX];
static char bin_dir[PATH_MAX]; /* build/ */

/* ------------------------------------------------------------------ */
/* fake agent                                                          */

static void send_frame(int fd, uint32_t session, uint8_t type, const char *payload, size_t n) {
  uint8_t hdr[SBX_PROTO_HDR];
  sbx_proto_put_hdr(hdr, (uint32_t)n, session, type);
  sbx_write_all(fd, hdr, sizeof hdr);
  if (n)
    sbx_write_all(fd, payload, n);
}

static int fake_agent(int lfd) {
  signal(SIGPIPE, SIG_IGN);
  for (;;) {
    int c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (c < 0) {
      if (errno == EINTR || errno == ECONNABORTED)
        continue;
      return 1;
    }
    char hello[256];
    int n = snprintf(hello, sizeof hello,
                     "{\"version\":1,\"agent\":\"fake\",\"pid\":%d,\"sessions\":[]}", (int)getpid());
    send_frame(c, 0, SBX_F_HELLO, hello, (size_t)n);
    char cmd[4096];
    size_t got = 0;
    struct pollfd p = {c, POLLIN, 0};
    while (got < sizeof cmd - 1 && poll(&p, 1, 5000) == 1) {
      ssize_t r = read(c, cmd + got, sizeof cmd - 1 - got);
      if (r <= 0)
        break;
      got += (size_t)r;
      if (memchr(cmd, '\n', got))
        break;
    }
    cmd[got] = '\0';
    if (got && strchr(cmd, '\n')) {
      *strchr(cmd, '\n') = '\0';
      FILE *f = popen(cmd, "r");
      if (f) {
        char buf[4096];
        size_t k;
        while ((k = fread(buf, 1, sizeof buf, f)) > 0)
          sbx_write_all(c, buf, k);
        pclose(f);
      }
    }
    close(c);
    while (waitpid(-1, NULL, WNOHANG) > 0) /* we are pid 1: reap orphans */
      ;
  }
}

/* ------------------------------------------------------------------ */
/* helpers                                                             */

typedef struct fixture {
  char data[PATH_MAX], images[PATH_MAX], id[32], dir[PATH_MAX];
  sbx_sandbox_spec spec;
} fixture;

/* Every fixture's dirs live in one directory per run, so main() can sweep
 * up after tests that failed half-way (a failed ck_assert ends the test's
 * process at once): no agent outlives the test binary. */
static char run_dir[PATH_MAX];

static void fx_init(fixture *f, const char *image, const char *agent) {
  memset(f, 0, sizeof *f);
  PATHF(f->data, "%s/data.XXXXXX", run_dir);
  ck_assert_ptr_nonnull(mkdtemp(f->data));
  PATHF(f->images, "%s/img.XXXXXX", run_dir);
  ck_assert_ptr_nonnull(mkdtemp(f->images));
  sbx_new_id("sbx_", f->id, sizeof f->id);
  ck_assert_int_eq(ns_sandbox_dir(f->data, f->id, f->dir, sizeof f->dir), 0);
  f->spec = (sbx_sandbox_spec){.id = f->id,
                               .hostname = "box-1",
                               .image = image,
                               .data_dir = f->data,
                               .images_dir = f->images,
                               .agent_path = agent ? agent : self_exe,
                               .network = "none"};
}

static void fx_cleanup(fixture *f) {
  sbx_err err;
  vmm_ns_driver.destroy(&f->spec, &err);
  sbx_rm_rf(f->data);
  sbx_rm_rf(f->images);
}

static pid_t fx_start(fixture *f) {
  sbx_err err = {0};
  ck_assert_msg(vmm_ns_driver.create(&f->spec, &err) == 0, "create: %s", err.msg);
  pid_t pid = 0;
  ck_assert_msg(vmm_ns_driver.start(&f->spec, &pid, &err) == 0, "start: %s", err.msg);
  ck_assert_int_gt(pid, 1);
  return pid;
}

/* Read frames until one whole frame arrives; returns its type, payload in out. */
static int read_frame(int fd, sbx_decoder *d, sbx_frame_hdr *h, char *out, size_t outsz) {
  for (;;) {
    const uint8_t *payload;
    const char *why = NULL;
    int r = sbx_decoder_next(d, h, &payload, &why);
    ck_assert_msg(r >= 0, "protocol error: %s", why ? why : "?");
    if (r == 1) {
      size_t n = h->len < outsz - 1 ? h->len : outsz - 1;
      memcpy(out, payload, n);
      out[n] = '\0';
      return h->type;
    }
    struct pollfd p = {fd, POLLIN, 0};
    ck_assert_msg(poll(&p, 1, 5000) == 1, "timed out waiting for a frame");
    char buf[65536];
    ssize_t k = read(fd, buf, sizeof buf);
    ck_assert_msg(k > 0, "agent closed the connection");
    ck_assert_int_eq(sbx_decoder_feed(d, buf, (size_t)k), 0);
  }
}

/* Connect, check the HELLO, run cmd through the fake agent; returns its
 * output (malloc'd). */
static char *fake_run(fixture *f, const char *cmd) {
  sbx_err err = {0};
  int fd = vmm_ns_driver.connect(&f->spec, &err);
  ck_assert_msg(fd >= 0, "connect: %s", err.msg);
  ck_assert_int_ne(fcntl(fd, F_GETFD) & FD_CLOEXEC, 0);
  sbx_decoder *d = sbx_decoder_new();
  sbx_frame_hdr h;
  char hello[1024];
  ck_assert_int_eq(read_frame(fd, d, &h, hello, sizeof hello), SBX_F_HELLO);
  ck_assert_uint_eq(h.session, 0);
  json_t *j = json_loads(hello, 0, NULL);
  ck_assert_ptr_nonnull(j);
  ck_assert_int_eq(json_integer_value(json_object_get(j, "pid")), 1); /* pid 1 of its ns */
  json_decref(j);
  sbx_decoder_free(d);
  char line[4096];
  PATHF(line, "%s\n", cmd);
  ck_assert_int_eq(sbx_write_all(fd, line, strlen(line)), 0);
  size_t cap = 1 << 16, len = 0;
  char *out = malloc(cap);
  for (;;) {
    struct pollfd p = {fd, POLLIN, 0};
    ck_assert_msg(poll(&p, 1, 10000) == 1, "timed out running %s", cmd);
    ssize_t k = read(fd, out + len, cap - 1 - len);
    if (k <= 0)
      break;
    len += (size_t)k;
    ck_assert_uint_lt(len, cap - 1);
  }
  out[len] = '\0';
  close(fd);
  return out;
}

static char *host_read(const char *dir, const char *name) {
  char p[PATH_MAX];
  PATHF(p, "%s/%s", dir, name);
  return sbx_read_file(p, 1 << 16, NULL);
}

/* ------------------------------------------------------------------ */
/* tests                                                               */

START_TEST(test_lifecycle_host_image) {
  fixture f;
  fx_init(&f, "host", NULL);
  pid_t pid = fx_start(&f);
  ck_assert(vmm_ns_driver.alive(&f.spec));

  /* uid 0 inside is host 100000: look from the host */
  char p[PATH_MAX];
  PATHF(p, "/proc/%d/uid_map", (int)pid);
  char *map = sbx_read_file(p, 256, NULL);
  ck_assert_ptr_nonnull(map);
  unsigned a, b, c;
  ck_assert_int_eq(sscanf(map, "%u %u %u", &a, &b, &c), 3);
  ck_assert_uint_eq(a, 0);
  ck_assert_uint_eq(b, NS_HOST_ID_BASE);
  ck_assert_uint_eq(c, NS_ID_COUNT);
  free(map);
  struct stat st;
  PATHF(p, "/proc/%d", (int)pid);
  ck_assert_int_eq(stat(p, &st), 0);
  ck_assert_uint_eq(st.st_uid, NS_HOST_ID_BASE); /* the agent runs as host 100000 */

  /* and from inside */
  char *out = fake_run(&f, "id -u; id -g; hostname; cat /proc/self/uid_map | tr -s ' '");
  ck_assert_str_eq(out, "0\n0\nbox-1\n 0 100000 65536\n");
  free(out);

  /* host files owned by root appear root-owned (idmapped lower layer), and
   * the sandbox's root can change them in its own layer */
  out = fake_run(&f, "stat -c %u:%g /etc/passwd /usr/bin; echo marker > /etc/sbx-marker && "
                     "echo appended >> /etc/hostname.sbx-copy; cat /etc/sbx-marker");
  ck_assert_str_eq(out, "0:0\n0:0\nmarker\n");
  free(out);
  char upper[PATH_MAX];
  PATHF(upper, "%s/%s/etc/sbx-marker", f.dir, NS_UPPER);
  ck_assert_int_eq(stat(upper, &st), 0);
  ck_assert_uint_eq(st.st_uid, NS_HOST_ID_BASE);
  ck_assert_int_ne(access("/etc/sbx-marker", F_OK), 0); /* never on the host */

  /* stop: the agent and its pid namespace are gone, files stay */
  sbx_err err = {0};
  ck_assert_msg(vmm_ns_driver.stop(&f.spec, &err) == 0, "stop: %s", err.msg);
  ck_assert(!vmm_ns_driver.alive(&f.spec));
  ck_assert(ns_proc_starttime(pid) == 0);
  PATHF(p, "%s/%s", f.dir, NS_SOCK);
  ck_assert_int_ne(access(p, F_OK), 0);
  ck_assert_int_lt(vmm_ns_driver.connect(&f.spec, &err), 0);
  ck_assert_int_eq(err.kind, SBX_E_NOT_RUNNING);
  ck_assert_int_eq(vmm_ns_driver.stop(&f.spec, &err), 0); /* stopping twice is fine */

  /* start again: the layer survived, /tmp did not (tmpfs) */
  pid_t pid2 = 0;
  ck_assert_msg(vmm_ns_driver.start(&f.spec, &pid2, &err) == 0, "restart: %s", err.msg);
  ck_assert_int_gt(pid2, 1);
  out = fake_run(&f, "cat /etc/sbx-marker");
  ck_assert_str_eq(out, "marker\n");
  free(out);
  /* starting a running sandbox returns the same agent */
  pid_t pid3 = 0;
  ck_assert_int_eq(vmm_ns_driver.start(&f.spec, &pid3, &err), 0);
  ck_assert_int_eq(pid3, pid2);

  cleanup_free char *cg = host_read(f.dir, NS_CGROUPS);
  ck_assert_ptr_nonnull(cg);
  ck_assert_msg(vmm_ns_driver.destroy(&f.spec, &err) == 0, "destroy: %s", err.msg);
  ck_assert(ns_proc_starttime(pid2) == 0);
  ck_assert_int_ne(access(f.dir, F_OK), 0);
  /* every cgroup directory is gone too */
  for (char *line = strtok(cg, "\n"); line; line = strtok(NULL, "\n")) {
    char *sp = strchr(line, ' ');
    ck_assert_ptr_nonnull(sp);
    ck_assert_msg(access(sp + 1, F_OK) != 0, "cgroup %s left behind", sp + 1);
  }
  ck_assert(!vmm_ns_driver.alive(&f.spec));
  ck_assert_int_eq(vmm_ns_driver.destroy(&f.spec, &err), 0); /* twice is fine */
  fx_cleanup(&f);
}
END_TEST

START_TEST(test_isolation) {
  fixture f;
  fx_init(&f, "host", NULL);
  /* something secret in the data dir and the images dir */
  char p[PATH_MAX];
  PATHF(p, "%s/secret.db", f.data);
  ck_assert_int_eq(sbx_write_file(p, "secret"), 0);
  PATHF(p, "%s/img1", f.images);
  ck_assert_int_eq(mkdir(p, 0755), 0);
  fx_start(&f);
  char cmd[2048];
  PATHF(cmd,
           "ls -A %s | wc -l; ls -A %s | wc -l; (echo x > %s/new) 2>/dev/null || echo ro; "
           "ls /proc | grep -c '^[0-9]*$'; cat /proc/1/comm >/dev/null && echo proc-ok; "
           "grep -c : /proc/net/dev; ls /sys/class/net; ls -d /dev/pts/ptmx /dev/null /dev/shm; "
           "stat -c %%a /tmp; echo hi > /dev/null && echo null-ok; head -c 4 /dev/zero | wc -c",
           f.data, f.images, f.data);
  char *out = fake_run(&f, cmd);
  /* 0 entries in both masked dirs; read-only; only a few processes (agent,
   * sh, ls, grep); loopback only; devices; sticky /tmp */
  int data_n, img_n, nproc, nif;
  char ro[8];
  ck_assert_msg(sscanf(out, "%d %d %7s %d", &data_n, &img_n, ro, &nproc) == 4, "out: %s", out);
  ck_assert_int_eq(data_n, 0);
  ck_assert_int_eq(img_n, 0);
  ck_assert_str_eq(ro, "ro");
  ck_assert_int_le(nproc, 8);
  ck_assert_ptr_nonnull(strstr(out, "proc-ok\n"));
  char *netdev = strstr(out, "proc-ok\n") + 8;
  ck_assert_int_eq(sscanf(netdev, "%d", &nif), 1);
  ck_assert_int_eq(nif, 1);
  ck_assert_ptr_nonnull(strstr(out, "\nlo\n"));
  ck_assert_ptr_nonnull(strstr(out, "/dev/null\n/dev/pts/ptmx\n/dev/shm\n"));
  ck_assert_ptr_nonnull(strstr(out, "\n1777\nnull-ok\n4\n"));
  free(out);

  /* the sandbox cannot unmount the mask (locked) nor mount anything */
  PATHF(cmd, "umount %s 2>&1 >/dev/null | wc -l; ls -A %s | wc -l; "
                            "mount -t tmpfs x /mnt 2>/dev/null || echo no-mount; "
                            "unshare -U true 2>/dev/null || echo no-userns; "
                            "grep -c ':/$' /proc/self/cgroup; grep -c sbx /proc/self/cgroup",
           f.data, f.data);
  out = fake_run(&f, cmd);
  ck_assert_msg(strstr(out, "0\nno-mount\nno-userns\n") != NULL, "out: %s", out);
  /* cgroup namespace: every line of /proc/self/cgroup is "/" inside */
  int all_root, with_sbx;
  char *cgl = strstr(out, "no-userns\n") + 10;
  ck_assert_int_eq(sscanf(cgl, "%d %d", &all_root, &with_sbx), 2);
  ck_assert_int_gt(all_root, 0);
  ck_assert_int_eq(with_sbx, 0);
  free(out);
  fx_cleanup(&f);
}
END_TEST

static char real_agent[PATH_MAX];

/* A folder image: the sandbox sees that folder as "/", nothing of the host.
 * Needs a static agent (the real one); the dynamic fake agent cannot run in
 * an empty image, and that failure must be clean. */
START_TEST(test_folder_image) {
  bool have_agent = access(real_agent, X_OK) == 0;
  fixture f;
  fx_init(&f, "img", have_agent ? real_agent : NULL);
  char p[PATH_MAX];
  PATHF(p, "%s/img", f.images);
  ck_assert_int_eq(mkdir(p, 0755), 0);
  PATHF(p, "%s/img/etc", f.images);
  ck_assert_int_eq(mkdir(p, 0755), 0);
  PATHF(p, "%s/img/etc/marker", f.images);
  ck_assert_int_eq(sbx_write_file(p, "from the image"), 0);
  sbx_err err = {0};
  ck_assert_msg(vmm_ns_driver.create(&f.spec, &err) == 0, "create: %s", err.msg);
  pid_t pid = 0;
  int r = vmm_ns_driver.start(&f.spec, &pid, &err);
  if (!have_agent) {
    ck_assert_int_lt(r, 0);
    ck_assert_msg(strstr(err.msg, "execveat"), "unexpected error: %s", err.msg);
    ck_assert(!vmm_ns_driver.alive(&f.spec));
    fx_cleanup(&f);
    return;
  }
  ck_assert_msg(r == 0, "start: %s", err.msg);
  /* look at its root from the host */
  PATHF(p, "/proc/%d/root/etc/marker", (int)pid);
  cleanup_free char *m = sbx_read_file(p, 64, NULL);
  ck_assert_ptr_nonnull(m);
  ck_assert_str_eq(m, "from the image");
  struct stat st;
  ck_assert_int_eq(stat(p, &st), 0);
  /* the image's root-owned file is the sandbox root's (host 100000) */
  ck_assert_uint_eq(st.st_uid, NS_HOST_ID_BASE);
  PATHF(p, "/proc/%d/root/etc/passwd", (int)pid);
  ck_assert_int_ne(access(p, F_OK), 0); /* nothing of the host */
  PATHF(p, "/proc/%d/root/proc/1/comm", (int)pid);
  ck_assert_int_eq(access(p, F_OK), 0); /* proc, dev, tmp made inside */
  PATHF(p, "/proc/%d/root/dev/null", (int)pid);
  ck_assert_int_eq(access(p, F_OK), 0);
  ck_assert_int_eq(vmm_ns_driver.stop(&f.spec, &err), 0);
  fx_cleanup(&f);
}
END_TEST

START_TEST(test_unknown_image) {
  fixture f;
  fx_init(&f, "nope", NULL);
  sbx_err err = {0};
  ck_assert_int_lt(vmm_ns_driver.create(&f.spec, &err), 0);
  ck_assert_int_eq(err.kind, SBX_E_INVALID_REQUEST);
  ck_assert_str_eq(err.field, "image");
  ck_assert_int_ne(access(f.dir, F_OK), 0); /* nothing made */
  static const char *const bad[] = {"..", "../etc", "a/b", ".hidden", ""};
  for (size_t i = 0; i < SBX_ARRAY_LEN(bad); i++) {
    f.spec.image = bad[i];
    memset(&err, 0, sizeof err);
    if (bad[i][0] == '\0')
      continue; /* "" means the default (host) */
    ck_assert_msg(vmm_ns_driver.create(&f.spec, &err) < 0, "image %s accepted", bad[i]);
    ck_assert_int_eq(err.kind, SBX_E_INVALID_REQUEST);
    ck_assert_str_eq(err.field, "image");
  }
  /* a file is not an image */
  char p[PATH_MAX];
  PATHF(p, "%s/file", f.images);
  ck_assert_int_eq(sbx_write_file(p, "x"), 0);
  f.spec.image = "file";
  ck_assert_int_lt(vmm_ns_driver.create(&f.spec, &err), 0);
  ck_assert_str_eq(err.field, "image");
  fx_cleanup(&f);
}
END_TEST

START_TEST(test_limits) {
  fixture f;
  fx_init(&f, "host", NULL);
  f.spec.memory_mib = 64;
  f.spec.pids = 32;
  f.spec.cpus = 0.5;
  pid_t pid = fx_start(&f);
  cleanup_free char *cg = host_read(f.dir, NS_CGROUPS);
  ck_assert_ptr_nonnull(cg);
  int v = cgroup_version();
  if (v == 1) {
    cleanup_free char *mem = cgroup_read(cg, "memory", "memory.limit_in_bytes");
    cleanup_free char *pids = cgroup_read(cg, "pids", "pids.max");
    cleanup_free char *quota = cgroup_read(cg, "cpu", "cpu.cfs_quota_us");
    cleanup_free char *procs = cgroup_read(cg, "memory", "cgroup.procs");
    ck_assert_ptr_nonnull(mem);
    ck_assert_str_eq(mem, "67108864");
    ck_assert_str_eq(pids, "32");
    ck_assert_str_eq(quota, "50000");
    ck_assert_int_eq(atoi(procs), pid);
  } else {
    cleanup_free char *mem = cgroup_read(cg, "memory", "memory.max");
    cleanup_free char *pids = cgroup_read(cg, "pids", "pids.max");
    cleanup_free char *cpu = cgroup_read(cg, "cpu", "cpu.max");
    ck_assert_str_eq(mem, "67108864");
    ck_assert_str_eq(pids, "32");
    ck_assert_str_eq(cpu, "50000 100000");
  }
  /* the pids limit bites inside: 40 sleeps cannot all start */
  char *out = fake_run(&f, "i=0; while [ $i -lt 40 ]; do sleep 5 >/dev/null 2>&1 & i=$((i+1)); done 2>/dev/null; "
                           "ls /proc | grep -c '^[0-9]*$'");
  ck_assert_int_le(atoi(out), 32);
  free(out);
  sbx_err err = {0};
  /* stop kills every sleep (whole pid namespace) */
  ck_assert_int_eq(vmm_ns_driver.stop(&f.spec, &err), 0);
  cleanup_free char *procs = cgroup_read(cg, "pids", "cgroup.procs");
  ck_assert_str_eq(procs ? procs : "", "");
  fx_cleanup(&f);
}
END_TEST

START_TEST(test_start_failure_leaves_nothing) {
  fixture f;
  /* an "agent" the kernel cannot execute: the failure comes from inside the
   * sandbox setup, after namespaces, mounts and cgroups were made */
  char bad[PATH_MAX];
  PATHF(bad, "/tmp/sbxns-badagent.XXXXXX");
  int fd = mkstemp(bad);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(sbx_write_all(fd, "not a program\n", 14), 0);
  close(fd);
  chmod(bad, 0755);
  fx_init(&f, "host", bad);
  f.spec.memory_mib = 32;
  sbx_err err = {0};
  ck_assert_int_eq(vmm_ns_driver.create(&f.spec, &err), 0);
  pid_t pid = 0;
  ck_assert_int_lt(vmm_ns_driver.start(&f.spec, &pid, &err), 0);
  ck_assert_msg(strstr(err.msg, "execveat") && strstr(err.msg, "Exec format error"),
                "message: %s", err.msg);
  ck_assert_int_eq(err.errnum, ENOEXEC);
  ck_assert(!vmm_ns_driver.alive(&f.spec));
  char p[PATH_MAX];
  PATHF(p, "%s/%s", f.dir, NS_PIDFILE);
  ck_assert_int_ne(access(p, F_OK), 0);
  PATHF(p, "%s/%s", f.dir, NS_SOCK);
  ck_assert_int_ne(access(p, F_OK), 0);
  PATHF(p, "%s/%s", f.dir, NS_CGROUPS);
  ck_assert_int_ne(access(p, F_OK), 0); /* cgroups removed with it */
  /* a launcher that dies without a word, or is missing */
  f.spec.agent_path = self_exe;
  setenv("SBX_LAUNCH", "/bin/false", 1); /* this test's process only (fork mode) */
  ck_assert_int_lt(vmm_ns_driver.start(&f.spec, &pid, &err), 0);
  ck_assert_msg(strstr(err.msg, "exited with status 1 without a report"), "message: %s", err.msg);
  setenv("SBX_LAUNCH", "/nonexistent/sbx-launch", 1);
  ck_assert_int_lt(vmm_ns_driver.start(&f.spec, &pid, &err), 0);
  ck_assert_msg(strstr(err.msg, "/nonexistent/sbx-launch") && strstr(err.msg, "No such file"),
                "message: %s", err.msg);
  ck_assert(!vmm_ns_driver.alive(&f.spec));
  /* and the agent path is checked before anything is spawned */
  f.spec.agent_path = "/nonexistent/sbx-agent";
  ck_assert_int_lt(vmm_ns_driver.start(&f.spec, &pid, &err), 0);
  ck_assert_msg(strstr(err.msg, "/nonexistent/sbx-agent"), "message: %s", err.msg);
  fx_cleanup(&f);
  unlink(bad);
}
END_TEST

START_TEST(test_registry) {
  ck_assert_ptr_eq(vmm_driver_by_name("ns"), &vmm_ns_driver);
  ck_assert_ptr_eq(vmm_driver_by_name("vm"), &vmm_vm_driver);
  ck_assert_ptr_null(vmm_driver_by_name("firecracker"));
  ck_assert_ptr_null(vmm_driver_by_name(NULL));
  ck_assert_str_eq(vmm_ns_driver.name, "ns");
}
END_TEST

/* ---- the real agent, end to end ---- */

/* Run one EXEC through the real agent; returns stdout, exit code in *code. */
static char *agent_exec(int fd, sbx_decoder *d, uint32_t session, const char *user,
                        const char *cmd, const char *const *args, int *code) {
  json_t *a = json_array();
  for (size_t i = 0; args[i]; i++)
    json_array_append_new(a, json_string(args[i]));
  char exec_id[32];
  sbx_new_id("ex_", exec_id, sizeof exec_id);
  json_t *j = json_pack("{s:s, s:s, s:o, s:s, s:{s:s}, s:i, s:b, s:b, s:i, s:i, s:i}", "exec_id",
                        exec_id, "cmd", cmd, "args", a, "cwd", "/", "env", "PATH",
                        "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "timeout_ms", 10000,
                        "stdin_pipe", 0, "tty", 0, "credit_stdout", 1 << 20, "credit_stderr",
                        1 << 20, "grace_ms", 200);
  ck_assert_ptr_nonnull(j);
  if (user)
    json_object_set_new(j, "user", json_string(user));
  char *s = json_dumps(j, JSON_COMPACT);
  json_decref(j);
  send_frame(fd, session, SBX_F_EXEC, s, strlen(s));
  free(s);
  size_t cap = 1 << 16, len = 0;
  char *out = calloc(1, cap);
  *code = -999;
  for (;;) {
    sbx_frame_hdr h;
    static char payload[1 << 16];
    int t = read_frame(fd, d, &h, payload, sizeof payload);
    if (h.session != session)
      continue;
    if (t == SBX_F_STDOUT) {
      ck_assert_uint_lt(len + h.len, cap);
      memcpy(out + len, payload, h.len);
      len += h.len;
    } else if (t == SBX_F_EXITED) {
      json_t *e = json_loads(payload, 0, NULL);
      ck_assert_ptr_nonnull(e);
      *code = (int)json_integer_value(json_object_get(e, "exit_code"));
      json_decref(e);
      break;
    } else if (t == SBX_F_FAILED || t == SBX_F_ERROR) {
      ck_abort_msg("exec %s: %s %s", cmd, sbx_proto_type_name((uint8_t)t), payload);
    }
  }
  return out;
}

START_TEST(test_real_agent) {
  if (access(real_agent, X_OK) != 0) {
    fprintf(stderr, "test_real_agent: %s missing, skipped\n", real_agent);
    return;
  }
  fixture f;
  fx_init(&f, "host", real_agent);
  fx_start(&f);
  sbx_err err = {0};
  int fd = vmm_ns_driver.connect(&f.spec, &err);
  ck_assert_msg(fd >= 0, "connect: %s", err.msg);
  sbx_decoder *d = sbx_decoder_new();
  sbx_frame_hdr h;
  char payload[4096];
  /* the real agent speaks after our SYNC, its nonce first in the hello */
  static const char sync[] = "{\"nonce\":\"00c0ffee\"}";
  send_frame(fd, 0, SBX_F_SYNC, sync, sizeof sync - 1);
  ck_assert_int_eq(read_frame(fd, d, &h, payload, sizeof payload), SBX_F_HELLO);
  ck_assert_msg(strncmp(payload, "{\"nonce\":\"00c0ffee\",", 20) == 0, "hello: %s", payload);
  json_t *j = json_loads(payload, 0, NULL);
  ck_assert_ptr_nonnull(j);
  ck_assert_int_eq(json_integer_value(json_object_get(j, "version")), SBX_PROTO_VERSION);
  json_decref(j);
  char reply[32];
  int rn = snprintf(reply, sizeof reply, "{\"version\":%d}", SBX_PROTO_VERSION);
  send_frame(fd, 0, SBX_F_HELLO, reply, (size_t)rn);

  int code;
  char *out = agent_exec(fd, d, 1, NULL, "id", (const char *const[]){"-u", NULL}, &code);
  ck_assert_int_eq(code, 0);
  ck_assert_str_eq(out, "0\n");
  free(out);
  out = agent_exec(fd, d, 2, NULL, "cat", (const char *const[]){"/proc/self/uid_map", NULL}, &code);
  ck_assert_int_eq(code, 0);
  unsigned a, b, c;
  ck_assert_int_eq(sscanf(out, "%u %u %u", &a, &b, &c), 3);
  ck_assert_uint_eq(a, 0);
  ck_assert_uint_eq(b, NS_HOST_ID_BASE);
  ck_assert_uint_eq(c, NS_ID_COUNT);
  free(out);
  out = agent_exec(fd, d, 3, NULL, "ls", (const char *const[]){"/", NULL}, &code);
  ck_assert_int_eq(code, 0);
  ck_assert_msg(strstr(out, "\netc\n") && strstr(out, "\nproc\n") && strstr(out, "\ntmp\n"),
                "ls /: %s", out);
  free(out);
  char script[PATH_MAX + 64];
  PATHF(script, "ls -A %s | wc -l; ls %s/secret.db; echo rc=$?", f.data,
           f.data);
  char p[PATH_MAX + 16];
  PATHF(p, "%s/secret.db", f.data);
  ck_assert_int_eq(sbx_write_file(p, "secret"), 0);
  out = agent_exec(fd, d, 4, NULL, "sh", (const char *const[]){"-c", script, NULL}, &code);
  ck_assert_int_eq(code, 0);
  ck_assert_msg(strstr(out, "0\nrc=2\n") != NULL, "data dir not masked: %s", out); /* masked */
  free(out);
  /* another uid of the range: uid 1000 inside is host 101000 */
  out = agent_exec(fd, d, 5, "1000", "sh",
                   (const char *const[]){"-c", "id -u", NULL}, &code);
  ck_assert_str_eq(out, "1000\n");
  ck_assert_int_eq(code, 0);
  free(out);
  sbx_decoder_free(d);
  close(fd);
  ck_assert_int_eq(vmm_ns_driver.stop(&f.spec, &err), 0);
  fx_cleanup(&f);
}
END_TEST

/* Destroy every sandbox left under run_dir, then remove it. */
static void sweep_run_dir(void) {
  DIR *d = opendir(run_dir);
  struct dirent *e;
  while (d && (e = readdir(d))) {
    if (strncmp(e->d_name, "data.", 5) != 0)
      continue;
    char data[PATH_MAX], sbdir[PATH_MAX + 16];
    if (snprintf(data, sizeof data, "%s/%s", run_dir, e->d_name) >= (int)sizeof data ||
        snprintf(sbdir, sizeof sbdir, "%s/sandboxes", data) >= (int)sizeof sbdir)
      continue;
    DIR *sd = opendir(sbdir);
    struct dirent *se;
    while (sd && (se = readdir(sd))) {
      if (!sbx_is_id(se->d_name, "sbx_"))
        continue;
      sbx_sandbox_spec spec = {.id = se->d_name, .data_dir = data, .image = "host"};
      sbx_err err;
      if (vmm_ns_driver.destroy(&spec, &err) < 0)
        fprintf(stderr, "sweep %s: %s\n", se->d_name, err.msg);
      else
        fprintf(stderr, "swept sandbox %s left by a failed test\n", se->d_name);
    }
    if (sd)
      closedir(sd);
  }
  if (d)
    closedir(d);
  sbx_rm_rf(run_dir);
}

int main(int argc, char **argv) {
  if (argc >= 3 && strcmp(argv[1], "--listen-fd") == 0)
    return fake_agent(atoi(argv[2]));
  if (!realpath("/proc/self/exe", self_exe))
    return 1;
  memcpy(bin_dir, self_exe, sizeof bin_dir);
  for (int i = 0; i < 2; i++) /* build/tests/test_ns -> build */
    *strrchr(bin_dir, '/') = '\0';
  char launch[PATH_MAX + 16];
  if (snprintf(launch, sizeof launch, "%s/sbx-launch", bin_dir) >= (int)sizeof launch)
    return 1;
  setenv("SBX_LAUNCH", launch, 0);
  const char *ra = getenv("SBX_AGENT");
  if (snprintf(real_agent, sizeof real_agent, "%s%s", ra ? ra : bin_dir, ra ? "" : "/sbx-agent") >=
      (int)sizeof real_agent)
    return 1;
  sbx_log_threshold = SBX_LOG_ERROR;
  /* on the root file system, not /tmp: /tmp is a fresh tmpfs inside a
   * sandbox, which would hide the data dir without testing the mask */
  snprintf(run_dir, sizeof run_dir, "/var/tmp/sbx-test-ns.XXXXXX");
  if (!mkdtemp(run_dir))
    return 1;

  Suite *s = suite_create("ns");
  TCase *tc = tcase_create("ns");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_registry);
  tcase_add_test(tc, test_unknown_image);
  tcase_add_test(tc, test_lifecycle_host_image);
  tcase_add_test(tc, test_isolation);
  tcase_add_test(tc, test_limits);
  tcase_add_test(tc, test_start_failure_leaves_nothing);
  tcase_add_test(tc, test_folder_image);
  tcase_add_test(tc, test_real_agent);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  sweep_run_dir();
  return failed ? 1 : 0;
}
