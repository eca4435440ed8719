/* ws.c - WebSocket streaming (SPEC "WebSocket streaming"), on the loop thread.
 *
 * The listener hands each /ws connection to the loop, which adopts it into
 * libwebsockets.  A client either starts an exec (first message "start",
 * /v1/sandboxes/{ref}/exec/ws) and owns it, or attaches to one
 * (/v1/execs/{id}/ws).  Clients pull output from the session's retention at
 * their own pace, one frame (binary clients: up to 1 MiB of whole records,
 * written in place with one writev) per writable callback, so memory per
 * client stays constant; see session.c for how the owner's pace throttles the
 * program.
 */
#include "ws.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <string.h>
#include <strings.h>
#include <sys/uio.h>
#include <unistd.h>

#include "../common/utf8.h"
#include "../common/util.h"
#include "../routes/request.h"
#include "../store/store.h"
#include "auth.h"
#include "http.h"
#include "loop_int.h"
#include "server.h"

#define WS_MAX_MESSAGE (1u << 20)
/* the most lws hands send() at once, also when it drains what a partial
 * send left over: with 0 it is rx_buffer_size (4 KiB), and a 256 KiB output
 * frame the socket took only part of then went out 4 KiB per poll round */
#define WS_TX_PACKET (4u << 20)

typedef struct ws_msg {
  struct ws_msg *next;
  size_t len;
  char text[];
} ws_msg;

struct ws_client {
  ws_client *next; /* in s->clients */
  struct lws *wsi;
  loop *l;
  session *s;
  bool binary;      /* sbx.v1.binary */
  bool b64;         /* JSON mode with "encoding":"base64" */
  bool owner;
  bool want_start;  /* /exec/ws: waiting for the start message */
  char ref[200];    /* sandbox ref of /exec/ws */
  uint64_t cursor;  /* next seq to look at */
  uint64_t sent[2]; /* next offset of each stream to deliver */
  uint8_t hold[2][4];
  size_t hold_len[2];
  bool started_sent, end_sent, done_sent;
  ws_msg *q_head, *q_tail; /* queued JSON events (stdin_error, error) */
  char *rx;
  size_t rx_len;
  int close_code;
  char close_reason[124];
  /* attach to an exec that is no longer in memory: what the record says */
  json_t *record;
  auth_who who;
  bool rx_paused; /* not read while the program's stdin is full */
};

ws_client *ws_client_next(const ws_client *c) { return c->next; }

void ws_client_rx_resume(ws_client *c) {
  if (c->rx_paused && c->wsi) {
    c->rx_paused = false;
    lws_rx_flow_control(c->wsi, 1);
  }
}

/* After sending stdin: stop reading this client while too much is in flight. */
static void stdin_pace(ws_client *c) {
  if (c->s && c->s->stdin_inflight >= STDIN_HIGH && !c->rx_paused) {
    c->rx_paused = true;
    lws_rx_flow_control(c->wsi, 0);
  }
}

void ws_client_wake(ws_client *c) {
  if (c->wsi)
    lws_callback_on_writable(c->wsi);
}

uint64_t ws_client_lag(const ws_client *c) {
  const retention *r = &c->s->ret;
  uint64_t lag = 0;
  for (int i = 0; i < 2; i++)
    lag += r->end[i] > c->sent[i] ? r->end[i] - c->sent[i] : 0;
  return lag;
}

static void queue_json(ws_client *c, json_t *o) {
  char *s = json_dumps(o, JSON_COMPACT);
  json_decref(o);
  if (!s)
    return;
  size_t n = strlen(s);
  ws_msg *m = malloc(sizeof *m + n + 1);
  if (m) {
    m->next = NULL;
    m->len = n;
    memcpy(m->text, s, n + 1);
    if (c->q_tail)
      c->q_tail->next = m;
    else
      c->q_head = m;
    c->q_tail = m;
  }
  free(s);
  ws_client_wake(c);
}

void ws_client_stdin_error(ws_client *c, json_t *failure) {
  queue_json(c, json_pack("{s:s,s:O*}", "type", "stdin_error", "failure", failure));
}

static void close_with(ws_client *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void close_with(ws_client *c, int code, const char *fmt, ...) {
  if (c->close_code)
    return;
  c->close_code = code;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(c->close_reason, sizeof c->close_reason, fmt, ap);
  va_end(ap);
  ws_client_wake(c);
}

static bool ws_allowed(ws_client *c, sbx_scope need, json_t *sandbox);

static void attach(ws_client *c, session *s, bool owner) {
  c->s = s;
  c->owner = owner;
  c->next = s->clients;
  s->clients = c;
  c->cursor = s->ret.first;
  if (owner)
    s->owner = c;
  ws_client_wake(c);
}

void ws_client_detach(ws_client *c) {
  session *s = c->s;
  if (!s)
    return;
  for (ws_client **pp = &s->clients; *pp; pp = &(*pp)->next)
    if (*pp == c) {
      *pp = c->next;
      break;
    }
  if (s->owner == c) {
    s->owner = NULL;
    session_credit_check(s); /* nobody to wait for any more */
  }
  c->s = NULL;
  c->next = NULL;
}

/* ------------------------------------------------------------------ output */

static int write_text(ws_client *c, const char *text, size_t n) {
  uint8_t *buf = malloc(LWS_PRE + n);
  if (!buf)
    return -1;
  memcpy(buf + LWS_PRE, text, n);
  int w = lws_write(c->wsi, buf + LWS_PRE, n, LWS_WRITE_TEXT);
  free(buf);
  return w < (int)n ? -1 : 0;
}

static int write_json(ws_client *c, json_t *o) {
  char *s = json_dumps(o, JSON_COMPACT);
  json_decref(o);
  if (!s)
    return -1;
  int rc = write_text(c, s, strlen(s));
  free(s);
  return rc;
}

static const char *stream_name(int stream) { return stream ? "stderr" : "stdout"; }

/* One output frame from a record (maybe partial, after an offset); returns 1
 * if a frame was written, 0 if none was needed, -1 on error. */
static int write_record(ws_client *c, const out_rec *x) {
  int st = x->stream;
  uint64_t skip = c->sent[st] - x->offset;
  const uint8_t *p = x->data + skip;
  size_t n = x->len - (size_t)skip;
  uint64_t off = x->offset + skip;
  c->sent[st] = x->offset + x->len;
  if (c->binary && skip == 0) {
    /* the whole record: frame it in its own headroom (clients are served one
     * at a time on this thread, and lws copies whatever it cannot send now) */
    out_rec *w = (out_rec *)x;
    uint8_t *f = w->head + LWS_PRE;
    f[0] = (uint8_t)(st + 1);
    for (int i = 0; i < 8; i++)
      f[1 + i] = (uint8_t)(off >> (56 - 8 * i));
    int wr = lws_write(c->wsi, f, 9 + n, LWS_WRITE_BINARY);
    return wr < (int)(9 + n) ? -1 : 1;
  }
  if (c->binary) {
    uint8_t *buf = malloc(LWS_PRE + 9 + n);
    if (!buf)
      return -1;
    uint8_t *f = buf + LWS_PRE;
    f[0] = (uint8_t)(st + 1);
    for (int i = 0; i < 8; i++)
      f[1 + i] = (uint8_t)(off >> (56 - 8 * i));
    memcpy(f + 9, p, n);
    int w = lws_write(c->wsi, f, 9 + n, LWS_WRITE_BINARY);
    free(buf);
    return w < (int)(9 + n) ? -1 : 1;
  }
  if (c->b64) {
    size_t elen;
    char *e = sbx_b64_encode(p, n, &elen);
    if (!e)
      return -1;
    int rc = write_json(c, json_pack("{s:s,s:I,s:I,s:s%}", "type", stream_name(st), "seq",
                                     (json_int_t)x->seq, "offset", (json_int_t)off, "data_b64", e,
                                     elen));
    free(e);
    return rc < 0 ? -1 : 1;
  }
  /* utf8: a character split across records is held back (<= 3 bytes) */
  size_t hl = c->hold_len[st], total = hl + n;
  uint8_t *in = malloc(total ? total : 1);
  char *out = malloc(3 * total + 1);
  if (!in || !out) {
    free(in);
    free(out);
    return -1;
  }
  memcpy(in, c->hold[st], hl);
  memcpy(in + hl, p, n);
  size_t olen;
  size_t used = sbx_utf8_sanitize(in, total, false, out, &olen);
  c->hold_len[st] = total - used;
  memcpy(c->hold[st], in + used, total - used);
  int rc = 0;
  if (olen)
    rc = write_json(c, json_pack("{s:s,s:I,s:I,s:s%}", "type", stream_name(st), "seq",
                                 (json_int_t)x->seq, "offset", (json_int_t)(off - hl), "data",
                                 out, olen)) < 0 ? -1 : 1;
  free(in);
  free(out);
  return rc;
}

/* How much one writev() of output frames may carry: TCP on loopback moves
 * 1 MiB sends far cheaper per byte than 256 KiB ones (fewer wake-ups of the
 * reader), and more than this mostly ends in a partial send. */
#define WS_BATCH_BYTES (1u << 20)
#define WS_BATCH_MAX 16

/* Frame a whole record in its own headroom: our 9-byte prefix, and before it
 * the WebSocket header (FIN, binary, unmasked as a server sends).  Returns
 * where the frame starts; *len gets its size. */
static uint8_t *frame_in_place(out_rec *x, size_t *len) {
  uint8_t *f = x->head + LWS_PRE;
  f[0] = (uint8_t)(x->stream + 1);
  for (int i = 0; i < 8; i++)
    f[1 + i] = (uint8_t)(x->offset >> (56 - 8 * i));
  uint64_t n = 9 + (uint64_t)x->len;
  uint8_t *h;
  if (n < 126) {
    h = f - 2;
    h[1] = (uint8_t)n;
  } else if (n < 65536) {
    h = f - 4;
    h[1] = 126;
    h[2] = (uint8_t)(n >> 8);
    h[3] = (uint8_t)n;
  } else {
    h = f - 10;
    h[1] = 127;
    for (int i = 0; i < 8; i++)
      h[2 + i] = (uint8_t)(n >> (56 - 8 * i));
  }
  h[0] = 0x82;
  *len = (size_t)(f - h) + (size_t)n;
  return h;
}

/* A binary client with nothing buffered in lws: the whole records from the
 * cursor on (as many as fit WS_BATCH_BYTES), framed in place and written with
 * one writev() straight to the socket, so several records cost one send and
 * no copy.  What the socket does not take of the last record begun goes to
 * lws as raw bytes, which it sends before anything else of its own (pings,
 * close); records not begun wait for the next writable callback.  Returns 1
 * (wrote, or the socket was full), -1 on error. */
static int write_batch(ws_client *c, const retention *r) {
  struct iovec iov[WS_BATCH_MAX];
  const out_rec *recs[WS_BATCH_MAX];
  size_t k = 0, total = 0;
  uint64_t next[2] = {c->sent[0], c->sent[1]};
  for (uint64_t q = c->cursor; q < r->next && k < WS_BATCH_MAX && total < WS_BATCH_BYTES; q++) {
    const out_rec *x = retention_get(r, q);
    if (!x || x->offset != next[x->stream])
      break;
    size_t len;
    iov[k].iov_base = frame_in_place((out_rec *)x, &len);
    iov[k].iov_len = len;
    recs[k++] = x;
    total += len;
    next[x->stream] += x->len;
  }
  ssize_t n;
  do
    n = writev(lws_get_socket_fd(c->wsi), iov, (int)k);
  while (n < 0 && errno == EINTR);
  if (n < 0)
    return errno == EAGAIN ? 1 : -1;
  size_t left = (size_t)n;
  for (size_t i = 0; i < k && left > 0; i++) {
    const out_rec *x = recs[i];
    c->cursor = x->seq + 1;
    c->sent[x->stream] = x->offset + x->len;
    if (left >= iov[i].iov_len) {
      left -= iov[i].iov_len;
      continue;
    }
    size_t rest = iov[i].iov_len - left;
    if (lws_write(c->wsi, (uint8_t *)iov[i].iov_base + left, rest, LWS_WRITE_RAW) < (int)rest)
      return -1;
    break;
  }
  return 1;
}

static json_t *end_event(const exec_result *r, json_t *failure) {
  if (failure)
    return json_pack("{s:s,s:O}", "type", "failed", "failure", failure);
  if (r->exited)
    return json_pack("{s:s,s:i,s:o}", "type", "exited", "exit_code", r->exit_code, "signal",
                     r->signal ? json_integer(r->signal) : json_null());
  return json_pack("{s:s,s:i,s:i}", "type", "exited", "exit_code", -1, "signal", 9);
}

/* The terminal events of an ended exec: pending held bytes, the timeout or
 * loss error, exited/failed, done; then close 1000.  Returns 1 if it wrote. */
static int write_end(ws_client *c, const exec_result *r, json_t *failure, bool lost) {
  for (int st = 0; st < 2 && !c->binary && !c->b64; st++)
    if (c->hold_len[st]) {
      /* the program ended inside a character: what is held becomes U+FFFD */
      char out[16];
      size_t olen;
      uint64_t off = c->sent[st] - c->hold_len[st];
      sbx_utf8_sanitize(c->hold[st], c->hold_len[st], true, out, &olen);
      c->hold_len[st] = 0;
      return write_json(c, json_pack("{s:s,s:I,s:I,s:s%}", "type", stream_name(st), "seq",
                                     (json_int_t)(c->s ? c->s->ret.next - 1 : 0), "offset",
                                     (json_int_t)off, "data", out, olen)) < 0 ? -1 : 1;
    }
  if (!c->end_sent) {
    c->end_sent = true;
    if (r->timed_out || lost) {
      /* the error event first, then exited, as SPEC orders them */
      const char *id = c->s ? c->s->exec_id : "";
      json_t *e = r->timed_out
          ? json_pack("{s:s,s:{s:s,s:s,s:s}}", "type", "error", "error", "kind", "exec_timeout",
                      "message", "the exec timed out and its process group was killed",
                      "exec_id", id)
          : json_pack("{s:s,s:{s:s,s:s,s:s}}", "type", "error", "error", "kind",
                      "sandbox_not_running", "message",
                      "the sandbox stopped while the exec was running", "exec_id", id);
      queue_json(c, end_event(r, failure));
      return write_json(c, e) < 0 ? -1 : 1;
    }
    return write_json(c, end_event(r, failure)) < 0 ? -1 : 1;
  }
  if (!c->done_sent) {
    c->done_sent = true;
    close_with(c, LWS_CLOSE_STATUS_NORMAL, "done");
    return write_json(c, json_pack("{s:s}", "type", "done")) < 0 ? -1 : 1;
  }
  return 0;
}

/* An attach to an exec only the database remembers: started, gaps, end. */
static int write_from_record(ws_client *c) {
  json_t *rec = c->record;
  if (!c->started_sent) {
    c->started_sent = true;
    json_t *pid = json_object_get(rec, "pid");
    if (json_is_integer(pid))
      return write_json(c, json_pack("{s:s,s:s,s:O}", "type", "started", "exec_id",
                                     json_string_value(json_object_get(rec, "exec_id")), "pid",
                                     pid)) < 0 ? -1 : 1;
  }
  static const char *keys[2] = {"stdout_bytes", "stderr_bytes"};
  for (int st = 0; st < 2; st++) {
    uint64_t total = (uint64_t)json_integer_value(json_object_get(rec, keys[st]));
    if (c->sent[st] < total) {
      json_t *gap = json_pack("{s:s,s:s,s:I,s:I}", "type", "gap", "stream", stream_name(st),
                              "from", (json_int_t)c->sent[st], "to", (json_int_t)total);
      c->sent[st] = total;
      return write_json(c, gap) < 0 ? -1 : 1;
    }
  }
  exec_result r = {0};
  json_t *failure = json_object_get(rec, "failure");
  const char *state = json_string_value(json_object_get(rec, "state"));
  r.exited = state && (!strcmp(state, "exited") || !strcmp(state, "timed_out"));
  r.timed_out = state && !strcmp(state, "timed_out");
  r.exit_code = (int)json_integer_value(json_object_get(rec, "exit_code"));
  r.signal = (int)json_integer_value(json_object_get(rec, "signal"));
  return write_end(c, &r, json_is_object(failure) ? failure : NULL, false);
}

static int write_next(ws_client *c) {
  if (c->q_head && (c->started_sent || !c->s || c->s->failure)) {
    ws_msg *m = c->q_head;
    c->q_head = m->next;
    if (!c->q_head)
      c->q_tail = NULL;
    int rc = write_text(c, m->text, m->len);
    free(m);
    return rc < 0 ? -1 : 1;
  }
  if (c->record)
    return write_from_record(c);
  session *s = c->s;
  if (!s)
    return 0;
  if (!c->started_sent && s->res.started) {
    c->started_sent = true;
    return write_json(c, json_pack("{s:s,s:s,s:i}", "type", "started", "exec_id", s->exec_id,
                                   "pid", s->res.pid)) < 0 ? -1 : 1;
  }
  if (!c->started_sent && !s->ended)
    return 0;
  const retention *r = &s->ret;
  if (c->cursor < r->first)
    c->cursor = r->first;
  while (c->cursor < r->next) {
    const out_rec *x = retention_get(r, c->cursor);
    if (!x || x->offset + x->len <= c->sent[x->stream]) {
      c->cursor++;
      continue;
    }
    if (x->offset > c->sent[x->stream]) {
      /* fell behind retention: say what is missing, then go on */
      json_t *gap = json_pack("{s:s,s:s,s:I,s:I}", "type", "gap", "stream",
                              stream_name(x->stream), "from", (json_int_t)c->sent[x->stream],
                              "to", (json_int_t)x->offset);
      c->sent[x->stream] = x->offset;
      c->hold_len[x->stream] = 0;
      return write_json(c, gap) < 0 ? -1 : 1;
    }
    int rc;
    /* (writing around lws needs a plain socket: no TLS layer to bypass) */
    if (c->binary && x->offset == c->sent[x->stream] && !lws_partial_buffered(c->wsi) &&
        !lws_is_ssl(c->wsi)) {
      rc = write_batch(c, r);
    } else {
      c->cursor++;
      rc = write_record(c, x);
    }
    if (c->owner)
      session_credit_check(s);
    if (rc != 0)
      return rc;
  }
  if (s->ended)
    return write_end(c, &s->res, s->failure, !s->res.exited && !s->failure);
  return 0;
}

/* ------------------------------------------------------------------- input */

static void decrefp(json_t **j) { json_decref(*j); }
#define cleanup_json __attribute__((cleanup(decrefp)))

static bool session_running(ws_client *c, const char *what) {
  if (c->s && c->s->live)
    return true;
  if (!strcmp(what, "stdin")) {
    ws_client_stdin_error(c, json_pack("{s:s,s:s}", "kind", "other", "message",
                                       "the exec is not running"));
    return false;
  }
  queue_json(c, json_pack("{s:s,s:{s:s,s:s}}", "type", "error", "error", "kind",
                          "sandbox_not_running", "message", "the exec is not running"));
  return false;
}

static void start_exec(ws_client *c, json_t *msg) {
  store *st = store_thread();
  cleanup_json json_t *sb = NULL;
  sbx_err err;
  if (!st || store_sandbox_get(st, c->ref, &sb, &err) < 0) {
    close_with(c, 4404, "no sandbox '%.80s'", c->ref);
    return;
  }
  if (!ws_allowed(c, SCOPE_EXEC, sb))
    return;
  if (strcmp(json_string_value(json_object_get(sb, "state")), "running") != 0) {
    close_with(c, 4409, "sandbox '%.80s' is not running", c->ref);
    return;
  }
  const char *shell = json_string_value(json_object_get(sb, "shell"));
  exec_request req;
  if (exec_request_parse(msg, false, shell ? shell : "/bin/sh", true, &req, &err) < 0) {
    close_with(c, 1008, "%s%s%.100s", err.field[0] ? err.field : "", err.field[0] ? ": " : "",
               err.msg);
    return;
  }
  char exec_id[32];
  sbx_new_id("ex_", exec_id, sizeof exec_id);
  json_t *spec = exec_request_agent_spec(&req, sb, exec_id);
  json_object_set_new(spec, "stdin_pipe", json_true());
  json_object_set_new(spec, "kill_on_disconnect", json_boolean(!req.detach));
  c->b64 = req.encoding == SBX_ENC_BASE64;
  bool tty = req.tty, detach = req.detach;
  exec_request_clear(&req);
  char now[32];
  sbx_rfc3339(sbx_now_ms(), now, sizeof now);
  const char *sandbox_id = json_string_value(json_object_get(sb, "id"));
  cleanup_json json_t *rec = json_pack(
      "{s:s,s:s,s:O,s:O,s:O,s:O,s:b,s:s,s:s,s:i,s:i}", "exec_id", exec_id, "sandbox_id",
      sandbox_id, "cmd", json_object_get(spec, "cmd"), "args", json_object_get(spec, "args"),
      "cwd", json_object_get(spec, "cwd"), "user", json_object_get(spec, "user") ?: json_null(),
      "tty", tty, "state", "running", "started_at", now, "stdout_bytes", 0, "stderr_bytes", 0);
  if (!rec || store_exec_insert(st, rec, &err) < 0) {
    json_decref(spec);
    close_with(c, 1011, "cannot record the exec: %.90s", err.msg);
    return;
  }
  alink *lk = link_get(c->l, sb, &err);
  if (lk && link_full(lk)) {
    json_decref(spec);
    json_t *f = json_pack("{s:s,s:s}", "state", "failed", "ended_at", now);
    store_exec_update(st, exec_id, f, NULL);
    json_decref(f);
    close_with(c, 1013, "this sandbox runs its maximum of execs; try again later");
    return;
  }
  session *s = lk ? session_new(c->l, lk, lk->next_session++, exec_id, sandbox_id) : NULL;
  if (!s) {
    json_decref(spec);
    json_t *f = json_pack("{s:s,s:s}", "state", "failed", "ended_at", now);
    store_exec_update(st, exec_id, f, NULL);
    json_decref(f);
    close_with(c, 4409, "sandbox '%.80s' is not reachable", c->ref);
    return;
  }
  s->tty = tty;
  s->kill_on_owner_close = !detach;
  c->want_start = false;
  attach(c, s, true);
  link_exec(lk, s, spec);
}

static void on_control(ws_client *c, json_t *msg) {
  const char *type = json_string_value(json_object_get(msg, "type"));
  if (!type) {
    close_with(c, 1008, "a message needs a string \"type\"");
    return;
  }
  if (c->want_start) {
    if (strcmp(type, "start") != 0)
      close_with(c, 1008, "the first message must be {\"type\":\"start\",...}");
    else
      start_exec(c, msg);
    return;
  }
  session *s = c->s;
  if (!ws_allowed(c, SCOPE_EXEC, NULL)) /* labels were checked at attach */
    return;
  if (!strcmp(type, "stdin")) {
    json_t *d = json_object_get(msg, "data"), *b = json_object_get(msg, "data_b64");
    if (json_is_string(d) == json_is_string(b)) {
      close_with(c, 1008, "stdin needs exactly one of \"data\" or \"data_b64\"");
      return;
    }
    size_t n = d ? json_string_length(d) : 0;
    uint8_t *bytes = d ? malloc(n ? n : 1)
                       : sbx_b64_decode(json_string_value(b), json_string_length(b), &n);
    if (!bytes) {
      close_with(c, 1008, "stdin data_b64 is not valid base64");
      return;
    }
    if (d) /* the text may hold NUL (\u0000): copy by length */
      memcpy(bytes, json_string_value(d), n);
    if (session_running(c, "stdin")) {
      session_send(s, SBX_F_STDIN, bytes, n);
      stdin_pace(c);
    }
    free(bytes);
  } else if (!strcmp(type, "stdin_close")) {
    if (session_running(c, "stdin"))
      session_send(s, SBX_F_STDIN_CLOSE, NULL, 0);
  } else if (!strcmp(type, "signal") || !strcmp(type, "kill")) {
    bool kill = !strcmp(type, "kill");
    int sig = kill ? 9 : sbx_signal_parse(json_object_get(msg, "signal"));
    if (sig < 0) {
      close_with(c, 1008, "unknown signal");
      return;
    }
    if (session_running(c, "signal")) {
      s->killed |= kill;
      json_t *o = json_pack("{s:i}", "signal", sig);
      char *p = json_dumps(o, JSON_COMPACT);
      session_send(s, SBX_F_SIGNAL, p, strlen(p));
      free(p);
      json_decref(o);
    }
  } else if (!strcmp(type, "resize")) {
    json_t *r = json_object_get(msg, "rows"), *k = json_object_get(msg, "cols");
    json_int_t rows = json_integer_value(r), cols = json_integer_value(k);
    if (!json_is_integer(r) || !json_is_integer(k) || rows < 1 || rows > 1000 || cols < 1 ||
        cols > 1000) {
      close_with(c, 1008, "resize needs integer rows and cols from 1 to 1000");
      return;
    }
    if (!session_running(c, "resize"))
      return;
    if (!s->tty) {
      queue_json(c, json_pack("{s:s,s:{s:s,s:s}}", "type", "error", "error", "kind",
                              "invalid_request", "message", "resize needs a tty exec"));
      return;
    }
    char p[64];
    int n = snprintf(p, sizeof p, "{\"rows\":%d,\"cols\":%d}", (int)rows, (int)cols);
    session_send(s, SBX_F_RESIZE, p, (size_t)n);
  } else if (!strcmp(type, "start")) {
    close_with(c, 1008, "this socket already has an exec");
  } else {
    close_with(c, 1008, "unknown message type '%.60s'", type);
  }
}

static void on_message(ws_client *c, bool is_binary) {
  if (is_binary) {
    if (!c->binary || c->rx_len < 1 || c->rx[0] != 0) {
      close_with(c, LWS_CLOSE_STATUS_UNACCEPTABLE_OPCODE,
                 c->binary ? "binary frames from the client must be [0][stdin bytes]"
                           : "binary frames need the sbx.v1.binary subprotocol");
      return;
    }
    if (c->want_start) {
      close_with(c, 1008, "the first message must be {\"type\":\"start\",...}");
      return;
    }
    if (ws_allowed(c, SCOPE_EXEC, NULL) && session_running(c, "stdin")) {
      session_send(c->s, SBX_F_STDIN, c->rx + 1, c->rx_len - 1);
      stdin_pace(c);
    }
    return;
  }
  json_error_t je;
  cleanup_json json_t *msg = json_loadb(c->rx, c->rx_len, JSON_REJECT_DUPLICATES, &je);
  if (!json_is_object(msg)) {
    close_with(c, 1008, "messages must be JSON objects (%.80s)", msg ? "not an object" : je.text);
    return;
  }
  on_control(c, msg);
}

/* ------------------------------------------------------------- connections */

static void setup_route(ws_client *c);

/* The key a WebSocket client offers: a subprotocol "sbx.token.<key>" (what a
 * browser can send), else an Authorization: Bearer header.  The token
 * subprotocol is never selected, so it is never echoed. */
static bool offered_key(struct lws *wsi, char *key, size_t keysz) {
  char protos[1024];
  if (lws_hdr_copy(wsi, protos, sizeof protos, WSI_TOKEN_PROTOCOL) > 0) {
    char *save = NULL;
    for (char *t = strtok_r(protos, ", ", &save); t; t = strtok_r(NULL, ", ", &save))
      if (!strncmp(t, "sbx.token.", 10)) {
        snprintf(key, keysz, "%s", t + 10);
        return true;
      }
  }
  char auth[512];
  if (lws_hdr_copy(wsi, auth, sizeof auth, WSI_TOKEN_HTTP_AUTHORIZATION) > 0) {
    const char *k = auth_bearer(auth);
    if (k) {
      snprintf(key, keysz, "%s", k);
      return true;
    }
  }
  return false;
}

static bool peer_is_loopback(struct lws *wsi) {
  char ip[64] = "";
  lws_get_peer_simple(wsi, ip, sizeof ip);
  return !strncmp(ip, "127.", 4) || !strcmp(ip, "::1") || !strncmp(ip, "::ffff:127.", 11);
}

/* Who is this, and may they reach this sandbox at `need`?  Closes the socket
 * (4401/4403) and returns false if not. */
static bool ws_allowed(ws_client *c, sbx_scope need, json_t *sandbox) {
  sbx_err err;
  if (auth_allow(&c->who, need, sandbox ? json_object_get(sandbox, "labels") : NULL, &err) < 0) {
    close_with(c, 4403, "%.110s", err.msg);
    return false;
  }
  return true;
}

static void setup(ws_client *c) {
  char key[256];
  sbx_err err;
  if (!auth_enabled() && !g_server->cfg.insecure && !peer_is_loopback(c->wsi)) {
    close_with(c, 4403, "no API keys on this server: loopback clients only");
    return;
  }
  if (auth_check(offered_key(c->wsi, key, sizeof key) ? key : NULL, &c->who, &err) < 0) {
    close_with(c, 4401, "%.110s", err.msg);
    return;
  }
  if (auth_rate(&c->who, &err) < 0) {
    close_with(c, 4429, "%.110s", err.msg);
    return;
  }
  setup_route(c);
}

static void setup_route(ws_client *c) {
  char uri[512];
  if (lws_hdr_copy(c->wsi, uri, sizeof uri, WSI_TOKEN_GET_URI) <= 0) {
    close_with(c, 1008, "no request path");
    return;
  }
  char ref[200], tail[16];
  int n = 0;
  if (sscanf(uri, "/v1/sandboxes/%199[^/]/exec/%15s%n", ref, tail, &n) == 2 &&
      !strcmp(tail, "ws") && uri[n] == '\0') {
    snprintf(c->ref, sizeof c->ref, "%s", ref);
    c->want_start = true;
    return;
  }
  if (sscanf(uri, "/v1/execs/%199[^/]/%15s%n", ref, tail, &n) != 2 || strcmp(tail, "ws") ||
      uri[n] != '\0') {
    close_with(c, 4404, "no WebSocket route %.100s", uri);
    return;
  }
  char arg[64];
  uint64_t off[2] = {0, 0};
  const char *names[2] = {"offset=", "stderr_offset="};
  for (int i = 0; i < 2; i++) {
    const char *val = lws_get_urlarg_by_name(c->wsi, names[i], arg, sizeof arg);
    if (!val) /* otherwise val points into arg, past "name=" */
      continue;
    char *end;
    long long v = strtoll(val, &end, 10);
    if (!*val || *end || v < 0) {
      close_with(c, 1008, "%.20s must be a byte offset >= 0", names[i]);
      return;
    }
    off[i] = (uint64_t)v;
  }
  c->sent[0] = off[0];
  c->sent[1] = off[1];
  store *st = store_thread();
  sbx_err err;
  if (!st || store_exec_get(st, ref, &c->record, &err) < 0) {
    close_with(c, 4404, "no exec '%.80s'", ref);
    return;
  }
  if (c->who.labels) {
    json_t *sb = NULL;
    bool ok = store_sandbox_get(st, json_string_value(json_object_get(c->record, "sandbox_id")),
                                &sb, NULL) == 0 &&
              ws_allowed(c, SCOPE_READ, sb);
    json_decref(sb);
    if (!ok) {
      if (!c->close_code)
        close_with(c, 4403, "this key does not reach that exec");
      return;
    }
  } else if (!ws_allowed(c, SCOPE_READ, NULL)) {
    return;
  }
  session *s = session_by_exec(c->l, ref);
  if (s) {
    json_decref(c->record); /* live: the session has everything */
    c->record = NULL;
    attach(c, s, false);
    return;
  }
  if (!strcmp(json_string_value(json_object_get(c->record, "state")), "running")) {
    /* the record says running but no agent holds it (e.g. after a restart
     * that could not re-attach): say so rather than hang */
    json_decref(c->record);
    c->record = NULL;
    close_with(c, 4409, "exec '%.80s' is not reachable", ref);
    return;
  }
  ws_client_wake(c);
}

static void client_free(ws_client *c) {
  session *s = c->s;
  if (s && s->owner == c && s->kill_on_owner_close && s->live) {
    /* the starting client left: kill the whole process group (SPEC) */
    static const char kill9[] = "{\"signal\":9}";
    s->killed = true;
    session_send(s, SBX_F_SIGNAL, kill9, sizeof kill9 - 1);
  }
  ws_client_detach(c);
  for (ws_msg *m = c->q_head, *n; m; m = n) {
    n = m->next;
    free(m);
  }
  json_decref(c->record);
  auth_who_clear(&c->who);
  free(c->rx);
  free(c);
}

/* Browsers send Origin; others do not.  The same rule as REST (http.c). */
static bool origin_allowed(struct lws *wsi) {
  char origin[256], host[256];
  if (lws_hdr_copy(wsi, origin, sizeof origin, WSI_TOKEN_ORIGIN) <= 0)
    return true;
  if (lws_hdr_copy(wsi, host, sizeof host, WSI_TOKEN_HOST) <= 0)
    host[0] = '\0';
  return http_origin_allowed(origin, host[0] ? host : NULL);
}

/* X-Request-Id for replies on the WebSocket side: the client's if it is
 * sane (the same rule as REST), else a new one. */
static void request_id(struct lws *wsi, char *out, size_t outsz) {
  char in[80];
  int n = lws_hdr_custom_copy(wsi, in, sizeof in, "x-request-id:", 13);
  bool ok = n > 0 && n <= 72;
  for (int i = 0; ok && i < n; i++)
    ok = isalnum((unsigned char)in[i]) || strchr("-_.:", in[i]);
  if (ok)
    snprintf(out, outsz, "%s", in);
  else
    sbx_new_id("req_", out, outsz);
}

static int add_request_id(struct lws *wsi, uint8_t **p, uint8_t *end) { /* for the 101 */
  char id[80];
  request_id(wsi, id, sizeof id);
  return lws_add_http_header_by_name(wsi, (const uint8_t *)"x-request-id:", (const uint8_t *)id,
                                     (int)strlen(id), p, end);
}

/* Answer an HTTP request on the WebSocket side with the SPEC's error shape;
 * returns what the callback should return (the connection then closes). */
static int http_error(struct lws *wsi, unsigned status, const char *kind, const char *message) {
  /* written by hand: lws would say HTTP/1.0 for a refused upgrade */
  char id[80];
  request_id(wsi, id, sizeof id);
  char body[512];
  int n = snprintf(body, sizeof body, "{\"error\":{\"kind\":\"%s\",\"message\":\"%s\"}}", kind,
                   message);
  uint8_t buf[LWS_PRE + 1024];
  char *p = (char *)buf + LWS_PRE;
  int len = snprintf(p, sizeof buf - LWS_PRE,
                     "HTTP/1.1 %u %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                     "X-Request-Id: %s\r\nConnection: close\r\n\r\n%s",
                     status, status == 403 ? "Forbidden" : "Bad Request", n, id, body);
  lws_write(wsi, (uint8_t *)p, (size_t)len, LWS_WRITE_HTTP_HEADERS);
  return -1;
}

static int ws_cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                 size_t len) {
  ws_client **pc = user;
  ws_client *c = pc ? *pc : NULL;
  switch (reason) {
  case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION:
    if (!origin_allowed(wsi)) {
      log_info("ws refused: Origin not allowed");
      http_error(wsi, HTTP_STATUS_FORBIDDEN, "forbidden",
                 "this Origin may not open WebSockets here (see sbxd --allow-origin)");
      return -1;
    }
    return 0;
  case LWS_CALLBACK_ADD_HEADERS: { /* the 101 carries X-Request-Id too */
    struct lws_process_html_args *a = in;
    uint8_t *p = (uint8_t *)a->p;
    if (add_request_id(wsi, &p, p + a->max_len))
      return 1;
    a->p = (char *)p;
    return 0;
  }
  case LWS_CALLBACK_ESTABLISHED: {
    loop *l = lws_context_user(lws_get_context(wsi));
    c = calloc(1, sizeof *c);
    if (!c)
      return -1;
    *pc = c;
    c->wsi = wsi;
    c->l = l;
    c->binary = !strcmp(lws_get_protocol(wsi)->name, "sbx.v1.binary");
    setup(c);
    return 0;
  }
  case LWS_CALLBACK_RECEIVE: {
    if (!c || c->close_code)
      return 0;
    if (c->rx_len + len > WS_MAX_MESSAGE) {
      close_with(c, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE, "message over %u bytes", WS_MAX_MESSAGE);
      free(c->rx);
      c->rx = NULL;
      c->rx_len = 0;
      return 0;
    }
    char *nb = realloc(c->rx, c->rx_len + len + 1);
    if (!nb)
      return -1;
    c->rx = nb;
    memcpy(c->rx + c->rx_len, in, len);
    c->rx_len += len;
    if (!lws_is_final_fragment(wsi) || lws_remaining_packet_payload(wsi))
      return 0;
    on_message(c, lws_frame_is_binary(wsi));
    c->rx_len = 0;
    return 0;
  }
  case LWS_CALLBACK_SERVER_WRITEABLE: {
    if (!c)
      return -1;
    if (c->close_code && !c->q_head) {
      lws_close_reason(wsi, (enum lws_close_status)c->close_code, (unsigned char *)c->close_reason,
                       strlen(c->close_reason));
      return -1;
    }
    int rc = write_next(c);
    if (rc < 0)
      return -1;
    if (rc > 0 || c->close_code)
      lws_callback_on_writable(wsi);
    return 0;
  }
  case LWS_CALLBACK_CLOSED:
    if (c) {
      *pc = NULL;
      client_free(c);
    }
    return 0;
  case LWS_CALLBACK_HTTP:
    /* a plain GET on a /ws path: say what is needed */
    return http_error(wsi, HTTP_STATUS_BAD_REQUEST, "invalid_request",
                      "this route is a WebSocket: send a GET with Upgrade: websocket");
  default:
    return lws_callback_http_dummy(wsi, reason, user, in, len);
  }
}

const struct lws_protocols ws_protocols[] = {
    {"sbx.v1.json", ws_cb, sizeof(ws_client *), 4096, 0, NULL, WS_TX_PACKET},
    {"sbx.v1.binary", ws_cb, sizeof(ws_client *), 4096, 0, NULL, WS_TX_PACKET},
};

void ws_adopt(loop *l, int fd) {
  if (!lws_adopt_socket_vhost(l->vh, fd))
    log_warn("libwebsockets could not adopt a connection");
}
