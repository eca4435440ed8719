/* test_store.c - the SQLite store: migrations, sandboxes, execs, paging,
 * concurrency and crash durability. */
#include <check.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/util.h"
#include "store/store.h"

/* One directory for the whole run, removed by main(): a failing test skips
 * its teardown, so per-test cleanup alone would leave files behind. */
static char rootdir[] = "/tmp/sbx-test-store-XXXXXX";
static char tmpdir[300];
static char dbpath[512];

static void setup(void) {
  static int n;
  snprintf(tmpdir, sizeof tmpdir, "%s/t%d-%d", rootdir, (int)getpid(), n++);
  ck_assert_int_eq(sbx_mkdir_p(tmpdir, 0700), 0);
  snprintf(dbpath, sizeof dbpath, "%s/sbx.db", tmpdir);
}

static void teardown(void) { sbx_rm_rf(tmpdir); }

static store *open_store(void) {
  store *s = NULL;
  sbx_err err = {0};
  ck_assert_msg(store_open(dbpath, &s, &err) == 0, "open: %s", err.msg);
  return s;
}

/* A full sandbox object as the routes build it. */
static json_t *sandbox_obj(const char *id, const char *name, const char *team) {
  json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:{s:s}, s:s, s:s, s:{s:i, s:f, s:i, s:i}, s:s,"
                        " s:{s:s}, s:i, s:i, s:s, s:n, s:s, s:n, s:n}",
                        "id", id, "name", name, "state", "creating", "image", "host", "env", "K",
                        "V", "workdir", "/", "shell", "/bin/sh", "limits", "memory_mib", 512,
                        "cpus", 1.0, "pids", 256, "disk_mib", 1024, "network", "none", "labels",
                        "team", team, "idle_timeout_s", 0, "max_duration_s", 0, "driver", "ns",
                        "accelerator", "created_at", "2026-01-01T00:00:00.000Z", "started_at", "stopped_at");
  ck_assert_ptr_nonnull(o);
  return o;
}

static void insert_sandbox(store *s, const char *id, const char *name, const char *team) {
  json_auto_t *o = sandbox_obj(id, name, team);
  sbx_err err = {0};
  ck_assert_msg(store_sandbox_insert(s, o, &err) == 0, "insert %s: %s", name, err.msg);
}

static json_t *exec_obj(const char *exec_id, const char *sandbox_id) {
  json_t *o = json_pack("{s:s, s:s, s:s, s:[s,s], s:s, s:n, s:b, s:s, s:i, s:n, s:n, s:n,"
                        " s:s, s:n, s:i, s:i}",
                        "exec_id", exec_id, "sandbox_id", sandbox_id, "cmd", "python3", "args",
                        "-c", "print(1+1)", "cwd", "/", "user", "tty", 0, "state", "running",
                        "pid", 42, "exit_code", "signal", "failure", "started_at",
                        "2026-01-01T00:00:01.000Z", "ended_at", "stdout_bytes", 0, "stderr_bytes",
                        0);
  ck_assert_ptr_nonnull(o);
  return o;
}

static void insert_exec(store *s, const char *exec_id, const char *sandbox_id) {
  json_auto_t *o = exec_obj(exec_id, sandbox_id);
  sbx_err err = {0};
  ck_assert_msg(store_exec_insert(s, o, &err) == 0, "insert exec: %s", err.msg);
}

static const char *str(json_t *o, const char *key) {
  return json_string_value(json_object_get(o, key));
}

START_TEST(test_migrations_idempotent) {
  store *a = open_store();
  store_close(a);
  store *b = open_store(); /* second open: nothing to migrate, data kept */
  insert_sandbox(b, "sbx_0000000000000001", "one", "a");
  store_close(b);
  store *c = open_store();
  json_auto_t *o = NULL;
  sbx_err err = {0};
  ck_assert_int_eq(store_sandbox_get(c, "one", &o, &err), 0);
  store_close(c);
}
END_TEST

typedef struct {
  int rc;
  sbx_err err;
} open_result;

static void *open_thread(void *arg) {
  open_result *r = arg;
  store *s = NULL;
  r->rc = store_open(dbpath, &s, &r->err);
  store_close(s);
  return NULL;
}

/* Four connections migrating one fresh file at the same moment all succeed. */
START_TEST(test_concurrent_open) {
  pthread_t t[4];
  open_result r[4] = {0};
  for (int i = 0; i < 4; i++)
    ck_assert_int_eq(pthread_create(&t[i], NULL, open_thread, &r[i]), 0);
  for (int i = 0; i < 4; i++) {
    pthread_join(t[i], NULL);
    ck_assert_msg(r[i].rc == 0, "open %d: %s", i, r[i].err.msg);
  }
  store *s = open_store();
  insert_sandbox(s, "sbx_0000000000000001", "one", "a");
  store_close(s);
}
END_TEST

START_TEST(test_insert_get) {
  cleanup_store store *s = open_store();
  insert_sandbox(s, "sbx_00000000000000aa", "web-1", "a");
  sbx_err err = {0};
  json_auto_t *by_id = NULL, *by_name = NULL;
  ck_assert_int_eq(store_sandbox_get(s, "sbx_00000000000000aa", &by_id, &err), 0);
  ck_assert_int_eq(store_sandbox_get(s, "web-1", &by_name, &err), 0);
  ck_assert(json_equal(by_id, by_name));
  /* exactly the SPEC keys, in order, no "error" while not failed */
  json_auto_t *want = sandbox_obj("sbx_00000000000000aa", "web-1", "a");
  ck_assert_msg(json_equal(by_id, want), "round trip differs");
  const char *keys[] = {"id",      "name",           "state",          "image",  "env",
                        "workdir", "shell",          "limits",         "network", "labels",
                        "idle_timeout_s", "max_duration_s", "driver", "accelerator",
                        "created_at", "started_at", "stopped_at"};
  ck_assert_int_eq(json_object_size(by_id), SBX_ARRAY_LEN(keys));
  size_t i = 0;
  const char *key;
  json_t *v;
  json_object_foreach(by_id, key, v) ck_assert_str_eq(key, keys[i++]);
  ck_assert(json_is_null(json_object_get(by_id, "started_at")));
  ck_assert(json_real_value(json_object_get(json_object_get(by_id, "limits"), "cpus")) == 1.0);

  json_auto_t *missing = NULL;
  ck_assert_int_lt(store_sandbox_get(s, "nope", &missing, &err), 0);
  ck_assert_int_eq(err.kind, SBX_E_SANDBOX_NOT_FOUND);
  ck_assert_ptr_null(missing);
}
END_TEST

START_TEST(test_insert_defaults_and_bad_input) {
  cleanup_store store *s = open_store();
  sbx_err err = {0};
  json_auto_t *min = json_pack("{s:s, s:s}", "id", "sbx_0000000000000001", "name", "min");
  ck_assert_msg(store_sandbox_insert(s, min, &err) == 0, "%s", err.msg);
  json_auto_t *o = NULL;
  ck_assert_int_eq(store_sandbox_get(s, "min", &o, &err), 0);
  ck_assert_str_eq(str(o, "state"), "creating");
  ck_assert(json_is_object(json_object_get(o, "env")));
  ck_assert(json_is_object(json_object_get(o, "labels")));
  ck_assert(json_is_null(json_object_get(o, "image")));
  ck_assert_int_eq(json_integer_value(json_object_get(o, "idle_timeout_s")), 0);
  ck_assert_int_eq(strlen(str(o, "created_at")), 24);

  json_auto_t *extra = json_pack("{s:s, s:s, s:b}", "id", "sbx_0000000000000002", "name", "x",
                                 "replace", 1);
  ck_assert_int_lt(store_sandbox_insert(s, extra, &err), 0);
  ck_assert_int_eq(err.kind, SBX_E_INTERNAL);
  ck_assert_ptr_nonnull(strstr(err.msg, "replace"));

  json_auto_t *wrong = json_pack("{s:s, s:s, s:s}", "id", "sbx_0000000000000003", "name", "y",
                                 "env", "K=V");
  ck_assert_int_lt(store_sandbox_insert(s, wrong, &err), 0);
  ck_assert_int_eq(err.kind, SBX_E_INTERNAL);

  json_auto_t *noname = json_pack("{s:s}", "id", "sbx_0000000000000004");
  ck_assert_int_lt(store_sandbox_insert(s, noname, &err), 0);
  ck_assert_int_eq(err.kind, SBX_E_INTERNAL);

  json_auto_t *badstate = json_pack("{s:s, s:s, s:s}", "id", "sbx_0000000000000005", "name", "z",
                                    "state", "dancing");
  ck_assert_int_lt(store_sandbox_insert(s, badstate, &err), 0);
  ck_assert_int_eq(err.kind, SBX_E_INTERNAL);
}
END_TEST

START_TEST(test_duplicate_name) {
  cleanup_store store *s = open_store();
  insert_sandbox(s, "sbx_0000000000000001", "dup", "a");
  json_auto_t *o = sandbox_obj("sbx_0000000000000002", "dup", "a");
  sbx_err err = {0};
  ck_assert_int_lt(store_sandbox_insert(s, o, &err), 0);
  ck_assert_int_eq(err.kind, SBX_E_SANDBOX_EXISTS);
  ck_assert_ptr_nonnull(strstr(err.msg, "dup"));
  /* the failed insert left no transaction open: writes still work */
  insert_sandbox(s, "sbx_0000000000000003", "other", "a");
}
END_TEST

/* A name that looks like another sandbox's id never shadows that id. */
START_TEST(test_id_wins_over_name) {
  cleanup_store store *s = open_store();
  insert_sandbox(s, "sbx_0000000000000001", "first", "a");
  insert_sandbox(s, "sbx_0000000000000002", "sbx_0000000000000001", "a");
  json_auto_t *o = NULL;
  sbx_err err = {0};
  ck_assert_int_eq(store_sandbox_get(s, "sbx_0000000000000001", &o, &err), 0);
  ck_assert_str_eq(str(o, "name"), "first");
}
END_TEST

START_TEST(test_list_state_filter) {
  cleanup_store store *s = open_store();
  sbx_err err = {0};
  char id[32], name[32];
  for (int i = 0; i < 5; i++) {
    snprintf(id, sizeof id, "sbx_%016x", i + 1);
    snprintf(name, sizeof name, "s%d", i);
    insert_sandbox(s, id, name, "a");
    if (i % 2 == 0)
      ck_assert_int_eq(store_sandbox_set_state(s, id, "running", NULL, &err), 0);
  }
  json_auto_t *all = NULL, *running = NULL, *none = NULL;
  cleanup_free char *c1 = NULL, *c2 = NULL, *c3 = NULL;
  ck_assert_int_eq(store_sandbox_list(s, NULL, NULL, 50, NULL, &all, &c1, &err), 0);
  ck_assert_int_eq(json_array_size(all), 5);
  ck_assert_ptr_null(c1);
  ck_assert_str_eq(str(json_array_get(all, 0), "name"), "s0"); /* oldest first */
  ck_assert_int_eq(store_sandbox_list(s, "running", NULL, 50, NULL, &running, &c2, &err), 0);
  ck_assert_int_eq(json_array_size(running), 3);
  for (size_t i = 0; i < 3; i++)
    ck_assert_str_eq(str(json_array_get(running, i), "state"), "running");
  ck_assert_int_eq(store_sandbox_list(s, "failed", NULL, 50, NULL, &none, &c3, &err), 0);
  ck_assert_int_eq(json_array_size(none), 0);

  json_auto_t *x = NULL;
  char *c = NULL;
  ck_assert_int_lt(store_sandbox_list(s, NULL, NULL, 0, NULL, &x, &c, &err), 0);
  ck_assert_int_eq(err.kind, SBX_E_INVALID_REQUEST);
  ck_assert_str_eq(err.field, "limit");
  ck_assert_int_lt(store_sandbox_list(s, NULL, NULL, 501, NULL, &x, &c, &err), 0);
}
END_TEST

START_TEST(test_list_label_filter) {
  cleanup_store store *s = open_store();
  sbx_err err = {0};
  insert_sandbox(s, "sbx_0000000000000001", "a1", "a");
  insert_sandbox(s, "sbx_0000000000000002", "b1", "b");
  /* a sandbox with two labels, and one with none */
  json_auto_t *two = sandbox_obj("sbx_0000000000000003", "a2", "a");
  json_object_set_new(json_object_get(two, "labels"), "tier", json_string("web"));
  ck_assert_int_eq(store_sandbox_insert(s, two, &err), 0);
  json_auto_t *bare = json_pack("{s:s, s:s, s:n}", "id", "sbx_0000000000000004", "name", "n",
                                "labels");
  ck_assert_int_eq(store_sandbox_insert(s, bare, &err), 0);

  struct {
    const char *filter;
    size_t want;
  } cases[] = {
      {"{}", 4},
      {"{\"team\":\"a\"}", 2},
      {"{\"team\":\"b\"}", 1},
      {"{\"team\":\"a\",\"tier\":\"web\"}", 1},
      {"{\"team\":\"b\",\"tier\":\"web\"}", 0},
      {"{\"team\":\"c\"}", 0},
      {"{\"nope\":\"a\"}", 0},
      /* quotes and path syntax in keys are data, not JSON path */
      {"{\"$.team\":\"a\"}", 0},
      {"{\"team\\\"\":\"a\"}", 0},
  };
  for (size_t i = 0; i < SBX_ARRAY_LEN(cases); i++) {
    json_auto_t *filter = json_loads(cases[i].filter, 0, NULL);
    ck_assert_ptr_nonnull(filter);
    json_auto_t *out = NULL;
    cleanup_free char *next = NULL;
    ck_assert_msg(store_sandbox_list(s, NULL, filter, 50, NULL, &out, &next, &err) == 0, "%s",
                  err.msg);
    ck_assert_msg(json_array_size(out) == cases[i].want, "filter %s: %zu rows, want %zu",
                  cases[i].filter, json_array_size(out), cases[i].want);
  }
  json_auto_t *filter = json_pack("{s:s}", "team", "a");
  json_auto_t *out = NULL;
  cleanup_free char *next = NULL;
  ck_assert_int_eq(store_sandbox_list(s, "running", filter, 50, NULL, &out, &next, &err), 0);
  ck_assert_int_eq(json_array_size(out), 0);
}
END_TEST

START_TEST(test_paging) {
  cleanup_store store *s = open_store();
  sbx_err err = {0};
  char id[32], name[32];
  for (int i = 0; i < 7; i++) {
    snprintf(id, sizeof id, "sbx_%016x", i + 1);
    snprintf(name, sizeof name, "p%d", i);
    insert_sandbox(s, id, name, "a");
  }
  /* 3 pages of 3, 3, 1; a delete between pages does not disturb the cursor */
  char *cursor = NULL;
  int seen = 0;
  for (int page = 0; page < 3; page++) {
    json_auto_t *out = NULL;
    char *next = NULL;
    ck_assert_msg(store_sandbox_list(s, NULL, NULL, 3, cursor, &out, &next, &err) == 0, "%s",
                  err.msg);
    free(cursor);
    cursor = next;
    for (size_t i = 0; i < json_array_size(out); i++) {
      snprintf(name, sizeof name, "p%d", seen++);
      ck_assert_str_eq(str(json_array_get(out, i), "name"), name);
    }
    if (page < 2) {
      ck_assert_int_eq(json_array_size(out), 3);
      ck_assert_ptr_nonnull(cursor);
    } else {
      ck_assert_int_eq(json_array_size(out), 1);
      ck_assert_ptr_null(cursor);
    }
    if (page == 0) /* the last row of page 1 goes away */
      ck_assert_int_eq(store_sandbox_delete(s, "sbx_0000000000000003", &err), 0);
  }
  ck_assert_int_eq(seen, 7);
  /* exactly limit rows left: no cursor to an empty page */
  json_auto_t *out = NULL;
  char *next = NULL;
  ck_assert_int_eq(store_sandbox_list(s, NULL, NULL, 6, NULL, &out, &next, &err), 0);
  ck_assert_int_eq(json_array_size(out), 6);
  ck_assert_ptr_null(next);
}
END_TEST

START_TEST(test_bad_cursor) {
  cleanup_store store *s = open_store();
  insert_sandbox(s, "sbx_0000000000000001", "one", "a");
  insert_exec(s, "ex_0000000000000001", "sbx_0000000000000001");
  const char *bad[] = {"", "zz", "0", "01", "-1", "1 ", "ABC", "8000000000000000",
                       "11111111111111111", "1'; DROP TABLE sandboxes; --"};
  for (size_t i = 0; i < SBX_ARRAY_LEN(bad); i++) {
    sbx_err err = {0};
    json_t *out = NULL;
    char *next = NULL;
    ck_assert_msg(store_sandbox_list(s, NULL, NULL, 10, bad[i], &out, &next, &err) < 0, "%s",
                  bad[i]);
    ck_assert_int_eq(err.kind, SBX_E_INVALID_REQUEST);
    ck_assert_str_eq(err.field, "cursor");
    ck_assert_ptr_null(out);
    memset(&err, 0, sizeof err);
    ck_assert(store_exec_list(s, "sbx_0000000000000001", NULL, 10, bad[i], &out, &next, &err) < 0);
    ck_assert_str_eq(err.field, "cursor");
  }
  json_auto_t *o = NULL;
  sbx_err err = {0};
  ck_assert_int_eq(store_sandbox_get(s, "one", &o, &err), 0);
}
END_TEST

START_TEST(test_set_state) {
  cleanup_store store *s = open_store();
  sbx_err err = {0};
  const char *id = "sbx_0000000000000001";
  insert_sandbox(s, id, "one", "a");
  ck_assert_int_eq(store_sandbox_set_state(s, id, "running", NULL, &err), 0);
  json_auto_t *r = NULL;
  ck_assert_int_eq(store_sandbox_get(s, id, &r, &err), 0);
  ck_assert_str_eq(str(r, "state"), "running");
  ck_assert_int_eq(strlen(str(r, "started_at")), 24);
  ck_assert(json_is_null(json_object_get(r, "stopped_at")));
  ck_assert_ptr_null(json_object_get(r, "error"));

  ck_assert_int_eq(store_sandbox_set_state(s, id, "stopped", NULL, &err), 0);
  json_auto_t *st = NULL;
  ck_assert_int_eq(store_sandbox_get(s, id, &st, &err), 0);
  ck_assert_str_eq(str(st, "state"), "stopped");
  ck_assert_str_eq(str(st, "started_at"), str(r, "started_at"));
  ck_assert_int_eq(strlen(str(st, "stopped_at")), 24);
  ck_assert(strcmp(str(st, "stopped_at"), str(st, "started_at")) >= 0);

  ck_assert_int_eq(store_sandbox_set_state(s, id, "failed", "agent died", &err), 0);
  json_auto_t *f = NULL;
  ck_assert_int_eq(store_sandbox_get(s, id, &f, &err), 0);
  ck_assert_str_eq(str(f, "state"), "failed");
  ck_assert_str_eq(str(f, "error"), "agent died");

  /* running again: stopped_at and error cleared */
  ck_assert_int_eq(store_sandbox_set_state(s, id, "running", NULL, &err), 0);
  json_auto_t *r2 = NULL;
  ck_assert_int_eq(store_sandbox_get(s, id, &r2, &err), 0);
  ck_assert(json_is_null(json_object_get(r2, "stopped_at")));
  ck_assert_ptr_null(json_object_get(r2, "error"));

  /* failed without a message still shows "error": null */
  ck_assert_int_eq(store_sandbox_set_state(s, id, "failed", NULL, &err), 0);
  json_auto_t *f2 = NULL;
  ck_assert_int_eq(store_sandbox_get(s, id, &f2, &err), 0);
  ck_assert(json_is_null(json_object_get(f2, "error")));

  ck_assert_int_lt(store_sandbox_set_state(s, "sbx_ffffffffffffffff", "running", NULL, &err), 0);
  ck_assert_int_eq(err.kind, SBX_E_SANDBOX_NOT_FOUND);
  ck_assert_int_lt(store_sandbox_set_state(s, id, "bogus", NULL, &err), 0);
  ck_assert_int_eq(err.kind, SBX_E_INTERNAL);
}
END_TEST

START_TEST(test_exec_crud) {
  cleanup_store store *s = open_store();
  sbx_err err = {0};
  const char *sid = "sbx_0000000000000001";
  insert_sandbox(s, sid, "one", "a");
  insert_exec(s, "ex_0000000000000001", sid);
  json_auto_t *e = NULL;
  ck_assert_int_eq(store_exec_get(s, "ex_0000000000000001", &e, &err), 0);
  json_auto_t *want = exec_obj("ex_0000000000000001", sid);
  ck_assert_msg(json_equal(e, want), "exec round trip differs");
  ck_assert(json_is_false(json_object_get(e, "tty")));

  json_auto_t *fields = json_pack("{s:s, s:i, s:n, s:s, s:i, s:i}", "state", "exited",
                                  "exit_code", 0, "signal", "ended_at",
                                  "2026-01-01T00:00:02.000Z", "stdout_bytes", 3, "stderr_bytes", 1);
  ck_assert_msg(store_exec_update(s, "ex_0000000000000001", fields, &err) == 0, "%s", err.msg);
  json_auto_t *e2 = NULL;
  ck_assert_int_eq(store_exec_get(s, "ex_0000000000000001", &e2, &err), 0);
  ck_assert_str_eq(str(e2, "state"), "exited");
  ck_assert_int_eq(json_integer_value(json_object_get(e2, "exit_code")), 0);
  ck_assert_int_eq(json_integer_value(json_object_get(e2, "stdout_bytes")), 3);
  ck_assert_str_eq(str(e2, "ended_at"), "2026-01-01T00:00:02.000Z");
  ck_assert_str_eq(str(e2, "cmd"), "python3"); /* untouched fields stay */

  json_auto_t *failure = json_pack("{s:{s:s, s:i, s:s}}", "failure", "kind", "not_found",
                                   "errno", 2, "path", "/nope");
  ck_assert_int_eq(store_exec_update(s, "ex_0000000000000001", failure, &err), 0);
  json_auto_t *e3 = NULL;
  ck_assert_int_eq(store_exec_get(s, "ex_0000000000000001", &e3, &err), 0);
  ck_assert_str_eq(str(json_object_get(e3, "failure"), "kind"), "not_found");

  json_auto_t *unknown = json_pack("{s:s}", "colour", "red");
  ck_assert_int_lt(store_exec_update(s, "ex_0000000000000001", unknown, &err), 0);
  ck_assert_int_eq(err.kind, SBX_E_INTERNAL);
  ck_assert_ptr_nonnull(strstr(err.msg, "colour"));
  json_auto_t *wrongtype = json_pack("{s:s}", "exit_code", "0");
  ck_assert_int_lt(store_exec_update(s, "ex_0000000000000001", wrongtype, &err), 0);
  ck_assert_int_eq(err.kind, SBX_E_INTERNAL);
  json_auto_t *badstate = json_pack("{s:s}", "state", "sleeping");
  ck_assert_int_lt(store_exec_update(s, "ex_0000000000000001", badstate, &err), 0);
  json_auto_t *immutable = json_pack("{s:s}", "sandbox_id", "sbx_0000000000000002");
  ck_assert_int_lt(store_exec_update(s, "ex_0000000000000001", immutable, &err), 0);

  json_auto_t *ok = json_pack("{s:i}", "pid", 7);
  ck_assert_int_lt(store_exec_update(s, "ex_ffffffffffffffff", ok, &err), 0);
  ck_assert_int_eq(err.kind, SBX_E_EXEC_NOT_FOUND);
  json_auto_t *miss = NULL;
  ck_assert_int_lt(store_exec_get(s, "ex_ffffffffffffffff", &miss, &err), 0);
  ck_assert_int_eq(err.kind, SBX_E_EXEC_NOT_FOUND);

  /* an exec of an unknown sandbox is refused by the foreign key */
  json_auto_t *orphan = exec_obj("ex_0000000000000009", "sbx_ffffffffffffffff");
  ck_assert_int_lt(store_exec_insert(s, orphan, &err), 0);
  ck_assert_int_eq(err.kind, SBX_E_SANDBOX_NOT_FOUND);
}
END_TEST

START_TEST(test_exec_list) {
  cleanup_store store *s = open_store();
  sbx_err err = {0};
  const char *sid = "sbx_0000000000000001";
  insert_sandbox(s, sid, "one", "a");
  insert_sandbox(s, "sbx_0000000000000002", "two", "a");
  char id[32];
  for (int i = 1; i <= 5; i++) {
    snprintf(id, sizeof id, "ex_%016x", i);
    insert_exec(s, id, sid);
  }
  insert_exec(s, "ex_00000000000000ff", "sbx_0000000000000002");
  json_auto_t *done = json_pack("{s:s}", "state", "exited");
  ck_assert_int_eq(store_exec_update(s, "ex_0000000000000002", done, &err), 0);

  /* newest first, paged 2 + 2 + 1 */
  char *cursor = NULL;
  int want = 5;
  for (int page = 0; page < 3; page++) {
    json_auto_t *out = NULL;
    char *next = NULL;
    ck_assert_int_eq(store_exec_list(s, sid, NULL, 2, cursor, &out, &next, &err), 0);
    free(cursor);
    cursor = next;
    for (size_t i = 0; i < json_array_size(out); i++) {
      snprintf(id, sizeof id, "ex_%016x", want--);
      ck_assert_str_eq(str(json_array_get(out, i), "exec_id"), id);
    }
    ck_assert(page < 2 ? cursor != NULL : cursor == NULL);
  }
  ck_assert_int_eq(want, 0);

  json_auto_t *running = NULL;
  cleanup_free char *next = NULL;
  ck_assert_int_eq(store_exec_list(s, sid, "running", 50, NULL, &running, &next, &err), 0);
  ck_assert_int_eq(json_array_size(running), 4);
  json_auto_t *exited = NULL;
  cleanup_free char *next2 = NULL;
  ck_assert_int_eq(store_exec_list(s, sid, "exited", 50, NULL, &exited, &next2, &err), 0);
  ck_assert_int_eq(json_array_size(exited), 1);
  ck_assert_str_eq(str(json_array_get(exited, 0), "exec_id"), "ex_0000000000000002");
}
END_TEST

START_TEST(test_end_running) {
  cleanup_store store *s = open_store();
  sbx_err err = {0};
  const char *sid = "sbx_0000000000000001";
  insert_sandbox(s, sid, "one", "a");
  insert_sandbox(s, "sbx_0000000000000002", "two", "a");
  insert_exec(s, "ex_0000000000000001", sid);
  insert_exec(s, "ex_0000000000000002", sid);
  insert_exec(s, "ex_0000000000000003", "sbx_0000000000000002");
  json_auto_t *done = json_pack("{s:s, s:i, s:s}", "state", "exited", "exit_code", 0, "ended_at",
                                "2026-01-01T00:00:09.000Z");
  ck_assert_int_eq(store_exec_update(s, "ex_0000000000000002", done, &err), 0);

  ck_assert_int_eq(store_exec_end_running(s, sid, "killed", &err), 1);
  json_auto_t *k = NULL, *x = NULL, *other = NULL;
  ck_assert_int_eq(store_exec_get(s, "ex_0000000000000001", &k, &err), 0);
  ck_assert_str_eq(str(k, "state"), "killed");
  ck_assert_int_eq(strlen(str(k, "ended_at")), 24);
  ck_assert_int_eq(store_exec_get(s, "ex_0000000000000002", &x, &err), 0);
  ck_assert_str_eq(str(x, "state"), "exited"); /* ended ones keep their record */
  ck_assert_str_eq(str(x, "ended_at"), "2026-01-01T00:00:09.000Z");
  ck_assert_int_eq(store_exec_get(s, "ex_0000000000000003", &other, &err), 0);
  ck_assert_str_eq(str(other, "state"), "running"); /* other sandbox untouched */
  ck_assert_int_eq(store_exec_end_running(s, sid, "killed", &err), 0);
  ck_assert_int_lt(store_exec_end_running(s, sid, "running", &err), 0);
  ck_assert_int_lt(store_exec_end_running(s, sid, "zombie", &err), 0);
}
END_TEST

START_TEST(test_delete_cascades) {
  cleanup_store store *s = open_store();
  sbx_err err = {0};
  const char *sid = "sbx_0000000000000001";
  insert_sandbox(s, sid, "one", "a");
  insert_exec(s, "ex_0000000000000001", sid);
  insert_exec(s, "ex_0000000000000002", sid);
  ck_assert_int_eq(store_sandbox_delete(s, sid, &err), 0);
  json_auto_t *o = NULL, *e = NULL;
  ck_assert_int_lt(store_sandbox_get(s, sid, &o, &err), 0);
  ck_assert_int_eq(err.kind, SBX_E_SANDBOX_NOT_FOUND);
  ck_assert_int_lt(store_exec_get(s, "ex_0000000000000001", &e, &err), 0);
  ck_assert_int_eq(err.kind, SBX_E_EXEC_NOT_FOUND);
  ck_assert_int_lt(store_sandbox_delete(s, sid, &err), 0);
  ck_assert_int_eq(err.kind, SBX_E_SANDBOX_NOT_FOUND);
  /* the name is free again */
  insert_sandbox(s, "sbx_0000000000000002", "one", "a");
}
END_TEST

#define WRITERS 4
#define PER_WRITER 100

typedef struct {
  int n;
  int failures;
  char msg[sizeof(((sbx_err *)0)->msg) + 64];
} writer_arg;

/* Each thread uses its own store_thread() connection and writes as fast as
 * it can: with busy_timeout and BEGIN IMMEDIATE no write may fail. */
static void *writer(void *p) {
  writer_arg *a = p;
  store *s = store_thread();
  if (!s) {
    a->failures++;
    snprintf(a->msg, sizeof a->msg, "store_thread() gave NULL");
    return NULL;
  }
  if (store_thread() != s) {
    a->failures++;
    snprintf(a->msg, sizeof a->msg, "store_thread() not stable");
  }
  for (int i = 0; i < PER_WRITER; i++) {
    char id[32], name[32], eid[32];
    snprintf(id, sizeof id, "sbx_%08x%08x", a->n, i);
    snprintf(name, sizeof name, "w%d-%d", a->n, i);
    snprintf(eid, sizeof eid, "ex_%08x%08x", a->n, i);
    sbx_err err = {0};
    json_auto_t *o = json_pack("{s:s, s:s}", "id", id, "name", name);
    json_auto_t *e = json_pack("{s:s, s:s, s:s}", "exec_id", eid, "sandbox_id", id, "cmd", "true");
    json_auto_t *u = json_pack("{s:s, s:i}", "state", "exited", "exit_code", 0);
    json_auto_t *got = NULL;
    if (store_sandbox_insert(s, o, &err) < 0 ||
        store_sandbox_set_state(s, id, "running", NULL, &err) < 0 ||
        store_exec_insert(s, e, &err) < 0 || store_exec_update(s, eid, u, &err) < 0 ||
        store_sandbox_get(s, name, &got, &err) < 0) {
      a->failures++;
      snprintf(a->msg, sizeof a->msg, "writer %d row %d: %s (%s)", a->n, i, err.msg,
               sbx_err_kind_name(err.kind));
    }
  }
  return NULL; /* the thread-exit destructor closes the connection */
}

START_TEST(test_concurrent_writers) {
  sbx_err err = {0};
  ck_assert_msg(store_global_init(dbpath, &err) == 0, "%s", err.msg);
  pthread_t t[WRITERS];
  writer_arg args[WRITERS] = {0};
  for (int i = 0; i < WRITERS; i++) {
    args[i].n = i;
    ck_assert_int_eq(pthread_create(&t[i], NULL, writer, &args[i]), 0);
  }
  for (int i = 0; i < WRITERS; i++) {
    pthread_join(t[i], NULL);
    ck_assert_msg(args[i].failures == 0, "%d failures, last: %s", args[i].failures, args[i].msg);
  }
  store *s = store_thread();
  ck_assert_ptr_nonnull(s);
  int total = 0;
  char *cursor = NULL;
  do {
    json_auto_t *out = NULL;
    char *next = NULL;
    ck_assert_int_eq(store_sandbox_list(s, "running", NULL, 500, cursor, &out, &next, &err), 0);
    total += (int)json_array_size(out);
    free(cursor);
    cursor = next;
  } while (cursor);
  ck_assert_int_eq(total, WRITERS * PER_WRITER);
  store_global_shutdown();
  ck_assert_ptr_null(store_thread()); /* shut down: no new connections */
}
END_TEST

/* A committed record survives the process being killed without closing. */
START_TEST(test_kill9_durability) {
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    store *s = NULL;
    sbx_err err = {0};
    json_t *o = json_pack("{s:s, s:s}", "id", "sbx_00000000deadbeef", "name", "survivor");
    if (!o || store_open(dbpath, &s, &err) < 0 || store_sandbox_insert(s, o, &err) < 0)
      _exit(2);
    kill(getpid(), SIGKILL); /* no close, no checkpoint, no atexit */
    _exit(3);
  }
  int status = 0;
  ck_assert_int_eq(waitpid(pid, &status, 0), pid);
  ck_assert_msg(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "child status %d", status);
  char wal[600];
  snprintf(wal, sizeof wal, "%s-wal", dbpath);
  ck_assert_int_eq(access(wal, F_OK), 0); /* the record lives only in the WAL */
  cleanup_store store *s = open_store();
  json_auto_t *o = NULL;
  sbx_err err = {0};
  ck_assert_msg(store_sandbox_get(s, "survivor", &o, &err) == 0, "%s", err.msg);
  ck_assert_str_eq(str(o, "id"), "sbx_00000000deadbeef");
}
END_TEST

START_TEST(test_open_failure) {
  store *s = NULL;
  sbx_err err = {0};
  ck_assert_int_lt(store_open("/nonexistent-dir/x/sbx.db", &s, &err), 0);
  ck_assert_int_eq(err.kind, SBX_E_INTERNAL);
  ck_assert_ptr_null(s);
  ck_assert_ptr_nonnull(strstr(err.msg, "/nonexistent-dir"));
  /* a database from a newer schema is refused, not silently used */
  store *a = open_store();
  store_close(a);
  sqlite3 *db = NULL;
  ck_assert_int_eq(sqlite3_open(dbpath, &db), SQLITE_OK);
  ck_assert_int_eq(sqlite3_exec(db, "PRAGMA user_version=999", NULL, NULL, NULL), SQLITE_OK);
  sqlite3_close(db);
  ck_assert_int_lt(store_open(dbpath, &s, &err), 0);
  ck_assert_ptr_nonnull(strstr(err.msg, "newer"));
}
END_TEST

static Suite *store_suite(void) {
  Suite *su = suite_create("store");
  TCase *tc = tcase_create("core");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_migrations_idempotent);
  tcase_add_test(tc, test_concurrent_open);
  tcase_add_test(tc, test_insert_get);
  tcase_add_test(tc, test_insert_defaults_and_bad_input);
  tcase_add_test(tc, test_duplicate_name);
  tcase_add_test(tc, test_id_wins_over_name);
  tcase_add_test(tc, test_list_state_filter);
  tcase_add_test(tc, test_list_label_filter);
  tcase_add_test(tc, test_paging);
  tcase_add_test(tc, test_bad_cursor);
  tcase_add_test(tc, test_set_state);
  tcase_add_test(tc, test_exec_crud);
  tcase_add_test(tc, test_exec_list);
  tcase_add_test(tc, test_end_running);
  tcase_add_test(tc, test_delete_cascades);
  tcase_add_test(tc, test_concurrent_writers);
  tcase_add_test(tc, test_kill9_durability);
  tcase_add_test(tc, test_open_failure);
  suite_add_tcase(su, tc);
  return su;
}

int main(void) {
  if (!mkdtemp(rootdir)) {
    perror("mkdtemp");
    return EXIT_FAILURE;
  }
  SRunner *sr = srunner_create(store_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  sbx_rm_rf(rootdir);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
