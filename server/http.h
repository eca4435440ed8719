/* http.h - libmicrohttpd glue: one http_req per request, routing, replies.
 *
 * A route handler runs in an MHD worker thread with the whole body read.
 * It answers with one of the http_reply_* calls, or posts a loop job with
 * http_suspend() and answers later from its resume function (which runs in
 * an MHD thread again once the loop has finished the job).
 *
 * Ownership: the http_req belongs to the MHD connection and is freed when
 * MHD reports the request complete; handlers never free it.
 */
#ifndef SBX_SERVER_HTTP_H
#define SBX_SERVER_HTTP_H

#include <jansson.h>
#include <microhttpd.h>
#include <stdbool.h>
#include <stdint.h>

#include "../common/err.h"
#include "auth.h"
#include "loop.h"

#define HTTP_MAX_PARAMS 2

typedef struct http_req http_req;
typedef enum MHD_Result (*http_resume_fn)(http_req *r);

struct http_req {
  struct MHD_Connection *conn;
  const char *method; /* MHD's strings, valid for the request's life */
  const char *url;
  char request_id[80];
  int64_t t0_ns;
  char *body; /* the request body, NUL-terminated */
  size_t body_len, body_cap;
  bool body_too_large;
  bool handled;
  int status; /* for the access log */
  char params[HTTP_MAX_PARAMS][160]; /* the {..} path segments, in order */
  auth_who who;         /* the caller (auth.h) */
  sbx_scope need;       /* what the matched route needs */
  char cors_origin[256];/* an allowed browser Origin to answer with CORS headers */
  /* async: a job for the loop and what to do when it is back */
  loop_job job;
  http_resume_fn on_resume;
  bool resumed;
  json_t *hold;                     /* a reference kept for the job's life */
  void *state;                      /* route-private, freed with state_free */
  void (*state_free)(void *state);
};

/* The MHD access handler and completion callback (server/main.c wires them). */
enum MHD_Result http_access(void *cls, struct MHD_Connection *conn, const char *url,
                            const char *method, const char *version, const char *upload_data,
                            size_t *upload_data_size, void **con_cls);
void http_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                    enum MHD_RequestTerminationCode toe);

/* Reply with a JSON object (stolen; NULL means an out-of-memory 500). */
enum MHD_Result http_reply_json(http_req *r, int status, json_t *obj);
/* Reply with the SPEC error shape for err; `extra` (may be NULL, stolen) is
 * merged into the "error" object (failure, exec_id, ...). */
enum MHD_Result http_reply_error(http_req *r, const sbx_err *err, json_t *extra);
/* Shorthand: fail with kind + message. */
enum MHD_Result http_reply_fail(http_req *r, sbx_err_kind kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Queue a response built by the caller (destroyed here), adding the common
 * headers (X-Request-Id, Content-Type if ctype, Retry-After for 429/503). */
enum MHD_Result http_queue(http_req *r, int status, struct MHD_Response *resp, const char *ctype);
/* Reply with bytes (copied) and a content type. */
enum MHD_Result http_reply_bytes(http_req *r, int status, const char *ctype, const void *data,
                                 size_t len);
/* Reply with an empty body (204). */
enum MHD_Result http_reply_empty(http_req *r, int status);
/* Reply with a body produced piece by piece by reader (MHD content reader). */
enum MHD_Result http_reply_stream(http_req *r, int status, const char *ctype,
                                  MHD_ContentReaderCallback reader, void *cls,
                                  MHD_ContentReaderFreeCallback free_cb);

/* Post r->job to the loop and suspend the request; on_resume answers it. */
enum MHD_Result http_suspend(http_req *r, http_resume_fn on_resume);

/* May the caller act on a sandbox with these labels at the route's scope?
 * If not, queues the 403 and returns false (*ret set). */
bool http_allow_sandbox(http_req *r, json_t *sandbox, enum MHD_Result *ret);

/* Is this browser Origin allowed: listed in --allow-origin ("*" = any) or
 * the same host:port the client asked for (Host)? */
bool http_origin_allowed(const char *origin, const char *host);

/* Query string value, or NULL. */
const char *http_query(http_req *r, const char *key);

#endif
