/* request.c - validation of sandbox and exec request bodies, the agent's EXEC
 * payload, and signal names.
 *
 * Every optional field may also be given as JSON null, which means "absent"
 * (SDKs commonly serialize an unset optional that way).  Checks run in a
 * fixed order: the body's type, unknown keys, then each field, so the error a
 * client sees for a given body is deterministic.
 */
#include "request.h"

#include <ctype.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/util.h"

/* jansson's own cleanup helper (json_auto_t); named like our other cleanup_ macros */
#define cleanup_json __attribute__((cleanup(json_decrefp)))

#define SBX_MAX_PATH 4095
#define SBX_MAX_LABELS 64

/* The value of an optional key, NULL when absent or null. */
static json_t *opt(json_t *body, const char *key) {
  json_t *v = json_object_get(body, key);
  return (v && !json_is_null(v)) ? v : NULL;
}

static bool has_nul(json_t *s) { return json_string_length(s) != strlen(json_string_value(s)); }

/* A string without NUL bytes (they would silently cut C strings short). */
static int want_str(json_t *v, const char *field, const char **out, sbx_err *err) {
  if (!json_is_string(v))
    return sbx_fail_field(err, field, "\"%s\" must be a string", field);
  if (has_nul(v))
    return sbx_fail_field(err, field, "\"%s\" must not contain NUL characters", field);
  *out = json_string_value(v);
  return 0;
}

static int want_nonempty_str(json_t *v, const char *field, const char **out, sbx_err *err) {
  if (want_str(v, field, out, err) < 0)
    return -1;
  if (**out == '\0')
    return sbx_fail_field(err, field, "\"%s\" must not be empty", field);
  return 0;
}

static int want_int(json_t *v, const char *field, long long min, long long max, int64_t *out,
                    sbx_err *err) {
  if (!json_is_integer(v))
    return sbx_fail_field(err, field, "\"%s\" must be an integer", field);
  json_int_t n = json_integer_value(v);
  if (n < min || n > max)
    return sbx_fail_field(err, field, "\"%s\" must be between %lld and %lld, got %lld", field,
                          min, max, (long long)n);
  *out = n;
  return 0;
}

static int want_bool(json_t *v, const char *field, bool *out, sbx_err *err) {
  if (!json_is_boolean(v))
    return sbx_fail_field(err, field, "\"%s\" must be true or false", field);
  *out = json_is_true(v);
  return 0;
}

static int want_abs_path(json_t *v, const char *field, const char **out, sbx_err *err) {
  if (want_str(v, field, out, err) < 0)
    return -1;
  if ((*out)[0] != '/')
    return sbx_fail_field(err, field, "\"%s\" must be an absolute path", field);
  if (strlen(*out) > SBX_MAX_PATH)
    return sbx_fail_field(err, field, "\"%s\" is longer than %d bytes", field, SBX_MAX_PATH);
  return 0;
}

/* Reject keys of obj not in allowed (NULL-terminated); prefix names nested
 * objects in the field ("limits."). */
static int check_keys(json_t *obj, const char *const *allowed, const char *prefix, sbx_err *err) {
  const char *key;
  size_t klen;
  json_t *v;
  json_object_keylen_foreach(obj, key, klen, v) {
    bool ok = false;
    for (const char *const *a = allowed; *a && !ok; a++)
      ok = strlen(*a) == klen && memcmp(*a, key, klen) == 0;
    if (!ok) {
      char field[64];
      snprintf(field, sizeof field, "%s%s", prefix, key);
      return sbx_fail_field(err, field, "unknown field \"%s\"", field);
    }
  }
  return 0;
}

/* env: object of strings; keys non-empty without '=' or NUL.  Returns a copy. */
static json_t *parse_env(json_t *v, const char *name, sbx_err *err) {
  if (!json_is_object(v)) {
    sbx_fail_field(err, name, "\"%s\" must be an object of strings", name);
    return NULL;
  }
  cleanup_json json_t *out = json_object();
  if (!out) {
    sbx_fail(err, SBX_E_INTERNAL, 0, "out of memory");
    return NULL;
  }
  const char *key;
  size_t klen;
  json_t *val;
  json_object_keylen_foreach(v, key, klen, val) {
    char field[64];
    snprintf(field, sizeof field, "%s.%s", name, key);
    if (klen == 0) {
      sbx_fail_field(err, name, "\"%s\" keys must not be empty", name);
      return NULL;
    }
    if (klen != strlen(key) || strchr(key, '=')) {
      sbx_fail_field(err, field, "\"%s\" keys must not contain '=' or NUL", name);
      return NULL;
    }
    const char *s;
    if (want_str(val, field, &s, err) < 0)
      return NULL;
    if (json_object_set(out, key, val) < 0) {
      sbx_fail(err, SBX_E_INTERNAL, 0, "out of memory");
      return NULL;
    }
  }
  return steal_pointer(&out);
}

/* ---- POST /v1/sandboxes ---- */

static const char *const sandbox_keys[] = {
    "name",    "image",          "env",            "workdir", "shell",   "limits", "network",
    "labels",  "idle_timeout_s", "max_duration_s", "driver",  "replace", NULL};

static const char *const limit_keys[] = {"memory_mib", "cpus", "pids", "disk_mib", NULL};

static json_t *parse_limits(json_t *v, sbx_err *err) {
  int64_t mem = 512, pids = 256, disk = 1024;
  double cpus = 1.0;
  if (v) {
    if (!json_is_object(v)) {
      sbx_fail_field(err, "limits", "\"limits\" must be an object");
      return NULL;
    }
    if (check_keys(v, limit_keys, "limits.", err) < 0)
      return NULL;
    json_t *f;
    if ((f = opt(v, "memory_mib")) && want_int(f, "limits.memory_mib", 16, 1048576, &mem, err) < 0)
      return NULL;
    if ((f = opt(v, "pids")) && want_int(f, "limits.pids", 1, 4194304, &pids, err) < 0)
      return NULL;
    /* 2^30 MiB keeps byte counts far from int64 overflow */
    if ((f = opt(v, "disk_mib")) && want_int(f, "limits.disk_mib", 1, 1LL << 30, &disk, err) < 0)
      return NULL;
    if ((f = opt(v, "cpus"))) {
      if (!json_is_number(f)) {
        sbx_fail_field(err, "limits.cpus", "\"limits.cpus\" must be a number");
        return NULL;
      }
      cpus = json_number_value(f);
      if (!(cpus > 0 && cpus <= 1024)) {
        sbx_fail_field(err, "limits.cpus", "\"limits.cpus\" must be > 0 and <= 1024, got %g",
                       cpus);
        return NULL;
      }
    }
  }
  json_t *out = json_pack("{s:I,s:f,s:I,s:I}", "memory_mib", (json_int_t)mem, "cpus", cpus,
                          "pids", (json_int_t)pids, "disk_mib", (json_int_t)disk);
  if (!out)
    sbx_fail(err, SBX_E_INTERNAL, 0, "out of memory");
  return out;
}

static json_t *parse_labels(json_t *v, sbx_err *err) {
  if (!json_is_object(v)) {
    sbx_fail_field(err, "labels", "\"labels\" must be an object of strings");
    return NULL;
  }
  if (json_object_size(v) > SBX_MAX_LABELS) {
    sbx_fail_field(err, "labels", "\"labels\" may hold at most %d entries", SBX_MAX_LABELS);
    return NULL;
  }
  cleanup_json json_t *out = json_object();
  if (!out) {
    sbx_fail(err, SBX_E_INTERNAL, 0, "out of memory");
    return NULL;
  }
  const char *key;
  size_t klen;
  json_t *val;
  json_object_keylen_foreach(v, key, klen, val) {
    char field[64];
    snprintf(field, sizeof field, "labels.%s", key);
    if (klen != strlen(key) || !sbx_valid_name(key)) {
      sbx_fail_field(err, field,
                     "label keys must match [A-Za-z0-9][A-Za-z0-9_.-]{0,62}");
      return NULL;
    }
    const char *s;
    if (want_str(val, field, &s, err) < 0)
      return NULL;
    if (json_object_set(out, key, val) < 0) {
      sbx_fail(err, SBX_E_INTERNAL, 0, "out of memory");
      return NULL;
    }
  }
  return steal_pointer(&out);
}

json_t *sandbox_request_parse(json_t *body, const char *id, int64_t now_ms, bool *replace,
                              sbx_err *err) {
  if (replace)
    *replace = false;
  if (!json_is_object(body)) {
    sbx_fail_field(err, "", "the request body must be a JSON object");
    return NULL;
  }
  if (check_keys(body, sandbox_keys, "", err) < 0)
    return NULL;

  json_t *v;
  const char *name = id;
  if ((v = opt(body, "name"))) {
    if (want_str(v, "name", &name, err) < 0)
      return NULL;
    if (!sbx_valid_name(name)) {
      sbx_fail_field(err, "name", "\"name\" must match [A-Za-z0-9][A-Za-z0-9_.-]{0,62}");
      return NULL;
    }
    /* a {ref} is an id or a name: a name shaped like another sandbox's id
     * would make references ambiguous */
    if (sbx_is_id(name, "sbx_") && strcmp(name, id) != 0) {
      sbx_fail_field(err, "name", "\"name\" must not look like a sandbox id (sbx_ + 16 hex)");
      return NULL;
    }
  }

  const char *image = "host";
  if ((v = opt(body, "image"))) {
    if (want_nonempty_str(v, "image", &image, err) < 0)
      return NULL;
    if (strcmp(image, "host") != 0 && (!sbx_valid_name(image) || strstr(image, ".."))) {
      sbx_fail_field(err, "image",
                     "\"image\" must be \"host\" or the name of a folder in the images "
                     "directory ([A-Za-z0-9][A-Za-z0-9_.-]{0,62}, no \"..\")");
      return NULL;
    }
  }

  cleanup_json json_t *env = NULL;
  if ((v = opt(body, "env"))) {
    if (!(env = parse_env(v, "env", err)))
      return NULL;
  } else if (!(env = json_object())) {
    sbx_fail(err, SBX_E_INTERNAL, 0, "out of memory");
    return NULL;
  }

  const char *workdir = "/", *shell = "/bin/sh";
  if ((v = opt(body, "workdir")) && want_abs_path(v, "workdir", &workdir, err) < 0)
    return NULL;
  if ((v = opt(body, "shell")) && want_abs_path(v, "shell", &shell, err) < 0)
    return NULL;

  cleanup_json json_t *limits = parse_limits(opt(body, "limits"), err);
  if (!limits)
    return NULL;

  if ((v = opt(body, "network"))) {
    const char *net;
    if (want_str(v, "network", &net, err) < 0)
      return NULL;
    if (strcmp(net, "none") != 0) {
      sbx_fail_field(err, "network",
                     "\"network\" must be \"none\": only \"none\" (loopback only) is supported");
      return NULL;
    }
  }

  cleanup_json json_t *labels = NULL;
  if ((v = opt(body, "labels"))) {
    if (!(labels = parse_labels(v, err)))
      return NULL;
  } else if (!(labels = json_object())) {
    sbx_fail(err, SBX_E_INTERNAL, 0, "out of memory");
    return NULL;
  }

  int64_t idle = 0, maxdur = 0;
  if ((v = opt(body, "idle_timeout_s")) &&
      want_int(v, "idle_timeout_s", 0, INT32_MAX, &idle, err) < 0)
    return NULL;
  if ((v = opt(body, "max_duration_s")) &&
      want_int(v, "max_duration_s", 0, INT32_MAX, &maxdur, err) < 0)
    return NULL;

  const char *drv = "ns";
  if ((v = opt(body, "driver"))) {
    if (want_str(v, "driver", &drv, err) < 0)
      return NULL;
    if (strcmp(drv, "ns") != 0 && strcmp(drv, "vm") != 0) {
      sbx_fail_field(err, "driver", "\"driver\" must be \"ns\" (namespaces) or \"vm\" (a "
                                    "QEMU microVM)");
      return NULL;
    }
  }

  bool repl = false;
  if ((v = opt(body, "replace")) && want_bool(v, "replace", &repl, err) < 0)
    return NULL;

  char created[32];
  sbx_rfc3339(now_ms, created, sizeof created);
  json_t *sb = json_pack("{s:s,s:s,s:s,s:s,s:O,s:s,s:s,s:O,s:s,s:O,s:I,s:I,s:s,s:n,s:s,s:n,s:n}",
                         "id", id, "name", name, "state", "creating", "image", image, "env",
                         env, "workdir", workdir, "shell", shell, "limits", limits, "network",
                         "none", "labels", labels, "idle_timeout_s", (json_int_t)idle,
                         "max_duration_s", (json_int_t)maxdur, "driver", drv, "accelerator",
                         "created_at",
                         created, "started_at", "stopped_at");
  if (!sb) {
    sbx_fail(err, SBX_E_INTERNAL, 0, "out of memory");
    return NULL;
  }
  if (replace)
    *replace = repl;
  return sb;
}

/* ---- POST .../exec and .../shell ---- */

static const char *const exec_keys[] = {
    "cmd",      "args",      "cwd",      "env",              "user", "timeout_ms",
    "stdin",    "stdin_b64", "encoding", "max_output_bytes", "tty",  "rows",
    "cols",     "background", NULL};

static bool in_list(const char *const *list, const char *key, size_t klen) {
  for (; *list; list++)
    if (strlen(*list) == klen && memcmp(*list, key, klen) == 0)
      return true;
  return false;
}

static int check_exec_keys(json_t *body, bool shell_mode, bool ws, sbx_err *err) {
  static const char *const shell_keys[] = {"command", NULL};
  static const char *const ws_keys[] = {"type", "detach", "shell", NULL};
  const char *key;
  size_t klen;
  json_t *v;
  json_object_keylen_foreach(body, key, klen, v) {
    if (in_list(exec_keys, key, klen) || (shell_mode && in_list(shell_keys, key, klen)) ||
        (ws && in_list(ws_keys, key, klen)))
      continue;
    return sbx_fail_field(err, key, "unknown field \"%s\"", key);
  }
  return 0;
}

/* user: a name or a uid (string or integer); uid_t -1 is "no uid". */
static int parse_user(json_t *v, char **out, sbx_err *err) {
  if (json_is_integer(v)) {
    json_int_t n = json_integer_value(v);
    if (n < 0 || n > 4294967294LL)
      return sbx_fail_field(err, "user", "\"user\" uid must be between 0 and 4294967294");
    if (asprintf(out, "%lld", (long long)n) < 0) {
      *out = NULL;
      return sbx_fail(err, SBX_E_INTERNAL, 0, "out of memory");
    }
    return 0;
  }
  const char *s;
  if (!json_is_string(v))
    return sbx_fail_field(err, "user", "\"user\" must be a user name or a uid");
  if (want_nonempty_str(v, "user", &s, err) < 0)
    return -1;
  if (strpbrk(s, ":\n/") || strlen(s) > 255)
    return sbx_fail_field(err, "user", "\"user\" is not a valid user name or uid");
  if (strspn(s, "0123456789") == strlen(s) &&
      (strlen(s) > 10 || strtoull(s, NULL, 10) > 4294967294ULL))
    return sbx_fail_field(err, "user", "\"user\" uid must be between 0 and 4294967294");
  if (!(*out = strdup(s)))
    return sbx_fail(err, SBX_E_INTERNAL, 0, "out of memory");
  return 0;
}

static int parse_stdin(json_t *body, exec_request *r, sbx_err *err) {
  json_t *text = opt(body, "stdin"), *b64 = opt(body, "stdin_b64");
  if (text && b64)
    return sbx_fail_field(err, "stdin_b64", "give \"stdin\" or \"stdin_b64\", not both");
  if (text) {
    if (!json_is_string(text))
      return sbx_fail_field(err, "stdin", "\"stdin\" must be a string");
    size_t n = json_string_length(text);
    if (n > SBX_MAX_STDIN)
      return sbx_fail_field(err, "stdin", "\"stdin\" is larger than %u bytes", SBX_MAX_STDIN);
    if (!(r->stdin_data = malloc(n ? n : 1)))
      return sbx_fail(err, SBX_E_INTERNAL, 0, "out of memory");
    memcpy(r->stdin_data, json_string_value(text), n);
    r->stdin_len = n;
    r->has_stdin = true;
  } else if (b64) {
    if (!json_is_string(b64))
      return sbx_fail_field(err, "stdin_b64", "\"stdin_b64\" must be a string");
    r->stdin_data = sbx_b64_decode(json_string_value(b64), json_string_length(b64), &r->stdin_len);
    if (!r->stdin_data)
      return sbx_fail_field(err, "stdin_b64", "\"stdin_b64\" is not valid base64");
    if (r->stdin_len > SBX_MAX_STDIN)
      return sbx_fail_field(err, "stdin_b64", "\"stdin_b64\" decodes to more than %u bytes",
                            SBX_MAX_STDIN);
    r->has_stdin = true;
  }
  return 0;
}

/* cmd and args for plain mode: cmd required, args strings without NUL. */
static int parse_cmd_args(json_t *body, exec_request *r, sbx_err *err) {
  json_t *v = opt(body, "cmd");
  const char *cmd;
  if (!v)
    return sbx_fail_field(err, "cmd", "\"cmd\" is required");
  if (want_nonempty_str(v, "cmd", &cmd, err) < 0)
    return -1;
  if (!(r->cmd = strdup(cmd)))
    return sbx_fail(err, SBX_E_INTERNAL, 0, "out of memory");
  if (!(r->args = json_array()))
    return sbx_fail(err, SBX_E_INTERNAL, 0, "out of memory");
  if (!(v = opt(body, "args")))
    return 0;
  if (!json_is_array(v))
    return sbx_fail_field(err, "args", "\"args\" must be an array of strings");
  if (json_array_size(v) > SBX_MAX_ARGS)
    return sbx_fail_field(err, "args", "\"args\" may hold at most %d entries", SBX_MAX_ARGS);
  size_t i;
  json_t *a;
  json_array_foreach(v, i, a) {
    char field[32];
    const char *s;
    snprintf(field, sizeof field, "args[%zu]", i);
    if (want_str(a, field, &s, err) < 0)
      return -1;
    if (json_array_append(r->args, a) < 0)
      return sbx_fail(err, SBX_E_INTERNAL, 0, "out of memory");
  }
  return 0;
}

/* Shell mode: <shell> -c command, the command from "command" (/shell) or
 * "shell" (a WebSocket start). */
static int parse_shell_cmd(json_t *body, json_t *src, const char *field, const char *sandbox_shell,
                           exec_request *r, sbx_err *err) {
  if (opt(body, "cmd"))
    return sbx_fail_field(err, "cmd", "\"cmd\" cannot be used with a shell command (\"%s\")",
                          field);
  if (opt(body, "args"))
    return sbx_fail_field(err, "args", "\"args\" cannot be used with a shell command (\"%s\")",
                          field);
  if (!src)
    return sbx_fail_field(err, field, "\"%s\" is required", field);
  const char *command;
  if (want_nonempty_str(src, field, &command, err) < 0)
    return -1;
  if (!(r->cmd = strdup(sandbox_shell && *sandbox_shell ? sandbox_shell : "/bin/sh")))
    return sbx_fail(err, SBX_E_INTERNAL, 0, "out of memory");
  if (!(r->args = json_pack("[s,s]", "-c", command)))
    return sbx_fail(err, SBX_E_INTERNAL, 0, "out of memory");
  return 0;
}

static int parse_exec_fields(json_t *body, bool shell_mode, const char *sandbox_shell, bool ws,
                             exec_request *r, sbx_err *err) {
  if (!json_is_object(body))
    return sbx_fail_field(err, "", "the request body must be a JSON object");
  if (check_exec_keys(body, shell_mode, ws, err) < 0)
    return -1;

  json_t *v;
  if (ws && (v = opt(body, "type"))) {
    if (!json_is_string(v) || strcmp(json_string_value(v), "start") != 0)
      return sbx_fail_field(err, "type", "\"type\" of the first message must be \"start\"");
  }

  json_t *cmd_src = shell_mode ? opt(body, "command") : NULL;
  const char *cmd_field = "command";
  if (ws && (v = opt(body, "shell"))) {
    if (cmd_src)
      return sbx_fail_field(err, "shell", "give \"command\" or \"shell\", not both");
    cmd_src = v;
    cmd_field = "shell";
  }
  json_t *tty = opt(body, "tty");
  if (!shell_mode && !cmd_src && !opt(body, "cmd") && !opt(body, "args") && json_is_true(tty)) {
    /* a terminal with no command: the sandbox's shell, interactive */
    if (!(r->cmd = strdup(sandbox_shell)) || !(r->args = json_array()))
      return sbx_fail(err, SBX_E_INTERNAL, 0, "out of memory");
  } else if (shell_mode || cmd_src) {
    if (parse_shell_cmd(body, cmd_src, cmd_field, sandbox_shell, r, err) < 0)
      return -1;
  } else if (parse_cmd_args(body, r, err) < 0) {
    return -1;
  }

  const char *s;
  if ((v = opt(body, "cwd"))) {
    if (want_abs_path(v, "cwd", &s, err) < 0)
      return -1;
    if (!(r->cwd = strdup(s)))
      return sbx_fail(err, SBX_E_INTERNAL, 0, "out of memory");
  }
  if ((v = opt(body, "env"))) {
    if (!(r->env = parse_env(v, "env", err)))
      return -1;
  } else if (!(r->env = json_object())) {
    return sbx_fail(err, SBX_E_INTERNAL, 0, "out of memory");
  }
  if ((v = opt(body, "user")) && parse_user(v, &r->user, err) < 0)
    return -1;
  if ((v = opt(body, "timeout_ms")) &&
      want_int(v, "timeout_ms", 0, SBX_MAX_TIMEOUT_MS, &r->timeout_ms, err) < 0)
    return -1;
  if (parse_stdin(body, r, err) < 0)
    return -1;
  if ((v = opt(body, "encoding"))) {
    if (!json_is_string(v))
      return sbx_fail_field(err, "encoding", "\"encoding\" must be \"utf8\" or \"base64\"");
    if (strcmp(json_string_value(v), "utf8") == 0)
      r->encoding = SBX_ENC_UTF8;
    else if (strcmp(json_string_value(v), "base64") == 0)
      r->encoding = SBX_ENC_BASE64;
    else
      return sbx_fail_field(err, "encoding", "\"encoding\" must be \"utf8\" or \"base64\"");
  }
  int64_t n;
  if ((v = opt(body, "max_output_bytes"))) {
    if (want_int(v, "max_output_bytes", 0, (long long)SBX_MAX_OUTPUT_CAP, &n, err) < 0)
      return -1;
    r->max_output_bytes = (uint64_t)n;
  }
  if ((v = opt(body, "tty")) && want_bool(v, "tty", &r->tty, err) < 0)
    return -1;
  if ((v = opt(body, "rows"))) {
    if (want_int(v, "rows", 1, 1000, &n, err) < 0)
      return -1;
    r->rows = (int)n;
  }
  if ((v = opt(body, "cols"))) {
    if (want_int(v, "cols", 1, 1000, &n, err) < 0)
      return -1;
    r->cols = (int)n;
  }
  if ((v = opt(body, "background")) && want_bool(v, "background", &r->background, err) < 0)
    return -1;
  if (ws && (v = opt(body, "detach")) && want_bool(v, "detach", &r->detach, err) < 0)
    return -1;
  return 0;
}

int exec_request_parse(json_t *body, bool shell_mode, const char *sandbox_shell,
                       bool allow_ws_fields, exec_request *out, sbx_err *err) {
  exec_request r = {
      .encoding = SBX_ENC_UTF8,
      .max_output_bytes = SBX_MAX_OUTPUT_DEFAULT,
      .rows = 24,
      .cols = 80,
  };
  if (parse_exec_fields(body, shell_mode, sandbox_shell, allow_ws_fields, &r, err) < 0) {
    exec_request_clear(&r);
    return -1;
  }
  *out = r;
  return 0;
}

void exec_request_clear(exec_request *r) {
  if (!r)
    return;
  free(r->cmd);
  free(r->cwd);
  free(r->user);
  free(r->stdin_data);
  if (r->args)
    json_decref(r->args);
  if (r->env)
    json_decref(r->env);
  memset(r, 0, sizeof *r);
}

/* ---- the agent's EXEC payload ---- */

/* Copy the string members of src into dst (later ones win). */
static int env_merge(json_t *dst, json_t *src) {
  if (!json_is_object(src))
    return 0;
  const char *key;
  json_t *v;
  json_object_foreach(src, key, v) {
    if (json_is_string(v) && json_object_set(dst, key, v) < 0)
      return -1;
  }
  return 0;
}

json_t *exec_request_agent_spec(const exec_request *r, json_t *sandbox, const char *exec_id) {
  cleanup_json json_t *env = json_pack("{s:s,s:s}", "PATH",
                                       "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                                       "HOME", "/root");
  if (!env || env_merge(env, json_object_get(sandbox, "env")) < 0 || env_merge(env, r->env) < 0)
    return NULL;
  const char *cwd = r->cwd;
  if (!cwd)
    cwd = json_string_value(json_object_get(sandbox, "workdir"));
  if (!cwd)
    cwd = "/";
  cleanup_json json_t *args = r->args ? json_incref(r->args) : json_array();
  cleanup_json json_t *spec = json_pack(
      "{s:s,s:s,s:O,s:s,s:O,s:I,s:b,s:b,s:i,s:i,s:I,s:I,s:I,s:b}", "exec_id", exec_id, "cmd",
      r->cmd ? r->cmd : "", "args", args, "cwd", cwd, "env", env, "timeout_ms",
      (json_int_t)r->timeout_ms, "stdin_pipe", (int)(r->background && !r->has_stdin), "tty", (int)r->tty, "rows", r->rows, "cols",
      r->cols, "credit_stdout", (json_int_t)262144, "credit_stderr", (json_int_t)262144,
      "grace_ms", (json_int_t)200, "kill_on_disconnect", (int)(!r->background && !r->detach));
  if (!spec)
    return NULL;
  if (r->user && json_object_set_new(spec, "user", json_string(r->user)) < 0)
    return NULL;
  if (r->has_stdin) {
    cleanup_free char *b64 = sbx_b64_encode(r->stdin_data, r->stdin_len, NULL);
    if (!b64 || json_object_set_new(spec, "stdin_b64", json_string(b64)) < 0)
      return NULL;
  }
  return steal_pointer(&spec);
}

/* ---- signals ---- */

static const struct {
  const char *name;
  int num;
} sig_names[] = {
    {"HUP", SIGHUP},       {"INT", SIGINT},       {"QUIT", SIGQUIT},     {"ILL", SIGILL},
    {"TRAP", SIGTRAP},     {"ABRT", SIGABRT},     {"IOT", SIGIOT},       {"BUS", SIGBUS},
    {"FPE", SIGFPE},       {"KILL", SIGKILL},     {"USR1", SIGUSR1},     {"SEGV", SIGSEGV},
    {"USR2", SIGUSR2},     {"PIPE", SIGPIPE},     {"ALRM", SIGALRM},     {"TERM", SIGTERM},
    {"STKFLT", SIGSTKFLT}, {"CHLD", SIGCHLD},     {"CLD", SIGCHLD},      {"CONT", SIGCONT},
    {"STOP", SIGSTOP},     {"TSTP", SIGTSTP},     {"TTIN", SIGTTIN},     {"TTOU", SIGTTOU},
    {"URG", SIGURG},       {"XCPU", SIGXCPU},     {"XFSZ", SIGXFSZ},     {"VTALRM", SIGVTALRM},
    {"PROF", SIGPROF},     {"WINCH", SIGWINCH},   {"IO", SIGIO},         {"POLL", SIGPOLL},
    {"PWR", SIGPWR},       {"SYS", SIGSYS},
};

/* Decimal digits only (no sign, no spaces), at most 3 of them; -1 otherwise. */
static int small_decimal(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > 3 || strspn(s, "0123456789") != n)
    return -1;
  return atoi(s);
}

int sbx_signal_parse(json_t *v) {
  if (json_is_integer(v)) {
    json_int_t n = json_integer_value(v);
    return (n >= 1 && n <= 64) ? (int)n : -1;
  }
  if (!json_is_string(v) || has_nul(v))
    return -1;
  const char *s = json_string_value(v);
  int n = small_decimal(s);
  if (n >= 0)
    return (n >= 1 && n <= 64) ? n : -1;

  char up[24];
  size_t len = strlen(s);
  if (len >= sizeof up)
    return -1;
  for (size_t i = 0; i <= len; i++)
    up[i] = (char)toupper((unsigned char)s[i]);
  const char *name = strncmp(up, "SIG", 3) == 0 ? up + 3 : up;
  for (size_t i = 0; i < SBX_ARRAY_LEN(sig_names); i++)
    if (strcmp(name, sig_names[i].name) == 0)
      return sig_names[i].num;

  /* RTMIN, RTMIN+n, RTMAX, RTMAX-n, as kill -l spells them */
  if (strncmp(name, "RTMIN", 5) == 0 || strncmp(name, "RTMAX", 5) == 0) {
    bool min = name[4] == 'N';
    const char *rest = name + 5;
    int sig = min ? SIGRTMIN : SIGRTMAX;
    if (*rest == '\0')
      return sig;
    if (*rest != (min ? '+' : '-'))
      return -1;
    int off = small_decimal(rest + 1);
    if (off < 0)
      return -1;
    sig = min ? sig + off : sig - off;
    return (sig >= SIGRTMIN && sig <= SIGRTMAX) ? sig : -1;
  }
  return -1;
}
