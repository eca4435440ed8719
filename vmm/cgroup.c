/* cgroup.c - per-sandbox cgroups on v1 or v2 (contract in cgroup.h). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* `make asan` overrides CFLAGS, dropping -D_GNU_SOURCE */
#endif
#include "cgroup.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

#include "../common/util.h"

#ifndef CGROUP2_SUPER_MAGIC
#define CGROUP2_SUPER_MAGIC 0x63677270
#endif

#define CG_ROOT "/sys/fs/cgroup"
#define CPU_PERIOD_US 100000

static const char *const v1_controllers[] = {"memory", "pids", "cpu"};

static void free_strp(char **p) { free(*p); }
#define cleanup_str __attribute__((cleanup(free_strp)))

static void fclosep(FILE **f) {
  if (*f)
    fclose(*f);
}
#define cleanup_file __attribute__((cleanup(fclosep)))

/* True if the comma-separated list has the item. */
static bool csv_has(const char *list, const char *item) {
  size_t n = strlen(item);
  for (const char *p = list; p && *p;) {
    const char *e = strchr(p, ',');
    size_t len = e ? (size_t)(e - p) : strlen(p);
    if (len == n && strncmp(p, item, n) == 0)
      return true;
    p = e ? e + 1 : NULL;
  }
  return false;
}

/* Whitespace-separated list (cgroup.controllers) has the item. */
static bool wslist_has(const char *list, const char *item) {
  size_t n = strlen(item);
  for (const char *p = list; *p;) {
    while (*p == ' ' || *p == '\n')
      p++;
    size_t len = strcspn(p, " \n");
    if (len == n && strncmp(p, item, n) == 0)
      return true;
    p += len;
  }
  return false;
}

int cgroup_version(void) {
  struct statfs sf;
  if (statfs(CG_ROOT, &sf) == 0 && sf.f_type == CGROUP2_SUPER_MAGIC)
    return 2;
  cleanup_file FILE *f = fopen("/proc/self/mountinfo", "re");
  if (!f)
    return 0;
  char line[4096];
  while (fgets(line, sizeof line, f)) {
    const char *sep = strstr(line, " - cgroup ");
    if (sep)
      return 1;
  }
  return 0;
}

/* The calling process's cgroup path for a v1 controller (or v2 when ctrl is
 * NULL), from /proc/self/cgroup.  Writes e.g. "/process_api/ab12" to out. */
static int self_cgroup_path(const char *ctrl, char *out, size_t outsz) {
  cleanup_file FILE *f = fopen("/proc/self/cgroup", "re");
  if (!f)
    return -1;
  char line[4096];
  while (fgets(line, sizeof line, f)) {
    line[strcspn(line, "\n")] = '\0';
    char *c1 = strchr(line, ':');
    char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
    if (!c2)
      continue;
    *c2 = '\0';
    const char *ctrls = c1 + 1, *path = c2 + 1;
    bool match = ctrl ? csv_has(ctrls, ctrl) : (strcmp(line, "0") == 0 && *ctrls == '\0');
    if (match) {
      snprintf(out, outsz, "%s", path);
      return 0;
    }
  }
  return errno = ENOENT, -1;
}

/* Mount point and mount root of the v1 hierarchy that has ctrl. */
static int v1_mount(const char *ctrl, char *mnt, size_t mntsz, char *root, size_t rootsz) {
  cleanup_file FILE *f = fopen("/proc/self/mountinfo", "re");
  if (!f)
    return -1;
  char line[4096];
  while (fgets(line, sizeof line, f)) {
    line[strcspn(line, "\n")] = '\0';
    char *sep = strstr(line, " - cgroup ");
    if (!sep)
      continue;
    /* super options are the last field: "... - cgroup cgroup rw,memory" */
    char *opts = strrchr(sep, ' ');
    if (!opts || !csv_has(opts + 1, ctrl))
      continue;
    char r[PATH_MAX], m[PATH_MAX];
    if (sscanf(line, "%*s %*s %*s %4095s %4095s", r, m) != 2)
      continue;
    snprintf(mnt, mntsz, "%s", m);
    snprintf(root, rootsz, "%s", r);
    return 0;
  }
  return errno = ENOENT, -1;
}

/* Join mount point, the process's path relative to the mount root, and tail. */
static void join_cg(char *out, size_t outsz, const char *mnt, const char *root, const char *self,
                    const char *tail) {
  size_t rl = strlen(root);
  if (strcmp(root, "/") != 0 && strncmp(self, root, rl) == 0)
    self += rl;
  if (strcmp(self, "/") == 0)
    self = "";
  snprintf(out, outsz, "%s%s/%s", mnt, self, tail);
}

static int write_cg(const char *dir, const char *file, const char *val) {
  char p[PATH_MAX];
  snprintf(p, sizeof p, "%s/%s", dir, file);
  cleanup_fd int fd = open(p, O_WRONLY | O_CLOEXEC);
  if (fd < 0)
    return -1;
  return sbx_write_all(fd, val, strlen(val));
}

static bool cg_file_exists(const char *dir, const char *file) {
  char p[PATH_MAX];
  snprintf(p, sizeof p, "%s/%s", dir, file);
  return access(p, F_OK) == 0;
}

static int set_file(const char *dir, const char *file, const char *val, sbx_err *err) {
  if (write_cg(dir, file, val) < 0)
    return sbx_fail_errno(err, errno, "cgroup: write %s to %s/%s", val, dir, file);
  return 0;
}

/* v1 limits for one controller directory. */
static int v1_limits(const char *ctrl, const char *dir, const cgroup_limits *lim, sbx_err *err) {
  char v[64];
  if (strcmp(ctrl, "memory") == 0) {
    if (lim->memory_mib > 0)
      snprintf(v, sizeof v, "%" PRId64, lim->memory_mib * 1024 * 1024);
    else
      snprintf(v, sizeof v, "-1");
    bool memsw = cg_file_exists(dir, "memory.memsw.limit_in_bytes");
    /* memsw must stay >= the memory limit at every step: raise memsw first,
     * and when lowering, lower the memory limit first. */
    if (memsw && write_cg(dir, "memory.memsw.limit_in_bytes", v) == 0)
      return set_file(dir, "memory.limit_in_bytes", v, err);
    if (set_file(dir, "memory.limit_in_bytes", v, err) < 0)
      return -1;
    return memsw ? set_file(dir, "memory.memsw.limit_in_bytes", v, err) : 0;
  }
  if (strcmp(ctrl, "pids") == 0) {
    if (lim->pids > 0)
      snprintf(v, sizeof v, "%" PRId64, lim->pids);
    else
      snprintf(v, sizeof v, "max");
    return set_file(dir, "pids.max", v, err);
  }
  /* cpu */
  if (set_file(dir, "cpu.cfs_period_us", "100000", err) < 0)
    return -1;
  if (lim->cpus > 0) {
    int64_t q = (int64_t)(lim->cpus * CPU_PERIOD_US);
    snprintf(v, sizeof v, "%" PRId64, q < 1000 ? 1000 : q);
  } else {
    snprintf(v, sizeof v, "-1");
  }
  return set_file(dir, "cpu.cfs_quota_us", v, err);
}

static int v2_limits(const char *dir, const cgroup_limits *lim, sbx_err *err) {
  char v[64];
  if (cg_file_exists(dir, "memory.max")) {
    if (lim->memory_mib > 0)
      snprintf(v, sizeof v, "%" PRId64, lim->memory_mib * 1024 * 1024);
    else
      snprintf(v, sizeof v, "max");
    if (set_file(dir, "memory.max", v, err) < 0)
      return -1;
    if (cg_file_exists(dir, "memory.swap.max") &&
        set_file(dir, "memory.swap.max", lim->memory_mib > 0 ? "0" : "max", err) < 0)
      return -1;
  } else if (lim->memory_mib > 0) {
    return sbx_fail(err, SBX_E_INTERNAL, 0, "cgroup: memory controller not available in %s", dir);
  }
  if (cg_file_exists(dir, "pids.max")) {
    if (lim->pids > 0)
      snprintf(v, sizeof v, "%" PRId64, lim->pids);
    else
      snprintf(v, sizeof v, "max");
    if (set_file(dir, "pids.max", v, err) < 0)
      return -1;
  } else if (lim->pids > 0) {
    return sbx_fail(err, SBX_E_INTERNAL, 0, "cgroup: pids controller not available in %s", dir);
  }
  if (cg_file_exists(dir, "cpu.max")) {
    if (lim->cpus > 0) {
      int64_t q = (int64_t)(lim->cpus * CPU_PERIOD_US);
      snprintf(v, sizeof v, "%" PRId64 " %d", q < 1000 ? 1000 : q, CPU_PERIOD_US);
    } else {
      snprintf(v, sizeof v, "max %d", CPU_PERIOD_US);
    }
    if (set_file(dir, "cpu.max", v, err) < 0)
      return -1;
  } else if (lim->cpus > 0) {
    return sbx_fail(err, SBX_E_INTERNAL, 0, "cgroup: cpu controller not available in %s", dir);
  }
  return 0;
}

/* mkdir that reports whether it created the directory. */
static int mkdir_new(const char *path, bool *created, sbx_err *err) {
  *created = false;
  if (mkdir(path, 0755) == 0) {
    *created = true;
    return 0;
  }
  if (errno == EEXIST)
    return 0;
  return sbx_fail_errno(err, errno, "cgroup: mkdir %s", path);
}

/* Append "ctrl dir\n" to the growing list. */
static int list_add(char **list, const char *ctrl, const char *dir) {
  size_t old = *list ? strlen(*list) : 0, add = strlen(ctrl) + strlen(dir) + 2;
  char *n = realloc(*list, old + add + 1);
  if (!n)
    return -1;
  snprintf(n + old, add + 1, "%s %s\n", ctrl, dir);
  *list = n;
  return 0;
}

/* v2: enable controllers for children of dir, as many as it offers. */
static int v2_enable(const char *dir, const cgroup_limits *lim, sbx_err *err) {
  char p[PATH_MAX];
  snprintf(p, sizeof p, "%s/cgroup.controllers", dir);
  cleanup_str char *have = sbx_read_file(p, 4096, NULL);
  if (!have)
    return sbx_fail_errno(err, errno, "cgroup: read %s", p);
  static const char *const want[] = {"memory", "pids", "cpu"};
  for (size_t i = 0; i < SBX_ARRAY_LEN(want); i++) {
    if (!wslist_has(have, want[i])) {
      log_warn("cgroup: controller %s not available in %s", want[i], dir);
      continue;
    }
    char v[32];
    snprintf(v, sizeof v, "+%s", want[i]);
    if (write_cg(dir, "cgroup.subtree_control", v) < 0) {
      int e = errno;
      bool needed = (i == 0 && lim->memory_mib > 0) || (i == 1 && lim->pids > 0) ||
                    (i == 2 && lim->cpus > 0);
      if (needed)
        return sbx_fail_errno(err, e, "cgroup: enable %s in %s/cgroup.subtree_control", want[i],
                              dir);
      log_warn("cgroup: cannot enable %s in %s: %s", want[i], dir, strerror(e));
    }
  }
  return 0;
}

static int create_v2(const char *name, const cgroup_limits *lim, char **list, sbx_err *err) {
  char self[PATH_MAX], base[PATH_MAX], dir[PATH_MAX + 64];
  if (self_cgroup_path(NULL, self, sizeof self) < 0)
    return sbx_fail_errno(err, errno, "cgroup: find own v2 cgroup in /proc/self/cgroup");
  join_cg(base, sizeof base, CG_ROOT, "/", self, "sbx");
  bool created_base, created_dir;
  if (mkdir_new(base, &created_base, err) < 0)
    return -1;
  /* The parent of "sbx" holds processes (us), so it may refuse to delegate
   * controllers ("no internal processes"); then fall back to the root. */
  char parent[PATH_MAX];
  snprintf(parent, sizeof parent, "%s", base);
  *strrchr(parent, '/') = '\0';
  sbx_err e2 = {0};
  if (v2_enable(parent, lim, &e2) < 0) {
    if (created_base)
      rmdir(base);
    log_warn("cgroup: %s; using %s/sbx instead", e2.msg, CG_ROOT);
    snprintf(base, sizeof base, "%s/sbx", CG_ROOT);
    if (mkdir_new(base, &created_base, err) < 0 || v2_enable(CG_ROOT, lim, err) < 0)
      return -1;
  }
  if (v2_enable(base, lim, err) < 0)
    return -1;
  snprintf(dir, sizeof dir, "%s/%s", base, name);
  if (mkdir_new(dir, &created_dir, err) < 0)
    return -1;
  if (v2_limits(dir, lim, err) < 0) {
    if (created_dir)
      rmdir(dir);
    return -1;
  }
  if (list_add(list, "unified", dir) < 0) {
    if (created_dir)
      rmdir(dir);
    return sbx_fail_errno(err, ENOMEM, "cgroup: path list");
  }
  return 0;
}

static bool limit_asked(const char *ctrl, const cgroup_limits *lim) {
  if (strcmp(ctrl, "memory") == 0)
    return lim->memory_mib > 0;
  if (strcmp(ctrl, "pids") == 0)
    return lim->pids > 0;
  return lim->cpus > 0;
}

static int create_v1(const char *name, const cgroup_limits *lim, char **list, sbx_err *err) {
  for (size_t i = 0; i < SBX_ARRAY_LEN(v1_controllers); i++) {
    const char *ctrl = v1_controllers[i];
    char mnt[PATH_MAX], root[PATH_MAX], self[PATH_MAX], base[PATH_MAX], dir[PATH_MAX + 64];
    if (v1_mount(ctrl, mnt, sizeof mnt, root, sizeof root) < 0 ||
        self_cgroup_path(ctrl, self, sizeof self) < 0) {
      if (limit_asked(ctrl, lim))
        return sbx_fail(err, SBX_E_INTERNAL, 0,
                        "cgroup: a %s limit was asked for but the host has no %s controller",
                        ctrl, ctrl);
      log_warn("cgroup: no %s controller mounted; sandboxes get no %s cgroup", ctrl, ctrl);
      continue;
    }
    join_cg(base, sizeof base, mnt, root, self, "sbx");
    bool created_base, created_dir;
    if (mkdir_new(base, &created_base, err) < 0)
      return -1;
    snprintf(dir, sizeof dir, "%s/%s", base, name);
    if (mkdir_new(dir, &created_dir, err) < 0)
      return -1;
    (void)created_base; /* "sbx" is shared by every sandbox: never removed here */
    int r = v1_limits(ctrl, dir, lim, err);
    if (r == 0 && list_add(list, ctrl, dir) < 0)
      r = sbx_fail_errno(err, ENOMEM, "cgroup: path list");
    if (r < 0) {
      if (created_dir)
        rmdir(dir);
      return -1;
    }
  }
  return 0;
}

int cgroup_create(const char *name, const cgroup_limits *lim, char **paths, sbx_err *err) {
  if (!name || !*name || strchr(name, '/') || strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
    return sbx_fail(err, SBX_E_INTERNAL, 0, "cgroup: bad cgroup name");
  cleanup_str char *list = strdup("");
  if (!list)
    return sbx_fail_errno(err, ENOMEM, "cgroup: path list");
  int v = cgroup_version();
  int r = 0;
  if (v == 2)
    r = create_v2(name, lim, &list, err);
  else if (v == 1)
    r = create_v1(name, lim, &list, err);
  else if (lim->memory_mib > 0 || lim->pids > 0 || lim->cpus > 0)
    return sbx_fail(err, SBX_E_INTERNAL, 0, "cgroup: limits asked for but no cgroup file system "
                                            "is mounted at " CG_ROOT);
  else
    log_warn("cgroup: no cgroup file system mounted; sandboxes run without limits");
  if (r < 0) {
    cgroup_remove(list, NULL);
    return -1;
  }
  *paths = steal_pointer(&list);
  return 0;
}

/* Calls fn(ctrl, dir, ctx) for each line of the list; stops at a negative
 * return and returns it. */
static int each_path(const char *paths, int (*fn)(const char *, const char *, void *), void *ctx) {
  int ret = 0;
  for (const char *p = paths; p && *p;) {
    const char *nl = strchr(p, '\n');
    size_t len = nl ? (size_t)(nl - p) : strlen(p);
    char line[PATH_MAX + 64];
    if (len > 0 && len < sizeof line) {
      memcpy(line, p, len);
      line[len] = '\0';
      char *sp = strchr(line, ' ');
      if (sp) {
        *sp = '\0';
        int r = fn(line, sp + 1, ctx);
        if (r < 0)
          return r;
        ret += r;
      }
    }
    p = nl ? nl + 1 : p + len;
  }
  return ret;
}

struct attach_ctx {
  pid_t pid;
  sbx_err *err;
};

static int attach_one(const char *ctrl, const char *dir, void *vctx) {
  struct attach_ctx *c = vctx;
  char v[32];
  snprintf(v, sizeof v, "%d", (int)c->pid);
  if (write_cg(dir, "cgroup.procs", v) < 0)
    return sbx_fail_errno(c->err, errno, "cgroup: move pid %d into %s (%s)", (int)c->pid, dir,
                          ctrl);
  return 0;
}

int cgroup_attach(const char *paths, pid_t pid, sbx_err *err) {
  struct attach_ctx c = {pid, err};
  return each_path(paths, attach_one, &c) < 0 ? -1 : 0;
}

static int kill_one(const char *ctrl, const char *dir, void *ctx) {
  (void)ctrl, (void)ctx;
  char p[PATH_MAX];
  snprintf(p, sizeof p, "%s/cgroup.procs", dir);
  cleanup_file FILE *f = fopen(p, "re");
  if (!f)
    return 0;
  int n = 0;
  long pid;
  while (fscanf(f, "%ld", &pid) == 1) {
    if (pid > 1 && kill((pid_t)pid, SIGKILL) == 0)
      n++;
  }
  return n;
}

int cgroup_kill_all(const char *paths) { return each_path(paths, kill_one, NULL); }

static int rmdir_one(const char *ctrl, const char *dir, void *vctx) {
  sbx_err *err = vctx;
  for (int i = 0; i < 100; i++) {
    if (rmdir(dir) == 0 || errno == ENOENT)
      break;
    if (errno != EBUSY || i == 99)
      return sbx_fail_errno(err, errno, "cgroup: remove %s (%s)", dir, ctrl);
    kill_one(ctrl, dir, NULL);
    struct timespec ts = {0, 20 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  /* The shared "sbx" parent stays: removing it would race with another
   * sandbox being created under it, and an empty cgroup costs nothing. */
  return 0;
}

int cgroup_remove(const char *paths, sbx_err *err) {
  cgroup_kill_all(paths);
  return each_path(paths, rmdir_one, err) < 0 ? -1 : 0;
}

struct read_ctx {
  const char *ctrl;
  char dir[PATH_MAX];
};

static int find_one(const char *ctrl, const char *dir, void *vctx) {
  struct read_ctx *c = vctx;
  if (strcmp(ctrl, c->ctrl) == 0 || strcmp(ctrl, "unified") == 0) {
    snprintf(c->dir, sizeof c->dir, "%s", dir);
    return -1; /* found: stop */
  }
  return 0;
}

char *cgroup_read(const char *paths, const char *controller, const char *file) {
  struct read_ctx c = {.ctrl = controller};
  c.dir[0] = '\0';
  each_path(paths, find_one, &c);
  if (!c.dir[0])
    return NULL;
  char p[PATH_MAX + 256];
  snprintf(p, sizeof p, "%s/%s", c.dir, file);
  char *s = sbx_read_file(p, 4096, NULL);
  if (s)
    s[strcspn(s, "\n")] = '\0';
  return s;
}
