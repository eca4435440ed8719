/* store_int.h - internals shared by the store/ sources (not for other modules).
 *
 * A `store` is one SQLite connection plus a small cache of prepared
 * statements keyed by the address of their constant SQL text.  Rows map to
 * JSON objects through a per-table column description (store_col), so insert,
 * update and read of every field go through the same typed code: a value of
 * the wrong JSON type is a caller bug and fails with SBX_E_INTERNAL.
 */
#ifndef SBX_STORE_INT_H
#define SBX_STORE_INT_H

#include <jansson.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/err.h"
#include "store.h"

/* Cached statements: every constant SQL text the store runs fits here; a
 * full cache is a programming error reported as SBX_E_INTERNAL. */
#define STORE_STMT_CACHE 48

struct store {
  sqlite3 *db;
  struct {
    const char *sql; /* the constant SQL text; identity is its address */
    sqlite3_stmt *stmt;
  } cache[STORE_STMT_CACHE];
  size_t ncache;
  struct {
    char *sql; /* built SQL text (a few shapes recur, e.g. an exec's end) */
    sqlite3_stmt *stmt;
  } built[8];
  size_t nbuilt; /* next slot to replace, round robin */
};

/* ---- statements ---- */
/* This connection's prepared statement for a constant SQL string (prepared on
 * first use).  Release it with cleanup_stmt_reset, never finalize it. */
int store_prepare(store *s, const char *sql, sqlite3_stmt **out, sbx_err *err);
/* The same for SQL text built at run time (from column tables, never from
 * input): cached by content in a small round-robin cache.  Release with
 * cleanup_stmt_reset. */
int store_prepare_built(store *s, const char *sql, sqlite3_stmt **out, sbx_err *err);
/* Reset and unbind a cached statement (cleanup for store_prepare results). */
void store_stmt_resetp(sqlite3_stmt **st);
#define cleanup_stmt_reset __attribute__((cleanup(store_stmt_resetp)))
/* Finalize a statement prepared outside the cache. */
void store_stmt_finalizep(sqlite3_stmt **st);
#define cleanup_stmt __attribute__((cleanup(store_stmt_finalizep)))

/* Map an SQLite failure code to an sbx error: busy/locked after the busy
 * timeout is SBX_E_CAPACITY ("database busy"), anything else SBX_E_INTERNAL
 * with sqlite3_errmsg.  `what` names the operation.  Returns -1. */
int store_sql_fail(store *s, int rc, sbx_err *err, const char *what);

/* Bind text parameters 1..n of st in order (a NULL value binds SQL NULL).
 * 0, or -1 with err filled. */
int store_bind_texts(store *s, sqlite3_stmt *st, sbx_err *err, int n, ...);

/* ---- write transactions ---- */
/* BEGIN IMMEDIATE takes the write lock up front, so a writer waits in the busy
 * handler instead of failing later with an unretryable BUSY_SNAPSHOT.  A
 * transaction not committed when its variable leaves scope is rolled back. */
typedef struct store_tx {
  store *s;
  bool open;
} store_tx;
int store_tx_begin(store *s, store_tx *tx, sbx_err *err);
int store_tx_commit(store_tx *tx, sbx_err *err);
void store_tx_rollbackp(store_tx *tx);
#define cleanup_tx __attribute__((cleanup(store_tx_rollbackp)))

/* ---- row <-> JSON ---- */
typedef enum {
  STORE_COL_TEXT,   /* JSON string  <-> TEXT */
  STORE_COL_INT,    /* JSON integer <-> INTEGER */
  STORE_COL_BOOL,   /* JSON boolean <-> INTEGER 0/1 */
  STORE_COL_OBJECT, /* JSON object  <-> TEXT holding compact JSON */
  STORE_COL_ARRAY,  /* JSON array   <-> TEXT holding compact JSON */
} store_col_type;

typedef struct store_col {
  const char *name;       /* the SPEC key and the SQL column name */
  store_col_type type;
  bool required;          /* insert fails when the key is missing */
  bool notnull;           /* JSON null is refused */
  bool now_default;       /* missing on insert => the current RFC 3339 time */
  const char *dflt;       /* missing on insert => this SQL value (NULL: SQL NULL);
                             text for TEXT/OBJECT/ARRAY, decimal for INT/BOOL */
  const char *const *allowed; /* TEXT only: NULL-terminated allowed values, or NULL */
} store_col;

/* Find a column by key, NULL if unknown. */
const store_col *store_col_find(const store_col *cols, size_t n, const char *name);
/* Check that v (NULL = missing) fits column c; fails SBX_E_INTERNAL naming
 * table.column. */
int store_col_check(const char *table, const store_col *c, json_t *v, sbx_err *err);
/* Bind v to parameter idx as column c stores it (v NULL = missing: the
 * column's default).  v must have passed store_col_check. */
int store_bind_col(store *s, sqlite3_stmt *st, int idx, const store_col *c, json_t *v,
                   sbx_err *err);
/* Check an insert object (a JSON object with only known keys, every required
 * key, right types) and bind every column in order to ?1..?n. */
int store_bind_object(store *s, sqlite3_stmt *st, const char *table, const store_col *cols,
                      size_t n, json_t *obj, sbx_err *err);
/* Build a JSON object from result columns 0..n-1 of the current row. */
int store_row_json(sqlite3_stmt *st, const char *table, const store_col *cols, size_t n,
                   json_t **out, sbx_err *err);

/* ---- paging ---- */
/* limit must be 1..500: invalid_request with field "limit" otherwise. */
int store_check_limit(int limit, sbx_err *err);
/* Cursors are lowercase hex of a row's sequence number: opaque to clients,
 * stable across inserts and deletes.  Bad text is invalid_request ("cursor"). */
int store_cursor_parse(const char *cursor, int64_t *seq, sbx_err *err);
/* malloc'd cursor text for seq, or NULL on OOM. */
char *store_cursor_make(int64_t seq);
/* Step a bound list statement (selecting limit + 1 rows, the paging seq in
 * column seq_col) into *out, a JSON array of at most limit objects made by
 * row(); *next_cursor is the cursor of the next page, or NULL. */
typedef int (*store_row_fn)(sqlite3_stmt *st, json_t **out, sbx_err *err);
int store_collect_page(store *s, sqlite3_stmt *st, int limit, int seq_col, store_row_fn row,
                       const char *what, json_t **out, char **next_cursor, sbx_err *err);

/* ---- migrations (migrations.c) ---- */
/* Bring the schema up to date: each numbered migration runs in its own
 * BEGIN IMMEDIATE transaction that first re-reads PRAGMA user_version, so two
 * processes opening a fresh file at once apply each migration exactly once. */
int store_migrate(store *s, sbx_err *err);
/* The schema version this build writes (the highest migration number). */
int store_schema_version(void);

#endif
