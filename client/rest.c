/* libsbx: the client, REST through libcurl (one easy handle per call, so a
 * client may be shared by threads), sandboxes and exec records. */
#include <curl/curl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "client/internal.h"

/* ---- client ------------------------------------------------------------------ */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;
static void curl_init(void) { curl_init_rc = curl_global_init(CURL_GLOBAL_ALL); }

sbx_client *sbx_client_new(const char *base_url, const char *api_key, sbx_error *err) {
  if (!base_url || (strncmp(base_url, "http://", 7) != 0 && strncmp(base_url, "https://", 8) != 0)) {
    sbxc_seterr(err, SBX_ERR_INVALID_REQUEST, "base URL must start with http:// or https:// (got %s)",
                base_url ? base_url : "NULL");
    return NULL;
  }
  const char *hostpart = strstr(base_url, "://") + 3;
  if (!*hostpart || *hostpart == '/') {
    sbxc_seterr(err, SBX_ERR_INVALID_REQUEST, "base URL has no host: %s", base_url);
    return NULL;
  }
  pthread_once(&curl_once, curl_init);
  if (curl_init_rc != CURLE_OK) {
    sbxc_seterr(err, SBX_ERR_TRANSPORT, "curl_global_init: %s", curl_easy_strerror(curl_init_rc));
    return NULL;
  }
  sbx_client *c = calloc(1, sizeof *c);
  if (!c || !(c->url = strdup(base_url)) || (api_key && *api_key && !(c->key = strdup(api_key)))) {
    sbx_client_free(c);
    sbxc_seterr(err, SBX_ERR_INTERNAL, "out of memory");
    return NULL;
  }
  size_t n = strlen(c->url);
  while (n > 0 && c->url[n - 1] == '/')
    c->url[--n] = 0;
  c->connect_ms = 10000;
  c->request_ms = 0;
  return c;
}

void sbx_client_free(sbx_client *c) {
  if (!c)
    return;
  free(c->url);
  free(c->key);
  free(c);
}

void sbx_client_set_timeouts(sbx_client *c, long connect_ms, long request_ms) {
  c->connect_ms = connect_ms > 0 ? connect_ms : 10000;
  c->request_ms = request_ms > 0 ? request_ms : 0;
}

const char *sbx_client_url(const sbx_client *c) { return c->url; }

char *sbxc_escape(const char *s) {
  static const char hex[] = "0123456789ABCDEF";
  size_t n = strlen(s);
  char *o = malloc(n * 3 + 1), *p = o;
  if (!o)
    return NULL;
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
        c == '_' || c == '.' || c == '~') {
      *p++ = (char)c;
    } else {
      *p++ = '%';
      *p++ = hex[c >> 4];
      *p++ = hex[c & 15];
    }
  }
  *p = 0;
  return o;
}

/* ---- HTTP ------------------------------------------------------------------------ */

static size_t on_body(char *p, size_t sz, size_t n, void *ud) {
  cbuf *b = ud;
  return cbuf_add(b, p, sz * n) < 0 ? 0 : sz * n;
}

static void header_value(const char *line, size_t n, const char *name, char *out, size_t outsz) {
  size_t nl = strlen(name);
  if (n <= nl + 1 || strncasecmp(line, name, nl) != 0 || line[nl] != ':')
    return;
  const char *v = line + nl + 1;
  const char *end = line + n;
  while (v < end && (*v == ' ' || *v == '\t'))
    v++;
  while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' '))
    end--;
  snprintf(out, outsz, "%.*s", (int)(end - v), v);
}

static size_t on_header(char *p, size_t sz, size_t n, void *ud) {
  sbxc_reply *r = ud;
  size_t len = sz * n;
  if (len >= 5 && strncmp(p, "HTTP/", 5) == 0) { /* a new reply (after 100-continue) */
    r->offset[0] = r->next_offset[0] = r->complete[0] = r->retry_after[0] = 0;
    return len;
  }
  header_value(p, len, "X-Sbx-Offset", r->offset, sizeof r->offset);
  header_value(p, len, "X-Sbx-Next-Offset", r->next_offset, sizeof r->next_offset);
  header_value(p, len, "X-Sbx-Complete", r->complete, sizeof r->complete);
  header_value(p, len, "Retry-After", r->retry_after, sizeof r->retry_after);
  return len;
}

static void slist_freep(struct curl_slist **l) { curl_slist_free_all(*l); }
static void easy_freep(CURL **e) {
  if (*e)
    curl_easy_cleanup(*e);
}

int sbxc_http(sbx_client *c, const char *method, const char *path, const void *body,
              size_t body_len, const char *content_type, sbxc_reply *reply, sbx_error *err) {
  memset(reply, 0, sizeof *reply);
  __attribute__((cleanup(easy_freep))) CURL *e = curl_easy_init();
  if (!e) {
    sbxc_seterr(err, SBX_ERR_INTERNAL, "curl_easy_init failed");
    return -1;
  }
  cleanup_cfree char *url = NULL;
  if (asprintf(&url, "%s%s", c->url, path) < 0) {
    url = NULL;
    sbxc_seterr(err, SBX_ERR_INTERNAL, "out of memory");
    return -1;
  }
  __attribute__((cleanup(slist_freep))) struct curl_slist *hdrs = NULL;
  char line[4200];
  if (c->key) {
    snprintf(line, sizeof line, "Authorization: Bearer %s", c->key);
    hdrs = curl_slist_append(hdrs, line);
  }
  if (body) {
    snprintf(line, sizeof line, "Content-Type: %s", content_type ? content_type : "application/json");
    hdrs = curl_slist_append(hdrs, line);
  }
  hdrs = curl_slist_append(hdrs, "Expect:"); /* no 100-continue round trip */
  hdrs = curl_slist_append(hdrs, "Accept: application/json");
  curl_easy_setopt(e, CURLOPT_URL, url);
  curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, hdrs);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, c->connect_ms);
  if (c->request_ms > 0)
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, c->request_ms);
  curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
  if (body) {
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
  } else if (strcmp(method, "POST") == 0) {
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, "");
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)0);
  }
  if (strcmp(method, "HEAD") == 0)
    curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, &reply->body);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, reply);
  CURLcode rc = curl_easy_perform(e);
  if (rc != CURLE_OK) {
    sbxc_seterr(err, rc == CURLE_OPERATION_TIMEDOUT ? SBX_ERR_TIMEOUT : SBX_ERR_TRANSPORT,
                "%s %s: %s", method, url, curl_easy_strerror(rc));
    sbxc_reply_free(reply);
    return -1;
  }
  curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &reply->status);
  if (!reply->body.data)
    cbuf_add(&reply->body, "", 0);
  return (int)reply->status;
}

void sbxc_reply_free(sbxc_reply *r) { cbuf_free(&r->body); }

static void reply_freep(sbxc_reply *r) { sbxc_reply_free(r); }
#define cleanup_reply __attribute__((cleanup(reply_freep)))

/* A JSON call: body (may be NULL) serialized, reply parsed.  Returns the
 * parsed 2xx reply (NULL body -> JSON null is not returned: an empty 2xx
 * yields json_null()), or NULL with err filled (API error or transport). */
static json_t *call_json(sbx_client *c, const char *method, const char *path, json_t *body,
                         long *status, sbx_error *err) {
  cleanup_cfree char *txt = body ? json_dumps(body, JSON_COMPACT) : NULL;
  if (body && !txt) {
    sbxc_seterr(err, SBX_ERR_INTERNAL, "out of memory");
    return NULL;
  }
  cleanup_reply sbxc_reply r;
  if (sbxc_http(c, method, path, txt, txt ? strlen(txt) : 0, NULL, &r, err) < 0)
    return NULL;
  if (status)
    *status = r.status;
  if (r.status < 200 || r.status > 299) {
    sbxc_err_from_reply(err, &r);
    return NULL;
  }
  if (r.body.len == 0)
    return json_null();
  json_error_t je;
  json_t *j = json_loadb((const char *)r.body.data, r.body.len, 0, &je);
  if (!j)
    sbxc_seterr(err, SBX_ERR_TRANSPORT, "%s %s: reply is not JSON: %s", method, path, je.text);
  return j;
}

/* ---- health ------------------------------------------------------------------------ */

int sbx_health(sbx_client *c, sbx_error *err) {
  cleanup_json json_t *j = call_json(c, "GET", "/v1/health", NULL, NULL, err);
  if (!j)
    return -1;
  const char *st = json_string_value(json_object_get(j, "status"));
  if (!st || strcmp(st, "ok") != 0) {
    sbxc_seterr(err, SBX_ERR_TRANSPORT, "health: status is not ok");
    return -1;
  }
  return 0;
}

/* ---- request bodies ------------------------------------------------------------------ */

int sbxc_add_kv(json_t *o, const char *key, const char *const *kv, sbx_error *err) {
  if (!kv)
    return 0;
  json_t *m = json_object();
  if (!m || json_object_set_new(o, key, m) < 0) {
    sbxc_seterr(err, SBX_ERR_INTERNAL, "out of memory");
    return -1;
  }
  for (; *kv; kv++) {
    const char *eq = strchr(*kv, '=');
    if (!eq || eq == *kv) {
      sbxc_seterr(err, SBX_ERR_INVALID_REQUEST, "%s entry \"%s\" is not K=V", key, *kv);
      snprintf(err ? err->field : (char[1]){0}, err ? sizeof err->field : 1, "%s", key);
      return -1;
    }
    cleanup_cfree char *k = strndup(*kv, (size_t)(eq - *kv));
    if (!k || json_object_set_new(m, k, json_string(eq + 1)) < 0) {
      sbxc_seterr(err, SBX_ERR_INVALID_REQUEST, "%s entry \"%s\" is not valid UTF-8", key, *kv);
      return -1;
    }
  }
  return 0;
}

static int set_str(json_t *o, const char *k, const char *v, sbx_error *err) {
  if (!v)
    return 0;
  json_t *s = json_string(v);
  if (!s) {
    sbxc_seterr(err, SBX_ERR_INVALID_REQUEST, "%s is not valid UTF-8", k);
    return -1;
  }
  json_object_set_new(o, k, s);
  return 0;
}

int sbxc_exec_body(json_t *o, const sbx_exec_opts *opts, bool for_ws, sbx_error *err) {
  if (!opts) {
    if (!for_ws)
      json_object_set_new(o, "encoding", json_string("base64"));
    return 0;
  }
  if (set_str(o, "cwd", opts->cwd, err) < 0 || sbxc_add_kv(o, "env", opts->env, err) < 0 ||
      set_str(o, "user", opts->user, err) < 0)
    return -1;
  if (opts->timeout_ms < 0) {
    sbxc_seterr(err, SBX_ERR_INVALID_REQUEST, "timeout_ms must be >= 0");
    return -1;
  }
  if (opts->timeout_ms)
    json_object_set_new(o, "timeout_ms", json_integer(opts->timeout_ms));
  if (opts->stdin_data) {
    cleanup_cfree char *b = sbxc_b64_encode(opts->stdin_data, opts->stdin_len);
    if (!b) {
      sbxc_seterr(err, SBX_ERR_INTERNAL, "out of memory");
      return -1;
    }
    json_object_set_new(o, "stdin_b64", json_string(b));
  }
  if (!for_ws)
    json_object_set_new(o, "encoding", json_string(opts->encoding ? opts->encoding : "base64"));
  else if (opts->encoding)
    json_object_set_new(o, "encoding", json_string(opts->encoding));
  if (opts->max_output_bytes)
    json_object_set_new(o, "max_output_bytes", json_integer(opts->max_output_bytes));
  if (opts->tty)
    json_object_set_new(o, "tty", json_true());
  if (opts->rows)
    json_object_set_new(o, "rows", json_integer(opts->rows));
  if (opts->cols)
    json_object_set_new(o, "cols", json_integer(opts->cols));
  if (for_ws && opts->detach)
    json_object_set_new(o, "detach", json_true());
  return 0;
}

/* ---- sandboxes -------------------------------------------------------------------------- */

struct sbx_sandbox {
  json_t *j;
  char *json;
};

static sbx_sandbox *sandbox_wrap(json_t *j, sbx_error *err) {
  if (!json_is_object(j) || !json_is_string(json_object_get(j, "id"))) {
    sbxc_seterr(err, SBX_ERR_TRANSPORT, "reply is not a sandbox object");
    return NULL;
  }
  sbx_sandbox *s = calloc(1, sizeof *s);
  if (!s || !(s->json = json_dumps(j, JSON_COMPACT))) {
    free(s);
    sbxc_seterr(err, SBX_ERR_INTERNAL, "out of memory");
    return NULL;
  }
  s->j = json_incref(j);
  return s;
}

void sbx_sandbox_free(sbx_sandbox *s) {
  if (!s)
    return;
  json_decref(s->j);
  free(s->json);
  free(s);
}

sbx_sandbox *sbx_sandbox_create(sbx_client *c, const sbx_create_opts *o, sbx_error *err) {
  cleanup_json json_t *b = json_object();
  if (o) {
    if (set_str(b, "name", o->name, err) < 0 || set_str(b, "image", o->image, err) < 0 ||
        sbxc_add_kv(b, "env", o->env, err) < 0 || set_str(b, "workdir", o->workdir, err) < 0 ||
        set_str(b, "shell", o->shell, err) < 0 || set_str(b, "network", o->network, err) < 0 ||
        sbxc_add_kv(b, "labels", o->labels, err) < 0 || set_str(b, "driver", o->driver, err) < 0)
      return NULL;
    if (o->memory_mib || o->cpus != 0 || o->pids || o->disk_mib) {
      json_t *l = json_object();
      json_object_set_new(b, "limits", l);
      if (o->memory_mib)
        json_object_set_new(l, "memory_mib", json_integer(o->memory_mib));
      if (o->cpus != 0)
        json_object_set_new(l, "cpus", json_real(o->cpus));
      if (o->pids)
        json_object_set_new(l, "pids", json_integer(o->pids));
      if (o->disk_mib)
        json_object_set_new(l, "disk_mib", json_integer(o->disk_mib));
    }
    if (o->idle_timeout_s)
      json_object_set_new(b, "idle_timeout_s", json_integer(o->idle_timeout_s));
    if (o->max_duration_s)
      json_object_set_new(b, "max_duration_s", json_integer(o->max_duration_s));
    if (o->replace)
      json_object_set_new(b, "replace", json_true());
  }
  cleanup_json json_t *j = call_json(c, "POST", "/v1/sandboxes", b, NULL, err);
  return j ? sandbox_wrap(j, err) : NULL;
}

static sbx_sandbox *sandbox_call(sbx_client *c, const char *method, const char *ref,
                                 const char *action, sbx_error *err) {
  if (!ref || !*ref) {
    sbxc_seterr(err, SBX_ERR_INVALID_REQUEST, "empty sandbox reference");
    return NULL;
  }
  cleanup_cfree char *e = sbxc_escape(ref);
  cleanup_cfree char *path = NULL;
  if (!e || asprintf(&path, "/v1/sandboxes/%s%s", e, action) < 0) {
    path = NULL;
    sbxc_seterr(err, SBX_ERR_INTERNAL, "out of memory");
    return NULL;
  }
  cleanup_json json_t *j = call_json(c, method, path, NULL, NULL, err);
  return j ? sandbox_wrap(j, err) : NULL;
}

sbx_sandbox *sbx_sandbox_get(sbx_client *c, const char *ref, sbx_error *err) {
  return sandbox_call(c, "GET", ref, "", err);
}
sbx_sandbox *sbx_sandbox_stop(sbx_client *c, const char *ref, sbx_error *err) {
  return sandbox_call(c, "POST", ref, "/stop", err);
}
sbx_sandbox *sbx_sandbox_start(sbx_client *c, const char *ref, sbx_error *err) {
  return sandbox_call(c, "POST", ref, "/start", err);
}

/* GET path into *r; -1 (err filled from the reply) unless it is a 200. */
static int get_ok(sbx_client *c, const char *path, sbxc_reply *r, sbx_error *err) {
  if (sbxc_http(c, "GET", path, NULL, 0, NULL, r, err) < 0)
    return -1;
  if (r->status != 200) {
    sbxc_err_from_reply(err, r);
    return -1;
  }
  return 0;
}

/* "{base}/{escaped id}{suffix}" or NULL (err filled; what names the id). */
static char *obj_path(const char *base, const char *what, const char *id, const char *suffix,
                      sbx_error *err) {
  if (!id || !*id) {
    sbxc_seterr(err, SBX_ERR_INVALID_REQUEST, "empty %s", what);
    return NULL;
  }
  cleanup_cfree char *e = sbxc_escape(id);
  char *p = NULL;
  if (!e || asprintf(&p, "%s/%s%s", base, e, suffix) < 0) {
    sbxc_seterr(err, SBX_ERR_INTERNAL, "out of memory");
    return NULL;
  }
  return p;
}

int sbx_sandbox_remove(sbx_client *c, const char *ref, sbx_error *err) {
  cleanup_cfree char *path = obj_path("/v1/sandboxes", "sandbox reference", ref, "", err);
  if (!path)
    return -1;
  cleanup_json json_t *j = call_json(c, "DELETE", path, NULL, NULL, err);
  return j ? 0 : -1;
}

int sbx_sandbox_logs(sbx_client *c, const char *ref, long tail_bytes, unsigned char **data,
                     size_t *len, sbx_error *err) {
  *data = NULL;
  *len = 0;
  char suffix[64] = "/logs";
  if (tail_bytes > 0)
    snprintf(suffix, sizeof suffix, "/logs?tail_bytes=%ld", tail_bytes);
  cleanup_cfree char *p = obj_path("/v1/sandboxes", "sandbox reference", ref, suffix, err);
  if (!p)
    return -1;
  cleanup_reply sbxc_reply r;
  if (get_ok(c, p, &r, err) < 0)
    return -1;
  *len = r.body.len;
  *data = steal_ptr(&r.body.data);
  return 0;
}

static const char *jstr(json_t *j, const char *k) { return json_string_value(json_object_get(j, k)); }
static json_t *jlim(const sbx_sandbox *s, const char *k) {
  return json_object_get(json_object_get(s->j, "limits"), k);
}

const char *sbx_sandbox_id(const sbx_sandbox *s) { return jstr(s->j, "id"); }
const char *sbx_sandbox_name(const sbx_sandbox *s) { return jstr(s->j, "name"); }
const char *sbx_sandbox_state(const sbx_sandbox *s) { return jstr(s->j, "state"); }
const char *sbx_sandbox_image(const sbx_sandbox *s) { return jstr(s->j, "image"); }
const char *sbx_sandbox_workdir(const sbx_sandbox *s) { return jstr(s->j, "workdir"); }
const char *sbx_sandbox_shell(const sbx_sandbox *s) { return jstr(s->j, "shell"); }
const char *sbx_sandbox_network(const sbx_sandbox *s) { return jstr(s->j, "network"); }
const char *sbx_sandbox_driver(const sbx_sandbox *s) { return jstr(s->j, "driver"); }
const char *sbx_sandbox_accelerator(const sbx_sandbox *s) { return jstr(s->j, "accelerator"); }
const char *sbx_sandbox_created_at(const sbx_sandbox *s) { return jstr(s->j, "created_at"); }
const char *sbx_sandbox_started_at(const sbx_sandbox *s) { return jstr(s->j, "started_at"); }
const char *sbx_sandbox_stopped_at(const sbx_sandbox *s) { return jstr(s->j, "stopped_at"); }
const char *sbx_sandbox_error(const sbx_sandbox *s) { return jstr(s->j, "error"); }
long sbx_sandbox_memory_mib(const sbx_sandbox *s) { return (long)json_integer_value(jlim(s, "memory_mib")); }
double sbx_sandbox_cpus(const sbx_sandbox *s) { return json_number_value(jlim(s, "cpus")); }
long sbx_sandbox_pids(const sbx_sandbox *s) { return (long)json_integer_value(jlim(s, "pids")); }
long sbx_sandbox_disk_mib(const sbx_sandbox *s) { return (long)json_integer_value(jlim(s, "disk_mib")); }
long sbx_sandbox_idle_timeout_s(const sbx_sandbox *s) {
  return (long)json_integer_value(json_object_get(s->j, "idle_timeout_s"));
}
long sbx_sandbox_max_duration_s(const sbx_sandbox *s) {
  return (long)json_integer_value(json_object_get(s->j, "max_duration_s"));
}
const char *sbx_sandbox_env(const sbx_sandbox *s, const char *key) {
  return jstr(json_object_get(s->j, "env"), key);
}
const char *sbx_sandbox_label(const sbx_sandbox *s, const char *key) {
  return jstr(json_object_get(s->j, "labels"), key);
}
const char *sbx_sandbox_json(const sbx_sandbox *s) { return s->json; }

/* One page of a list route (sandboxes or execs): the items, wrapped by the
 * caller's wrap(), the next cursor and the reply as received. */
typedef struct page {
  void **items;
  size_t n;
  char *cursor;
  char *json;
  void (*drop)(void *); /* frees one item */
} page;

static void page_free(page *p) {
  if (!p)
    return;
  for (size_t i = 0; i < p->n; i++)
    p->drop(p->items[i]);
  free(p->items);
  free(p->cursor);
  free(p->json);
  free(p);
}

/* Append "&name=escaped(value)" to a query string being built in b. */
static int query_add(cbuf *b, const char *name, const char *value) {
  cleanup_cfree char *e = sbxc_escape(value);
  if (!e)
    return -1;
  const char *sep = b->len ? "&" : "?";
  return cbuf_add(b, sep, 1) < 0 || cbuf_add(b, name, strlen(name)) < 0 || cbuf_add(b, "=", 1) < 0 ||
                 cbuf_add(b, e, strlen(e)) < 0
             ? -1
             : 0;
}

static void cbuf_freep(cbuf *b) { cbuf_free(b); }

/* GET base?state=&label=...&limit=&cursor= (base already escaped) as a page;
 * NULL with err filled. */
static page *page_get(sbx_client *c, const char *base, const char *state,
                      const char *const *labels, int limit, const char *cursor,
                      void *(*wrap)(json_t *, sbx_error *), void (*drop)(void *),
                      sbx_error *err) {
  __attribute__((cleanup(cbuf_freep))) cbuf q = {0};
  char num[32];
  int bad = 0;
  if (state)
    bad |= query_add(&q, "state", state);
  for (const char *const *l = labels; l && *l; l++)
    bad |= query_add(&q, "label", *l);
  if (limit) {
    snprintf(num, sizeof num, "%d", limit);
    bad |= query_add(&q, "limit", num);
  }
  if (cursor)
    bad |= query_add(&q, "cursor", cursor);
  cleanup_cfree char *path = NULL;
  if (bad || asprintf(&path, "%s%s", base, q.data ? (char *)q.data : "") < 0) {
    path = NULL;
    sbxc_seterr(err, SBX_ERR_INTERNAL, "out of memory");
    return NULL;
  }
  cleanup_json json_t *j = call_json(c, "GET", path, NULL, NULL, err);
  if (!j)
    return NULL;
  json_t *data = json_object_get(j, "data");
  if (!json_is_array(data)) {
    sbxc_seterr(err, SBX_ERR_TRANSPORT, "list reply has no data array");
    return NULL;
  }
  page *p = calloc(1, sizeof *p);
  if (p)
    p->drop = drop;
  if (!p || !(p->items = calloc(json_array_size(data) + 1, sizeof *p->items)) ||
      !(p->json = json_dumps(j, JSON_COMPACT))) {
    page_free(p);
    sbxc_seterr(err, SBX_ERR_INTERNAL, "out of memory");
    return NULL;
  }
  size_t i;
  json_t *v;
  json_array_foreach(data, i, v) {
    if (!(p->items[p->n] = wrap(v, err))) {
      page_free(p);
      return NULL;
    }
    p->n++;
  }
  const char *cur = jstr(j, "next_cursor");
  if (cur && *cur)
    p->cursor = strdup(cur);
  return p;
}

struct sbx_sandbox_list {
  page p;
};

static void *sandbox_wrap_any(json_t *j, sbx_error *err) { return sandbox_wrap(j, err); }
static void sandbox_free_any(void *s) { sbx_sandbox_free(s); }

/* Both list types are a page under their own name (the page is their only
 * member, so a page pointer is one of them). */
void sbx_sandbox_list_free(sbx_sandbox_list *l) { page_free(l ? &l->p : NULL); }

sbx_sandbox_list *sbx_sandbox_list_get(sbx_client *c, const sbx_list_opts *o, sbx_error *err) {
  page *p = page_get(c, "/v1/sandboxes", o ? o->state : NULL, o ? o->labels : NULL,
                     o ? o->limit : 0, o ? o->cursor : NULL, sandbox_wrap_any, sandbox_free_any,
                     err);
  return (sbx_sandbox_list *)p;
}

size_t sbx_sandbox_list_count(const sbx_sandbox_list *l) { return l->p.n; }
const sbx_sandbox *sbx_sandbox_list_at(const sbx_sandbox_list *l, size_t i) {
  return i < l->p.n ? l->p.items[i] : NULL;
}
const char *sbx_sandbox_list_next_cursor(const sbx_sandbox_list *l) { return l->p.cursor; }
const char *sbx_sandbox_list_json(const sbx_sandbox_list *l) { return l->p.json; }

/* ---- one-shot exec ------------------------------------------------------------------------ */

static int check_opts_oneshot(const sbx_exec_opts *opts, sbx_error *err) {
  if (opts && opts->stdin_pipe) {
    sbxc_seterr(err, SBX_ERR_INVALID_REQUEST,
                "stdin_pipe needs a stream (sbx_exec_stream); one-shot execs take stdin_data");
    return -1;
  }
  if (opts && opts->detach) {
    sbxc_seterr(err, SBX_ERR_INVALID_REQUEST, "detach applies to streams only");
    return -1;
  }
  return 0;
}

static json_t *exec_body(const char *cmd, const char *const *args, const char *command,
                         const sbx_exec_opts *opts, bool background, sbx_error *err) {
  if (check_opts_oneshot(opts, err) < 0)
    return NULL;
  cleanup_json json_t *b = json_object();
  if (command) {
    if (set_str(b, "command", command, err) < 0)
      return NULL;
  } else {
    if (!cmd || !*cmd) {
      sbxc_seterr(err, SBX_ERR_INVALID_REQUEST, "cmd is empty");
      return NULL;
    }
    if (set_str(b, "cmd", cmd, err) < 0)
      return NULL;
    json_t *a = json_array();
    json_object_set_new(b, "args", a);
    for (; args && *args; args++) {
      json_t *s = json_string(*args);
      if (!s) {
        sbxc_seterr(err, SBX_ERR_INVALID_REQUEST, "an argument is not valid UTF-8");
        return NULL;
      }
      json_array_append_new(a, s);
    }
  }
  if (sbxc_exec_body(b, opts, false, err) < 0)
    return NULL;
  if (background)
    json_object_set_new(b, "background", json_true());
  return steal_ptr(&b);
}

/* POST the body to /v1/sandboxes/{ref}/{exec|shell}; the raw reply. */
static int exec_post(sbx_client *c, const char *ref, const char *route, json_t *body,
                     sbxc_reply *r, sbx_error *err) {
  if (!ref || !*ref) {
    sbxc_seterr(err, SBX_ERR_INVALID_REQUEST, "empty sandbox reference");
    return -1;
  }
  cleanup_cfree char *e = sbxc_escape(ref);
  cleanup_cfree char *path = NULL;
  cleanup_cfree char *txt = json_dumps(body, JSON_COMPACT);
  if (!e || !txt || asprintf(&path, "/v1/sandboxes/%s/%s", e, route) < 0) {
    path = NULL;
    sbxc_seterr(err, SBX_ERR_INTERNAL, "out of memory");
    return -1;
  }
  return sbxc_http(c, "POST", path, txt, strlen(txt), NULL, r, err);
}

static int exec_common(sbx_client *c, const char *ref, const char *route, json_t *body,
                       sbx_output **out, sbx_error *err) {
  *out = NULL;
  cleanup_reply sbxc_reply r;
  if (exec_post(c, ref, route, body, &r, err) < 0)
    return -1;
  json_error_t je;
  cleanup_json json_t *j = json_loadb((const char *)r.body.data, r.body.len, 0, &je);
  if (r.status == 200) {
    if (!json_is_object(j)) {
      sbxc_seterr(err, SBX_ERR_TRANSPORT, "exec reply is not JSON");
      return -1;
    }
    *out = sbxc_output_from_json(j, err);
    return *out ? 0 : -1;
  }
  sbxc_err_from_reply(err, &r);
  json_t *e = json_object_get(j, "error");
  if (r.status == 504 && json_is_object(e)) {
    /* the partial output travels inside "error" (or beside it) */
    json_t *src = json_object_get(e, "stdout") ? e : j;
    sbx_error tmp;
    *out = sbxc_output_from_json(src, &tmp);
    if (*out && err && !err->exec_id[0])
      snprintf(err->exec_id, sizeof err->exec_id, "%s", sbx_output_exec_id(*out));
  }
  return -1;
}

int sbx_exec(sbx_client *c, const char *ref, const char *cmd, const char *const *args,
             const sbx_exec_opts *opts, sbx_output **out, sbx_error *err) {
  *out = NULL;
  cleanup_json json_t *b = exec_body(cmd, args, NULL, opts, false, err);
  return b ? exec_common(c, ref, "exec", b, out, err) : -1;
}

int sbx_shell(sbx_client *c, const char *ref, const char *command, const sbx_exec_opts *opts,
              sbx_output **out, sbx_error *err) {
  *out = NULL;
  if (!command) {
    sbxc_seterr(err, SBX_ERR_INVALID_REQUEST, "command is NULL");
    return -1;
  }
  cleanup_json json_t *b = exec_body(NULL, NULL, command, opts, false, err);
  return b ? exec_common(c, ref, "shell", b, out, err) : -1;
}

static int background_common(sbx_client *c, const char *ref, const char *route, json_t *b,
                             char *exec_id, size_t sz, sbx_error *err) {
  cleanup_reply sbxc_reply r;
  if (exec_post(c, ref, route, b, &r, err) < 0)
    return -1;
  if (r.status != 202 && r.status != 200) {
    sbxc_err_from_reply(err, &r);
    return -1;
  }
  cleanup_json json_t *j = json_loadb((const char *)r.body.data, r.body.len, 0, NULL);
  const char *id = jstr(j, "exec_id");
  if (!id) {
    sbxc_seterr(err, SBX_ERR_TRANSPORT, "background reply has no exec_id");
    return -1;
  }
  snprintf(exec_id, sz, "%s", id);
  return 0;
}

int sbx_exec_background(sbx_client *c, const char *ref, const char *cmd, const char *const *args,
                        const sbx_exec_opts *opts, char *exec_id, size_t sz, sbx_error *err) {
  cleanup_json json_t *b = exec_body(cmd, args, NULL, opts, true, err);
  return b ? background_common(c, ref, "exec", b, exec_id, sz, err) : -1;
}

int sbx_shell_background(sbx_client *c, const char *ref, const char *command,
                         const sbx_exec_opts *opts, char *exec_id, size_t sz, sbx_error *err) {
  if (!command) {
    sbxc_seterr(err, SBX_ERR_INVALID_REQUEST, "command is NULL");
    return -1;
  }
  cleanup_json json_t *b = exec_body(NULL, NULL, command, opts, true, err);
  return b ? background_common(c, ref, "shell", b, exec_id, sz, err) : -1;
}

/* ---- exec records ------------------------------------------------------------------------ */

struct sbx_exec_info {
  json_t *j;
  char *json;
};

static sbx_exec_info *info_wrap(json_t *j, sbx_error *err) {
  if (!json_is_object(j) || !jstr(j, "exec_id")) {
    sbxc_seterr(err, SBX_ERR_TRANSPORT, "reply is not an exec object");
    return NULL;
  }
  sbx_exec_info *e = calloc(1, sizeof *e);
  if (!e || !(e->json = json_dumps(j, JSON_COMPACT))) {
    free(e);
    sbxc_seterr(err, SBX_ERR_INTERNAL, "out of memory");
    return NULL;
  }
  e->j = json_incref(j);
  return e;
}

void sbx_exec_info_free(sbx_exec_info *e) {
  if (!e)
    return;
  json_decref(e->j);
  free(e->json);
  free(e);
}

/* "/v1/execs/{escaped id}{suffix}" or NULL (err filled). */
static char *exec_path(const char *id, const char *suffix, sbx_error *err) {
  return obj_path("/v1/execs", "exec id", id, suffix, err);
}

sbx_exec_info *sbx_exec_get(sbx_client *c, const char *id, sbx_error *err) {
  cleanup_cfree char *p = exec_path(id, "", err);
  if (!p)
    return NULL;
  cleanup_json json_t *j = call_json(c, "GET", p, NULL, NULL, err);
  return j ? info_wrap(j, err) : NULL;
}

sbx_exec_info *sbx_exec_wait(sbx_client *c, const char *id, long timeout_ms, sbx_error *err) {
  char suffix[64];
  if (timeout_ms > 0)
    snprintf(suffix, sizeof suffix, "/wait?timeout_ms=%ld", timeout_ms);
  else
    snprintf(suffix, sizeof suffix, "/wait");
  cleanup_cfree char *p = exec_path(id, suffix, err);
  if (!p)
    return NULL;
  cleanup_json json_t *j = call_json(c, "GET", p, NULL, NULL, err);
  return j ? info_wrap(j, err) : NULL;
}

int sbx_exec_signal(sbx_client *c, const char *id, const char *sig, sbx_error *err) {
  if (!sig || !*sig) {
    sbxc_seterr(err, SBX_ERR_INVALID_REQUEST, "empty signal");
    return -1;
  }
  cleanup_cfree char *p = exec_path(id, "/signal", err);
  if (!p)
    return -1;
  cleanup_json json_t *b = json_object();
  char *end;
  long n = strtol(sig, &end, 10);
  if (!*end)
    json_object_set_new(b, "signal", json_integer(n));
  else if (set_str(b, "signal", sig, err) < 0)
    return -1;
  cleanup_json json_t *j = call_json(c, "POST", p, b, NULL, err);
  return j ? 0 : -1;
}

int sbx_exec_kill(sbx_client *c, const char *id, sbx_error *err) {
  cleanup_cfree char *p = exec_path(id, "/kill", err);
  if (!p)
    return -1;
  cleanup_json json_t *j = call_json(c, "POST", p, NULL, NULL, err);
  return j ? 0 : -1;
}

int sbx_exec_stdin(sbx_client *c, const char *id, const void *data, size_t len, int eof,
                   sbx_error *err) {
  cleanup_cfree char *p = exec_path(id, eof ? "/stdin?eof=true" : "/stdin", err);
  if (!p)
    return -1;
  cleanup_reply sbxc_reply r;
  if (sbxc_http(c, "POST", p, data ? data : "", data ? len : 0, "application/octet-stream", &r,
                err) < 0)
    return -1;
  if (r.status < 200 || r.status > 299) {
    sbxc_err_from_reply(err, &r);
    return -1;
  }
  return 0;
}

int sbx_exec_resize(sbx_client *c, const char *id, int rows, int cols, sbx_error *err) {
  cleanup_cfree char *p = exec_path(id, "/resize", err);
  if (!p)
    return -1;
  cleanup_json json_t *b = json_pack("{s:i,s:i}", "rows", rows, "cols", cols);
  cleanup_json json_t *j = call_json(c, "POST", p, b, NULL, err);
  return j ? 0 : -1;
}

int sbx_exec_output(sbx_client *c, const char *id, const char *stream, uint64_t offset,
                    unsigned char **data, size_t *len, uint64_t *first, uint64_t *next,
                    int *complete, sbx_error *err) {
  *data = NULL;
  *len = 0;
  if (!stream || (strcmp(stream, "stdout") != 0 && strcmp(stream, "stderr") != 0)) {
    sbxc_seterr(err, SBX_ERR_INVALID_REQUEST, "stream must be stdout or stderr");
    return -1;
  }
  char suffix[96];
  snprintf(suffix, sizeof suffix, "/output?stream=%s&offset=%llu", stream,
           (unsigned long long)offset);
  cleanup_cfree char *p = exec_path(id, suffix, err);
  if (!p)
    return -1;
  cleanup_reply sbxc_reply r;
  if (get_ok(c, p, &r, err) < 0)
    return -1;
  if (first)
    *first = r.offset[0] ? strtoull(r.offset, NULL, 10) : offset;
  if (next)
    *next = r.next_offset[0] ? strtoull(r.next_offset, NULL, 10) : offset + r.body.len;
  if (complete)
    *complete = strcasecmp(r.complete, "true") == 0;
  *len = r.body.len;
  *data = steal_ptr(&r.body.data);
  return 0;
}

struct sbx_exec_list {
  page p;
};

static void *info_wrap_any(json_t *j, sbx_error *err) { return info_wrap(j, err); }
static void info_free_any(void *e) { sbx_exec_info_free(e); }

void sbx_exec_list_free(sbx_exec_list *l) { page_free(l ? &l->p : NULL); }

sbx_exec_list *sbx_exec_list_get(sbx_client *c, const char *ref, const char *state, int limit,
                                 const char *cursor, sbx_error *err) {
  cleanup_cfree char *base = obj_path("/v1/sandboxes", "sandbox reference", ref, "/execs", err);
  if (!base)
    return NULL;
  return (sbx_exec_list *)page_get(c, base, state, NULL, limit, cursor, info_wrap_any,
                                   info_free_any, err);
}

size_t sbx_exec_list_count(const sbx_exec_list *l) { return l->p.n; }
const sbx_exec_info *sbx_exec_list_at(const sbx_exec_list *l, size_t i) {
  return i < l->p.n ? l->p.items[i] : NULL;
}
const char *sbx_exec_list_next_cursor(const sbx_exec_list *l) { return l->p.cursor; }
const char *sbx_exec_list_json(const sbx_exec_list *l) { return l->p.json; }

const char *sbx_exec_info_id(const sbx_exec_info *e) { return jstr(e->j, "exec_id"); }
const char *sbx_exec_info_sandbox_id(const sbx_exec_info *e) { return jstr(e->j, "sandbox_id"); }
const char *sbx_exec_info_cmd(const sbx_exec_info *e) { return jstr(e->j, "cmd"); }
const char *sbx_exec_info_state(const sbx_exec_info *e) { return jstr(e->j, "state"); }
int sbx_exec_info_running(const sbx_exec_info *e) {
  const char *s = jstr(e->j, "state");
  return s && strcmp(s, "running") == 0;
}
int sbx_exec_info_tty(const sbx_exec_info *e) { return json_is_true(json_object_get(e->j, "tty")); }
long sbx_exec_info_pid(const sbx_exec_info *e) {
  json_t *v = json_object_get(e->j, "pid");
  return json_is_integer(v) ? (long)json_integer_value(v) : -1;
}
int sbx_exec_info_exit_code(const sbx_exec_info *e) {
  json_t *v = json_object_get(e->j, "exit_code");
  return json_is_integer(v) ? (int)json_integer_value(v) : -1;
}
int sbx_exec_info_signal(const sbx_exec_info *e) {
  return (int)json_integer_value(json_object_get(e->j, "signal"));
}
int sbx_exec_info_failure(const sbx_exec_info *e, sbx_failure *f) {
  json_t *v = json_object_get(e->j, "failure");
  if (!json_is_object(v))
    return 0;
  if (f)
    sbxc_failure_from_json(f, v);
  return 1;
}
const char *sbx_exec_info_started_at(const sbx_exec_info *e) { return jstr(e->j, "started_at"); }
const char *sbx_exec_info_ended_at(const sbx_exec_info *e) { return jstr(e->j, "ended_at"); }
long long sbx_exec_info_stdout_bytes(const sbx_exec_info *e) {
  return (long long)json_integer_value(json_object_get(e->j, "stdout_bytes"));
}
long long sbx_exec_info_stderr_bytes(const sbx_exec_info *e) {
  return (long long)json_integer_value(json_object_get(e->j, "stderr_bytes"));
}
const char *sbx_exec_info_json(const sbx_exec_info *e) { return e->json; }
