/* spawn.c - start one exec: pipes or a pty, fork, and in the child setsid,
 * stdio, identity, cwd, default signals, execve (PATH search like execvpe).
 * A child that cannot exec writes an agent_spawn_report to a CLOEXEC pipe, so
 * the parent can tell "never started" (and why) from "ran and exited". */
#include "agent/agent.h"
#include "common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#ifndef TIOCGPTPEER
#define TIOCGPTPEER _IO('T', 0x41)
#endif

enum {
  AGENT_STAGE_SETSID,
  AGENT_STAGE_PTY,
  AGENT_STAGE_STDIO,
  AGENT_STAGE_SETGROUPS,
  AGENT_STAGE_SETGID,
  AGENT_STAGE_SETUID,
  AGENT_STAGE_CHDIR,
  AGENT_STAGE_EXECVE,
  AGENT_STAGE__COUNT
};

static const char *const stage_names[AGENT_STAGE__COUNT] = {
    [AGENT_STAGE_SETSID] = "setsid",       [AGENT_STAGE_PTY] = "pty",
    [AGENT_STAGE_STDIO] = "stdio",         [AGENT_STAGE_SETGROUPS] = "setgroups",
    [AGENT_STAGE_SETGID] = "setgid",       [AGENT_STAGE_SETUID] = "setuid",
    [AGENT_STAGE_CHDIR] = "chdir",         [AGENT_STAGE_EXECVE] = "execve",
};

#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

static const char *kind_for(const char *stage, int e) {
  if (strcmp(stage, "chdir") == 0)
    return "bad_cwd";
  if (strcmp(stage, "user") == 0 || strncmp(stage, "set", 3) == 0)
    return strcmp(stage, "setsid") == 0 ? "other" : "bad_user";
  if (strcmp(stage, "pty") == 0)
    return "pty_setup_failed";
  switch (e) {
  case ENOENT:
  case ENOTDIR:
    return "not_found";
  case EACCES:
  case EPERM:
    return "permission_denied";
  case ENOEXEC:
  case EISDIR:
  case ELIBBAD:
  case ETXTBSY:
    return "not_executable";
  case E2BIG:
    return "bad_args";
  case EMFILE:
  case ENFILE:
  case ENOMEM:
  case EAGAIN:
    return "resource_limit";
  default:
    return "other";
  }
}

void agent_fail_set(agent_fail *f, const char *stage, int errnum, const char *path) {
  f->kind = kind_for(stage, errnum);
  f->errnum = errnum;
  snprintf(f->stage, sizeof f->stage, "%s", stage);
  snprintf(f->path, sizeof f->path, "%s", path ? path : "");
  if (f->path[0])
    snprintf(f->message, sizeof f->message, "%s %.400s: %s", stage, f->path, strerror(errnum));
  else
    snprintf(f->message, sizeof f->message, "%s: %s", stage, strerror(errnum));
}

void agent_fail_setk(agent_fail *f, const char *kind, const char *stage, int errnum,
                     const char *path, const char *fmt, ...) {
  f->kind = kind;
  f->errnum = errnum;
  snprintf(f->stage, sizeof f->stage, "%s", stage);
  snprintf(f->path, sizeof f->path, "%s", path ? path : "");
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(f->message, sizeof f->message, fmt, ap);
  va_end(ap);
}

void agent_spawn_report_fail(const agent_spawn_report *r, agent_fail *fail) {
  const char *stage =
      r->stage >= 0 && r->stage < AGENT_STAGE__COUNT ? stage_names[r->stage] : "unknown";
  char path[sizeof r->path + 1];
  memcpy(path, r->path, sizeof r->path);
  path[sizeof r->path] = 0;
  agent_fail_set(fail, stage, r->errnum, path);
}

/* ---- the child, run under vfork: syscalls and stack buffers only ---- */

__attribute__((noreturn)) static void child_fail(int report_fd, int stage, int errnum,
                                                 const char *path) {
  agent_spawn_report r;
  memset(&r, 0, sizeof r);
  r.stage = stage;
  r.errnum = errnum;
  if (path)
    snprintf(r.path, sizeof r.path, "%s", path);
  /* sizeof r < PIPE_BUF: one atomic write */
  ssize_t n = write(report_fd, &r, sizeof r);
  (void)n;
  _exit(127);
}

static const char *env_get(char **envp, const char *name) {
  size_t n = strlen(name);
  for (char **e = envp; *e; e++)
    if (strncmp(*e, name, n) == 0 && (*e)[n] == '=')
      return *e + n + 1;
  return NULL;
}

/* execvpe without the ENOEXEC /bin/sh fallback: a file that is not a valid
 * executable is reported as not_executable instead of being run by a shell. */
__attribute__((noreturn)) static void child_exec(const agent_spawn_req *req, int report_fd) {
  const char *cmd = req->argv[0];
  if (strchr(cmd, '/')) {
    execve(cmd, req->argv, req->envp);
    child_fail(report_fd, AGENT_STAGE_EXECVE, errno, cmd);
  }
  const char *path = env_get(req->envp, "PATH");
  if (!path)
    path = DEFAULT_PATH;
  size_t clen = strlen(cmd);
  int denied = 0;
  char denied_path[PATH_MAX] = "";
  const char *p = path;
  for (;;) {
    const char *colon = strchr(p, ':');
    size_t dlen = colon ? (size_t)(colon - p) : strlen(p);
    char full[PATH_MAX];
    if (dlen + 1 + clen + 1 <= sizeof full) {
      if (dlen == 0) {
        memcpy(full, cmd, clen + 1); /* an empty PATH element is the cwd */
      } else {
        memcpy(full, p, dlen);
        full[dlen] = '/';
        memcpy(full + dlen + 1, cmd, clen + 1);
      }
      execve(full, req->argv, req->envp);
      int e = errno;
      switch (e) {
      case EACCES:
        if (!denied)
          snprintf(denied_path, sizeof denied_path, "%s", full);
        denied = 1;
        break;
      case ENOENT:
      case ENOTDIR:
      case ESTALE:
      case ENODEV:
      case ETIMEDOUT:
      case ENAMETOOLONG:
        break;
      default:
        child_fail(report_fd, AGENT_STAGE_EXECVE, e, full);
      }
    }
    if (!colon)
      break;
    p = colon + 1;
  }
  if (denied)
    child_fail(report_fd, AGENT_STAGE_EXECVE, EACCES, denied_path);
  child_fail(report_fd, AGENT_STAGE_EXECVE, ENOENT, cmd);
}

__attribute__((noreturn)) static void child_main(const agent_spawn_req *req, int in_r, int out_w,
                                                 int err_w, int slave, int report_fd) {
  if (setsid() < 0)
    child_fail(report_fd, AGENT_STAGE_SETSID, errno, NULL);
  if (req->tty) {
    for (int i = 0; i < 3; i++)
      if (dup2(slave, i) < 0)
        child_fail(report_fd, AGENT_STAGE_PTY, errno, NULL);
    if (ioctl(0, TIOCSCTTY, 0) < 0)
      child_fail(report_fd, AGENT_STAGE_PTY, errno, NULL);
  } else {
    if (dup2(in_r, 0) < 0 || dup2(out_w, 1) < 0 || dup2(err_w, 2) < 0)
      child_fail(report_fd, AGENT_STAGE_STDIO, errno, NULL);
  }
  /* nothing of the agent's leaks into the program but stdio (and the report
   * pipe, which is CLOEXEC) */
  if (report_fd > 3)
    close_range(3, (unsigned)report_fd - 1, 0);
  close_range((unsigned)report_fd + 1, ~0U, 0);

  if (req->user) {
    const agent_user *u = req->user;
    bool same = geteuid() != 0 && u->uid == geteuid();
    if (!same) {
      if (setgroups(u->ngroups, u->groups) < 0)
        child_fail(report_fd, AGENT_STAGE_SETGROUPS, errno, NULL);
      if (setgid(u->gid) < 0)
        child_fail(report_fd, AGENT_STAGE_SETGID, errno, NULL);
      if (setuid(u->uid) < 0)
        child_fail(report_fd, AGENT_STAGE_SETUID, errno, NULL);
    }
  }
  /* after the identity switch, so the cwd is checked with the user's rights */
  if (chdir(req->cwd) < 0)
    child_fail(report_fd, AGENT_STAGE_CHDIR, errno, req->cwd);

  /* the agent ignores SIGPIPE and blocks SIGCHLD & co: ignored dispositions
   * and the mask survive execve, so reset both */
  for (int sig = 1; sig < NSIG; sig++)
    if (sig != SIGKILL && sig != SIGSTOP)
      signal(sig, SIG_DFL);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);

  child_exec(req, report_fd);
}

/* ---- the parent ---- */

typedef struct spawn_fds {
  int in_r, in_w, out_r, out_w, err_r, err_w, master, slave, rep_r, rep_w;
} spawn_fds;

static void spawn_fds_close(spawn_fds *f) {
  int *all[] = {&f->in_r, &f->in_w, &f->out_r, &f->out_w, &f->err_r,
                &f->err_w, &f->master, &f->slave, &f->rep_r, &f->rep_w};
  for (size_t i = 0; i < SBX_ARRAY_LEN(all); i++)
    sbx_closep(all[i]);
}

static int open_pty(const agent_spawn_req *req, spawn_fds *f, agent_fail *fail) {
  f->master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (f->master < 0 || grantpt(f->master) < 0 || unlockpt(f->master) < 0) {
    agent_fail_set(fail, "pty", errno, "/dev/ptmx");
    return -1;
  }
  struct winsize ws = {.ws_row = req->rows, .ws_col = req->cols};
  if (ioctl(f->master, TIOCSWINSZ, &ws) < 0) {
    agent_fail_set(fail, "pty", errno, "/dev/ptmx");
    return -1;
  }
  /* TIOCGPTPEER opens the slave without a path, so a sandbox whose /dev/pts
   * is another devpts instance still works; fall back to the name */
  f->slave = ioctl(f->master, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (f->slave < 0) {
    char name[128];
    if (ptsname_r(f->master, name, sizeof name) != 0) {
      agent_fail_set(fail, "pty", errno, "/dev/ptmx");
      return -1;
    }
    f->slave = open(name, O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (f->slave < 0) {
      agent_fail_set(fail, "pty", errno, name);
      return -1;
    }
  }
  return 0;
}

int agent_spawn(const agent_spawn_req *req, agent_spawn_res *res, agent_fail *fail) {
  spawn_fds f = {-1, -1, -1, -1, -1, -1, -1, -1, -1, -1};
  int p[2];
  if (req->tty) {
    if (open_pty(req, &f, fail) < 0) {
      spawn_fds_close(&f);
      return -1;
    }
  } else {
    if (pipe2(p, O_CLOEXEC) < 0) {
      agent_fail_set(fail, "pipe", errno, NULL);
      spawn_fds_close(&f);
      return -1;
    }
    f.in_r = p[0], f.in_w = p[1];
    if (pipe2(p, O_CLOEXEC) < 0) {
      agent_fail_set(fail, "pipe", errno, NULL);
      spawn_fds_close(&f);
      return -1;
    }
    f.out_r = p[0], f.out_w = p[1];
    if (pipe2(p, O_CLOEXEC) < 0) {
      agent_fail_set(fail, "pipe", errno, NULL);
      spawn_fds_close(&f);
      return -1;
    }
    f.err_r = p[0], f.err_w = p[1];
    /* bigger output pipes: fewer wake-ups of the agent per byte (the kernel
     * caps this at /proc/sys/fs/pipe-max-size; failure just keeps 64 KiB) */
    fcntl(f.out_r, F_SETPIPE_SZ, 1 << 20);
    fcntl(f.err_r, F_SETPIPE_SZ, 1 << 20);
  }
  if (pipe2(p, O_CLOEXEC) < 0) {
    agent_fail_set(fail, "pipe", errno, NULL);
    spawn_fds_close(&f);
    return -1;
  }
  f.rep_r = p[0], f.rep_w = p[1];

  /* vfork: no copy of the agent's page tables, and the agent waits only
   * until the child has exec'd (as posix_spawn does).  The child touches
   * nothing shared but errno: stack buffers, syscalls, _exit. */
  pid_t pid = vfork();
  if (pid < 0) {
    agent_fail_set(fail, "fork", errno, NULL);
    spawn_fds_close(&f);
    return -1;
  }
  if (pid == 0)
    child_main(req, f.in_r, f.out_w, f.err_w, f.slave, f.rep_w);

  /* parent: drop the child's ends, so EOF means what it should */
  sbx_closep(&f.in_r);
  sbx_closep(&f.out_w);
  sbx_closep(&f.err_w);
  sbx_closep(&f.slave);
  sbx_closep(&f.rep_w);
  memset(res, 0, sizeof *res);
  res->pid = pid;
  res->pty_fd = -1;
  if (req->tty) {
    res->pty_fd = sbx_steal_fd(&f.master);
    res->out_fd = fcntl(res->pty_fd, F_DUPFD_CLOEXEC, 3);
    res->err_fd = -1;
    if (req->stdin_open) {
      res->in_fd = fcntl(res->pty_fd, F_DUPFD_CLOEXEC, 3);
    } else {
      /* EOF at once on a terminal is the VEOF character; the line discipline
       * acts on it as it arrives (canonical mode), before the program runs */
      struct termios t;
      char eof = tcgetattr(res->pty_fd, &t) == 0 ? (char)t.c_cc[VEOF] : 4;
      ssize_t n = write(res->pty_fd, &eof, 1);
      (void)n;
      res->in_fd = -1;
    }
  } else {
    res->out_fd = sbx_steal_fd(&f.out_r);
    res->err_fd = sbx_steal_fd(&f.err_r);
    res->in_fd = req->stdin_open ? sbx_steal_fd(&f.in_w) : -1;
  }
  res->report_fd = sbx_steal_fd(&f.rep_r);
  spawn_fds_close(&f);
  int fds[] = {res->in_fd, res->out_fd, res->err_fd, res->pty_fd, res->report_fd};
  for (size_t i = 0; i < SBX_ARRAY_LEN(fds); i++)
    if (fds[i] >= 0)
      sbx_set_nonblock(fds[i], true);
  return 0;
}
