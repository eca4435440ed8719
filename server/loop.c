/* loop.c - the loop thread: lws service, agent links, exec sessions.
 * See loop.h for the threading contract. */
#include "loop.h"

#include <errno.h>
#include <libwebsockets.h>
#include <pthread.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../common/util.h"
#include "../store/store.h"
#include "../vmm/agent_conn.h"
#include "server.h"
#include "ws.h"

#define HELLO_TIMEOUT_US (10 * LWS_US_PER_SEC)
#define CREDIT_WINDOW (256u * 1024) /* initial per-stream credit of an exec */

typedef struct alink alink;

typedef struct session {
  struct session *next;
  alink *lk;
  uint32_t id;
  char exec_id[32];
  loop_job *job;       /* the REST request waiting, NULL once answered or when adopted */
  uint64_t max_output; /* collect at most this much per stream (0 for adopted sessions) */
  exec_result res;
} session;

struct alink {
  alink *next;
  loop *l;
  char sandbox_id[32];
  agent_conn *conn;
  struct lws *wsi;
  bool ready, closing;
  uint32_t next_session;
  session *sessions;
  loop_job *waiting; /* LINK/EXEC/UNLINK jobs waiting for hello or for the close */
  lws_sorted_usec_list_t hello_timer;
};

struct loop {
  struct lws_context *ctx;
  struct lws_vhost *vh;
  pthread_t thread;
  pthread_mutex_t mu;
  loop_job *queue_head, *queue_tail; /* under mu */
  atomic_bool stop;
  alink *links;
};

/* ---------------------------------------------------------------- helpers */

static void job_finish(loop_job *job, int rc, const sbx_err *err) {
  job->rc = rc;
  if (rc < 0 && err)
    job->err = *err;
  if (job->done)
    job->done(job);
}

static void job_fail(loop_job *job, sbx_err_kind kind, const char *msg) {
  sbx_err e;
  sbx_fail(&e, kind, 0, "%s", msg);
  job_finish(job, -1, &e);
}

void loop_job_clear(loop_job *job) {
  sbx_chunks_free(&job->res.out);
  sbx_chunks_free(&job->res.err);
  json_decref(job->res.failure);
  job->res.failure = NULL;
}

static alink *link_find(loop *l, const char *sandbox_id) {
  for (alink *lk = l->links; lk; lk = lk->next)
    if (strcmp(lk->sandbox_id, sandbox_id) == 0)
      return lk;
  return NULL;
}

static session *session_find(alink *lk, uint32_t id) {
  for (session *s = lk->sessions; s; s = s->next)
    if (s->id == id)
      return s;
  return NULL;
}

static void session_unlink(session *s) {
  for (session **pp = &s->lk->sessions; *pp; pp = &(*pp)->next)
    if (*pp == s) {
      *pp = s->next;
      return;
    }
}

static void link_flush(alink *lk) {
  sbx_err err;
  if (agent_conn_flush(lk->conn, &err) < 0) {
    log_warn("sandbox=%s %s", lk->sandbox_id, err.msg);
    lk->closing = true;
    lws_set_timeout(lk->wsi, PENDING_TIMEOUT_KILLED_BY_PARENT, LWS_TO_KILL_ASYNC);
    return;
  }
  if (agent_conn_want_write(lk->conn))
    lws_callback_on_writable(lk->wsi);
}

/* Ask lws to close the link; link_closed() does the rest from the close callback. */
static void link_close(alink *lk) {
  if (lk->closing)
    return;
  lk->closing = true;
  lws_set_timeout(lk->wsi, PENDING_TIMEOUT_KILLED_BY_PARENT, LWS_TO_KILL_ASYNC);
}

/* ------------------------------------------------------- exec record updates */

static const char *end_state(const exec_result *r) {
  if (r->failure)
    return "failed";
  if (r->timed_out)
    return "timed_out";
  if (r->exited)
    return "exited";
  return "killed";
}

static void record_end(session *s) {
  store *st = store_thread();
  if (!st)
    return;
  char now[32];
  sbx_rfc3339(sbx_now_ms(), now, sizeof now);
  const exec_result *r = &s->res;
  json_t *f = json_pack("{s:s, s:s, s:I, s:I}", "state", end_state(r), "ended_at", now,
                        "stdout_bytes", (json_int_t)r->out_bytes, "stderr_bytes",
                        (json_int_t)r->err_bytes);
  if (r->started)
    json_object_set_new(f, "pid", json_integer(r->pid));
  if (r->failure)
    json_object_set(f, "failure", r->failure);
  if (r->exited) {
    json_object_set_new(f, "exit_code", json_integer(r->exit_code));
    json_object_set_new(f, "signal", r->signal ? json_integer(r->signal) : json_null());
  } else if (!r->failure) {
    json_object_set_new(f, "exit_code", json_integer(-1));
    json_object_set_new(f, "signal", json_integer(9));
  }
  sbx_err err;
  if (store_exec_update(st, s->exec_id, f, &err) < 0 && err.kind != SBX_E_EXEC_NOT_FOUND)
    log_error("exec=%s record end: %s", s->exec_id, err.msg);
  json_decref(f);
}

/* A session is over (exited, failed, or its link died): record it, answer
 * the waiting request if any, free it. */
static void session_end(session *s, const sbx_err *lost) {
  record_end(s);
  loop_job *job = s->job;
  if (job) {
    job->res = s->res; /* moves the buffers and the failure */
    memset(&s->res, 0, sizeof s->res);
    job_finish(job, lost ? -1 : 0, lost);
  }
  loop_job_clear(&(loop_job){.res = s->res});
  session_unlink(s);
  free(s);
}

/* ----------------------------------------------------------------- frames */

static void on_output(session *s, bool is_err, const uint8_t *p, size_t n) {
  exec_result *r = &s->res;
  sbx_chunks *c = is_err ? &r->err : &r->out;
  bool *trunc = is_err ? &r->err_truncated : &r->out_truncated;
  *(is_err ? &r->err_bytes : &r->out_bytes) += n;
  size_t keep = 0;
  if (c->total < s->max_output)
    keep = (size_t)((s->max_output - c->total) < n ? (s->max_output - c->total) : n);
  if (keep && sbx_chunks_append(c, p, keep) < 0)
    keep = 0; /* out of memory: flag as truncated rather than fail the exec */
  if (keep < n)
    *trunc = true;
  /* Collected output never blocks the program: give the credit straight back. */
  agent_conn_send_credit(s->lk->conn, s->id, is_err ? 0 : (uint32_t)n, is_err ? (uint32_t)n : 0);
}

static int on_exited(session *s, const uint8_t *payload) {
  json_error_t je;
  json_t *o = json_loads((const char *)payload, 0, &je);
  if (!json_is_object(o)) {
    json_decref(o);
    return -1;
  }
  exec_result *r = &s->res;
  r->exited = true;
  r->exit_code = (int)json_integer_value(json_object_get(o, "exit_code"));
  r->signal = (int)json_integer_value(json_object_get(o, "signal"));
  r->timed_out = json_is_true(json_object_get(o, "timed_out"));
  r->duration_ms = json_integer_value(json_object_get(o, "duration_ms"));
  json_decref(o);
  agent_conn_send(s->lk->conn, s->id, SBX_F_RELEASE, NULL, 0);
  session_end(s, NULL);
  return 0;
}

static int on_session_frame(alink *lk, const sbx_frame_hdr *h, const uint8_t *payload) {
  session *s = session_find(lk, h->session);
  if (!s) {
    log_debug("sandbox=%s frame %s for unknown session %u", lk->sandbox_id,
              sbx_proto_type_name(h->type), h->session);
    return 0;
  }
  switch (h->type) {
  case SBX_F_STARTED: {
    json_t *o = json_loads((const char *)payload, 0, NULL);
    s->res.started = true;
    s->res.pid = (int)json_integer_value(json_object_get(o, "pid"));
    json_decref(o);
    if (s->job && s->job->background) {
      /* The 202 reply needs the pid; the record is updated now as well. */
      store *st = store_thread();
      json_t *f = json_pack("{s:i}", "pid", s->res.pid);
      if (st)
        store_exec_update(st, s->exec_id, f, NULL);
      json_decref(f);
      s->job->res.pid = s->res.pid;
      s->job->res.started = true;
      loop_job *job = s->job;
      s->job = NULL;
      job_finish(job, 0, NULL);
    }
    return 0;
  }
  case SBX_F_STDOUT:
  case SBX_F_STDERR:
    on_output(s, h->type == SBX_F_STDERR, payload, h->len);
    return 0;
  case SBX_F_EXITED:
    return on_exited(s, payload);
  case SBX_F_FAILED:
    s->res.failure = json_loads((const char *)payload, 0, NULL);
    if (!json_is_object(s->res.failure)) {
      json_decref(s->res.failure);
      s->res.failure = json_pack("{s:s,s:s}", "kind", "other", "message", "unreadable failure");
    }
    agent_conn_send(lk->conn, s->id, SBX_F_RELEASE, NULL, 0);
    session_end(s, NULL);
    return 0;
  case SBX_F_STDIN_ERROR:
    log_debug("exec=%s stdin error: %.200s", s->exec_id, payload);
    return 0;
  case SBX_F_ERROR:
    log_warn("exec=%s agent refused a request: %.200s", s->exec_id, payload);
    return 0;
  default:
    log_warn("sandbox=%s unexpected frame %s from agent", lk->sandbox_id,
             sbx_proto_type_name(h->type));
    return -1;
  }
}

static void start_exec(alink *lk, loop_job *job);

/* Sessions the agent reports after a (re)connect: adopt them so their ends
 * are recorded; execs the database thinks run but the agent does not know
 * are marked killed. */
static void adopt_sessions(alink *lk, json_t *list) {
  store *st = store_thread();
  size_t i;
  json_t *it;
  json_array_foreach(list, i, it) {
    uint32_t id = (uint32_t)json_integer_value(json_object_get(it, "session"));
    const char *exec_id = json_string_value(json_object_get(it, "exec_id"));
    if (id >= lk->next_session)
      lk->next_session = id + 1;
    if (!exec_id || session_find(lk, id))
      continue;
    session *s = calloc(1, sizeof *s);
    if (!s)
      continue;
    s->lk = lk;
    s->id = id;
    snprintf(s->exec_id, sizeof s->exec_id, "%s", exec_id);
    s->res.pid = (int)json_integer_value(json_object_get(it, "pid"));
    s->res.started = true;
    s->next = lk->sessions;
    lk->sessions = s;
    agent_conn_send(lk->conn, id, SBX_F_ATTACH, NULL, 0);
    agent_conn_send_credit(lk->conn, id, CREDIT_WINDOW, CREDIT_WINDOW);
  }
  if (!st)
    return;
  json_t *running = NULL;
  char *next = NULL;
  if (store_exec_list(st, lk->sandbox_id, "running", 500, NULL, &running, &next, NULL) < 0)
    return;
  free(next);
  json_array_foreach(running, i, it) {
    const char *exec_id = json_string_value(json_object_get(it, "exec_id"));
    bool known = false;
    for (session *s = lk->sessions; s; s = s->next)
      known |= exec_id && strcmp(s->exec_id, exec_id) == 0;
    if (!known) {
      char now[32];
      sbx_rfc3339(sbx_now_ms(), now, sizeof now);
      json_t *f = json_pack("{s:s,s:s,s:i,s:i}", "state", "killed", "ended_at", now,
                            "exit_code", -1, "signal", 9);
      store_exec_update(st, exec_id, f, NULL);
      json_decref(f);
      log_info("exec=%s marked killed: its agent no longer runs it", exec_id);
    }
  }
  json_decref(running);
}

static int on_hello(alink *lk, const uint8_t *payload) {
  json_t *o = json_loads((const char *)payload, 0, NULL);
  if (!json_is_object(o) || json_integer_value(json_object_get(o, "version")) != SBX_PROTO_VERSION) {
    log_error("sandbox=%s agent hello unusable: %.200s", lk->sandbox_id, payload);
    json_decref(o);
    return -1;
  }
  json_t *reply = json_pack("{s:i}", "version", SBX_PROTO_VERSION);
  agent_conn_send_json(lk->conn, 0, SBX_F_HELLO, reply);
  json_decref(reply);
  adopt_sessions(lk, json_object_get(o, "sessions"));
  json_decref(o);
  lk->ready = true;
  lws_sul_cancel(&lk->hello_timer);
  /* Run what waited for the hello, in order. */
  loop_job *w = lk->waiting;
  lk->waiting = NULL;
  while (w) {
    loop_job *next = w->next;
    w->next = NULL;
    if (w->kind == LOOP_JOB_EXEC)
      start_exec(lk, w);
    else if (w->kind == LOOP_JOB_UNLINK) {
      w->next = lk->waiting; /* finished when the link is gone */
      lk->waiting = w;
      link_close(lk);
    } else
      job_finish(w, 0, NULL);
    w = next;
  }
  return 0;
}

static int on_frame(agent_conn *c, const sbx_frame_hdr *h, const uint8_t *payload, void *ud) {
  alink *lk = ud;
  (void)c;
  if (h->session == 0) {
    if (h->type == SBX_F_HELLO && !lk->ready)
      return on_hello(lk, payload);
    if (h->type == SBX_F_ERROR) {
      log_warn("sandbox=%s agent complains: %.200s", lk->sandbox_id, payload);
      return 0;
    }
    log_warn("sandbox=%s unexpected %s on session 0", lk->sandbox_id, sbx_proto_type_name(h->type));
    return -1;
  }
  if (!lk->ready)
    return -1;
  return on_session_frame(lk, h, payload);
}

/* ------------------------------------------------------------------- links */

static void hello_timeout(lws_sorted_usec_list_t *sul) {
  alink *lk = lws_container_of(sul, alink, hello_timer);
  if (!lk->ready) {
    log_error("sandbox=%s agent sent no hello in time", lk->sandbox_id);
    link_close(lk);
  }
}

/* The link's connection is gone (lws close callback): end its sessions and
 * everything that waited on it. */
static void link_closed(alink *lk) {
  loop *l = lk->l;
  lws_sul_cancel(&lk->hello_timer);
  sbx_err lost;
  sbx_fail(&lost, SBX_E_NOT_RUNNING, 0, "the sandbox stopped while the exec was running");
  while (lk->sessions)
    session_end(lk->sessions, &lost);
  loop_job *w = lk->waiting;
  while (w) {
    loop_job *next = w->next;
    w->next = NULL;
    if (w->kind == LOOP_JOB_UNLINK)
      job_finish(w, 0, NULL);
    else
      job_fail(w, SBX_E_NOT_RUNNING, "the sandbox's agent is not reachable");
    w = next;
  }
  for (alink **pp = &l->links; *pp; pp = &(*pp)->next)
    if (*pp == lk) {
      *pp = lk->next;
      break;
    }
  agent_conn_free(lk->conn);
  free(lk);
}

/* Find or open the link for a sandbox; NULL (job failed) if the agent is not reachable. */
static alink *link_get(loop *l, loop_job *job) {
  const char *id = json_string_value(json_object_get(job->sandbox, "id"));
  alink *lk = link_find(l, id);
  if (lk)
    return lk;
  sbx_sandbox_spec spec;
  server_sandbox_spec(job->sandbox, &spec);
  sbx_err err;
  int fd = g_server->driver->connect(&spec, &err);
  if (fd < 0) {
    err.kind = SBX_E_NOT_RUNNING;
    job_finish(job, -1, &err);
    return NULL;
  }
  lk = calloc(1, sizeof *lk);
  int pollfd = dup(fd); /* lws closes its own descriptor; agent_conn closes fd */
  if (!lk || pollfd < 0 || !(lk->conn = agent_conn_new(fd, on_frame, lk))) {
    close(fd);
    if (pollfd >= 0)
      close(pollfd);
    free(lk);
    job_fail(job, SBX_E_INTERNAL, "out of memory linking to the agent");
    return NULL;
  }
  lk->l = l;
  lk->next_session = 1;
  snprintf(lk->sandbox_id, sizeof lk->sandbox_id, "%s", id);
  lws_sock_file_fd_type d = {.filefd = pollfd};
  lk->wsi = lws_adopt_descriptor_vhost(l->vh, LWS_ADOPT_RAW_FILE_DESC, d, "sbx-agent", NULL);
  if (!lk->wsi) {
    agent_conn_free(lk->conn);
    free(lk);
    job_fail(job, SBX_E_INTERNAL, "cannot watch the agent connection");
    return NULL;
  }
  lws_set_opaque_user_data(lk->wsi, lk);
  lk->next = l->links;
  l->links = lk;
  lws_sul_schedule(l->ctx, 0, &lk->hello_timer, hello_timeout, HELLO_TIMEOUT_US);
  return lk;
}

static void wait_on(alink *lk, loop_job *job) {
  loop_job **pp = &lk->waiting;
  while (*pp)
    pp = &(*pp)->next;
  job->next = NULL;
  *pp = job;
}

static void start_exec(alink *lk, loop_job *job) {
  session *s = calloc(1, sizeof *s);
  json_t *spec = json_deep_copy(job->agent_spec);
  if (!s || !spec) {
    free(s);
    json_decref(spec);
    job_fail(job, SBX_E_INTERNAL, "out of memory starting the exec");
    return;
  }
  s->lk = lk;
  s->id = lk->next_session++;
  s->job = job;
  s->max_output = job->max_output;
  snprintf(s->exec_id, sizeof s->exec_id, "%s", job->exec_id);
  json_object_set_new(spec, "credit_stdout", json_integer(CREDIT_WINDOW));
  json_object_set_new(spec, "credit_stderr", json_integer(CREDIT_WINDOW));
  if (agent_conn_send_json(lk->conn, s->id, SBX_F_EXEC, spec) < 0) {
    json_decref(spec);
    free(s);
    job_fail(job, SBX_E_INVALID_REQUEST, "the exec request (args, env and stdin together) is over the 1 MiB the agent protocol carries");
    return;
  }
  json_decref(spec);
  s->next = lk->sessions;
  lk->sessions = s;
  link_flush(lk);
}

static void run_job(loop *l, loop_job *job) {
  if (job->kind == LOOP_JOB_WS) {
    ws_adopt(job->fd);
    job_finish(job, 0, NULL);
    return;
  }
  if (job->kind == LOOP_JOB_UNLINK) {
    alink *lk = link_find(l, json_string_value(json_object_get(job->sandbox, "id")));
    if (!lk) {
      job_finish(job, 0, NULL);
      return;
    }
    wait_on(lk, job);
    link_close(lk);
    return;
  }
  alink *lk = link_get(l, job);
  if (!lk)
    return;
  if (!lk->ready || lk->closing) {
    if (lk->closing) {
      job_fail(job, SBX_E_NOT_RUNNING, "the sandbox's agent connection is closing");
      return;
    }
    wait_on(lk, job);
    return;
  }
  if (job->kind == LOOP_JOB_EXEC)
    start_exec(lk, job);
  else
    job_finish(job, 0, NULL);
  link_flush(lk);
}

static void drain_queue(loop *l) {
  pthread_mutex_lock(&l->mu);
  loop_job *q = l->queue_head;
  l->queue_head = l->queue_tail = NULL;
  pthread_mutex_unlock(&l->mu);
  while (q) {
    loop_job *next = q->next;
    q->next = NULL;
    run_job(l, q);
    q = next;
  }
  for (alink *lk = l->links; lk; lk = lk->next)
    if (lk->conn && agent_conn_want_write(lk->conn))
      link_flush(lk);
}

/* --------------------------------------------------------------- callbacks */

static int agent_cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                    size_t len) {
  alink *lk = wsi ? lws_get_opaque_user_data(wsi) : NULL;
  switch (reason) {
  case LWS_CALLBACK_EVENT_WAIT_CANCELLED: {
    loop *l = lws_context_user(lws_get_context(wsi));
    if (l)
      drain_queue(l);
    return 0;
  }
  case LWS_CALLBACK_RAW_RX_FILE: {
    if (!lk || lk->closing)
      return 0;
    sbx_err err;
    if (agent_conn_read(lk->conn, &err) < 0) {
      log_info("sandbox=%s agent link closed: %s", lk->sandbox_id, err.msg);
      lk->closing = true;
      return -1;
    }
    link_flush(lk);
    return 0;
  }
  case LWS_CALLBACK_RAW_WRITEABLE_FILE:
    if (lk && !lk->closing)
      link_flush(lk);
    return 0;
  case LWS_CALLBACK_RAW_CLOSE_FILE:
    if (lk) {
      lws_set_opaque_user_data(wsi, NULL);
      link_closed(lk);
    }
    return 0;
  default:
    return 0;
  }
}

static const struct lws_protocols protocols[] = {
    {"sbx-agent", agent_cb, 0, 0, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

static void *loop_main(void *arg) {
  loop *l = arg;
  while (!atomic_load(&l->stop))
    if (lws_service(l->ctx, 0) < 0)
      break;
  return NULL;
}

static void lws_log_to_ours(int level, const char *line) {
  size_t n = strlen(line);
  while (n && line[n - 1] == '\n')
    n--;
  if (level & LLL_ERR)
    log_error("lws: %.*s", (int)n, line);
  else
    log_debug("lws: %.*s", (int)n, line);
}

int loop_start(loop **out, sbx_err *err) {
  loop *l = calloc(1, sizeof *l);
  if (!l)
    return sbx_fail_errno(err, ENOMEM, "loop");
  pthread_mutex_init(&l->mu, NULL);
  lws_set_log_level(LLL_ERR | (sbx_log_threshold >= SBX_LOG_DEBUG ? LLL_WARN : 0),
                    lws_log_to_ours);
  struct lws_context_creation_info info;
  memset(&info, 0, sizeof info);
  info.port = CONTEXT_PORT_NO_LISTEN_SERVER;
  info.protocols = protocols;
  info.user = l;
  info.options = LWS_SERVER_OPTION_DISABLE_IPV6;
  info.count_threads = 1;
  l->ctx = lws_create_context(&info);
  if (!l->ctx) {
    free(l);
    return sbx_fail(err, SBX_E_INTERNAL, 0, "cannot create the libwebsockets context");
  }
  l->vh = lws_get_vhost_by_name(l->ctx, "default");
  if (!l->vh) {
    lws_context_destroy(l->ctx);
    free(l);
    return sbx_fail(err, SBX_E_INTERNAL, 0, "libwebsockets has no default vhost");
  }
  int rc = pthread_create(&l->thread, NULL, loop_main, l);
  if (rc != 0) {
    lws_context_destroy(l->ctx);
    free(l);
    return sbx_fail_errno(err, rc, "start the loop thread");
  }
  *out = l;
  return 0;
}

void loop_post(loop *l, loop_job *job) {
  job->next = NULL;
  if (atomic_load(&l->stop)) {
    job_fail(job, SBX_E_CAPACITY, "the server is shutting down");
    return;
  }
  pthread_mutex_lock(&l->mu);
  if (l->queue_tail)
    l->queue_tail->next = job;
  else
    l->queue_head = job;
  l->queue_tail = job;
  pthread_mutex_unlock(&l->mu);
  lws_cancel_service(l->ctx);
}

typedef struct call_wait {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool done;
} call_wait;

static void call_done(loop_job *job) {
  call_wait *w = job->ud;
  pthread_mutex_lock(&w->mu);
  w->done = true;
  pthread_cond_signal(&w->cv);
  pthread_mutex_unlock(&w->mu);
}

int loop_call(loop *l, loop_job *job) {
  call_wait w = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false};
  job->done = call_done;
  job->ud = &w;
  loop_post(l, job);
  pthread_mutex_lock(&w.mu);
  while (!w.done)
    pthread_cond_wait(&w.cv, &w.mu);
  pthread_mutex_unlock(&w.mu);
  pthread_cond_destroy(&w.cv);
  pthread_mutex_destroy(&w.mu);
  return job->rc;
}

void loop_stop(loop *l) {
  if (!l)
    return;
  atomic_store(&l->stop, true);
  lws_cancel_service(l->ctx);
  pthread_join(l->thread, NULL);
  /* The thread is gone: this thread now owns the state.  Answer everyone. */
  sbx_err bye;
  sbx_fail(&bye, SBX_E_CAPACITY, 0, "the server is shutting down");
  for (alink *lk = l->links; lk; lk = lk->next) {
    for (session *s = lk->sessions; s; s = s->next)
      if (s->job) {
        loop_job *job = s->job;
        s->job = NULL;
        job_finish(job, -1, &bye);
      }
    for (loop_job *w = lk->waiting, *n; w; w = n) {
      n = w->next;
      job_finish(w, -1, &bye);
    }
    lk->waiting = NULL;
  }
  pthread_mutex_lock(&l->mu);
  loop_job *q = l->queue_head;
  l->queue_head = l->queue_tail = NULL;
  pthread_mutex_unlock(&l->mu);
  for (loop_job *n; q; q = n) {
    n = q->next;
    if (q->kind == LOOP_JOB_WS)
      close(q->fd);
    job_finish(q, -1, &bye);
  }
  /* Sessions without a waiting request keep running in their sandboxes. */
  for (alink *lk = l->links, *n; lk; lk = n) {
    n = lk->next;
    for (session *s = lk->sessions, *sn; s; s = sn) {
      sn = s->next;
      loop_job_clear(&(loop_job){.res = s->res});
      free(s);
    }
    lws_set_opaque_user_data(lk->wsi, NULL);
    agent_conn_free(lk->conn);
    free(lk);
  }
  l->links = NULL;
  lws_context_destroy(l->ctx);
  pthread_mutex_destroy(&l->mu);
  free(l);
}
