/* cgroup.h - one cgroup per sandbox, for memory, pids and cpu limits.
 *
 * Works on cgroup v2 (a unified hierarchy mounted at /sys/fs/cgroup with the
 * controllers enabled) and on v1 (one mount per controller, as on hybrid
 * hosts).  A sandbox's cgroup is "sbx/<name>" below the cgroup the calling
 * process is in (per controller on v1, read from /proc/self/cgroup), so a
 * server that was itself put in a cgroup keeps its sandboxes inside it.
 *
 * The set of directories a sandbox got is handed out as a "path list": a
 * NUL-terminated string of lines "<controller> <absolute directory>\n"
 * ("memory", "pids", "cpu"; "unified" for the one v2 directory).  The
 * caller stores it (vmm/ns.c keeps it in <sandbox dir>/cgroups) and passes it
 * back to attach/kill/remove, so removal does not depend on where the caller
 * runs later.  Nothing here keeps state between calls; all calls are
 * thread-safe.
 */
#ifndef SBX_VMM_CGROUP_H
#define SBX_VMM_CGROUP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "../common/err.h"

typedef struct cgroup_limits {
  int64_t memory_mib; /* 0 = no limit; else memory (and memory+swap) capped */
  double cpus;        /* 0 = no limit; else CFS quota of cpus * period */
  int64_t pids;       /* 0 = no limit; else pids.max */
} cgroup_limits;

/* Which hierarchy the host has: 2 (unified), 1 (per-controller), or 0 when no
 * usable cgroup file system is mounted. */
int cgroup_version(void);

/* Create (or reuse, when it exists and is empty) the cgroup "sbx/<name>" for
 * every controller the host has among memory, pids and cpu, and write the
 * limits (a 0 limit writes "no limit", so a reused cgroup never keeps an old
 * value).  A controller that is missing is skipped with a warning in the log,
 * unless a limit for it was asked for: that is an error.  On success *paths is
 * a malloc'd path list (caller frees; possibly empty when the host has no
 * cgroups at all and no limit was asked for).  On failure every directory this
 * call created is removed again. */
int cgroup_create(const char *name, const cgroup_limits *lim, char **paths, sbx_err *err);

/* Move pid into every cgroup of the path list (cgroup.procs). */
int cgroup_attach(const char *paths, pid_t pid, sbx_err *err);

/* SIGKILL every process listed in any cgroup of the path list.  Returns the
 * number of processes found (0 when all are empty or gone). */
int cgroup_kill_all(const char *paths);

/* Kill what is left, then rmdir every cgroup of the path list, retrying for
 * up to ~2 s while a cgroup still has tasks.  Directories already gone are
 * fine.  The shared "sbx" parent is left in place (empty, it costs nothing,
 * and removing it would race with a concurrent cgroup_create). */
int cgroup_remove(const char *paths, sbx_err *err);

/* Read one control file of the cgroup in the path list whose directory lives
 * under the hierarchy of `controller` ("memory", "pids", "cpu"; on v2 any
 * name selects the single directory).  Returns a malloc'd, trailing-newline-
 * stripped string, or NULL.  For tests and diagnostics. */
char *cgroup_read(const char *paths, const char *controller, const char *file);

#endif
