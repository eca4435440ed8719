/* web.c - the browser console: GET / and GET /web/{file}, from the table
 * scripts/embed_web.py compiles in.
 *
 * Caching: every file carries a strong ETag and answers If-None-Match with a
 * 304.  index.html is `no-cache` (always revalidated, so a new sbxd build is
 * seen at once); it names its assets as /web/NAME?v=HASH, and a request whose
 * v is the file's current hash gets `public, max-age=31536000, immutable`,
 * since those exact bytes can never change under that URL.  Any other request
 * for an asset (no v, or a stale one) is `no-cache` too, so an old page never
 * pins an old file. */
#include "web.h"

#include <string.h>

#include "routes.h"

#define CACHE_IMMUTABLE "public, max-age=31536000, immutable"
#define CACHE_REVALIDATE "no-cache"

/* The console talks only to this server; xterm.js injects <style> elements. */
#define CONSOLE_CSP                                                                               \
  "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "                    \
  "connect-src 'self'; img-src 'self' data:; font-src 'self'; base-uri 'none'; "                 \
  "form-action 'none'; frame-ancestors 'none'"

const web_file *web_file_find(const char *name) {
  for (size_t i = 0; i < web_files_count; i++)
    if (strcmp(web_files[i].path, name) == 0)
      return &web_files[i];
  return NULL;
}

/* Does an If-None-Match header value (a list of entity tags, or "*") name
 * etag?  Weak comparison, as RFC 9110 asks for If-None-Match. */
static bool etag_listed(const char *header, const char *etag) {
  size_t elen = strlen(etag);
  const char *p = header;
  while (*p) {
    while (*p == ' ' || *p == '\t' || *p == ',')
      p++;
    if (*p == '*')
      return true;
    if (p[0] == 'W' && p[1] == '/')
      p += 2;
    const char *end = p;
    if (*p == '"') {
      end = strchr(p + 1, '"');
      end = end ? end + 1 : p + strlen(p);
    } else {
      while (*end && *end != ',')
        end++;
    }
    if ((size_t)(end - p) == elen && strncmp(p, etag, elen) == 0)
      return true;
    if (end == p)
      break;
    p = end;
  }
  return false;
}

/* The v query names the file's current hash (the ETag without its quotes). */
static bool versioned(http_req *r, const web_file *f) {
  const char *v = http_query(r, "v");
  size_t elen = strlen(f->etag);
  return v && elen > 2 && strlen(v) == elen - 2 && strncmp(v, f->etag + 1, elen - 2) == 0;
}

static enum MHD_Result serve(http_req *r, const web_file *f, const char *cache) {
  const char *inm = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "If-None-Match");
  bool fresh = inm && etag_listed(inm, f->etag);
  /* PERSISTENT: the bytes are static data that outlive every response */
  struct MHD_Response *resp =
      fresh ? MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT)
            : MHD_create_response_from_buffer(f->len, (void *)f->bytes, MHD_RESPMEM_PERSISTENT);
  if (!resp)
    return http_reply_fail(r, SBX_E_INTERNAL, "out of memory");
  MHD_add_response_header(resp, MHD_HTTP_HEADER_ETAG, f->etag);
  MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, cache);
  MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
  if (strcmp(f->path, "index.html") == 0) {
    MHD_add_response_header(resp, "Content-Security-Policy", CONSOLE_CSP);
    MHD_add_response_header(resp, "X-Frame-Options", "DENY");
    MHD_add_response_header(resp, "Referrer-Policy", "no-referrer");
  }
  return http_queue(r, fresh ? 304 : 200, resp, fresh ? NULL : f->content_type);
}

enum MHD_Result route_web_index(http_req *r, json_t *body) {
  const web_file *f = web_file_find("index.html");
  if (!f) /* embed_web.py refuses to build without it; keep the handler total anyway */
    return http_reply_fail(r, SBX_E_NOT_FOUND, "the console is not built into this server");
  return serve(r, f, CACHE_REVALIDATE);
}

enum MHD_Result route_web_file(http_req *r, json_t *body) {
  const web_file *f = web_file_find(r->params[0]);
  /* index.html lives at / only, so the console has one address */
  if (!f || strcmp(f->path, "index.html") == 0)
    return http_reply_fail(r, SBX_E_NOT_FOUND, "no console file '%.100s' (see GET /)",
                           r->params[0]);
  return serve(r, f, versioned(r, f) ? CACHE_IMMUTABLE : CACHE_REVALIDATE);
}
