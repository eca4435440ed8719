/* auth.h - API keys: who is calling and what they may do (SPEC "Auth").
 *
 * Auth is on as soon as the database holds one key that is not revoked.
 * Keys look like "sbxk_<12 hex id>_<32 hex secret>"; only the SHA-256 of the
 * whole key is stored and it is compared in constant time.  Scopes nest:
 * read < exec < admin.  A key may be limited to sandboxes carrying labels.
 */
#ifndef SBX_SERVER_AUTH_H
#define SBX_SERVER_AUTH_H

#include <jansson.h>
#include <stdbool.h>

#include "../common/err.h"

typedef enum { SCOPE_NONE = 0, SCOPE_READ, SCOPE_EXEC, SCOPE_ADMIN } sbx_scope;

typedef struct auth_who {
  bool authenticated; /* false: auth is off (or the route needs none) */
  char key_id[24];
  sbx_scope scope;
  json_t *labels; /* NULL or {k: v} the key is limited to (a reference) */
} auth_who;

void auth_who_clear(auth_who *w);

/* Is auth on?  (Cached for a second: keys created while sbxd runs count soon.) */
bool auth_enabled(void);

/* Check a presented key (NULL = none).  With auth off: 0 and an
 * unauthenticated admin.  With auth on: 0 and *who filled, or -1 with
 * SBX_E_UNAUTHORIZED. */
int auth_check(const char *key, auth_who *who, sbx_err *err);

/* May who act at `need` on something with these sandbox labels (NULL = not
 * about one sandbox)?  0, or -1 with SBX_E_FORBIDDEN. */
int auth_allow(const auth_who *who, sbx_scope need, json_t *sandbox_labels, sbx_err *err);

/* Count a request against the key's rate (token bucket, --rate per second
 * with a burst of twice that).  0, or -1 with SBX_E_RATE_LIMITED. */
int auth_rate(const auth_who *who, sbx_err *err);

/* The key in "Authorization: Bearer <key>", or NULL.  Points into header. */
const char *auth_bearer(const char *header);

/* `sbxd keys create|list|revoke ...` on the database at db_path.  Returns
 * the process exit code. */
int auth_keys_main(int argc, char **argv, const char *db_path);

/* Parse "read" | "exec" | "admin"; SCOPE_NONE if unknown. */
sbx_scope auth_scope_parse(const char *s);
const char *auth_scope_name(sbx_scope s);

#endif
