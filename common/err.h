/* err.h - the one error convention of sbx.
 *
 * Every fallible function is `int fn(..., sbx_err *err)`: it returns < 0 on
 * failure and fills *err (kind, errno, message); it returns >= 0 on success
 * and leaves *err untouched.  `err` may be NULL when the caller does not care.
 * Error kinds are the SPEC's error kinds; the HTTP status of each kind is
 * decided in exactly one place, sbx_err_http_status().
 */
#ifndef SBX_COMMON_ERR_H
#define SBX_COMMON_ERR_H

#include <stdarg.h>

typedef enum sbx_err_kind {
  SBX_E_NONE = 0,
  SBX_E_INVALID_REQUEST,   /* 400 */
  SBX_E_UNAUTHORIZED,      /* 401 */
  SBX_E_FORBIDDEN,         /* 403 */
  SBX_E_NOT_FOUND,         /* 404 no such route */
  SBX_E_SANDBOX_NOT_FOUND, /* 404 */
  SBX_E_EXEC_NOT_FOUND,    /* 404 */
  SBX_E_METHOD_NOT_ALLOWED,/* 405 */
  SBX_E_SANDBOX_EXISTS,    /* 409 sandbox_already_exists */
  SBX_E_NOT_RUNNING,       /* 409 sandbox_not_running */
  SBX_E_PAYLOAD_TOO_LARGE, /* 413 */
  SBX_E_EXEC_FAILED,       /* 422 */
  SBX_E_RATE_LIMITED,      /* 429 */
  SBX_E_INTERNAL,          /* 500 */
  SBX_E_CAPACITY,          /* 503 */
  SBX_E_EXEC_TIMEOUT,      /* 504 */
  SBX_E_NOT_IMPLEMENTED,   /* 501: a route of a later version (the /ws side for now) */
  SBX_E__COUNT
} sbx_err_kind;

typedef struct sbx_err {
  sbx_err_kind kind;
  int errnum;          /* errno at the failure, 0 if none */
  char field[64];      /* offending request field for invalid_request, "" if none */
  char msg[512];       /* human-readable, no secrets */
} sbx_err;

/* Fill *err (if not NULL) and return -1.  The message is printf-formatted. */
int sbx_fail(sbx_err *err, sbx_err_kind kind, int errnum, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Same, naming the offending request field (for invalid_request). */
int sbx_fail_field(sbx_err *err, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Like sbx_fail with kind internal and errno appended as ": strerror". */
int sbx_fail_errno(sbx_err *err, int errnum, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The SPEC's wire name of a kind ("invalid_request", ...). */
const char *sbx_err_kind_name(sbx_err_kind kind);
/* The HTTP status of a kind: the only such mapping in the code base. */
int sbx_err_http_status(sbx_err_kind kind);

#endif
