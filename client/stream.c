/* libsbx: WebSocket streaming (subprotocol sbx.v1.binary) through the
 * libwebsockets client.
 *
 * Each stream owns a private lws context and a service thread (the "loop").
 * The loop is the only thread that touches the wsi; the user's threads talk to
 * it through two queues under s->mu (events in, messages out) and wake it with
 * lws_cancel_service(), which is thread-safe.  When the user reads slowly and
 * more than EVQ_HIGH bytes of output are queued, the loop stops reading the
 * socket (lws_rx_flow_control), so the server stops reading the program: the
 * memory of a stream stays bounded. */
#include <libwebsockets.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "client/internal.h"

#define EVQ_HIGH (8u << 20)   /* pause reading the socket above this many queued bytes */
#define EVQ_LOW (2u << 20)    /* and resume below this */
#define OUTQ_HIGH (4u << 20)  /* stdin writers block above this many unsent bytes */
#define STDIN_CHUNK (64u << 10)
#define CLOSE_WAIT_MS 2000    /* how long close waits for the closing handshake */

typedef struct evnode {
  struct evnode *next;
  sbx_event ev;
  unsigned char *buf; /* ev.data points here */
} evnode;

typedef struct outmsg {
  struct outmsg *next;
  size_t len;
  bool binary;
  unsigned char data[]; /* LWS_PRE bytes of headroom, then the message */
} outmsg;

struct sbx_stdin {
  sbx_stream *s;
  bool closed;
};

struct sbx_stream {
  pthread_mutex_t mu;
  pthread_cond_t cond; /* any state change: event queued, connected, closed, drained */
  struct lws_context *ctx;
  struct lws *wsi;       /* loop thread only */
  pthread_t thread;
  bool thread_started;
  bool stop;             /* the loop exits */
  /* connection */
  bool attach;
  bool established, finished; /* finished: the socket is gone */
  int close_code;
  char close_reason[256];
  char conn_error[256];
  int http_status;
  char auth[4200];
  /* rx */
  cbuf rx;
  bool rx_binary;
  evnode *evq_head, *evq_tail;
  size_t evq_bytes, evq_count;
  bool rx_paused, want_resume;
  evnode *current;       /* the event last returned by recv (owned until the next) */
  bool done_delivered;
  /* tx */
  outmsg *outq_head, *outq_tail;
  size_t outq_bytes;
  bool closing;
  bool writing; /* a dequeued message is being handed to lws_write */
  /* stdin */
  bool stdin_pipe, stdin_taken;
  sbx_stdin writer;
  char exec_id[40];
};

/* ---- time ---------------------------------------------------------------------- */

static void deadline_ts(struct timespec *ts, int timeout_ms) {
  clock_gettime(CLOCK_MONOTONIC, ts);
  ts->tv_sec += timeout_ms / 1000;
  ts->tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
  if (ts->tv_nsec >= 1000000000L) {
    ts->tv_sec++;
    ts->tv_nsec -= 1000000000L;
  }
}

/* Wait on s->cond until ts (NULL = forever); false when the time passed. */
static bool wait_until(sbx_stream *s, const struct timespec *ts) {
  if (!ts) {
    pthread_cond_wait(&s->cond, &s->mu);
    return true;
  }
  return pthread_cond_timedwait(&s->cond, &s->mu, ts) == 0;
}

/* ---- queues (s->mu held) ------------------------------------------------------- */

static void evq_push(sbx_stream *s, evnode *n) {
  if (s->evq_tail)
    s->evq_tail->next = n;
  else
    s->evq_head = n;
  s->evq_tail = n;
  s->evq_bytes += n->ev.len;
  s->evq_count++;
  pthread_cond_broadcast(&s->cond);
}

static int outq_push(sbx_stream *s, const void *data, size_t len, bool binary) {
  outmsg *m = malloc(sizeof *m + LWS_PRE + len);
  if (!m)
    return -1;
  m->next = NULL;
  m->len = len;
  m->binary = binary;
  memcpy(m->data + LWS_PRE, data, len);
  if (s->outq_tail)
    s->outq_tail->next = m;
  else
    s->outq_head = m;
  s->outq_tail = m;
  s->outq_bytes += len;
  return 0;
}

/* ---- parsing server messages (loop thread) --------------------------------------- */

static evnode *node_new(sbx_event_type t) {
  evnode *n = calloc(1, sizeof *n);
  if (n)
    n->ev.type = t;
  return n;
}

static evnode *parse_binary(const unsigned char *p, size_t n) {
  if (n < 9 || (p[0] != 1 && p[0] != 2))
    return NULL;
  evnode *e = node_new(p[0] == 1 ? SBX_EV_STDOUT : SBX_EV_STDERR);
  if (!e)
    return NULL;
  uint64_t off = 0;
  for (int i = 1; i <= 8; i++)
    off = (off << 8) | p[i];
  e->ev.offset = off;
  e->ev.len = n - 9;
  e->buf = malloc(e->ev.len + 1);
  if (!e->buf) {
    free(e);
    return NULL;
  }
  memcpy(e->buf, p + 9, e->ev.len);
  e->buf[e->ev.len] = 0;
  e->ev.data = e->buf;
  return e;
}

/* A JSON text frame -> an event; NULL for an unknown type (ignored, so a newer
 * server may add events) or bad JSON (*bad set). */
static evnode *parse_text(const unsigned char *p, size_t n, bool *bad) {
  *bad = false;
  json_error_t je;
  cleanup_json json_t *j = json_loadb((const char *)p, n, 0, &je);
  const char *type = json_string_value(json_object_get(j, "type"));
  if (!type) {
    *bad = true;
    return NULL;
  }
  evnode *e = NULL;
  if (strcmp(type, "started") == 0) {
    if ((e = node_new(SBX_EV_STARTED))) {
      snprintf(e->ev.exec_id, sizeof e->ev.exec_id, "%s",
               json_string_value(json_object_get(j, "exec_id")) ?: "");
      json_t *pid = json_object_get(j, "pid");
      e->ev.pid = json_is_integer(pid) ? (long)json_integer_value(pid) : -1;
    }
  } else if (strcmp(type, "stdout") == 0 || strcmp(type, "stderr") == 0) {
    const char *d = json_string_value(json_object_get(j, "data"));
    const char *b = json_string_value(json_object_get(j, "data_b64"));
    if (!(e = node_new(type[3] == 'o' ? SBX_EV_STDOUT : SBX_EV_STDERR)))
      return NULL;
    e->ev.offset = (uint64_t)json_integer_value(json_object_get(j, "offset"));
    if (b) {
      if (sbxc_b64_decode(b, &e->buf, &e->ev.len) < 0) {
        free(e);
        *bad = true;
        return NULL;
      }
    } else {
      e->ev.len = d ? strlen(d) : 0;
      e->buf = (unsigned char *)strdup(d ? d : "");
    }
    if (!e->buf) {
      free(e);
      return NULL;
    }
    e->ev.data = e->buf;
  } else if (strcmp(type, "stdin_error") == 0 || strcmp(type, "failed") == 0) {
    if ((e = node_new(type[0] == 's' ? SBX_EV_STDIN_ERROR : SBX_EV_FAILED)))
      sbxc_failure_from_json(&e->ev.failure, json_object_get(j, "failure"));
  } else if (strcmp(type, "gap") == 0) {
    if ((e = node_new(SBX_EV_GAP))) {
      const char *st = json_string_value(json_object_get(j, "stream"));
      e->ev.gap_stream = st && strcmp(st, "stderr") == 0 ? SBX_EV_STDERR : SBX_EV_STDOUT;
      e->ev.gap_from = (uint64_t)json_integer_value(json_object_get(j, "from"));
      e->ev.gap_to = (uint64_t)json_integer_value(json_object_get(j, "to"));
    }
  } else if (strcmp(type, "error") == 0) {
    if ((e = node_new(SBX_EV_ERROR))) {
      json_t *er = json_object_get(j, "error");
      sbxc_err_from_json(&e->ev.error, json_is_object(er) ? er : j, 0);
    }
  } else if (strcmp(type, "exited") == 0) {
    if ((e = node_new(SBX_EV_EXITED))) {
      json_t *ec = json_object_get(j, "exit_code");
      e->ev.exit_code = json_is_integer(ec) ? (int)json_integer_value(ec) : -1;
      e->ev.signal = (int)json_integer_value(json_object_get(j, "signal"));
    }
  } else if (strcmp(type, "done") == 0) {
    e = node_new(SBX_EV_DONE);
  }
  return e;
}

/* ---- the lws callback (loop thread) ---------------------------------------------- */

static void deliver_message(sbx_stream *s, struct lws *wsi) {
  evnode *e;
  bool bad = false;
  if (s->rx_binary)
    bad = !(e = parse_binary(s->rx.data, s->rx.len));
  else
    e = parse_text(s->rx.data, s->rx.len, &bad);
  s->rx.len = 0;
  if (bad) {
    snprintf(s->conn_error, sizeof s->conn_error, "the server sent a malformed %s message",
             s->rx_binary ? "binary" : "text");
    return;
  }
  if (!e)
    return;
  if (e->ev.type == SBX_EV_STARTED && e->ev.exec_id[0])
    snprintf(s->exec_id, sizeof s->exec_id, "%s", e->ev.exec_id);
  evq_push(s, e);
  if (s->evq_bytes > EVQ_HIGH && !s->rx_paused) {
    s->rx_paused = true;
    lws_rx_flow_control(wsi, 0);
  }
}

static int ws_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                       size_t len) {
  struct lws_context *ctx = lws_get_context(wsi);
  sbx_stream *s = ctx ? lws_context_user(ctx) : NULL;
  if (!s)
    return 0;
  switch (reason) {
  case LWS_CALLBACK_CLIENT_APPEND_HANDSHAKE_HEADER: {
    if (!s->auth[0])
      break;
    unsigned char **p = (unsigned char **)in, *end = (*p) + len;
    if (lws_add_http_header_by_name(wsi, (const unsigned char *)"authorization:",
                                    (const unsigned char *)s->auth, (int)strlen(s->auth), p, end))
      return -1;
    break;
  }
  case LWS_CALLBACK_CLIENT_ESTABLISHED:
    pthread_mutex_lock(&s->mu);
    s->established = true;
    if (s->outq_head)
      lws_callback_on_writable(wsi);
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->mu);
    break;
  case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
    pthread_mutex_lock(&s->mu);
    s->http_status = (int)lws_http_client_http_response(wsi);
    snprintf(s->conn_error, sizeof s->conn_error, "%s",
             in ? (const char *)in : "WebSocket connection failed");
    s->finished = true;
    s->wsi = NULL;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->mu);
    break;
  case LWS_CALLBACK_CLIENT_RECEIVE:
    pthread_mutex_lock(&s->mu);
    if (lws_is_first_fragment(wsi)) {
      s->rx.len = 0;
      s->rx_binary = lws_frame_is_binary(wsi);
    }
    if (cbuf_add(&s->rx, in, len) < 0) {
      snprintf(s->conn_error, sizeof s->conn_error, "out of memory");
      pthread_mutex_unlock(&s->mu);
      return -1;
    }
    if (lws_is_final_fragment(wsi) && !lws_remaining_packet_payload(wsi))
      deliver_message(s, wsi);
    pthread_mutex_unlock(&s->mu);
    break;
  case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
    pthread_mutex_lock(&s->mu);
    if (len >= 2) {
      const unsigned char *p = in;
      s->close_code = (p[0] << 8) | p[1];
      snprintf(s->close_reason, sizeof s->close_reason, "%.*s", (int)(len - 2), (const char *)p + 2);
    }
    pthread_mutex_unlock(&s->mu);
    break;
  case LWS_CALLBACK_CLIENT_WRITEABLE: {
    pthread_mutex_lock(&s->mu);
    if (s->closing) {
      pthread_mutex_unlock(&s->mu);
      lws_close_reason(wsi, LWS_CLOSE_STATUS_NORMAL, (unsigned char *)"bye", 3);
      return -1;
    }
    outmsg *m = s->outq_head;
    if (m) {
      s->outq_head = m->next;
      if (!s->outq_head)
        s->outq_tail = NULL;
      s->outq_bytes -= m->len;
      s->writing = true;
      pthread_cond_broadcast(&s->cond);
    }
    bool more = s->outq_head != NULL;
    pthread_mutex_unlock(&s->mu);
    if (m) {
      int n = lws_write(wsi, m->data + LWS_PRE, m->len, m->binary ? LWS_WRITE_BINARY : LWS_WRITE_TEXT);
      bool short_write = n < (int)m->len;
      free(m);
      pthread_mutex_lock(&s->mu);
      s->writing = false;
      pthread_cond_broadcast(&s->cond); /* sbx_stream_flush */
      pthread_mutex_unlock(&s->mu);
      if (short_write)
        return -1;
    }
    if (more)
      lws_callback_on_writable(wsi);
    break;
  }
  case LWS_CALLBACK_CLIENT_CLOSED:
    pthread_mutex_lock(&s->mu);
    s->finished = true;
    s->wsi = NULL;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->mu);
    break;
  case LWS_CALLBACK_EVENT_WAIT_CANCELLED:
    /* a user thread queued something, or recv drained the queue */
    pthread_mutex_lock(&s->mu);
    if (s->wsi) {
      if (s->want_resume) {
        s->want_resume = false;
        s->rx_paused = false;
        lws_rx_flow_control(s->wsi, 1);
      }
      if ((s->outq_head || s->closing) && s->established)
        lws_callback_on_writable(s->wsi);
    }
    pthread_mutex_unlock(&s->mu);
    break;
  default:
    break;
  }
  (void)user;
  return 0;
}

static const struct lws_protocols protocols[] = {
    {"sbx.v1.binary", ws_callback, 0, 0, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

static void *loop_main(void *arg) {
  sbx_stream *s = arg;
  for (;;) {
    pthread_mutex_lock(&s->mu);
    bool stop = s->stop;
    pthread_mutex_unlock(&s->mu);
    if (stop)
      break;
    if (lws_service(s->ctx, 0) < 0)
      break;
  }
  return NULL;
}

/* ---- connecting --------------------------------------------------------------------- */

static void stream_free(sbx_stream *s) {
  if (s->thread_started) {
    pthread_mutex_lock(&s->mu);
    s->stop = true;
    pthread_mutex_unlock(&s->mu);
    lws_cancel_service(s->ctx);
    pthread_join(s->thread, NULL);
  }
  if (s->ctx)
    lws_context_destroy(s->ctx);
  for (evnode *n = s->evq_head, *nx; n; n = nx) {
    nx = n->next;
    free(n->buf);
    free(n);
  }
  if (s->current) {
    free(s->current->buf);
    free(s->current);
  }
  for (outmsg *m = s->outq_head, *nx; m; m = nx) {
    nx = m->next;
    free(m);
  }
  cbuf_free(&s->rx);
  pthread_mutex_destroy(&s->mu);
  pthread_cond_destroy(&s->cond);
  free(s);
}

/* The error for a socket that ended without `done` (s->mu held). */
static void close_error(sbx_stream *s, sbx_error *err) {
  const char *why = s->close_reason[0] ? s->close_reason : s->conn_error;
  sbx_error_kind k = SBX_ERR_TRANSPORT;
  switch (s->close_code) {
  case 4404: k = s->attach ? SBX_ERR_EXEC_NOT_FOUND : SBX_ERR_SANDBOX_NOT_FOUND; break;
  case 4409: k = SBX_ERR_SANDBOX_NOT_RUNNING; break;
  case 4401: k = SBX_ERR_UNAUTHORIZED; break;
  case 4403: k = SBX_ERR_FORBIDDEN; break;
  case 1003:
  case 1008: k = SBX_ERR_INVALID_REQUEST; break;
  case 1011: k = SBX_ERR_INTERNAL; break;
  case 1013: k = SBX_ERR_CAPACITY; break;
  default: break;
  }
  if (!s->close_code && s->http_status) {
    switch (s->http_status) {
    case 400: k = SBX_ERR_INVALID_REQUEST; break;
    case 401: k = SBX_ERR_UNAUTHORIZED; break;
    case 403: k = SBX_ERR_FORBIDDEN; break;
    case 404: k = s->attach ? SBX_ERR_EXEC_NOT_FOUND : SBX_ERR_SANDBOX_NOT_FOUND; break;
    case 409: k = SBX_ERR_SANDBOX_NOT_RUNNING; break;
    case 429: k = SBX_ERR_RATE_LIMITED; break;
    case 503: k = SBX_ERR_CAPACITY; break;
    default: break;
    }
  }
  if (s->close_code)
    sbxc_seterr(err, k, "WebSocket closed with %d: %s", s->close_code, why[0] ? why : "(no reason)");
  else if (s->http_status)
    sbxc_seterr(err, k, "WebSocket upgrade refused with HTTP %d: %s", s->http_status,
                why[0] ? why : "(no reason)");
  else
    sbxc_seterr(err, k, "WebSocket: %s", why[0] ? why : "connection closed before done");
  if (err)
    err->http_status = s->http_status;
}

static sbx_stream *stream_open(sbx_client *c, const char *path, json_t *start, bool attach,
                               bool stdin_pipe, sbx_error *err) {
  sbx_stream *s = calloc(1, sizeof *s);
  if (!s) {
    sbxc_seterr(err, SBX_ERR_INTERNAL, "out of memory");
    return NULL;
  }
  pthread_mutex_init(&s->mu, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&s->cond, &ca);
  pthread_condattr_destroy(&ca);
  s->attach = attach;
  s->stdin_pipe = stdin_pipe;
  s->writer.s = s;
  if (c->key)
    snprintf(s->auth, sizeof s->auth, "Bearer %s", c->key);
  if (start) {
    cleanup_cfree char *txt = json_dumps(start, JSON_COMPACT);
    /* a WebSocket exec's stdin stays open until stdin_close: without a pipe
     * the program gets its stdin_data, if any, then EOF (as one-shot execs do) */
    static const char eof[] = "{\"type\":\"stdin_close\"}";
    if (!txt || outq_push(s, txt, strlen(txt), false) < 0 ||
        (!stdin_pipe && outq_push(s, eof, sizeof eof - 1, false) < 0)) {
      stream_free(s);
      sbxc_seterr(err, SBX_ERR_INTERNAL, "out of memory");
      return NULL;
    }
  }

  /* split the base URL: lws_parse_uri cuts its argument in place */
  char urlbuf[2048];
  snprintf(urlbuf, sizeof urlbuf, "%s", c->url);
  const char *prot, *host, *prefix;
  int port;
  if (lws_parse_uri(urlbuf, &prot, &host, &port, &prefix)) {
    stream_free(s);
    sbxc_seterr(err, SBX_ERR_INVALID_REQUEST, "cannot parse URL %s", c->url);
    return NULL;
  }
  bool tls = strcmp(prot, "https") == 0;
  char fullpath[2048];
  snprintf(fullpath, sizeof fullpath, "%s%s%s", *prefix ? "/" : "", prefix, path);

  lws_set_log_level(0, NULL);
  struct lws_context_creation_info info;
  memset(&info, 0, sizeof info);
  info.port = CONTEXT_PORT_NO_LISTEN;
  info.protocols = protocols;
  info.gid = -1;
  info.uid = -1;
  info.user = s;
  info.timeout_secs = (unsigned)(c->connect_ms + 999) / 1000;
  info.connect_timeout_secs = info.timeout_secs;
  if (tls)
    info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
  s->ctx = lws_create_context(&info);
  if (!s->ctx) {
    stream_free(s);
    sbxc_seterr(err, SBX_ERR_INTERNAL, "lws_create_context failed");
    return NULL;
  }
  char hosthdr[300];
  snprintf(hosthdr, sizeof hosthdr, "%s:%d", host, port);
  struct lws_client_connect_info ci;
  memset(&ci, 0, sizeof ci);
  ci.context = s->ctx;
  ci.address = host;
  ci.port = port;
  ci.path = fullpath;
  ci.host = hosthdr;
  ci.origin = NULL; /* not a browser: no Origin, so origin checks do not apply */
  ci.protocol = "sbx.v1.binary";
  ci.ssl_connection = tls ? LCCSCF_USE_SSL : 0;
  ci.pwsi = &s->wsi;
  /* before the loop runs, this thread is the only one touching the context */
  if (!lws_client_connect_via_info(&ci)) {
    pthread_mutex_lock(&s->mu);
    bool failed = s->finished;
    char why[256];
    snprintf(why, sizeof why, "%s", s->conn_error);
    pthread_mutex_unlock(&s->mu);
    stream_free(s);
    sbxc_seterr(err, SBX_ERR_TRANSPORT, "cannot connect to %s: %s", c->url,
                failed && why[0] ? why : "connect failed");
    return NULL;
  }
  if (pthread_create(&s->thread, NULL, loop_main, s) != 0) {
    stream_free(s);
    sbxc_seterr(err, SBX_ERR_INTERNAL, "pthread_create failed");
    return NULL;
  }
  s->thread_started = true;

  /* return once the server has answered: first event queued or socket gone */
  struct timespec ts;
  deadline_ts(&ts, (int)c->connect_ms + 30000);
  pthread_mutex_lock(&s->mu);
  bool timed_out = false;
  while (!s->evq_head && !s->finished && !timed_out)
    timed_out = !wait_until(s, &ts);
  if (!s->evq_head) {
    if (timed_out)
      sbxc_seterr(err, SBX_ERR_TIMEOUT, "no answer from the server on the WebSocket");
    else
      close_error(s, err);
    pthread_mutex_unlock(&s->mu);
    stream_free(s);
    return NULL;
  }
  pthread_mutex_unlock(&s->mu);
  return s;
}

static sbx_stream *start_stream(sbx_client *c, const char *ref, json_t *start,
                                const sbx_exec_opts *opts, sbx_error *err) {
  if (!ref || !*ref) {
    sbxc_seterr(err, SBX_ERR_INVALID_REQUEST, "empty sandbox reference");
    return NULL;
  }
  if (opts && opts->stdin_pipe && opts->stdin_data) {
    sbxc_seterr(err, SBX_ERR_INVALID_REQUEST, "stdin_data and stdin_pipe exclude each other");
    return NULL;
  }
  if (sbxc_exec_body(start, opts, true, err) < 0)
    return NULL;
  cleanup_cfree char *e = sbxc_escape(ref);
  cleanup_cfree char *path = NULL;
  if (!e || asprintf(&path, "/v1/sandboxes/%s/exec/ws", e) < 0) {
    path = NULL;
    sbxc_seterr(err, SBX_ERR_INTERNAL, "out of memory");
    return NULL;
  }
  return stream_open(c, path, start, false, opts && opts->stdin_pipe, err);
}

sbx_stream *sbx_exec_stream(sbx_client *c, const char *ref, const char *cmd,
                            const char *const *args, const sbx_exec_opts *opts, sbx_error *err) {
  if (!cmd || !*cmd) {
    sbxc_seterr(err, SBX_ERR_INVALID_REQUEST, "cmd is empty");
    return NULL;
  }
  cleanup_json json_t *start = json_pack("{s:s}", "type", "start");
  json_t *a = json_array();
  json_t *jc = json_string(cmd);
  if (!jc) {
    json_decref(a);
    sbxc_seterr(err, SBX_ERR_INVALID_REQUEST, "cmd is not valid UTF-8");
    return NULL;
  }
  json_object_set_new(start, "cmd", jc);
  json_object_set_new(start, "args", a);
  for (; args && *args; args++) {
    json_t *v = json_string(*args);
    if (!v) {
      sbxc_seterr(err, SBX_ERR_INVALID_REQUEST, "an argument is not valid UTF-8");
      return NULL;
    }
    json_array_append_new(a, v);
  }
  return start_stream(c, ref, start, opts, err);
}

sbx_stream *sbx_shell_stream(sbx_client *c, const char *ref, const char *command,
                             const sbx_exec_opts *opts, sbx_error *err) {
  json_t *jc = command ? json_string(command) : NULL;
  if (!jc) {
    sbxc_seterr(err, SBX_ERR_INVALID_REQUEST, "command is NULL or not valid UTF-8");
    return NULL;
  }
  cleanup_json json_t *start = json_pack("{s:s}", "type", "start");
  json_object_set_new(start, "shell", jc);
  return start_stream(c, ref, start, opts, err);
}

sbx_stream *sbx_attach(sbx_client *c, const char *exec_id, uint64_t stdout_offset,
                       uint64_t stderr_offset, sbx_error *err) {
  if (!exec_id || !*exec_id) {
    sbxc_seterr(err, SBX_ERR_INVALID_REQUEST, "empty exec id");
    return NULL;
  }
  cleanup_cfree char *e = sbxc_escape(exec_id);
  cleanup_cfree char *path = NULL;
  if (!e || asprintf(&path, "/v1/execs/%s/ws?offset=%llu&stderr_offset=%llu", e,
                     (unsigned long long)stdout_offset, (unsigned long long)stderr_offset) < 0) {
    path = NULL;
    sbxc_seterr(err, SBX_ERR_INTERNAL, "out of memory");
    return NULL;
  }
  sbx_stream *s = stream_open(c, path, NULL, true, false, err);
  if (s && !s->exec_id[0])
    snprintf(s->exec_id, sizeof s->exec_id, "%s", exec_id);
  return s;
}

sbx_stream *sbx_attach_stdin(sbx_client *c, const char *exec_id, uint64_t stdout_offset,
                             uint64_t stderr_offset, sbx_error *err) {
  sbx_stream *s = sbx_attach(c, exec_id, stdout_offset, stderr_offset, err);
  if (s) {
    /* no lock needed: nothing else has the stream yet, and the service
     * thread never reads this flag */
    s->stdin_pipe = true;
  }
  return s;
}

/* ---- receiving ---------------------------------------------------------------------- */

int sbx_stream_recv(sbx_stream *s, sbx_event *ev, int timeout_ms, sbx_error *err) {
  struct timespec ts;
  if (timeout_ms >= 0)
    deadline_ts(&ts, timeout_ms);
  pthread_mutex_lock(&s->mu);
  if (s->current) {
    free(s->current->buf);
    free(s->current);
    s->current = NULL;
  }
  if (s->done_delivered) {
    pthread_mutex_unlock(&s->mu);
    return 0;
  }
  while (!s->evq_head && !s->finished) {
    if (!wait_until(s, timeout_ms >= 0 ? &ts : NULL) && !s->evq_head) {
      pthread_mutex_unlock(&s->mu);
      sbxc_seterr(err, SBX_ERR_TIMEOUT, "no event within %d ms", timeout_ms);
      return -1;
    }
  }
  evnode *n = s->evq_head;
  if (!n) { /* the socket ended without done */
    close_error(s, err);
    pthread_mutex_unlock(&s->mu);
    return -1;
  }
  s->evq_head = n->next;
  if (!s->evq_head)
    s->evq_tail = NULL;
  s->evq_bytes -= n->ev.len;
  s->evq_count--;
  n->next = NULL;
  s->current = n;
  if (n->ev.type == SBX_EV_DONE)
    s->done_delivered = true;
  bool wake = false;
  if (s->rx_paused && !s->want_resume && s->evq_bytes < EVQ_LOW) {
    s->want_resume = true;
    wake = true;
  }
  *ev = n->ev;
  pthread_mutex_unlock(&s->mu);
  if (wake)
    lws_cancel_service(s->ctx);
  return 1;
}

/* ---- sending ------------------------------------------------------------------------- */

/* Queue one message and wake the loop; block while the queue is over
 * OUTQ_HIGH when `block` (stdin data only, so control messages never wait). */
static int send_msg(sbx_stream *s, const void *data, size_t len, bool binary, bool block,
                    sbx_error *err) {
  pthread_mutex_lock(&s->mu);
  while (block && s->outq_bytes > OUTQ_HIGH && !s->finished && !s->closing)
    pthread_cond_wait(&s->cond, &s->mu);
  if (s->finished || s->closing) {
    pthread_mutex_unlock(&s->mu);
    sbxc_seterr(err, SBX_ERR_TRANSPORT, "the stream is closed");
    return -1;
  }
  int rc = outq_push(s, data, len, binary);
  pthread_mutex_unlock(&s->mu);
  if (rc < 0) {
    sbxc_seterr(err, SBX_ERR_INTERNAL, "out of memory");
    return -1;
  }
  lws_cancel_service(s->ctx);
  return 0;
}

static int send_json(sbx_stream *s, json_t *j, sbx_error *err) {
  cleanup_cfree char *txt = json_dumps(j, JSON_COMPACT);
  if (!txt) {
    sbxc_seterr(err, SBX_ERR_INTERNAL, "out of memory");
    return -1;
  }
  return send_msg(s, txt, strlen(txt), false, false, err);
}

sbx_stdin *sbx_stream_take_stdin(sbx_stream *s, sbx_error *err) {
  pthread_mutex_lock(&s->mu);
  bool ok = s->stdin_pipe && !s->stdin_taken;
  s->stdin_taken = true;
  pthread_mutex_unlock(&s->mu);
  if (!ok) {
    sbxc_seterr(err, SBX_ERR_INVALID_REQUEST,
                s->stdin_pipe ? "stdin was already taken" : "the stream was not started with stdin_pipe");
    return NULL;
  }
  return &s->writer;
}

int sbx_stdin_write(sbx_stdin *w, const void *data, size_t len, sbx_error *err) {
  if (w->closed) {
    sbxc_seterr(err, SBX_ERR_INVALID_REQUEST, "stdin is closed");
    return -1;
  }
  const unsigned char *p = data;
  unsigned char frame[1 + STDIN_CHUNK];
  frame[0] = 0;
  while (len > 0) {
    size_t n = len < STDIN_CHUNK ? len : STDIN_CHUNK;
    memcpy(frame + 1, p, n);
    if (send_msg(w->s, frame, n + 1, true, true, err) < 0)
      return -1;
    p += n;
    len -= n;
  }
  return 0;
}

int sbx_stdin_close(sbx_stdin *w, sbx_error *err) {
  if (w->closed)
    return 0;
  w->closed = true;
  static const char msg[] = "{\"type\":\"stdin_close\"}";
  return send_msg(w->s, msg, sizeof msg - 1, false, false, err);
}

int sbx_stream_signal(sbx_stream *s, const char *sig, sbx_error *err) {
  if (!sig || !*sig) {
    sbxc_seterr(err, SBX_ERR_INVALID_REQUEST, "empty signal");
    return -1;
  }
  cleanup_json json_t *j = json_pack("{s:s}", "type", "signal");
  char *end;
  long n = strtol(sig, &end, 10);
  json_object_set_new(j, "signal", *end ? json_string(sig) : json_integer(n));
  return send_json(s, j, err);
}

int sbx_stream_kill(sbx_stream *s, sbx_error *err) {
  static const char msg[] = "{\"type\":\"kill\"}";
  return send_msg(s, msg, sizeof msg - 1, false, false, err);
}

int sbx_stream_resize(sbx_stream *s, int rows, int cols, sbx_error *err) {
  if (rows < 1 || cols < 1) {
    sbxc_seterr(err, SBX_ERR_INVALID_REQUEST, "rows and cols must be >= 1");
    return -1;
  }
  cleanup_json json_t *j = json_pack("{s:s,s:i,s:i}", "type", "resize", "rows", rows, "cols", cols);
  return send_json(s, j, err);
}

int sbx_stream_flush(sbx_stream *s, int timeout_ms, sbx_error *err) {
  struct timespec ts;
  if (timeout_ms >= 0)
    deadline_ts(&ts, timeout_ms);
  pthread_mutex_lock(&s->mu);
  while ((s->outq_head || s->writing) && !s->finished && !s->closing &&
         wait_until(s, timeout_ms >= 0 ? &ts : NULL))
    ;
  bool sent = !s->outq_head && !s->writing, finished = s->finished || s->closing;
  pthread_mutex_unlock(&s->mu);
  if (sent)
    return 0;
  if (finished)
    sbxc_seterr(err, SBX_ERR_TRANSPORT, "the stream ended before its messages were sent");
  else
    sbxc_seterr(err, SBX_ERR_TIMEOUT, "messages still queued after %d ms", timeout_ms);
  return -1;
}

const char *sbx_stream_exec_id(const sbx_stream *s) { return s->exec_id[0] ? s->exec_id : NULL; }

void sbx_stream_close(sbx_stream *s) {
  if (!s)
    return;
  pthread_mutex_lock(&s->mu);
  s->closing = true;
  pthread_cond_broadcast(&s->cond); /* a blocked stdin writer gives up */
  pthread_mutex_unlock(&s->mu);
  lws_cancel_service(s->ctx);
  struct timespec ts;
  deadline_ts(&ts, CLOSE_WAIT_MS);
  pthread_mutex_lock(&s->mu);
  while (!s->finished && wait_until(s, &ts))
    ;
  pthread_mutex_unlock(&s->mu);
  stream_free(s);
}

/* ---- collect / wait ------------------------------------------------------------------- */

static int remaining_ms(const struct timespec *end) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  long ms = (end->tv_sec - now.tv_sec) * 1000 + (end->tv_nsec - now.tv_nsec) / 1000000;
  return ms < 0 ? 0 : (int)ms;
}

/* Drain events to the end; output into ob/eb when not NULL. */
static int drain(sbx_stream *s, int timeout_ms, cbuf *ob, cbuf *eb, int *exit_code, int *sig,
                 bool *have_exit, sbx_error *timeout_err, sbx_failure *failure, bool *failed,
                 sbx_error *err) {
  struct timespec end;
  if (timeout_ms >= 0)
    deadline_ts(&end, timeout_ms);
  sbx_event ev;
  for (;;) {
    int rc = sbx_stream_recv(s, &ev, timeout_ms >= 0 ? remaining_ms(&end) : -1, err);
    if (rc < 0)
      return -1;
    if (rc == 0)
      return 0;
    switch (ev.type) {
    case SBX_EV_STDOUT:
      if (ob && cbuf_add(ob, ev.data, ev.len) < 0) {
        sbxc_seterr(err, SBX_ERR_INTERNAL, "out of memory");
        return -1;
      }
      break;
    case SBX_EV_STDERR:
      if (eb && cbuf_add(eb, ev.data, ev.len) < 0) {
        sbxc_seterr(err, SBX_ERR_INTERNAL, "out of memory");
        return -1;
      }
      break;
    case SBX_EV_EXITED:
      *exit_code = ev.exit_code;
      *sig = ev.signal;
      *have_exit = true;
      break;
    case SBX_EV_FAILED:
      *failure = ev.failure;
      *failed = true;
      break;
    case SBX_EV_ERROR:
      *timeout_err = ev.error;
      break;
    case SBX_EV_DONE:
      return 0;
    default:
      break;
    }
  }
}

static int finish(sbx_stream *s, bool failed, const sbx_failure *failure,
                  const sbx_error *ev_err, bool have_exit, sbx_error *err) {
  if (failed) {
    sbxc_seterr(err, SBX_ERR_EXEC_FAILED, "the program never started: %s", failure->message);
    if (err) {
      err->has_failure = 1;
      err->failure = *failure;
      snprintf(err->exec_id, sizeof err->exec_id, "%s", s->exec_id);
    }
    return -1;
  }
  if (ev_err->kind != SBX_ERR_NONE) {
    if (err) {
      *err = *ev_err;
      if (!err->exec_id[0])
        snprintf(err->exec_id, sizeof err->exec_id, "%s", s->exec_id);
    }
    return -1;
  }
  if (!have_exit) {
    sbxc_seterr(err, SBX_ERR_TRANSPORT, "the stream ended without an exit status");
    return -1;
  }
  return 0;
}

int sbx_stream_collect(sbx_stream *s, int timeout_ms, sbx_output **out, sbx_error *err) {
  *out = NULL;
  __attribute__((cleanup(cbuf_free))) cbuf ob = {0};
  __attribute__((cleanup(cbuf_free))) cbuf eb = {0};
  int code = -1, sig = 0;
  bool have_exit = false, failed = false;
  sbx_error ev_err = {0};
  sbx_failure failure;
  if (drain(s, timeout_ms, &ob, &eb, &code, &sig, &have_exit, &ev_err, &failure, &failed, err) < 0)
    return -1;
  int rc = finish(s, failed, &failure, &ev_err, have_exit, err);
  if (rc < 0 && (failed || ev_err.kind != SBX_ERR_EXEC_TIMEOUT))
    return -1;
  *out = sbxc_output_new(s->exec_id, code, sig, ob.data, ob.len, eb.data, eb.len, false, false, -1);
  if (!*out) {
    sbxc_seterr(err, SBX_ERR_INTERNAL, "out of memory");
    return -1;
  }
  return rc;
}

int sbx_stream_wait(sbx_stream *s, int timeout_ms, int *exit_code, int *signal, sbx_error *err) {
  int code = -1, sig = 0;
  bool have_exit = false, failed = false;
  sbx_error ev_err = {0};
  sbx_failure failure;
  if (drain(s, timeout_ms, NULL, NULL, &code, &sig, &have_exit, &ev_err, &failure, &failed, err) < 0)
    return -1;
  if (exit_code)
    *exit_code = code;
  if (signal)
    *signal = sig;
  return finish(s, failed, &failure, &ev_err, have_exit, err);
}
