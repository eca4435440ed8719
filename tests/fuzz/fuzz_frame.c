/* fuzz_frame.c - libFuzzer target for the agent frame decoder (agent/proto.h)
 * and the gateway's connection reader (vmm/agent_conn.h).
 *
 * Input: [u8 split seed][u8 stop-after][stream bytes...].
 *  1. A reference decode of the whole stream at once (header by header with
 *     sbx_proto_get_hdr) gives the expected frames and whether the stream ends
 *     in a protocol error.
 *  2. sbx_decoder is fed the same stream in pieces of 1..N bytes chosen from
 *     the seed, draining frames after every piece; frames, payload bytes, the
 *     payload's terminating NUL and the error must match the reference.
 *  3. agent_conn reads the stream from a socketpair (written in pieces, the
 *     writer then closed); its callback sees the same frames, may ask to stop
 *     after `stop-after` frames, and the read ends in -1 with a reason.  Frames
 *     queued with agent_conn_send come out the other end intact.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "agent/proto.h"
#include "common/err.h"
#include "vmm/agent_conn.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                         \
  do {                                                                                      \
    if (!(cond)) {                                                                          \
      fprintf(stderr, "fuzz_frame: check failed at %s:%d: %s\n", __FILE__, __LINE__,        \
              #cond);                                                                       \
      abort();                                                                              \
    }                                                                                       \
  } while (0)

#define MAX_FRAMES 4096

typedef struct ref_frame {
  sbx_frame_hdr h;
  size_t off; /* payload offset in the stream */
} ref_frame;

typedef struct expect {
  const uint8_t *stream;
  ref_frame frames[MAX_FRAMES];
  size_t n;
  int error; /* the stream ends in a protocol error */
} expect;

static void reference(const uint8_t *s, size_t n, expect *e) {
  size_t pos = 0;
  e->stream = s;
  e->n = 0;
  e->error = 0;
  while (n - pos >= SBX_PROTO_HDR && e->n < MAX_FRAMES) {
    sbx_frame_hdr h;
    const char *why = NULL;
    if (sbx_proto_get_hdr(s + pos, &h, &why) < 0) {
      CHECK(why != NULL);
      e->error = 1;
      return;
    }
    if (n - pos - SBX_PROTO_HDR < h.len)
      return;
    e->frames[e->n].h = h;
    e->frames[e->n].off = pos + SBX_PROTO_HDR;
    e->n++;
    pos += SBX_PROTO_HDR + h.len;
  }
}

static void same_frame(const expect *e, size_t i, const sbx_frame_hdr *h, const uint8_t *p) {
  CHECK(i < e->n);
  const ref_frame *f = &e->frames[i];
  CHECK(h->len == f->h.len && h->session == f->h.session && h->type == f->h.type);
  CHECK(h->len == 0 || memcmp(p, e->stream + f->off, h->len) == 0);
  CHECK(p[h->len] == 0);
}

/* tiny deterministic PRNG for the split sizes */
static uint32_t next_rand(uint32_t *s) {
  *s = *s * 1103515245u + 12345u;
  return *s >> 16;
}

static void decode_in_pieces(const uint8_t *s, size_t n, uint8_t seed, const expect *e) {
  sbx_decoder *d = sbx_decoder_new();
  CHECK(d != NULL);
  uint32_t r = seed;
  size_t pos = 0, got = 0;
  int err = 0;
  while (pos < n && !err) {
    size_t piece = 1 + next_rand(&r) % (seed & 0x80 ? 3 : 64);
    if (piece > n - pos)
      piece = n - pos;
    CHECK(sbx_decoder_feed(d, s + pos, piece) == 0);
    pos += piece;
    for (;;) {
      sbx_frame_hdr h;
      const uint8_t *p = NULL;
      const char *why = NULL;
      int rc = sbx_decoder_next(d, &h, &p, &why);
      if (rc == 0)
        break;
      if (rc < 0) {
        CHECK(why != NULL);
        err = 1;
        /* sticky: next() keeps failing, feed() ignores bytes */
        CHECK(sbx_decoder_feed(d, "x", 1) == 0);
        CHECK(sbx_decoder_next(d, &h, &p, &why) < 0);
        break;
      }
      same_frame(e, got, &h, p);
      got++;
      if (got == MAX_FRAMES)
        break;
    }
    if (got == MAX_FRAMES)
      break;
  }
  CHECK(got == e->n);
  if (got < MAX_FRAMES)
    CHECK(err == e->error);
  sbx_decoder_free(d);
}

typedef struct conn_ctx {
  const expect *e;
  size_t got;
  size_t stop_after;
} conn_ctx;

static int on_frame(agent_conn *c, const sbx_frame_hdr *h, const uint8_t *payload, void *ud) {
  conn_ctx *x = ud;
  (void)c;
  same_frame(x->e, x->got, h, payload);
  x->got++;
  return x->got == x->stop_after ? -1 : 0;
}

static void write_all(int fd, const uint8_t *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR)
      continue;
    CHECK(w > 0);
    p += w;
    n -= (size_t)w;
  }
}

static void via_agent_conn(const uint8_t *s, size_t n, uint8_t seed, uint8_t stop_after,
                           const expect *e) {
  int sv[2];
  CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
  conn_ctx x = {.e = e, .got = 0, .stop_after = stop_after};
  agent_conn *c = agent_conn_new(sv[0], on_frame, &x);
  CHECK(c != NULL);
  CHECK(agent_conn_fd(c) == sv[0]);

  /* the stream arrives in pieces with reads in between */
  uint32_t r = seed ^ 0x5a;
  size_t pos = 0;
  sbx_err err;
  int rc = 0;
  while (pos < n && rc == 0) {
    size_t piece = 1 + next_rand(&r) % 512;
    if (piece > n - pos)
      piece = n - pos;
    write_all(sv[1], s + pos, piece);
    pos += piece;
    memset(&err, 0, sizeof err);
    rc = agent_conn_read(c, &err);
  }

  /* a frame sent from our side arrives intact at the peer */
  static const char hello[] = "{\"version\":1}";
  CHECK(agent_conn_send(c, 0, SBX_F_HELLO, hello, sizeof hello - 1) == 0);
  CHECK(agent_conn_send_credit(c, 7, 65536, 1) == 0);
  CHECK(agent_conn_want_write(c));
  CHECK(agent_conn_flush(c, &err) == 0);
  CHECK(!agent_conn_want_write(c));
  uint8_t back[64];
  size_t blen = 0;
  while (blen < 2 * SBX_PROTO_HDR + sizeof hello - 1 + 8) {
    ssize_t k = read(sv[1], back + blen, sizeof back - blen);
    CHECK(k > 0);
    blen += (size_t)k;
  }
  sbx_frame_hdr h;
  CHECK(sbx_proto_get_hdr(back, &h, NULL) == 0);
  CHECK(h.type == SBX_F_HELLO && h.len == sizeof hello - 1 && h.session == 0);
  CHECK(memcmp(back + SBX_PROTO_HDR, hello, h.len) == 0);
  CHECK(sbx_proto_get_hdr(back + SBX_PROTO_HDR + h.len, &h, NULL) == 0);
  CHECK(h.type == SBX_F_CREDIT && h.len == 8 && h.session == 7);

  if (rc == 0) {
    close(sv[1]);
    sv[1] = -1;
    memset(&err, 0, sizeof err);
    rc = agent_conn_read(c, &err);
  }
  CHECK(rc < 0); /* EOF, a protocol error or the callback's stop */
  CHECK(err.msg[0] != '\0');
  size_t want = e->n;
  if (stop_after && stop_after < want)
    want = stop_after;
  CHECK(x.got == want || e->n == MAX_FRAMES);
  if (sv[1] >= 0)
    close(sv[1]);
  agent_conn_free(c); /* closes sv[0] */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2)
    return 0;
  static expect e;
  const uint8_t *s = data + 2;
  size_t n = size - 2;
  reference(s, n, &e);
  decode_in_pieces(s, n, data[0], &e);
  via_agent_conn(s, n, data[0], data[1], &e);

  /* header helpers: put/get round trip and names */
  if (n >= SBX_PROTO_HDR) {
    sbx_frame_hdr h;
    if (sbx_proto_get_hdr(s, &h, NULL) == 0) {
      uint8_t hdr[SBX_PROTO_HDR];
      sbx_proto_put_hdr(hdr, h.len, h.session, h.type);
      CHECK(memcmp(hdr, s, SBX_PROTO_HDR) == 0);
      CHECK(sbx_proto_type_name(h.type)[0] != '?');
    }
  }
  return 0;
}
