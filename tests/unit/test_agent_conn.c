/* Unit tests: vmm/agent_conn (the gateway side of the agent protocol) over a
 * real socketpair, with the agent side played by raw writes. */
#include <check.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "agent/proto.h"
#include "vmm/agent_conn.h"

typedef struct seen {
  int frames;
  uint8_t last_type;
  uint32_t last_session;
  size_t last_len;
  char last_payload[64];
  int stop_after;
} seen;

static int on_frame(agent_conn *c, const sbx_frame_hdr *h, const uint8_t *p, void *ud) {
  seen *s = ud;
  s->frames++;
  s->last_type = h->type;
  s->last_session = h->session;
  s->last_len = h->len;
  snprintf(s->last_payload, sizeof s->last_payload, "%s", (const char *)p);
  return (s->stop_after && s->frames >= s->stop_after) ? -1 : 0;
}

static void put_frame(int fd, uint32_t session, uint8_t type, const char *payload) {
  uint8_t hdr[SBX_PROTO_HDR];
  size_t n = strlen(payload);
  sbx_proto_put_hdr(hdr, (uint32_t)n, session, type);
  ck_assert_int_eq(write(fd, hdr, sizeof hdr), (ssize_t)sizeof hdr);
  ck_assert_int_eq(write(fd, payload, n), (ssize_t)n);
}

START_TEST(reads_frames_and_reports_eof) {
  int sv[2];
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  seen s = {0};
  agent_conn *c = agent_conn_new(sv[0], on_frame, &s);
  put_frame(sv[1], 0, SBX_F_HELLO, "{\"version\":1}");
  put_frame(sv[1], 7, SBX_F_STDOUT, "hello");
  sbx_err err;
  ck_assert_int_eq(agent_conn_read(c, &err), 0);
  ck_assert_int_eq(s.frames, 2);
  ck_assert_int_eq(s.last_type, SBX_F_STDOUT);
  ck_assert_uint_eq(s.last_session, 7);
  ck_assert_str_eq(s.last_payload, "hello");
  close(sv[1]);
  ck_assert_int_eq(agent_conn_read(c, &err), -1);
  ck_assert(strstr(err.msg, "closed") != NULL);
  agent_conn_free(c);
}
END_TEST

/* A link that resynchronizes skips everything before the HELLO carrying its
 * nonce: half a frame and whole frames of an earlier connection, a hello with
 * another nonce, a fake hello on another session; the match may be split
 * across reads. */
START_TEST(sync_skips_leftovers_until_the_hello_with_the_nonce) {
  int sv[2];
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  seen s = {0};
  agent_conn *c = agent_conn_new(sv[0], on_frame, &s);
  ck_assert_int_eq(agent_conn_sync(c, "abc123"), 0);
  ck_assert(agent_conn_syncing(c));
  sbx_err err;
  /* the tail of an old STDOUT frame, then old frames */
  ck_assert_int_eq(write(sv[1], "ld output\xff\x00", 12), 12);
  put_frame(sv[1], 3, SBX_F_STDOUT, "{\"nonce\":\"abc123\",\"fake\":1}");
  put_frame(sv[1], 0, SBX_F_HELLO, "{\"nonce\":\"0ld\",\"version\":2}");
  ck_assert_int_eq(agent_conn_read(c, &err), 0);
  ck_assert_int_eq(s.frames, 0);
  ck_assert(agent_conn_syncing(c));
  /* the real hello, split in the middle of the nonce, then a frame */
  static const char hello[] = "{\"nonce\":\"abc123\",\"version\":2}";
  uint8_t hdr[SBX_PROTO_HDR];
  sbx_proto_put_hdr(hdr, sizeof hello - 1, 0, SBX_F_HELLO);
  ck_assert_int_eq(write(sv[1], hdr, sizeof hdr), (ssize_t)sizeof hdr);
  ck_assert_int_eq(write(sv[1], hello, 14), 14);
  ck_assert_int_eq(agent_conn_read(c, &err), 0);
  ck_assert_int_eq(s.frames, 0);
  ck_assert_int_eq(write(sv[1], hello + 14, sizeof hello - 15), (ssize_t)sizeof hello - 15);
  put_frame(sv[1], 7, SBX_F_STDOUT, "after");
  ck_assert_int_eq(agent_conn_read(c, &err), 0);
  ck_assert(!agent_conn_syncing(c));
  ck_assert_int_eq(s.frames, 2);
  ck_assert_str_eq(s.last_payload, "after");
  agent_conn_free(c);
  close(sv[1]);
}
END_TEST

START_TEST(garbage_is_a_protocol_error) {
  int sv[2];
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  seen s = {0};
  agent_conn *c = agent_conn_new(sv[0], on_frame, &s);
  uint8_t junk[SBX_PROTO_HDR] = {0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, 200};
  ck_assert_int_eq(write(sv[1], junk, sizeof junk), (ssize_t)sizeof junk);
  sbx_err err;
  ck_assert_int_eq(agent_conn_read(c, &err), -1);
  ck_assert(strstr(err.msg, "protocol error") != NULL);
  ck_assert_int_eq(s.frames, 0);
  agent_conn_free(c);
  close(sv[1]);
}
END_TEST

START_TEST(callback_can_stop_reading) {
  int sv[2];
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  seen s = {.stop_after = 1};
  agent_conn *c = agent_conn_new(sv[0], on_frame, &s);
  put_frame(sv[1], 1, SBX_F_STDOUT, "a");
  put_frame(sv[1], 1, SBX_F_STDOUT, "b");
  sbx_err err;
  ck_assert_int_eq(agent_conn_read(c, &err), -1);
  ck_assert_int_eq(s.frames, 1);
  agent_conn_free(c);
  close(sv[1]);
}
END_TEST

START_TEST(sends_are_queued_and_flushed_in_order) {
  int sv[2];
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  seen s = {0};
  agent_conn *c = agent_conn_new(sv[0], on_frame, &s);
  json_t *o = json_pack("{s:i}", "signal", 15);
  ck_assert_int_eq(agent_conn_send_json(c, 3, SBX_F_SIGNAL, o), 0);
  json_decref(o);
  ck_assert_int_eq(agent_conn_send_credit(c, 3, 0x01020304u, 5), 0);
  ck_assert(agent_conn_want_write(c));
  sbx_err err;
  ck_assert_int_eq(agent_conn_flush(c, &err), 0);
  ck_assert(!agent_conn_want_write(c));
  uint8_t buf[256];
  ssize_t n = read(sv[1], buf, sizeof buf);
  sbx_decoder *d = sbx_decoder_new();
  sbx_decoder_feed(d, buf, (size_t)n);
  sbx_frame_hdr h;
  const uint8_t *p;
  const char *why;
  ck_assert_int_eq(sbx_decoder_next(d, &h, &p, &why), 1);
  ck_assert_int_eq(h.type, SBX_F_SIGNAL);
  ck_assert_str_eq((const char *)p, "{\"signal\":15}");
  ck_assert_int_eq(sbx_decoder_next(d, &h, &p, &why), 1);
  ck_assert_int_eq(h.type, SBX_F_CREDIT);
  ck_assert_uint_eq(h.len, 8);
  ck_assert(memcmp(p, "\x01\x02\x03\x04\x00\x00\x00\x05", 8) == 0);
  ck_assert_int_eq(sbx_decoder_next(d, &h, &p, &why), 0);
  sbx_decoder_free(d);
  /* oversized payloads are refused, not queued */
  static uint8_t big[SBX_PROTO_MAX_PAYLOAD + 1];
  ck_assert_int_eq(agent_conn_send(c, 1, SBX_F_STDIN, big, sizeof big), -1);
  ck_assert(!agent_conn_want_write(c));
  agent_conn_free(c);
  close(sv[1]);
}
END_TEST

/* ---- payloads read in place through a sink ---- */

typedef struct sinky {
  int sinks, frames, taken;
  uint8_t *got[16]; /* payload bytes per session, concatenated */
  size_t got_len[16];
  void *block; /* the last block the sink gave */
} sinky;

static uint8_t *sink_cb(agent_conn *c, const sbx_frame_hdr *h, void *ud, void **block) {
  sinky *k = ud;
  (void)c;
  if (h->session == 9) /* "unknown session": buffered as usual */
    return NULL;
  k->sinks++;
  uint8_t *b = malloc(h->len + 1 + 32);
  *block = b;
  k->block = b;
  return b + 32; /* the payload need not start the block */
}

static int sink_frame(agent_conn *c, const sbx_frame_hdr *h, const uint8_t *p, void *ud) {
  sinky *k = ud;
  k->frames++;
  ck_assert_uint_eq(p[h->len], 0); /* NUL-terminated like every payload */
  uint8_t **g = &k->got[h->session];
  *g = realloc(*g, k->got_len[h->session] + h->len + 1);
  memcpy(*g + k->got_len[h->session], p, h->len);
  k->got_len[h->session] += h->len;
  if (h->session == 1) { /* session 1 keeps its blocks (and frees them) */
    void *b = agent_conn_take_block(c);
    if (b) {
      ck_assert_ptr_eq(b, k->block);
      ck_assert_ptr_eq(p, (uint8_t *)b + 32);
      k->taken++;
      free(b);
    }
    ck_assert_ptr_null(agent_conn_take_block(c));
  }
  return 0;
}

static uint8_t pattern(size_t i, uint32_t session) { return (uint8_t)(i * 31 + i / 251 + session); }

/* Write a frame in pieces of at most `piece` bytes, reading after each. */
static void put_pieces(int fd, agent_conn *c, uint32_t session, uint8_t type, size_t n,
                       size_t base, size_t piece) {
  uint8_t *f = malloc(SBX_PROTO_HDR + n);
  sbx_proto_put_hdr(f, (uint32_t)n, session, type);
  for (size_t i = 0; i < n; i++)
    f[SBX_PROTO_HDR + i] = pattern(base + i, session);
  sbx_err err;
  for (size_t off = 0; off < SBX_PROTO_HDR + n;) {
    size_t k = SBX_PROTO_HDR + n - off < piece ? SBX_PROTO_HDR + n - off : piece;
    ck_assert_int_eq(write(fd, f + off, k), (ssize_t)k);
    off += k;
    ck_assert_int_eq(agent_conn_read(c, &err), 0);
  }
  free(f);
}

START_TEST(sink_reads_big_payloads_in_place) {
  int sv[2];
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  sinky k = {0};
  agent_conn *c = agent_conn_new(sv[0], sink_frame, &k);
  agent_conn_set_sink(c, sink_cb);
  size_t base1 = 0, base2 = 0, base9 = 0;
  /* small: through the buffer */
  put_pieces(sv[1], c, 1, SBX_F_STDOUT, 100, base1, 1 << 20), base1 += 100;
  ck_assert_int_eq(k.sinks, 0);
  /* big, written in one go and in odd pieces, headers split too */
  put_pieces(sv[1], c, 1, SBX_F_STDOUT, 300000, base1, 65536), base1 += 300000;
  put_pieces(sv[1], c, 2, SBX_F_STDERR, 200000, base2, 7), base2 += 200000;
  put_pieces(sv[1], c, 1, SBX_F_STDOUT, 40000, base1, 5000), base1 += 40000;
  put_pieces(sv[1], c, 2, SBX_F_STDERR, 250000, base2, 100003), base2 += 250000;
  int sinks = k.sinks;
  ck_assert_int_ge(sinks, 3);
  /* no sink for it: buffered, still whole */
  put_pieces(sv[1], c, 9, SBX_F_STDOUT, 300000, base9, 65536), base9 += 300000;
  ck_assert_int_eq(k.sinks, sinks);
  /* a control frame between big ones */
  put_frame(sv[1], 1, SBX_F_STDIN_ACK, "abcd");
  put_pieces(sv[1], c, 1, SBX_F_STDOUT, 200000, base1 + 4, 65536);
  sbx_err err;
  ck_assert_int_eq(agent_conn_read(c, &err), 0);
  ck_assert_int_eq(k.frames, 8);
  ck_assert_int_ge(k.taken, 2);
  for (uint32_t sid = 1; sid <= 9; sid++) {
    if (sid != 1 && sid != 2 && sid != 9)
      continue;
    size_t want = sid == 1 ? base1 + 4 + 200000 : sid == 2 ? base2 : base9;
    ck_assert_uint_eq(k.got_len[sid], want);
    for (size_t i = 0; i < want; i++) {
      if (sid == 1 && i >= base1 && i < base1 + 4)
        ck_assert_uint_eq(k.got[sid][i], (uint8_t)"abcd"[i - base1]);
      else
        ck_assert_msg(k.got[sid][i] == pattern(i, sid), "session %u byte %zu", sid, i);
    }
  }
  /* the connection goes away in the middle of an in-place payload: the
   * block goes with it (ASan would see a leak) */
  uint8_t hdr[SBX_PROTO_HDR];
  sbx_proto_put_hdr(hdr, 100000, 2, SBX_F_STDOUT);
  ck_assert_int_eq(write(sv[1], hdr, sizeof hdr), (ssize_t)sizeof hdr);
  static uint8_t part[50000];
  ck_assert_int_eq(write(sv[1], part, sizeof part), (ssize_t)sizeof part);
  int before = k.sinks;
  ck_assert_int_eq(agent_conn_read(c, &err), 0);
  ck_assert_int_eq(k.sinks, before + 1);
  agent_conn_free(c);
  close(sv[1]);
  for (int i = 0; i < 16; i++)
    free(k.got[i]);
}
END_TEST

int main(void) {
  Suite *s = suite_create("agent_conn");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, reads_frames_and_reports_eof);
  tcase_add_test(tc, sync_skips_leftovers_until_the_hello_with_the_nonce);
  tcase_add_test(tc, garbage_is_a_protocol_error);
  tcase_add_test(tc, callback_can_stop_reading);
  tcase_add_test(tc, sends_are_queued_and_flushed_in_order);
  tcase_add_test(tc, sink_reads_big_payloads_in_place);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
