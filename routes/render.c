/* render.c - streaming ExecOutput / exec_timeout JSON.
 *
 * The reply is five parts: a fixed prefix, the stdout string body, a fixed
 * middle, the stderr string body, a fixed suffix.  The fixed parts are
 * formatted once at _new; the string bodies are produced on the fly from the
 * chunk lists, so a reply of any size costs one small cursor.  Every encoder
 * step first drains a few-byte "pending" buffer, which is what lets a caller
 * pull the reply one byte at a time and lets a UTF-8 sequence or a base64
 * group straddle a chunk boundary.
 */
#include "request.h"

#include "../common/utf8.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { PART_HEAD, PART_OUT, PART_MID, PART_ERR, PART_TAIL, PART_DONE };

/* A read position in an sbx_chunks, limited to the bytes it held at _new. */
typedef struct src_cursor {
  const sbx_chunk *k; /* chunk holding pos, NULL at the end */
  size_t off;         /* offset in k */
  size_t pos, total;  /* absolute position and the end */
} src_cursor;

struct exec_render {
  sbx_encoding enc;
  int part;
  char *text[3]; /* head, mid, tail */
  size_t text_len[3], text_off;
  src_cursor src;
  uint8_t pending[8]; /* encoded bytes not yet handed out */
  size_t pend_len, pend_off;
  const sbx_chunks *streams[2];
};

static void src_init(src_cursor *c, const sbx_chunks *s) {
  c->k = s ? s->head : NULL;
  c->off = 0;
  c->pos = 0;
  c->total = s ? s->total : 0;
  while (c->k && c->k->len == 0)
    c->k = c->k->next;
}

/* Byte at pos+i, or -1 past the end (looks into following chunks). */
static int src_peek(const src_cursor *c, size_t i) {
  if (c->pos + i >= c->total)
    return -1;
  const sbx_chunk *k = c->k;
  size_t off = c->off + i;
  while (k && off >= k->len) {
    off -= k->len;
    k = k->next;
  }
  return k ? k->data[off] : -1;
}

static void src_advance(src_cursor *c, size_t n) {
  c->pos += n;
  c->off += n;
  while (c->k && c->off >= c->k->len) {
    c->off -= c->k->len;
    c->k = c->k->next;
  }
}

/* Contiguous bytes available from the cursor without crossing a chunk. */
static size_t src_span(const src_cursor *c, const uint8_t **p) {
  if (!c->k || c->pos >= c->total)
    return 0;
  size_t n = c->k->len - c->off;
  if (n > c->total - c->pos)
    n = c->total - c->pos;
  *p = c->k->data + c->off;
  return n;
}

/* ---- UTF-8 -> JSON string body ---- */

/* Bytes that go out verbatim: printable ASCII but the two JSON specials. */
static inline bool json_plain(uint8_t b) { return b >= 0x20 && b < 0x80 && b != '"' && b != '\\'; }

/* Length of the valid UTF-8 sequence starting at the cursor (2..4), or, when
 * it is invalid, -(length of its maximal subpart) (at least 1). */
static int utf8_seq(const src_cursor *c, int b0) {
  uint8_t buf[4];
  size_t n = 0;
  for (int b = b0; n < sizeof buf && b >= 0; b = src_peek(c, n))
    buf[n++] = (uint8_t)b;
  int k = sbx_utf8_classify(buf, n);
  return k == 0 ? -(int)n : k; /* cut off by the end of the stream */
}

/* Encode the next unit (one escaped byte, one character or one replacement)
 * into pending. */
static void utf8_step(exec_render *r) {
  src_cursor *c = &r->src;
  int b0 = src_peek(c, 0);
  uint8_t *p = r->pending;
  r->pend_off = 0;
  if (b0 < 0x80) {
    static const char hex[] = "0123456789abcdef";
    size_t n = 0;
    switch (b0) {
    case '"': p[n++] = '\\', p[n++] = '"'; break;
    case '\\': p[n++] = '\\', p[n++] = '\\'; break;
    case '\b': p[n++] = '\\', p[n++] = 'b'; break;
    case '\f': p[n++] = '\\', p[n++] = 'f'; break;
    case '\n': p[n++] = '\\', p[n++] = 'n'; break;
    case '\r': p[n++] = '\\', p[n++] = 'r'; break;
    case '\t': p[n++] = '\\', p[n++] = 't'; break;
    default:
      if (b0 < 0x20) {
        memcpy(p, "\\u00", 4);
        n = 4;
        p[n++] = (uint8_t)hex[b0 >> 4];
        p[n++] = (uint8_t)hex[b0 & 15];
      } else {
        p[n++] = (uint8_t)b0;
      }
    }
    r->pend_len = n;
    src_advance(c, 1);
    return;
  }
  int len = utf8_seq(c, b0);
  if (len > 0) {
    for (int i = 0; i < len; i++)
      p[i] = (uint8_t)src_peek(c, (size_t)i);
    r->pend_len = (size_t)len;
    src_advance(c, (size_t)len);
  } else {
    memcpy(p, "\xEF\xBF\xBD", 3);
    r->pend_len = 3;
    src_advance(c, (size_t)-len);
  }
}

/* Fill out with the string body; returns bytes written. */
static size_t utf8_fill(exec_render *r, char *out, size_t max) {
  size_t n = 0;
  while (n < max && r->src.pos < r->src.total) {
    const uint8_t *s;
    size_t avail = src_span(&r->src, &s);
    size_t run = 0, lim = avail < max - n ? avail : max - n;
    /* fast path: a run of plain ASCII goes straight out; anything else is
     * one escape, character or replacement through pending */
    while (run < lim && json_plain(s[run]))
      run++;
    if (run > 0) {
      memcpy(out + n, s, run);
      n += run;
      src_advance(&r->src, run);
      continue;
    }
    utf8_step(r);
    size_t take = r->pend_len < max - n ? r->pend_len : max - n;
    memcpy(out + n, r->pending, take);
    n += take;
    r->pend_off = take;
    if (take < r->pend_len)
      break; /* out is full; the rest waits in pending */
  }
  return n;
}

/* ---- bytes -> base64 string body ---- */

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static void b64_group(const uint8_t *in, size_t n, uint8_t out[4]) {
  uint32_t v = (uint32_t)in[0] << 16 | (n > 1 ? (uint32_t)in[1] << 8 : 0) | (n > 2 ? in[2] : 0);
  out[0] = (uint8_t)b64_alphabet[v >> 18];
  out[1] = (uint8_t)b64_alphabet[(v >> 12) & 63];
  out[2] = n > 1 ? (uint8_t)b64_alphabet[(v >> 6) & 63] : '=';
  out[3] = n > 2 ? (uint8_t)b64_alphabet[v & 63] : '=';
}

static size_t b64_fill(exec_render *r, char *out, size_t max) {
  size_t n = 0;
  while (n < max && r->src.pos < r->src.total) {
    const uint8_t *s;
    size_t avail = src_span(&r->src, &s);
    /* fast path: whole groups inside this chunk straight into out */
    size_t groups = avail / 3, room = (max - n) / 4;
    if (groups > room)
      groups = room;
    if (groups > 0) {
      for (size_t g = 0; g < groups; g++)
        b64_group(s + 3 * g, 3, (uint8_t *)out + n + 4 * g);
      n += 4 * groups;
      src_advance(&r->src, 3 * groups);
      continue;
    }
    /* a group across a chunk boundary, the final partial group, or too
     * little room in out: go through pending */
    uint8_t in[3];
    size_t k = 0;
    for (; k < 3; k++) {
      int b = src_peek(&r->src, k);
      if (b < 0)
        break;
      in[k] = (uint8_t)b;
    }
    b64_group(in, k, r->pending);
    r->pend_len = 4;
    src_advance(&r->src, k);
    size_t take = max - n < 4 ? max - n : 4;
    memcpy(out + n, r->pending, take);
    n += take;
    r->pend_off = take;
    if (take < 4)
      break;
  }
  return n;
}

/* ---- the fixed parts ---- */

/* Small growable string for the fixed parts. */
typedef struct sbuf {
  char *s;
  size_t len, cap;
  bool oom;
} sbuf;

static void sbuf_add(sbuf *b, const char *s, size_t n) {
  if (b->oom)
    return;
  if (b->len + n + 1 > b->cap) {
    size_t cap = (b->len + n + 1) * 2;
    char *p = realloc(b->s, cap);
    if (!p) {
      b->oom = true;
      return;
    }
    b->s = p;
    b->cap = cap;
  }
  memcpy(b->s + b->len, s, n);
  b->len += n;
  b->s[b->len] = '\0';
}

static void sbuf_addf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sbuf_addf(sbuf *b, const char *fmt, ...) {
  char tmp[256];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (n < 0 || (size_t)n >= sizeof tmp) {
    b->oom = true; /* never happens with the short formats used here */
    return;
  }
  sbuf_add(b, tmp, (size_t)n);
}

/* A short string of ours (the exec id) as a JSON string; anything that is
 * not plain ASCII is dropped, as ids never contain it. */
static void sbuf_add_json_str(sbuf *b, const char *s) {
  sbuf_add(b, "\"", 1);
  for (; *s; s++)
    if (json_plain((uint8_t)*s))
      sbuf_add(b, s, 1);
  sbuf_add(b, "\"", 1);
}

static char *sbuf_take(sbuf *b, size_t *len) {
  if (b->oom) {
    free(b->s);
    return NULL;
  }
  *len = b->len;
  return b->s ? b->s : strdup("");
}

exec_render *exec_render_new(const exec_output *o) {
  exec_render *r = calloc(1, sizeof *r);
  if (!r)
    return NULL;
  r->enc = o->encoding;
  r->streams[0] = o->out;
  r->streams[1] = o->err;
  char exec_id[sizeof o->exec_id + 1];
  memcpy(exec_id, o->exec_id, sizeof o->exec_id);
  exec_id[sizeof o->exec_id] = '\0';
  const char *enc = o->encoding == SBX_ENC_BASE64 ? "base64" : "utf8";
  bool success = o->exit_code == 0 && !o->timed_out;

  sbuf head = {0}, mid = {0}, tail = {0};
  if (o->timed_out) {
    sbuf_addf(&head,
              "{\"error\":{\"kind\":\"exec_timeout\",\"message\":\"exec timed out after %lld ms\","
              "\"exec_id\":",
              (long long)o->timeout_ms);
  } else {
    sbuf_addf(&head, "{\"exec_id\":");
  }
  sbuf_add_json_str(&head, exec_id);
  sbuf_addf(&head, ",\"exit_code\":%d,\"success\":%s,\"signal\":", o->exit_code,
            success ? "true" : "false");
  if (o->signal)
    sbuf_addf(&head, "%d", o->signal);
  else
    sbuf_addf(&head, "null");
  sbuf_addf(&head, ",\"stdout\":\"");
  sbuf_addf(&mid, "\",\"stderr\":\"");
  sbuf_addf(&tail,
            "\",\"encoding\":\"%s\",\"stdout_truncated\":%s,\"stderr_truncated\":%s,"
            "\"duration_ms\":%lld}%s",
            enc, o->out_truncated ? "true" : "false", o->err_truncated ? "true" : "false",
            (long long)o->duration_ms, o->timed_out ? "}" : "");

  r->text[0] = sbuf_take(&head, &r->text_len[0]);
  r->text[1] = sbuf_take(&mid, &r->text_len[1]);
  r->text[2] = sbuf_take(&tail, &r->text_len[2]);
  if (!r->text[0] || !r->text[1] || !r->text[2]) {
    exec_render_free(r);
    return NULL;
  }
  r->part = PART_HEAD;
  return r;
}

void exec_render_free(exec_render *r) {
  if (!r)
    return;
  for (int i = 0; i < 3; i++)
    free(r->text[i]);
  free(r);
}

size_t exec_render_next(exec_render *r, char *buf, size_t max) {
  size_t n = 0;
  while (n < max && r->part != PART_DONE) {
    switch (r->part) {
    case PART_HEAD:
    case PART_MID:
    case PART_TAIL: {
      int t = r->part / 2; /* HEAD 0, MID 2, TAIL 4 -> text 0, 1, 2 */
      size_t left = r->text_len[t] - r->text_off;
      size_t take = left < max - n ? left : max - n;
      memcpy(buf + n, r->text[t] + r->text_off, take);
      n += take;
      r->text_off += take;
      if (r->text_off == r->text_len[t]) {
        r->text_off = 0;
        r->part++;
        if (r->part == PART_OUT || r->part == PART_ERR)
          src_init(&r->src, r->streams[r->part == PART_ERR]);
      }
      break;
    }
    case PART_OUT:
    case PART_ERR: {
      if (r->pend_off < r->pend_len) {
        size_t left = r->pend_len - r->pend_off;
        size_t take = left < max - n ? left : max - n;
        memcpy(buf + n, r->pending + r->pend_off, take);
        n += take;
        r->pend_off += take;
        break;
      }
      r->pend_off = r->pend_len = 0;
      if (r->src.pos >= r->src.total) {
        r->part++;
        break;
      }
      n += r->enc == SBX_ENC_BASE64 ? b64_fill(r, buf + n, max - n)
                                    : utf8_fill(r, buf + n, max - n);
      break;
    }
    }
  }
  return n;
}
