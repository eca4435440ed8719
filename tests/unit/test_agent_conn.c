/* Unit tests: vmm/agent_conn (the gateway side of the agent protocol) over a
 * real socketpair, with the agent side played by raw writes. */
#include <check.h>
#include <jansson.h>
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

int main(void) {
  Suite *s = suite_create("agent_conn");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, reads_frames_and_reports_eof);
  tcase_add_test(tc, garbage_is_a_protocol_error);
  tcase_add_test(tc, callback_can_stop_reading);
  tcase_add_test(tc, sends_are_queued_and_flushed_in_order);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
