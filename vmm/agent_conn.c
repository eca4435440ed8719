#include "agent_conn.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/util.h"

typedef struct outbuf {
  struct outbuf *next;
  size_t len, off;
  uint8_t data[];
} outbuf;

#define READ_BUF (SBX_PROTO_CHUNK * 4 + SBX_PROTO_HDR * 4)

struct agent_conn {
  int fd;
  uint8_t *rbuf; /* READ_BUF bytes: several output frames per read() */
  sbx_decoder *dec;
  agent_frame_cb cb;
  void *ud;
  outbuf *head, *tail;
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
  if (c->fd >= 0)
    close(c->fd);
  free(c);
}

int agent_conn_fd(const agent_conn *c) { return c->fd; }

int agent_conn_read(agent_conn *c, sbx_err *err) {
  uint8_t *buf = c->rbuf;
  for (;;) {
    ssize_t n = read(c->fd, buf, READ_BUF);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      if (errno == EAGAIN)
        return 0;
      return sbx_fail_errno(err, errno, "read from agent");
    }
    if (n == 0)
      return sbx_fail(err, SBX_E_INTERNAL, 0, "agent closed the connection");
    if (sbx_decoder_feed(c->dec, buf, (size_t)n) < 0)
      return sbx_fail_errno(err, ENOMEM, "agent frame buffer");
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
    if ((size_t)n < READ_BUF)
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
