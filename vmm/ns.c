/* ns.c - the `ns` sandbox driver: Linux namespaces + overlayfs + cgroups.
 *
 * Why a launcher of our own and not bubblewrap: bubblewrap maps exactly one
 * uid into its user namespace, but an exec request's `user` must be able to
 * run as any uid of the sandbox (its /etc/passwd).  We run as root, and root
 * may write a whole range to uid_map/gid_map itself.  Every sandbox maps its
 * ids 0..65535 to host 100000..165535 (NS_HOST_ID_BASE, one shared range).
 *
 * Per sandbox, <data_dir>/sandboxes/<id>/ (0700, root) holds:
 *   upper/, work/   the overlay's private writable layer (upper is owned by
 *                   host 100000 = the sandbox's root, so it may write its /)
 *   root/           the overlay's mount point (mounted only inside the
 *                   sandbox's private mount namespaces, never on the host)
 *   lower/          staging mount point for the idmapped lower layer
 *   agent.sock      the agent's listening unix socket (0600, root)
 *   pid             "<host pid of the agent> <its start time>" (pid reuse guard)
 *   cgroups         the cgroup path list (vmm/cgroup.h)
 *   agent.log, launch.log   stderr of the agent and of sbx-launch
 *
 * start() posix_spawns sbx-launch (next to the running executable, or
 * $SBX_LAUNCH) with the spec as arguments, its stdout on a pipe, and waits up
 * to 10 s for one line: "ok <pid>" or "error <errno> <message>".  sbx-launch
 * (vmm/launch_main.c, single-threaded, so mounting between fork and exec is
 * safe) builds the sandbox and exits; the agent is reparented to host init
 * and so survives sbxd.  sbx-launch, in order:
 *   - creates the cgroups (memory, pids, cpu; v1 or v2) with the limits;
 *   - setsid, unshare(CLONE_NEWNS), makes / rprivate;
 *   - binds the agent's socket at agent.sock and listens (before the sandbox
 *     exists, so connect() works as soon as start() returns);
 *   - clones the agent process into new user, pid, ipc, uts and net
 *     namespaces (cgroup namespace: see the child) (but still in the launcher's mount namespace), writes its
 *     uid_map/gid_map "0 100000 65536" (setgroups stays allowed: the writer
 *     is privileged);
 *   - mounts the lower layer: the image ("/" for "host", or
 *     <images_dir>/<name>) cloned with open_tree(OPEN_TREE_CLONE) - not
 *     recursive: overlayfs never looks into a lower layer's submounts, and
 *     idmapping proc/sysfs submounts would fail - then idmapped with
 *     mount_setattr(MOUNT_ATTR_IDMAP) onto the child's user namespace and
 *     moved to lower/.  So host-root-owned files appear root-owned inside and
 *     the sandbox's root can copy up and change /etc or /usr in its own
 *     layer.  Without idmapped-mount support it falls back to the plain
 *     directory (files then appear owned by nobody) and logs it;
 *   - mounts overlay(lower, upper, work) on root/ (nodev), then inside it:
 *     /dev (tmpfs; binds of host null, zero, full, random, urandom, tty;
 *     symlinks fd, stdin/out/err, ptmx -> pts/ptmx), /dev/shm, /tmp (1777) and
 *     /run tmpfs owned by the sandbox's root; and masks the server's data dir
 *     and images dir (visible because the host image's lower layer is "/")
 *     with an empty read-only tmpfs, so no sandbox sees another one's layer,
 *     socket or the database.  These mounts are made by host root in a mount
 *     namespace owned by the initial user namespace, so when the sandbox
 *     copies it they are locked: the sandbox cannot unmount them.  Every
 *     mount point inside root/ is resolved with openat2(RESOLVE_IN_ROOT), so
 *     symlinks the sandbox left in its layer cannot redirect a mount;
 *   - moves the child into the cgroups, lets it go, and waits (CLOEXEC error
 *     pipe) until it has exec'd the agent, then writes the pid file and
 *     reports "ok <pid>".
 * The child: unshares its own mount namespace (owned by its user namespace)
 * and a cgroup namespace rooted at its sandbox cgroup, binds root/ onto
 * itself recursively (pivot_root refuses a locked new root; the mounts below
 * stay locked), becomes uid/gid 0 of its user namespace, sets the hostname,
 * brings `lo` up (network "none" = loopback only: the net namespace has no
 * other device), mounts a fresh /proc (its pid namespace), sysfs read-only
 * (see below), a devpts newinstance at /dev/pts, pivot_roots into root/ and
 * detaches the old root, drops the capability bounding set to a container default set,
 * sets no_new_privs, installs a seccomp filter (launch_main.c says which
 * calls), and execveat()s the agent from an fd opened on the host (the agent
 * binary need not be inside the image) as `sbx-agent --listen-fd 3`, stdout
 * and stderr to agent.log, with a minimal environment.
 *
 * /sys: a fresh sysfs, read-only.  Inside a new net namespace sysfs shows the
 * sandbox's own network devices; the rest is the host's device tree, read-only
 * and mostly owned by an unmapped host root, which tools such as nproc/lscpu
 * expect to find.  If the kernel refuses the mount it stays an empty directory.
 *
 * stop() SIGKILLs the agent (pid 1 of its pid namespace: the kernel kills
 * every process in it), after checking by start time that the pid still is
 * our agent, and waits until it and everything in its cgroups are gone.  The
 * mounts live only in the sandbox's mount namespaces and vanish with them.
 * destroy() stops, removes the cgroups and the sandbox directory.
 * start, stop and destroy of one sandbox take an flock on its directory, so
 * concurrent calls for the same sandbox run one after the other.
 *
 * What the host image is: the host's root file system only (overlayfs never
 * shows a lower layer's submounts, so /home or /srv on other file systems
 * appear as empty directories).  With the idmapped lower layer, the
 * sandbox's root reads every file of it that host root may read (e.g.
 * /etc/shadow, /root), except the masked data and images dirs; it cannot
 * change any host file (writes go to upper/).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* `make asan` overrides CFLAGS, dropping -D_GNU_SOURCE */
#endif
#include "ns.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../common/util.h"
#include "cgroup.h"
#include "driver.h"

extern char **environ;

static void free_strp(char **p) { free(*p); }
#define cleanup_str __attribute__((cleanup(free_strp)))

/* ------------------------------------------------------------------ */
/* shared helpers (ns.h)                                               */

int ns_join(char *out, size_t outsz, const char *dir, const char *name) {
  int n = snprintf(out, outsz, "%s/%s", dir, name);
  if (n < 0 || (size_t)n >= outsz)
    return errno = ENAMETOOLONG, -1;
  return 0;
}

int ns_sandbox_dir(const char *data_dir, const char *id, char *out, size_t outsz) {
  int n = snprintf(out, outsz, "%s/sandboxes/%s", data_dir, id);
  if (n < 0 || (size_t)n >= outsz)
    return errno = ENAMETOOLONG, -1;
  return 0;
}

int ns_check_image(const char *image, const char *images_dir, sbx_err *err) {
  if (!image || strcmp(image, "host") == 0)
    return 0;
  if (!sbx_valid_name(image) || strstr(image, ".."))
    return sbx_fail_field(err, "image",
                          "image must be \"host\" or the name of a folder in the images "
                          "directory (letters, digits, '_', '.', '-')");
  char p[PATH_MAX];
  struct stat st;
  if (!images_dir || snprintf(p, sizeof p, "%s/%s", images_dir, image) >= (int)sizeof p ||
      stat(p, &st) < 0 || !S_ISDIR(st.st_mode))
    return sbx_fail_field(err, "image", "no image named \"%s\" in the images directory", image);
  return 0;
}

uint64_t ns_proc_starttime(pid_t pid) {
  char p[64];
  snprintf(p, sizeof p, "/proc/%d/stat", (int)pid);
  cleanup_str char *s = sbx_read_file(p, 4096, NULL);
  if (!s)
    return 0;
  /* comm may contain spaces and ')': the fields after it follow the last ')' */
  char *rp = strrchr(s, ')');
  if (!rp)
    return 0;
  char state = 0;
  unsigned long long start = 0;
  /* after ')': state(3) ppid pgrp session tty tpgid flags minflt cminflt majflt
   * cmajflt utime stime cutime cstime priority nice threads itrealvalue starttime(22) */
  if (sscanf(rp + 1,
             " %c %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %llu",
             &state, &start) != 2)
    return 0;
  if (state == 'Z' || state == 'X' || state == 'x')
    return 0;
  return start ? (uint64_t)start : 1;
}

int ns_pidfile_write(const char *dir, pid_t pid, sbx_err *err) {
  char tmp[PATH_MAX], dst[PATH_MAX], line[64];
  if (ns_join(tmp, sizeof tmp, dir, NS_PIDFILE ".tmp") < 0)
    return sbx_fail_errno(err, errno, "ns: pid file path in %s", dir);
  if (ns_join(dst, sizeof dst, dir, NS_PIDFILE) < 0)
    return sbx_fail_errno(err, errno, "ns: pid file path in %s", dir);
  snprintf(line, sizeof line, "%d %" PRIu64 "\n", (int)pid, ns_proc_starttime(pid));
  if (sbx_write_file(tmp, line) < 0)
    return sbx_fail_errno(err, errno, "write %s", tmp);
  if (rename(tmp, dst) < 0)
    return sbx_fail_errno(err, errno, "rename %s", tmp);
  return 0;
}

int ns_pidfile_read(const char *dir, pid_t *pid, uint64_t *start) {
  char p[PATH_MAX];
  if (ns_join(p, sizeof p, dir, NS_PIDFILE) < 0)
    return -1;
  cleanup_str char *s = sbx_read_file(p, 128, NULL);
  if (!s)
    return -1;
  int v;
  unsigned long long st;
  if (sscanf(s, "%d %llu", &v, &st) != 2 || v <= 1)
    return -1;
  *pid = v;
  *start = st;
  return 0;
}

/* Fill addr for <dir>/<name>; when too long for sun_path, go through an
 * O_PATH fd of dir (*dirfd, which the caller closes after bind/connect). */
static int unix_addr(const char *dir, const char *name, struct sockaddr_un *a, int *dirfd) {
  memset(a, 0, sizeof *a);
  a->sun_family = AF_UNIX;
  *dirfd = -1;
  if (snprintf(a->sun_path, sizeof a->sun_path, "%s/%s", dir, name) < (int)sizeof a->sun_path)
    return 0;
  *dirfd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (*dirfd < 0)
    return -1;
  if (snprintf(a->sun_path, sizeof a->sun_path, "/proc/self/fd/%d/%s", *dirfd, name) >=
      (int)sizeof a->sun_path)
    return errno = ENAMETOOLONG, -1;
  return 0;
}

int ns_unix_listen(const char *dir, const char *name) {
  struct sockaddr_un a;
  cleanup_fd int dirfd = -1;
  if (unix_addr(dir, name, &a, &dirfd) < 0)
    return -1;
  cleanup_fd int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -1;
  unlink(a.sun_path);
  mode_t old = umask(077); /* the socket file is born 0600: no window */
  int r = bind(fd, (struct sockaddr *)&a, sizeof a);
  umask(old);
  if (r < 0 || listen(fd, 128) < 0)
    return -1;
  return sbx_steal_fd(&fd);
}

int ns_unix_connect(const char *dir, const char *name) {
  struct sockaddr_un a;
  cleanup_fd int dirfd = -1;
  if (unix_addr(dir, name, &a, &dirfd) < 0)
    return -1;
  cleanup_fd int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -1;
  int r;
  do
    r = connect(fd, (struct sockaddr *)&a, sizeof a);
  while (r < 0 && errno == EINTR);
  if (r < 0)
    return -1;
  return sbx_steal_fd(&fd);
}

/* ------------------------------------------------------------------ */
/* the driver                                                          */

static int check_spec(const sbx_sandbox_spec *s, sbx_err *err) {
  if (!s || !sbx_is_id(s->id, "sbx_"))
    return sbx_fail(err, SBX_E_INTERNAL, 0, "ns: bad sandbox id");
  if (!s->data_dir || s->data_dir[0] != '/')
    return sbx_fail(err, SBX_E_INTERNAL, 0, "ns: data dir must be an absolute path");
  if (s->network && *s->network && strcmp(s->network, "none") != 0)
    return sbx_fail_field(err, "network", "network must be \"none\" (loopback only)");
  return 0;
}

static int sandbox_dir(const sbx_sandbox_spec *s, char *out, size_t n, sbx_err *err) {
  if (check_spec(s, err) < 0)
    return -1;
  if (ns_sandbox_dir(s->data_dir, s->id, out, n) < 0)
    return sbx_fail_errno(err, errno, "ns: sandbox dir of %s", s->id);
  return 0;
}

char *ns_read_cgroups(const char *dir) {
  char p[PATH_MAX];
  if (ns_join(p, sizeof p, dir, NS_CGROUPS) < 0)
    return NULL;
  return sbx_read_file(p, 64 * 1024, NULL);
}

/* The agent's pid if the pid file names a live process started at the
 * recorded time (so a reused pid is never taken for our agent), else 0. */
pid_t ns_live_pid(const char *dir) {
  pid_t pid;
  uint64_t start;
  if (ns_pidfile_read(dir, &pid, &start) < 0)
    return 0;
  uint64_t now = ns_proc_starttime(pid);
  return (now != 0 && now == start) ? pid : 0;
}

static int ns_create(const sbx_sandbox_spec *s, sbx_err *err) {
  char dir[PATH_MAX], p[PATH_MAX + 32];
  if (sandbox_dir(s, dir, sizeof dir, err) < 0)
    return -1;
  if (ns_check_image(s->image, s->images_dir, err) < 0)
    return -1;
  snprintf(p, sizeof p, "%s/sandboxes", s->data_dir);
  if (sbx_mkdir_p(p, 0700) < 0)
    return sbx_fail_errno(err, errno, "ns: mkdir %s", p);
  if (mkdir(dir, 0700) < 0 && errno != EEXIST)
    return sbx_fail_errno(err, errno, "ns: mkdir %s", dir);
  if (chmod(dir, 0700) < 0)
    return sbx_fail_errno(err, errno, "ns: chmod %s", dir);
  static const struct {
    const char *name;
    mode_t mode;
    bool sandbox_owned;
  } sub[] = {{NS_UPPER, 0755, true}, {NS_WORK, 0700, false}, {NS_ROOT, 0755, false},
             {NS_LOWER, 0700, false}};
  for (size_t i = 0; i < SBX_ARRAY_LEN(sub); i++) {
    snprintf(p, sizeof p, "%s/%s", dir, sub[i].name);
    if (mkdir(p, sub[i].mode) < 0 && errno != EEXIST)
      return sbx_fail_errno(err, errno, "ns: mkdir %s", p);
    /* upper/ is the sandbox's "/": its root (host 100000) must own it */
    if (sub[i].sandbox_owned && chown(p, NS_HOST_ID_BASE, NS_HOST_ID_BASE) < 0)
      return sbx_fail_errno(err, errno, "ns: chown %s", p);
  }
  return 0;
}

/* Serialize start/stop/destroy of one sandbox (two concurrent starts would
 * fight over the same layer and cgroups).  Returns the locked dir fd, or -1
 * with errno (ENOENT when the sandbox dir does not exist). */
int ns_lock_dir(const char *dir) {
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0)
    return -1;
  while (flock(fd, LOCK_EX) < 0) {
    if (errno != EINTR) {
      int e = errno;
      close(fd);
      return errno = e, -1;
    }
  }
  return fd;
}

int ns_stop_dir(const char *dir, bool destroy, int (*stop_locked)(const char *, sbx_err *),
                sbx_err *err) {
  cleanup_fd int lock = ns_lock_dir(dir);
  if (lock < 0) {
    if (errno == ENOENT)
      return 0; /* never created, or destroyed already: nothing runs */
    return sbx_fail_errno(err, errno, "lock %s", dir);
  }
  if (stop_locked(dir, err) < 0)
    return -1;
  if (!destroy)
    return 0;
  cleanup_str char *cg = ns_read_cgroups(dir);
  if (cg && cgroup_remove(cg, err) < 0)
    return -1;
  if (sbx_rm_rf(dir) < 0)
    return sbx_fail_errno(err, errno, "remove %s", dir);
  return 0;
}

/* Where sbx-launch is: $SBX_LAUNCH, else next to the running executable. */
static int launcher_path(char *out, size_t n, sbx_err *err) {
  const char *env = getenv("SBX_LAUNCH");
  if (env && *env) {
    snprintf(out, n, "%s", env);
  } else {
    char exe[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len < 0)
      return sbx_fail_errno(err, errno, "ns: readlink /proc/self/exe");
    exe[len] = '\0';
    char *slash = strrchr(exe, '/');
    if (slash)
      *slash = '\0';
    if (ns_join(out, n, exe, "sbx-launch") < 0)
      return sbx_fail_errno(err, errno, "ns: launcher path");
  }
  if (access(out, X_OK) < 0)
    return sbx_fail_errno(err, errno, "ns: launcher %s", out);
  return 0;
}

int ns_kill_sandbox(const char *dir, sbx_err *err) {
  pid_t pid = ns_live_pid(dir);
  if (pid > 0 && kill(pid, SIGKILL) < 0 && errno != ESRCH)
    return sbx_fail_errno(err, errno, "kill %d (the sandbox's pid file)", (int)pid);
  cleanup_str char *cg = ns_read_cgroups(dir);
  /* a pid namespace dies with its init, a VM with QEMU; give them up to 5 s,
   * polling fast at first because it usually takes a few ms */
  int64_t deadline = sbx_mono_ms() + 5000;
  for (int i = 0; sbx_mono_ms() < deadline; i++) {
    bool up = pid > 0 && ns_live_pid(dir) == pid;
    int left = cg ? cgroup_kill_all(cg) : 0;
    if (!up && left == 0)
      return 0;
    sbx_sleep_ms(i < 20 ? 1 : 20);
  }
  return sbx_fail(err, SBX_E_INTERNAL, 0, "processes of sandbox %s did not exit within 5 s",
                  strrchr(dir, '/') + 1);
}

void ns_unlink_in(const char *dir, const char *name) {
  char p[PATH_MAX];
  if (ns_join(p, sizeof p, dir, name) < 0)
    return;
  unlink(p);
}

/* Read the launcher's report line within the deadline.  Returns 1 with the
 * line (no newline), 0 on EOF without a line, -1 on timeout. */
static int read_report(int fd, char *line, size_t n, int64_t deadline) {
  size_t got = 0;
  line[0] = '\0';
  for (;;) {
    int64_t left = deadline - sbx_mono_ms();
    if (left <= 0)
      return -1;
    struct pollfd pfd = {fd, POLLIN, 0};
    int r = poll(&pfd, 1, (int)left);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      return -1;
    ssize_t k = read(fd, line + got, n - 1 - got);
    if (k < 0 && errno == EINTR)
      continue;
    if (k <= 0)
      return 0;
    got += (size_t)k;
    line[got] = '\0';
    char *nl = strchr(line, '\n');
    if (nl) {
      *nl = '\0';
      return 1;
    }
    if (got == n - 1)
      return 1;
  }
}

void ns_log_tail(const char *dir, const char *name, char *out, size_t n) {
  char p[PATH_MAX];
  if (ns_join(p, sizeof p, dir, name) < 0)
    return (void)(out[0] = '\0');
  cleanup_str char *s = sbx_read_file(p, 1024 * 1024, NULL);
  out[0] = '\0';
  if (!s)
    return;
  size_t len = strlen(s);
  while (len && s[len - 1] == '\n')
    s[--len] = '\0';
  char *last = strrchr(s, '\n');
  snprintf(out, n, "%s", last ? last + 1 : s);
}

void ns_spawn_clean(posix_spawnattr_t *at, short flags) {
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  sigdelset(&all, SIGKILL);
  sigdelset(&all, SIGSTOP);
  posix_spawnattr_setsigmask(at, &none);
  posix_spawnattr_setsigdefault(at, &all);
  posix_spawnattr_setflags(at, (short)(flags | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF));
}

static void spawn_cleanup(posix_spawn_file_actions_t *fa, posix_spawnattr_t *at) {
  posix_spawn_file_actions_destroy(fa);
  posix_spawnattr_destroy(at);
}

/* Run sbx-launch; on success *lpid is its pid and *rfd the read end of its
 * report pipe. */
static int spawn_launcher(const sbx_sandbox_spec *s, const char *dir, pid_t *lpid, int *rfd,
                          sbx_err *err) {
  char launcher[PATH_MAX], logp[PATH_MAX], mem[32], cpus[32], pids[32];
  if (launcher_path(launcher, sizeof launcher, err) < 0)
    return -1;
  if (ns_join(logp, sizeof logp, dir, NS_LAUNCH_LOG) < 0)
    return sbx_fail_errno(err, errno, "ns: log path in %s", dir);
  snprintf(mem, sizeof mem, "%" PRId64, s->memory_mib);
  snprintf(cpus, sizeof cpus, "%.6f", s->cpus);
  snprintf(pids, sizeof pids, "%" PRId64, s->pids);
  const char *argv[] = {"sbx-launch",
                        "--id", s->id,
                        "--hostname", s->hostname && *s->hostname ? s->hostname : s->id,
                        "--image", s->image && *s->image ? s->image : "host",
                        "--data-dir", s->data_dir,
                        "--images-dir", s->images_dir ? s->images_dir : "",
                        "--agent", s->agent_path ? s->agent_path : "",
                        "--memory-mib", mem,
                        "--cpus", cpus,
                        "--pids", pids,
                        "--network", "none",
                        NULL};
  int p[2];
  if (pipe2(p, O_CLOEXEC) < 0)
    return sbx_fail_errno(err, errno, "ns: pipe");
  cleanup_fd int r = p[0], w = p[1];
  posix_spawn_file_actions_t fa;
  posix_spawnattr_t at;
  posix_spawn_file_actions_init(&fa);
  posix_spawnattr_init(&at);
  ns_spawn_clean(&at, 0);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, w, 1);
  posix_spawn_file_actions_addopen(&fa, 2, logp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  posix_spawn_file_actions_addclosefrom_np(&fa, 3); /* what sbxd inherited, too */
  pid_t pid;
  int e = posix_spawn(&pid, launcher, &fa, &at, (char *const *)argv, environ);
  spawn_cleanup(&fa, &at);
  if (e != 0)
    return sbx_fail_errno(err, e, "ns: spawn %s", launcher);
  *lpid = pid;
  *rfd = sbx_steal_fd(&r);
  return 0;
}

static int ns_start(const sbx_sandbox_spec *s, pid_t *out_pid, sbx_err *err) {
  char dir[PATH_MAX];
  if (sandbox_dir(s, dir, sizeof dir, err) < 0)
    return -1;
  cleanup_fd int lock = ns_lock_dir(dir);
  if (lock < 0)
    return sbx_fail_errno(err, errno, "ns: sandbox dir %s (not created?)", dir);
  if (ns_check_image(s->image, s->images_dir, err) < 0)
    return -1;
  if (!s->agent_path || s->agent_path[0] != '/')
    return sbx_fail(err, SBX_E_INTERNAL, EINVAL, "ns: the agent path must be absolute");
  if (access(s->agent_path, X_OK) < 0)
    return sbx_fail_errno(err, errno, "ns: agent binary %s", s->agent_path);
  pid_t running = ns_live_pid(dir);
  if (running > 0) {
    *out_pid = running; /* already running: start is idempotent */
    return 0;
  }
  /* leftovers of a crash (processes of a dead agent's cgroup, stale files) */
  if (ns_kill_sandbox(dir, err) < 0)
    return -1;
  ns_unlink_in(dir, NS_PIDFILE);
  ns_unlink_in(dir, NS_SOCK);

  pid_t lpid = -1;
  cleanup_fd int rfd = -1;
  if (spawn_launcher(s, dir, &lpid, &rfd, err) < 0)
    return -1;
  char line[1024];
  int got = read_report(rfd, line, sizeof line, sbx_mono_ms() + NS_LAUNCH_TIMEOUT_MS);
  if (got < 0) {
    /* the launcher made itself a session and process group leader; its
     * not-yet-exec'd child is in that group too */
    kill(-lpid, SIGKILL);
    kill(lpid, SIGKILL);
  }
  int status = 0;
  while (waitpid(lpid, &status, 0) < 0 && errno == EINTR)
    ;
  int apid = 0;
  if (got == 1 && sscanf(line, "ok %d", &apid) == 1 && apid > 1) {
    *out_pid = apid;
    log_info("ns: sandbox %s started, agent pid %d", s->id, apid);
    return 0;
  }
  /* failure: leave nothing running */
  sbx_err ignore;
  ns_kill_sandbox(dir, &ignore);
  cleanup_str char *cg = ns_read_cgroups(dir);
  if (cg && cgroup_remove(cg, &ignore) == 0)
    ns_unlink_in(dir, NS_CGROUPS);
  ns_unlink_in(dir, NS_PIDFILE);
  ns_unlink_in(dir, NS_SOCK);
  if (got < 0)
    return sbx_fail(err, SBX_E_INTERNAL, ETIMEDOUT,
                    "ns: sandbox %s: sbx-launch did not report within %d ms", s->id,
                    NS_LAUNCH_TIMEOUT_MS);
  int en = 0, off = 0;
  if (got == 1 && sscanf(line, "error %d %n", &en, &off) == 1 && off > 0)
    return sbx_fail(err, SBX_E_INTERNAL, en, "ns: start %s: %s", s->id, line + off);
  char tail[512];
  ns_log_tail(dir, NS_LAUNCH_LOG, tail, sizeof tail);
  return sbx_fail(err, SBX_E_INTERNAL, 0, "ns: start %s: sbx-launch %s %d without a report%s%s",
                  s->id, WIFSIGNALED(status) ? "killed by signal" : "exited with status",
                  WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status),
                  tail[0] ? "; log: " : "", tail);
}

/* stop with the sandbox's lock held */
static int stop_locked(const char *dir, sbx_err *err) {
  if (ns_kill_sandbox(dir, err) < 0)
    return -1;
  ns_unlink_in(dir, NS_SOCK);
  ns_unlink_in(dir, NS_PIDFILE);
  return 0;
}

static int ns_stop(const sbx_sandbox_spec *s, sbx_err *err) {
  char dir[PATH_MAX];
  if (sandbox_dir(s, dir, sizeof dir, err) < 0)
    return -1;
  return ns_stop_dir(dir, false, stop_locked, err);
}

static int ns_destroy(const sbx_sandbox_spec *s, sbx_err *err) {
  char dir[PATH_MAX];
  if (sandbox_dir(s, dir, sizeof dir, err) < 0)
    return -1;
  return ns_stop_dir(dir, true, stop_locked, err);
}

static bool ns_alive(const sbx_sandbox_spec *s) {
  char dir[PATH_MAX];
  if (sandbox_dir(s, dir, sizeof dir, NULL) < 0)
    return false;
  return ns_live_pid(dir) > 0;
}

static int ns_log_path(const sbx_sandbox_spec *s, char *out, size_t n, sbx_err *err) {
  char dir[PATH_MAX];
  if (sandbox_dir(s, dir, sizeof dir, err) < 0)
    return -1;
  if (ns_join(out, n, dir, NS_AGENT_LOG) < 0)
    return sbx_fail_errno(err, errno, "ns: log path");
  return 0;
}

int ns_connect_agent(const char *dir, const char *sock, sbx_err *err) {
  int fd = ns_unix_connect(dir, sock);
  if (fd >= 0)
    return fd;
  int e = errno;
  const char *id = strrchr(dir, '/') + 1;
  if (ns_live_pid(dir) <= 0)
    return sbx_fail(err, SBX_E_NOT_RUNNING, e, "sandbox %s is not running", id);
  return sbx_fail_errno(err, e, "connect to the agent of %s (%s)", id, sock);
}

static int ns_connect(const sbx_sandbox_spec *s, sbx_err *err) {
  char dir[PATH_MAX];
  if (sandbox_dir(s, dir, sizeof dir, err) < 0)
    return -1;
  return ns_connect_agent(dir, NS_SOCK, err);
}

const sbx_driver vmm_ns_driver = {
    .name = "ns",
    .create = ns_create,
    .start = ns_start,
    .stop = ns_stop,
    .destroy = ns_destroy,
    .alive = ns_alive,
    .connect = ns_connect,
    .log_path = ns_log_path,
};
