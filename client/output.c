/* libsbx: errors, buffers, encodings and the sbx_output object. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "client/internal.h"

/* ---- errors ------------------------------------------------------------------ */

static const char *const kind_names[] = {
    [SBX_ERR_NONE] = "none",
    [SBX_ERR_INVALID_REQUEST] = "invalid_request",
    [SBX_ERR_UNAUTHORIZED] = "unauthorized",
    [SBX_ERR_FORBIDDEN] = "forbidden",
    [SBX_ERR_NOT_FOUND] = "not_found",
    [SBX_ERR_SANDBOX_NOT_FOUND] = "sandbox_not_found",
    [SBX_ERR_EXEC_NOT_FOUND] = "exec_not_found",
    [SBX_ERR_METHOD_NOT_ALLOWED] = "method_not_allowed",
    [SBX_ERR_SANDBOX_ALREADY_EXISTS] = "sandbox_already_exists",
    [SBX_ERR_SANDBOX_NOT_RUNNING] = "sandbox_not_running",
    [SBX_ERR_PAYLOAD_TOO_LARGE] = "payload_too_large",
    [SBX_ERR_EXEC_FAILED] = "exec_failed",
    [SBX_ERR_RATE_LIMITED] = "rate_limited",
    [SBX_ERR_INTERNAL] = "internal",
    [SBX_ERR_CAPACITY] = "capacity",
    [SBX_ERR_EXEC_TIMEOUT] = "exec_timeout",
    [SBX_ERR_TRANSPORT] = "transport",
    [SBX_ERR_TIMEOUT] = "timeout",
    [SBX_ERR_UNKNOWN] = "unknown",
};

const char *sbx_error_kind_name(sbx_error_kind kind) {
  if ((unsigned)kind >= sizeof(kind_names) / sizeof(kind_names[0]) || !kind_names[kind])
    return "unknown";
  return kind_names[kind];
}

sbx_error_kind sbx_error_kind_from_name(const char *name) {
  if (!name)
    return SBX_ERR_UNKNOWN;
  for (size_t i = 1; i < sizeof(kind_names) / sizeof(kind_names[0]); i++)
    if (kind_names[i] && strcmp(kind_names[i], name) == 0)
      return (sbx_error_kind)i;
  return SBX_ERR_UNKNOWN;
}

static void copy_str(char *dst, size_t n, const char *src) {
  snprintf(dst, n, "%s", src ? src : "");
}

void sbxc_seterr(sbx_error *err, sbx_error_kind kind, const char *fmt, ...) {
  if (!err)
    return;
  memset(err, 0, sizeof *err);
  err->kind = kind;
  copy_str(err->kind_name, sizeof err->kind_name, sbx_error_kind_name(kind));
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err->message, sizeof err->message, fmt, ap);
  va_end(ap);
}

void sbxc_failure_from_json(sbx_failure *f, json_t *j) {
  memset(f, 0, sizeof *f);
  copy_str(f->kind, sizeof f->kind, json_string_value(json_object_get(j, "kind")));
  f->err_no = (int)json_integer_value(json_object_get(j, "errno"));
  copy_str(f->errno_name, sizeof f->errno_name, json_string_value(json_object_get(j, "errno_name")));
  copy_str(f->path, sizeof f->path, json_string_value(json_object_get(j, "path")));
  copy_str(f->stage, sizeof f->stage, json_string_value(json_object_get(j, "stage")));
  copy_str(f->message, sizeof f->message, json_string_value(json_object_get(j, "message")));
}

/* A field the error carries: inside "error" (what sbxd does) or beside it. */
static json_t *err_member(json_t *e, json_t *outer, const char *name) {
  json_t *v = json_object_get(e, name);
  return v ? v : json_object_get(outer, name);
}

static void err_fill(sbx_error *err, json_t *e, json_t *outer, int status) {
  const char *kind = json_string_value(json_object_get(e, "kind"));
  const char *msg = json_string_value(json_object_get(e, "message"));
  memset(err, 0, sizeof *err);
  err->kind = sbx_error_kind_from_name(kind);
  copy_str(err->kind_name, sizeof err->kind_name, kind ? kind : "unknown");
  err->http_status = status;
  copy_str(err->message, sizeof err->message, msg ? msg : "(no message)");
  copy_str(err->field, sizeof err->field, json_string_value(err_member(e, outer, "field")));
  copy_str(err->exec_id, sizeof err->exec_id, json_string_value(err_member(e, outer, "exec_id")));
  json_t *f = err_member(e, outer, "failure");
  if (json_is_object(f)) {
    err->has_failure = 1;
    sbxc_failure_from_json(&err->failure, f);
  }
}

void sbxc_err_from_json(sbx_error *err, json_t *e, int status) {
  if (err)
    err_fill(err, e, NULL, status);
}

void sbxc_err_from_reply(sbx_error *err, const sbxc_reply *r) {
  if (!err)
    return;
  json_error_t jerr;
  cleanup_json json_t *j =
      r->body.data ? json_loadb((const char *)r->body.data, r->body.len, 0, &jerr) : NULL;
  json_t *e = json_object_get(j, "error");
  if (json_is_object(e)) {
    err_fill(err, e, j, (int)r->status);
  } else {
    /* not the API's error shape (a proxy, a 501 page): keep the status */
    sbxc_seterr(err, SBX_ERR_TRANSPORT, "HTTP %ld: %.200s", r->status,
                r->body.data ? (const char *)r->body.data : "");
    err->http_status = (int)r->status;
  }
  if (r->retry_after[0])
    err->retry_after_s = atoi(r->retry_after);
}

/* ---- buffers ------------------------------------------------------------------- */

int cbuf_add(cbuf *b, const void *p, size_t n) {
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n + 1)
      cap *= 2;
    unsigned char *d = realloc(b->data, cap);
    if (!d)
      return -1;
    b->data = d;
    b->cap = cap;
  }
  if (n)
    memcpy(b->data + b->len, p, n);
  b->len += n;
  b->data[b->len] = 0;
  return 0;
}

void cbuf_free(cbuf *b) {
  free(b->data);
  memset(b, 0, sizeof *b);
}

/* ---- encodings ----------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at p (n bytes left), 0 if invalid. */
static size_t utf8_seq(const unsigned char *p, size_t n) {
  unsigned char c = p[0];
  if (c < 0x80)
    return 1;
  size_t len;
  uint32_t cp;
  if (c >= 0xC2 && c <= 0xDF) {
    len = 2;
    cp = c & 0x1F;
  } else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    cp = c & 0x0F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    cp = c & 0x07;
  } else {
    return 0;
  }
  if (n < len)
    return 0;
  for (size_t i = 1; i < len; i++) {
    if ((p[i] & 0xC0) != 0x80)
      return 0;
    cp = (cp << 6) | (p[i] & 0x3F);
  }
  if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
      (cp >= 0xD800 && cp <= 0xDFFF))
    return 0;
  return len;
}

char *sbxc_utf8_lossy(const unsigned char *p, size_t n) {
  cbuf b = {0};
  if (cbuf_add(&b, "", 0) < 0)
    return NULL;
  size_t i = 0;
  while (i < n) {
    size_t run = i;
    size_t l;
    while (run < n && (l = utf8_seq(p + run, n - run)) > 0)
      run += l;
    if (run > i && cbuf_add(&b, p + i, run - i) < 0)
      goto oom;
    i = run;
    if (i < n) {
      if (cbuf_add(&b, "\xEF\xBF\xBD", 3) < 0)
        goto oom;
      i++;
    }
  }
  return (char *)b.data;
oom:
  cbuf_free(&b);
  return NULL;
}

static const char b64chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *sbxc_b64_encode(const void *data, size_t n) {
  const unsigned char *p = data;
  char *out = malloc((n + 2) / 3 * 4 + 1);
  if (!out)
    return NULL;
  size_t o = 0;
  for (size_t i = 0; i < n; i += 3) {
    uint32_t v = (uint32_t)p[i] << 16;
    if (i + 1 < n)
      v |= (uint32_t)p[i + 1] << 8;
    if (i + 2 < n)
      v |= p[i + 2];
    out[o++] = b64chars[(v >> 18) & 63];
    out[o++] = b64chars[(v >> 12) & 63];
    out[o++] = i + 1 < n ? b64chars[(v >> 6) & 63] : '=';
    out[o++] = i + 2 < n ? b64chars[v & 63] : '=';
  }
  out[o] = 0;
  return out;
}

int sbxc_b64_decode(const char *s, unsigned char **out, size_t *out_len) {
  size_t n = strlen(s);
  unsigned char *d = malloc(n / 4 * 3 + 4);
  if (!d)
    return -1;
  size_t o = 0;
  uint32_t acc = 0;
  int bits = 0, pad = 0;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    int v;
    if (c == '=') {
      pad++;
      continue;
    }
    if (pad) { /* data after padding */
      free(d);
      return -1;
    }
    const char *q = c ? strchr(b64chars, c) : NULL;
    if (!q) {
      free(d);
      return -1;
    }
    v = (int)(q - b64chars);
    acc = (acc << 6) | (uint32_t)v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      d[o++] = (unsigned char)(acc >> bits);
    }
  }
  d[o] = 0;
  *out = d;
  *out_len = o;
  return 0;
}

/* ---- sbx_output ------------------------------------------------------------------ */

struct sbx_output {
  char exec_id[40];
  int exit_code, signal;
  bool out_trunc, err_trunc;
  long duration_ms;
  unsigned char *out_bytes, *err_bytes;
  size_t out_len, err_len;
  char *out_text, *err_text;
};

static unsigned char *dup_bytes(const unsigned char *p, size_t n) {
  unsigned char *d = malloc(n + 1);
  if (!d)
    return NULL;
  if (n)
    memcpy(d, p, n);
  d[n] = 0;
  return d;
}

sbx_output *sbxc_output_new(const char *exec_id, int exit_code, int sig, const unsigned char *out,
                            size_t out_len, const unsigned char *errb, size_t err_len,
                            bool out_trunc, bool err_trunc, long duration_ms) {
  sbx_output *o = calloc(1, sizeof *o);
  if (!o)
    return NULL;
  copy_str(o->exec_id, sizeof o->exec_id, exec_id);
  o->exit_code = exit_code;
  o->signal = sig;
  o->out_trunc = out_trunc;
  o->err_trunc = err_trunc;
  o->duration_ms = duration_ms;
  o->out_bytes = dup_bytes(out, out_len);
  o->err_bytes = dup_bytes(errb, err_len);
  o->out_len = out_len;
  o->err_len = err_len;
  o->out_text = sbxc_utf8_lossy(out, out_len);
  o->err_text = sbxc_utf8_lossy(errb, err_len);
  if (!o->out_bytes || !o->err_bytes || !o->out_text || !o->err_text) {
    sbx_output_free(o);
    return NULL;
  }
  return o;
}

/* One stream of an ExecOutput: base64 -> bytes, utf8 -> the text's bytes. */
static int output_stream(json_t *j, const char *name, bool b64, unsigned char **p, size_t *n) {
  const char *s = json_string_value(json_object_get(j, name));
  if (!s)
    s = "";
  if (b64)
    return sbxc_b64_decode(s, p, n);
  *n = strlen(s);
  *p = dup_bytes((const unsigned char *)s, *n);
  return *p ? 0 : -1;
}

sbx_output *sbxc_output_from_json(json_t *j, sbx_error *err) {
  const char *enc = json_string_value(json_object_get(j, "encoding"));
  bool b64 = enc && strcmp(enc, "base64") == 0;
  cleanup_cfree unsigned char *ob = NULL, *eb = NULL;
  size_t on = 0, en = 0;
  if (output_stream(j, "stdout", b64, &ob, &on) < 0 || output_stream(j, "stderr", b64, &eb, &en) < 0) {
    sbxc_seterr(err, SBX_ERR_TRANSPORT, "the server's output is not valid base64");
    return NULL;
  }
  json_t *sig = json_object_get(j, "signal");
  json_t *ec = json_object_get(j, "exit_code");
  json_t *dur = json_object_get(j, "duration_ms");
  sbx_output *o = sbxc_output_new(json_string_value(json_object_get(j, "exec_id")),
                                  ec ? (int)json_integer_value(ec) : -1,
                                  (int)json_integer_value(sig), ob, on, eb, en,
                                  json_is_true(json_object_get(j, "stdout_truncated")),
                                  json_is_true(json_object_get(j, "stderr_truncated")),
                                  dur ? (long)json_integer_value(dur) : -1);
  if (!o)
    sbxc_seterr(err, SBX_ERR_INTERNAL, "out of memory");
  return o;
}

const char *sbx_output_exec_id(const sbx_output *o) { return o->exec_id; }
int sbx_output_exit_code(const sbx_output *o) { return o->exit_code; }
int sbx_output_success(const sbx_output *o) { return o->exit_code == 0; }
int sbx_output_signal(const sbx_output *o) { return o->signal; }
const char *sbx_output_stdout(const sbx_output *o) { return o->out_text; }
const char *sbx_output_stderr(const sbx_output *o) { return o->err_text; }
const unsigned char *sbx_output_stdout_bytes(const sbx_output *o, size_t *len) {
  if (len)
    *len = o->out_len;
  return o->out_bytes;
}
const unsigned char *sbx_output_stderr_bytes(const sbx_output *o, size_t *len) {
  if (len)
    *len = o->err_len;
  return o->err_bytes;
}
int sbx_output_stdout_truncated(const sbx_output *o) { return o->out_trunc; }
int sbx_output_stderr_truncated(const sbx_output *o) { return o->err_trunc; }
long sbx_output_duration_ms(const sbx_output *o) { return o->duration_ms; }

void sbx_output_free(sbx_output *o) {
  if (!o)
    return;
  free(o->out_bytes);
  free(o->err_bytes);
  free(o->out_text);
  free(o->err_text);
  free(o);
}
