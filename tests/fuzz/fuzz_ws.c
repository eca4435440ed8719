/* fuzz_ws.c - libFuzzer target for what server/ws.c does with client input.
 *
 * ws.c's on_message/on_control are static and need a live lws, so this target
 * drives the pure functions they call on every client message, the way they
 * call them:
 *  - the text message through json_loadb(JSON_REJECT_DUPLICATES), then for an
 *    object exec_request_parse(allow_ws_fields=true) ("start"),
 *    sbx_signal_parse on "signal" ("signal"), sbx_b64_decode on "data_b64"
 *    ("stdin"), the integer checks of "resize";
 *  - the raw bytes through sbx_b64_decode and sbx_utf8_sanitize (the latter
 *    is what ws.c runs over program output, split at an input-chosen point
 *    and held back across calls exactly as write_stream/write_end do).
 * Oracles: sanitized text is valid UTF-8 (checked by jansson), equal to the
 * input when the input was valid, and identical whether produced in one call
 * or two; base64 decode(encode(x)) == x and a successful decode has the
 * length the symbols imply; signal numbers are 1..64 or -1.
 */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/utf8.h"
#include "routes/request.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                         \
  do {                                                                                      \
    if (!(cond)) {                                                                          \
      fprintf(stderr, "fuzz_ws: check failed at %s:%d: %s\n", __FILE__, __LINE__, #cond);  \
      abort();                                                                              \
    }                                                                                       \
  } while (0)

static void check_signal(json_t *v) {
  int sig = sbx_signal_parse(v);
  CHECK(sig == -1 || (sig >= 1 && sig <= 64));
}

static void on_text_message(const uint8_t *data, size_t size) {
  json_error_t je;
  json_t *msg = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, &je);
  if (!msg)
    return;
  check_signal(msg); /* any JSON value, not just a field */
  if (json_is_object(msg)) {
    exec_request r;
    sbx_err err;
    memset(&r, 0, sizeof r);
    memset(&err, 0, sizeof err);
    if (exec_request_parse(msg, false, "/bin/sh", true, &r, &err) == 0) {
      CHECK(r.cmd != NULL && json_is_array(r.args) && json_is_object(r.env));
      CHECK(r.rows >= 1 && r.cols >= 1);
    } else {
      CHECK(err.kind == SBX_E_INVALID_REQUEST && err.msg[0]);
    }
    exec_request_clear(&r);

    check_signal(json_object_get(msg, "signal"));

    json_t *b = json_object_get(msg, "data_b64");
    if (json_is_string(b)) {
      size_t n = 0;
      uint8_t *bytes = sbx_b64_decode(json_string_value(b), json_string_length(b), &n);
      free(bytes);
    }
    json_t *rows = json_object_get(msg, "rows"), *cols = json_object_get(msg, "cols");
    (void)json_integer_value(rows);
    (void)json_integer_value(cols);
  }
  json_decref(msg);
}

static void base64(const uint8_t *data, size_t size) {
  size_t n = 0;
  uint8_t *d = sbx_b64_decode((const char *)data, size, &n);
  if (d) {
    size_t pad = 0;
    while (pad < 2 && pad < size && data[size - 1 - pad] == '=')
      pad++;
    size_t body = size - pad;
    CHECK(n == body * 6 / 8);
    /* a decoded buffer re-encodes to the canonical form of the same length */
    size_t el = 0;
    char *e = sbx_b64_encode(d, n, &el);
    CHECK(e != NULL);
    CHECK(el == (n + 2) / 3 * 4);
    size_t back = 0;
    uint8_t *d2 = sbx_b64_decode(e, el, &back);
    CHECK(d2 != NULL && back == n && (n == 0 || memcmp(d, d2, n) == 0));
    free(d2);
    free(e);
    free(d);
  }
  size_t el = 0;
  char *e = sbx_b64_encode(data, size, &el);
  CHECK(e != NULL && strlen(e) == el);
  size_t back = 0;
  uint8_t *d2 = sbx_b64_decode(e, el, &back);
  CHECK(d2 != NULL && back == size && (size == 0 || memcmp(d2, data, size) == 0));
  free(d2);
  free(e);
}

static int valid_utf8(const uint8_t *p, size_t n) {
  size_t i = 0;
  while (i < n) {
    int k = sbx_utf8_classify(p + i, n - i);
    if (k <= 0)
      return 0;
    i += (size_t)k;
  }
  return 1;
}

static void utf8(const uint8_t *data, size_t size) {
  /* one call, final */
  char *whole = malloc(3 * size + 1);
  size_t wl = 0;
  CHECK(whole != NULL);
  CHECK(sbx_utf8_sanitize(data, size, true, whole, &wl) == size);
  CHECK(wl <= 3 * size);
  CHECK(valid_utf8((const uint8_t *)whole, wl));
  json_t *s = json_stringn_nocheck(whole, wl);
  CHECK(s != NULL);
  char *dump = json_dumps(s, JSON_ENCODE_ANY);
  CHECK(dump != NULL);
  json_t *back = json_loads(dump, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
  CHECK(back != NULL && json_string_length(back) == wl); /* jansson accepts it as UTF-8 */
  json_decref(back);
  free(dump);
  json_decref(s);
  if (valid_utf8(data, size))
    CHECK(wl == size && memcmp(whole, data, size) == 0);

  /* two calls as ws.c's write_stream does: the first not final, its
   * unconsumed tail (an incomplete sequence, <= 3 bytes) held back */
  size_t cut = size ? data[0] % (size + 1) : 0;
  char *two = malloc(3 * size + 4);
  CHECK(two != NULL);
  size_t l1 = 0;
  size_t used = sbx_utf8_sanitize(data, cut, false, two, &l1);
  CHECK(used <= cut && cut - used <= 3);
  if (used < cut)
    CHECK(sbx_utf8_classify(data + used, cut - used) == 0);
  size_t l2 = 0;
  CHECK(sbx_utf8_sanitize(data + used, size - used, true, two + l1, &l2) == size - used);
  CHECK(l1 + l2 == wl && memcmp(two, whole, wl) == 0);
  free(two);
  free(whole);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  on_text_message(data, size);
  base64(data, size);
  utf8(data, size);
  return 0;
}
