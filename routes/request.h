/* request.h - validating REST request bodies and rendering exec replies.
 *
 * Pure functions (no I/O, no globals), so they are unit-tested directly and
 * fuzzed.  Every validation failure is SBX_E_INVALID_REQUEST with err->field
 * naming the culprit (dotted for nested keys: "limits.memory_mib", "env.K",
 * "args[2]").  Unknown top-level fields are rejected too (a typo such as
 * "timeout" for "timeout_ms" must not be silently ignored).
 */
#ifndef SBX_ROUTES_REQUEST_H
#define SBX_ROUTES_REQUEST_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "../common/b64.h"
#include "../common/buf.h"
#include "../common/err.h"

/* Server-side caps the parsers enforce. */
#define SBX_MAX_OUTPUT_DEFAULT (16u * 1024 * 1024)  /* per stream, when not asked */
#define SBX_MAX_OUTPUT_CAP (1024ull * 1024 * 1024)  /* the most a request may ask */
#define SBX_MAX_ARGS 4096
#define SBX_MAX_TIMEOUT_MS (7LL * 24 * 3600 * 1000)
/* stdin / stdin_b64 bytes in one request: base64 of it must fit, with the rest
 * of the EXEC spec, in one agent frame (SBX_PROTO_MAX_PAYLOAD, 1 MiB); more
 * input goes through POST /v1/execs/{id}/stdin. */
#define SBX_MAX_STDIN (512u * 1024)

/* In both parsers an optional field given as JSON null counts as absent. */

/* ---- POST /v1/sandboxes ---- */
/* Validate a create body and build the new sandbox object (SPEC shape) with
 * defaults filled: image "host", env {}, workdir "/", shell "/bin/sh",
 * limits {memory_mib 512, cpus 1.0, pids 256, disk_mib 1024}, network "none",
 * labels {}, idle_timeout_s 0, max_duration_s 0, driver "ns", state "creating",
 * created_at now, started_at/stopped_at null.  `id` is the new sandbox id.
 * *replace is set from "replace".  Returns a new reference or NULL + err. */
json_t *sandbox_request_parse(json_t *body, const char *id, int64_t now_ms, bool *replace,
                              sbx_err *err);

/* ---- POST .../exec and .../shell ---- */
typedef enum { SBX_ENC_UTF8, SBX_ENC_BASE64 } sbx_encoding;

typedef struct exec_request {
  char *cmd;             /* program (shell mode: the sandbox's shell) */
  json_t *args;          /* array of strings (shell mode: ["-c", command]) */
  char *cwd;             /* NULL = the sandbox's workdir */
  json_t *env;           /* object string->string, the request's own (may be empty) */
  char *user;            /* NULL = sandbox default (root) */
  int64_t timeout_ms;    /* 0 = none */
  uint8_t *stdin_data;   /* decoded stdin bytes, NULL if none */
  size_t stdin_len;
  bool has_stdin;        /* "stdin" or "stdin_b64" was given (even empty) */
  sbx_encoding encoding;
  uint64_t max_output_bytes;
  bool tty;
  int rows, cols;        /* defaults 24 x 80 */
  bool background;
  bool detach;           /* WebSocket start only */
} exec_request;

/* Parse an ExecRequest.  shell_mode: the body has "command" (string) instead
 * of "cmd"/"args", and cmd/args become <shell> -c command.  allow_ws_fields
 * permits the WebSocket-only keys ("type", "detach", "shell" as the command).
 * 0 or -1 + err; on success the caller owns *out and frees it with
 * exec_request_clear. */
int exec_request_parse(json_t *body, bool shell_mode, const char *sandbox_shell,
                       bool allow_ws_fields, exec_request *out, sbx_err *err);
void exec_request_clear(exec_request *r);

/* The agent's EXEC payload (agent/proto.h) for a request in a sandbox: env is
 * a default PATH/HOME/TERM-less base, merged with the sandbox's env, then the
 * request's env; cwd falls back to the sandbox's workdir.  New reference. */
json_t *exec_request_agent_spec(const exec_request *r, json_t *sandbox, const char *exec_id);

/* ---- ExecOutput rendering, streamed ----
 * Renders, a piece at a time so that a 100 MiB reply never needs a second
 * 100 MiB copy, either the 200 ExecOutput object
 *   {"exec_id","exit_code","success","signal","stdout","stderr","encoding",
 *    "stdout_truncated","stderr_truncated","duration_ms"}
 * or, when timed_out, the 504 error
 *   {"error":{"kind":"exec_timeout","message":...,"exec_id":..., and the same
 *    partial output fields}}.
 * utf8 encoding replaces each invalid byte sequence with U+FFFD (also across
 * chunk boundaries); base64 is exact.  The source buffers must stay alive and
 * unchanged while rendering. */
typedef struct exec_output {
  char exec_id[32];
  int exit_code;        /* -1 when killed by a signal */
  int signal;           /* 0 = none (rendered null) */
  bool timed_out;
  int64_t timeout_ms;   /* for the timeout message */
  int64_t duration_ms;
  sbx_encoding encoding;
  const sbx_chunks *out, *err;
  bool out_truncated, err_truncated;
} exec_output;

typedef struct exec_render exec_render; /* opaque cursor */
exec_render *exec_render_new(const exec_output *o);
void exec_render_free(exec_render *r);
/* Write up to max bytes of JSON into buf; returns the count, 0 when done. */
size_t exec_render_next(exec_render *r, char *buf, size_t max);

/* ---- helpers also used elsewhere ---- */
/* Signal by name ("SIGTERM", "TERM", "sigterm") or number (1..64) as JSON
 * string or integer; returns the number or -1. */
int sbx_signal_parse(json_t *v);

#endif
