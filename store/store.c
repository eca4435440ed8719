/* store.c - open, pragmas, per-thread connections and the helpers every
 * table's queries share (statement cache, transactions, typed columns,
 * cursors). */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "../common/util.h"
#include "store_int.h"

/* ---- statements ---- */

int store_prepare(store *s, const char *sql, sqlite3_stmt **out, sbx_err *err) {
  for (size_t i = 0; i < s->ncache; i++)
    if (s->cache[i].sql == sql) {
      *out = s->cache[i].stmt;
      return 0;
    }
  if (s->ncache == STORE_STMT_CACHE)
    return sbx_fail(err, SBX_E_INTERNAL, 0, "store: statement cache full");
  sqlite3_stmt *st = NULL;
  int rc = sqlite3_prepare_v3(s->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, NULL);
  if (rc != SQLITE_OK)
    return store_sql_fail(s, rc, err, "prepare");
  s->cache[s->ncache].sql = sql;
  s->cache[s->ncache].stmt = st;
  s->ncache++;
  *out = st;
  return 0;
}

int store_prepare_built(store *s, const char *sql, sqlite3_stmt **out, sbx_err *err) {
  size_t n = SBX_ARRAY_LEN(s->built);
  for (size_t i = 0; i < n; i++)
    if (s->built[i].sql && strcmp(s->built[i].sql, sql) == 0) {
      *out = s->built[i].stmt;
      return 0;
    }
  sqlite3_stmt *st = NULL;
  int rc = sqlite3_prepare_v3(s->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, NULL);
  if (rc != SQLITE_OK)
    return store_sql_fail(s, rc, err, "prepare");
  char *copy = strdup(sql);
  if (!copy) {
    sqlite3_finalize(st);
    return sbx_fail(err, SBX_E_INTERNAL, ENOMEM, "store: out of memory");
  }
  size_t i = s->nbuilt++ % n;
  sqlite3_finalize(s->built[i].stmt);
  free(s->built[i].sql);
  s->built[i].sql = copy;
  s->built[i].stmt = st;
  *out = st;
  return 0;
}

void store_stmt_resetp(sqlite3_stmt **st) {
  if (*st) {
    sqlite3_reset(*st);
    sqlite3_clear_bindings(*st);
    *st = NULL;
  }
}

void store_stmt_finalizep(sqlite3_stmt **st) {
  if (*st) {
    sqlite3_finalize(*st);
    *st = NULL;
  }
}

int store_sql_fail(store *s, int rc, sbx_err *err, const char *what) {
  int primary = rc & 0xff;
  if (primary == SQLITE_BUSY || primary == SQLITE_LOCKED)
    return sbx_fail(err, SBX_E_CAPACITY, 0, "database busy (%s)", what);
  return sbx_fail(err, SBX_E_INTERNAL, 0, "store: %s: %s", what,
                  s && s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc));
}

int store_bind_texts(store *s, sqlite3_stmt *st, sbx_err *err, int n, ...) {
  va_list ap;
  va_start(ap, n);
  int rc = SQLITE_OK;
  for (int i = 1; i <= n && rc == SQLITE_OK; i++) {
    const char *v = va_arg(ap, const char *);
    rc = v ? sqlite3_bind_text(st, i, v, -1, SQLITE_TRANSIENT) : sqlite3_bind_null(st, i);
  }
  va_end(ap);
  return rc == SQLITE_OK ? 0 : store_sql_fail(s, rc, err, "bind");
}

/* ---- transactions ---- */

static int exec_cached(store *s, const char *sql, const char *what, sbx_err *err) {
  cleanup_stmt_reset sqlite3_stmt *st = NULL;
  if (store_prepare(s, sql, &st, err) < 0)
    return -1;
  int rc = sqlite3_step(st);
  if (rc != SQLITE_DONE && rc != SQLITE_ROW)
    return store_sql_fail(s, rc, err, what);
  return 0;
}

static const char sql_begin[] = "BEGIN IMMEDIATE";
static const char sql_commit[] = "COMMIT";
static const char sql_rollback[] = "ROLLBACK";

int store_tx_begin(store *s, store_tx *tx, sbx_err *err) {
  tx->s = s;
  tx->open = false;
  if (exec_cached(s, sql_begin, "begin", err) < 0)
    return -1;
  tx->open = true;
  return 0;
}

int store_tx_commit(store_tx *tx, sbx_err *err) {
  if (exec_cached(tx->s, sql_commit, "commit", err) < 0)
    return -1; /* still open: the cleanup rolls it back */
  tx->open = false;
  return 0;
}

void store_tx_rollbackp(store_tx *tx) {
  if (!tx->open)
    return;
  tx->open = false;
  /* Only if SQLite did not already roll back by itself (it does on some
   * errors, e.g. SQLITE_FULL); a ROLLBACK then would fail noisily. */
  if (!sqlite3_get_autocommit(tx->s->db) && exec_cached(tx->s, sql_rollback, "rollback", NULL) < 0)
    log_error("store: rollback failed: %s", sqlite3_errmsg(tx->s->db));
}

/* ---- typed columns ---- */

const store_col *store_col_find(const store_col *cols, size_t n, const char *name) {
  for (size_t i = 0; i < n; i++)
    if (strcmp(cols[i].name, name) == 0)
      return &cols[i];
  return NULL;
}

static const char *json_type_name(json_t *v) {
  switch (json_typeof(v)) {
  case JSON_OBJECT: return "object";
  case JSON_ARRAY: return "array";
  case JSON_STRING: return "string";
  case JSON_INTEGER: return "integer";
  case JSON_REAL: return "number";
  case JSON_TRUE:
  case JSON_FALSE: return "boolean";
  case JSON_NULL: return "null";
  }
  return "?";
}

int store_col_check(const char *table, const store_col *c, json_t *v, sbx_err *err) {
  if (!v) {
    if (c->required)
      return sbx_fail(err, SBX_E_INTERNAL, 0, "store: %s.%s is required", table, c->name);
    return 0;
  }
  if (json_is_null(v)) {
    if (c->notnull)
      return sbx_fail(err, SBX_E_INTERNAL, 0, "store: %s.%s may not be null", table, c->name);
    return 0;
  }
  bool ok = false;
  switch (c->type) {
  case STORE_COL_TEXT: ok = json_is_string(v); break;
  case STORE_COL_INT: ok = json_is_integer(v); break;
  case STORE_COL_BOOL: ok = json_is_boolean(v); break;
  case STORE_COL_OBJECT: ok = json_is_object(v); break;
  case STORE_COL_ARRAY: ok = json_is_array(v); break;
  }
  if (!ok)
    return sbx_fail(err, SBX_E_INTERNAL, 0, "store: %s.%s has the wrong type (%s)", table,
                    c->name, json_type_name(v));
  if (c->allowed) {
    const char *sv = json_string_value(v);
    for (const char *const *a = c->allowed; *a; a++)
      if (strcmp(*a, sv) == 0)
        return 0;
    return sbx_fail(err, SBX_E_INTERNAL, 0, "store: %s.%s: unknown value \"%s\"", table, c->name,
                    sv);
  }
  return 0;
}

static int bind_rc(store *s, int rc, sbx_err *err) {
  return rc == SQLITE_OK ? 0 : store_sql_fail(s, rc, err, "bind");
}

static int bind_default(store *s, sqlite3_stmt *st, int idx, const store_col *c, sbx_err *err) {
  if (c->now_default) {
    char now[40];
    sbx_rfc3339(sbx_now_ms(), now, sizeof now);
    return bind_rc(s, sqlite3_bind_text(st, idx, now, -1, SQLITE_TRANSIENT), err);
  }
  if (!c->dflt)
    return bind_rc(s, sqlite3_bind_null(st, idx), err);
  if (c->type == STORE_COL_INT || c->type == STORE_COL_BOOL)
    return bind_rc(s, sqlite3_bind_int64(st, idx, strtoll(c->dflt, NULL, 10)), err);
  return bind_rc(s, sqlite3_bind_text(st, idx, c->dflt, -1, SQLITE_STATIC), err);
}

int store_bind_col(store *s, sqlite3_stmt *st, int idx, const store_col *c, json_t *v,
                   sbx_err *err) {
  if (!v)
    return bind_default(s, st, idx, c, err);
  if (json_is_null(v))
    return bind_rc(s, sqlite3_bind_null(st, idx), err);
  switch (c->type) {
  case STORE_COL_TEXT:
    return bind_rc(s,
                   sqlite3_bind_text(st, idx, json_string_value(v), (int)json_string_length(v),
                                     SQLITE_TRANSIENT),
                   err);
  case STORE_COL_INT:
    return bind_rc(s, sqlite3_bind_int64(st, idx, json_integer_value(v)), err);
  case STORE_COL_BOOL:
    return bind_rc(s, sqlite3_bind_int(st, idx, json_is_true(v)), err);
  case STORE_COL_OBJECT:
  case STORE_COL_ARRAY: {
    char *text = json_dumps(v, JSON_COMPACT);
    if (!text)
      return sbx_fail(err, SBX_E_INTERNAL, ENOMEM, "store: cannot encode %s", c->name);
    /* SQLite frees text with free() once done with it, even on failure */
    return bind_rc(s, sqlite3_bind_text(st, idx, text, -1, free), err);
  }
  }
  return sbx_fail(err, SBX_E_INTERNAL, 0, "store: bad column type");
}

int store_bind_object(store *s, sqlite3_stmt *st, const char *table, const store_col *cols,
                      size_t n, json_t *obj, sbx_err *err) {
  if (!json_is_object(obj))
    return sbx_fail(err, SBX_E_INTERNAL, 0, "store: %s record must be a JSON object", table);
  const char *key;
  json_t *v;
  /* records carry SPEC fields only: an extra key is a caller bug, not data */
  json_object_foreach(obj, key, v) {
    if (!store_col_find(cols, n, key))
      return sbx_fail(err, SBX_E_INTERNAL, 0, "store: %s has no field \"%s\"", table, key);
  }
  for (size_t i = 0; i < n; i++) {
    v = json_object_get(obj, cols[i].name);
    if (store_col_check(table, &cols[i], v, err) < 0 ||
        store_bind_col(s, st, (int)i + 1, &cols[i], v, err) < 0)
      return -1;
  }
  return 0;
}

static json_t *column_value(sqlite3_stmt *st, int i, const store_col *c, bool *corrupt) {
  if (sqlite3_column_type(st, i) == SQLITE_NULL)
    return json_null();
  switch (c->type) {
  case STORE_COL_TEXT:
    return json_stringn((const char *)sqlite3_column_text(st, i),
                        (size_t)sqlite3_column_bytes(st, i));
  case STORE_COL_INT:
    return json_integer(sqlite3_column_int64(st, i));
  case STORE_COL_BOOL:
    return json_boolean(sqlite3_column_int64(st, i) != 0);
  case STORE_COL_OBJECT:
  case STORE_COL_ARRAY: {
    const char *text = (const char *)sqlite3_column_text(st, i);
    json_t *v = text ? json_loadb(text, (size_t)sqlite3_column_bytes(st, i), 0, NULL) : NULL;
    if (!v || (c->type == STORE_COL_OBJECT ? !json_is_object(v) : !json_is_array(v))) {
      json_decref(v);
      *corrupt = true;
      return NULL;
    }
    return v;
  }
  }
  *corrupt = true;
  return NULL;
}

int store_row_json(sqlite3_stmt *st, const char *table, const store_col *cols, size_t n,
                   json_t **out, sbx_err *err) {
  json_auto_t *obj = json_object();
  if (!obj)
    return sbx_fail(err, SBX_E_INTERNAL, ENOMEM, "store: out of memory");
  for (size_t i = 0; i < n; i++) {
    bool corrupt = false;
    json_t *v = column_value(st, (int)i, &cols[i], &corrupt);
    if (corrupt)
      return sbx_fail(err, SBX_E_INTERNAL, 0, "store: %s.%s holds malformed JSON", table,
                      cols[i].name);
    if (json_object_set_new(obj, cols[i].name, v) < 0)
      return sbx_fail(err, SBX_E_INTERNAL, ENOMEM, "store: out of memory");
  }
  *out = steal_pointer(&obj);
  return 0;
}

/* ---- paging ---- */

int store_check_limit(int limit, sbx_err *err) {
  if (limit < 1 || limit > 500)
    return sbx_fail_field(err, "limit", "limit must be between 1 and 500, got %d", limit);
  return 0;
}

int store_cursor_parse(const char *cursor, int64_t *seq, sbx_err *err) {
  size_t len = strlen(cursor);
  uint64_t v = 0;
  /* exactly what store_cursor_make writes: 1..16 lowercase hex digits, no
   * leading zero, a positive int64 */
  bool ok = len >= 1 && len <= 16 && cursor[0] != '0';
  for (size_t i = 0; ok && i < len; i++) {
    char c = cursor[i];
    if (c >= '0' && c <= '9')
      v = v << 4 | (uint64_t)(c - '0');
    else if (c >= 'a' && c <= 'f')
      v = v << 4 | (uint64_t)(c - 'a' + 10);
    else
      ok = false;
  }
  if (!ok || v == 0 || v > (uint64_t)INT64_MAX)
    return sbx_fail_field(err, "cursor", "malformed cursor");
  *seq = (int64_t)v;
  return 0;
}

char *store_cursor_make(int64_t seq) {
  char *out = NULL;
  if (asprintf(&out, "%" PRIx64, (uint64_t)seq) < 0)
    return NULL;
  return out;
}

/* ---- open / close ---- */

static int set_pragma(store *s, const char *sql, const char *expect, sbx_err *err) {
  cleanup_stmt sqlite3_stmt *st = NULL;
  int rc = sqlite3_prepare_v2(s->db, sql, -1, &st, NULL);
  if (rc != SQLITE_OK)
    return store_sql_fail(s, rc, err, sql);
  /* Switching to WAL needs an exclusive lock, and SQLite answers BUSY at once
   * (no busy handler) when it could deadlock with another opener: retry for
   * as long as the busy timeout. */
  for (int tries = 0; (rc = sqlite3_step(st)) == SQLITE_BUSY || rc == SQLITE_LOCKED; tries++) {
    if (tries == 500)
      break;
    sqlite3_reset(st);
    sqlite3_sleep(10);
  }
  if (rc != SQLITE_ROW && rc != SQLITE_DONE)
    return store_sql_fail(s, rc, err, sql);
  if (expect) {
    const char *got = rc == SQLITE_ROW ? (const char *)sqlite3_column_text(st, 0) : NULL;
    if (!got || strcasecmp(got, expect) != 0)
      return sbx_fail(err, SBX_E_INTERNAL, 0, "store: %s gave %s, not %s", sql,
                      got ? got : "nothing", expect);
  }
  return 0;
}

int store_open(const char *path, store **out, sbx_err *err) {
  /* per-thread NOMUTEX connections still need SQLite's shared state locked */
  if (!sqlite3_threadsafe())
    return sbx_fail(err, SBX_E_INTERNAL, 0, "store: SQLite was built without thread support");
  cleanup_store store *s = calloc(1, sizeof *s);
  if (!s)
    return sbx_fail(err, SBX_E_INTERNAL, ENOMEM, "store: out of memory");
  /* NOMUTEX: a connection belongs to one thread (store_thread), so SQLite's
   * own per-connection mutex would only cost time. */
  int rc = sqlite3_open_v2(path, &s->db,
                           SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
  if (rc != SQLITE_OK) {
    sbx_fail(err, SBX_E_INTERNAL, 0, "store: open %s: %s", path,
             s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc));
    return -1;
  }
  sqlite3_extended_result_codes(s->db, 1);
  /* busy_timeout first: switching to WAL and migrating both take locks that
   * another process opening the same file may hold for a moment. */
  rc = sqlite3_busy_timeout(s->db, 5000);
  if (rc != SQLITE_OK)
    return store_sql_fail(s, rc, err, "busy_timeout");
  if (set_pragma(s, "PRAGMA journal_mode=WAL", "wal", err) < 0 ||
      set_pragma(s, "PRAGMA synchronous=NORMAL", NULL, err) < 0 ||
      set_pragma(s, "PRAGMA foreign_keys=ON", NULL, err) < 0 ||
      set_pragma(s, "PRAGMA foreign_keys", "1", err) < 0)
    return -1;
  if (store_migrate(s, err) < 0)
    return -1;
  *out = steal_pointer(&s);
  return 0;
}

void store_close(store *s) {
  if (!s)
    return;
  for (size_t i = 0; i < s->ncache; i++)
    sqlite3_finalize(s->cache[i].stmt);
  for (size_t i = 0; i < SBX_ARRAY_LEN(s->built); i++) {
    sqlite3_finalize(s->built[i].stmt);
    free(s->built[i].sql);
  }
  s->ncache = 0;
  if (s->db) {
    int rc = sqlite3_close(s->db);
    if (rc != SQLITE_OK) {
      log_error("store: close: %s", sqlite3_errmsg(s->db));
      sqlite3_close_v2(s->db); /* closes once the last statement is finalized */
    }
  }
  free(s);
}

/* ---- per-thread connections ---- */

static pthread_once_t thread_key_once = PTHREAD_ONCE_INIT;
static pthread_key_t thread_key;
/* Written once by store_global_init before any other thread uses the store. */
static char global_path[PATH_MAX];
static atomic_bool global_ready;

static void thread_store_free(void *p) { store_close(p); }

static void thread_key_create(void) {
  if (pthread_key_create(&thread_key, thread_store_free) != 0)
    log_error("store: pthread_key_create failed");
}

int store_global_init(const char *path, sbx_err *err) {
  pthread_once(&thread_key_once, thread_key_create);
  if (strlen(path) >= sizeof global_path)
    return sbx_fail(err, SBX_E_INTERNAL, ENAMETOOLONG, "store: database path too long");
  store *s = NULL;
  if (store_open(path, &s, err) < 0)
    return -1;
  store *old = pthread_getspecific(thread_key);
  if (pthread_setspecific(thread_key, s) != 0) {
    store_close(s);
    return sbx_fail(err, SBX_E_INTERNAL, 0, "store: pthread_setspecific failed");
  }
  store_close(old);
  snprintf(global_path, sizeof global_path, "%s", path);
  atomic_store(&global_ready, true);
  return 0;
}

store *store_thread(void) {
  pthread_once(&thread_key_once, thread_key_create);
  store *s = pthread_getspecific(thread_key);
  if (s)
    return s;
  if (!atomic_load(&global_ready))
    return NULL;
  sbx_err err = {0};
  if (store_open(global_path, &s, &err) < 0) {
    log_error("store: per-thread open: %s", err.msg);
    return NULL;
  }
  if (pthread_setspecific(thread_key, s) != 0) {
    store_close(s);
    return NULL;
  }
  return s;
}

void store_global_shutdown(void) {
  atomic_store(&global_ready, false);
  pthread_once(&thread_key_once, thread_key_create);
  store *s = pthread_getspecific(thread_key);
  if (!s)
    return;
  pthread_setspecific(thread_key, NULL);
  /* Leave a compact database: fold the WAL back in and refresh planner
   * statistics.  Failures only cost disk space, so they are logged. */
  char *msg = NULL;
  if (sqlite3_exec(s->db, "PRAGMA optimize; PRAGMA wal_checkpoint(TRUNCATE);", NULL, NULL, &msg) !=
      SQLITE_OK) {
    log_warn("store: shutdown checkpoint: %s", msg ? msg : sqlite3_errmsg(s->db));
    sqlite3_free(msg);
  }
  store_close(s);
}

int store_collect_page(store *s, sqlite3_stmt *st, int limit, int seq_col, store_row_fn row,
                       const char *what, json_t **out, char **next_cursor, sbx_err *err) {
  json_auto_t *arr = json_array();
  if (!arr)
    return sbx_fail(err, SBX_E_INTERNAL, 0, "store: out of memory");
  int64_t last = 0;
  bool more = false;
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    if ((int)json_array_size(arr) == limit) {
      more = true; /* the extra row: another page exists */
      break;
    }
    json_t *obj = NULL;
    if (row(st, &obj, err) < 0)
      return -1;
    if (json_array_append_new(arr, obj) < 0)
      return sbx_fail(err, SBX_E_INTERNAL, 0, "store: out of memory");
    last = sqlite3_column_int64(st, seq_col);
  }
  if (rc != SQLITE_ROW && rc != SQLITE_DONE)
    return store_sql_fail(s, rc, err, what);
  char *next = NULL;
  if (more && !(next = store_cursor_make(last)))
    return sbx_fail(err, SBX_E_INTERNAL, 0, "store: out of memory");
  *out = steal_pointer(&arr);
  *next_cursor = next;
  return 0;
}
