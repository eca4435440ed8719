/* vm.c - the "vm" driver: every sandbox a QEMU microvm (vmm/driver.h).
 *
 * One QEMU process per sandbox, daemonized (so sandboxes outlive sbxd, as
 * with ns) and confined: its own cgroup, an unprivileged uid (-runas) and
 * QEMU's seccomp filter (-sandbox on).  The guest is the Debian cloud kernel
 * plus an initramfs whose /init (vm/init) mounts the image read-only
 * (/dev/vda, ext4 built from the image folder and cached by content), the
 * sandbox's own writable disk (/dev/vdb) over it, and starts sbx-agent as PID
 * 1 on a virtio-serial port.  QEMU exposes that port as the unix socket
 * agent.sock, so connect() is the ns driver's: the gateway speaks the same
 * agent protocol either way.  A second port (ctl.sock) takes "poweroff" for
 * a clean stop.  The serial console is appended to console.log: boot
 * progress, guest kernel messages and the agent's own log.
 *
 * Files in <data_dir>/sandboxes/<id>/: disk.ext4, agent.sock, ctl.sock,
 * console.log, qemu.log (QEMU's stderr), qemu.pid (QEMU's), pid (ns format,
 * with the start time), cgroups.  Cached image disks live in
 * <data_dir>/vm-images/. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../common/util.h"
#include "cgroup.h"
#include "driver.h"
#include "ns.h"
#include "vm.h"

extern char **environ;

/* ------------------------------------------------------------------ */
/* paths                                                               */

static int sandbox_dir(const sbx_sandbox_spec *s, char *out, size_t n, sbx_err *err) {
  if (!s || !sbx_is_id(s->id, "sbx_"))
    return sbx_fail(err, SBX_E_INTERNAL, 0, "vm: bad sandbox id");
  if (!s->data_dir || s->data_dir[0] != '/')
    return sbx_fail(err, SBX_E_INTERNAL, 0, "vm: data dir must be an absolute path");
  if (ns_sandbox_dir(s->data_dir, s->id, out, n) < 0)
    return sbx_fail_errno(err, errno, "vm: sandbox dir of %s", s->id);
  return 0;
}

int vmm_vm_guest_file(const char *agent_path, const char *name, char *out, size_t n,
                      sbx_err *err) {
  const char *env = getenv("SBX_VM_DIR");
  char dir[PATH_MAX];
  if (env && *env) {
    snprintf(dir, sizeof dir, "%s", env);
  } else {
    snprintf(dir, sizeof dir, "%s", agent_path ? agent_path : "");
    char *slash = strrchr(dir, '/');
    if (!slash)
      return sbx_fail(err, SBX_E_INTERNAL, EINVAL, "vm: the agent path must be absolute");
    snprintf(slash, sizeof dir - (size_t)(slash - dir), "/vm");
  }
  if (ns_join(out, n, dir, name) < 0)
    return sbx_fail_errno(err, errno, "vm: path of %s", name);
  if (access(out, R_OK) < 0)
    return sbx_fail_errno(err, errno, "vm: the guest %s is missing at %s (build it with `make`)",
                          name, out);
  return 0;
}

/* ------------------------------------------------------------------ */
/* running tools                                                       */

/* Run argv (PATH lookup) with stdout and stderr appended to logpath; wait up
 * to timeout_ms.  0 when it exited 0, else -1 with the log's last line. */
static int run_tool(const char *const argv[], const char *dir, const char *logname,
                    int timeout_ms, sbx_err *err) {
  char logp[PATH_MAX];
  if (ns_join(logp, sizeof logp, dir, logname) < 0)
    return sbx_fail_errno(err, errno, "vm: log path");
  posix_spawn_file_actions_t fa;
  posix_spawnattr_t at;
  posix_spawn_file_actions_init(&fa);
  posix_spawnattr_init(&at);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, logp, O_WRONLY | O_CREAT | O_APPEND, 0600);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  /* nothing of sbxd's: its own descriptors are close-on-exec, but what it
   * inherited may not be (seen: a stray pipe of the shell that started it),
   * and QEMU lives on as the VM */
  posix_spawn_file_actions_addclosefrom_np(&fa, 3);
  /* its own process group: a timeout kills all of it */
  posix_spawnattr_setpgroup(&at, 0);
  ns_spawn_clean(&at, POSIX_SPAWN_SETPGROUP);
  pid_t pid;
  int e = posix_spawnp(&pid, argv[0], &fa, &at, (char *const *)argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&at);
  if (e != 0)
    return sbx_fail_errno(err, e, "vm: cannot run %s", argv[0]);
  int status = 0;
  int64_t deadline = sbx_mono_ms() + timeout_ms;
  for (int i = 0;; i++) {
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid)
      break;
    if (r < 0 && errno != EINTR)
      return sbx_fail_errno(err, errno, "vm: wait for %s", argv[0]);
    if (sbx_mono_ms() > deadline) {
      kill(-pid, SIGKILL);
      waitpid(pid, &status, 0);
      return sbx_fail(err, SBX_E_INTERNAL, ETIMEDOUT, "vm: %s did not finish within %d ms",
                      argv[0], timeout_ms);
    }
    sbx_sleep_ms(i < 50 ? 2 : 20);
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
    return 0;
  char tail[400];
  ns_log_tail(dir, logname, tail, sizeof tail);
  return sbx_fail(err, SBX_E_INTERNAL, 0, "vm: %s failed (%s %d)%s%s", argv[0],
                  WIFSIGNALED(status) ? "signal" : "status",
                  WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status),
                  tail[0] ? ": " : "", tail);
}

/* ------------------------------------------------------------------ */
/* the image disk                                                      */

/* nftw has no user pointer: one walk per thread at a time */
static __thread struct walk {
  size_t root_len;
  uint64_t hash;
  uint64_t bytes, inodes;
} walk;

static void hash_bytes(const void *p, size_t n) {
  const uint8_t *b = p;
  for (size_t i = 0; i < n; i++)
    walk.hash = (walk.hash ^ b[i]) * 1099511628211ull;
}

static int walk_one(const char *path, const struct stat *st, int type, struct FTW *f) {
  (void)type;
  (void)f;
  /* what mkfs.ext4 -d copies: names, types, modes, owners, sizes, times */
  const char *rel = path + walk.root_len;
  hash_bytes(rel, strlen(rel) + 1);
  uint64_t meta[] = {st->st_mode, st->st_uid, st->st_gid, (uint64_t)st->st_size,
                     (uint64_t)st->st_mtim.tv_sec, (uint64_t)st->st_mtim.tv_nsec, st->st_rdev};
  hash_bytes(meta, sizeof meta);
  walk.bytes += ((uint64_t)st->st_size + 4095) / 4096 * 4096 + 4096;
  walk.inodes++;
  return 0;
}

/* Once an image changed: remove its older disks from the cache.  VMs still
 * running on one keep it open (the name goes, the file stays until QEMU
 * exits); their next start builds from the image as it is, as an ns
 * sandbox sees the folder as it is. */
static void drop_old_disks(const char *cache, const char *image, const char *keep) {
  DIR *d = opendir(cache);
  if (!d)
    return;
  size_t n = strlen(image);
  struct dirent *e;
  while ((e = readdir(d))) {
    const char *name = e->d_name;
    size_t len = strlen(name);
    /* "<image>-<16 hex>.ext4" */
    if (len != n + 1 + 16 + 5 || strncmp(name, image, n) != 0 || name[n] != '-' ||
        strspn(name + n + 1, "0123456789abcdef") != 16 || strcmp(name + len - 5, ".ext4") != 0)
      continue;
    char p[PATH_MAX];
    if (ns_join(p, sizeof p, cache, name) == 0 && strcmp(p, keep) != 0 && unlink(p) == 0)
      log_info("vm: removed the outdated disk %s", p);
  }
  closedir(d);
}

/* The read-only ext4 disk of an image folder, built on first use and cached
 * by a fingerprint of the folder's metadata: a changed image gets a new disk
 * and its older ones are removed. */
static int image_disk(const sbx_sandbox_spec *s, const char *sbdir, char *out, size_t n,
                      sbx_err *err) {
  if (!s->image || strcmp(s->image, "host") == 0)
    return sbx_fail_field(err, "image",
                          "the vm driver needs an image folder: \"host\" (the host's own root) "
                          "cannot be a VM's disk; name a folder of the images directory");
  if (ns_check_image(s->image, s->images_dir, err) < 0)
    return -1;
  char src[PATH_MAX];
  if (ns_join(src, sizeof src, s->images_dir, s->image) < 0)
    return sbx_fail_errno(err, errno, "vm: image path");
  walk = (struct walk){.root_len = strlen(src), .hash = 1469598103934665603ull};
  if (nftw(src, walk_one, 32, FTW_PHYS) < 0)
    return sbx_fail_errno(err, errno, "vm: read image %s", src);
  char cache[PATH_MAX];
  if (ns_join(cache, sizeof cache, s->data_dir, "vm-images") < 0 ||
      snprintf(out, n, "%s/%s-%016" PRIx64 ".ext4", cache, s->image, walk.hash) >= (int)n)
    return sbx_fail_errno(err, ENAMETOOLONG, "vm: image disk path");
  if (access(out, R_OK) == 0)
    return 0;
  if (sbx_mkdir_p(cache, 0700) < 0)
    return sbx_fail_errno(err, errno, "vm: mkdir %s", cache);
  /* room for the files, their inodes, and ext4's own metadata */
  uint64_t mib = walk.bytes * 5 / 4 / (1024 * 1024) + 16;
  char tmp[PATH_MAX + 16], size[32], inodes[32];
  snprintf(tmp, sizeof tmp, "%s.%d.tmp", out, (int)getpid());
  snprintf(size, sizeof size, "%" PRIu64 "M", mib);
  snprintf(inodes, sizeof inodes, "%" PRIu64, walk.inodes + walk.inodes / 4 + 256);
  const char *const argv[] = {"mkfs.ext4", "-q", "-F", "-L", "sbx-image", "-O", "^has_journal",
                              "-m", "0", "-N", inodes, "-d", src, tmp, size, NULL};
  unlink(tmp);
  int64_t t0 = sbx_mono_ms();
  if (run_tool(argv, sbdir, "mkfs.log", 300000, err) < 0) {
    unlink(tmp);
    return -1;
  }
  if (rename(tmp, out) < 0) { /* a concurrent build may have won: fine */
    int e = errno;
    unlink(tmp);
    if (access(out, R_OK) < 0)
      return sbx_fail_errno(err, e, "vm: rename %s", tmp);
  }
  log_info("vm: built the disk of image %s (%" PRIu64 " MiB) in %" PRId64 " ms: %s", s->image,
           mib, sbx_mono_ms() - t0, out);
  drop_old_disks(cache, s->image, out);
  return 0;
}

/* ------------------------------------------------------------------ */
/* create / start                                                      */

int vmm_vm_kernel(const char *agent_path, char *out, size_t n, sbx_err *err) {
  /* the decompressed kernel boots ~0.3 s faster under TCG; the build makes it
   * when lz4 is installed */
  if (vmm_vm_guest_file(agent_path, VM_KERNEL_RAW, out, n, NULL) == 0)
    return 0;
  return vmm_vm_guest_file(agent_path, VM_KERNEL, out, n, err);
}

static int vm_create(const sbx_sandbox_spec *s, sbx_err *err) {
  char dir[PATH_MAX], p[PATH_MAX + 32], img[PATH_MAX];
  if (sandbox_dir(s, dir, sizeof dir, err) < 0)
    return -1;
  if (s->network && *s->network && strcmp(s->network, "none") != 0)
    return sbx_fail_field(err, "network", "network must be \"none\" (the VM gets no network "
                                          "device)");
  snprintf(p, sizeof p, "%s/sandboxes", s->data_dir);
  if (sbx_mkdir_p(p, 0700) < 0)
    return sbx_fail_errno(err, errno, "vm: mkdir %s", p);
  if (mkdir(dir, 0700) < 0 && errno != EEXIST)
    return sbx_fail_errno(err, errno, "vm: mkdir %s", dir);
  if (image_disk(s, dir, img, sizeof img, err) < 0 ||
      vmm_vm_kernel(s->agent_path, p, sizeof p, err) < 0 ||
      vmm_vm_guest_file(s->agent_path, VM_INITRD, p, sizeof p, err) < 0)
    return -1;
  /* the writable layer: a sparse ext4 file of disk_mib (the limit is real
   * here: the guest cannot write more) */
  if (ns_join(p, sizeof p, dir, VM_DISK) < 0)
    return sbx_fail_errno(err, errno, "vm: disk path");
  if (access(p, F_OK) == 0)
    return 0;
  char size[32];
  snprintf(size, sizeof size, "%" PRId64 "M", s->disk_mib > 0 ? s->disk_mib : VM_DISK_DEFAULT_MIB);
  const char *const argv[] = {"mkfs.ext4", "-q", "-F", "-L", "sbx-rw", "-m", "0", "-E",
                              "lazy_itable_init=1,lazy_journal_init=1,nodiscard", p, size, NULL};
  if (run_tool(argv, dir, "mkfs.log", 60000, err) < 0) {
    unlink(p);
    return -1;
  }
  return 0;
}

/* The unprivileged uid QEMU runs as: one per sandbox, from its id, in a
 * range of its own (ns sandboxes use 100000..165535). */
static unsigned vm_uid(const char *id) {
  uint32_t h = 2166136261u;
  for (const char *c = id; *c; c++)
    h = (h ^ (uint8_t)*c) * 16777619u;
  return VM_UID_BASE + h % VM_UID_COUNT;
}

static void clean_run_files(const char *dir) {
  static const char *const names[] = {VM_AGENT_SOCK, VM_CTL_SOCK, VM_QEMU_PID, NS_PIDFILE};
  for (size_t i = 0; i < SBX_ARRAY_LEN(names); i++)
    ns_unlink_in(dir, names[i]);
}

/* At a boot, a console log over VM_CONSOLE_MAX becomes console.log.1 (the
 * one before is dropped): one running boot can only add warnings. */
static void rotate_console(const char *dir) {
  char p[PATH_MAX], old[PATH_MAX + 4];
  struct stat st;
  if (ns_join(p, sizeof p, dir, VM_CONSOLE) < 0 || stat(p, &st) < 0 || st.st_size <= VM_CONSOLE_MAX)
    return;
  snprintf(old, sizeof old, "%s.1", p);
  if (rename(p, old) < 0)
    log_warn("vm: rotate %s: %s", p, strerror(errno));
}

/* The console log's size now: start() watches what the new boot appends. */
static off_t file_size(const char *dir, const char *name) {
  char p[PATH_MAX];
  struct stat st;
  if (ns_join(p, sizeof p, dir, name) < 0 || stat(p, &st) < 0)
    return 0;
  return st.st_size;
}

/* Does the console log, from offset `from`, contain `needle`? */
static bool console_has(const char *dir, off_t from, const char *needle) {
  char p[PATH_MAX];
  if (ns_join(p, sizeof p, dir, VM_CONSOLE) < 0)
    return false;
  cleanup_fd int fd = open(p, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return false;
  char buf[64 * 1024 + 1];
  size_t keep = strlen(needle) - 1, have = 0;
  off_t at = from;
  for (;;) {
    ssize_t k = pread(fd, buf + have, sizeof buf - 1 - have, at);
    if (k <= 0)
      return false;
    at += k;
    have += (size_t)k;
    buf[have] = '\0';
    if (memmem(buf, have, needle, strlen(needle)))
      return true;
    if (have > keep) { /* keep a needle's length for a match across reads */
      memmove(buf, buf + have - keep, keep);
      have = keep;
    }
  }
}

/* Why this boot (console.log from `from`) went wrong, for an error message:
 * the last line init or the kernel marked as an error ("sbx-init: error",
 * "Kernel panic"), else the last line; QEMU's own log if the console is
 * empty.  Carriage returns (the serial console's) are dropped. */
static void console_reason(const char *dir, off_t from, char *out, size_t n) {
  char p[PATH_MAX];
  out[0] = '\0';
  cleanup_free char *text = NULL;
  if (ns_join(p, sizeof p, dir, VM_CONSOLE) == 0) {
    cleanup_fd int fd = open(p, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd >= 0 && fstat(fd, &st) == 0 && st.st_size > from) {
      size_t len = (size_t)(st.st_size - from);
      if (len > 256 * 1024) { /* the end of a long boot is what matters */
        from = st.st_size - 256 * 1024;
        len = 256 * 1024;
      }
      text = malloc(len + 1);
      ssize_t k = text ? pread(fd, text, len, from) : -1;
      if (k < 0)
        return;
      text[k] = '\0';
    }
  }
  const char *pick = NULL, *last = NULL;
  for (char *line = text, *next; line && *line; line = next) {
    next = strchr(line, '\n');
    if (next)
      *next++ = '\0';
    char *cr;
    while ((cr = strchr(line, '\r')))
      memmove(cr, cr + 1, strlen(cr));
    if (!*line)
      continue;
    last = line;
    if (strstr(line, "sbx-init: error") || strstr(line, "Kernel panic"))
      pick = line;
  }
  if (pick || last) {
    size_t len = strnlen(pick ? pick : last, n - 1);
    memcpy(out, pick ? pick : last, len);
    out[len] = '\0';
  } else {
    ns_log_tail(dir, VM_QEMU_LOG, out, n);
  }
}

static int qemu_argv(const sbx_sandbox_spec *s, const char *dir, const char *img,
                     const char *kernel, const char *initrd, char *buf, size_t bufsz,
                     const char **argv, size_t maxargs, sbx_err *err) {
  int64_t mem = s->memory_mib > 0 ? s->memory_mib : VM_MEM_DEFAULT_MIB;
  int cpus = s->cpus > 0 ? (int)ceil(s->cpus) : 1;
  size_t used = 0, na = 0;
  /* every argument is formatted into buf, one after the other */
#define ARG(...)                                                                                   \
  do {                                                                                             \
    int w_ = snprintf(buf + used, bufsz - used, __VA_ARGS__);                                      \
    if (w_ < 0 || (size_t)w_ >= bufsz - used || na + 1 >= maxargs)                                 \
      return sbx_fail(err, SBX_E_INTERNAL, ENAMETOOLONG, "vm: QEMU command line too long");      \
    argv[na++] = buf + used;                                                                       \
    used += (size_t)w_ + 1;                                                                        \
  } while (0)
  ARG("%s", VM_QEMU);
  ARG("-name");
  ARG("sbx-%s", s->id);
  ARG("-M");
  ARG("microvm,acpi=on,x-option-roms=off,isa-serial=on,rtc=on");
  ARG("-accel");
  ARG("%s", vmm_vm_accel());
  ARG("-cpu");
  ARG("%s", strcmp(vmm_vm_accel(), "kvm") == 0 ? "host" : "max");
  ARG("-m");
  ARG("%" PRId64 "M", mem);
  ARG("-smp");
  ARG("%d", cpus);
  ARG("-nodefaults");
  ARG("-no-user-config");
  ARG("-nographic");
  ARG("-no-reboot");
  ARG("-kernel");
  ARG("%s", kernel);
  ARG("-initrd");
  ARG("%s", initrd);
  ARG("-append");
  char pids[48] = "", tsc[48] = ""; /* the guest's init puts the agent in a pids cgroup */
  if (s->pids > 0)
    snprintf(pids, sizeof pids, " sbx.pids=%" PRId64, s->pids);
  if (strcmp(vmm_vm_accel(), "tcg") == 0 && vmm_vm_tsc_khz() > 0)
    snprintf(tsc, sizeof tsc, " tsc_early_khz=%ld", vmm_vm_tsc_khz());
  /* edd, the extra UARTs and the crypto self-tests only cost boot time */
  ARG("console=ttyS0 quiet loglevel=4 panic=-1 reboot=t edd=off 8250.nr_uarts=1 "
      "cryptomgr.notests sbx.hostname=%s%s%s",
      s->hostname ? s->hostname : s->id, pids, tsc);
  ARG("-chardev");
  ARG("file,id=con,path=%s/%s,append=on", dir, VM_CONSOLE);
  ARG("-serial");
  ARG("chardev:con");
  ARG("-drive");
  ARG("id=img,file=%s,format=raw,if=none,readonly=on", img);
  ARG("-device");
  ARG("virtio-blk-device,drive=img");
  ARG("-drive");
  ARG("id=rw,file=%s/%s,format=raw,if=none,discard=unmap", dir, VM_DISK);
  ARG("-device");
  ARG("virtio-blk-device,drive=rw");
  ARG("-device");
  ARG("virtio-serial-device,max_ports=3"); /* port 0 is for a console */
  ARG("-chardev");
  ARG("socket,id=agent,path=%s/%s,server=on,wait=off", dir, VM_AGENT_SOCK);
  ARG("-device");
  ARG("virtserialport,chardev=agent,name=sbx.agent");
  ARG("-chardev");
  ARG("socket,id=ctl,path=%s/%s,server=on,wait=off", dir, VM_CTL_SOCK);
  ARG("-device");
  ARG("virtserialport,chardev=ctl,name=sbx.ctl");
  ARG("-sandbox");
  /* QEMU installs its filter before it daemonizes (a fork: spawn=deny would
   * kill it) and before -runas drops to the unprivileged uid (setuid:
   * elevateprivileges=deny would kill it); once dropped, no capability is
   * left to climb back with */
  ARG("on,obsolete=deny,resourcecontrol=deny");
  ARG("-runas");
  ARG("%u:%u", vm_uid(s->id), vm_uid(s->id));
  ARG("-pidfile");
  ARG("%s/%s", dir, VM_QEMU_PID);
  ARG("-daemonize");
#undef ARG
  argv[na] = NULL;
  return 0;
}

/* Read QEMU's own pid file into *pid. */
static int read_qemu_pid(const char *dir, pid_t *pid) {
  char p[PATH_MAX];
  if (ns_join(p, sizeof p, dir, VM_QEMU_PID) < 0)
    return -1;
  cleanup_free char *s = sbx_read_file(p, 64, NULL);
  int v = 0;
  if (!s || sscanf(s, "%d", &v) != 1 || v <= 1)
    return -1;
  *pid = v;
  return 0;
}

/* Start QEMU and wait for the agent to be up in the guest.  With the lock
 * held; leaves nothing running on failure. */
static int start_locked(const sbx_sandbox_spec *s, const char *dir, pid_t *out_pid,
                        sbx_err *err) {
  char img[PATH_MAX], kernel[PATH_MAX], initrd[PATH_MAX];
  if (image_disk(s, dir, img, sizeof img, err) < 0 ||
      vmm_vm_kernel(s->agent_path, kernel, sizeof kernel, err) < 0 ||
      vmm_vm_guest_file(s->agent_path, VM_INITRD, initrd, sizeof initrd, err) < 0)
    return -1;
  if (ns_kill_sandbox(dir, err) < 0)
    return -1;
  clean_run_files(dir);
  { /* a cgroup of an earlier run: limits may have changed */
    cleanup_free char *old = ns_read_cgroups(dir);
    if (old)
      cgroup_remove(old, NULL);
  }
  /* QEMU's memory is the guest's RAM plus its own overhead; its CPU time is
   * what the vCPUs may use */
  cgroup_limits lim = {
      .memory_mib = (s->memory_mib > 0 ? s->memory_mib : VM_MEM_DEFAULT_MIB) + VM_QEMU_OVERHEAD_MIB,
      .cpus = s->cpus,
      .pids = VM_QEMU_PIDS};
  cleanup_free char *cg = NULL;
  if (cgroup_create(s->id, &lim, &cg, err) < 0)
    return -1;
  char p[PATH_MAX];
  if (ns_join(p, sizeof p, dir, NS_CGROUPS) < 0 || sbx_write_file(p, cg) < 0)
    return sbx_fail_errno(err, errno, "vm: write %s", p);

  char buf[8192];
  const char *argv[80];
  if (qemu_argv(s, dir, img, kernel, initrd, buf, sizeof buf, argv, SBX_ARRAY_LEN(argv), err) < 0)
    return -1;
  rotate_console(dir);
  char boot[128], now[40];
  sbx_rfc3339(sbx_now_ms(), now, sizeof now);
  snprintf(boot, sizeof boot, "\n---- sbxd: booting %s (%s) at %s ----\n", s->id, vmm_vm_accel(), now);
  if (ns_join(p, sizeof p, dir, VM_CONSOLE) == 0) {
    cleanup_fd int fd = open(p, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd >= 0 && write(fd, boot, strlen(boot)) < 0)
      log_warn("vm: write %s: %s", p, strerror(errno));
  }
  if (sbx_log_threshold >= SBX_LOG_DEBUG) {
    char line[8192];
    size_t at = 0;
    for (size_t i = 0; argv[i] && at < sizeof line; i++)
      at += (size_t)snprintf(line + at, sizeof line - at, "%s%s", i ? " " : "", argv[i]);
    log_debug("vm: %s", line);
  }
  off_t from = file_size(dir, VM_CONSOLE);
  int64_t t0 = sbx_mono_ms();
  /* with -daemonize QEMU's first process exits once the VM is set up */
  if (run_tool(argv, dir, VM_QEMU_LOG, 60000, err) < 0)
    return -1;
  pid_t pid;
  if (read_qemu_pid(dir, &pid) < 0)
    return sbx_fail(err, SBX_E_INTERNAL, 0, "vm: QEMU started but wrote no pid file");
  if (cgroup_attach(cg, pid, err) < 0 || ns_pidfile_write(dir, pid, err) < 0) {
    kill(pid, SIGKILL);
    return -1;
  }
  int64_t deadline = t0 + (strcmp(vmm_vm_accel(), "kvm") == 0 ? VM_BOOT_TIMEOUT_KVM_MS : VM_BOOT_TIMEOUT_TCG_MS);
  for (int i = 0;; i++) {
    if (console_has(dir, from, VM_READY_MARK)) {
      log_info("vm: sandbox %s booted (%s) in %" PRId64 " ms, qemu pid %d", s->id, vmm_vm_accel(),
               sbx_mono_ms() - t0, (int)pid);
      *out_pid = pid;
      return 0;
    }
    char tail[400];
    if (ns_live_pid(dir) != pid) {
      console_reason(dir, from, tail, sizeof tail);
      return sbx_fail(err, SBX_E_INTERNAL, 0, "vm: the guest of %s stopped during boot%s%s",
                      s->id, tail[0] ? ": " : "", tail);
    }
    if (sbx_mono_ms() > deadline) {
      console_reason(dir, from, tail, sizeof tail);
      return sbx_fail(err, SBX_E_INTERNAL, ETIMEDOUT,
                      "vm: the guest of %s did not start its agent within %d ms (%s)%s%s", s->id,
                      (int)(deadline - t0), vmm_vm_accel(), tail[0] ? "; last console line: " : "", tail);
    }
    sbx_sleep_ms(i < 100 ? 5 : 20);
  }
}

static int vm_start(const sbx_sandbox_spec *s, pid_t *out_pid, sbx_err *err) {
  char dir[PATH_MAX];
  if (sandbox_dir(s, dir, sizeof dir, err) < 0)
    return -1;
  cleanup_fd int lock = ns_lock_dir(dir);
  if (lock < 0)
    return sbx_fail_errno(err, errno, "vm: sandbox dir %s (not created?)", dir);
  pid_t running = ns_live_pid(dir);
  if (running > 0) {
    *out_pid = running; /* already running: start is idempotent */
    return 0;
  }
  if (start_locked(s, dir, out_pid, err) == 0)
    return 0;
  sbx_err ignore;
  ns_kill_sandbox(dir, &ignore);
  clean_run_files(dir);
  return -1;
}

/* ------------------------------------------------------------------ */
/* stop / destroy / alive / connect                                    */

/* Ask the guest to power off (the agent syncs its disks), then kill QEMU if
 * it is still there after the grace period. */
static int stop_locked(const char *dir, sbx_err *err) {
  pid_t pid = ns_live_pid(dir);
  if (pid > 0) {
    cleanup_fd int fd = ns_unix_connect(dir, VM_CTL_SOCK);
    if (fd >= 0 && write(fd, "poweroff\n", 9) == 9) {
      int64_t deadline = sbx_mono_ms() + VM_STOP_GRACE_MS;
      while (ns_live_pid(dir) == pid && sbx_mono_ms() < deadline)
        sbx_sleep_ms(10);
    }
    if (ns_live_pid(dir) == pid)
      log_warn("vm: %s did not power off within %d ms: killing QEMU", strrchr(dir, '/') + 1,
               VM_STOP_GRACE_MS);
  }
  if (ns_kill_sandbox(dir, err) < 0)
    return -1;
  clean_run_files(dir);
  return 0;
}

static int vm_stop(const sbx_sandbox_spec *s, sbx_err *err) {
  char dir[PATH_MAX];
  if (sandbox_dir(s, dir, sizeof dir, err) < 0)
    return -1;
  return ns_stop_dir(dir, false, stop_locked, err);
}

static int vm_destroy(const sbx_sandbox_spec *s, sbx_err *err) {
  char dir[PATH_MAX];
  if (sandbox_dir(s, dir, sizeof dir, err) < 0)
    return -1;
  return ns_stop_dir(dir, true, stop_locked, err);
}

static bool vm_alive(const sbx_sandbox_spec *s) {
  char dir[PATH_MAX];
  return sandbox_dir(s, dir, sizeof dir, NULL) == 0 && ns_live_pid(dir) > 0;
}

static int vm_connect(const sbx_sandbox_spec *s, sbx_err *err) {
  char dir[PATH_MAX];
  if (sandbox_dir(s, dir, sizeof dir, err) < 0)
    return -1;
  return ns_connect_agent(dir, VM_AGENT_SOCK, err);
}

static int vm_log_path(const sbx_sandbox_spec *s, char *out, size_t n, sbx_err *err) {
  char dir[PATH_MAX];
  if (sandbox_dir(s, dir, sizeof dir, err) < 0)
    return -1;
  if (ns_join(out, n, dir, VM_CONSOLE) < 0)
    return sbx_fail_errno(err, errno, "vm: log path");
  return 0;
}

const sbx_driver vmm_vm_driver = {
    .name = "vm",
    .create = vm_create,
    .start = vm_start,
    .stop = vm_stop,
    .destroy = vm_destroy,
    .alive = vm_alive,
    .connect = vm_connect,
    .log_path = vm_log_path,
};
