/* sha256.h - SHA-256 (FIPS 180-4), for hashing API keys at rest. */
#ifndef SBX_COMMON_SHA256_H
#define SBX_COMMON_SHA256_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Hash n bytes into out[32]. */
void sbx_sha256(const void *data, size_t n, uint8_t out[32]);
/* Hash into 64 lowercase hex digits + NUL. */
void sbx_sha256_hex(const void *data, size_t n, char out[65]);
/* Compare n bytes in time that depends only on n. */
bool sbx_ct_equal(const void *a, const void *b, size_t n);

#endif
