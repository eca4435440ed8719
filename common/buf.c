#include "buf.h"

#include <stdlib.h>
#include <string.h>

int sbx_chunks_append(sbx_chunks *c, const void *data, size_t n) {
  const uint8_t *p = data;
  while (n > 0) {
    if (!c->tail || c->tail->len == SBX_CHUNK_SIZE) {
      sbx_chunk *k = malloc(sizeof *k);
      if (!k)
        return -1;
      k->next = NULL;
      k->len = 0;
      if (c->tail)
        c->tail->next = k;
      else
        c->head = k;
      c->tail = k;
    }
    size_t room = SBX_CHUNK_SIZE - c->tail->len;
    size_t take = n < room ? n : room;
    memcpy(c->tail->data + c->tail->len, p, take);
    c->tail->len += take;
    c->total += take;
    p += take;
    n -= take;
  }
  return 0;
}

size_t sbx_chunks_copy(const sbx_chunks *c, size_t off, void *out, size_t n) {
  size_t copied = 0;
  for (const sbx_chunk *k = c->head; k && copied < n; k = k->next) {
    if (off >= k->len) {
      off -= k->len;
      continue;
    }
    size_t take = k->len - off;
    if (take > n - copied)
      take = n - copied;
    memcpy((uint8_t *)out + copied, k->data + off, take);
    copied += take;
    off = 0;
  }
  return copied;
}

void sbx_chunks_free(sbx_chunks *c) {
  sbx_chunk *k = c->head;
  while (k) {
    sbx_chunk *next = k->next;
    free(k);
    k = next;
  }
  c->head = c->tail = NULL;
  c->total = 0;
}
