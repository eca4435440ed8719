#include "err.h"

#include <stdio.h>
#include <string.h>

static const struct {
  const char *name;
  int status;
} kinds[SBX_E__COUNT] = {
    [SBX_E_NONE] = {"none", 200},
    [SBX_E_INVALID_REQUEST] = {"invalid_request", 400},
    [SBX_E_UNAUTHORIZED] = {"unauthorized", 401},
    [SBX_E_FORBIDDEN] = {"forbidden", 403},
    [SBX_E_NOT_FOUND] = {"not_found", 404},
    [SBX_E_SANDBOX_NOT_FOUND] = {"sandbox_not_found", 404},
    [SBX_E_EXEC_NOT_FOUND] = {"exec_not_found", 404},
    [SBX_E_METHOD_NOT_ALLOWED] = {"method_not_allowed", 405},
    [SBX_E_SANDBOX_EXISTS] = {"sandbox_already_exists", 409},
    [SBX_E_NOT_RUNNING] = {"sandbox_not_running", 409},
    [SBX_E_PAYLOAD_TOO_LARGE] = {"payload_too_large", 413},
    [SBX_E_EXEC_FAILED] = {"exec_failed", 422},
    [SBX_E_RATE_LIMITED] = {"rate_limited", 429},
    [SBX_E_INTERNAL] = {"internal", 500},
    [SBX_E_CAPACITY] = {"capacity", 503},
    [SBX_E_EXEC_TIMEOUT] = {"exec_timeout", 504},
    [SBX_E_NOT_IMPLEMENTED] = {"not_implemented", 501},
};

static int vfail(sbx_err *err, sbx_err_kind kind, int errnum, const char *field,
                 const char *fmt, va_list ap) {
  if (!err)
    return -1;
  err->kind = kind;
  err->errnum = errnum;
  snprintf(err->field, sizeof err->field, "%s", field ? field : "");
  vsnprintf(err->msg, sizeof err->msg, fmt, ap);
  return -1;
}

int sbx_fail(sbx_err *err, sbx_err_kind kind, int errnum, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vfail(err, kind, errnum, NULL, fmt, ap);
  va_end(ap);
  return -1;
}

int sbx_fail_field(sbx_err *err, const char *field, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vfail(err, SBX_E_INVALID_REQUEST, 0, field, fmt, ap);
  va_end(ap);
  return -1;
}

int sbx_fail_errno(sbx_err *err, int errnum, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vfail(err, SBX_E_INTERNAL, errnum, NULL, fmt, ap);
  va_end(ap);
  if (err && errnum) {
    size_t n = strlen(err->msg);
    snprintf(err->msg + n, sizeof err->msg - n, ": %s", strerror(errnum));
  }
  return -1;
}

const char *sbx_err_kind_name(sbx_err_kind kind) {
  return (kind >= 0 && kind < SBX_E__COUNT) ? kinds[kind].name : "internal";
}

int sbx_err_http_status(sbx_err_kind kind) {
  return (kind > 0 && kind < SBX_E__COUNT) ? kinds[kind].status : 500;
}
