/* migrations.c - numbered schema migrations, applied at open.
 *
 * Migration N moves the schema from user_version N-1 to N.  Never edit a
 * migration that has shipped: add a new one at the end.
 */
#include <stdio.h>

#include "store_int.h"

typedef struct migration {
  int version;
  const char *sql;
} migration;

static const migration migrations[] = {
    {1,
     /* seq is the stable paging key: AUTOINCREMENT never reuses a value, so a
      * cursor stays meaningful after deletes.  id stays the public key (UNIQUE,
      * and the target of execs' foreign key). */
     "CREATE TABLE sandboxes ("
     "  seq INTEGER PRIMARY KEY AUTOINCREMENT,"
     "  id TEXT NOT NULL UNIQUE,"
     "  name TEXT NOT NULL UNIQUE,"
     "  state TEXT NOT NULL,"
     "  image TEXT,"
     "  env TEXT,"
     "  workdir TEXT,"
     "  shell TEXT,"
     "  limits TEXT,"
     "  network TEXT,"
     "  labels TEXT,"
     "  idle_timeout_s INTEGER,"
     "  max_duration_s INTEGER,"
     "  driver TEXT,"
     "  created_at TEXT NOT NULL,"
     "  started_at TEXT,"
     "  stopped_at TEXT,"
     "  error TEXT"
     ");"
     "CREATE INDEX sandboxes_state_seq ON sandboxes(state, seq);"
     "CREATE TABLE execs ("
     "  seq INTEGER PRIMARY KEY AUTOINCREMENT,"
     "  exec_id TEXT NOT NULL UNIQUE,"
     "  sandbox_id TEXT NOT NULL REFERENCES sandboxes(id) ON DELETE CASCADE,"
     "  cmd TEXT NOT NULL,"
     "  args TEXT,"
     "  cwd TEXT,"
     "  user TEXT,"
     "  tty INTEGER NOT NULL DEFAULT 0,"
     "  state TEXT NOT NULL,"
     "  pid INTEGER,"
     "  exit_code INTEGER,"
     "  signal INTEGER,"
     "  failure TEXT,"
     "  started_at TEXT NOT NULL,"
     "  ended_at TEXT,"
     "  stdout_bytes INTEGER NOT NULL DEFAULT 0,"
     "  stderr_bytes INTEGER NOT NULL DEFAULT 0"
     ");"
     /* list (newest first) and the cascade on sandbox delete */
     "CREATE INDEX execs_sandbox_seq ON execs(sandbox_id, seq);"
     /* list ?state= and end_running */
     "CREATE INDEX execs_sandbox_state_seq ON execs(sandbox_id, state, seq);"
     /* restart recovery: every exec still running, whatever its sandbox */
     "CREATE INDEX execs_state ON execs(state);"},
    {2,
     /* API keys: only a SHA-256 of the key is kept; id is its public part */
     "CREATE TABLE keys ("
     "  seq INTEGER PRIMARY KEY AUTOINCREMENT,"
     "  id TEXT NOT NULL UNIQUE,"
     "  hash TEXT NOT NULL,"
     "  scope TEXT NOT NULL,"
     "  labels TEXT NOT NULL DEFAULT '{}',"
     "  name TEXT,"
     "  created_at TEXT NOT NULL,"
     "  revoked_at TEXT"
     ");"},
    {3,
     /* the vm driver: "kvm" or "tcg" for VM sandboxes, NULL for ns */
     "ALTER TABLE sandboxes ADD COLUMN accelerator TEXT;"},
};

#define NMIGRATIONS (sizeof migrations / sizeof migrations[0])

int store_schema_version(void) { return migrations[NMIGRATIONS - 1].version; }

static int read_user_version(store *s, int *out, sbx_err *err) {
  static const char sql[] = "PRAGMA user_version";
  cleanup_stmt_reset sqlite3_stmt *st = NULL;
  if (store_prepare(s, sql, &st, err) < 0)
    return -1;
  int rc = sqlite3_step(st);
  if (rc != SQLITE_ROW)
    return store_sql_fail(s, rc, err, "read schema version");
  *out = sqlite3_column_int(st, 0);
  return 0;
}

/* Apply migration m unless another connection already has: the version is
 * re-read under the write lock, so the check and the change are atomic. */
static int apply_one(store *s, const migration *m, sbx_err *err) {
  cleanup_tx store_tx tx = {0};
  if (store_tx_begin(s, &tx, err) < 0)
    return -1;
  int version;
  if (read_user_version(s, &version, err) < 0)
    return -1;
  if (version >= m->version)
    return store_tx_commit(&tx, err);
  if (version != m->version - 1)
    return sbx_fail(err, SBX_E_INTERNAL, 0, "store: schema version %d cannot take migration %d",
                    version, m->version);
  char *msg = NULL;
  int rc = sqlite3_exec(s->db, m->sql, NULL, NULL, &msg);
  if (rc != SQLITE_OK) {
    sbx_fail(err, (rc & 0xff) == SQLITE_BUSY ? SBX_E_CAPACITY : SBX_E_INTERNAL, 0,
             "store: migration %d: %s", m->version, msg ? msg : sqlite3_errstr(rc));
    sqlite3_free(msg);
    return -1;
  }
  /* PRAGMA takes no bound parameters; the number comes from the table above,
   * never from input. */
  char pragma[64];
  snprintf(pragma, sizeof pragma, "PRAGMA user_version = %d", m->version);
  rc = sqlite3_exec(s->db, pragma, NULL, NULL, NULL);
  if (rc != SQLITE_OK)
    return store_sql_fail(s, rc, err, "set schema version");
  return store_tx_commit(&tx, err);
}

int store_migrate(store *s, sbx_err *err) {
  int version;
  if (read_user_version(s, &version, err) < 0)
    return -1;
  if (version > store_schema_version())
    return sbx_fail(err, SBX_E_INTERNAL, 0,
                    "store: database schema version %d is newer than this sbxd (%d)", version,
                    store_schema_version());
  for (size_t i = 0; i < NMIGRATIONS; i++) {
    if (migrations[i].version <= version)
      continue;
    if (apply_one(s, &migrations[i], err) < 0)
      return -1;
  }
  return 0;
}
