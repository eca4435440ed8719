/* store.h - SQLite state: sandboxes and execs.
 *
 * One connection per thread (store_thread()), WAL mode, busy_timeout,
 * synchronous=NORMAL, BEGIN IMMEDIATE for writes; numbered migrations are
 * applied at open inside one transaction, so a crash never leaves a half
 * migrated schema.  A committed record survives kill -9.
 *
 * Records go in and come out as jansson objects shaped exactly like the SPEC's
 * sandbox and exec objects (no private fields), so routes can reply with
 * them as they are.  Objects returned through `json_t **out` are new
 * references the caller must json_decref.
 */
#ifndef SBX_STORE_H
#define SBX_STORE_H

#include <jansson.h>
#include <stdint.h>

#include "../common/err.h"

typedef struct store store;

/* Open (creating if needed) the database at path and migrate it. */
int store_open(const char *path, store **out, sbx_err *err);
void store_close(store *s);
static inline void store_closep(store **s) {
  if (*s)
    store_close(*s);
}
#define cleanup_store __attribute__((cleanup(store_closep)))

/* Per-thread connections: store_global_init() once at start (opens and
 * migrates the file), then store_thread() returns this thread's connection,
 * opening it on first use; it is closed when the thread exits or at
 * store_global_shutdown() for the calling thread.  NULL if it cannot open. */
int store_global_init(const char *path, sbx_err *err);
store *store_thread(void);
void store_global_shutdown(void);

/* ---- sandboxes ---- */
/* Insert a sandbox object (every SPEC field; "error" optional).  A taken name
 * is SBX_E_SANDBOX_EXISTS. */
int store_sandbox_insert(store *s, json_t *sandbox, sbx_err *err);
/* Look up by id or name.  Unknown: SBX_E_SANDBOX_NOT_FOUND. */
int store_sandbox_get(store *s, const char *ref, json_t **out, sbx_err *err);
/* List, oldest first.  state may be NULL; labels is NULL or an object of
 * k -> v that must all match.  limit 1..500.  cursor NULL or a value from a
 * previous next_cursor.  *out is a JSON array, *next_cursor a malloc'd
 * string or NULL at the end.  A bad cursor is invalid_request (field "cursor"). */
int store_sandbox_list(store *s, const char *state, json_t *labels, int limit, const char *cursor,
                       json_t **out, char **next_cursor, sbx_err *err);
/* Set state; "running" also sets started_at=now and clears stopped_at and error,
 * "stopped"/"failed" set stopped_at=now.  error may be NULL. */
int store_sandbox_set_state(store *s, const char *id, const char *state, const char *error,
                            sbx_err *err);
/* How many sandboxes there are (any state). */
int store_sandbox_count(store *s, int64_t *n, sbx_err *err);
/* Remove a sandbox and its exec records. Unknown: SBX_E_SANDBOX_NOT_FOUND. */
int store_sandbox_delete(store *s, const char *id, sbx_err *err);

/* ---- execs ---- */
/* Insert an exec object (SPEC fields; state usually "running"). */
int store_exec_insert(store *s, json_t *exec, sbx_err *err);
/* Update the named fields of an exec from an object, e.g. {"state":"exited",
 * "exit_code":0,"signal":null,"ended_at":"...","stdout_bytes":3,...}.  Only SPEC
 * exec fields are allowed; an unknown key is SBX_E_INTERNAL. */
int store_exec_update(store *s, const char *exec_id, json_t *fields, sbx_err *err);
/* Unknown: SBX_E_EXEC_NOT_FOUND. */
int store_exec_get(store *s, const char *exec_id, json_t **out, sbx_err *err);
/* A sandbox's execs, newest first; state may be NULL; paging as for sandboxes. */
int store_exec_list(store *s, const char *sandbox_id, const char *state, int limit,
                    const char *cursor, json_t **out, char **next_cursor, sbx_err *err);
/* Mark every exec of a sandbox still "running" as state (e.g. "killed") with
 * ended_at=now.  Used at stop and at restart recovery. */
int store_exec_end_running(store *s, const char *sandbox_id, const char *state, sbx_err *err);

/* ---- API keys ---- */
/* Keys are {"id","scope","labels":{k:v},"name","created_at","revoked_at","hash"};
 * hash is the hex SHA-256 of the whole key, never the key. */
int store_key_insert(store *s, const char *id, const char *hash_hex, const char *scope,
                     json_t *labels, const char *name, sbx_err *err);
/* Unknown: SBX_E_NOT_FOUND. */
int store_key_get(store *s, const char *id, json_t **out, sbx_err *err);
/* Every key, oldest first (hash omitted). */
int store_key_list(store *s, json_t **out, sbx_err *err);
/* Unknown or already revoked: SBX_E_NOT_FOUND. */
int store_key_revoke(store *s, const char *id, sbx_err *err);
/* Keys not revoked. */
int store_key_count_active(store *s, int64_t *n, sbx_err *err);

#endif
