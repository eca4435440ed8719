/* launch_main.c - sbx-launch: builds one sandbox and starts its agent.
 *
 * Run by the ns driver (vmm/ns.c, whose header comment is the design), as
 * root, once per sandbox start:
 *
 *   sbx-launch --id sbx_<16 hex> --hostname H --image host|<name>
 *              --data-dir D --images-dir I --agent /abs/sbx-agent
 *              [--memory-mib N] [--cpus F] [--pids N] [--network none]
 *
 * It reports exactly one line on stdout, "ok <agent host pid>" or
 * "error <errno> <message>", and exits (0 / 1).  Diagnostics go to stderr
 * (the driver points it at <sandbox dir>/launch.log).  It is single-threaded,
 * so mounting and forking without exec in between is safe here.
 *
 * Inside the sandbox the agent runs as uid 0 of its user namespace (host
 * 100000) with the capability bounding set cut to the usual container
 * default (below), no_new_privs, and a seccomp filter that refuses: new user
 * namespaces (unshare/clone with CLONE_NEWUSER; clone3 answers ENOSYS so libc
 * falls back to clone), the kernel keyring (keyctl, add_key, request_key),
 * bpf, perf_event_open, userfaultfd, kexec, module loading,
 * open_by_handle_at/name_to_handle_at, syslog (the host's kernel log) and
 * io_uring (a large attack surface that container runtimes block too).  Syscalls of other ABIs (i386, x32)
 * kill the caller (libseccomp's default for a foreign arch).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* `make asan` overrides CFLAGS, dropping -D_GNU_SOURCE */
#endif
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <limits.h>
#include <linux/capability.h>
#include <linux/openat2.h>
#include <net/if.h>
#include <sched.h>
#include <seccomp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../common/util.h"
#include "cgroup.h"
#include "ns.h"

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

/* fds the agent child arranges right before exec */
#define FD_LISTEN 3 /* handed to the agent (--listen-fd 3) */
#define FD_ERR 4    /* CLOEXEC error pipe to the launcher */
#define FD_EXE 5    /* CLOEXEC fd of the agent binary, for execveat */

typedef struct launch_opts {
  const char *id, *hostname, *image, *data_dir, *images_dir, *agent, *network;
  cgroup_limits lim;
} launch_opts;

/* Everything about the sandbox's files, filled in by the launcher before
 * clone so the child only uses ready values. */
typedef struct launch_ctx {
  launch_opts o;
  char dir[PATH_MAX];      /* <data_dir>/sandboxes/<id> */
  char root[PATH_MAX];     /* dir/root */
  char lower[PATH_MAX];    /* dir/lower */
  char data_real[PATH_MAX];
  char images_real[PATH_MAX];
  int listen_fd, agent_fd, log_fd, null_fd;
  int go_r, go_w;   /* launcher -> child: "go" */
  int err_r, err_w; /* child -> launcher: an error line, or EOF at exec */
} launch_ctx;

/* ------------------------------------------------------------------ */
/* error reporting                                                     */

static int report_fd = STDOUT_FILENO;

/* Fill err like sbx_fail_errno, for the one-line report. */
static int fail(sbx_err *err, int e, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(sbx_err *err, int e, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  err->kind = SBX_E_INTERNAL;
  err->errnum = e;
  vsnprintf(err->msg, sizeof err->msg, fmt, ap);
  va_end(ap);
  if (e) {
    size_t n = strlen(err->msg);
    snprintf(err->msg + n, sizeof err->msg - n, ": %s", strerror(e));
  }
  return -1;
}

static void report_line(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void report_line(int fd, const char *fmt, ...) {
  char line[1024];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(line, sizeof line - 1, fmt, ap);
  va_end(ap);
  if (n < 0)
    return;
  if ((size_t)n > sizeof line - 2)
    n = (int)sizeof line - 2;
  for (int i = 0; i < n; i++)
    if (line[i] == '\n')
      line[i] = ' ';
  line[n++] = '\n';
  (void)sbx_write_all(fd, line, (size_t)n);
}

/* ------------------------------------------------------------------ */
/* options                                                             */

static int parse_i64(const char *s, int64_t *out) {
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (errno || end == s || *end || v < 0)
    return -1;
  *out = v;
  return 0;
}

static int parse_opts(int argc, char **argv, launch_opts *o, sbx_err *err) {
  static const struct option longopts[] = {
      {"id", required_argument, NULL, 'i'},         {"hostname", required_argument, NULL, 'h'},
      {"image", required_argument, NULL, 'm'},      {"data-dir", required_argument, NULL, 'd'},
      {"images-dir", required_argument, NULL, 'I'}, {"agent", required_argument, NULL, 'a'},
      {"memory-mib", required_argument, NULL, 'M'}, {"cpus", required_argument, NULL, 'c'},
      {"pids", required_argument, NULL, 'p'},       {"network", required_argument, NULL, 'n'},
      {NULL, 0, NULL, 0}};
  memset(o, 0, sizeof *o);
  o->image = "host";
  o->network = "none";
  o->images_dir = "";
  int c;
  opterr = 0;
  while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
    switch (c) {
    case 'i': o->id = optarg; break;
    case 'h': o->hostname = optarg; break;
    case 'm': o->image = optarg; break;
    case 'd': o->data_dir = optarg; break;
    case 'I': o->images_dir = optarg; break;
    case 'a': o->agent = optarg; break;
    case 'n': o->network = optarg; break;
    case 'M':
      if (parse_i64(optarg, &o->lim.memory_mib) < 0)
        return fail(err, EINVAL, "bad --memory-mib %s", optarg);
      break;
    case 'p':
      if (parse_i64(optarg, &o->lim.pids) < 0)
        return fail(err, EINVAL, "bad --pids %s", optarg);
      break;
    case 'c': {
      char *end;
      o->lim.cpus = strtod(optarg, &end);
      if (end == optarg || *end || !(o->lim.cpus >= 0))
        return fail(err, EINVAL, "bad --cpus %s", optarg);
      break;
    }
    default:
      return fail(err, EINVAL, "unknown or incomplete option %s", argv[optind - 1]);
    }
  }
  if (!o->id || !sbx_is_id(o->id, "sbx_"))
    return fail(err, EINVAL, "--id must be a sandbox id");
  if (!o->data_dir || o->data_dir[0] != '/')
    return fail(err, EINVAL, "--data-dir must be an absolute path");
  if (!o->agent || o->agent[0] != '/')
    return fail(err, EINVAL, "--agent must be an absolute path");
  if (strcmp(o->network, "none") != 0)
    return fail(err, EINVAL, "--network %s: only \"none\" is supported", o->network);
  if (!o->hostname || !*o->hostname)
    o->hostname = o->id;
  if (strlen(o->hostname) > 63)
    return fail(err, EINVAL, "--hostname longer than 63 bytes");
  return 0;
}

/* ------------------------------------------------------------------ */
/* mounting helpers                                                    */

/* Resolve rel (absolute inside the sandbox) below rootfd as if rootfd were
 * "/": symlinks the sandbox left in its layer stay inside it. */
static int open_in_root(int rootfd, const char *rel, int flags) {
  struct open_how how = {.flags = (uint64_t)(flags | O_CLOEXEC),
                         .resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS};
  return (int)syscall(SYS_openat2, rootfd, rel, &how, sizeof how);
}

/* An O_PATH fd of the directory (or file, when is_file) rel inside rootfd,
 * created (owned by the sandbox's root) when missing. */
static int mountpoint_in_root(int rootfd, const char *rel, bool is_file, sbx_err *err) {
  int fd = open_in_root(rootfd, rel, O_PATH | (is_file ? 0 : O_DIRECTORY));
  if (fd >= 0 || errno != ENOENT)
    return fd >= 0 ? fd : fail(err, errno, "open %s in the sandbox root", rel);
  char parent[PATH_MAX];
  snprintf(parent, sizeof parent, "%s", rel);
  char *slash = strrchr(parent, '/');
  if (!slash || !slash[1])
    return fail(err, EINVAL, "bad mount point %s", rel);
  const char *base = rel + (slash - parent) + 1;
  if (slash == parent)
    slash[1] = '\0';
  else
    *slash = '\0';
  cleanup_fd int pfd = open_in_root(rootfd, parent, O_PATH | O_DIRECTORY);
  if (pfd < 0)
    return fail(err, errno, "open %s in the sandbox root", parent);
  if (is_file) {
    cleanup_fd int f = openat(pfd, base, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (f < 0 && errno != EEXIST)
      return fail(err, errno, "create %s in the sandbox root", rel);
  } else if (mkdirat(pfd, base, 0755) < 0 && errno != EEXIST) {
    return fail(err, errno, "mkdir %s in the sandbox root", rel);
  }
  fchownat(pfd, base, NS_HOST_ID_BASE, NS_HOST_ID_BASE, AT_SYMLINK_NOFOLLOW);
  fd = open_in_root(rootfd, rel, O_PATH | (is_file ? 0 : O_DIRECTORY));
  return fd >= 0 ? fd : fail(err, errno, "open %s in the sandbox root", rel);
}

/* mount(2) onto rel inside rootfd, through the resolved fd. */
static int mount_in_root(int rootfd, const char *rel, const char *src, const char *fstype,
                         unsigned long flags, const char *data, bool is_file, sbx_err *err) {
  cleanup_fd int fd = mountpoint_in_root(rootfd, rel, is_file, err);
  if (fd < 0)
    return -1;
  char target[64];
  snprintf(target, sizeof target, "/proc/self/fd/%d", fd);
  if (mount(src, target, fstype, flags, data) < 0)
    return fail(err, errno, "mount %s on %s", fstype ? fstype : src, rel);
  return 0;
}

static int symlink_in_root(int rootfd, const char *target, const char *dir, const char *name,
                           sbx_err *err) {
  cleanup_fd int dfd = open_in_root(rootfd, dir, O_PATH | O_DIRECTORY);
  if (dfd < 0)
    return fail(err, errno, "open %s in the sandbox root", dir);
  if (symlinkat(target, dfd, name) < 0 && errno != EEXIST)
    return fail(err, errno, "symlink %s/%s", dir, name);
  fchownat(dfd, name, NS_HOST_ID_BASE, NS_HOST_ID_BASE, AT_SYMLINK_NOFOLLOW);
  return 0;
}

/* The lower layer: the image idmapped onto the sandbox's user namespace and
 * mounted read-only at ctx->lower.  Returns 1 if idmapped, 0 if the kernel or
 * file system cannot idmap (the caller uses the plain path), -1 on error. */
static int mount_idmapped_lower(launch_ctx *c, const char *src, int userns_fd, sbx_err *err) {
  cleanup_fd int tfd = open_tree(AT_FDCWD, src, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
  if (tfd < 0) {
    if (errno == ENOSYS || errno == EINVAL)
      return 0;
    return fail(err, errno, "open_tree %s", src);
  }
  struct mount_attr a = {.attr_set = MOUNT_ATTR_IDMAP | MOUNT_ATTR_RDONLY | MOUNT_ATTR_NODEV |
                                     MOUNT_ATTR_NOSUID,
                         .userns_fd = (uint64_t)userns_fd};
  if (mount_setattr(tfd, "", AT_EMPTY_PATH, &a, sizeof a) < 0) {
    if (errno == ENOSYS || errno == EINVAL || errno == EPERM || errno == EOPNOTSUPP)
      return 0;
    return fail(err, errno, "mount_setattr(MOUNT_ATTR_IDMAP) on %s", src);
  }
  if (move_mount(tfd, "", AT_FDCWD, c->lower, MOVE_MOUNT_F_EMPTY_PATH) < 0)
    return fail(err, errno, "move_mount idmapped %s to %s", src, c->lower);
  return 1;
}

/* Overlay options cannot carry ',' or ':' in paths (nor the '\' escapes). */
static bool plain_path(const char *p) { return !strpbrk(p, ",:\\"); }

/* Mask dir (a host path) inside the sandbox with an empty read-only tmpfs,
 * if that path exists in the sandbox's tree. */
static int mask_dir(int rootfd, const char *dir, sbx_err *err) {
  if (!dir[0] || strcmp(dir, "/") == 0)
    return 0;
  cleanup_fd int fd = open_in_root(rootfd, dir, O_PATH | O_DIRECTORY);
  if (fd < 0)
    return 0; /* not visible (or not a directory) inside: nothing to hide */
  char target[64];
  snprintf(target, sizeof target, "/proc/self/fd/%d", fd);
  if (mount("tmpfs", target, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
            "mode=0755,size=4k,nr_inodes=16") < 0)
    return fail(err, errno, "mask %s in the sandbox", dir);
  return 0;
}

/* Launcher side of the file system: the overlay root and everything in it
 * that host root mounts (so the sandbox finds these mounts locked). */
static int build_root(launch_ctx *c, int userns_fd, sbx_err *err) {
  char src[PATH_MAX], upper[PATH_MAX], work[PATH_MAX], opts[3 * PATH_MAX + 64];
  if (strcmp(c->o.image, "host") == 0)
    snprintf(src, sizeof src, "/");
  else if (ns_join(src, sizeof src, c->o.images_dir, c->o.image) < 0)
    return fail(err, errno, "image path");
  if (ns_join(upper, sizeof upper, c->dir, NS_UPPER) < 0 ||
      ns_join(work, sizeof work, c->dir, NS_WORK) < 0)
    return fail(err, errno, "layer path");
  if (!plain_path(src) || !plain_path(upper) || !plain_path(c->lower))
    return fail(err, EINVAL, "paths of the image and data dir must not contain ',', ':' or '\\'");
  /* the writable layer's root is the sandbox's "/": its root must own it */
  struct stat st;
  if (stat(upper, &st) < 0)
    return fail(err, errno, "stat %s", upper);
  if ((st.st_uid != NS_HOST_ID_BASE || st.st_gid != NS_HOST_ID_BASE) &&
      chown(upper, NS_HOST_ID_BASE, NS_HOST_ID_BASE) < 0)
    return fail(err, errno, "chown %s", upper);
  for (const char *const *d = (const char *const[]){work, c->root, c->lower, NULL}; *d; d++)
    if (mkdir(*d, 0700) < 0 && errno != EEXIST)
      return fail(err, errno, "mkdir %s", *d);

  int idm = mount_idmapped_lower(c, src, userns_fd, err);
  if (idm < 0)
    return -1;
  if (idm == 0)
    log_warn("sandbox %s: idmapped mounts not supported for %s; the image's files appear "
             "owned by nobody inside",
             c->o.id, src);
  snprintf(opts, sizeof opts, "lowerdir=%s,upperdir=%s,workdir=%s", idm ? c->lower : src, upper,
           work);
  if (mount("overlay", c->root, "overlay", MS_NODEV, opts) < 0)
    return fail(err, errno, "mount overlay on %s (lowerdir %s)", c->root, src);
  /* overlayfs keeps its own reference to the lower layer */
  if (idm && umount2(c->lower, MNT_DETACH) < 0)
    log_warn("umount %s: %s", c->lower, strerror(errno));

  cleanup_fd int rootfd = open(c->root, O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (rootfd < 0)
    return fail(err, errno, "open %s", c->root);
  if (mask_dir(rootfd, c->data_real, err) < 0 || mask_dir(rootfd, c->images_real, err) < 0)
    return -1;

  char tmpfs_dev[128], tmpfs_sticky[128], tmpfs_run[128];
  snprintf(tmpfs_dev, sizeof tmpfs_dev, "mode=0755,size=64k,nr_inodes=1024,uid=%u,gid=%u",
           NS_HOST_ID_BASE, NS_HOST_ID_BASE);
  snprintf(tmpfs_sticky, sizeof tmpfs_sticky, "mode=1777,uid=%u,gid=%u", NS_HOST_ID_BASE,
           NS_HOST_ID_BASE);
  snprintf(tmpfs_run, sizeof tmpfs_run, "mode=0755,uid=%u,gid=%u", NS_HOST_ID_BASE,
           NS_HOST_ID_BASE);
  if (mount_in_root(rootfd, "/dev", "tmpfs", "tmpfs", MS_NOSUID | MS_NOEXEC | MS_NODEV, tmpfs_dev,
                    false, err) < 0)
    return -1;
  /* device nodes are binds of the host's: each bind keeps the host /dev
   * mount's flags, so the nodev tmpfs under them does not matter */
  static const char *const devs[] = {"null", "zero", "full", "random", "urandom", "tty"};
  for (size_t i = 0; i < SBX_ARRAY_LEN(devs); i++) {
    char hostp[64], rel[64];
    snprintf(hostp, sizeof hostp, "/dev/%s", devs[i]);
    snprintf(rel, sizeof rel, "/dev/%s", devs[i]);
    if (mount_in_root(rootfd, rel, hostp, NULL, MS_BIND, NULL, true, err) < 0)
      return -1;
  }
  static const char *const links[][2] = {{"/proc/self/fd", "fd"},     {"/proc/self/fd/0", "stdin"},
                                         {"/proc/self/fd/1", "stdout"}, {"/proc/self/fd/2", "stderr"},
                                         {"pts/ptmx", "ptmx"}};
  for (size_t i = 0; i < SBX_ARRAY_LEN(links); i++)
    if (symlink_in_root(rootfd, links[i][0], "/dev", links[i][1], err) < 0)
      return -1;
  cleanup_fd int pts = mountpoint_in_root(rootfd, "/dev/pts", false, err);
  if (pts < 0)
    return -1;
  if (mount_in_root(rootfd, "/dev/shm", "tmpfs", "tmpfs", MS_NOSUID | MS_NODEV, tmpfs_sticky,
                    false, err) < 0 ||
      mount_in_root(rootfd, "/tmp", "tmpfs", "tmpfs", MS_NOSUID | MS_NODEV, tmpfs_sticky, false,
                    err) < 0 ||
      mount_in_root(rootfd, "/run", "tmpfs", "tmpfs", MS_NOSUID | MS_NODEV, tmpfs_run, false,
                    err) < 0)
    return -1;
  /* the child mounts these; make sure the mount points exist */
  cleanup_fd int procfd = mountpoint_in_root(rootfd, "/proc", false, err);
  if (procfd < 0)
    return -1;
  cleanup_fd int sysfd = mountpoint_in_root(rootfd, "/sys", false, err);
  if (sysfd < 0)
    return -1;
  return 0;
}

static int write_map(pid_t pid, const char *file, sbx_err *err) {
  char p[64], line[64];
  snprintf(p, sizeof p, "/proc/%d/%s", (int)pid, file);
  snprintf(line, sizeof line, "0 %u %u\n", NS_HOST_ID_BASE, NS_ID_COUNT);
  cleanup_fd int fd = open(p, O_WRONLY | O_CLOEXEC);
  if (fd < 0 || sbx_write_all(fd, line, strlen(line)) < 0)
    return fail(err, errno, "write %s", p);
  return 0;
}

/* ------------------------------------------------------------------ */
/* the agent child                                                     */

static int lo_up(sbx_err *err) {
  cleanup_fd int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0)
    return fail(err, errno, "socket for lo");
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "lo");
  if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0)
    return fail(err, errno, "SIOCGIFFLAGS lo");
  ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
  if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
    return fail(err, errno, "bring lo up");
  return 0;
}

/* The usual container default capability set (Docker's/runc's). */
static bool cap_kept(int cap) {
  switch (cap) {
  case CAP_CHOWN: case CAP_DAC_OVERRIDE: case CAP_FSETID: case CAP_FOWNER: case CAP_MKNOD:
  case CAP_NET_RAW: case CAP_SETGID: case CAP_SETUID: case CAP_SETFCAP: case CAP_SETPCAP:
  case CAP_NET_BIND_SERVICE: case CAP_SYS_CHROOT: case CAP_KILL: case CAP_AUDIT_WRITE:
    return true;
  default:
    return false;
  }
}

static int drop_caps(sbx_err *err) {
  int last = CAP_LAST_CAP;
  cleanup_free char *s = sbx_read_file("/proc/sys/kernel/cap_last_cap", 32, NULL);
  if (s)
    last = atoi(s);
  for (int cap = 0; cap <= last; cap++)
    if (!cap_kept(cap) && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno != EINVAL)
      return fail(err, errno, "drop capability %d from the bounding set", cap);
  return 0;
}

static void seccomp_freep(scmp_filter_ctx *c) {
  if (*c)
    seccomp_release(*c);
}

static int install_seccomp(sbx_err *err) {
  __attribute__((cleanup(seccomp_freep))) scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
  if (!ctx)
    return fail(err, ENOMEM, "seccomp_init");
  static const int denied[] = {
      SCMP_SYS(keyctl),       SCMP_SYS(add_key),           SCMP_SYS(request_key),
      SCMP_SYS(bpf),          SCMP_SYS(perf_event_open),   SCMP_SYS(userfaultfd),
      SCMP_SYS(kexec_load),   SCMP_SYS(kexec_file_load),   SCMP_SYS(init_module),
      SCMP_SYS(finit_module), SCMP_SYS(delete_module),     SCMP_SYS(open_by_handle_at),
      SCMP_SYS(name_to_handle_at), SCMP_SYS(syslog),       SCMP_SYS(io_uring_setup),
      SCMP_SYS(io_uring_enter), SCMP_SYS(io_uring_register),
      /* the mounts are made; nothing inside needs to change them (without this
       * only the missing capability refuses, after the kernel parsed the call) */
      SCMP_SYS(mount),        SCMP_SYS(umount2),           SCMP_SYS(pivot_root),
      SCMP_SYS(open_tree),    SCMP_SYS(move_mount),        SCMP_SYS(fsopen),
      SCMP_SYS(fsconfig),     SCMP_SYS(fsmount),           SCMP_SYS(fspick),
      SCMP_SYS(mount_setattr), SCMP_SYS(swapon),           SCMP_SYS(swapoff),
      SCMP_SYS(reboot),       SCMP_SYS(acct),              SCMP_SYS(quotactl)};
  int r = 0;
  for (size_t i = 0; i < SBX_ARRAY_LEN(denied) && r == 0; i++)
    r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), denied[i], 0);
  if (r == 0)
    r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(unshare), 1,
                         SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_NEWUSER, CLONE_NEWUSER));
  if (r == 0)
    r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(clone), 1,
                         SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_NEWUSER, CLONE_NEWUSER));
  /* clone3 passes flags in memory, out of seccomp's reach: say "no clone3"
   * and libc falls back to clone */
  if (r == 0)
    r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0);
  if (r == 0)
    r = seccomp_load(ctx);
  if (r < 0)
    return fail(err, -r, "seccomp filter");
  return 0;
}

/* Move fd to a number >= 10 (CLOEXEC), so the final dup3s cannot clobber it. */
static int park_fd(int fd) { return fcntl(fd, F_DUPFD_CLOEXEC, 10); }

static int child_setup(launch_ctx *c, sbx_err *err) {
  char b;
  if (read(c->go_r, &b, 1) != 1 || b != 'g')
    _exit(1); /* the launcher gave up: it reports */
  close(c->go_r);
  /* our own mount namespace, owned by our user namespace; the launcher's
   * mounts come along locked */
  /* the cgroup namespace starts at our sandbox cgroup, where the launcher
   * has put us by now: /proc/self/cgroup shows "/", no host paths */
  if (unshare(CLONE_NEWNS | CLONE_NEWCGROUP) < 0)
    return fail(err, errno, "unshare(CLONE_NEWNS|CLONE_NEWCGROUP)");
  /* The launcher's mounts reached us locked, the overlay root too, and
   * pivot_root refuses a locked new root.  A recursive bind of it onto
   * itself is our own mount (unlocked) while every mount below it stays
   * locked (the data dir masks cannot be lifted). */
  if (mount(c->root, c->root, NULL, MS_BIND | MS_REC, NULL) < 0)
    return fail(err, errno, "bind %s onto itself", c->root);
  /* opened after the bind so mounts below land on it, and before
   * setresuid while host uid 0 may still walk the 0700 sandbox dir */
  cleanup_fd int rootfd = open(c->root, O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (rootfd < 0)
    return fail(err, errno, "open %s", c->root);
  if (setgroups(0, NULL) < 0 || setresgid(0, 0, 0) < 0 || setresuid(0, 0, 0) < 0)
    return fail(err, errno, "become root of the sandbox's user namespace");
  /* the uid change cleared it; until exec, die with the launcher */
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (sethostname(c->o.hostname, strlen(c->o.hostname)) < 0)
    return fail(err, errno, "sethostname %s", c->o.hostname);
  if (lo_up(err) < 0)
    return -1;
  if (mount_in_root(rootfd, "/proc", "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL,
                    false, err) < 0)
    return -1;
  sbx_err serr;
  if (mount_in_root(rootfd, "/sys", "sysfs", "sysfs",
                    MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL, false, &serr) < 0)
    log_warn("sandbox %s: no /sys: %s", c->o.id, serr.msg);
  if (mount_in_root(rootfd, "/dev/pts", "devpts", "devpts", MS_NOSUID | MS_NOEXEC,
                    "newinstance,ptmxmode=0666,mode=0620,gid=5", false, err) < 0)
    return -1;
  if (fchdir(rootfd) < 0)
    return fail(err, errno, "chdir %s", c->root);
  /* pivot onto "." with "." as put_old, then detach the old root stacked
   * under it: no directory for the old root is needed (bubblewrap's way) */
  if (syscall(SYS_pivot_root, ".", ".") < 0)
    return fail(err, errno, "pivot_root %s", c->root);
  if (umount2(".", MNT_DETACH) < 0)
    return fail(err, errno, "detach the old root");
  if (chdir("/") < 0)
    return fail(err, errno, "chdir /");

  int l = park_fd(c->listen_fd), e = park_fd(c->err_w), x = park_fd(c->agent_fd),
      lg = park_fd(c->log_fd), nl = park_fd(c->null_fd);
  if (l < 0 || e < 0 || x < 0 || lg < 0 || nl < 0)
    return fail(err, errno, "arrange fds");
  c->err_w = e; /* for reporting from here on */
  if (dup3(l, FD_LISTEN, 0) < 0 || dup3(e, FD_ERR, O_CLOEXEC) < 0 ||
      dup3(x, FD_EXE, O_CLOEXEC) < 0 || dup2(nl, 0) < 0 || dup2(lg, 1) < 0 || dup2(lg, 2) < 0)
    return fail(err, errno, "arrange fds");
  c->err_w = FD_ERR;
  if (syscall(SYS_close_range, FD_EXE + 1, ~0U, 0) < 0)
    for (int fd = FD_EXE + 1; fd < 1024; fd++)
      close(fd);

  if (drop_caps(err) < 0)
    return -1;
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
    return fail(err, errno, "PR_SET_NO_NEW_PRIVS");
  if (install_seccomp(err) < 0)
    return -1;
  char fdarg[16];
  snprintf(fdarg, sizeof fdarg, "%d", FD_LISTEN);
  char *const argv[] = {"sbx-agent", "--listen-fd", fdarg, NULL};
  char *const envp[] = {"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                        "HOME=/root", NULL};
  prctl(PR_SET_PDEATHSIG, 0);
  syscall(SYS_execveat, FD_EXE, "", argv, envp, AT_EMPTY_PATH);
  return fail(err, errno, "execveat %s", c->o.agent);
}

__attribute__((noreturn)) static void child_main(launch_ctx *c) {
  close(c->go_w);
  close(c->err_r);
  sbx_err err = {0};
  child_setup(c, &err);
  report_line(c->err_w, "%d %s", err.errnum, err.msg);
  _exit(127);
}

/* ------------------------------------------------------------------ */
/* the launcher                                                        */

/* Everything between clone and "go": maps, file system, cgroups. */
static int parent_setup(launch_ctx *c, pid_t child, const char *cgpaths, sbx_err *err) {
  if (write_map(child, "uid_map", err) < 0 || write_map(child, "gid_map", err) < 0)
    return -1;
  char p[64];
  snprintf(p, sizeof p, "/proc/%d/ns/user", (int)child);
  cleanup_fd int userns = open(p, O_RDONLY | O_CLOEXEC);
  if (userns < 0)
    return fail(err, errno, "open %s", p);
  if (build_root(c, userns, err) < 0)
    return -1;
  if (cgroup_attach(cgpaths, child, err) < 0)
    return -1;
  return 0;
}

static int prepare(launch_ctx *c, sbx_err *err) {
  if (ns_sandbox_dir(c->o.data_dir, c->o.id, c->dir, sizeof c->dir) < 0 ||
      ns_join(c->root, sizeof c->root, c->dir, NS_ROOT) < 0 ||
      ns_join(c->lower, sizeof c->lower, c->dir, NS_LOWER) < 0)
    return fail(err, ENAMETOOLONG, "sandbox dir path");
  struct stat st;
  if (stat(c->dir, &st) < 0 || !S_ISDIR(st.st_mode))
    return fail(err, errno ? errno : ENOTDIR, "sandbox dir %s (not created?)", c->dir);
  if (!realpath(c->o.data_dir, c->data_real))
    return fail(err, errno, "realpath %s", c->o.data_dir);
  if (!c->o.images_dir[0] || !realpath(c->o.images_dir, c->images_real))
    c->images_real[0] = '\0'; /* no images dir: nothing to hide */
  if (ns_check_image(c->o.image, c->o.images_dir, err) < 0)
    return -1;
  c->agent_fd = open(c->o.agent, O_RDONLY | O_CLOEXEC);
  if (c->agent_fd < 0)
    return fail(err, errno, "open agent %s", c->o.agent);
  char logp[PATH_MAX];
  if (ns_join(logp, sizeof logp, c->dir, NS_AGENT_LOG) < 0)
    return fail(err, errno, "agent log path");
  c->log_fd = open(logp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (c->log_fd < 0)
    return fail(err, errno, "open %s", logp);
  c->null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (c->null_fd < 0)
    return fail(err, errno, "open /dev/null");
  return 0;
}

static int launch(launch_ctx *c, char **cgpaths, pid_t *out, sbx_err *err) {
  if (prepare(c, err) < 0)
    return -1;
  /* our own session and process group: the driver can kill us and a
   * not-yet-exec'd child together, and no terminal signal reaches us */
  setsid();
  if (cgroup_create(c->o.id, &c->o.lim, cgpaths, err) < 0)
    return -1;
  char cgfile[PATH_MAX];
  if (ns_join(cgfile, sizeof cgfile, c->dir, NS_CGROUPS) < 0 || sbx_write_file(cgfile, *cgpaths) < 0)
    return fail(err, errno, "write %s/%s", c->dir, NS_CGROUPS);
  if (unshare(CLONE_NEWNS) < 0)
    return fail(err, errno, "unshare(CLONE_NEWNS)");
  if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
    return fail(err, errno, "make / rprivate");
  c->listen_fd = ns_unix_listen(c->dir, NS_SOCK);
  if (c->listen_fd < 0)
    return fail(err, errno, "listen on %s/%s", c->dir, NS_SOCK);
  int gp[2], ep[2];
  if (pipe2(gp, O_CLOEXEC) < 0)
    return fail(err, errno, "pipe");
  if (pipe2(ep, O_CLOEXEC) < 0)
    return fail(err, errno, "pipe");
  c->go_r = gp[0], c->go_w = gp[1], c->err_r = ep[0], c->err_w = ep[1];

  /* not CLONE_NEWNS: the child stays in our mount namespace until we have
   * built the root (the idmap needs its user namespace first), then makes
   * its own */
  long pid = syscall(SYS_clone, CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS |
                                    CLONE_NEWNET | SIGCHLD,
                     NULL, NULL, NULL, 0);
  if (pid < 0)
    return fail(err, errno, "clone the sandbox's namespaces");
  if (pid == 0)
    child_main(c);
  close(c->go_r);
  close(c->err_w);
  pid_t child = (pid_t)pid;
  if (parent_setup(c, child, *cgpaths, err) < 0 || sbx_write_all(c->go_w, "g", 1) < 0) {
    if (err->kind == SBX_E_NONE)
      fail(err, errno, "start the agent child");
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    return -1;
  }
  close(c->go_w);
  char line[1024];
  ssize_t n = sbx_read_full(c->err_r, line, sizeof line - 1);
  if (n > 0) {
    line[n] = '\0';
    line[strcspn(line, "\n")] = '\0';
    int e = 0, off = 0;
    if (sscanf(line, "%d %n", &e, &off) < 1)
      off = 0;
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    err->kind = SBX_E_INTERNAL;
    err->errnum = e;
    snprintf(err->msg, sizeof err->msg, "%s", line + off);
    return -1;
  }
  int status;
  if (waitpid(child, &status, WNOHANG) == child) {
    return fail(err, 0, "the agent exited at once (%s %d); see %s/%s",
                WIFSIGNALED(status) ? "signal" : "status",
                WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status), c->dir,
                NS_AGENT_LOG);
  }
  if (ns_pidfile_write(c->dir, child, err) < 0) {
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    return -1;
  }
  *out = child;
  return 0;
}

int main(int argc, char **argv) {
  launch_ctx c;
  memset(&c, 0, sizeof c);
  c.listen_fd = c.agent_fd = c.log_fd = c.null_fd = -1;
  c.go_r = c.go_w = c.err_r = c.err_w = -1;
  sbx_err err = {0};
  /* our report channel must not leak into the agent */
  sbx_set_cloexec(report_fd, true);
  if (parse_opts(argc, argv, &c.o, &err) < 0) {
    report_line(report_fd, "error %d %s", err.errnum, err.msg);
    return 2;
  }
  char *cgpaths = NULL;
  pid_t pid = 0;
  if (launch(&c, &cgpaths, &pid, &err) < 0) {
    log_error("sandbox %s: %s", c.o.id, err.msg);
    if (cgpaths) {
      sbx_err ignore;
      cgroup_remove(cgpaths, &ignore);
    }
    if (c.dir[0]) {
      char p[PATH_MAX];
      if (ns_join(p, sizeof p, c.dir, NS_SOCK) == 0)
        unlink(p);
    }
    report_line(report_fd, "error %d %s", err.errnum, err.msg);
    free(cgpaths);
    return 1;
  }
  free(cgpaths);
  log_info("sandbox %s: agent pid %d", c.o.id, (int)pid);
  report_line(report_fd, "ok %d", (int)pid);
  return 0;
}
