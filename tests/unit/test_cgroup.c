/* test_cgroup.c - per-sandbox cgroups on the real host hierarchy (root). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* `make asan` overrides CFLAGS, dropping -D_GNU_SOURCE */
#endif
#include <check.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/util.h"
#include "vmm/cgroup.h"

static void test_name(char *out, size_t n) { sbx_new_id("test_", out, n); }

/* Every directory of the path list exists (want=true) or none does. */
static void assert_dirs(const char *paths, bool want) {
  char *copy = strdup(paths);
  int n = 0;
  for (char *line = strtok(copy, "\n"); line; line = strtok(NULL, "\n")) {
    char *sp = strchr(line, ' ');
    ck_assert_ptr_nonnull(sp);
    ck_assert_msg((access(sp + 1, F_OK) == 0) == want, "%s %s", sp + 1,
                  want ? "missing" : "left behind");
    n++;
  }
  free(copy);
  if (want)
    ck_assert_int_gt(n, 0);
}

static pid_t spawn_pause(void) {
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    pause();
    _exit(0);
  }
  return pid;
}

START_TEST(test_version) {
  int v = cgroup_version();
  ck_assert_msg(v == 1 || v == 2, "no cgroups on this host (%d)", v);
}
END_TEST

START_TEST(test_limits_attach_remove) {
  char name[32];
  test_name(name, sizeof name);
  cgroup_limits lim = {.memory_mib = 48, .cpus = 1.5, .pids = 10};
  char *paths = NULL;
  sbx_err err = {0};
  ck_assert_msg(cgroup_create(name, &lim, &paths, &err) == 0, "create: %s", err.msg);
  ck_assert_ptr_nonnull(strstr(paths, name));
  assert_dirs(paths, true);
  if (cgroup_version() == 1) {
    cleanup_free char *mem = cgroup_read(paths, "memory", "memory.limit_in_bytes");
    cleanup_free char *memsw = cgroup_read(paths, "memory", "memory.memsw.limit_in_bytes");
    cleanup_free char *pids = cgroup_read(paths, "pids", "pids.max");
    cleanup_free char *quota = cgroup_read(paths, "cpu", "cpu.cfs_quota_us");
    cleanup_free char *period = cgroup_read(paths, "cpu", "cpu.cfs_period_us");
    ck_assert_str_eq(mem, "50331648");
    if (memsw)
      ck_assert_str_eq(memsw, "50331648"); /* no swap beyond the limit */
    ck_assert_str_eq(pids, "10");
    ck_assert_str_eq(quota, "150000");
    ck_assert_str_eq(period, "100000");
  } else {
    cleanup_free char *mem = cgroup_read(paths, "memory", "memory.max");
    cleanup_free char *pids = cgroup_read(paths, "pids", "pids.max");
    cleanup_free char *cpu = cgroup_read(paths, "cpu", "cpu.max");
    ck_assert_str_eq(mem, "50331648");
    ck_assert_str_eq(pids, "10");
    ck_assert_str_eq(cpu, "150000 100000");
  }

  pid_t child = spawn_pause();
  ck_assert_msg(cgroup_attach(paths, child, &err) == 0, "attach: %s", err.msg);
  cleanup_free char *procs = cgroup_read(paths, "pids", "cgroup.procs");
  ck_assert_int_eq(atoi(procs), child);
  char p[64];
  snprintf(p, sizeof p, "/proc/%d/cgroup", (int)child);
  cleanup_free char *own = sbx_read_file(p, 4096, NULL);
  char want[64];
  snprintf(want, sizeof want, "/sbx/%s\n", name);
  ck_assert_ptr_nonnull(strstr(own, want));

  ck_assert_int_ge(cgroup_kill_all(paths), 1);
  int st;
  ck_assert_int_eq(waitpid(child, &st, 0), child);
  ck_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
  ck_assert_msg(cgroup_remove(paths, &err) == 0, "remove: %s", err.msg);
  assert_dirs(paths, false);
  ck_assert_int_eq(cgroup_remove(paths, &err), 0); /* removing twice is fine */
  free(paths);
}
END_TEST

START_TEST(test_reuse_resets_limits) {
  char name[32];
  test_name(name, sizeof name);
  cgroup_limits lim = {.memory_mib = 32, .cpus = 0.25, .pids = 7};
  char *paths = NULL, *again = NULL;
  sbx_err err = {0};
  ck_assert_int_eq(cgroup_create(name, &lim, &paths, &err), 0);
  cgroup_limits none = {0};
  ck_assert_msg(cgroup_create(name, &none, &again, &err) == 0, "re-create: %s", err.msg);
  ck_assert_str_eq(paths, again);
  cleanup_free char *pids = cgroup_read(again, "pids", "pids.max");
  ck_assert_str_eq(pids, "max");
  if (cgroup_version() == 1) {
    cleanup_free char *quota = cgroup_read(again, "cpu", "cpu.cfs_quota_us");
    cleanup_free char *mem = cgroup_read(again, "memory", "memory.limit_in_bytes");
    ck_assert_str_eq(quota, "-1");
    ck_assert_int_gt(strtoll(mem, NULL, 10), (long long)1 << 40); /* "unlimited" */
  }
  /* raising the limit again works although memsw must stay >= memory */
  lim.memory_mib = 64;
  free(again);
  ck_assert_msg(cgroup_create(name, &lim, &again, &err) == 0, "raise: %s", err.msg);
  lim.memory_mib = 16;
  free(again);
  ck_assert_msg(cgroup_create(name, &lim, &again, &err) == 0, "lower: %s", err.msg);
  ck_assert_int_eq(cgroup_remove(paths, &err), 0);
  free(paths);
  free(again);
}
END_TEST

START_TEST(test_remove_kills_tasks) {
  char name[32];
  test_name(name, sizeof name);
  cgroup_limits none = {0};
  char *paths = NULL;
  sbx_err err = {0};
  ck_assert_int_eq(cgroup_create(name, &none, &paths, &err), 0);
  pid_t a = spawn_pause(), b = spawn_pause();
  ck_assert_int_eq(cgroup_attach(paths, a, &err), 0);
  ck_assert_int_eq(cgroup_attach(paths, b, &err), 0);
  ck_assert_msg(cgroup_remove(paths, &err) == 0, "remove: %s", err.msg);
  assert_dirs(paths, false);
  int st;
  ck_assert_int_eq(waitpid(a, &st, 0), a);
  ck_assert(WIFSIGNALED(st));
  ck_assert_int_eq(waitpid(b, &st, 0), b);
  ck_assert(WIFSIGNALED(st));
  free(paths);
}
END_TEST

START_TEST(test_pids_limit_bites) {
  char name[32];
  test_name(name, sizeof name);
  cgroup_limits lim = {.pids = 5};
  char *paths = NULL;
  sbx_err err = {0};
  ck_assert_int_eq(cgroup_create(name, &lim, &paths, &err), 0);
  int gate[2];
  ck_assert_int_eq(pipe(gate), 0);
  pid_t child = fork();
  if (child == 0) {
    char b;
    close(gate[1]);
    if (read(gate[0], &b, 1) != 0) /* wait until attached (EOF) */
      _exit(3);
    int ok = 0, eagain = 0;
    for (int i = 0; i < 10; i++) {
      pid_t p = fork();
      if (p == 0) {
        pause();
        _exit(0);
      }
      if (p > 0)
        ok++;
      else if (errno == EAGAIN)
        eagain++;
    }
    _exit(ok <= 4 && eagain >= 6 ? 0 : 1);
  }
  close(gate[0]);
  ck_assert_int_eq(cgroup_attach(paths, child, &err), 0);
  close(gate[1]);
  int st;
  ck_assert_int_eq(waitpid(child, &st, 0), child);
  ck_assert(WIFEXITED(st));
  ck_assert_int_eq(WEXITSTATUS(st), 0);
  ck_assert_int_eq(cgroup_remove(paths, &err), 0); /* kills the orphans */
  free(paths);
}
END_TEST

START_TEST(test_memory_limit_bites) {
  char name[32];
  test_name(name, sizeof name);
  cgroup_limits lim = {.memory_mib = 16};
  char *paths = NULL;
  sbx_err err = {0};
  ck_assert_int_eq(cgroup_create(name, &lim, &paths, &err), 0);
  int gate[2];
  ck_assert_int_eq(pipe(gate), 0);
  pid_t child = fork();
  if (child == 0) {
    char b;
    close(gate[1]);
    if (read(gate[0], &b, 1) != 0)
      _exit(3);
    size_t n = 64u << 20;
    char *m = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
      _exit(4);
    memset(m, 1, n); /* the OOM killer ends us here */
    _exit(0);
  }
  close(gate[0]);
  ck_assert_int_eq(cgroup_attach(paths, child, &err), 0);
  close(gate[1]);
  int st;
  ck_assert_int_eq(waitpid(child, &st, 0), child);
  ck_assert_msg(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "child was not OOM-killed (status %d)",
                st);
  ck_assert_int_eq(cgroup_remove(paths, &err), 0);
  free(paths);
}
END_TEST

START_TEST(test_bad_input) {
  cgroup_limits none = {0};
  char *paths = NULL;
  sbx_err err = {0};
  ck_assert_int_lt(cgroup_create("a/b", &none, &paths, &err), 0);
  ck_assert_int_lt(cgroup_create("..", &none, &paths, &err), 0);
  ck_assert_int_lt(cgroup_create("", &none, &paths, &err), 0);
  ck_assert_ptr_null(paths);
  char name[32];
  test_name(name, sizeof name);
  ck_assert_int_eq(cgroup_create(name, &none, &paths, &err), 0);
  memset(&err, 0, sizeof err);
  ck_assert_int_lt(cgroup_attach(paths, 999999999, &err), 0);
  ck_assert_ptr_nonnull(strstr(err.msg, "cgroup"));
  ck_assert_int_ne(err.errnum, 0);
  ck_assert_int_eq(cgroup_remove(paths, &err), 0);
  ck_assert_ptr_null(cgroup_read(paths, "memory", "memory.limit_in_bytes"));
  ck_assert_int_eq(cgroup_kill_all(""), 0);
  ck_assert_int_eq(cgroup_remove("", &err), 0);
  free(paths);
}
END_TEST

int main(void) {
  sbx_log_threshold = SBX_LOG_ERROR;
  Suite *s = suite_create("cgroup");
  TCase *tc = tcase_create("cgroup");
  tcase_set_timeout(tc, 30);
  tcase_add_test(tc, test_version);
  tcase_add_test(tc, test_limits_attach_remove);
  tcase_add_test(tc, test_reuse_resets_limits);
  tcase_add_test(tc, test_remove_kills_tasks);
  tcase_add_test(tc, test_pids_limit_bites);
  tcase_add_test(tc, test_memory_limit_bites);
  tcase_add_test(tc, test_bad_input);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
