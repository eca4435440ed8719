/* keys.c - API key records. */
#include <string.h>

#include "../common/util.h"
#include "store_int.h"

static json_t *row_key(sqlite3_stmt *st, bool with_hash) {
  const char *labels = (const char *)sqlite3_column_text(st, 3);
  json_t *l = labels ? json_loads(labels, 0, NULL) : NULL;
  json_t *o = json_pack("{s:s, s:s, s:o, s:s?, s:s, s:s?}", "id", sqlite3_column_text(st, 0),
                        "scope", sqlite3_column_text(st, 2), "labels", l ? l : json_object(),
                        "name", sqlite3_column_text(st, 4), "created_at",
                        sqlite3_column_text(st, 5), "revoked_at", sqlite3_column_text(st, 6));
  if (o && !json_object_get(o, "name"))
    json_object_set_new(o, "name", json_null());
  if (o && !json_object_get(o, "revoked_at"))
    json_object_set_new(o, "revoked_at", json_null());
  if (o && with_hash)
    json_object_set_new(o, "hash", json_string((const char *)sqlite3_column_text(st, 1)));
  return o;
}

int store_key_insert(store *s, const char *id, const char *hash_hex, const char *scope,
                     json_t *labels, const char *name, sbx_err *err) {
  static const char sql[] = "INSERT INTO keys (id, hash, scope, labels, name, created_at) "
                            "VALUES (?, ?, ?, ?, ?, ?)";
  cleanup_stmt_reset sqlite3_stmt *st = NULL;
  if (store_prepare(s, sql, &st, err) < 0)
    return -1;
  cleanup_free char *l = json_dumps(labels ? labels : json_object(), JSON_COMPACT | JSON_SORT_KEYS);
  char now[32];
  sbx_rfc3339(sbx_now_ms(), now, sizeof now);
  sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
  sqlite3_bind_text(st, 2, hash_hex, -1, SQLITE_TRANSIENT);
  sqlite3_bind_text(st, 3, scope, -1, SQLITE_TRANSIENT);
  sqlite3_bind_text(st, 4, l ? l : "{}", -1, SQLITE_TRANSIENT);
  if (name)
    sqlite3_bind_text(st, 5, name, -1, SQLITE_TRANSIENT);
  else
    sqlite3_bind_null(st, 5);
  sqlite3_bind_text(st, 6, now, -1, SQLITE_TRANSIENT);
  int rc = sqlite3_step(st);
  return rc == SQLITE_DONE ? 0 : store_sql_fail(s, rc, err, "insert key");
}

int store_key_get(store *s, const char *id, json_t **out, sbx_err *err) {
  static const char sql[] =
      "SELECT id, hash, scope, labels, name, created_at, revoked_at FROM keys WHERE id = ?";
  cleanup_stmt_reset sqlite3_stmt *st = NULL;
  if (store_prepare(s, sql, &st, err) < 0)
    return -1;
  sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
  int rc = sqlite3_step(st);
  if (rc == SQLITE_DONE)
    return sbx_fail(err, SBX_E_NOT_FOUND, 0, "no key %s", id);
  if (rc != SQLITE_ROW)
    return store_sql_fail(s, rc, err, "get key");
  *out = row_key(st, true);
  return *out ? 0 : sbx_fail(err, SBX_E_INTERNAL, 0, "out of memory");
}

int store_key_list(store *s, json_t **out, sbx_err *err) {
  static const char sql[] =
      "SELECT id, hash, scope, labels, name, created_at, revoked_at FROM keys ORDER BY seq";
  cleanup_stmt_reset sqlite3_stmt *st = NULL;
  if (store_prepare(s, sql, &st, err) < 0)
    return -1;
  json_t *list = json_array();
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW)
    json_array_append_new(list, row_key(st, false));
  if (rc != SQLITE_DONE) {
    json_decref(list);
    return store_sql_fail(s, rc, err, "list keys");
  }
  *out = list;
  return 0;
}

int store_key_revoke(store *s, const char *id, sbx_err *err) {
  static const char sql[] = "UPDATE keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL";
  cleanup_stmt_reset sqlite3_stmt *st = NULL;
  if (store_prepare(s, sql, &st, err) < 0)
    return -1;
  char now[32];
  sbx_rfc3339(sbx_now_ms(), now, sizeof now);
  sqlite3_bind_text(st, 1, now, -1, SQLITE_TRANSIENT);
  sqlite3_bind_text(st, 2, id, -1, SQLITE_TRANSIENT);
  int rc = sqlite3_step(st);
  if (rc != SQLITE_DONE)
    return store_sql_fail(s, rc, err, "revoke key");
  return sqlite3_changes(s->db) ? 0 : sbx_fail(err, SBX_E_NOT_FOUND, 0, "no active key %s", id);
}

int store_key_count_active(store *s, int64_t *n, sbx_err *err) {
  static const char sql[] = "SELECT count(*) FROM keys WHERE revoked_at IS NULL";
  cleanup_stmt_reset sqlite3_stmt *st = NULL;
  if (store_prepare(s, sql, &st, err) < 0)
    return -1;
  int rc = sqlite3_step(st);
  if (rc != SQLITE_ROW)
    return store_sql_fail(s, rc, err, "count keys");
  *n = sqlite3_column_int64(st, 0);
  return 0;
}
