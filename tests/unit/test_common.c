/* Unit tests: common/ (errors, ids, names, times, chunk buffers). */
#include <check.h>
#include <string.h>

#include "common/buf.h"
#include "common/err.h"
#include "common/sha256.h"
#include "common/utf8.h"
#include "common/util.h"

START_TEST(err_kinds_map_to_statuses) {
  ck_assert_int_eq(sbx_err_http_status(SBX_E_INVALID_REQUEST), 400);
  ck_assert_int_eq(sbx_err_http_status(SBX_E_SANDBOX_NOT_FOUND), 404);
  ck_assert_int_eq(sbx_err_http_status(SBX_E_METHOD_NOT_ALLOWED), 405);
  ck_assert_int_eq(sbx_err_http_status(SBX_E_NOT_RUNNING), 409);
  ck_assert_int_eq(sbx_err_http_status(SBX_E_EXEC_FAILED), 422);
  ck_assert_int_eq(sbx_err_http_status(SBX_E_EXEC_TIMEOUT), 504);
  ck_assert_int_eq(sbx_err_http_status((sbx_err_kind)999), 500);
  ck_assert_str_eq(sbx_err_kind_name(SBX_E_SANDBOX_EXISTS), "sandbox_already_exists");
  ck_assert_str_eq(sbx_err_kind_name(SBX_E_NOT_RUNNING), "sandbox_not_running");
  sbx_err e;
  ck_assert_int_eq(sbx_fail_field(&e, "name", "bad %d", 7), -1);
  ck_assert_int_eq(e.kind, SBX_E_INVALID_REQUEST);
  ck_assert_str_eq(e.field, "name");
  ck_assert_str_eq(e.msg, "bad 7");
  sbx_fail_errno(&e, 2, "open %s", "x");
  ck_assert_str_eq(e.msg, "open x: No such file or directory");
  ck_assert_int_eq(sbx_fail(NULL, SBX_E_INTERNAL, 0, "ignored"), -1);
}
END_TEST

START_TEST(ids_and_names) {
  char id[32];
  sbx_new_id("sbx_", id, sizeof id);
  ck_assert(sbx_is_id(id, "sbx_"));
  ck_assert(!sbx_is_id(id, "ex_"));
  ck_assert(!sbx_is_id("sbx_0123456789ABCDEF", "sbx_"));
  ck_assert(!sbx_is_id("sbx_0123", "sbx_"));
  ck_assert(sbx_valid_name("web-1"));
  ck_assert(sbx_valid_name("a"));
  ck_assert(!sbx_valid_name(""));
  ck_assert(!sbx_valid_name("-a"));
  ck_assert(!sbx_valid_name("a/b"));
  ck_assert(!sbx_valid_name(".."));
  char n63[64], n64[65];
  memset(n63, 'a', 63), n63[63] = 0;
  memset(n64, 'a', 64), n64[64] = 0;
  ck_assert(sbx_valid_name(n63));
  ck_assert(!sbx_valid_name(n64));
}
END_TEST

START_TEST(rfc3339_has_milliseconds) {
  char ts[32];
  sbx_rfc3339(1764532580123LL, ts, sizeof ts);
  ck_assert_str_eq(ts, "2025-11-30T19:56:20.123Z");
}
END_TEST

START_TEST(chunks_append_and_copy) {
  sbx_chunks c = {0};
  static uint8_t big[3 * SBX_CHUNK_SIZE + 17];
  for (size_t i = 0; i < sizeof big; i++)
    big[i] = (uint8_t)(i * 7);
  ck_assert_int_eq(sbx_chunks_append(&c, big, 10), 0);
  ck_assert_int_eq(sbx_chunks_append(&c, big + 10, sizeof big - 10), 0);
  ck_assert_uint_eq(c.total, sizeof big);
  static uint8_t out[sizeof big];
  ck_assert_uint_eq(sbx_chunks_copy(&c, 0, out, sizeof out), sizeof big);
  ck_assert(memcmp(out, big, sizeof big) == 0);
  ck_assert_uint_eq(sbx_chunks_copy(&c, SBX_CHUNK_SIZE - 3, out, 6), 6);
  ck_assert(memcmp(out, big + SBX_CHUNK_SIZE - 3, 6) == 0);
  ck_assert_uint_eq(sbx_chunks_copy(&c, sizeof big - 2, out, 100), 2);
  sbx_chunks_free(&c);
  ck_assert_uint_eq(c.total, 0);
  ck_assert_ptr_null(c.head);
}
END_TEST

START_TEST(sha256_known_vectors) {
  char hex[65];
  sbx_sha256_hex("", 0, hex);
  ck_assert_str_eq(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  sbx_sha256_hex("abc", 3, hex);
  ck_assert_str_eq(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  const char *m = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"; /* 56 bytes: two blocks */
  sbx_sha256_hex(m, strlen(m), hex);
  ck_assert_str_eq(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  ck_assert(sbx_ct_equal("abc", "abc", 3));
  ck_assert(!sbx_ct_equal("abc", "abd", 3));
}
END_TEST

START_TEST(utf8_sanitize_holds_back_partial_sequences) {
  char out[64];
  size_t olen;
  /* "é" split: the lead byte alone is held back unless final */
  ck_assert_uint_eq(sbx_utf8_sanitize((const uint8_t *)"a\xc3", 2, false, out, &olen), 1);
  ck_assert_uint_eq(olen, 1);
  ck_assert_uint_eq(sbx_utf8_sanitize((const uint8_t *)"a\xc3", 2, true, out, &olen), 2);
  ck_assert(memcmp(out, "a\xef\xbf\xbd", 4) == 0);
  /* invalid bytes are replaced one maximal subpart at a time */
  ck_assert_uint_eq(sbx_utf8_sanitize((const uint8_t *)"\xed\xa0\x80x", 4, false, out, &olen), 4);
  ck_assert_uint_eq(olen, 10); /* three U+FFFD and x */
  ck_assert_int_eq(sbx_utf8_classify((const uint8_t *)"\xf0\x9f\x98\x80", 4), 4);
  ck_assert_int_eq(sbx_utf8_classify((const uint8_t *)"\xf0\x9f", 2), 0);
  ck_assert_int_eq(sbx_utf8_classify((const uint8_t *)"\xc0\x80", 2), -1);
}
END_TEST

int main(void) {
  Suite *s = suite_create("common");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, err_kinds_map_to_statuses);
  tcase_add_test(tc, ids_and_names);
  tcase_add_test(tc, rfc3339_has_milliseconds);
  tcase_add_test(tc, chunks_append_and_copy);
  tcase_add_test(tc, sha256_known_vectors);
  tcase_add_test(tc, utf8_sanitize_holds_back_partial_sequences);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
