/* execs.c - one-shot exec (/exec, /shell) and exec records. */
#include <string.h>

#include "../common/util.h"
#include "../server/server.h"
#include "../store/store.h"
#include "request.h"
#include "routes.h"

static void decrefp(json_t **j) { json_decref(*j); }
#define cleanup_json __attribute__((cleanup(decrefp)))

typedef struct exec_state {
  exec_request req;
  json_t *sandbox;
  exec_render *render;
  exec_output out;
} exec_state;

static void exec_state_free(void *p) {
  exec_state *s = p;
  exec_request_clear(&s->req);
  json_decref(s->sandbox);
  exec_render_free(s->render);
  free(s);
}

static ssize_t render_reader(void *cls, uint64_t pos, char *buf, size_t max) {
  size_t n = exec_render_next(cls, buf, max);
  return n ? (ssize_t)n : MHD_CONTENT_READER_END_OF_STREAM;
}

static void render_done(void *cls) { /* the render belongs to exec_state */ }

/* The loop is done with the exec: answer. */
static enum MHD_Result exec_resume(http_req *r) {
  exec_state *s = r->state;
  loop_job *job = &r->job;
  exec_result *res = &job->res;
  if (job->rc < 0 && !res->started && !res->failure) {
    /* It never reached the agent: the record must not stay "running". */
    store *st = store_thread();
    char now[32];
    sbx_rfc3339(sbx_now_ms(), now, sizeof now);
    json_t *f = json_pack("{s:s,s:s,s:{s:s,s:s,s:s}}", "state", "failed", "ended_at", now,
                          "failure", "kind", "other", "stage", "dispatch", "message", job->err.msg);
    if (st)
      store_exec_update(st, job->exec_id, f, NULL);
    json_decref(f);
  }
  if (job->rc < 0)
    return http_reply_error(r, &job->err, json_pack("{s:s}", "exec_id", job->exec_id));
  if (res->failure) {
    sbx_err err;
    sbx_fail(&err, SBX_E_EXEC_FAILED, 0, "the program did not start: %s",
             json_string_value(json_object_get(res->failure, "message")) ?: "unknown reason");
    return http_reply_error(r, &err,
                            json_pack("{s:O,s:s}", "failure", res->failure, "exec_id", job->exec_id));
  }
  if (job->background)
    return http_reply_json(r, 202, json_pack("{s:s,s:s,s:i}", "exec_id", job->exec_id, "state",
                                             "running", "pid", res->pid));
  exec_output *o = &s->out;
  snprintf(o->exec_id, sizeof o->exec_id, "%s", job->exec_id);
  o->exit_code = res->exit_code;
  o->signal = res->signal;
  o->timed_out = res->timed_out;
  o->timeout_ms = s->req.timeout_ms;
  o->duration_ms = res->duration_ms;
  o->encoding = s->req.encoding;
  o->out = &res->out;
  o->err = &res->err;
  o->out_truncated = res->out_truncated;
  o->err_truncated = res->err_truncated;
  s->render = exec_render_new(o);
  if (!s->render)
    return http_reply_fail(r, SBX_E_INTERNAL, "out of memory rendering the reply");
  return http_reply_stream(r, res->timed_out ? 504 : 200, "application/json", render_reader,
                           s->render, render_done);
}

static enum MHD_Result start(http_req *r, json_t *body, bool shell_mode) {
  store *st = store_thread();
  if (!st)
    return http_reply_fail(r, SBX_E_INTERNAL, "database unavailable");
  exec_state *s = calloc(1, sizeof *s);
  if (!s)
    return http_reply_fail(r, SBX_E_INTERNAL, "out of memory");
  r->state = s;
  r->state_free = exec_state_free;
  sbx_err err;
  if (store_sandbox_get(st, r->params[0], &s->sandbox, &err) < 0)
    return http_reply_error(r, &err, NULL);
  enum MHD_Result ret;
  if (!http_allow_sandbox(r, s->sandbox, &ret))
    return ret;
  sandbox_touch(json_string_value(json_object_get(s->sandbox, "id")));
  const char *shell = json_string_value(json_object_get(s->sandbox, "shell"));
  if (exec_request_parse(body, shell_mode, shell ? shell : "/bin/sh", false, &s->req, &err) < 0)
    return http_reply_error(r, &err, NULL);
  const char *state = json_string_value(json_object_get(s->sandbox, "state"));
  if (strcmp(state, "running") != 0)
    return http_reply_fail(r, SBX_E_NOT_RUNNING, "sandbox %s is %s, not running",
                           r->params[0], state);
  loop_job *job = &r->job;
  job->kind = LOOP_JOB_EXEC;
  sbx_new_id("ex_", job->exec_id, sizeof job->exec_id);
  job->background = s->req.background;
  job->max_output = s->req.background ? 0 : s->req.max_output_bytes;
  job->sandbox = s->sandbox;
  r->hold = exec_request_agent_spec(&s->req, s->sandbox, job->exec_id);
  job->agent_spec = r->hold;
  if (!job->agent_spec)
    return http_reply_fail(r, SBX_E_INTERNAL, "out of memory");
  char now[32];
  sbx_rfc3339(sbx_now_ms(), now, sizeof now);
  json_t *spec = job->agent_spec;
  cleanup_json json_t *rec = json_pack(
      "{s:s, s:s, s:O, s:O, s:O, s:O, s:b, s:s, s:n, s:n, s:n, s:n, s:s, s:n, s:i, s:i}",
      "exec_id", job->exec_id, "sandbox_id", json_string_value(json_object_get(s->sandbox, "id")),
      "cmd", json_object_get(spec, "cmd"), "args", json_object_get(spec, "args"), "cwd",
      json_object_get(spec, "cwd"), "user", json_object_get(spec, "user") ?: json_null(), "tty",
      s->req.tty, "state", "running", "pid", "exit_code", "signal", "failure", "started_at", now,
      "ended_at", "stdout_bytes", 0, "stderr_bytes", 0);
  if (!rec || store_exec_insert(st, rec, &err) < 0)
    return http_reply_error(r, &err, NULL);
  return http_suspend(r, exec_resume);
}

enum MHD_Result route_exec(http_req *r, json_t *body) { return start(r, body, false); }
enum MHD_Result route_shell(http_req *r, json_t *body) { return start(r, body, true); }

/* A running exec's record counts output only at its end; ask the loop for
 * what has passed so far. */
void route_exec_live_counts(json_t *ex) {
  if (strcmp(json_string_value(json_object_get(ex, "state")), "running") != 0)
    return;
  loop_job job = {.kind = LOOP_JOB_COUNTS, .fd = -1};
  snprintf(job.exec_id, sizeof job.exec_id, "%.31s",
           json_string_value(json_object_get(ex, "exec_id")));
  if (loop_call(g_server->loop, &job) == 0) {
    json_object_set_new(ex, "stdout_bytes", json_integer((json_int_t)job.res.out_bytes));
    json_object_set_new(ex, "stderr_bytes", json_integer((json_int_t)job.res.err_bytes));
  }
}

enum MHD_Result route_exec_get(http_req *r, json_t *body) {
  enum MHD_Result ret;
  json_t *ex = route_exec_record(r, &ret);
  if (!ex)
    return ret;
  route_exec_live_counts(ex);
  return http_reply_json(r, 200, ex);
}

enum MHD_Result route_exec_list(http_req *r, json_t *body) {
  static const char *const states[] = {"running", "exited", "failed", "timed_out", "killed"};
  store *st = store_thread();
  sbx_err err;
  if (!st)
    return http_reply_fail(r, SBX_E_INTERNAL, "database unavailable");
  cleanup_json json_t *sb = NULL;
  if (store_sandbox_get(st, r->params[0], &sb, &err) < 0)
    return http_reply_error(r, &err, NULL);
  enum MHD_Result ret;
  if (!http_allow_sandbox(r, sb, &ret))
    return ret;
  int limit;
  const char *cursor;
  if (route_paging(r, &limit, &cursor, &err) < 0)
    return http_reply_error(r, &err, NULL);
  const char *state = http_query(r, "state");
  if (state) {
    bool ok = false;
    for (size_t i = 0; i < SBX_ARRAY_LEN(states); i++)
      ok |= strcmp(state, states[i]) == 0;
    if (!ok) {
      sbx_fail_field(&err, "state", "unknown exec state '%s'", state);
      return http_reply_error(r, &err, NULL);
    }
  }
  json_t *list = NULL;
  char *next = NULL;
  if (store_exec_list(st, json_string_value(json_object_get(sb, "id")), state, limit, cursor,
                      &list, &next, &err) < 0)
    return http_reply_error(r, &err, NULL);
  size_t i;
  json_t *ex;
  json_array_foreach(list, i, ex)
    route_exec_live_counts(ex);
  json_t *reply = json_pack("{s:o}", "data", list);
  json_object_set_new(reply, "next_cursor", next ? json_string(next) : json_null());
  free(next);
  return http_reply_json(r, 200, reply);
}
