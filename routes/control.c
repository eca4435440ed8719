/* control.c - control of one exec by id: wait, signal, kill, stdin, resize,
 * output.  Each posts a job to the loop, which holds the live session; when
 * the loop does not hold the exec (it ended long ago, or sbxd restarted), the
 * answer comes from its database record. */
#include <stdio.h>
#include <string.h>

#include "../common/util.h"
#include "../server/server.h"
#include "../store/store.h"
#include "request.h"
#include "routes.h"

static void decrefp(json_t **j) { json_decref(*j); }
#define cleanup_json __attribute__((cleanup(decrefp)))

json_t *route_exec_record(http_req *r, enum MHD_Result *ret) {
  store *st = store_thread();
  json_t *ex = NULL;
  sbx_err err;
  if (!st) {
    *ret = http_reply_fail(r, SBX_E_INTERNAL, "database unavailable");
    return NULL;
  }
  if (store_exec_get(st, r->params[0], &ex, &err) < 0) {
    *ret = http_reply_error(r, &err, NULL);
    return NULL;
  }
  const char *sandbox_id = json_string_value(json_object_get(ex, "sandbox_id"));
  if (r->who.labels) { /* a label-limited key: is the exec's sandbox within reach? */
    cleanup_json json_t *sb = NULL;
    if (store_sandbox_get(st, sandbox_id, &sb, &err) < 0 || !http_allow_sandbox(r, sb, ret)) {
      if (!sb)
        *ret = http_reply_error(r, &err, NULL);
      json_decref(ex);
      return NULL;
    }
  }
  sandbox_touch(sandbox_id);
  return ex;
}

static bool is_running(json_t *ex) {
  return !strcmp(json_string_value(json_object_get(ex, "state")), "running");
}

static enum MHD_Result post(http_req *r, loop_job_kind kind, http_resume_fn resume) {
  r->job.kind = kind;
  snprintf(r->job.exec_id, sizeof r->job.exec_id, "%.31s", r->params[0]);
  return http_suspend(r, resume);
}

/* After a control job: 404/409 mapping for execs the loop does not hold. */
static enum MHD_Result control_error(http_req *r) {
  if (r->job.err.kind == SBX_E_EXEC_NOT_FOUND)
    return http_reply_fail(r, SBX_E_NOT_RUNNING, "exec %s is not running", r->params[0]);
  return http_reply_error(r, &r->job.err, json_pack("{s:s}", "exec_id", r->params[0]));
}

/* ------------------------------------------------------------------- wait */

/* The wait is over (ended, or timed out): the record as GET /v1/execs/{id}. */
static enum MHD_Result wait_done(http_req *r) { return route_exec_get(r, NULL); }

enum MHD_Result route_exec_wait(http_req *r, json_t *body) {
  enum MHD_Result ret;
  cleanup_json json_t *ex = route_exec_record(r, &ret);
  if (!ex)
    return ret;
  int64_t timeout = -1; /* none */
  const char *t = http_query(r, "timeout_ms");
  if (t) {
    char *end;
    long long v = strtoll(t, &end, 10);
    if (!*t || *end || v < 0 || v > SBX_MAX_TIMEOUT_MS) {
      sbx_err err;
      sbx_fail_field(&err, "timeout_ms", "timeout_ms must be an integer from 0 to %lld",
                     (long long)SBX_MAX_TIMEOUT_MS);
      return http_reply_error(r, &err, NULL);
    }
    timeout = v;
  }
  if (!is_running(ex) || timeout == 0)
    return http_reply_json(r, 200, json_incref(ex));
  r->job.timeout_ms = timeout;
  return post(r, LOOP_JOB_WAIT, wait_done);
}

/* --------------------------------------------------------- signal and kill */

static enum MHD_Result signal_done(http_req *r) {
  if (r->job.rc < 0)
    return control_error(r);
  return http_reply_json(r, 202, json_pack("{s:s,s:i}", "exec_id", r->params[0], "signal",
                                           r->job.signal));
}

static enum MHD_Result send_signal(http_req *r, int sig) {
  enum MHD_Result ret;
  cleanup_json json_t *ex = route_exec_record(r, &ret);
  if (!ex)
    return ret;
  if (!is_running(ex))
    return http_reply_fail(r, SBX_E_NOT_RUNNING, "exec %s has ended (%s)", r->params[0],
                           json_string_value(json_object_get(ex, "state")));
  r->job.signal = sig;
  return post(r, LOOP_JOB_SIGNAL, signal_done);
}

enum MHD_Result route_exec_signal(http_req *r, json_t *body) {
  json_t *v = json_object_get(body, "signal");
  int sig = v ? sbx_signal_parse(v) : -1;
  if (sig < 0) {
    sbx_err err;
    sbx_fail_field(&err, "signal", "\"signal\" must be a signal name like \"SIGTERM\" or a number "
                                   "from 1 to 64");
    return http_reply_error(r, &err, NULL);
  }
  const char *key;
  json_t *val;
  json_object_foreach(body, key, val) {
    if (strcmp(key, "signal") != 0) {
      sbx_err err;
      sbx_fail_field(&err, key, "unknown field '%s'", key);
      return http_reply_error(r, &err, NULL);
    }
  }
  return send_signal(r, sig);
}

enum MHD_Result route_exec_kill(http_req *r, json_t *body) {
  r->job.kill = true;
  return send_signal(r, 9);
}

/* ------------------------------------------------------------ stdin, resize */

static enum MHD_Result empty_done(http_req *r) {
  return r->job.rc < 0 ? control_error(r) : http_reply_empty(r, 204);
}

enum MHD_Result route_exec_stdin(http_req *r, json_t *body) {
  const char *eof = http_query(r, "eof");
  if (eof && strcmp(eof, "true") && strcmp(eof, "false") && strcmp(eof, "1") && strcmp(eof, "0")) {
    sbx_err err;
    sbx_fail_field(&err, "eof", "eof must be true or false");
    return http_reply_error(r, &err, NULL);
  }
  enum MHD_Result ret;
  cleanup_json json_t *ex = route_exec_record(r, &ret);
  if (!ex)
    return ret;
  if (!is_running(ex))
    return http_reply_fail(r, SBX_E_NOT_RUNNING, "exec %s has ended; its stdin is closed",
                           r->params[0]);
  r->job.data = (const uint8_t *)r->body;
  r->job.len = r->body_len;
  r->job.eof = eof && (!strcmp(eof, "true") || !strcmp(eof, "1"));
  return post(r, LOOP_JOB_STDIN, empty_done);
}

enum MHD_Result route_exec_resize(http_req *r, json_t *body) {
  sbx_err err;
  const char *key;
  json_t *val;
  json_object_foreach(body, key, val) {
    if (strcmp(key, "rows") && strcmp(key, "cols")) {
      sbx_fail_field(&err, key, "unknown field '%s'", key);
      return http_reply_error(r, &err, NULL);
    }
  }
  static const char *const dims[] = {"rows", "cols"};
  int v[2];
  for (int i = 0; i < 2; i++) {
    json_t *d = json_object_get(body, dims[i]);
    if (!json_is_integer(d) || json_integer_value(d) < 1 || json_integer_value(d) > 1000) {
      sbx_fail_field(&err, dims[i], "%s must be an integer from 1 to 1000", dims[i]);
      return http_reply_error(r, &err, NULL);
    }
    v[i] = (int)json_integer_value(d);
  }
  enum MHD_Result ret;
  cleanup_json json_t *ex = route_exec_record(r, &ret);
  if (!ex)
    return ret;
  if (!json_is_true(json_object_get(ex, "tty")))
    return http_reply_fail(r, SBX_E_NOT_RUNNING,
                           "exec %s has no terminal: resize needs \"tty\": true", r->params[0]);
  if (!is_running(ex))
    return http_reply_fail(r, SBX_E_NOT_RUNNING, "exec %s has ended", r->params[0]);
  r->job.rows = v[0];
  r->job.cols = v[1];
  return post(r, LOOP_JOB_RESIZE, empty_done);
}

/* ------------------------------------------------------------------ output */

static enum MHD_Result reply_output(http_req *r, const void *data, size_t len, uint64_t from,
                                    uint64_t next, bool complete) {
  struct MHD_Response *resp =
      MHD_create_response_from_buffer(len, (void *)data, MHD_RESPMEM_MUST_COPY);
  if (!resp)
    return MHD_NO;
  char v[32];
  snprintf(v, sizeof v, "%llu", (unsigned long long)from);
  MHD_add_response_header(resp, "X-Sbx-Offset", v);
  snprintf(v, sizeof v, "%llu", (unsigned long long)next);
  MHD_add_response_header(resp, "X-Sbx-Next-Offset", v);
  MHD_add_response_header(resp, "X-Sbx-Complete", complete ? "true" : "false");
  return http_queue(r, 200, resp, "application/octet-stream");
}

static enum MHD_Result output_done(http_req *r) {
  loop_job *job = &r->job;
  if (job->rc == 0)
    return reply_output(r, job->out, job->out_len, job->out_from, job->out_next,
                        job->out_complete);
  /* not in memory: the output has expired; the record says how much there was */
  enum MHD_Result ret;
  cleanup_json json_t *ex = route_exec_record(r, &ret);
  if (!ex)
    return ret;
  uint64_t total = (uint64_t)json_integer_value(
      json_object_get(ex, job->stream ? "stderr_bytes" : "stdout_bytes"));
  return reply_output(r, "", 0, total, total, !is_running(ex));
}

enum MHD_Result route_exec_output(http_req *r, json_t *body) {
  sbx_err err;
  const char *stream = http_query(r, "stream");
  if (stream && strcmp(stream, "stdout") && strcmp(stream, "stderr")) {
    sbx_fail_field(&err, "stream", "stream must be stdout or stderr");
    return http_reply_error(r, &err, NULL);
  }
  const char *off = http_query(r, "offset");
  uint64_t offset = 0;
  if (off) {
    char *end;
    long long v = strtoll(off, &end, 10);
    if (!*off || *end || v < 0) {
      sbx_fail_field(&err, "offset", "offset must be a byte offset >= 0");
      return http_reply_error(r, &err, NULL);
    }
    offset = (uint64_t)v;
  }
  enum MHD_Result ret;
  cleanup_json json_t *ex = route_exec_record(r, &ret);
  if (!ex)
    return ret;
  r->job.stream = stream && !strcmp(stream, "stderr");
  r->job.offset = offset;
  return post(r, LOOP_JOB_OUTPUT, output_done);
}
