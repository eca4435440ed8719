#include "auth.h"

#include <getopt.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "../common/sha256.h"
#include "../common/util.h"
#include "../store/store.h"
#include "server.h"

static const char *const scope_names[] = {"none", "read", "exec", "admin"};

sbx_scope auth_scope_parse(const char *s) {
  for (int i = 1; i < 4; i++)
    if (s && !strcmp(s, scope_names[i]))
      return (sbx_scope)i;
  return SCOPE_NONE;
}

const char *auth_scope_name(sbx_scope s) { return scope_names[s]; }

void auth_who_clear(auth_who *w) {
  json_decref(w->labels);
  memset(w, 0, sizeof *w);
}

bool auth_enabled(void) {
  static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
  static int64_t checked_ms;
  static bool enabled;
  pthread_mutex_lock(&mu);
  int64_t now = sbx_mono_ms();
  if (!checked_ms || now - checked_ms >= 1000) {
    store *st = store_thread();
    int64_t n = 0;
    /* if the database cannot tell, fail closed */
    enabled = !st || store_key_count_active(st, &n, NULL) < 0 || n > 0;
    checked_ms = now;
  }
  bool on = enabled;
  pthread_mutex_unlock(&mu);
  return on;
}

const char *auth_bearer(const char *h) {
  if (!h || strncasecmp(h, "Bearer ", 7) != 0)
    return NULL;
  h += 7;
  while (*h == ' ')
    h++;
  return *h ? h : NULL;
}

/* "sbxk_<id>_<secret>" -> id */
static bool key_id(const char *key, char *id, size_t idsz) {
  if (!key || strncmp(key, "sbxk_", 5) != 0)
    return false;
  const char *us = strchr(key + 5, '_');
  if (!us || (size_t)(us - key - 5) >= idsz || us == key + 5)
    return false;
  snprintf(id, idsz, "%.*s", (int)(us - key - 5), key + 5);
  return true;
}

int auth_check(const char *key, auth_who *who, sbx_err *err) {
  memset(who, 0, sizeof *who);
  if (!auth_enabled()) {
    who->scope = SCOPE_ADMIN;
    return 0;
  }
  char id[24];
  if (!key)
    return sbx_fail(err, SBX_E_UNAUTHORIZED, 0,
                    "an API key is required: send Authorization: Bearer <key>");
  store *st = store_thread();
  json_t *rec = NULL;
  char hex[65];
  sbx_sha256_hex(key, strlen(key), hex);
  bool ok = key_id(key, id, sizeof id) && st && store_key_get(st, id, &rec, NULL) == 0;
  const char *stored = ok ? json_string_value(json_object_get(rec, "hash")) : NULL;
  ok = ok && stored && strlen(stored) == 64 && sbx_ct_equal(stored, hex, 64) &&
       json_is_null(json_object_get(rec, "revoked_at"));
  if (!ok) {
    json_decref(rec);
    return sbx_fail(err, SBX_E_UNAUTHORIZED, 0, "the API key is not valid");
  }
  who->authenticated = true;
  snprintf(who->key_id, sizeof who->key_id, "%s", id);
  who->scope = auth_scope_parse(json_string_value(json_object_get(rec, "scope")));
  json_t *labels = json_object_get(rec, "labels");
  if (json_object_size(labels))
    who->labels = json_incref(labels);
  json_decref(rec);
  return 0;
}

int auth_allow(const auth_who *who, sbx_scope need, json_t *sandbox_labels, sbx_err *err) {
  if (who->scope < need)
    return sbx_fail(err, SBX_E_FORBIDDEN, 0, "this key's scope (%s) does not allow this (needs %s)",
                    auth_scope_name(who->scope), auth_scope_name(need));
  if (!who->labels || !sandbox_labels)
    return 0;
  const char *k;
  json_t *v;
  json_object_foreach(who->labels, k, v) {
    if (!json_equal(json_object_get(sandbox_labels, k), v))
      return sbx_fail(err, SBX_E_FORBIDDEN, 0,
                      "this key only reaches sandboxes labelled %s=%s", k, json_string_value(v));
  }
  return 0;
}

/* ---- rate: a token bucket per key ---- */

#define RATE_SLOTS 1024
static struct {
  char id[24];
  double tokens;
  int64_t at_ms;
} buckets[RATE_SLOTS];
static pthread_mutex_t rate_mu = PTHREAD_MUTEX_INITIALIZER;

int auth_rate(const auth_who *who, sbx_err *err) {
  double rate = g_server ? g_server->cfg.rate_per_s : 0;
  if (!who->authenticated || rate <= 0)
    return 0;
  uint32_t h = 2166136261u;
  for (const char *p = who->key_id; *p; p++)
    h = (h ^ (uint8_t)*p) * 16777619u;
  pthread_mutex_lock(&rate_mu);
  int64_t now = sbx_mono_ms();
  /* a key's bucket is in one of 8 slots from its hash; a new key takes a
   * free one, or the one idle longest (two keys never share a bucket) */
  size_t pick = SIZE_MAX;
  bool found = false;
  for (size_t k = 0; k < 8 && !found; k++) {
    size_t j = (h + k) % RATE_SLOTS;
    if (!strcmp(buckets[j].id, who->key_id)) {
      pick = j;
      found = true;
    } else if (pick == SIZE_MAX || (buckets[pick].id[0] && (!buckets[j].id[0] ||
                                                           buckets[j].at_ms < buckets[pick].at_ms))) {
      pick = j; /* so far the best to take: free, or idle longest */
    }
  }
  size_t i = pick;
  if (!found) {
    snprintf(buckets[i].id, sizeof buckets[i].id, "%s", who->key_id);
    buckets[i].tokens = 2 * rate;
    buckets[i].at_ms = now;
  }
  double t = buckets[i].tokens + (double)(now - buckets[i].at_ms) * rate / 1000.0;
  if (t > 2 * rate)
    t = 2 * rate;
  buckets[i].at_ms = now;
  bool ok = t >= 1.0;
  buckets[i].tokens = ok ? t - 1.0 : t;
  pthread_mutex_unlock(&rate_mu);
  return ok ? 0 : sbx_fail(err, SBX_E_RATE_LIMITED, 0, "over %.0f requests/s for this key", rate);
}

/* ---- sbxd keys ... ---- */

static int keys_usage(FILE *f) {
  fprintf(f, "usage: sbxd keys create [--scope read|exec|admin] [--label K=V]... [--name NAME]\n"
             "       sbxd keys list\n"
             "       sbxd keys revoke KEY_ID\n"
             "  (all take --data-dir DIR, default ./var)\n");
  return 2;
}

int auth_keys_main(int argc, char **argv, const char *db_path) {
  if (argc < 1)
    return keys_usage(stderr);
  const char *cmd = argv[0];
  sbx_err err;
  store *st = NULL;
  if (store_open(db_path, &st, &err) < 0) {
    fprintf(stderr, "sbxd keys: %s: %s\n", db_path, err.msg);
    return 1;
  }
  int rc = 0;
  if (!strcmp(cmd, "create")) {
    sbx_scope scope = SCOPE_EXEC;
    const char *name = NULL;
    json_t *labels = json_object();
    for (int i = 1; i < argc; i++) {
      if (!strcmp(argv[i], "--scope") && i + 1 < argc) {
        scope = auth_scope_parse(argv[++i]);
        if (scope == SCOPE_NONE) {
          fprintf(stderr, "sbxd keys: --scope is read, exec or admin\n");
          rc = 2;
        }
      } else if (!strcmp(argv[i], "--name") && i + 1 < argc) {
        name = argv[++i];
      } else if (!strcmp(argv[i], "--label") && i + 1 < argc) {
        const char *kv = argv[++i], *eq = strchr(kv, '=');
        if (!eq || eq == kv) {
          fprintf(stderr, "sbxd keys: --label wants K=V\n");
          rc = 2;
        } else {
          char k[128];
          snprintf(k, sizeof k, "%.*s", (int)(eq - kv), kv);
          json_object_set_new(labels, k, json_string(eq + 1));
        }
      } else {
        rc = keys_usage(stderr);
      }
    }
    if (rc == 0) {
      char idbuf[32], secret[40], key[96], hex[65];
      sbx_new_id("", idbuf, sizeof idbuf);
      sbx_new_id("", secret, 20);
      sbx_new_id("", secret + 16, 20); /* 32 hex digits, 128 bits */
      snprintf(key, sizeof key, "sbxk_%.12s_%s", idbuf, secret);
      sbx_sha256_hex(key, strlen(key), hex);
      char id[16];
      snprintf(id, sizeof id, "%.12s", idbuf);
      if (store_key_insert(st, id, hex, auth_scope_name(scope), labels, name, &err) < 0) {
        fprintf(stderr, "sbxd keys: %s\n", err.msg);
        rc = 1;
      } else {
        /* shown once: only its hash is kept */
        printf("%s\n", key);
        fprintf(stderr, "key %s created with scope %s; store it now, it is not shown again\n",
                id, auth_scope_name(scope));
      }
    }
    json_decref(labels);
  } else if (!strcmp(cmd, "list")) {
    json_t *list = NULL;
    if (store_key_list(st, &list, &err) < 0) {
      fprintf(stderr, "sbxd keys: %s\n", err.msg);
      rc = 1;
    } else {
      char *s = json_dumps(list, JSON_INDENT(2));
      printf("%s\n", s ? s : "[]");
      free(s);
      json_decref(list);
    }
  } else if (!strcmp(cmd, "revoke") && argc == 2) {
    if (store_key_revoke(st, argv[1], &err) < 0) {
      fprintf(stderr, "sbxd keys: %s\n", err.msg);
      rc = 1;
    }
  } else {
    rc = keys_usage(stderr);
  }
  store_close(st);
  return rc;
}
