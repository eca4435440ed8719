/* test_proto.c - the agent protocol codec: headers, the incremental decoder on
 * whole, split, oversized, unknown and garbage input. */
#include "agent/proto.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Append one frame to buf at *off. */
static void put_frame(uint8_t *buf, size_t *off, uint32_t session, uint8_t type, const void *p,
                      size_t n) {
  sbx_proto_put_hdr(buf + *off, (uint32_t)n, session, type);
  if (n)
    memcpy(buf + *off + SBX_PROTO_HDR, p, n);
  *off += SBX_PROTO_HDR + n;
}

START_TEST(test_hdr_roundtrip) {
  uint8_t b[SBX_PROTO_HDR];
  sbx_proto_put_hdr(b, 0x01020304u & (SBX_PROTO_MAX_PAYLOAD - 1), 0xdeadbeefu, SBX_F_STDOUT);
  sbx_frame_hdr h;
  const char *why = NULL;
  ck_assert_int_eq(sbx_proto_get_hdr(b, &h, &why), 0);
  ck_assert_uint_eq(h.len, 0x01020304u & (SBX_PROTO_MAX_PAYLOAD - 1));
  ck_assert_uint_eq(h.session, 0xdeadbeefu);
  ck_assert_uint_eq(h.type, SBX_F_STDOUT);
  /* big-endian on the wire */
  sbx_proto_put_hdr(b, 0x10, 7, SBX_F_EXEC);
  static const uint8_t want[] = {0, 0, 0, 0x10, 0, 0, 0, 7, 2};
  ck_assert_mem_eq(b, want, sizeof want);
  /* the maximum itself is fine, one more is not */
  sbx_proto_put_hdr(b, SBX_PROTO_MAX_PAYLOAD, 1, SBX_F_STDIN);
  ck_assert_int_eq(sbx_proto_get_hdr(b, &h, &why), 0);
  sbx_proto_put_hdr(b, SBX_PROTO_MAX_PAYLOAD + 1, 1, SBX_F_STDIN);
  why = NULL;
  ck_assert_int_eq(sbx_proto_get_hdr(b, &h, &why), -1);
  ck_assert_ptr_nonnull(why);
}
END_TEST

START_TEST(test_type_names) {
  ck_assert_str_eq(sbx_proto_type_name(SBX_F_HELLO), "HELLO");
  ck_assert_str_eq(sbx_proto_type_name(SBX_F_EXEC), "EXEC");
  ck_assert_str_eq(sbx_proto_type_name(SBX_F_RELEASE), "RELEASE");
  ck_assert_str_eq(sbx_proto_type_name(SBX_F_STARTED), "STARTED");
  ck_assert_str_eq(sbx_proto_type_name(SBX_F_ERROR), "ERROR");
  ck_assert_str_eq(sbx_proto_type_name(0), "?");
  ck_assert_str_eq(sbx_proto_type_name(SBX_F_SYNC), "SYNC");
  ck_assert_str_eq(sbx_proto_type_name(11), "?");
  ck_assert_str_eq(sbx_proto_type_name(15), "?");
  ck_assert_str_eq(sbx_proto_type_name(SBX_F_STDIN_ACK), "STDIN_ACK");
  ck_assert_str_eq(sbx_proto_type_name(24), "?");
  ck_assert_str_eq(sbx_proto_type_name(255), "?");
  /* every named type decodes, every unnamed one is refused */
  for (int t = 0; t < 256; t++) {
    uint8_t b[SBX_PROTO_HDR];
    sbx_proto_put_hdr(b, 0, 1, (uint8_t)t);
    sbx_frame_hdr h;
    const char *why = NULL;
    int r = sbx_proto_get_hdr(b, &h, &why);
    ck_assert_int_eq(r, strcmp(sbx_proto_type_name((uint8_t)t), "?") == 0 ? -1 : 0);
  }
}
END_TEST

START_TEST(test_decoder_byte_by_byte) {
  uint8_t buf[256];
  size_t n = 0;
  put_frame(buf, &n, 3, SBX_F_EXEC, "{\"cmd\":\"true\"}", 14);
  put_frame(buf, &n, 3, SBX_F_STDIN_CLOSE, NULL, 0);
  put_frame(buf, &n, 9, SBX_F_STDIN, "abc", 3);
  sbx_decoder *d = sbx_decoder_new();
  ck_assert_ptr_nonnull(d);
  int got = 0;
  for (size_t i = 0; i < n; i++) {
    ck_assert_int_eq(sbx_decoder_feed(d, buf + i, 1), 0);
    sbx_frame_hdr h;
    const uint8_t *p;
    const char *why = NULL;
    int r;
    while ((r = sbx_decoder_next(d, &h, &p, &why)) == 1) {
      got++;
      if (got == 1) {
        ck_assert_uint_eq(i, SBX_PROTO_HDR + 14 - 1); /* not a byte early */
        ck_assert_uint_eq(h.type, SBX_F_EXEC);
        ck_assert_uint_eq(h.session, 3);
        ck_assert_uint_eq(h.len, 14);
        ck_assert_str_eq((const char *)p, "{\"cmd\":\"true\"}");
      } else if (got == 2) {
        ck_assert_uint_eq(h.type, SBX_F_STDIN_CLOSE);
        ck_assert_uint_eq(h.len, 0);
        ck_assert_uint_eq(p[0], 0);
      } else {
        ck_assert_uint_eq(h.type, SBX_F_STDIN);
        ck_assert_uint_eq(h.session, 9);
        ck_assert_mem_eq(p, "abc", 3);
        ck_assert_uint_eq(p[3], 0);
      }
    }
    ck_assert_int_eq(r, 0);
  }
  ck_assert_int_eq(got, 3);
  sbx_decoder_free(d);
}
END_TEST

START_TEST(test_decoder_many_in_one_feed) {
  uint8_t buf[4096];
  size_t n = 0;
  for (int i = 0; i < 50; i++) {
    char s[32];
    int l = snprintf(s, sizeof s, "frame-%d", i);
    put_frame(buf, &n, (uint32_t)i + 1, SBX_F_STDOUT, s, (size_t)l);
  }
  /* and half a frame at the end */
  size_t whole = n;
  put_frame(buf, &n, 77, SBX_F_STDERR, "tail!", 5);
  sbx_decoder *d = sbx_decoder_new();
  ck_assert_int_eq(sbx_decoder_feed(d, buf, whole + 6), 0);
  sbx_frame_hdr h;
  const uint8_t *p;
  const char *why;
  for (int i = 0; i < 50; i++) {
    ck_assert_int_eq(sbx_decoder_next(d, &h, &p, &why), 1);
    char s[32];
    snprintf(s, sizeof s, "frame-%d", i);
    ck_assert_uint_eq(h.session, (uint32_t)i + 1);
    /* NUL-terminated in place, though the next frame's header follows */
    ck_assert_str_eq((const char *)p, s);
  }
  ck_assert_int_eq(sbx_decoder_next(d, &h, &p, &why), 0);
  ck_assert_int_eq(sbx_decoder_feed(d, buf + whole + 6, n - whole - 6), 0);
  ck_assert_int_eq(sbx_decoder_next(d, &h, &p, &why), 1);
  ck_assert_uint_eq(h.session, 77);
  ck_assert_str_eq((const char *)p, "tail!");
  ck_assert_int_eq(sbx_decoder_next(d, &h, &p, &why), 0);
  sbx_decoder_free(d);
}
END_TEST

START_TEST(test_decoder_payload_survives_next_header) {
  /* the NUL written after a payload must not damage the next frame */
  uint8_t buf[64];
  size_t n = 0;
  put_frame(buf, &n, 1, SBX_F_STDIN, "xy", 2);
  put_frame(buf, &n, 0x01020304, SBX_F_CREDIT, "\0\0\0\1\0\0\0\2", 8);
  sbx_decoder *d = sbx_decoder_new();
  ck_assert_int_eq(sbx_decoder_feed(d, buf, n), 0);
  sbx_frame_hdr h;
  const uint8_t *p;
  const char *why;
  ck_assert_int_eq(sbx_decoder_next(d, &h, &p, &why), 1);
  ck_assert_int_eq(sbx_decoder_next(d, &h, &p, &why), 1);
  ck_assert_uint_eq(h.len, 8);
  ck_assert_uint_eq(h.session, 0x01020304);
  ck_assert_mem_eq(p, "\0\0\0\1\0\0\0\2", 8);
  sbx_decoder_free(d);
}
END_TEST

START_TEST(test_decoder_oversized) {
  uint8_t b[SBX_PROTO_HDR];
  sbx_proto_put_hdr(b, SBX_PROTO_MAX_PAYLOAD + 1, 1, SBX_F_STDIN);
  sbx_decoder *d = sbx_decoder_new();
  /* refused on the header alone, before any payload arrives */
  ck_assert_int_eq(sbx_decoder_feed(d, b, 5), 0);
  sbx_frame_hdr h;
  const uint8_t *p;
  const char *why = NULL;
  ck_assert_int_eq(sbx_decoder_next(d, &h, &p, &why), 0);
  ck_assert_int_eq(sbx_decoder_feed(d, b + 5, 4), 0);
  ck_assert_int_eq(sbx_decoder_next(d, &h, &p, &why), -1);
  ck_assert_ptr_nonnull(why);
  ck_assert_ptr_nonnull(strstr(why, "maximum"));
  /* sticky: the stream has no frame boundaries any more */
  ck_assert_int_eq(sbx_decoder_feed(d, "more", 4), 0);
  why = NULL;
  ck_assert_int_eq(sbx_decoder_next(d, &h, &p, &why), -1);
  ck_assert_ptr_nonnull(why);
  sbx_decoder_free(d);
  /* a 4 GiB length too */
  memset(b, 0xff, 4);
  d = sbx_decoder_new();
  ck_assert_int_eq(sbx_decoder_feed(d, b, sizeof b), 0);
  ck_assert_int_eq(sbx_decoder_next(d, &h, &p, &why), -1);
  sbx_decoder_free(d);
}
END_TEST

START_TEST(test_decoder_unknown_type) {
  uint8_t buf[64];
  size_t n = 0;
  put_frame(buf, &n, 1, SBX_F_STDIN, "ok", 2);
  put_frame(buf, &n, 1, 99, "bad", 3);
  sbx_decoder *d = sbx_decoder_new();
  ck_assert_int_eq(sbx_decoder_feed(d, buf, n), 0);
  sbx_frame_hdr h;
  const uint8_t *p;
  const char *why = NULL;
  ck_assert_int_eq(sbx_decoder_next(d, &h, &p, &why), 1); /* frames before it still come out */
  ck_assert_int_eq(sbx_decoder_next(d, &h, &p, &why), -1);
  ck_assert_str_eq(why, "unknown frame type");
  sbx_decoder_free(d);
}
END_TEST

START_TEST(test_decoder_garbage) {
  /* random bytes: the decoder either finds frames or fails; never crashes,
   * never returns a payload longer than the maximum */
  srand(12345);
  for (int round = 0; round < 200; round++) {
    sbx_decoder *d = sbx_decoder_new();
    uint8_t junk[512];
    for (size_t i = 0; i < sizeof junk; i++)
      junk[i] = (uint8_t)rand();
    size_t off = 0;
    int r = 0;
    while (off < sizeof junk && r >= 0) {
      size_t k = 1 + (size_t)rand() % 37;
      if (k > sizeof junk - off)
        k = sizeof junk - off;
      ck_assert_int_eq(sbx_decoder_feed(d, junk + off, k), 0);
      off += k;
      sbx_frame_hdr h;
      const uint8_t *p;
      const char *why = NULL;
      while ((r = sbx_decoder_next(d, &h, &p, &why)) == 1)
        ck_assert_uint_le(h.len, SBX_PROTO_MAX_PAYLOAD);
      if (r < 0)
        ck_assert_ptr_nonnull(why);
    }
    sbx_decoder_free(d);
  }
  /* text that is plainly not a frame stream: "GET / HTTP/1.1" reads as a
   * huge length */
  sbx_decoder *d = sbx_decoder_new();
  const char *http = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  ck_assert_int_eq(sbx_decoder_feed(d, http, strlen(http)), 0);
  sbx_frame_hdr h;
  const uint8_t *p;
  const char *why = NULL;
  ck_assert_int_eq(sbx_decoder_next(d, &h, &p, &why), -1);
  sbx_decoder_free(d);
}
END_TEST

START_TEST(test_decoder_max_payload) {
  size_t n = SBX_PROTO_HDR + SBX_PROTO_MAX_PAYLOAD;
  uint8_t *buf = malloc(n + SBX_PROTO_HDR + 1);
  ck_assert_ptr_nonnull(buf);
  sbx_proto_put_hdr(buf, SBX_PROTO_MAX_PAYLOAD, 5, SBX_F_STDIN);
  for (size_t i = 0; i < SBX_PROTO_MAX_PAYLOAD; i++)
    buf[SBX_PROTO_HDR + i] = (uint8_t)(i * 7 + 3);
  sbx_proto_put_hdr(buf + n, 1, 6, SBX_F_STDIN);
  buf[n + SBX_PROTO_HDR] = 'z';
  sbx_decoder *d = sbx_decoder_new();
  /* in uneven pieces */
  size_t off = 0, total = n + SBX_PROTO_HDR + 1, step = 65521;
  int got = 0;
  while (off < total) {
    size_t k = total - off < step ? total - off : step;
    ck_assert_int_eq(sbx_decoder_feed(d, buf + off, k), 0);
    off += k;
    sbx_frame_hdr h;
    const uint8_t *p;
    const char *why;
    int r;
    while ((r = sbx_decoder_next(d, &h, &p, &why)) == 1) {
      if (got++ == 0) {
        ck_assert_uint_eq(h.len, SBX_PROTO_MAX_PAYLOAD);
        ck_assert_uint_eq(h.session, 5);
        ck_assert_mem_eq(p, buf + SBX_PROTO_HDR, SBX_PROTO_MAX_PAYLOAD);
        ck_assert_uint_eq(p[SBX_PROTO_MAX_PAYLOAD], 0);
      } else {
        ck_assert_uint_eq(h.session, 6);
        ck_assert_uint_eq(h.len, 1);
        ck_assert_uint_eq(p[0], 'z');
      }
    }
    ck_assert_int_eq(r, 0);
  }
  ck_assert_int_eq(got, 2);
  sbx_decoder_free(d);
  free(buf);
}
END_TEST

START_TEST(test_decoder_empty) {
  sbx_decoder *d = sbx_decoder_new();
  sbx_frame_hdr h;
  const uint8_t *p;
  const char *why;
  ck_assert_int_eq(sbx_decoder_next(d, &h, &p, &why), 0);
  ck_assert_int_eq(sbx_decoder_feed(d, "", 0), 0);
  ck_assert_int_eq(sbx_decoder_next(d, &h, &p, &why), 0);
  sbx_decoder_free(d);
  sbx_decoder_free(NULL);
}
END_TEST

START_TEST(test_decoder_peek_divert) {
  sbx_decoder *d = sbx_decoder_new();
  uint8_t f[SBX_PROTO_HDR + 1000], dst[1000];
  sbx_proto_put_hdr(f, 1000, 4, SBX_F_STDOUT);
  for (int i = 0; i < 1000; i++)
    f[SBX_PROTO_HDR + i] = (uint8_t)(i * 7);
  sbx_frame_hdr h;
  size_t have = 99;
  const char *why = NULL;
  ck_assert_int_eq(sbx_decoder_peek(d, &h, &have, &why), 0);
  ck_assert_int_eq(sbx_decoder_feed(d, f, 5), 0);
  ck_assert_int_eq(sbx_decoder_peek(d, &h, &have, &why), 0); /* half a header */
  ck_assert_int_eq(sbx_decoder_feed(d, f + 5, SBX_PROTO_HDR + 300 - 5), 0);
  const uint8_t *p;
  ck_assert_int_eq(sbx_decoder_next(d, &h, &p, &why), 0);
  ck_assert_int_eq(sbx_decoder_peek(d, &h, &have, &why), 1);
  ck_assert_uint_eq(h.len, 1000);
  ck_assert_uint_eq(h.session, 4);
  ck_assert_uint_eq(h.type, SBX_F_STDOUT);
  ck_assert_uint_eq(have, 300);
  ck_assert_uint_eq(sbx_decoder_divert(d, dst), 300);
  ck_assert(memcmp(dst, f + SBX_PROTO_HDR, 300) == 0);
  /* the rest of that payload is the caller's; the next frame decodes */
  uint8_t g[SBX_PROTO_HDR + 2];
  sbx_proto_put_hdr(g, 2, 4, SBX_F_STDERR);
  g[SBX_PROTO_HDR] = 'o', g[SBX_PROTO_HDR + 1] = 'k';
  ck_assert_int_eq(sbx_decoder_feed(d, g, sizeof g), 0);
  ck_assert_int_eq(sbx_decoder_next(d, &h, &p, &why), 1);
  ck_assert_uint_eq(h.type, SBX_F_STDERR);
  ck_assert_str_eq((const char *)p, "ok");
  /* nothing started: divert takes nothing; a bad header is an error */
  ck_assert_uint_eq(sbx_decoder_divert(d, dst), 0);
  uint8_t bad[SBX_PROTO_HDR] = {0x7f, 0, 0, 0, 0, 0, 0, 1, SBX_F_STDOUT};
  ck_assert_int_eq(sbx_decoder_feed(d, bad, sizeof bad), 0);
  ck_assert_int_eq(sbx_decoder_peek(d, &h, &have, &why), -1);
  ck_assert_ptr_nonnull(why);
  ck_assert_int_eq(sbx_decoder_next(d, &h, &p, &why), -1);
  sbx_decoder_free(d);
}
END_TEST

static Suite *proto_suite(void) {
  Suite *s = suite_create("proto");
  TCase *tc = tcase_create("codec");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_hdr_roundtrip);
  tcase_add_test(tc, test_type_names);
  tcase_add_test(tc, test_decoder_byte_by_byte);
  tcase_add_test(tc, test_decoder_many_in_one_feed);
  tcase_add_test(tc, test_decoder_payload_survives_next_header);
  tcase_add_test(tc, test_decoder_oversized);
  tcase_add_test(tc, test_decoder_unknown_type);
  tcase_add_test(tc, test_decoder_garbage);
  tcase_add_test(tc, test_decoder_max_payload);
  tcase_add_test(tc, test_decoder_empty);
  tcase_add_test(tc, test_decoder_peek_divert);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(proto_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
