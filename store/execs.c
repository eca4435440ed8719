/* execs.c - queries on the execs table. */
#include <stdio.h>
#include <string.h>

#include "../common/util.h"
#include "store_int.h"

static const char *const exec_states[] = {"running", "exited", "failed", "timed_out", "killed",
                                          NULL};

/* Same order as the SELECT and INSERT lists below: index i is parameter i+1
 * and result column i. */
static const store_col exec_cols[] = {
    {.name = "exec_id", .type = STORE_COL_TEXT, .required = true, .notnull = true},
    {.name = "sandbox_id", .type = STORE_COL_TEXT, .required = true, .notnull = true},
    {.name = "cmd", .type = STORE_COL_TEXT, .required = true, .notnull = true},
    {.name = "args", .type = STORE_COL_ARRAY, .dflt = "[]"},
    {.name = "cwd", .type = STORE_COL_TEXT},
    {.name = "user", .type = STORE_COL_TEXT},
    {.name = "tty", .type = STORE_COL_BOOL, .notnull = true, .dflt = "0"},
    {.name = "state", .type = STORE_COL_TEXT, .notnull = true, .dflt = "running",
     .allowed = exec_states},
    {.name = "pid", .type = STORE_COL_INT},
    {.name = "exit_code", .type = STORE_COL_INT},
    {.name = "signal", .type = STORE_COL_INT},
    {.name = "failure", .type = STORE_COL_OBJECT},
    {.name = "started_at", .type = STORE_COL_TEXT, .notnull = true, .now_default = true},
    {.name = "ended_at", .type = STORE_COL_TEXT},
    {.name = "stdout_bytes", .type = STORE_COL_INT, .notnull = true, .dflt = "0"},
    {.name = "stderr_bytes", .type = STORE_COL_INT, .notnull = true, .dflt = "0"},
};
#define NCOLS (sizeof exec_cols / sizeof exec_cols[0])

#define EXEC_SELECT                                                                            \
  "SELECT exec_id, sandbox_id, cmd, args, cwd, user, tty, state, pid, exit_code, signal, "   \
  "failure, started_at, ended_at, stdout_bytes, stderr_bytes, seq FROM execs "

static const char sql_insert[] =
    "INSERT INTO execs (exec_id, sandbox_id, cmd, args, cwd, user, tty, state, pid, exit_code, "
    "signal, failure, started_at, ended_at, stdout_bytes, stderr_bytes) "
    "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)";

static const char sql_get[] = EXEC_SELECT "WHERE exec_id = ?1";

/* Newest first: the cursor is the last seq returned, the next page is below it. */
static const char sql_list[] = EXEC_SELECT
    "WHERE sandbox_id = ?1 AND seq < ?2 AND (?3 IS NULL OR state = ?3) "
    "ORDER BY seq DESC LIMIT ?4";

static const char sql_end_running[] =
    "UPDATE execs SET state = ?2, ended_at = ?3 WHERE sandbox_id = ?1 AND state = 'running'";

int store_exec_insert(store *s, json_t *exec, sbx_err *err) {
  /* one statement: it commits by itself (and waits in the busy handler) */
  cleanup_stmt_reset sqlite3_stmt *st = NULL;
  if (store_prepare(s, sql_insert, &st, err) < 0 ||
      store_bind_object(s, st, "execs", exec_cols, NCOLS, exec, err) < 0)
    return -1;
  int rc = sqlite3_step(st);
  if (rc == SQLITE_CONSTRAINT_FOREIGNKEY)
    return sbx_fail(err, SBX_E_SANDBOX_NOT_FOUND, 0, "no sandbox \"%s\"",
                    json_string_value(json_object_get(exec, "sandbox_id")));
  if (rc != SQLITE_DONE)
    return store_sql_fail(s, rc, err, "insert exec");
  return 0;
}

/* The UPDATE names only the columns present in `fields`.  Its text is built
 * from this file's column table (each key is first matched against it), never
 * from the caller's strings; every value is a bound parameter. */
int store_exec_update(store *s, const char *exec_id, json_t *fields, sbx_err *err) {
  if (!json_is_object(fields))
    return sbx_fail(err, SBX_E_INTERNAL, 0, "store: exec update must be a JSON object");
  /* longest: every column name plus " = ?NN, " each */
  char sql[1024];
  size_t len = (size_t)snprintf(sql, sizeof sql, "UPDATE execs SET ");
  const store_col *set[NCOLS];
  json_t *vals[NCOLS];
  size_t n = 0;
  const char *key;
  json_t *v;
  json_object_foreach(fields, key, v) {
    const store_col *c = store_col_find(exec_cols, NCOLS, key);
    if (!c)
      return sbx_fail(err, SBX_E_INTERNAL, 0, "store: execs has no field \"%s\"", key);
    if (c == &exec_cols[0] || c == &exec_cols[1])
      return sbx_fail(err, SBX_E_INTERNAL, 0, "store: execs.%s cannot change", key);
    if (store_col_check("execs", c, v, err) < 0)
      return -1;
    set[n] = c;
    vals[n] = v;
    n++;
    len += (size_t)snprintf(sql + len, sizeof sql - len, "%s%s = ?%zu", n > 1 ? ", " : "",
                            c->name, n);
  }
  if (n == 0) {
    /* nothing to change, but the exec must still exist */
    json_auto_t *cur = NULL;
    return store_exec_get(s, exec_id, &cur, err);
  }
  len += (size_t)snprintf(sql + len, sizeof sql - len, " WHERE exec_id = ?%zu", n + 1);
  if (len >= sizeof sql)
    return sbx_fail(err, SBX_E_INTERNAL, 0, "store: exec update too long");

  /* one statement: it commits by itself (and waits in the busy handler) */
  cleanup_stmt_reset sqlite3_stmt *st = NULL;
  if (store_prepare_built(s, sql, &st, err) < 0)
    return -1;
  int rc;
  for (size_t i = 0; i < n; i++)
    if (store_bind_col(s, st, (int)i + 1, set[i], vals[i], err) < 0)
      return -1;
  rc = sqlite3_bind_text(st, (int)n + 1, exec_id, -1, SQLITE_TRANSIENT);
  if (rc != SQLITE_OK)
    return store_sql_fail(s, rc, err, "bind");
  rc = sqlite3_step(st);
  if (rc != SQLITE_DONE)
    return store_sql_fail(s, rc, err, "update exec");
  if (sqlite3_changes(s->db) == 0)
    return sbx_fail(err, SBX_E_EXEC_NOT_FOUND, 0, "no exec \"%s\"", exec_id);
  return 0;
}

int store_exec_get(store *s, const char *exec_id, json_t **out, sbx_err *err) {
  cleanup_stmt_reset sqlite3_stmt *st = NULL;
  if (store_prepare(s, sql_get, &st, err) < 0)
    return -1;
  if (store_bind_texts(s, st, err, 1, exec_id) < 0)
    return -1;
  int rc = sqlite3_step(st);
  if (rc == SQLITE_DONE)
    return sbx_fail(err, SBX_E_EXEC_NOT_FOUND, 0, "no exec \"%s\"", exec_id);
  if (rc != SQLITE_ROW)
    return store_sql_fail(s, rc, err, "get exec");
  return store_row_json(st, "execs", exec_cols, NCOLS, out, err);
}

static int exec_row(sqlite3_stmt *st, json_t **out, sbx_err *err) {
  return store_row_json(st, "execs", exec_cols, NCOLS, out, err);
}

int store_exec_list(store *s, const char *sandbox_id, const char *state, int limit,
                    const char *cursor, json_t **out, char **next_cursor, sbx_err *err) {
  int64_t before = INT64_MAX;
  if (store_check_limit(limit, err) < 0 ||
      (cursor && store_cursor_parse(cursor, &before, err) < 0))
    return -1;
  cleanup_stmt_reset sqlite3_stmt *st = NULL;
  if (store_prepare(s, sql_list, &st, err) < 0)
    return -1;
  int rc = sqlite3_bind_text(st, 1, sandbox_id, -1, SQLITE_TRANSIENT);
  if (rc == SQLITE_OK)
    rc = sqlite3_bind_int64(st, 2, before);
  if (rc == SQLITE_OK)
    rc = state ? sqlite3_bind_text(st, 3, state, -1, SQLITE_TRANSIENT) : sqlite3_bind_null(st, 3);
  /* one extra row tells whether another page exists */
  if (rc == SQLITE_OK)
    rc = sqlite3_bind_int(st, 4, limit + 1);
  if (rc != SQLITE_OK)
    return store_sql_fail(s, rc, err, "bind");
  return store_collect_page(s, st, limit, (int)NCOLS, exec_row, "list execs", out, next_cursor,
                            err);
}

int store_exec_end_running(store *s, const char *sandbox_id, const char *state, sbx_err *err) {
  const store_col *c = store_col_find(exec_cols, NCOLS, "state");
  json_auto_t *jstate = json_string(state);
  if (!jstate)
    return sbx_fail(err, SBX_E_INTERNAL, 0, "store: bad state");
  if (store_col_check("execs", c, jstate, err) < 0)
    return -1;
  if (strcmp(state, "running") == 0)
    return sbx_fail(err, SBX_E_INTERNAL, 0, "store: end_running needs a final state");
  char now[40];
  sbx_rfc3339(sbx_now_ms(), now, sizeof now);
  cleanup_tx store_tx tx = {0};
  if (store_tx_begin(s, &tx, err) < 0)
    return -1;
  cleanup_stmt_reset sqlite3_stmt *st = NULL;
  if (store_prepare(s, sql_end_running, &st, err) < 0)
    return -1;
  if (store_bind_texts(s, st, err, 3, sandbox_id, state, now) < 0)
    return -1;
  int rc = sqlite3_step(st);
  if (rc != SQLITE_DONE)
    return store_sql_fail(s, rc, err, "end running execs");
  int changed = sqlite3_changes(s->db);
  if (store_tx_commit(&tx, err) < 0)
    return -1;
  return changed;
}
