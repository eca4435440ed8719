/* b64.c - base64 (RFC 4648, standard alphabet) for request bodies and replies.
 *
 * The streaming renderer in render.c has its own chunk-aware encoder; these
 * two are the whole-buffer forms (stdin_b64 in requests, the agent's EXEC
 * payload, WebSocket stdin); the agent links this file too. */
#include "b64.h"

#include <stdint.h>

#include <stdlib.h>

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *sbx_b64_encode(const uint8_t *data, size_t n, size_t *out_len) {
  if (n > (SIZE_MAX - 1) / 4 * 3 - 3)
    return NULL;
  size_t len = (n + 2) / 3 * 4;
  char *out = malloc(len + 1);
  if (!out)
    return NULL;
  char *p = out;
  size_t i = 0;
  for (; i + 3 <= n; i += 3) {
    uint32_t v = (uint32_t)data[i] << 16 | (uint32_t)data[i + 1] << 8 | data[i + 2];
    *p++ = b64_alphabet[v >> 18];
    *p++ = b64_alphabet[(v >> 12) & 63];
    *p++ = b64_alphabet[(v >> 6) & 63];
    *p++ = b64_alphabet[v & 63];
  }
  if (i < n) {
    uint32_t v = (uint32_t)data[i] << 16 | (i + 1 < n ? (uint32_t)data[i + 1] << 8 : 0);
    *p++ = b64_alphabet[v >> 18];
    *p++ = b64_alphabet[(v >> 12) & 63];
    *p++ = i + 1 < n ? b64_alphabet[(v >> 6) & 63] : '=';
    *p++ = '=';
  }
  *p = '\0';
  if (out_len)
    *out_len = len;
  return out;
}

static int b64_value(unsigned char c) {
  if (c >= 'A' && c <= 'Z')
    return c - 'A';
  if (c >= 'a' && c <= 'z')
    return c - 'a' + 26;
  if (c >= '0' && c <= '9')
    return c - '0' + 52;
  if (c == '+')
    return 62;
  if (c == '/')
    return 63;
  return -1;
}

/* Strict alphabet, no whitespace.  Padding is optional (some encoders drop
 * it), but when present it must be exactly what the length needs and only at
 * the end; a lone trailing symbol (length % 4 == 1) carries no whole byte and
 * is rejected. */
uint8_t *sbx_b64_decode(const char *s, size_t n, size_t *out_len) {
  size_t pad = 0;
  if (n % 4 == 0 && n > 0 && s[n - 1] == '=') {
    pad = (n >= 2 && s[n - 2] == '=') ? 2 : 1;
  }
  size_t body = n - pad; /* symbols that carry data */
  if (body % 4 == 1)
    return NULL;
  size_t len = body / 4 * 3 + (body % 4 ? body % 4 - 1 : 0);
  uint8_t *out = malloc(len ? len : 1);
  if (!out)
    return NULL;
  size_t o = 0;
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = 0; i < body; i++) {
    int v = b64_value((unsigned char)s[i]);
    if (v < 0) {
      free(out);
      return NULL;
    }
    acc = (acc << 6) | (uint32_t)v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[o++] = (uint8_t)(acc >> bits);
      acc &= (1u << bits) - 1;
    }
  }
  if (out_len)
    *out_len = o;
  return out;
}
