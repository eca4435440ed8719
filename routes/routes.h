/* routes.h - the route table: every REST route sbxd serves, in one place.
 * tests/integration compares it (through the server) with openapi.yaml. */
#ifndef SBX_ROUTES_H
#define SBX_ROUTES_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "../server/http.h"

/* body: the parsed JSON object for routes that take one (NULL otherwise). */
typedef enum MHD_Result (*route_fn)(http_req *r, json_t *body);

typedef enum { BODY_NONE, BODY_JSON, BODY_RAW } route_body;

typedef struct route {
  const char *method;
  const char *path; /* segments; "{}" matches one non-empty segment */
  route_fn fn;
  route_body body; /* JSON: parsed and passed; RAW: left in r->body for the handler */
  sbx_scope scope;  /* what a key needs (SCOPE_NONE: open to all) */
} route;

extern const route routes_table[];
extern const size_t routes_count;

/* handlers, one file per resource */
enum MHD_Result route_health(http_req *r, json_t *body);
enum MHD_Result route_version(http_req *r, json_t *body);
enum MHD_Result route_openapi_json(http_req *r, json_t *body);
enum MHD_Result route_openapi_yaml(http_req *r, json_t *body);
/* the browser console (web.c): GET / is index.html, GET /web/{file} the rest */
enum MHD_Result route_web_index(http_req *r, json_t *body);
enum MHD_Result route_web_file(http_req *r, json_t *body);
enum MHD_Result route_sandbox_create(http_req *r, json_t *body);
enum MHD_Result route_sandbox_list(http_req *r, json_t *body);
enum MHD_Result route_sandbox_get(http_req *r, json_t *body);
enum MHD_Result route_sandbox_logs(http_req *r, json_t *body);
enum MHD_Result route_sandbox_delete(http_req *r, json_t *body);
enum MHD_Result route_sandbox_stop(http_req *r, json_t *body);
enum MHD_Result route_sandbox_start(http_req *r, json_t *body);
enum MHD_Result route_exec(http_req *r, json_t *body);
enum MHD_Result route_shell(http_req *r, json_t *body);
enum MHD_Result route_exec_list(http_req *r, json_t *body);
enum MHD_Result route_exec_get(http_req *r, json_t *body);
enum MHD_Result route_exec_wait(http_req *r, json_t *body);
enum MHD_Result route_exec_signal(http_req *r, json_t *body);
enum MHD_Result route_exec_kill(http_req *r, json_t *body);
enum MHD_Result route_exec_stdin(http_req *r, json_t *body);
enum MHD_Result route_exec_resize(http_req *r, json_t *body);
enum MHD_Result route_exec_output(http_req *r, json_t *body);

/* The exec {id}'s record, checked against the caller's reach; NULL with the
 * reply queued in *ret (404, 403, 500). */
json_t *route_exec_record(http_req *r, enum MHD_Result *ret);

/* Fill a running exec record's stdout_bytes/stderr_bytes from the loop. */
void route_exec_live_counts(json_t *ex);

/* Note API activity on a sandbox (for idle_timeout_s). */
void sandbox_touch(const char *sandbox_id);
/* Stop sandboxes past idle_timeout_s or max_duration_s (called every second). */
void sandboxes_reap(void);

/* Recover at start: re-link running sandboxes, mark the others stopped. */
void sandboxes_recover(void);

/* Paging parameters shared by list routes: limit (default 50, 1..500) and cursor. */
int route_paging(http_req *r, int *limit, const char **cursor, sbx_err *err);

#endif
