/* b64.h - base64 (RFC 4648, with padding), whole buffers. */
#ifndef SBX_COMMON_B64_H
#define SBX_COMMON_B64_H

#include <stddef.h>
#include <stdint.h>

/* Encode; a malloc'd NUL-terminated string (caller frees), *out_len its
 * length if out_len is not NULL; NULL on overflow or out of memory. */
char *sbx_b64_encode(const uint8_t *data, size_t n, size_t *out_len);
/* Decode (padding optional); a malloc'd buffer (caller frees), or NULL on
 * invalid input or out of memory. */
uint8_t *sbx_b64_decode(const char *s, size_t n, size_t *out_len);

#endif
