/* ns.h - internals shared by the ns driver (vmm/ns.c, inside sbxd) and its
 * launcher (vmm/launch_main.c, the sbx-launch binary).  Not a public
 * contract: the gateway uses vmm/driver.h only.  Tests include it to look at
 * the files a sandbox leaves on the host.
 */
#ifndef SBX_VMM_NS_H
#define SBX_VMM_NS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <spawn.h>
#include <sys/types.h>

#include "../common/err.h"
#include "driver.h"

/* Every sandbox maps its uids/gids 0..NS_ID_COUNT-1 to host
 * NS_HOST_ID_BASE..NS_HOST_ID_BASE+NS_ID_COUNT-1 (one range shared by all
 * sandboxes: they cannot see each other's files anyway). */
#define NS_HOST_ID_BASE 100000u
#define NS_ID_COUNT 65536u

/* How long start() waits for sbx-launch to report. */
#define NS_LAUNCH_TIMEOUT_MS 10000

/* Names inside <data_dir>/sandboxes/<id>/. */
#define NS_UPPER "upper"
#define NS_WORK "work"
#define NS_ROOT "root"
#define NS_LOWER "lower"     /* staging mount point for the idmapped lower layer */
#define NS_SOCK "agent.sock" /* the agent's listening socket (0600, root) */
#define NS_PIDFILE "pid"     /* "<host pid> <start time in clock ticks>\n" */
#define NS_CGROUPS "cgroups" /* the cgroup path list (vmm/cgroup.h) */
#define NS_AGENT_LOG "agent.log"
#define NS_LAUNCH_LOG "launch.log"

/* "<dir>/<name>" into out; -1 (ENAMETOOLONG) if it does not fit. */
int ns_join(char *out, size_t outsz, const char *dir, const char *name);

/* <data_dir>/sandboxes/<id> into out; -1 (ENAMETOOLONG) if it does not fit. */
int ns_sandbox_dir(const char *data_dir, const char *id, char *out, size_t outsz);

/* Check an image name against images_dir: "host", or an existing directory
 * images_dir/<name> whose name is a plain name (no '/', no leading '.').
 * Fails with kind invalid_request and field "image". */
int ns_check_image(const char *image, const char *images_dir, sbx_err *err);

/* The start time (field 22 of /proc/<pid>/stat, clock ticks since boot) of a
 * live, non-zombie process; 0 if it is gone or a zombie. */
uint64_t ns_proc_starttime(pid_t pid);

/* Write "<pid> <starttime>\n" to <dir>/pid atomically (temp file + rename). */
int ns_pidfile_write(const char *dir, pid_t pid, sbx_err *err);

/* Read <dir>/pid.  Returns 0 and fills pid/start, or -1 if missing or bad. */
int ns_pidfile_read(const char *dir, pid_t *pid, uint64_t *start);

/* Bind (listen) or connect an AF_UNIX stream socket at <dir>/<name>, using a
 * /proc/self/fd path when the plain path is longer than sun_path.  Returns the
 * CLOEXEC fd or -1 with errno.  ns_unix_listen changes the umask for the
 * bind: single-threaded callers (sbx-launch) only. */
int ns_unix_listen(const char *dir, const char *name);
int ns_unix_connect(const char *dir, const char *name);

/* Helpers the vm driver shares (vmm/vm.c). */

/* Lock a sandbox dir (flock): serializes start/stop/destroy of one sandbox.
 * The locked dir fd, or -1 with errno (ENOENT: the dir does not exist). */
int ns_lock_dir(const char *dir);
/* The pid in <dir>/pid if it names a live process started at the recorded
 * time (so a reused pid is never taken for ours), else 0. */
pid_t ns_live_pid(const char *dir);
/* Stop (and with destroy, then remove the cgroups and the dir of) the
 * sandbox at dir under its lock, stopping with the driver's stop_locked.
 * A dir that does not exist is a success: nothing runs there. */
int ns_stop_dir(const char *dir, bool destroy, int (*stop_locked)(const char *, sbx_err *),
                sbx_err *err);
/* SIGKILL the process the pid file names (the ns agent, a VM's QEMU) and
 * everything in the sandbox's cgroups, and wait up to 5 s until all are gone. */
int ns_kill_sandbox(const char *dir, sbx_err *err);
/* sbxd blocks SIGTERM/SIGINT in every thread and ignores SIGPIPE: a program
 * it spawns (sbx-launch, QEMU, mkfs) starts with no signal blocked and every
 * disposition default.  flags: more POSIX_SPAWN_* flags to set. */
void ns_spawn_clean(posix_spawnattr_t *at, short flags);
/* Connect to the agent socket <dir>/<sock>: the fd, or -1 with err filled
 * (kind sandbox_not_running when the pid file names no live process). */
int ns_connect_agent(const char *dir, const char *sock, sbx_err *err);
/* unlink <dir>/<name>, ignoring errors. */
void ns_unlink_in(const char *dir, const char *name);
/* The cgroup path list kept in <dir>/cgroups (malloc'd), or NULL. */
char *ns_read_cgroups(const char *dir);
/* The last non-empty line of <dir>/<name> (empty when there is none). */
void ns_log_tail(const char *dir, const char *name, char *out, size_t n);

#endif
