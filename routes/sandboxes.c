/* sandboxes.c - the sandbox routes and their lifecycle.
 *
 * Lifecycle changes of one sandbox (create, stop, start, delete) are
 * serialized by a striped lock keyed on the sandbox id, so a stop cannot
 * interleave with a start of the same sandbox.  They run in the MHD worker
 * thread: the driver calls block for milliseconds, and linking to the agent
 * is a short loop_call. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../common/util.h"
#include "../server/server.h"
#include "../store/store.h"
#include "../vmm/vm.h"
#include "request.h"
#include "routes.h"

#define STRIPES 64
#define LOGS_TAIL_DEFAULT (64 * 1024)
#define LOGS_TAIL_MAX (16 * 1024 * 1024)
static pthread_mutex_t stripes[STRIPES] = {[0 ... STRIPES - 1] = PTHREAD_MUTEX_INITIALIZER};

static pthread_mutex_t *stripe(const char *id) {
  uint32_t h = 2166136261u;
  for (const char *p = id; *p; p++)
    h = (h ^ (uint8_t)*p) * 16777619u;
  return &stripes[h % STRIPES];
}

static void unlockp(pthread_mutex_t **m) {
  if (*m)
    pthread_mutex_unlock(*m);
}
#define cleanup_unlock __attribute__((cleanup(unlockp)))

static pthread_mutex_t *lock_sandbox(const char *id) {
  pthread_mutex_t *m = stripe(id);
  pthread_mutex_lock(m);
  return m;
}

static void decrefp(json_t **j) { json_decref(*j); }
#define cleanup_json __attribute__((cleanup(decrefp)))

static const char *sb_id(json_t *sb) { return json_string_value(json_object_get(sb, "id")); }

static int link_job(json_t *sb, loop_job_kind kind, sbx_err *err) {
  loop_job job = {.kind = kind, .sandbox = sb, .fd = -1};
  if (loop_call(g_server->loop, &job) < 0) {
    if (err)
      *err = job.err;
    return -1;
  }
  return 0;
}

/* Stop a sandbox's processes, keep its layer; records end as killed. */
static int sandbox_stop_locked(store *st, json_t *sb, sbx_err *err) {
  sbx_sandbox_spec spec;
  server_sandbox_spec(sb, &spec);
  store_sandbox_set_state(st, sb_id(sb), "stopping", NULL, NULL);
  int rc = server_driver(sb)->stop(&spec, err);
  link_job(sb, LOOP_JOB_UNLINK, NULL);
  store_exec_end_running(st, sb_id(sb), "killed", NULL);
  if (rc < 0) {
    store_sandbox_set_state(st, sb_id(sb), "failed", err->msg, NULL);
    return -1;
  }
  return store_sandbox_set_state(st, sb_id(sb), "stopped", NULL, err);
}

/* Start (again) and wait for the agent's hello; a failure leaves nothing
 * running and the record "failed" with the reason. */
static int sandbox_start_locked(store *st, json_t *sb, sbx_err *err) {
  sbx_sandbox_spec spec;
  server_sandbox_spec(sb, &spec);
  pid_t pid;
  if (server_driver(sb)->start(&spec, &pid, err) < 0 || link_job(sb, LOOP_JOB_LINK, err) < 0) {
    sbx_err ignored;
    server_driver(sb)->stop(&spec, &ignored);
    link_job(sb, LOOP_JOB_UNLINK, NULL);
    store_sandbox_set_state(st, sb_id(sb), "failed", err->msg, NULL);
    log_error("sandbox=%s start failed: %s", sb_id(sb), err->msg);
    return -1;
  }
  log_info("sandbox=%s running agent_pid=%d", sb_id(sb), (int)pid);
  return store_sandbox_set_state(st, sb_id(sb), "running", NULL, err);
}

static int sandbox_remove_locked(store *st, json_t *sb, sbx_err *err) {
  sbx_sandbox_spec spec;
  server_sandbox_spec(sb, &spec);
  int rc = server_driver(sb)->destroy(&spec, err);
  link_job(sb, LOOP_JOB_UNLINK, NULL);
  if (rc < 0)
    return -1;
  return store_sandbox_delete(st, sb_id(sb), err);
}

/* Look up {ref}; on failure the reply is already queued and *ret is set. */
static json_t *lookup(http_req *r, store *st, enum MHD_Result *ret) {
  json_t *sb = NULL;
  sbx_err err;
  if (!st) {
    *ret = http_reply_fail(r, SBX_E_INTERNAL, "database unavailable");
    return NULL;
  }
  if (store_sandbox_get(st, r->params[0], &sb, &err) < 0) {
    *ret = http_reply_error(r, &err, NULL);
    return NULL;
  }
  if (!http_allow_sandbox(r, sb, ret)) {
    json_decref(sb);
    return NULL;
  }
  sandbox_touch(sb_id(sb));
  return sb;
}

/* Re-read after a change so the reply shows what the database holds. */
static enum MHD_Result reply_sandbox(http_req *r, store *st, const char *id, int status) {
  json_t *sb = NULL;
  sbx_err err;
  if (store_sandbox_get(st, id, &sb, &err) < 0)
    return http_reply_error(r, &err, NULL);
  return http_reply_json(r, status, sb);
}

enum MHD_Result route_sandbox_create(http_req *r, json_t *body) {
  store *st = store_thread();
  if (!st)
    return http_reply_fail(r, SBX_E_INTERNAL, "database unavailable");
  char id[32];
  sbx_new_id("sbx_", id, sizeof id);
  bool replace = false;
  sbx_err err;
  cleanup_json json_t *sb = sandbox_request_parse(body, id, sbx_now_ms(), &replace, &err);
  if (!sb)
    return http_reply_error(r, &err, NULL);
  if (!json_object_get(body, "driver"))
    json_object_set_new(sb, "driver", json_string(g_server->driver->name));
  if (server_driver(sb) == &vmm_vm_driver)
    json_object_set_new(sb, "accelerator", json_string(vmm_vm_accel()));
  if (r->who.labels) { /* a label-limited key creates sandboxes inside its reach */
    json_t *labels = json_object_get(sb, "labels");
    const char *k;
    json_t *v;
    json_object_foreach(r->who.labels, k, v) {
      json_t *have = json_object_get(labels, k);
      if (have && !json_equal(have, v))
        return http_reply_fail(r, SBX_E_FORBIDDEN, "this key may only create sandboxes labelled "
                                                   "%s=%s", k, json_string_value(v));
      json_object_set(labels, k, v);
    }
  }
  const char *name = json_string_value(json_object_get(sb, "name"));
  if (replace) {
    cleanup_json json_t *old = NULL;
    if (store_sandbox_get(st, name, &old, NULL) == 0) {
      enum MHD_Result ret;
      if (!http_allow_sandbox(r, old, &ret))
        return ret;
      cleanup_unlock pthread_mutex_t *m = lock_sandbox(sb_id(old));
      if (sandbox_remove_locked(st, old, &err) < 0 && err.kind != SBX_E_SANDBOX_NOT_FOUND)
        return http_reply_error(r, &err, NULL);
    }
  }
  int64_t count = 0;
  if (store_sandbox_count(st, &count, &err) < 0)
    return http_reply_error(r, &err, NULL);
  if (count >= g_server->cfg.max_sandboxes)
    return http_reply_fail(r, SBX_E_CAPACITY, "this server holds its maximum of %d sandboxes "
                                              "(--max-sandboxes)", g_server->cfg.max_sandboxes);
  cleanup_unlock pthread_mutex_t *m = lock_sandbox(id);
  sbx_sandbox_spec spec;
  server_sandbox_spec(sb, &spec);
  if (server_driver(sb)->create(&spec, &err) < 0)
    return http_reply_error(r, &err, NULL);
  if (store_sandbox_insert(st, sb, &err) < 0) {
    sbx_err ignored;
    server_driver(sb)->destroy(&spec, &ignored);
    return http_reply_error(r, &err, NULL);
  }
  if (sandbox_start_locked(st, sb, &err) < 0)
    return http_reply_error(r, &err, json_pack("{s:s}", "sandbox_id", id));
  return reply_sandbox(r, st, id, 201);
}

/* The last `max` bytes of the sandbox's log (driver->log_path): a malloc'd,
 * NUL-terminated buffer of *len bytes that starts at *from of a *size-byte
 * file (a missing file is an empty log), or NULL with err filled. */
static char *log_tail(json_t *sb, int64_t max, size_t *len, off_t *from, off_t *size,
                      sbx_err *err) {
  sbx_sandbox_spec spec;
  server_sandbox_spec(sb, &spec);
  char path[4200];
  if (server_driver(sb)->log_path(&spec, path, sizeof path, err) < 0)
    return NULL;
  cleanup_fd int fd = open(path, O_RDONLY | O_CLOEXEC);
  struct stat st = {0};
  if ((fd < 0 && errno != ENOENT) || (fd >= 0 && fstat(fd, &st) < 0))
    return sbx_fail_errno(err, errno, "log %s", path), NULL;
  *size = st.st_size;
  *from = st.st_size > max ? st.st_size - max : 0;
  char *buf = malloc((size_t)(st.st_size - *from) + 1);
  if (!buf)
    return sbx_fail_errno(err, ENOMEM, "log %s", path), NULL;
  ssize_t got = st.st_size > *from ? pread(fd, buf, (size_t)(st.st_size - *from), *from) : 0;
  if (got < 0) {
    free(buf);
    return sbx_fail_errno(err, errno, "read %s", path), NULL;
  }
  buf[got] = '\0';
  *len = (size_t)got;
  return buf;
}

/* GET /v1/sandboxes/{ref}/logs[?tail_bytes=N]: the end of the sandbox's log
 * (vm: serial console - boot, guest kernel, agent; ns: the agent's log), as
 * bytes.  X-Sbx-Log-Size is the whole file's size, X-Sbx-Offset where the
 * reply starts in it. */
enum MHD_Result route_sandbox_logs(http_req *r, json_t *body) {
  enum MHD_Result ret;
  cleanup_json json_t *sb = lookup(r, store_thread(), &ret);
  if (!sb)
    return ret;
  int64_t tail = LOGS_TAIL_DEFAULT;
  const char *q = http_query(r, "tail_bytes");
  if (q) {
    char *end;
    long long v = strtoll(q, &end, 10);
    if (!*q || *end || v < 1 || v > LOGS_TAIL_MAX)
      return http_reply_error(r, &(sbx_err){.kind = SBX_E_INVALID_REQUEST, .field = "tail_bytes",
                                            .msg = "tail_bytes must be an integer from 1 to "
                                                   "16777216"},
                              NULL);
    tail = v;
  }
  size_t len;
  off_t from, size;
  sbx_err err;
  char *buf = log_tail(sb, tail, &len, &from, &size, &err);
  if (!buf)
    return http_reply_error(r, &err, NULL);
  struct MHD_Response *resp = MHD_create_response_from_buffer(len, buf, MHD_RESPMEM_MUST_FREE);
  if (!resp) {
    free(buf);
    return http_reply_fail(r, SBX_E_INTERNAL, "out of memory");
  }
  char v[32];
  snprintf(v, sizeof v, "%lld", (long long)size);
  MHD_add_response_header(resp, "X-Sbx-Log-Size", v);
  snprintf(v, sizeof v, "%lld", (long long)from);
  MHD_add_response_header(resp, "X-Sbx-Offset", v);
  return http_queue(r, 200, resp, "text/plain; charset=utf-8");
}

enum MHD_Result route_sandbox_get(http_req *r, json_t *body) {
  enum MHD_Result ret;
  json_t *sb = lookup(r, store_thread(), &ret);
  return sb ? http_reply_json(r, 200, sb) : ret;
}

int route_paging(http_req *r, int *limit, const char **cursor, sbx_err *err) {
  const char *l = http_query(r, "limit");
  *limit = 50;
  if (l) {
    char *end;
    long v = strtol(l, &end, 10);
    if (!*l || *end || v < 1 || v > 500)
      return sbx_fail_field(err, "limit", "limit must be an integer from 1 to 500");
    *limit = (int)v;
  }
  *cursor = http_query(r, "cursor");
  if (*cursor && !**cursor)
    *cursor = NULL;
  return 0;
}

typedef struct label_acc {
  json_t *labels;
  bool bad;
} label_acc;

static enum MHD_Result collect_label(void *cls, enum MHD_ValueKind kind, const char *key,
                                     const char *value) {
  label_acc *acc = cls;
  if (strcmp(key, "label") != 0)
    return MHD_YES;
  const char *eq = value ? strchr(value, '=') : NULL;
  if (!eq || eq == value) {
    acc->bad = true;
    return MHD_NO;
  }
  char k[128];
  snprintf(k, sizeof k, "%.*s", (int)(eq - value), value);
  json_object_set_new(acc->labels, k, json_string(eq + 1));
  return MHD_YES;
}

static bool valid_state(const char *s, const char *const *states) {
  for (; *states; states++)
    if (strcmp(s, *states) == 0)
      return true;
  return false;
}

enum MHD_Result route_sandbox_list(http_req *r, json_t *body) {
  static const char *const states[] = {"creating", "running", "stopping", "stopped", "failed", NULL};
  store *st = store_thread();
  if (!st)
    return http_reply_fail(r, SBX_E_INTERNAL, "database unavailable");
  sbx_err err;
  int limit;
  const char *cursor;
  if (route_paging(r, &limit, &cursor, &err) < 0)
    return http_reply_error(r, &err, NULL);
  const char *state = http_query(r, "state");
  if (state && !valid_state(state, states)) {
    sbx_fail_field(&err, "state", "unknown state '%s'", state);
    return http_reply_error(r, &err, NULL);
  }
  cleanup_json json_t *labels = json_object();
  label_acc acc = {labels, false};
  MHD_get_connection_values(r->conn, MHD_GET_ARGUMENT_KIND, collect_label, &acc);
  if (acc.bad) {
    sbx_fail_field(&err, "label", "label filters look like label=key=value");
    return http_reply_error(r, &err, NULL);
  }
  if (r->who.labels) { /* a label-limited key sees only its sandboxes */
    const char *k;
    json_t *v;
    json_object_foreach(r->who.labels, k, v) {
      json_t *asked = json_object_get(labels, k);
      if (asked && !json_equal(asked, v))
        return http_reply_json(r, 200, json_pack("{s:[],s:n}", "data", "next_cursor"));
      json_object_set(labels, k, v);
    }
  }
  json_t *list = NULL;
  char *next = NULL;
  if (store_sandbox_list(st, state, json_object_size(labels) ? labels : NULL, limit, cursor, &list,
                         &next, &err) < 0)
    return http_reply_error(r, &err, NULL);
  json_t *reply = json_pack("{s:o, s:s?}", "data", list, "next_cursor", next);
  if (reply && !next)
    json_object_set_new(reply, "next_cursor", json_null());
  free(next);
  return http_reply_json(r, 200, reply);
}

/* {ref} looked up, locked, and looked up again under the lock (a concurrent
 * lifecycle change may have happened in between).  NULL: the reply is queued. */
static json_t *lookup_locked(http_req *r, store *st, pthread_mutex_t **m, enum MHD_Result *ret) {
  cleanup_json json_t *sb0 = lookup(r, st, ret);
  if (!sb0)
    return NULL;
  *m = lock_sandbox(sb_id(sb0));
  return lookup(r, st, ret);
}

static bool in_state(json_t *sb, const char *state) {
  return strcmp(json_string_value(json_object_get(sb, "state")), state) == 0;
}

enum MHD_Result route_sandbox_stop(http_req *r, json_t *body) {
  store *st = store_thread();
  enum MHD_Result ret;
  cleanup_unlock pthread_mutex_t *m = NULL;
  cleanup_json json_t *sb = lookup_locked(r, st, &m, &ret);
  if (!sb)
    return ret;
  sbx_err err;
  if (!in_state(sb, "stopped") && sandbox_stop_locked(st, sb, &err) < 0)
    return http_reply_error(r, &err, NULL);
  return reply_sandbox(r, st, sb_id(sb), 200);
}

enum MHD_Result route_sandbox_start(http_req *r, json_t *body) {
  store *st = store_thread();
  enum MHD_Result ret;
  cleanup_unlock pthread_mutex_t *m = NULL;
  cleanup_json json_t *sb = lookup_locked(r, st, &m, &ret);
  if (!sb)
    return ret;
  sbx_err err;
  if (!in_state(sb, "running") && sandbox_start_locked(st, sb, &err) < 0)
    return http_reply_error(r, &err, json_pack("{s:s}", "sandbox_id", sb_id(sb)));
  return reply_sandbox(r, st, sb_id(sb), 200);
}

enum MHD_Result route_sandbox_delete(http_req *r, json_t *body) {
  store *st = store_thread();
  enum MHD_Result ret;
  cleanup_unlock pthread_mutex_t *m = NULL;
  cleanup_json json_t *sb = lookup_locked(r, st, &m, &ret);
  if (!sb)
    return ret;
  sbx_err err;
  if (sandbox_remove_locked(st, sb, &err) < 0)
    return http_reply_error(r, &err, NULL);
  return http_reply_empty(r, 204);
}

void sandboxes_recover(void) {
  store *st = store_thread();
  if (!st)
    return;
  const char *cursor = NULL;
  char *next = NULL;
  do {
    json_t *list = NULL;
    if (store_sandbox_list(st, NULL, NULL, 500, cursor, &list, &next, NULL) < 0)
      return;
    size_t i;
    json_t *sb;
    json_array_foreach(list, i, sb) {
      const char *state = json_string_value(json_object_get(sb, "state"));
      if (strcmp(state, "stopped") == 0 || strcmp(state, "failed") == 0)
        continue;
      sbx_sandbox_spec spec;
      server_sandbox_spec(sb, &spec);
      sbx_err err;
      if (server_driver(sb)->alive(&spec) && link_job(sb, LOOP_JOB_LINK, &err) == 0) {
        if (strcmp(state, "running") != 0)
          store_sandbox_set_state(st, sb_id(sb), "running", NULL, NULL);
        log_info("sandbox=%s re-connected to its agent", sb_id(sb));
        continue;
      }
      server_driver(sb)->stop(&spec, &err);
      store_exec_end_running(st, sb_id(sb), "killed", NULL);
      store_sandbox_set_state(st, sb_id(sb), "stopped", NULL, NULL);
      log_info("sandbox=%s was %s but its agent is gone: marked stopped", sb_id(sb), state);
    }
    json_decref(list);
    free((char *)cursor);
    cursor = next;
  } while (cursor);
}

/* ------------------------------------------------------ idle and max duration */

/* Last API activity per sandbox, in memory: after a restart every sandbox
 * counts as active from the restart on. */
#define ACTIVITY_SLOTS 4096
static struct {
  char id[32];
  int64_t ms;
} activity[ACTIVITY_SLOTS];
static pthread_mutex_t activity_mu = PTHREAD_MUTEX_INITIALIZER;
static int64_t activity_floor_ms; /* the server's start */

static size_t activity_slot(const char *id) {
  uint32_t h = 2166136261u;
  for (const char *p = id; *p; p++)
    h = (h ^ (uint8_t)*p) * 16777619u;
  return h % ACTIVITY_SLOTS;
}

void sandbox_touch(const char *sandbox_id) {
  if (!sandbox_id)
    return;
  pthread_mutex_lock(&activity_mu);
  size_t i = activity_slot(sandbox_id);
  snprintf(activity[i].id, sizeof activity[i].id, "%s", sandbox_id);
  activity[i].ms = sbx_mono_ms();
  pthread_mutex_unlock(&activity_mu);
}

/* Milliseconds since the sandbox's last API activity.  A slot shared by two
 * sandboxes only ever makes one of them look more active (never idle early). */
static int64_t idle_for(const char *sandbox_id) {
  pthread_mutex_lock(&activity_mu);
  size_t i = activity_slot(sandbox_id);
  int64_t last = strcmp(activity[i].id, sandbox_id) == 0 ? activity[i].ms : 0;
  pthread_mutex_unlock(&activity_mu);
  if (!activity_floor_ms)
    activity_floor_ms = sbx_mono_ms();
  if (last < activity_floor_ms)
    last = activity_floor_ms;
  return sbx_mono_ms() - last;
}

static int64_t parse_time_ms(const char *ts) {
  struct tm tm = {0};
  int ms = 0;
  if (!ts || sscanf(ts, "%d-%d-%dT%d:%d:%d.%dZ", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                    &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &ms) != 7)
    return 0;
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  return (int64_t)timegm(&tm) * 1000 + ms;
}

/* The last non-empty line of the sandbox's log (driver->log_path). */
static void last_log_line(json_t *sb, char *out, size_t n) {
  size_t len;
  off_t from, size;
  out[0] = '\0';
  cleanup_free char *buf = log_tail(sb, 2048, &len, &from, &size, NULL);
  if (!buf)
    return;
  size_t k = len;
  while (k > 0 && (buf[k - 1] == '\n' || buf[k - 1] == '\r'))
    k--;
  buf[k] = '\0';
  const char *line = strrchr(buf, '\n');
  line = line ? line + 1 : buf;
  size_t keep = strnlen(line, n - 1);
  memcpy(out, line, keep);
  out[keep] = '\0';
}

/* A running sandbox whose agent (or VM) is gone without a stop: its execs end
 * as killed and it becomes "failed" with the reason and the log's last line. */
static void sandbox_check_alive(store *st, json_t *sb) {
  sbx_sandbox_spec spec;
  server_sandbox_spec(sb, &spec);
  if (server_driver(sb)->alive(&spec))
    return;
  cleanup_unlock pthread_mutex_t *m = lock_sandbox(sb_id(sb));
  cleanup_json json_t *fresh = NULL;
  if (store_sandbox_get(st, sb_id(sb), &fresh, NULL) < 0 ||
      strcmp(json_string_value(json_object_get(fresh, "state")), "running") != 0)
    return;
  server_sandbox_spec(fresh, &spec);
  if (server_driver(fresh)->alive(&spec))
    return;
  char tail[600], why[800];
  last_log_line(fresh, tail, sizeof tail);
  snprintf(why, sizeof why, "the sandbox's %s exited unexpectedly%s%s",
           server_driver(fresh) == &vmm_vm_driver ? "virtual machine (QEMU)" : "agent",
           tail[0] ? "; last log line: " : "", tail);
  log_error("sandbox=%s failed: %s", sb_id(fresh), why);
  sbx_err err;
  link_job(fresh, LOOP_JOB_UNLINK, NULL);
  server_driver(fresh)->stop(&spec, &err); /* what is left: cgroups, sockets */
  store_exec_end_running(st, sb_id(fresh), "killed", NULL);
  store_sandbox_set_state(st, sb_id(fresh), "failed", why, NULL);
}

/* Why a running sandbox should stop now, or NULL. */
static const char *reap_reason(store *st, json_t *sb) {
  json_int_t max_s = json_integer_value(json_object_get(sb, "max_duration_s"));
  json_int_t idle_s = json_integer_value(json_object_get(sb, "idle_timeout_s"));
  if (max_s > 0) {
    int64_t started = parse_time_ms(json_string_value(json_object_get(sb, "started_at")));
    if (started && sbx_now_ms() - started >= max_s * 1000)
      return "max_duration_s";
  }
  if (idle_s > 0 && idle_for(sb_id(sb)) >= idle_s * 1000) {
    json_t *running = NULL;
    char *next = NULL;
    bool busy = true; /* if we cannot tell, do not stop */
    if (store_exec_list(st, sb_id(sb), "running", 1, NULL, &running, &next, NULL) == 0)
      busy = json_array_size(running) > 0;
    json_decref(running);
    free(next);
    if (!busy)
      return "idle_timeout_s";
  }
  return NULL;
}

void sandboxes_reap(void) {
  store *st = store_thread();
  if (!st)
    return;
  const char *cursor = NULL;
  char *next = NULL;
  do {
    json_t *list = NULL;
    if (store_sandbox_list(st, "running", NULL, 500, cursor, &list, &next, NULL) < 0)
      return;
    size_t i;
    json_t *sb;
    json_array_foreach(list, i, sb) {
      sandbox_check_alive(st, sb);
      if (!reap_reason(st, sb))
        continue;
      cleanup_unlock pthread_mutex_t *m = lock_sandbox(sb_id(sb));
      cleanup_json json_t *fresh = NULL;
      if (store_sandbox_get(st, sb_id(sb), &fresh, NULL) < 0 ||
          strcmp(json_string_value(json_object_get(fresh, "state")), "running") != 0)
        continue;
      const char *why = reap_reason(st, fresh); /* again, under the lock */
      if (!why)
        continue;
      sbx_err err;
      log_info("sandbox=%s stopping: %s passed", sb_id(sb), why);
      if (sandbox_stop_locked(st, fresh, &err) < 0)
        log_error("sandbox=%s stop failed: %s", sb_id(sb), err.msg);
    }
    json_decref(list);
    free((char *)cursor);
    cursor = next;
  } while (cursor);
}
