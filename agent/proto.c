/* proto.c - the agent protocol codec: frame headers and the incremental
 * decoder.  Shared by sbx-agent and the gateway, so nothing agent-only here. */
#include "agent/proto.h"

#include <stdlib.h>
#include <string.h>

void sbx_proto_put_hdr(uint8_t out[SBX_PROTO_HDR], uint32_t len, uint32_t session, uint8_t type) {
  out[0] = (uint8_t)(len >> 24);
  out[1] = (uint8_t)(len >> 16);
  out[2] = (uint8_t)(len >> 8);
  out[3] = (uint8_t)len;
  out[4] = (uint8_t)(session >> 24);
  out[5] = (uint8_t)(session >> 16);
  out[6] = (uint8_t)(session >> 8);
  out[7] = (uint8_t)session;
  out[8] = type;
}

static uint32_t get_be32(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

const char *sbx_proto_type_name(uint8_t type) {
  switch ((sbx_frame_type)type) {
  case SBX_F_HELLO: return "HELLO";
  case SBX_F_EXEC: return "EXEC";
  case SBX_F_STDIN: return "STDIN";
  case SBX_F_STDIN_CLOSE: return "STDIN_CLOSE";
  case SBX_F_SIGNAL: return "SIGNAL";
  case SBX_F_RESIZE: return "RESIZE";
  case SBX_F_CREDIT: return "CREDIT";
  case SBX_F_ATTACH: return "ATTACH";
  case SBX_F_RELEASE: return "RELEASE";
  case SBX_F_SYNC: return "SYNC";
  case SBX_F_STARTED: return "STARTED";
  case SBX_F_STDOUT: return "STDOUT";
  case SBX_F_STDERR: return "STDERR";
  case SBX_F_EXITED: return "EXITED";
  case SBX_F_FAILED: return "FAILED";
  case SBX_F_STDIN_ERROR: return "STDIN_ERROR";
  case SBX_F_ERROR: return "ERROR";
  case SBX_F_STDIN_ACK: return "STDIN_ACK";
  }
  return "?";
}

int sbx_proto_get_hdr(const uint8_t *buf, sbx_frame_hdr *h, const char **why) {
  uint32_t len = get_be32(buf);
  if (len > SBX_PROTO_MAX_PAYLOAD) {
    if (why)
      *why = "frame payload exceeds the maximum size";
    return -1;
  }
  if (sbx_proto_type_name(buf[8])[0] == '?') {
    if (why)
      *why = "unknown frame type";
    return -1;
  }
  h->len = len;
  h->session = get_be32(buf + 4);
  h->type = buf[8];
  return 0;
}

struct sbx_decoder {
  uint8_t *buf;
  size_t cap;
  size_t head; /* first unconsumed byte */
  size_t len;  /* unconsumed bytes from head */
  /* next() NUL-terminates the payload it returns in place, overwriting the
   * first byte of whatever follows; that byte is put back on the next call */
  size_t saved_pos;
  uint8_t saved_byte;
  int has_saved;
  const char *error; /* sticky: once broken, the stream has no frame boundaries */
};

sbx_decoder *sbx_decoder_new(void) { return calloc(1, sizeof(sbx_decoder)); }

void sbx_decoder_free(sbx_decoder *d) {
  if (!d)
    return;
  free(d->buf);
  free(d);
}

static void restore_saved(sbx_decoder *d) {
  if (d->has_saved) {
    d->buf[d->saved_pos] = d->saved_byte;
    d->has_saved = 0;
  }
}

/* Make room for `need` unconsumed bytes plus the terminating NUL. */
static int ensure_room(sbx_decoder *d, size_t need) {
  if (d->head > 0 && d->head + need + 1 > d->cap) {
    memmove(d->buf, d->buf + d->head, d->len);
    d->head = 0;
  }
  if (d->head + need + 1 <= d->cap)
    return 0;
  size_t cap = d->cap ? d->cap : 4096;
  while (cap < d->head + need + 1)
    cap *= 2;
  uint8_t *nb = realloc(d->buf, cap);
  if (!nb)
    return -1;
  d->buf = nb;
  d->cap = cap;
  return 0;
}

int sbx_decoder_feed(sbx_decoder *d, const void *data, size_t n) {
  restore_saved(d);
  if (d->error || n == 0)
    return 0; /* the error is reported by next(); bytes after it mean nothing */
  if (d->len == 0)
    d->head = 0;
  if (ensure_room(d, d->len + n) < 0)
    return -1;
  memcpy(d->buf + d->head + d->len, data, n);
  d->len += n;
  return 0;
}

int sbx_decoder_next(sbx_decoder *d, sbx_frame_hdr *h, const uint8_t **payload, const char **why) {
  restore_saved(d);
  if (d->error) {
    if (why)
      *why = d->error;
    return -1;
  }
  if (d->len < SBX_PROTO_HDR)
    return 0;
  sbx_frame_hdr hh;
  const char *reason = NULL;
  /* validate the header as soon as it is whole, so an oversized length is
   * refused before anything is buffered for it */
  if (sbx_proto_get_hdr(d->buf + d->head, &hh, &reason) < 0) {
    d->error = reason;
    if (why)
      *why = reason;
    return -1;
  }
  if (d->len < SBX_PROTO_HDR + (size_t)hh.len)
    return 0;
  uint8_t *p = d->buf + d->head + SBX_PROTO_HDR;
  size_t end = d->head + SBX_PROTO_HDR + hh.len; /* < cap: ensure_room kept a spare byte */
  d->saved_pos = end;
  d->saved_byte = d->buf[end];
  d->has_saved = 1;
  d->buf[end] = 0;
  d->head = end;
  d->len -= SBX_PROTO_HDR + hh.len;
  *h = hh;
  *payload = p;
  return 1;
}

int sbx_decoder_peek(sbx_decoder *d, sbx_frame_hdr *h, size_t *have, const char **why) {
  restore_saved(d);
  if (!d->error && d->len >= SBX_PROTO_HDR) {
    const char *reason = NULL;
    if (sbx_proto_get_hdr(d->buf + d->head, h, &reason) < 0)
      d->error = reason;
  }
  if (d->error) {
    if (why)
      *why = d->error;
    return -1;
  }
  if (d->len < SBX_PROTO_HDR)
    return 0;
  size_t got = d->len - SBX_PROTO_HDR;
  *have = got < h->len ? got : h->len;
  return 1;
}

size_t sbx_decoder_divert(sbx_decoder *d, uint8_t *dst) {
  sbx_frame_hdr h;
  size_t have;
  if (sbx_decoder_peek(d, &h, &have, NULL) != 1)
    return 0;
  memcpy(dst, d->buf + d->head + SBX_PROTO_HDR, have);
  d->head += SBX_PROTO_HDR + have;
  d->len -= SBX_PROTO_HDR + have;
  if (d->len == 0)
    d->head = 0;
  return have;
}
