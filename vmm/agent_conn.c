#include "agent_conn.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "../common/util.h"

typedef struct outbuf {
  struct outbuf *next;
  size_t len, off;
  uint8_t data[];
} outbuf;

#define READ_BUF (SBX_PROTO_CHUNK * 4 + SBX_PROTO_HDR * 4)
/* With a sink: payloads at least this much short go to the sink */
#define SINK_MIN (16u * 1024)
/* With a sink: what is read into rbuf beside a payload read in place (the
 * next frames' headers and small frames; the start of a big payload in it
 * is copied to its sink once more, so keep it small) and without one in
 * flight (small frames, or the start of a big one) */
#define SINK_SIDE_READ (8u * 1024)
#define SINK_IDLE_READ (64u * 1024)

struct agent_conn {
  int fd;
  uint8_t *rbuf; /* READ_BUF bytes: several output frames per read() */
  sbx_decoder *dec;
  agent_frame_cb cb;
  void *ud;
  outbuf *head, *tail;
  agent_sink_cb sink;
  /* the payload being read in place: header, room, bytes in, its block */
  sbx_frame_hdr in_h;
  uint8_t *in_dst;
  size_t in_got;
  void *in_block;
  void *cb_block; /* during the callback for an in-place payload: its block */
  /* resynchronizing (agent_conn_sync): bytes are dropped until the HELLO
   * whose payload begins with sync_mark; sync_buf keeps the tail a match
   * may start in */
  char *sync_mark;
  size_t sync_mark_len;
  uint8_t *sync_buf;
  size_t sync_len;
};

agent_conn *agent_conn_new(int fd, agent_frame_cb cb, void *ud) {
  agent_conn *c = calloc(1, sizeof *c);
  if (!c)
    return NULL;
  c->dec = sbx_decoder_new();
  c->rbuf = malloc(READ_BUF);
  if (!c->dec || !c->rbuf) {
    sbx_decoder_free(c->dec);
    free(c->rbuf);
    free(c);
    return NULL;
  }
  sbx_set_nonblock(fd, true);
  c->fd = fd;
  c->cb = cb;
  c->ud = ud;
  return c;
}

void agent_conn_free(agent_conn *c) {
  if (!c)
    return;
  for (outbuf *b = c->head, *n; b; b = n) {
    n = b->next;
    free(b);
  }
  sbx_decoder_free(c->dec);
  free(c->rbuf);
  free(c->in_block);
  free(c->sync_mark);
  free(c->sync_buf);
  if (c->fd >= 0)
    close(c->fd);
  free(c);
}

int agent_conn_fd(const agent_conn *c) { return c->fd; }

void agent_conn_set_sink(agent_conn *c, agent_sink_cb sink) { c->sink = sink; }

void *agent_conn_take_block(agent_conn *c) {
  void *b = c->cb_block;
  c->cb_block = NULL;
  return b;
}

/* The in-place payload is whole: hand it to the callback. */
static int deliver_in_place(agent_conn *c, sbx_err *err) {
  sbx_frame_hdr h = c->in_h;
  uint8_t *p = c->in_dst;
  c->in_dst[h.len] = 0;
  c->cb_block = c->in_block;
  c->in_block = c->in_dst = NULL;
  int r = c->cb(c, &h, p, c->ud);
  free(c->cb_block); /* unless the callback took it */
  c->cb_block = NULL;
  if (r < 0)
    return sbx_fail(err, SBX_E_INTERNAL, 0, "connection closed by the gateway");
  return 0;
}

/* Dispatch every whole frame buffered; then, with a sink, move a big
 * payload that has only begun to arrive to its own room. */
static int dispatch(agent_conn *c, sbx_err *err) {
  for (;;) {
    sbx_frame_hdr h;
    const uint8_t *payload;
    const char *why = NULL;
    int r = sbx_decoder_next(c->dec, &h, &payload, &why);
    if (r < 0)
      return sbx_fail(err, SBX_E_INTERNAL, 0, "agent protocol error: %s", why);
    if (r == 0)
      break;
    if (c->cb(c, &h, payload, c->ud) < 0)
      return sbx_fail(err, SBX_E_INTERNAL, 0, "connection closed by the gateway");
  }
  sbx_frame_hdr h;
  size_t have;
  const char *why = NULL;
  int r = c->sink ? sbx_decoder_peek(c->dec, &h, &have, &why) : 0;
  if (r < 0)
    return sbx_fail(err, SBX_E_INTERNAL, 0, "agent protocol error: %s", why);
  if (r == 0 || (h.type != SBX_F_STDOUT && h.type != SBX_F_STDERR) || h.len - have < SINK_MIN)
    return 0;
  void *block = NULL;
  uint8_t *dst = c->sink(c, &h, c->ud, &block);
  if (!dst)
    return 0;
  c->in_h = h;
  c->in_dst = dst;
  c->in_block = block;
  c->in_got = sbx_decoder_divert(c->dec, dst);
  return 0;
}

int agent_conn_sync(agent_conn *c, const char *nonce) {
  char *mark = NULL;
  if (asprintf(&mark, "{\"nonce\":\"%s\"", nonce) < 0)
    return -1;
  uint8_t *buf = malloc(SBX_PROTO_HDR + strlen(mark) + READ_BUF);
  if (!buf) {
    free(mark);
    return -1;
  }
  free(c->sync_mark);
  free(c->sync_buf);
  c->sync_mark = mark;
  c->sync_mark_len = strlen(mark);
  c->sync_buf = buf;
  c->sync_len = 0;
  return 0;
}

bool agent_conn_syncing(const agent_conn *c) { return c->sync_mark != NULL; }

/* While resynchronizing: look for the expected HELLO in what came before plus
 * these n bytes.  Once found, the decoder gets the stream from its header on
 * and syncing ends; until then everything but a possible start is dropped. */
static int sync_scan(agent_conn *c, const uint8_t *data, size_t n) {
  memcpy(c->sync_buf + c->sync_len, data, n);
  c->sync_len += n;
  const uint8_t *b = c->sync_buf, *end = b + c->sync_len;
  for (const uint8_t *at = b + SBX_PROTO_HDR; at < end;) {
    const uint8_t *m = memmem(at, (size_t)(end - at), c->sync_mark, c->sync_mark_len);
    if (!m)
      break;
    sbx_frame_hdr h;
    const char *why;
    if (sbx_proto_get_hdr(m - SBX_PROTO_HDR, &h, &why) == 0 && h.session == 0 &&
        h.type == SBX_F_HELLO) {
      size_t from = (size_t)(m - SBX_PROTO_HDR - b);
      int r = sbx_decoder_feed(c->dec, b + from, c->sync_len - from);
      free(c->sync_mark);
      free(c->sync_buf);
      c->sync_mark = NULL;
      c->sync_buf = NULL;
      return r;
    }
    at = m + 1;
  }
  /* keep what could still hold a header plus the start of the mark */
  size_t keep = SBX_PROTO_HDR + c->sync_mark_len - 1;
  if (c->sync_len > keep) {
    memmove(c->sync_buf, end - keep, keep);
    c->sync_len = keep;
  }
  return 0;
}

int agent_conn_read(agent_conn *c, sbx_err *err) {
  uint8_t *buf = c->rbuf;
  for (;;) {
    size_t rest = c->in_dst ? c->in_h.len - c->in_got : 0;
    size_t side = !c->sink ? READ_BUF : rest ? SINK_SIDE_READ : SINK_IDLE_READ;
    ssize_t n;
    if (rest) {
      struct iovec iov[2] = {{c->in_dst + c->in_got, rest}, {buf, side}};
      n = readv(c->fd, iov, 2);
    } else {
      n = read(c->fd, buf, side);
    }
    if (n < 0) {
      if (errno == EINTR)
        continue;
      if (errno == EAGAIN)
        return 0;
      return sbx_fail_errno(err, errno, "read from agent");
    }
    if (n == 0)
      return sbx_fail(err, SBX_E_INTERNAL, 0, "agent closed the connection");
    if (c->sync_mark) { /* nothing is read in place before the hello */
      if (sync_scan(c, buf, (size_t)n) < 0)
        return sbx_fail_errno(err, ENOMEM, "agent frame buffer");
      if (!c->sync_mark && dispatch(c, err) < 0)
        return -1;
      continue;
    }
    size_t in_place = (size_t)n < rest ? (size_t)n : rest;
    c->in_got += in_place;
    if (rest && c->in_got == c->in_h.len && deliver_in_place(c, err) < 0)
      return -1;
    if (sbx_decoder_feed(c->dec, buf, (size_t)n - in_place) < 0)
      return sbx_fail_errno(err, ENOMEM, "agent frame buffer");
    if (dispatch(c, err) < 0)
      return -1;
    if ((size_t)n < rest + side)
      return 0; /* drained for now; poll again */
  }
}

int agent_conn_send(agent_conn *c, uint32_t session, uint8_t type, const void *payload,
                    size_t len) {
  if (len > SBX_PROTO_MAX_PAYLOAD)
    return errno = EMSGSIZE, -1;
  outbuf *b = malloc(sizeof *b + SBX_PROTO_HDR + len);
  if (!b)
    return -1;
  b->next = NULL;
  b->off = 0;
  b->len = SBX_PROTO_HDR + len;
  sbx_proto_put_hdr(b->data, (uint32_t)len, session, type);
  if (len)
    memcpy(b->data + SBX_PROTO_HDR, payload, len);
  if (c->tail)
    c->tail->next = b;
  else
    c->head = b;
  c->tail = b;
  return 0;
}

int agent_conn_send_json(agent_conn *c, uint32_t session, uint8_t type, json_t *obj) {
  cleanup_free char *s = json_dumps(obj, JSON_COMPACT);
  if (!s)
    return -1;
  return agent_conn_send(c, session, type, s, strlen(s));
}

int agent_conn_send_credit(agent_conn *c, uint32_t session, uint32_t out, uint32_t err_bytes) {
  uint8_t p[8] = {(uint8_t)(out >> 24),       (uint8_t)(out >> 16),       (uint8_t)(out >> 8),
                  (uint8_t)out,               (uint8_t)(err_bytes >> 24), (uint8_t)(err_bytes >> 16),
                  (uint8_t)(err_bytes >> 8), (uint8_t)err_bytes};
  return agent_conn_send(c, session, SBX_F_CREDIT, p, sizeof p);
}

bool agent_conn_want_write(const agent_conn *c) { return c->head != NULL; }

int agent_conn_flush(agent_conn *c, sbx_err *err) {
  while (c->head) {
    outbuf *b = c->head;
    ssize_t w = write(c->fd, b->data + b->off, b->len - b->off);
    if (w < 0) {
      if (errno == EINTR)
        continue;
      if (errno == EAGAIN)
        return 0;
      return sbx_fail_errno(err, errno, "write to agent");
    }
    b->off += (size_t)w;
    if (b->off < b->len)
      return 0;
    c->head = b->next;
    if (!c->head)
      c->tail = NULL;
    free(b);
  }
  return 0;
}
