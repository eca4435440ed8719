/* loop.c - the loop thread: lws service, the job queue, agent links.
 * See loop.h for the threading contract, session.c for exec sessions and
 * ws.c for WebSocket clients. */
#include "loop.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../common/util.h"
#include "../store/store.h"
#include "loop_int.h"
#include "server.h"
#include "ws.h"

#define HELLO_TIMEOUT_US (10 * LWS_US_PER_SEC)
#define SYNC_RESEND_US (250 * LWS_US_PER_MS)
/* initial per-stream credit of an exec: two chunks in flight per stream.
 * With session.c's OWNER_WINDOW (1 MiB) the owner's lag stays within the
 * smallest retention (2 MiB), so the owner never loses a byte. */
#define CREDIT_WINDOW (2 * SBX_PROTO_CHUNK)

/* ---------------------------------------------------------------- helpers */

void job_finish(loop_job *job, int rc, const sbx_err *err) {
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
  free(job->out);
  job->out = NULL;
}

static alink *link_find(loop *l, const char *sandbox_id) {
  for (alink *lk = l->links; lk; lk = lk->next)
    if (strcmp(lk->sandbox_id, sandbox_id) == 0)
      return lk;
  return NULL;
}

static session *session_of(alink *lk, uint32_t id) {
  for (session *s = lk->sessions; s; s = s->next_link)
    if (s->id == id)
      return s;
  return NULL;
}

/* Ask lws to close the link; link_closed() does the rest from the close callback. */
static void link_close(alink *lk) {
  if (lk->closing)
    return;
  lk->closing = true;
  lws_set_timeout(lk->wsi, PENDING_TIMEOUT_KILLED_BY_PARENT, LWS_TO_KILL_ASYNC);
}

/* lws clears POLLOUT on a raw file *after* its writable callback returns,
 * so asking again from inside the callback is lost; ask from a timer. */
static void rewrite_cb(lws_sorted_usec_list_t *sul) {
  alink *lk = lws_container_of(sul, alink, rewrite);
  if (!lk->closing && agent_conn_want_write(lk->conn))
    lws_callback_on_writable(lk->wsi);
}

/* Write what is queued; when some is left, ask to be told when the fd takes
 * more: directly, or from a timer when called inside the writable callback. */
static void flush(alink *lk, bool in_writable) {
  if (lk->closing)
    return;
  sbx_err err;
  if (agent_conn_flush(lk->conn, &err) < 0) {
    log_warn("sandbox=%s %s", lk->sandbox_id, err.msg);
    link_close(lk);
    return;
  }
  if (!agent_conn_want_write(lk->conn))
    return;
  if (in_writable)
    lws_sul_schedule(lk->l->ctx, 0, &lk->rewrite, rewrite_cb, 1);
  else
    lws_callback_on_writable(lk->wsi);
}

void link_flush(alink *lk) { flush(lk, false); }

/* ------------------------------------------------------- exec record updates */

static const char *end_state(const session *s) {
  const exec_result *r = &s->res;
  if (r->failure)
    return "failed";
  if (r->timed_out)
    return "timed_out";
  if (r->exited && !s->killed)
    return "exited";
  return "killed";
}

void record_end(session *s) {
  store *st = store_thread();
  if (!st)
    return;
  char now[32];
  sbx_rfc3339(sbx_now_ms(), now, sizeof now);
  const exec_result *r = &s->res;
  json_t *f = json_pack("{s:s, s:s, s:I, s:I}", "state", end_state(s), "ended_at", now,
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

/* ------------------------------------------------------------------ frames */

static void send_exec(alink *lk, session *s) {
  json_t *spec = s->pending_spec;
  s->pending_spec = NULL;
  json_object_set_new(spec, "credit_stdout", json_integer(CREDIT_WINDOW));
  json_object_set_new(spec, "credit_stderr", json_integer(CREDIT_WINDOW));
  if (agent_conn_send_json(lk->conn, s->id, SBX_F_EXEC, spec) < 0) {
    json_decref(spec);
    s->res.failure = json_pack("{s:s,s:s,s:s}", "kind", "bad_args", "stage", "dispatch", "message",
                               "the exec request (args, env and stdin together) is over the 1 MiB "
                               "the agent protocol carries");
    session_fail(s); /* the agent never heard of it: it ends here, as a failure */
    return;
  }
  json_decref(spec);
  session_send_pending(s);
  link_flush(lk);
}

void link_exec(alink *lk, session *s, json_t *spec) {
  s->pending_spec = spec;
  if (lk->ready && !lk->closing)
    send_exec(lk, s);
}

/* Sessions the agent reports after a (re)connect: adopt them so their ends
 * are recorded and they can be attached to; execs the database thinks run
 * but the agent does not know are marked killed. */
static void adopt_sessions(alink *lk, json_t *list) {
  store *st = store_thread();
  size_t i;
  json_t *it;
  json_array_foreach(list, i, it) {
    uint32_t id = (uint32_t)json_integer_value(json_object_get(it, "session"));
    const char *exec_id = json_string_value(json_object_get(it, "exec_id"));
    if (id >= lk->next_session)
      lk->next_session = id + 1;
    if (!exec_id || session_of(lk, id) || session_by_exec(lk->l, exec_id))
      continue;
    session *s = session_new(lk->l, lk, id, exec_id, lk->sandbox_id);
    if (!s)
      continue;
    s->res.pid = (int)json_integer_value(json_object_get(it, "pid"));
    s->res.started = true;
    s->tty = json_is_true(json_object_get(it, "tty"));
    /* offsets go on from what the agent already sent (to the gateway that died) */
    s->ret.end[0] = s->res.out_bytes = (uint64_t)json_integer_value(json_object_get(it, "stdout_bytes"));
    s->ret.end[1] = s->res.err_bytes = (uint64_t)json_integer_value(json_object_get(it, "stderr_bytes"));
    s->ret.first = s->ret.next = s->ret.oldest[0] = s->ret.oldest[1] =
        1 + (uint64_t)json_integer_value(json_object_get(it, "frames"));
    agent_conn_send(lk->conn, id, SBX_F_ATTACH, NULL, 0);
    agent_conn_send_credit(lk->conn, id, CREDIT_WINDOW, CREDIT_WINDOW);
    log_info("exec=%s re-attached after a reconnect", exec_id);
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
    if (!exec_id || session_by_exec(lk->l, exec_id))
      continue;
    char now[32];
    sbx_rfc3339(sbx_now_ms(), now, sizeof now);
    json_t *f = json_pack("{s:s,s:s,s:i,s:i}", "state", "killed", "ended_at", now, "exit_code", -1,
                          "signal", 9);
    store_exec_update(st, exec_id, f, NULL);
    json_decref(f);
    log_info("exec=%s marked killed: its agent no longer runs it", exec_id);
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
  lws_sul_cancel(&lk->sync_timer);
  for (session *s = lk->sessions; s; s = s->next_link)
    if (s->pending_spec)
      send_exec(lk, s);
  loop_job *w = lk->waiting;
  lk->waiting = NULL;
  while (w) {
    loop_job *next = w->next;
    w->next = NULL;
    if (w->kind == LOOP_JOB_UNLINK) {
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
    if (h->type == SBX_F_HELLO) /* the answer to a repeated SYNC */
      return 0;
    if (h->type == SBX_F_ERROR) {
      log_warn("sandbox=%s agent complains: %.200s", lk->sandbox_id, payload);
      return 0;
    }
    log_warn("sandbox=%s unexpected %s on session 0", lk->sandbox_id, sbx_proto_type_name(h->type));
    return -1;
  }
  if (!lk->ready)
    return -1;
  session *s = session_of(lk, h->session);
  if (!s) {
    log_debug("sandbox=%s frame %s for unknown session %u", lk->sandbox_id,
              sbx_proto_type_name(h->type), h->session);
    return 0;
  }
  return session_frame(s, h, payload);
}

/* A big output payload is read straight into a retention record. */
static uint8_t *on_sink(agent_conn *c, const sbx_frame_hdr *h, void *ud, void **block) {
  alink *lk = ud;
  (void)c;
  session *s = lk->ready ? session_of(lk, h->session) : NULL;
  return s ? session_sink(s, h, block) : NULL;
}

/* ------------------------------------------------------------------- links */

/* SYNC, and again every SYNC_RESEND_US until the hello: on a virtio-serial
 * port the first one can land before the agent has reopened it (and is
 * dropped then); a unix socket answers the first. */
static void sync_send(lws_sorted_usec_list_t *sul) {
  alink *lk = lws_container_of(sul, alink, sync_timer);
  if (lk->ready || lk->closing)
    return;
  json_t *j = json_pack("{s:s}", "nonce", lk->nonce);
  if (!j || agent_conn_send_json(lk->conn, 0, SBX_F_SYNC, j) < 0) {
    json_decref(j);
    log_error("sandbox=%s out of memory sending SYNC", lk->sandbox_id);
    link_close(lk);
    return;
  }
  json_decref(j);
  link_flush(lk);
  lws_sul_schedule(lk->l->ctx, 0, &lk->sync_timer, sync_send, SYNC_RESEND_US);
}

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
  lws_sul_cancel(&lk->sync_timer);
  lws_sul_cancel(&lk->rewrite);
  while (lk->sessions) {
    if (atomic_load(&l->stop)) { /* sbxd is stopping, the programs are not */
      lk->sessions->lk = NULL;
      lk->sessions = lk->sessions->next_link;
    } else
      session_lost(lk->sessions); /* unlinks itself */
  }
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

alink *link_get(loop *l, json_t *sandbox, sbx_err *err) {
  const char *id = json_string_value(json_object_get(sandbox, "id"));
  alink *lk = link_find(l, id);
  if (lk)
    return lk->closing ? (sbx_fail(err, SBX_E_NOT_RUNNING, 0, "the agent link is closing"), NULL)
                       : lk;
  sbx_sandbox_spec spec;
  server_sandbox_spec(sandbox, &spec);
  int fd = server_driver(sandbox)->connect(&spec, err);
  if (fd < 0) {
    if (err)
      err->kind = SBX_E_NOT_RUNNING;
    return NULL;
  }
  lk = calloc(1, sizeof *lk);
  int pollfd = dup(fd); /* lws closes its own descriptor; agent_conn closes fd */
  if (!lk || pollfd < 0 || !(lk->conn = agent_conn_new(fd, on_frame, lk))) {
    close(fd);
    if (pollfd >= 0)
      close(pollfd);
    free(lk);
    sbx_fail(err, SBX_E_INTERNAL, ENOMEM, "out of memory linking to the agent");
    return NULL;
  }
  agent_conn_set_sink(lk->conn, on_sink);
  lk->l = l;
  lk->next_session = 1;
  snprintf(lk->sandbox_id, sizeof lk->sandbox_id, "%s", id);
  lws_sock_file_fd_type d = {.filefd = pollfd};
  lk->wsi = lws_adopt_descriptor_vhost(l->vh, LWS_ADOPT_RAW_FILE_DESC, d, "sbx-agent", NULL);
  if (!lk->wsi) {
    agent_conn_free(lk->conn);
    free(lk);
    sbx_fail(err, SBX_E_INTERNAL, 0, "cannot watch the agent connection");
    return NULL;
  }
  lws_set_opaque_user_data(lk->wsi, lk);
  lk->next = l->links;
  l->links = lk;
  /* the agent answers SYNC with a hello carrying the nonce; anything
   * before that hello in the stream (another connection's leftovers on a
   * port) is skipped */
  char a[24], b[24];
  sbx_new_id("", a, sizeof a);
  sbx_new_id("", b, sizeof b);
  snprintf(lk->nonce, sizeof lk->nonce, "%s%s", a, b);
  if (agent_conn_sync(lk->conn, lk->nonce) < 0) {
    link_close(lk);
    sbx_fail(err, SBX_E_INTERNAL, ENOMEM, "out of memory linking to the agent");
    return NULL;
  }
  sync_send(&lk->sync_timer);
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

/* ----------------------------------------------------------------- jobs */

bool link_full(const alink *lk) {
  int n = 0;
  for (const session *s = lk->sessions; s; s = s->next_link)
    n += s->live;
  return n >= g_server->cfg.max_execs;
}

static void start_job_exec(loop *l, loop_job *job) {
  sbx_err err;
  alink *lk = link_get(l, job->sandbox, &err);
  if (!lk) {
    job_finish(job, -1, &err);
    return;
  }
  if (link_full(lk)) {
    job_fail(job, SBX_E_CAPACITY, "this sandbox runs its maximum of execs (--max-execs)");
    return;
  }
  json_t *spec = json_deep_copy(job->agent_spec);
  session *s = spec ? session_new(l, lk, lk->next_session++, job->exec_id,
                                  json_string_value(json_object_get(job->sandbox, "id")))
                    : NULL;
  if (!s) {
    json_decref(spec);
    job_fail(job, SBX_E_INTERNAL, "out of memory starting the exec");
    return;
  }
  s->job = job;
  s->max_output = job->max_output;
  s->tty = json_is_true(json_object_get(spec, "tty"));
  link_exec(lk, s, spec);
}

static void wait_timeout(lws_sorted_usec_list_t *sul) {
  loop_job *job = lws_container_of(sul, loop_job, timer);
  session *s = job->ud2;
  for (loop_job **pp = &s->waiters; *pp; pp = &(*pp)->next_waiter)
    if (*pp == job) {
      *pp = job->next_waiter;
      break;
    }
  job->timed_out_wait = true;
  job_finish(job, 0, NULL);
}

/* Jobs about one exec: find its session (rc -1 exec_not_found if the loop
 * does not hold it; the caller then asks the database). */
static void run_exec_job(loop *l, loop_job *job) {
  session *s = session_by_exec(l, job->exec_id);
  if (!s) {
    job_fail(job, SBX_E_EXEC_NOT_FOUND, "the exec is not held in memory");
    return;
  }
  if (job->kind == LOOP_JOB_OUTPUT) {
    const retention *r = &s->ret;
    int st = job->stream;
    size_t avail = r->end[st] - retention_start(r, st);
    job->out = malloc(avail ? avail : 1);
    if (!job->out) {
      job_fail(job, SBX_E_INTERNAL, "out of memory copying output");
      return;
    }
    job->out_len = retention_copy(r, st, job->offset, job->out, avail, &job->out_from);
    job->out_next = job->out_from + job->out_len;
    job->out_complete = s->ended;
    job_finish(job, 0, NULL);
    return;
  }
  if (job->kind == LOOP_JOB_COUNTS) {
    job->res.out_bytes = s->res.out_bytes;
    job->res.err_bytes = s->res.err_bytes;
    job_finish(job, 0, NULL);
    return;
  }
  if (job->kind == LOOP_JOB_WAIT) {
    if (s->ended) {
      job_finish(job, 0, NULL);
      return;
    }
    job->ud2 = s;
    job->next_waiter = s->waiters;
    s->waiters = job;
    if (job->timeout_ms >= 0)
      lws_sul_schedule(l->ctx, 0, &job->timer, wait_timeout,
                       (lws_usec_t)job->timeout_ms * LWS_US_PER_MS);
    return;
  }
  if (!s->live) {
    job_fail(job, SBX_E_NOT_RUNNING, "the exec has ended");
    return;
  }
  int rc = 0;
  char p[64];
  switch (job->kind) {
  case LOOP_JOB_SIGNAL:
    s->killed |= job->kill;
    rc = session_send(s, SBX_F_SIGNAL, p, (size_t)snprintf(p, sizeof p, "{\"signal\":%d}", job->signal));
    break;
  case LOOP_JOB_STDIN:
    if (s->stdin_inflight + job->len > STDIN_AGENT_MAX) {
      job_fail(job, SBX_E_CAPACITY, "the program is not reading its stdin fast enough; retry");
      return;
    }
    if (job->len)
      rc = session_send(s, SBX_F_STDIN, job->data, job->len);
    if (rc == 0 && job->eof)
      rc = session_send(s, SBX_F_STDIN_CLOSE, NULL, 0);
    break;
  case LOOP_JOB_RESIZE:
    if (!s->tty) {
      job_fail(job, SBX_E_NOT_RUNNING, "resize needs an exec started with \"tty\": true");
      return;
    }
    rc = session_send(s, SBX_F_RESIZE, p,
                      (size_t)snprintf(p, sizeof p, "{\"rows\":%d,\"cols\":%d}", job->rows, job->cols));
    break;
  default:
    break;
  }
  if (rc < 0)
    job_fail(job, SBX_E_NOT_RUNNING, "the exec's sandbox is not reachable");
  else
    job_finish(job, 0, NULL);
}

static void run_job(loop *l, loop_job *job) {
  switch (job->kind) {
  case LOOP_JOB_WS:
    ws_adopt(l, job->fd);
    job_finish(job, 0, NULL);
    return;
  case LOOP_JOB_UNLINK: {
    alink *lk = link_find(l, json_string_value(json_object_get(job->sandbox, "id")));
    if (!lk) {
      job_finish(job, 0, NULL);
      return;
    }
    wait_on(lk, job);
    link_close(lk);
    return;
  }
  case LOOP_JOB_LINK: {
    sbx_err err;
    alink *lk = link_get(l, job->sandbox, &err);
    if (!lk)
      job_finish(job, -1, &err);
    else if (lk->ready)
      job_finish(job, 0, NULL);
    else
      wait_on(lk, job);
    return;
  }
  case LOOP_JOB_EXEC:
    start_job_exec(l, job);
    return;
  case LOOP_JOB_RELEASE_WAITS:
    /* shutting down: a wait is not work to finish; answer it now */
    for (session *s = l->sessions; s; s = s->next_all) {
      for (loop_job *w = s->waiters, *n; w; w = n) {
        n = w->next_waiter;
        lws_sul_cancel(&w->timer);
        job_finish(w, 0, NULL);
      }
      s->waiters = NULL;
    }
    job_finish(job, 0, NULL);
    return;
  default:
    run_exec_job(l, job);
    return;
  }
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
    if (lk)
      flush(lk, true);
    return 0;
  case LWS_CALLBACK_RAW_CLOSE_FILE:
    if (lk) {
      lws_set_opaque_user_data(wsi, NULL);
      link_closed(lk);
    }
    return 0;
  case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION:
  case LWS_CALLBACK_ESTABLISHED:
    return -1; /* a WebSocket client asking for "sbx-agent": never */
  default:
    return 0;
  }
}

static struct lws_protocols protocols[WS_PROTOCOL_COUNT + 2];

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
  l->retain_bytes = g_server->cfg.retain_bytes;
  l->retain_after_exit_ms = g_server->cfg.retain_after_exit_ms;
  lws_set_log_level(LLL_ERR | (sbx_log_threshold >= SBX_LOG_DEBUG ? LLL_WARN : 0),
                    lws_log_to_ours);
  /* the WebSocket protocols first: a client that asks for none gets sbx.v1.json */
  for (int i = 0; i < WS_PROTOCOL_COUNT; i++)
    protocols[i] = ws_protocols[i];
  protocols[WS_PROTOCOL_COUNT] = (struct lws_protocols){"sbx-agent", agent_cb, 0, 0, 0, NULL, 0};
  static lws_retry_bo_t retry;
  retry.secs_since_valid_ping = (uint16_t)g_server->cfg.ws_ping_s;
  retry.secs_since_valid_hangup = (uint16_t)(g_server->cfg.ws_ping_s * 2);
  struct lws_context_creation_info info;
  memset(&info, 0, sizeof info);
  info.port = CONTEXT_PORT_NO_LISTEN_SERVER;
  info.protocols = protocols;
  info.user = l;
  info.options = LWS_SERVER_OPTION_DISABLE_IPV6 | LWS_SERVER_OPTION_VALIDATE_UTF8;
  info.count_threads = 1;
  info.retry_and_idle_policy = &retry;
  info.timeout_secs = 10; /* handshake */
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
  pthread_mutex_lock(&l->mu);
  if (atomic_load(&l->stop)) {
    pthread_mutex_unlock(&l->mu);
    job_fail(job, SBX_E_CAPACITY, "the server is shutting down");
    return;
  }
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
  pthread_mutex_lock(&l->mu);
  atomic_store(&l->stop, true);
  pthread_mutex_unlock(&l->mu);
  lws_cancel_service(l->ctx);
  pthread_join(l->thread, NULL);
  /* The thread is gone: this thread now owns the state.  Answer everyone. */
  sbx_err bye;
  sbx_fail(&bye, SBX_E_CAPACITY, 0, "the server is shutting down");
  for (session *s = l->sessions; s; s = s->next_all) {
    if (s->job) {
      loop_job *job = s->job;
      s->job = NULL;
      job->res.started = s->res.started; /* it ran: its record is settled at the next start */
      job_finish(job, -1, &bye);
    }
    for (loop_job *w = s->waiters, *n; w; w = n) {
      n = w->next_waiter;
      lws_sul_cancel(&w->timer);
      job_finish(w, 0, NULL);
    }
    s->waiters = NULL;
  }
  for (alink *lk = l->links; lk; lk = lk->next) {
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
  /* Running programs keep running in their sandboxes; the agents keep what
   * they have not delivered for the next sbxd (except one-shot execs, whose
   * clients are gone: the agent kills those when the link closes). */
  while (l->sessions) /* before the context: their timers live in it */
    session_free(l->sessions);
  lws_context_destroy(l->ctx); /* closes WebSockets and links through their callbacks */
  for (alink *lk = l->links, *n; lk; lk = n) {
    n = lk->next;
    agent_conn_free(lk->conn);
    free(lk);
  }
  pthread_mutex_destroy(&l->mu);
  free(l);
}
