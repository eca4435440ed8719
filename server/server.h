/* server.h - sbxd's configuration and the process-wide server object.
 *
 * There is exactly one sbx_server per process (g_server), created by main()
 * before any thread starts and destroyed after every thread has stopped, so
 * threads read its configuration without locks. */
#ifndef SBX_SERVER_H
#define SBX_SERVER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "../vmm/driver.h"

#define SBX_VERSION "0.1.0"

typedef struct sbx_config {
  char host[256];
  int port;
  char data_dir[1024];   /* absolute */
  char images_dir[1024]; /* absolute */
  char db_path[1100];
  char agent_path[1024]; /* static sbx-agent */
  size_t max_body;       /* bytes; larger request bodies get 413 */
  int http_threads;
  int64_t shutdown_grace_ms; /* how long in-flight requests may finish at SIGTERM */
  uint64_t retain_bytes;         /* output kept per stream of each exec */
  int64_t retain_after_exit_ms;  /* how long an ended exec's output stays */
  int ws_ping_s;                 /* ping idle WebSockets after this; drop after twice */
  char allow_origin[16][256];    /* browser Origins allowed (besides same-host); "*" = any */
  int n_allow_origin;
  double rate_per_s;  /* requests per second per API key (burst: twice that); 0 = no limit */
  bool insecure;      /* allow a non-loopback listen address without keys */
  int max_sandboxes;  /* sandboxes per server (503 capacity beyond) */
  int max_execs;      /* running execs per sandbox (503 capacity beyond) */
  int max_conns, max_conns_per_ip; /* REST connections (503 capacity beyond) */
  size_t max_header_bytes;  /* request line + headers; larger is a 413 */
  int handshake_timeout_s;  /* the whole request head must arrive within this */
  int idle_timeout_s;       /* an idle REST connection is closed after this */
  char default_driver[8];   /* "ns" or "vm": sandboxes created without "driver" */
  char vm_accel[8];         /* "auto", "kvm" or "tcg" (vmm/vm.h) */
} sbx_config;

struct loop;
struct json_t;
struct MHD_Daemon;

typedef struct sbx_server {
  sbx_config cfg;
  const sbx_driver *driver; /* the default, for sandboxes created without "driver" */
  struct loop *loop;
  struct MHD_Daemon *mhd;
  atomic_int inflight;   /* REST requests between first byte and completion */
  atomic_bool stopping;  /* SIGTERM seen: refuse new work */
  int64_t started_ms;
} sbx_server;

extern sbx_server *g_server;

/* Fill a driver spec from a sandbox object (SPEC shape).  The strings point
 * into `sandbox` and g_server->cfg, so they live as long as both. */
void server_sandbox_spec(struct json_t *sandbox, sbx_sandbox_spec *spec);
/* The driver a sandbox object names (its "driver"; the default if unknown). */
const sbx_driver *server_driver(struct json_t *sandbox);

#endif
