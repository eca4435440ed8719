/* utf8.h - UTF-8 validation with U+FFFD substitution of maximal subparts
 * (the Unicode-recommended practice), shared by the REST renderer and the
 * WebSocket JSON frames. */
#ifndef SBX_COMMON_UTF8_H
#define SBX_COMMON_UTF8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Classify the sequence starting at in[0] (n >= 1 bytes available):
 *  > 0  a valid sequence of that many bytes (1..4);
 *  < 0  invalid: -(length of its maximal subpart), at least 1 byte;
 *  0    in[] ends inside a sequence that may still turn out valid. */
int sbx_utf8_classify(const uint8_t *in, size_t n);

/* Copy in[0..n) to out, each invalid subpart replaced by U+FFFD.  When
 * !final, a trailing incomplete sequence is left unconsumed (for the next
 * call); when final, it is replaced too.  out needs room for 3 * n bytes.
 * Returns the number of input bytes consumed; *out_len the bytes written. */
size_t sbx_utf8_sanitize(const uint8_t *in, size_t n, bool final, char *out, size_t *out_len);

#endif
