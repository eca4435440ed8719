/* sandboxes.c - queries on the sandboxes table. */
#include <string.h>

#include "../common/util.h"
#include "store_int.h"

static const char *const sandbox_states[] = {"creating", "running", "stopping",
                                             "stopped",  "failed",  NULL};

/* Same order as the SELECT and INSERT lists below: index i is parameter i+1
 * and result column i. */
static const store_col sandbox_cols[] = {
    {.name = "id", .type = STORE_COL_TEXT, .required = true, .notnull = true},
    {.name = "name", .type = STORE_COL_TEXT, .required = true, .notnull = true},
    {.name = "state", .type = STORE_COL_TEXT, .notnull = true, .dflt = "creating",
     .allowed = sandbox_states},
    {.name = "image", .type = STORE_COL_TEXT},
    {.name = "env", .type = STORE_COL_OBJECT, .dflt = "{}"},
    {.name = "workdir", .type = STORE_COL_TEXT},
    {.name = "shell", .type = STORE_COL_TEXT},
    {.name = "limits", .type = STORE_COL_OBJECT, .dflt = "{}"},
    {.name = "network", .type = STORE_COL_TEXT},
    {.name = "labels", .type = STORE_COL_OBJECT, .dflt = "{}"},
    {.name = "idle_timeout_s", .type = STORE_COL_INT, .dflt = "0"},
    {.name = "max_duration_s", .type = STORE_COL_INT, .dflt = "0"},
    {.name = "driver", .type = STORE_COL_TEXT},
    {.name = "accelerator", .type = STORE_COL_TEXT},
    {.name = "created_at", .type = STORE_COL_TEXT, .notnull = true, .now_default = true},
    {.name = "started_at", .type = STORE_COL_TEXT},
    {.name = "stopped_at", .type = STORE_COL_TEXT},
    {.name = "error", .type = STORE_COL_TEXT},
};
#define NCOLS (sizeof sandbox_cols / sizeof sandbox_cols[0])

#define SANDBOX_SELECT                                                                         \
  "SELECT id, name, state, image, env, workdir, shell, limits, network, labels, "            \
  "idle_timeout_s, max_duration_s, driver, accelerator, created_at, started_at, stopped_at, " \
  "error, seq "                                                                               \
  "FROM sandboxes "

static const char sql_insert[] =
    "INSERT INTO sandboxes (id, name, state, image, env, workdir, shell, limits, network, "
    "labels, idle_timeout_s, max_duration_s, driver, accelerator, created_at, started_at, "
    "stopped_at, error) "
    "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)";

/* A name may look like another sandbox's id ("sbx_..." matches the name
 * pattern): the id match wins. */
static const char sql_get[] =
    SANDBOX_SELECT "WHERE id = ?1 OR name = ?1 ORDER BY id = ?1 DESC LIMIT 1";

/* The label filter is bound as one JSON object (?3) and matched with
 * json_each, so keys and values never become SQL or JSON-path text: a row
 * passes when no filter pair lacks an equal pair in its labels. */
static const char sql_list[] =
    SANDBOX_SELECT
    "WHERE seq > ?1 AND (?2 IS NULL OR state = ?2) "
    "AND NOT EXISTS (SELECT 1 FROM json_each(?3) f WHERE NOT EXISTS ("
    "  SELECT 1 FROM json_each(sandboxes.labels) l"
    "  WHERE l.key = f.key AND l.type = f.type AND l.value IS f.value)) "
    "ORDER BY seq LIMIT ?4";

/* running: fresh started_at, no stopped_at, no error.  stopped/failed:
 * stopped_at = now.  A given error is stored; otherwise an old error only
 * survives while the sandbox stays failed. */
static const char sql_set_state[] =
    "UPDATE sandboxes SET state = ?2, "
    "started_at = CASE WHEN ?2 = 'running' THEN ?3 ELSE started_at END, "
    "stopped_at = CASE WHEN ?2 = 'running' THEN NULL "
    "  WHEN ?2 IN ('stopped', 'failed') THEN ?3 ELSE stopped_at END, "
    "error = CASE WHEN ?2 = 'running' THEN NULL WHEN ?4 IS NOT NULL THEN ?4 "
    "  WHEN ?2 = 'failed' THEN error ELSE NULL END "
    "WHERE id = ?1";

static const char sql_delete[] = "DELETE FROM sandboxes WHERE id = ?1";

/* Row -> SPEC object; "error" appears only for a failed sandbox or one that
 * carries an error. */
static int sandbox_row(sqlite3_stmt *st, json_t **out, sbx_err *err) {
  json_auto_t *obj = NULL;
  if (store_row_json(st, "sandboxes", sandbox_cols, NCOLS, &obj, err) < 0)
    return -1;
  const char *state = json_string_value(json_object_get(obj, "state"));
  if (json_is_null(json_object_get(obj, "error")) && !(state && strcmp(state, "failed") == 0))
    json_object_del(obj, "error");
  *out = steal_pointer(&obj);
  return 0;
}

int store_sandbox_insert(store *s, json_t *sandbox, sbx_err *err) {
  cleanup_tx store_tx tx = {0};
  if (store_tx_begin(s, &tx, err) < 0)
    return -1;
  cleanup_stmt_reset sqlite3_stmt *st = NULL;
  if (store_prepare(s, sql_insert, &st, err) < 0 ||
      store_bind_object(s, st, "sandboxes", sandbox_cols, NCOLS, sandbox, err) < 0)
    return -1;
  int rc = sqlite3_step(st);
  if (rc == SQLITE_CONSTRAINT_UNIQUE && strstr(sqlite3_errmsg(s->db), "sandboxes.name"))
    return sbx_fail(err, SBX_E_SANDBOX_EXISTS, 0, "a sandbox named \"%s\" already exists",
                    json_string_value(json_object_get(sandbox, "name")));
  if (rc != SQLITE_DONE)
    return store_sql_fail(s, rc, err, "insert sandbox");
  return store_tx_commit(&tx, err);
}

int store_sandbox_get(store *s, const char *ref, json_t **out, sbx_err *err) {
  cleanup_stmt_reset sqlite3_stmt *st = NULL;
  if (store_prepare(s, sql_get, &st, err) < 0)
    return -1;
  if (store_bind_texts(s, st, err, 1, ref) < 0)
    return -1;
  int rc = sqlite3_step(st);
  if (rc == SQLITE_DONE)
    return sbx_fail(err, SBX_E_SANDBOX_NOT_FOUND, 0, "no sandbox \"%s\"", ref);
  if (rc != SQLITE_ROW)
    return store_sql_fail(s, rc, err, "get sandbox");
  return sandbox_row(st, out, err);
}

int store_sandbox_list(store *s, const char *state, json_t *labels, int limit, const char *cursor,
                       json_t **out, char **next_cursor, sbx_err *err) {
  int64_t after = 0;
  if (store_check_limit(limit, err) < 0 ||
      (cursor && store_cursor_parse(cursor, &after, err) < 0))
    return -1;
  if (labels && !json_is_null(labels) && !json_is_object(labels))
    return sbx_fail(err, SBX_E_INTERNAL, 0, "store: label filter must be an object");
  cleanup_free char *filter = NULL;
  if (labels && json_is_object(labels) && json_object_size(labels) > 0) {
    filter = json_dumps(labels, JSON_COMPACT);
    if (!filter)
      return sbx_fail(err, SBX_E_INTERNAL, 0, "store: cannot encode label filter");
  }
  cleanup_stmt_reset sqlite3_stmt *st = NULL;
  if (store_prepare(s, sql_list, &st, err) < 0)
    return -1;
  int rc = sqlite3_bind_int64(st, 1, after);
  if (rc == SQLITE_OK)
    rc = state ? sqlite3_bind_text(st, 2, state, -1, SQLITE_TRANSIENT) : sqlite3_bind_null(st, 2);
  if (rc == SQLITE_OK)
    rc = filter ? sqlite3_bind_text(st, 3, filter, -1, SQLITE_TRANSIENT) : sqlite3_bind_null(st, 3);
  /* one extra row tells whether another page exists */
  if (rc == SQLITE_OK)
    rc = sqlite3_bind_int(st, 4, limit + 1);
  if (rc != SQLITE_OK)
    return store_sql_fail(s, rc, err, "bind");
  return store_collect_page(s, st, limit, (int)NCOLS, sandbox_row, "list sandboxes", out,
                            next_cursor, err);
}

int store_sandbox_set_state(store *s, const char *id, const char *state, const char *error,
                            sbx_err *err) {
  const store_col *c = store_col_find(sandbox_cols, NCOLS, "state");
  json_auto_t *jstate = json_string(state);
  if (!jstate || store_col_check("sandboxes", c, jstate, err) < 0)
    return jstate ? -1 : sbx_fail(err, SBX_E_INTERNAL, 0, "store: bad state");
  char now[40];
  sbx_rfc3339(sbx_now_ms(), now, sizeof now);
  cleanup_tx store_tx tx = {0};
  if (store_tx_begin(s, &tx, err) < 0)
    return -1;
  cleanup_stmt_reset sqlite3_stmt *st = NULL;
  if (store_prepare(s, sql_set_state, &st, err) < 0)
    return -1;
  if (store_bind_texts(s, st, err, 4, id, state, now, error) < 0)
    return -1;
  int rc = sqlite3_step(st);
  if (rc != SQLITE_DONE)
    return store_sql_fail(s, rc, err, "set sandbox state");
  if (sqlite3_changes(s->db) == 0)
    return sbx_fail(err, SBX_E_SANDBOX_NOT_FOUND, 0, "no sandbox \"%s\"", id);
  return store_tx_commit(&tx, err);
}

int store_sandbox_delete(store *s, const char *id, sbx_err *err) {
  cleanup_tx store_tx tx = {0};
  if (store_tx_begin(s, &tx, err) < 0)
    return -1;
  cleanup_stmt_reset sqlite3_stmt *st = NULL;
  if (store_prepare(s, sql_delete, &st, err) < 0)
    return -1;
  if (store_bind_texts(s, st, err, 1, id) < 0)
    return -1;
  int rc = sqlite3_step(st);
  if (rc != SQLITE_DONE)
    return store_sql_fail(s, rc, err, "delete sandbox");
  if (sqlite3_changes(s->db) == 0)
    return sbx_fail(err, SBX_E_SANDBOX_NOT_FOUND, 0, "no sandbox \"%s\"", id);
  return store_tx_commit(&tx, err);
}

int store_sandbox_count(store *s, int64_t *n, sbx_err *err) {
  static const char sql[] = "SELECT count(*) FROM sandboxes";
  cleanup_stmt_reset sqlite3_stmt *st = NULL;
  if (store_prepare(s, sql, &st, err) < 0)
    return -1;
  int rc = sqlite3_step(st);
  if (rc != SQLITE_ROW)
    return store_sql_fail(s, rc, err, "count sandboxes");
  *n = sqlite3_column_int64(st, 0);
  return 0;
}
