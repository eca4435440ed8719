/* driver.h - the sandbox driver interface ("the VMM side").
 *
 * A driver turns a sandbox record into something that runs sbx-agent and
 * hands back a byte stream to it: `ns` (vmm/ns.c: Linux namespaces) and
 * `vm` (vmm/vm.c: a QEMU microvm per sandbox).
 *
 * Layout a driver owns, per sandbox: <data_dir>/sandboxes/<id>/ (mode 0700).
 * Running sandboxes do not depend on sbxd staying alive: after a restart the
 * gateway calls alive() and connect() again.
 *
 * All calls are blocking and thread-safe (they may run in MHD threads); none
 * of them touches the database.
 */
#ifndef SBX_VMM_DRIVER_H
#define SBX_VMM_DRIVER_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "../common/err.h"

typedef struct sbx_sandbox_spec {
  const char *id;         /* "sbx_<16 hex>" */
  const char *hostname;   /* the sandbox's name, or its id */
  const char *image;      /* "host" or a folder name under images_dir (validated by caller) */
  const char *data_dir;   /* server data dir (absolute) */
  const char *images_dir; /* server images dir (absolute) */
  const char *agent_path; /* absolute path of the static sbx-agent binary */
  int64_t memory_mib;     /* 0 = no limit */
  double cpus;            /* 0 = no limit */
  int64_t pids;           /* 0 = no limit */
  int64_t disk_mib;       /* 0 = no limit (ns: recorded only; vm: the writable disk's size) */
  const char *network;    /* "none": loopback only (the only value today) */
} sbx_sandbox_spec;

typedef struct sbx_driver {
  const char *name; /* "ns", "vm" */
  /* Prepare a new sandbox's writable layer and directories.  Fails if the image
   * does not exist (kind invalid_request, field "image"). */
  int (*create)(const sbx_sandbox_spec *spec, sbx_err *err);
  /* Start the sandbox (again): on success the agent is running (or about to
   * accept on its socket) and *pid is its host pid.  Returns < 0 with a clear
   * message when anything in the setup fails; nothing is left running then. */
  int (*start)(const sbx_sandbox_spec *spec, pid_t *pid, sbx_err *err);
  /* Stop every process of the sandbox (SIGKILL to the agent, i.e. the whole
   * pid namespace) and wait until they are gone; keeps the writable layer.
   * Stopping a stopped sandbox succeeds. */
  int (*stop)(const sbx_sandbox_spec *spec, sbx_err *err);
  /* Stop, then remove everything create made (layer, cgroup, directories). */
  int (*destroy)(const sbx_sandbox_spec *spec, sbx_err *err);
  /* True if the sandbox's agent process still runs. */
  bool (*alive)(const sbx_sandbox_spec *spec);
  /* Open a new byte stream to the agent (a connected, CLOEXEC, blocking fd).
   * Returns the fd, or < 0. */
  int (*connect)(const sbx_sandbox_spec *spec, sbx_err *err);
  /* The sandbox's log file (GET /v1/sandboxes/{ref}/logs): the agent's log
   * for ns, the serial console (boot, kernel, agent) for vm. */
  int (*log_path)(const sbx_sandbox_spec *spec, char *out, size_t n, sbx_err *err);
} sbx_driver;

extern const sbx_driver vmm_ns_driver;
extern const sbx_driver vmm_vm_driver;

/* Look a driver up by name; NULL if unknown. */
const sbx_driver *vmm_driver_by_name(const char *name);

#endif
