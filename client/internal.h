/* libsbx internals shared by rest.c, stream.c and output.c; not installed. */
#ifndef SBX_CLIENT_INTERNAL_H
#define SBX_CLIENT_INTERNAL_H

#include <jansson.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>

#include "client/sbx.h"

/* cleanup attributes (the same idiom as common/util.h; libsbx stands alone) */
static inline void sbxc_freep(void *p) { free(*(void **)p); }
static inline void sbxc_jsonp(json_t **p) { json_decref(*p); }
#define cleanup_cfree __attribute__((cleanup(sbxc_freep)))
#define cleanup_json __attribute__((cleanup(sbxc_jsonp)))
static inline void *sbxc_steal(void *pp) {
  void **p = (void **)pp;
  void *v = *p;
  *p = NULL;
  return v;
}
#define steal_ptr(pp) ((__typeof__(*(pp)))sbxc_steal(pp))

struct sbx_client {
  char *url;     /* no trailing slash */
  char *key;     /* NULL = no auth */
  long connect_ms;
  long request_ms;
};

/* A growable byte buffer, always NUL-terminated when data != NULL. */
typedef struct cbuf {
  unsigned char *data;
  size_t len, cap;
} cbuf;

int cbuf_add(cbuf *b, const void *p, size_t n);
void cbuf_free(cbuf *b);

/* Fill err (if not NULL) with a client-side kind and a formatted message. */
__attribute__((format(printf, 3, 4))) void sbxc_seterr(sbx_error *err, sbx_error_kind kind,
                                                       const char *fmt, ...);
/* Fill err from a JSON error object {"kind", "message", ...} (the value of "error"). */
void sbxc_err_from_json(sbx_error *err, json_t *e, int status);
void sbxc_failure_from_json(sbx_failure *f, json_t *j);

/* A REST call: method, path (already escaped, with query), optional body.
 * Returns the HTTP status (>= 100) with *reply filled, or -1 with err
 * (transport/timeout).  Non-2xx replies are NOT turned into errors here. */
typedef struct sbxc_reply {
  long status;
  cbuf body;
  char next_offset[32], offset[32], complete[8], retry_after[16];
} sbxc_reply;
int sbxc_http(sbx_client *c, const char *method, const char *path, const void *body,
              size_t body_len, const char *content_type, sbxc_reply *reply, sbx_error *err);
/* Fill err from a non-2xx reply. */
void sbxc_err_from_reply(sbx_error *err, const sbxc_reply *r);
void sbxc_reply_free(sbxc_reply *r);

/* URL-escape one path segment or query value (malloc'd). */
char *sbxc_escape(const char *s);

/* Build the ExecRequest/ShellRequest body members from opts into o.
 * for_ws adds detach; stdin_pipe is the caller's business. */
int sbxc_exec_body(json_t *o, const sbx_exec_opts *opts, bool for_ws, sbx_error *err);
/* Add "K=V" strings to a JSON object under key. */
int sbxc_add_kv(json_t *o, const char *key, const char *const *kv, sbx_error *err);

/* sbx_output made from bytes (the stream's collector and the REST reply). */
sbx_output *sbxc_output_new(const char *exec_id, int exit_code, int sig, const unsigned char *out,
                            size_t out_len, const unsigned char *errb, size_t err_len,
                            bool out_trunc, bool err_trunc, long duration_ms);
/* sbx_output from an ExecOutput-shaped JSON object (also an exec_timeout error). */
sbx_output *sbxc_output_from_json(json_t *j, sbx_error *err);

/* Lossy UTF-8: invalid sequences become U+FFFD; malloc'd, NUL-terminated. */
char *sbxc_utf8_lossy(const unsigned char *p, size_t n);
/* base64 decode (malloc'd, NUL-terminated); -1 on bad input. */
int sbxc_b64_decode(const char *s, unsigned char **out, size_t *out_len);
char *sbxc_b64_encode(const void *p, size_t n);

#endif
