#include "utf8.h"

#include <string.h>

int sbx_utf8_classify(const uint8_t *in, size_t n) {
  int b0 = in[0];
  if (b0 < 0x80)
    return 1;
  int need;
  int lo = 0x80, hi = 0xBF; /* the range of the second byte */
  if (b0 >= 0xC2 && b0 <= 0xDF)
    need = 1;
  else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 2;
    if (b0 == 0xE0)
      lo = 0xA0; /* overlong */
    else if (b0 == 0xED)
      hi = 0x9F; /* surrogates */
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 3;
    if (b0 == 0xF0)
      lo = 0x90; /* overlong */
    else if (b0 == 0xF4)
      hi = 0x8F; /* beyond U+10FFFF */
  } else {
    return -1; /* C0, C1, F5..FF, a lone continuation byte */
  }
  for (int i = 1; i <= need; i++) {
    if ((size_t)i >= n)
      return 0;
    int b = in[i];
    int l = i == 1 ? lo : 0x80, h = i == 1 ? hi : 0xBF;
    if (b < l || b > h)
      return -i;
  }
  return need + 1;
}

size_t sbx_utf8_sanitize(const uint8_t *in, size_t n, bool final, char *out, size_t *out_len) {
  size_t i = 0, o = 0;
  while (i < n) {
    int k = sbx_utf8_classify(in + i, n - i);
    if (k == 0 && !final)
      break;
    if (k > 0) {
      memcpy(out + o, in + i, (size_t)k);
      o += (size_t)k;
      i += (size_t)k;
      continue;
    }
    memcpy(out + o, "\xEF\xBF\xBD", 3);
    o += 3;
    i += k == 0 ? n - i : (size_t)-k;
  }
  *out_len = o;
  return i;
}
