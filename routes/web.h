/* web.h - the browser console's files, compiled into sbxd.
 *
 * The table is generated at build time by scripts/embed_web.py from web/
 * (index.html, *.js, *.css) and the xterm.js files from web/node_modules;
 * routes/web.c serves it at GET / and GET /web/{file}.  Everything is static
 * read-only data: nothing is owned, nothing is freed. */
#ifndef SBX_ROUTES_WEB_H
#define SBX_ROUTES_WEB_H

#include <stddef.h>

typedef struct web_file {
  const char *path;         /* the name under /web/, e.g. "xterm.js" */
  const char *content_type; /* e.g. "text/javascript; charset=utf-8" */
  const unsigned char *bytes;
  size_t len;
  const char *etag; /* a strong ETag, quotes included: "\"<hash>\"" */
} web_file;

extern const web_file web_files[];
extern const size_t web_files_count;

/* The embedded file called name (no directories), or NULL. */
const web_file *web_file_find(const char *name);

#endif
