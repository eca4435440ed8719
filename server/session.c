/* session.c - exec sessions in the loop: agent frames in, retention, credit,
 * REST answers and WebSocket events out.
 *
 * Every output byte goes into the session's retention store (seq-ordered
 * records, the most recent `retain_bytes` per stream); REST one-shot execs
 * also collect up to max_output_bytes for their reply.  WebSocket clients pull
 * from retention at their own pace (ws.c).  Credit goes back to the agent at
 * once, except while the WebSocket that started the exec lags more than
 * OWNER_WINDOW behind: then the program blocks, and the owner never loses a
 * byte because retention is larger than that window plus the agent's credit.
 */
#include <stdlib.h>
#include <string.h>

#include "../common/util.h"
#include "../store/store.h"
#include "loop_int.h"
#include "server.h"

#define OWNER_WINDOW (1u << 20)
/* Credit goes back in pieces of at least half the agent's window (loop.c's
 * CREDIT_WINDOW, two chunks).  Handing back each frame's worth at once let a
 * window that was once cut into small frames stay cut for good: the agent
 * sends as soon as it has any credit, so every small grant came back as a
 * small frame (4 KiB frames for the rest of a 2 GiB stream).  A stream whose
 * agent credit runs out has the whole window owed, so this never stalls. */
#define CREDIT_GRANT_MIN SBX_PROTO_CHUNK

typedef struct pending_frame {
  struct pending_frame *next;
  uint8_t type;
  size_t n;
  uint8_t data[];
} pending_frame;

/* ---------------------------------------------------------------- retention */

void retention_init(retention *r, uint64_t limit) {
  memset(r, 0, sizeof *r);
  r->limit = limit;
  r->first = r->next = 1; /* seq starts at 1 */
  r->oldest[0] = r->oldest[1] = 1;
}

void retention_free(retention *r) {
  for (uint64_t q = r->first; q < r->next; q++)
    free(r->ring[q & (r->cap - 1)]);
  free(r->ring);
  memset(r, 0, sizeof *r);
}

static out_rec **slot(const retention *r, uint64_t seq) { return &r->ring[seq & (r->cap - 1)]; }

const out_rec *retention_get(const retention *r, uint64_t seq) {
  if (seq < r->first || seq >= r->next)
    return NULL;
  return *slot(r, seq);
}

static int grow(retention *r) {
  size_t cap = r->cap ? r->cap * 2 : 64;
  out_rec **ring = calloc(cap, sizeof *ring);
  if (!ring)
    return -1;
  for (uint64_t q = r->first; q < r->next; q++)
    ring[q & (cap - 1)] = *slot(r, q);
  free(r->ring);
  r->ring = ring;
  r->cap = cap;
  return 0;
}

static void evict(retention *r, int stream) {
  while (r->kept[stream] > r->limit) {
    uint64_t q = r->oldest[stream] > r->first ? r->oldest[stream] : r->first;
    for (; q < r->next; q++) {
      out_rec *x = *slot(r, q);
      if (x && x->stream == stream)
        break;
    }
    if (q >= r->next)
      return;
    out_rec *x = *slot(r, q);
    r->kept[stream] -= x->len;
    free(x);
    *slot(r, q) = NULL;
    r->oldest[stream] = q + 1;
    while (r->first < r->next && !*slot(r, r->first))
      r->first++;
  }
}

out_rec *retention_rec_new(size_t n) { return malloc(sizeof(out_rec) + n + 1); }

int retention_adopt(retention *r, int stream, out_rec *x, size_t n) {
  if (r->next - r->first >= r->cap && grow(r) < 0) {
    free(x);
    return -1;
  }
  x->seq = r->next++;
  x->offset = r->end[stream];
  x->len = (uint32_t)n;
  x->stream = (uint8_t)stream;
  *slot(r, x->seq) = x;
  r->end[stream] += n;
  r->kept[stream] += n;
  evict(r, stream);
  return 0;
}

int retention_append(retention *r, int stream, const uint8_t *p, size_t n) {
  out_rec *x = malloc(sizeof *x + n);
  if (!x)
    return -1;
  memcpy(x->data, p, n);
  return retention_adopt(r, stream, x, n);
}

uint64_t retention_start(const retention *r, int stream) {
  return r->end[stream] - r->kept[stream];
}

size_t retention_copy(const retention *r, int stream, uint64_t off, uint8_t *out, size_t max,
                      uint64_t *from) {
  uint64_t start = retention_start(r, stream);
  if (off < start)
    off = start;
  if (off > r->end[stream])
    off = r->end[stream];
  *from = off;
  size_t got = 0;
  for (uint64_t q = r->first; q < r->next && got < max; q++) {
    const out_rec *x = *slot(r, q);
    if (!x || x->stream != stream || x->offset + x->len <= off)
      continue;
    uint64_t skip = off > x->offset ? off - x->offset : 0;
    size_t take = x->len - (size_t)skip;
    if (take > max - got)
      take = max - got;
    memcpy(out + got, x->data + skip, take);
    got += take;
    off += take;
  }
  return got;
}

/* ----------------------------------------------------------------- sessions */

uint8_t *session_sink(session *s, const sbx_frame_hdr *h, void **block) {
  (void)s;
  out_rec *x = retention_rec_new(h->len);
  *block = x;
  return x ? x->data : NULL;
}

session *session_new(loop *l, alink *lk, uint32_t id, const char *exec_id, const char *sandbox_id) {
  session *s = calloc(1, sizeof *s);
  if (!s)
    return NULL;
  s->l = l;
  s->lk = lk;
  s->id = id;
  s->live = true;
  snprintf(s->exec_id, sizeof s->exec_id, "%s", exec_id);
  snprintf(s->sandbox_id, sizeof s->sandbox_id, "%s", sandbox_id);
  retention_init(&s->ret, l->retain_bytes);
  s->next_all = l->sessions;
  l->sessions = s;
  if (lk) {
    s->next_link = lk->sessions;
    lk->sessions = s;
  }
  return s;
}

session *session_by_exec(loop *l, const char *exec_id) {
  for (session *s = l->sessions; s; s = s->next_all)
    if (strcmp(s->exec_id, exec_id) == 0)
      return s;
  return NULL;
}

static void unlink_from_link(session *s) {
  if (!s->lk)
    return;
  for (session **pp = &s->lk->sessions; *pp; pp = &(*pp)->next_link)
    if (*pp == s) {
      *pp = s->next_link;
      break;
    }
  s->lk = NULL;
}

void session_free(session *s) {
  unlink_from_link(s);
  for (session **pp = &s->l->sessions; *pp; pp = &(*pp)->next_all)
    if (*pp == s) {
      *pp = s->next_all;
      break;
    }
  while (s->clients)
    ws_client_detach(s->clients);
  lws_sul_cancel(&s->linger);
  retention_free(&s->ret);
  sbx_chunks_free(&s->res.out);
  sbx_chunks_free(&s->res.err);
  json_decref(s->res.failure);
  json_decref(s->failure);
  json_decref(s->pending_spec);
  for (pending_frame *f = s->pending, *n; f; f = n) {
    n = f->next;
    free(f);
  }
  free(s);
}

int session_send(session *s, uint8_t type, const void *p, size_t n) {
  if (!s->lk || s->lk->closing)
    return -1;
  if (type == SBX_F_STDIN)
    s->stdin_inflight += n;
  if (s->pending_spec) { /* the agent has not heard of the session yet */
    pending_frame *f = malloc(sizeof *f + n), **pp = &s->pending;
    if (!f)
      return -1;
    f->next = NULL;
    f->type = type;
    f->n = n;
    if (n)
      memcpy(f->data, p, n);
    while (*pp)
      pp = &(*pp)->next;
    *pp = f;
    return 0;
  }
  int rc = agent_conn_send(s->lk->conn, s->id, type, p, n);
  link_flush(s->lk);
  return rc;
}

void session_send_pending(session *s) {
  for (pending_frame *f = s->pending, *n; f; f = n) {
    n = f->next;
    session_send(s, f->type, f->data, f->n);
    free(f);
  }
  s->pending = NULL;
}

static void grant(session *s, uint64_t out, uint64_t err) {
  if ((out || err) && s->lk && !s->lk->closing)
    agent_conn_send_credit(s->lk->conn, s->id, (uint32_t)out, (uint32_t)err);
}

void session_credit_check(session *s) {
  if (s->owed[0] < CREDIT_GRANT_MIN && s->owed[1] < CREDIT_GRANT_MIN)
    return;
  if (s->owner && ws_client_lag(s->owner) >= OWNER_WINDOW)
    return;
  grant(s, s->owed[0], s->owed[1]);
  s->owed[0] = s->owed[1] = 0;
  if (s->lk)
    link_flush(s->lk);
}

static void wake_clients(session *s) {
  for (ws_client *c = s->clients; c; c = ws_client_next(c))
    ws_client_wake(c);
}

static void on_output(session *s, int stream, const uint8_t *p, size_t n) {
  exec_result *r = &s->res;
  *(stream ? &r->err_bytes : &r->out_bytes) += n;
  if (s->job && !s->job->background) {
    sbx_chunks *c = stream ? &r->err : &r->out;
    bool *trunc = stream ? &r->err_truncated : &r->out_truncated;
    size_t keep = 0;
    if (c->total < s->max_output)
      keep = (size_t)((s->max_output - c->total) < n ? (s->max_output - c->total) : n);
    if (keep && sbx_chunks_append(c, p, keep) < 0)
      keep = 0; /* out of memory: flag as truncated rather than fail the exec */
    if (keep < n)
      *trunc = true;
  }
  /* a payload the agent link read in place is already a record */
  out_rec *x = s->lk ? agent_conn_take_block(s->lk->conn) : NULL;
  if (x && x->data != p) { /* cannot happen: the block is this payload's */
    free(x);
    x = NULL;
  }
  if ((x ? retention_adopt(&s->ret, stream, x, n) : retention_append(&s->ret, stream, p, n)) < 0)
    log_warn("exec=%s out of memory retaining output", s->exec_id);
  s->owed[stream] += n;
  session_credit_check(s);
  wake_clients(s);
}

static void linger_expired(lws_sorted_usec_list_t *sul) {
  session *s = lws_container_of(sul, session, linger);
  session_free(s);
}

/* The session is over: record it, answer REST, tell viewers, linger. */
static void session_end(session *s, const sbx_err *lost) {
  s->ended = true;
  s->live = false;
  record_end(s);
  unlink_from_link(s);
  if (s->res.failure && !s->failure)
    s->failure = json_incref(s->res.failure);
  loop_job *job = s->job;
  s->job = NULL;
  if (job) {
    job->res = s->res; /* moves the collected buffers and res's failure reference */
    memset(&s->res.out, 0, sizeof s->res.out);
    memset(&s->res.err, 0, sizeof s->res.err);
    s->res.failure = NULL;
    job_finish(job, lost ? -1 : 0, lost);
  }
  for (loop_job *w = s->waiters, *n; w; w = n) {
    n = w->next_waiter;
    lws_sul_cancel(&w->timer);
    job_finish(w, 0, NULL);
  }
  s->waiters = NULL;
  wake_clients(s);
  lws_sul_schedule(s->l->ctx, 0, &s->linger, linger_expired,
                   (lws_usec_t)s->l->retain_after_exit_ms * LWS_US_PER_MS);
}

void session_fail(session *s) { session_end(s, NULL); }

void session_lost(session *s) {
  if (s->ended)
    return;
  sbx_err lost;
  sbx_fail(&lost, SBX_E_NOT_RUNNING, 0, "the sandbox stopped while the exec was running");
  session_end(s, &lost);
}

static json_t *parse_obj(const uint8_t *payload) {
  json_t *o = json_loads((const char *)payload, 0, NULL);
  if (!json_is_object(o)) {
    json_decref(o);
    return NULL;
  }
  return o;
}

int session_frame(session *s, const sbx_frame_hdr *h, const uint8_t *payload) {
  switch (h->type) {
  case SBX_F_STARTED: {
    json_t *o = parse_obj(payload);
    if (!o)
      return -1;
    s->res.started = true;
    s->res.pid = (int)json_integer_value(json_object_get(o, "pid"));
    json_decref(o);
    store *st = store_thread();
    if (st && !(s->job && !s->job->background)) { /* one-shot REST: the end records it */
      json_t *f = json_pack("{s:i}", "pid", s->res.pid);
      store_exec_update(st, s->exec_id, f, NULL);
      json_decref(f);
    }
    if (s->job && s->job->background) {
      loop_job *job = s->job;
      s->job = NULL;
      job->res.pid = s->res.pid;
      job->res.started = true;
      job_finish(job, 0, NULL);
    }
    wake_clients(s);
    return 0;
  }
  case SBX_F_STDOUT:
  case SBX_F_STDERR:
    on_output(s, h->type == SBX_F_STDERR, payload, h->len);
    return 0;
  case SBX_F_EXITED: {
    json_t *o = parse_obj(payload);
    if (!o)
      return -1;
    exec_result *r = &s->res;
    r->exited = true;
    r->exit_code = (int)json_integer_value(json_object_get(o, "exit_code"));
    r->signal = (int)json_integer_value(json_object_get(o, "signal"));
    r->timed_out = json_is_true(json_object_get(o, "timed_out"));
    r->duration_ms = json_integer_value(json_object_get(o, "duration_ms"));
    s->killed |= json_is_true(json_object_get(o, "disconnect_killed"));
    json_decref(o);
    session_send(s, SBX_F_RELEASE, NULL, 0);
    session_end(s, NULL);
    return 0;
  }
  case SBX_F_FAILED:
    s->res.failure = parse_obj(payload);
    if (!s->res.failure)
      s->res.failure = json_pack("{s:s,s:s}", "kind", "other", "message", "unreadable failure");
    session_send(s, SBX_F_RELEASE, NULL, 0);
    session_end(s, NULL);
    return 0;
  case SBX_F_STDIN_ACK:
    if (h->len != 4)
      return -1;
    {
      uint64_t n = (uint64_t)payload[0] << 24 | (uint64_t)payload[1] << 16 |
                   (uint64_t)payload[2] << 8 | payload[3];
      s->stdin_inflight = n > s->stdin_inflight ? 0 : s->stdin_inflight - n;
      if (s->stdin_inflight < STDIN_LOW)
        for (ws_client *c = s->clients; c; c = ws_client_next(c))
          ws_client_rx_resume(c);
    }
    return 0;
  case SBX_F_STDIN_ERROR: {
    s->stdin_inflight = 0; /* the agent dropped its buffer */
    for (ws_client *c = s->clients; c; c = ws_client_next(c))
      ws_client_rx_resume(c);
    json_t *f = parse_obj(payload);
    for (ws_client *c = s->clients; c; c = ws_client_next(c))
      ws_client_stdin_error(c, f);
    json_decref(f);
    return 0;
  }
  case SBX_F_ERROR:
    log_warn("exec=%s agent refused a request: %.200s", s->exec_id, payload);
    return 0;
  default:
    log_warn("exec=%s unexpected frame %s from the agent", s->exec_id,
             sbx_proto_type_name(h->type));
    return -1;
  }
}
