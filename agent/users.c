/* users.c - "user" lookups from the sandbox's own passwd and group files.
 * The agent is a static binary, so getpwnam() (NSS) is not an option; and the
 * files that matter are the image's, not the host's. */
#include "agent/agent.h"
#include "common/util.h"

#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define USERS_MAX_FILE (4u << 20)

/* Split line (modified in place) at ':' into at most n fields; returns the count. */
static size_t split_fields(char *line, char **f, size_t n) {
  size_t k = 0;
  char *p = line;
  while (k < n) {
    f[k++] = p;
    char *c = strchr(p, ':');
    if (!c)
      break;
    *c = 0;
    p = c + 1;
  }
  return k;
}

/* Parse a decimal id (no sign, no spaces, fits in 32 bits minus the -1 sentinel). */
static bool parse_id(const char *s, uint32_t *out) {
  if (!*s || strlen(s) > 10)
    return false;
  uint64_t v = 0;
  for (const char *p = s; *p; p++) {
    if (*p < '0' || *p > '9')
      return false;
    v = v * 10 + (uint64_t)(*p - '0');
  }
  if (v >= UINT32_MAX)
    return false;
  *out = (uint32_t)v;
  return true;
}

static int add_group(agent_user *u, gid_t g) {
  for (size_t i = 0; i < u->ngroups; i++)
    if (u->groups[i] == g)
      return 0;
  gid_t *ng = realloc(u->groups, (u->ngroups + 1) * sizeof *ng);
  if (!ng)
    return -1;
  u->groups = ng;
  u->groups[u->ngroups++] = g;
  return 0;
}

void agent_user_clear(agent_user *u) {
  free(u->groups);
  free(u->name);
  free(u->home);
  memset(u, 0, sizeof *u);
}

/* Find the passwd entry by name (byname) or uid; fills name/uid/gid/home. */
static int find_passwd(const char *path, const char *name, uint32_t uid, bool byname, agent_user *u,
                       bool *found, agent_fail *fail) {
  size_t len = 0;
  cleanup_free char *data = sbx_read_file(path, USERS_MAX_FILE, &len);
  *found = false;
  if (!data) {
    /* a numeric uid needs no file; a name does */
    if (!byname && errno == ENOENT)
      return 0;
    agent_fail_setk(fail, "bad_user", "user", errno, path, "cannot read %s: %s", path,
                    strerror(errno));
    return -1;
  }
  char *save = NULL;
  for (char *line = strtok_r(data, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
    char *f[7];
    if (line[0] == '#' || split_fields(line, f, 7) < 7)
      continue;
    uint32_t fuid, fgid;
    if (!parse_id(f[2], &fuid) || !parse_id(f[3], &fgid))
      continue;
    if (byname ? strcmp(f[0], name) != 0 : fuid != uid)
      continue;
    u->uid = fuid;
    u->gid = fgid;
    u->name = strdup(f[0]);
    u->home = f[5][0] ? strdup(f[5]) : NULL;
    if (!u->name || (f[5][0] && !u->home)) {
      agent_fail_setk(fail, "resource_limit", "user", ENOMEM, path, "out of memory");
      return -1;
    }
    *found = true;
    return 0;
  }
  return 0;
}

/* Collect the groups that list u->name as a member. */
static int find_groups(const char *path, agent_user *u, agent_fail *fail) {
  size_t len = 0;
  cleanup_free char *data = sbx_read_file(path, USERS_MAX_FILE, &len);
  if (!data)
    return 0; /* no group file: the primary group alone */
  char *save = NULL;
  for (char *line = strtok_r(data, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
    char *f[4];
    if (line[0] == '#' || split_fields(line, f, 4) < 4)
      continue;
    uint32_t gid;
    if (!parse_id(f[2], &gid))
      continue;
    char *msave = NULL;
    for (char *m = strtok_r(f[3], ",", &msave); m; m = strtok_r(NULL, ",", &msave)) {
      if (strcmp(m, u->name) == 0) {
        if (add_group(u, gid) < 0) {
          agent_fail_setk(fail, "resource_limit", "user", ENOMEM, path, "out of memory");
          return -1;
        }
        break;
      }
    }
  }
  return 0;
}

int agent_user_resolve(const char *spec, const char *passwd_path, const char *group_path,
                       agent_user *out, agent_fail *fail) {
  memset(out, 0, sizeof *out);
  uint32_t uid = 0;
  bool numeric = parse_id(spec, &uid);
  bool found = false;
  if (!numeric && (!*spec || strchr(spec, ':') || strchr(spec, '\n'))) {
    agent_fail_setk(fail, "bad_user", "user", 0, "", "invalid user name \"%s\"", spec);
    return -1;
  }
  if (find_passwd(passwd_path, spec, uid, !numeric, out, &found, fail) < 0) {
    agent_user_clear(out);
    return -1;
  }
  if (!found) {
    if (!numeric) {
      agent_fail_setk(fail, "bad_user", "user", 0, passwd_path, "unknown user \"%s\" (not in %s)",
                      spec, passwd_path);
      return -1;
    }
    /* a uid the image does not know: run with gid = uid and no other groups */
    out->uid = uid;
    out->gid = uid;
  }
  if (add_group(out, out->gid) < 0) {
    agent_user_clear(out);
    agent_fail_setk(fail, "resource_limit", "user", ENOMEM, "", "out of memory");
    return -1;
  }
  if (out->name && find_groups(group_path, out, fail) < 0) {
    agent_user_clear(out);
    return -1;
  }
  return 0;
}
