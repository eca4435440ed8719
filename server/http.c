/* http.c - libmicrohttpd glue: request lifecycle, routing, replies, access log. */
#include "http.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <strings.h>
#include <stdio.h>
#include <string.h>

#include "../common/util.h"
#include "../routes/routes.h"
#include "server.h"

#define MAX_SEGMENTS 8

static bool valid_request_id(const char *s) {
  size_t n = s ? strlen(s) : 0;
  if (n == 0 || n > 72)
    return false;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
          c == '-' || c == '_' || c == '.' || c == ':'))
      return false;
  }
  return true;
}

static void req_free(http_req *r) {
  auth_who_clear(&r->who);
  if (r->state_free)
    r->state_free(r->state);
  loop_job_clear(&r->job);
  json_decref(r->hold);
  free(r->body);
  free(r);
}

/* ----------------------------------------------------------------- replies */

enum MHD_Result http_queue(http_req *r, int status, struct MHD_Response *resp,
                           const char *ctype) {
  if (!resp)
    return MHD_NO;
  MHD_add_response_header(resp, "X-Request-Id", r->request_id);
  if (ctype)
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
  if (status == 503 || status == 429)
    MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, "1");
  if (r->cors_origin[0]) {
    MHD_add_response_header(resp, "Access-Control-Allow-Origin", r->cors_origin);
    MHD_add_response_header(resp, "Vary", "Origin");
    MHD_add_response_header(resp, "Access-Control-Expose-Headers",
                            "X-Request-Id, X-Sbx-Offset, X-Sbx-Next-Offset, X-Sbx-Complete, "
                            "Retry-After");
  }
  r->status = status;
  r->handled = true;
  enum MHD_Result ret = MHD_queue_response(r->conn, (unsigned)status, resp);
  MHD_destroy_response(resp);
  return ret;
}

enum MHD_Result http_reply_bytes(http_req *r, int status, const char *ctype, const void *data,
                                 size_t len) {
  struct MHD_Response *resp =
      MHD_create_response_from_buffer(len, (void *)data, MHD_RESPMEM_MUST_COPY);
  return http_queue(r, status, resp, ctype);
}

enum MHD_Result http_reply_empty(http_req *r, int status) {
  return http_queue(r, status, MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT), NULL);
}

enum MHD_Result http_reply_json(http_req *r, int status, json_t *obj) {
  char *s = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
  json_decref(obj);
  if (!s) {
    static const char oom[] = "{\"error\":{\"kind\":\"internal\",\"message\":\"out of memory\"}}";
    return http_reply_bytes(r, 500, "application/json", oom, sizeof oom - 1);
  }
  size_t n = strlen(s);
  s[n] = '\n'; /* a trailing newline keeps curl output readable; the NUL is dropped */
  struct MHD_Response *resp = MHD_create_response_from_buffer(n + 1, s, MHD_RESPMEM_MUST_FREE);
  return http_queue(r, status, resp, "application/json");
}

enum MHD_Result http_reply_error(http_req *r, const sbx_err *err, json_t *extra) {
  json_t *e = json_pack("{s:s, s:s}", "kind", sbx_err_kind_name(err->kind), "message", err->msg);
  if (e && err->field[0])
    json_object_set_new(e, "field", json_string(err->field));
  if (e && extra)
    json_object_update(e, extra);
  json_decref(extra);
  return http_reply_json(r, sbx_err_http_status(err->kind), json_pack("{s:o*}", "error", e));
}

enum MHD_Result http_reply_fail(http_req *r, sbx_err_kind kind, const char *fmt, ...) {
  sbx_err err = {.kind = kind};
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err.msg, sizeof err.msg, fmt, ap);
  va_end(ap);
  return http_reply_error(r, &err, NULL);
}

enum MHD_Result http_reply_stream(http_req *r, int status, const char *ctype,
                                  MHD_ContentReaderCallback reader, void *cls,
                                  MHD_ContentReaderFreeCallback free_cb) {
  struct MHD_Response *resp =
      MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 64 * 1024, reader, cls, free_cb);
  if (!resp)
    free_cb(cls);
  return http_queue(r, status, resp, ctype);
}

const char *http_query(http_req *r, const char *key) {
  return MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, key);
}

bool http_allow_sandbox(http_req *r, json_t *sandbox, enum MHD_Result *ret) {
  sbx_err err;
  if (auth_allow(&r->who, r->need, json_object_get(sandbox, "labels"), &err) == 0)
    return true;
  *ret = http_reply_error(r, &err, NULL);
  return false;
}

bool http_origin_allowed(const char *origin, const char *host) {
  for (int i = 0; i < g_server->cfg.n_allow_origin; i++)
    if (!strcmp(g_server->cfg.allow_origin[i], "*") ||
        !strcasecmp(g_server->cfg.allow_origin[i], origin))
      return true;
  const char *o = strstr(origin, "://");
  return o && host && !strcasecmp(o + 3, host);
}

static bool client_is_loopback(struct MHD_Connection *conn) {
  const union MHD_ConnectionInfo *ci =
      MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
  if (!ci || !ci->client_addr)
    return false;
  const struct sockaddr *sa = ci->client_addr;
  if (sa->sa_family == AF_INET)
    return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
  if (sa->sa_family == AF_INET6) {
    const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
    return IN6_IS_ADDR_LOOPBACK(a) ||
           (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
  }
  return false;
}

/* ------------------------------------------------------------------- async */

static void job_done(loop_job *job) {
  http_req *r = job->ud;
  r->resumed = true;
  MHD_resume_connection(r->conn);
}

enum MHD_Result http_suspend(http_req *r, http_resume_fn on_resume) {
  r->on_resume = on_resume;
  r->job.done = job_done;
  r->job.ud = r;
  r->handled = true;
  /* Suspend first: the loop may finish the job before this handler returns. */
  MHD_suspend_connection(r->conn);
  loop_post(g_server->loop, &r->job);
  return MHD_YES;
}

/* ----------------------------------------------------------------- routing */

static int split(const char *url, char segs[MAX_SEGMENTS][160]) {
  int n = 0;
  const char *p = url;
  if (*p != '/')
    return -1;
  while (*p) {
    p++; /* skip '/' */
    const char *end = strchr(p, '/');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    if (n == MAX_SEGMENTS || len >= 160)
      return -1;
    memcpy(segs[n], p, len);
    segs[n][len] = '\0';
    n++;
    p += len;
  }
  return n;
}

/* Does the route's path match the url's segments?  Fills r->params. */
static bool path_match(const char *pattern, char segs[MAX_SEGMENTS][160], int nseg, http_req *r) {
  char pat[MAX_SEGMENTS][160];
  int np = split(pattern, pat);
  if (np != nseg)
    return false;
  int param = 0;
  for (int i = 0; i < np; i++) {
    if (strcmp(pat[i], "{}") == 0) {
      if (segs[i][0] == '\0')
        return false;
      if (r && param < HTTP_MAX_PARAMS)
        snprintf(r->params[param++], sizeof r->params[0], "%s", segs[i]);
    } else if (strcmp(pat[i], segs[i]) != 0)
      return false;
  }
  return true;
}

static enum MHD_Result dispatch(http_req *r) {
  char segs[MAX_SEGMENTS][160];
  int nseg = split(r->url, segs);
  const route *hit = NULL;
  char allow[128] = "";
  for (size_t i = 0; nseg >= 0 && i < routes_count; i++) {
    const route *rt = &routes_table[i];
    if (!path_match(rt->path, segs, nseg, NULL))
      continue;
    if (strcmp(rt->method, r->method) == 0) {
      hit = rt;
      path_match(rt->path, segs, nseg, r);
      break;
    }
    size_t n = strlen(allow);
    snprintf(allow + n, sizeof allow - n, "%s%s", n ? ", " : "", rt->method);
  }
  const char *origin = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Origin");
  if (origin) {
    /* a browser: only allowed Origins may call (no cross-site requests that
     * skip preflight, e.g. a text/plain POST, ever reach a route) */
    const char *host = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Host");
    if (!http_origin_allowed(origin, host))
      return http_reply_fail(r, SBX_E_FORBIDDEN, "Origin %.100s is not allowed (sbxd --allow-origin)",
                             origin);
    snprintf(r->cors_origin, sizeof r->cors_origin, "%s", origin);
  }
  if (!strcmp(r->method, "OPTIONS") && (hit || allow[0])) {
    /* CORS preflight (or a plain OPTIONS): which methods, which headers */
    char methods[160];
    snprintf(methods, sizeof methods, "%s%s%s", hit ? hit->method : "", hit && allow[0] ? ", " : "",
             allow);
    struct MHD_Response *resp = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
    if (resp) {
      MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, methods);
      if (r->cors_origin[0]) {
        MHD_add_response_header(resp, "Access-Control-Allow-Methods", methods);
        MHD_add_response_header(resp, "Access-Control-Allow-Headers",
                                "Authorization, Content-Type, X-Request-Id");
        MHD_add_response_header(resp, "Access-Control-Max-Age", "600");
      }
    }
    return http_queue(r, 204, resp, NULL);
  }
  if (!hit && allow[0]) {
    sbx_err err = {.kind = SBX_E_METHOD_NOT_ALLOWED};
    snprintf(err.msg, sizeof err.msg, "%s is not allowed on %s (allowed: %s)", r->method, r->url,
             allow);
    json_t *obj = json_pack("{s:{s:s,s:s}}", "error", "kind", "method_not_allowed", "message",
                            err.msg);
    cleanup_free char *s = json_dumps(obj, JSON_COMPACT);
    json_decref(obj);
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(strlen(s), s, MHD_RESPMEM_MUST_COPY);
    if (resp)
      MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, allow);
    return http_queue(r, 405, resp, "application/json");
  }
  if (!hit)
    return http_reply_fail(r, SBX_E_NOT_FOUND, "no route for %s %s", r->method, r->url);
  r->need = hit->scope;
  sbx_err aerr;
  if (!auth_enabled() && !g_server->cfg.insecure && !client_is_loopback(r->conn))
    return http_reply_fail(r, SBX_E_FORBIDDEN, "this server has no API keys, so it serves only "
                                                "loopback clients (sbxd keys create)");
  if (hit->scope != SCOPE_NONE) {
    const char *key =
        auth_bearer(MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Authorization"));
    if (auth_check(key, &r->who, &aerr) < 0 || auth_allow(&r->who, hit->scope, NULL, &aerr) < 0 ||
        auth_rate(&r->who, &aerr) < 0)
      return http_reply_error(r, &aerr, NULL);
  }
  json_t *body = NULL;
  if (hit->body == BODY_JSON) {
    if (r->body_len == 0) {
      body = json_object(); /* `curl -XPOST url` with no body means "all defaults" */
    } else {
      json_error_t je;
      body = json_loadb(r->body, r->body_len, JSON_REJECT_DUPLICATES, &je);
      if (!body)
        return http_reply_fail(r, SBX_E_INVALID_REQUEST,
                               "malformed JSON body: %s (line %d, column %d)", je.text, je.line,
                               je.column);
      if (!json_is_object(body)) {
        json_decref(body);
        return http_reply_fail(r, SBX_E_INVALID_REQUEST, "the body must be a JSON object");
      }
    }
  }
  enum MHD_Result ret = hit->fn(r, body);
  json_decref(body);
  return ret;
}

/* ------------------------------------------------------------ MHD handlers */

enum MHD_Result http_access(void *cls, struct MHD_Connection *conn, const char *url,
                            const char *method, const char *version, const char *upload_data,
                            size_t *upload_data_size, void **con_cls) {
  http_req *r = *con_cls;
  if (!r) {
    r = calloc(1, sizeof *r);
    if (!r)
      return MHD_NO;
    *con_cls = r;
    r->conn = conn;
    r->url = url;
    r->method = method;
    r->t0_ns = sbx_mono_ns();
    r->job.fd = -1;
    atomic_fetch_add(&g_server->inflight, 1);
    const char *rid = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Request-Id");
    if (valid_request_id(rid))
      snprintf(r->request_id, sizeof r->request_id, "%s", rid);
    else
      sbx_new_id("req_", r->request_id, sizeof r->request_id);
    if (atomic_load(&g_server->stopping))
      return http_reply_fail(r, SBX_E_CAPACITY, "the server is shutting down");
    const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
    if (cl && strtoull(cl, NULL, 10) > g_server->cfg.max_body)
      /* Answer before reading the body; MHD then closes the connection. */
      return http_reply_fail(r, SBX_E_PAYLOAD_TOO_LARGE,
                             "request body of %s bytes is over the limit of %zu bytes", cl,
                             g_server->cfg.max_body);
    return MHD_YES;
  }
  if (*upload_data_size > 0) {
    size_t n = *upload_data_size;
    *upload_data_size = 0;
    if (r->handled || r->body_too_large)
      return MHD_YES;
    if (r->body_len + n > g_server->cfg.max_body) {
      r->body_too_large = true; /* keep reading (and dropping) to answer cleanly */
      free(r->body);
      r->body = NULL;
      r->body_len = r->body_cap = 0;
      return MHD_YES;
    }
    if (r->body_len + n + 1 > r->body_cap) {
      size_t cap = r->body_cap ? r->body_cap * 2 : 4096;
      while (cap < r->body_len + n + 1)
        cap *= 2;
      char *nb = realloc(r->body, cap);
      if (!nb)
        return MHD_NO;
      r->body = nb;
      r->body_cap = cap;
    }
    memcpy(r->body + r->body_len, upload_data, n);
    r->body_len += n;
    r->body[r->body_len] = '\0';
    return MHD_YES;
  }
  if (r->resumed) {
    r->resumed = false;
    return r->on_resume(r);
  }
  if (r->handled)
    return MHD_YES;
  if (r->body_too_large)
    return http_reply_fail(r, SBX_E_PAYLOAD_TOO_LARGE, "request body is over the limit of %zu bytes",
                           g_server->cfg.max_body);
  return dispatch(r);
}

void http_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                    enum MHD_RequestTerminationCode toe) {
  http_req *r = *con_cls;
  if (!r)
    return;
  int64_t us = (sbx_mono_ns() - r->t0_ns) / 1000;
  /* One structured line per request (the access log). */
  log_info("access method=%s path=%s status=%d duration_ms=%lld.%03lld request_id=%s%s", r->method,
           r->url, toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? r->status : 499,
           (long long)(us / 1000), (long long)(us % 1000), r->request_id,
           toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" : " aborted=true");
  atomic_fetch_sub(&g_server->inflight, 1);
  req_free(r);
  *con_cls = NULL;
}
