/* buf.h - sbx_chunks: an append-only byte store made of fixed-size chunks.
 *
 * Collected exec output lives here: appending never copies what is already
 * stored (no realloc doubling, so a 100 MiB stream costs 100 MiB plus one
 * chunk, never 200), and readers walk the chunks in order.  The owner frees
 * it with sbx_chunks_free; it is not thread-safe.
 */
#ifndef SBX_COMMON_BUF_H
#define SBX_COMMON_BUF_H

#include <stddef.h>
#include <stdint.h>

#define SBX_CHUNK_SIZE (64u * 1024)

typedef struct sbx_chunk {
  struct sbx_chunk *next;
  size_t len;                     /* bytes used in data */
  uint8_t data[SBX_CHUNK_SIZE];
} sbx_chunk;

typedef struct sbx_chunks {
  sbx_chunk *head, *tail;
  size_t total; /* bytes stored */
} sbx_chunks;

/* Append n bytes; 0, or -1 when memory runs out (nothing partial is lost
 * from what was stored before). */
int sbx_chunks_append(sbx_chunks *c, const void *data, size_t n);
/* Copy out up to n bytes starting at byte offset off; returns bytes copied. */
size_t sbx_chunks_copy(const sbx_chunks *c, size_t off, void *out, size_t n);
/* Free every chunk and reset to empty. */
void sbx_chunks_free(sbx_chunks *c);

#endif
