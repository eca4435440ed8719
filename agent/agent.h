/* agent.h - internals of sbx-agent shared by its files (users.c, spawn.c,
 * agent.c).  Only linked into the static agent binary, never into libsbxcore. */
#ifndef SBX_AGENT_AGENT_H
#define SBX_AGENT_AGENT_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* Why a program never started: the SPEC's failure object, as plain data. */
typedef struct agent_fail {
  const char *kind; /* "not_found", "bad_user", ... (static string) */
  int errnum;       /* 0 when no errno applies */
  char stage[16];   /* "user", "pty", "chdir", "setuid", "execve", ... */
  char path[1024];
  char message[512];
} agent_fail;

/* Fill *f from a stage/errno/path triple, choosing the kind the SPEC names
 * for that stage and errno. */
void agent_fail_set(agent_fail *f, const char *stage, int errnum, const char *path);
/* Same with an explicit kind and message (for failures without an errno). */
void agent_fail_setk(agent_fail *f, const char *kind, const char *stage, int errnum,
                     const char *path, const char *fmt, ...) __attribute__((format(printf, 6, 7)));

/* A resolved "user": everything the child needs to switch to it. */
typedef struct agent_user {
  uid_t uid;
  gid_t gid;
  gid_t *groups; /* supplementary groups (the primary one included) */
  size_t ngroups;
  char *name; /* NULL for a numeric uid absent from the passwd file */
  char *home; /* NULL if unknown */
} agent_user;

/* Resolve spec (a decimal uid, or a name) with the given passwd/group files
 * (never NSS: the agent is static and runs on any image).  Returns 0, or -1
 * with *fail filled (kind bad_user).  The caller clears *out with
 * agent_user_clear(). */
int agent_user_resolve(const char *spec, const char *passwd_path, const char *group_path,
                       agent_user *out, agent_fail *fail);
void agent_user_clear(agent_user *u);

/* What to start.  All strings are borrowed for the call. */
typedef struct agent_spawn_req {
  char **argv; /* argv[0] is the command as given (searched in PATH if no '/') */
  char **envp; /* the complete environment */
  const char *cwd;
  const agent_user *user; /* NULL: keep the agent's identity */
  bool tty;
  unsigned short rows, cols;
  bool stdin_open; /* false: the child's stdin is at EOF at once (a closed pipe) */
} agent_spawn_req;

/* What was started.  The parent owns every fd (all CLOEXEC, non-blocking). */
typedef struct agent_spawn_res {
  pid_t pid;      /* also the process group and session id */
  int in_fd;      /* write end of stdin (pipe or a dup of the pty master), -1 if closed */
  int out_fd;     /* read end of stdout (or the pty master's output) */
  int err_fd;     /* read end of stderr, -1 with a tty (merged) */
  int pty_fd;     /* the pty master for ioctls, -1 without a tty */
  int report_fd;  /* read end of the CLOEXEC report pipe: EOF alone = exec succeeded */
} agent_spawn_res;

/* The record a child writes to report_fd when it cannot exec. */
typedef struct agent_spawn_report {
  int stage; /* AGENT_STAGE_* */
  int errnum;
  char path[1024];
} agent_spawn_report;

/* Fork a child in its own session and exec req in it.  Returns 0 with *res
 * filled (the exec may still fail: read report_fd until EOF), or -1 with *fail
 * filled when nothing was started (pty, pipes, fork). */
int agent_spawn(const agent_spawn_req *req, agent_spawn_res *res, agent_fail *fail);
/* Turn a child's report into a failure. */
void agent_spawn_report_fail(const agent_spawn_report *r, agent_fail *fail);

/* ---- inside a microVM (vm.c) ----
 * In the vm driver the agent is the guest's PID 1 (started by the
 * initramfs's /init) and talks to sbxd over virtio-serial ports instead of
 * a listening socket.  A port carries one host connection at a time: while
 * no host client is connected, read() returns 0 and poll() reports POLLHUP
 * at once, so a port is only polled while its host side is connected; the
 * kernel sends SIGIO (F_SETSIG) when that changes. */

/* Make dir the root: move its mount over / and chroot into it (what
 * switch_root does, minus deleting the initramfs).  -1 with errno. */
int agent_vm_enter_root(const char *dir);
/* Open a virtio-serial port device non-blocking, asking for SIGIO when its
 * host side connects or disconnects.  The fd, or -1 with errno. */
int agent_port_open(const char *path);
/* True while the host side of the port has a client connected. */
bool agent_port_host_connected(int fd);
/* Flush the disks and power the guest off (QEMU then exits).  Returns only
 * on failure. */
void agent_vm_poweroff(void);

#endif
