/* loop_int.h - the loop's private state, shared by loop.c (thread, queue,
 * agent links), session.c (exec sessions, retention, events) and ws.c
 * (WebSocket clients).  Everything here is touched by the loop thread only. */
#ifndef SBX_SERVER_LOOP_INT_H
#define SBX_SERVER_LOOP_INT_H

#include <libwebsockets.h>
#include <pthread.h>
#include <stdatomic.h>

#include "../vmm/agent_conn.h"
#include "loop.h"

typedef struct alink alink;
typedef struct session session;
typedef struct ws_client ws_client;

enum { STREAM_OUT = 0, STREAM_ERR = 1 };

/* ---- retention: the most recent output of each stream, in seq order ---- */
typedef struct out_rec {
  uint64_t seq, offset; /* seq across both streams; offset within its stream */
  uint32_t len;
  uint8_t stream;
  /* room for libwebsockets' frame header and our 9-byte binary prefix, so a
   * whole record goes to a sbx.v1.binary client without a copy */
  uint8_t head[LWS_PRE + 9];
  uint8_t data[];
} out_rec;

typedef struct retention {
  out_rec **ring;      /* ring[(seq - first) & (cap-1)]; NULL = evicted */
  size_t cap;          /* power of two */
  uint64_t first, next;/* seqs held: [first, next) */
  uint64_t limit;      /* bytes kept per stream */
  uint64_t kept[2];    /* bytes held per stream */
  uint64_t end[2];     /* bytes ever appended per stream (the next offset) */
  uint64_t oldest[2];  /* scan hint: no record of that stream below this seq */
} retention;

void retention_init(retention *r, uint64_t limit);
void retention_free(retention *r);
/* Append; evicts the stream's oldest records beyond the limit.  -1 on OOM. */
int retention_append(retention *r, int stream, const uint8_t *p, size_t n);
/* A record with room for n data bytes (and a NUL), to fill and then adopt. */
out_rec *retention_rec_new(size_t n);
/* Append a record from retention_rec_new() holding n bytes; takes it (frees
 * it on failure).  -1 on OOM. */
int retention_adopt(retention *r, int stream, out_rec *x, size_t n);
/* The record with this seq, or NULL if evicted or out of range. */
const out_rec *retention_get(const retention *r, uint64_t seq);
/* Oldest retained offset of a stream. */
uint64_t retention_start(const retention *r, int stream);
/* Copy up to max bytes of a stream from offset off (clamped up to the oldest
 * kept byte, reported in *from).  Returns bytes copied. */
size_t retention_copy(const retention *r, int stream, uint64_t off, uint8_t *out, size_t max,
                      uint64_t *from);

/* ---- sessions ---- */
struct session {
  session *next_all;  /* loop->sessions */
  session *next_link; /* lk->sessions (live ones only) */
  loop *l;
  alink *lk;          /* NULL once the agent connection is gone */
  uint32_t id;
  char exec_id[32];
  char sandbox_id[32];
  bool tty, live, ended;
  bool killed;         /* ended by sbx: kill route or message, owner close, disconnect */
  loop_job *job;       /* the REST request waiting, NULL once answered */
  uint64_t max_output; /* collect at most this much per stream into res (REST one-shot) */
  exec_result res;     /* pid, end status, collected output */
  json_t *failure;     /* kept for late viewers */
  retention ret;
  ws_client *owner;    /* the WebSocket that started it, while connected */
  bool kill_on_owner_close;
  ws_client *clients;  /* every attached WebSocket, owner included */
  uint64_t owed[2];    /* credit withheld while the owner lags */
  uint64_t stdin_inflight; /* stdin bytes sent to the agent, not yet acknowledged */
  loop_job *waiters;   /* LOOP_JOB_WAIT jobs */
  json_t *pending_spec; /* EXEC payload waiting for the agent's hello */
  struct pending_frame *pending; /* frames for the session sent before its EXEC went out */
  lws_sorted_usec_list_t linger; /* frees an ended session after retention time */
};

session *session_new(loop *l, alink *lk, uint32_t id, const char *exec_id, const char *sandbox_id);
/* Find a session in memory by exec id. */
session *session_by_exec(loop *l, const char *exec_id);
/* Agent frame for this session. -1 = protocol error (close the link). */
int session_frame(session *s, const sbx_frame_hdr *h, const uint8_t *payload);
/* The agent link's sink for a big output payload of s: a retention record's
 * data, so session_frame() adopts it without a copy (agent_conn.h). */
uint8_t *session_sink(session *s, const sbx_frame_hdr *h, void **block);
/* The session ends with s->res.failure set (it never started). */
void session_fail(session *s);
/* The agent connection is gone: a live session ends as killed. */
void session_lost(session *s);
/* Send a frame to the session's agent (dropped if the link is gone; held
 * until the EXEC is out if it is still pending). */
int session_send(session *s, uint8_t type, const void *p, size_t n);
/* The EXEC went out: send what session_send held back, in order. */
void session_send_pending(session *s);
/* Stdin pacing: the agent buffers up to 4 MiB; clients stop being read above
 * STDIN_HIGH in flight and are read again below STDIN_LOW. */
#define STDIN_HIGH (256u * 1024)
#define STDIN_LOW (64u * 1024)
#define STDIN_AGENT_MAX (4u << 20)
/* Give withheld credit back when the owner has caught up. */
void session_credit_check(session *s);
/* Free everything (loop shutdown). */
void session_free(session *s);

/* ---- WebSocket clients (ws.c) ---- */
void ws_client_wake(ws_client *c);                /* more to send: ask for writable */
ws_client *ws_client_next(const ws_client *c);    /* next client of the same session */
void ws_client_rx_resume(ws_client *c);           /* stdin drained: read the client again */
void ws_client_stdin_error(ws_client *c, json_t *failure); /* queue a stdin_error event */
void ws_client_detach(ws_client *c);              /* the session is going away */
/* Bytes the client has not been sent yet, over both streams. */
uint64_t ws_client_lag(const ws_client *c);
extern const struct lws_protocols ws_protocols[]; /* sbx.v1.json, sbx.v1.binary */
#define WS_PROTOCOL_COUNT 2

/* ---- links (loop.c) ---- */
struct alink {
  alink *next;
  loop *l;
  char sandbox_id[32];
  agent_conn *conn;
  struct lws *wsi;
  bool ready, closing;
  uint32_t next_session;
  session *sessions;
  loop_job *waiting;
  lws_sorted_usec_list_t hello_timer;
  lws_sorted_usec_list_t sync_timer; /* repeats SYNC until the hello */
  lws_sorted_usec_list_t rewrite; /* re-arms POLLOUT after a writable callback */
  char nonce[64];                 /* the SYNC nonce the hello must carry */
};

struct loop {
  struct lws_context *ctx;
  struct lws_vhost *vh;
  pthread_t thread;
  pthread_mutex_t mu;
  loop_job *queue_head, *queue_tail; /* under mu */
  atomic_bool stop;
  alink *links;
  session *sessions;
  uint64_t retain_bytes;
  int64_t retain_after_exit_ms;
};

void link_flush(alink *lk);
/* Does the sandbox run --max-execs execs already? */
bool link_full(const alink *lk);
/* Open (or find) the agent link for a sandbox object; NULL with *err. */
alink *link_get(loop *l, json_t *sandbox, sbx_err *err);
/* Send a session's EXEC (steals spec): now if the link is ready, else
 * when its hello arrives. */
void link_exec(alink *lk, session *s, json_t *spec);
/* Record an exec's end in the store. */
void record_end(session *s);
void job_finish(loop_job *job, int rc, const sbx_err *err);

#endif
