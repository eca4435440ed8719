/* fuzz_request.c - libFuzzer target for the REST request parsers and the
 * ExecOutput renderer (routes/request.h).
 *
 * The input is used twice:
 *  1. as a request body, exactly as server/http.c loads it (json_loadb with
 *     JSON_REJECT_DUPLICATES), through sandbox_request_parse and
 *     exec_request_parse in plain and shell mode, then exec_request_agent_spec;
 *  2. as exec output bytes, split into stdout/stderr and into short chunks at
 *     input-derived positions (so UTF-8 sequences and base64 groups straddle
 *     chunk boundaries), rendered by exec_render_next in pieces of 1..4096
 *     bytes.
 * Oracles besides the sanitizers: parsers either succeed with a well-formed
 * result or fail with SBX_E_INVALID_REQUEST and a message; the rendered reply
 * is one valid JSON object whose stdout/stderr are exactly the input streams
 * (base64) or their U+FFFD-sanitized form (utf8).
 */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/proto.h"
#include "common/buf.h"
#include "common/err.h"
#include "common/utf8.h"
#include "routes/request.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                         \
  do {                                                                                      \
    if (!(cond)) {                                                                          \
      fprintf(stderr, "fuzz_request: check failed at %s:%d: %s\n", __FILE__, __LINE__,      \
              #cond);                                                                       \
      abort();                                                                              \
    }                                                                                       \
  } while (0)

static const char *SBX_ID = "sbx_0123456789abcdef";

/* A failed parse must say why, as an invalid_request. */
static void check_err(const sbx_err *err) {
  CHECK(err->kind == SBX_E_INVALID_REQUEST);
  CHECK(err->msg[0] != '\0');
  CHECK(memchr(err->msg, '\0', sizeof err->msg) != NULL);
  CHECK(memchr(err->field, '\0', sizeof err->field) != NULL);
}

static void check_exec(const exec_request *r) {
  CHECK(r->cmd != NULL);
  CHECK(json_is_array(r->args));
  CHECK(json_is_object(r->env));
  CHECK(r->timeout_ms >= 0 && r->timeout_ms <= SBX_MAX_TIMEOUT_MS);
  CHECK(r->max_output_bytes <= SBX_MAX_OUTPUT_CAP);
  CHECK(r->stdin_len <= SBX_MAX_STDIN);
  CHECK(r->stdin_len == 0 || r->stdin_data != NULL);
  for (size_t i = 0; i < json_array_size(r->args); i++)
    CHECK(json_is_string(json_array_get(r->args, i)));
  const char *k;
  json_t *v;
  json_object_foreach(r->env, k, v) CHECK(json_is_string(v));
}

static void parse_requests(const uint8_t *data, size_t size) {
  json_error_t je;
  json_t *body = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, &je);
  if (!body)
    return;

  sbx_err err;
  memset(&err, 0, sizeof err);
  bool replace = false;
  json_t *sb = sandbox_request_parse(body, SBX_ID, 1700000000123LL, &replace, &err);
  if (sb) {
    CHECK(json_is_object(sb));
    CHECK(json_is_string(json_object_get(sb, "image")));
    CHECK(json_is_object(json_object_get(sb, "limits")));
    CHECK(json_is_object(json_object_get(sb, "env")));
    CHECK(json_is_string(json_object_get(sb, "shell")));
    char *s = json_dumps(sb, JSON_COMPACT);
    CHECK(s != NULL);
    free(s);
  } else {
    check_err(&err);
  }

  /* a sandbox to merge exec env/cwd against: the parsed one, else defaults */
  json_t *base = sb;
  if (!base) {
    json_t *empty = json_object();
    base = sandbox_request_parse(empty, SBX_ID, 0, &replace, &err);
    json_decref(empty);
    CHECK(base != NULL);
  }

  for (int mode = 0; mode < 3; mode++) {
    bool shell = mode == 1, ws = mode == 2;
    exec_request r;
    memset(&r, 0, sizeof r);
    memset(&err, 0, sizeof err);
    if (exec_request_parse(body, shell, "/bin/sh", ws, &r, &err) == 0) {
      check_exec(&r);
      json_t *spec = exec_request_agent_spec(&r, base, "ex_0123456789abcdef");
      CHECK(json_is_object(spec));
      char *s = json_dumps(spec, JSON_COMPACT);
      CHECK(s != NULL);
      /* the spec must fit one agent frame (request.h's SBX_MAX_STDIN reason) */
      CHECK(strlen(s) <= SBX_PROTO_MAX_PAYLOAD);
      free(s);
      json_decref(spec);
      exec_request_clear(&r);
    } else {
      check_err(&err);
      exec_request_clear(&r); /* must be safe after a failure too */
    }
  }
  json_decref(base);
  json_decref(body);
}

/* ---------------------------------------------------------------- renderer */

/* sbx_chunks made of short chunks (the real appender fills 64 KiB chunks, too
 * big for fuzz inputs to ever cross), lengths taken from `cuts`. */
static void build_chunks(sbx_chunks *c, const uint8_t *p, size_t n, const uint8_t *cuts,
                         size_t ncuts) {
  memset(c, 0, sizeof *c);
  size_t off = 0, i = 0;
  while (off < n) {
    size_t take = ncuts && i < 15 ? (size_t)(cuts[i % ncuts] % 7) : n - off;
    i++;
    if (take > n - off)
      take = n - off;
    sbx_chunk *k = malloc(sizeof *k);
    CHECK(k != NULL);
    k->next = NULL;
    k->len = take; /* 0-length chunks included: the renderer must skip them */
    memcpy(k->data, p + off, take);
    off += take;
    if (c->tail)
      c->tail->next = k;
    else
      c->head = k;
    c->tail = k;
    c->total += take;
  }
}

static void check_stream(json_t *obj, const char *key, const uint8_t *p, size_t n,
                         sbx_encoding enc) {
  json_t *v = json_object_get(obj, key);
  CHECK(json_is_string(v));
  const char *s = json_string_value(v);
  size_t len = json_string_length(v);
  if (enc == SBX_ENC_BASE64) {
    size_t dl = 0;
    uint8_t *d = sbx_b64_decode(s, len, &dl);
    CHECK(d != NULL);
    CHECK(dl == n && (n == 0 || memcmp(d, p, n) == 0));
    free(d);
  } else {
    char *want = malloc(3 * n + 1);
    size_t wl = 0;
    CHECK(want != NULL);
    CHECK(sbx_utf8_sanitize(p, n, true, want, &wl) == n);
    CHECK(wl == len && memcmp(want, s, len) == 0);
    free(want);
  }
}

static void render(const uint8_t *data, size_t size) {
  if (size < 2)
    return;
  uint8_t flags = data[0];
  size_t split = data[1] % (size - 1);
  const uint8_t *bytes = data + 2;
  size_t n = size - 2, nout = split < n ? split : n;

  sbx_chunks out, err;
  build_chunks(&out, bytes, nout, data, size < 8 ? size : 8);
  build_chunks(&err, bytes + nout, n - nout, data + 1, size < 9 ? size - 1 : 8);

  exec_output o;
  memset(&o, 0, sizeof o);
  snprintf(o.exec_id, sizeof o.exec_id, "ex_0123456789abcdef");
  o.encoding = (flags & 1) ? SBX_ENC_BASE64 : SBX_ENC_UTF8;
  o.timed_out = (flags & 2) != 0;
  o.signal = (flags & 4) ? 9 : 0;
  o.exit_code = o.signal ? -1 : (int)(flags >> 3);
  o.timeout_ms = 1000;
  o.duration_ms = 1234;
  o.out = &out;
  o.err = &err;
  o.out_truncated = (flags & 8) != 0;
  o.err_truncated = (flags & 16) != 0;

  static const size_t steps[] = {1, 2, 3, 5, 7, 64, 333, 4096};
  size_t step = steps[(flags >> 5) & 7];
  exec_render *r = exec_render_new(&o);
  CHECK(r != NULL);
  size_t cap = 256, len = 0;
  char *json = malloc(cap);
  CHECK(json != NULL);
  for (;;) {
    if (cap - len < step) {
      cap = cap * 2 + step;
      json = realloc(json, cap);
      CHECK(json != NULL);
    }
    size_t got = exec_render_next(r, json + len, step);
    CHECK(got <= step);
    if (got == 0)
      break;
    len += got;
  }
  CHECK(exec_render_next(r, json, step) == 0); /* stays done */
  exec_render_free(r);

  json_error_t je;
  json_t *doc = json_loadb(json, len, JSON_ALLOW_NUL, &je);
  if (!doc) {
    fprintf(stderr, "fuzz_request: rendered reply is not JSON (%s): %.*s\n", je.text,
            (int)(len > 2000 ? 2000 : len), json);
    abort();
  }
  json_t *obj = o.timed_out ? json_object_get(doc, "error") : doc;
  CHECK(json_is_object(obj));
  if (o.timed_out)
    CHECK(!strcmp(json_string_value(json_object_get(obj, "kind")) ?: "", "exec_timeout"));
  else
    CHECK(json_integer_value(json_object_get(obj, "exit_code")) == o.exit_code);
  check_stream(obj, "stdout", bytes, nout, o.encoding);
  check_stream(obj, "stderr", bytes + nout, n - nout, o.encoding);
  json_decref(doc);
  free(json);
  sbx_chunks_free(&out);
  sbx_chunks_free(&err);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  parse_requests(data, size);
  render(data, size);
  return 0;
}
