/* libsbx - the C client library of sbx (https://.../SPEC.md).
 *
 * One header, opaque objects, one error convention:
 *
 *   - Every call that can fail returns an int (< 0 on failure) or a pointer
 *     (NULL on failure) and fills a caller-owned `sbx_error` (may be NULL when
 *     the caller does not care).  The error has fixed-size buffers: nothing to
 *     free.
 *   - Objects returned through `**out` parameters or as pointers belong to the
 *     caller and are released with the matching `_free` (NULL is accepted).
 *   - `const char *` returned by accessors are borrowed from the object they
 *     came from and live as long as it does.  They are never NULL for string
 *     fields the server always sends; fields that can be JSON null return NULL.
 *   - Strings passed in are copied; the library keeps no pointer into caller
 *     memory after a call returns.
 *
 * Threads: a client may be shared by threads (every REST call uses its own
 * curl handle).  A stream is used by one thread at a time, except that
 * sbx_stream_signal/kill/resize and the stdin writer may be called from any
 * thread while another blocks in sbx_stream_recv.
 *
 * Transport: REST through libcurl, WebSocket streaming through libwebsockets
 * (subprotocol `sbx.v1.binary`), one private lws context and service thread
 * per stream.
 */
#ifndef SBX_CLIENT_H
#define SBX_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- errors ---------------------------------------------------------------- */

/* The SPEC's error kinds, plus the client's own (TRANSPORT .. UNKNOWN). */
typedef enum sbx_error_kind {
  SBX_ERR_NONE = 0,
  SBX_ERR_INVALID_REQUEST,        /* 400 (also: bad arguments caught client-side) */
  SBX_ERR_UNAUTHORIZED,           /* 401 */
  SBX_ERR_FORBIDDEN,              /* 403 */
  SBX_ERR_NOT_FOUND,              /* 404 no such route */
  SBX_ERR_SANDBOX_NOT_FOUND,      /* 404 */
  SBX_ERR_EXEC_NOT_FOUND,         /* 404 */
  SBX_ERR_METHOD_NOT_ALLOWED,     /* 405 */
  SBX_ERR_SANDBOX_ALREADY_EXISTS, /* 409 */
  SBX_ERR_SANDBOX_NOT_RUNNING,    /* 409 */
  SBX_ERR_PAYLOAD_TOO_LARGE,      /* 413 */
  SBX_ERR_EXEC_FAILED,            /* 422, `failure` is filled */
  SBX_ERR_RATE_LIMITED,           /* 429 */
  SBX_ERR_INTERNAL,               /* 500 */
  SBX_ERR_CAPACITY,               /* 503 */
  SBX_ERR_EXEC_TIMEOUT,           /* 504, `exec_id` is filled (and the output, see sbx_exec) */
  SBX_ERR_TRANSPORT,              /* could not connect / send / receive; or a reply that is not the API's */
  SBX_ERR_TIMEOUT,                /* a client-side timeout or deadline passed */
  SBX_ERR_UNKNOWN,                /* a kind this library does not know; see kind_name */
} sbx_error_kind;

/* Why a program never started (SPEC "failure"), as the agent saw it. */
typedef struct sbx_failure {
  char kind[32];       /* not_found, permission_denied, not_executable, bad_cwd, bad_user, ... */
  int err_no;          /* errno, 0 if none */
  char errno_name[32]; /* "ENOENT" */
  char path[1024];     /* "" when none */
  char stage[32];      /* "execve", "chdir", ... */
  char message[512];
} sbx_failure;

typedef struct sbx_error {
  sbx_error_kind kind;
  char kind_name[48];  /* the kind as a string ("exec_failed", "transport", ...) */
  int http_status;     /* 0 when no HTTP reply was involved */
  char message[1024];
  char field[128];     /* invalid_request: the culprit field, else "" */
  char exec_id[40];    /* exec_timeout: the exec, else "" */
  int has_failure;     /* exec_failed (and streamed `failed`): `failure` is valid */
  sbx_failure failure;
  int retry_after_s;   /* rate_limited / capacity: Retry-After, else 0 */
} sbx_error;

/* "exec_failed" for SBX_ERR_EXEC_FAILED etc.; never NULL. */
const char *sbx_error_kind_name(sbx_error_kind kind);
/* The inverse; SBX_ERR_UNKNOWN for a name it does not know. */
sbx_error_kind sbx_error_kind_from_name(const char *name);

/* ---- client ------------------------------------------------------------------ */

typedef struct sbx_client sbx_client;

/* base_url like "http://127.0.0.1:7070" (https works where libcurl and
 * libwebsockets have TLS); api_key may be NULL (sent as a Bearer token).
 * Returns NULL with err filled on a malformed URL or out of memory.  Free with
 * sbx_client_free, after every stream made from it is closed. */
sbx_client *sbx_client_new(const char *base_url, const char *api_key, sbx_error *err);
void sbx_client_free(sbx_client *c);

/* connect_ms: TCP/TLS connect limit (default 10000).  request_ms: whole REST
 * call limit, 0 = none (the default: one-shot execs run as long as their own
 * timeout_ms).  A passed limit is SBX_ERR_TIMEOUT. */
void sbx_client_set_timeouts(sbx_client *c, long connect_ms, long request_ms);

/* The base URL (without a trailing slash); borrowed. */
const char *sbx_client_url(const sbx_client *c);

/* GET /v1/health: 0 when the server answers {"status":"ok"}. */
int sbx_health(sbx_client *c, sbx_error *err);

/* ---- sandboxes ----------------------------------------------------------------- */

/* Every SPEC field of POST /v1/sandboxes; zero/NULL = "not sent" (server default). */
typedef struct sbx_create_opts {
  const char *name;
  const char *image;                 /* "host" or a rootfs folder name */
  const char *const *env;            /* NULL-terminated "K=V" list */
  const char *workdir;
  const char *shell;
  long memory_mib;                   /* limits; 0 = default */
  double cpus;
  long pids;
  long disk_mib;
  const char *network;               /* "none" */
  const char *const *labels;         /* NULL-terminated "K=V" list */
  long idle_timeout_s;               /* 0 = not sent */
  long max_duration_s;
  const char *driver;                /* "ns" or "vm" */
  int replace;                       /* remove a sandbox of that name first */
} sbx_create_opts;

typedef struct sbx_sandbox sbx_sandbox;

/* POST /v1/sandboxes; opts may be NULL (all defaults).  The sandbox is running. */
sbx_sandbox *sbx_sandbox_create(sbx_client *c, const sbx_create_opts *opts, sbx_error *err);
/* GET /v1/sandboxes/{ref} (ref: id or name). */
sbx_sandbox *sbx_sandbox_get(sbx_client *c, const char *ref, sbx_error *err);
/* POST .../stop and .../start: the sandbox as it is afterwards. */
sbx_sandbox *sbx_sandbox_stop(sbx_client *c, const char *ref, sbx_error *err);
sbx_sandbox *sbx_sandbox_start(sbx_client *c, const char *ref, sbx_error *err);
/* GET /v1/sandboxes/{ref}/logs: the last tail_bytes (0: the server's default,
 * 64 KiB) of the sandbox's log (vm: serial console; ns: agent log), malloc'd
 * in *data (caller frees) with *len bytes. */
int sbx_sandbox_logs(sbx_client *c, const char *ref, long tail_bytes, unsigned char **data,
                     size_t *len, sbx_error *err);
/* DELETE /v1/sandboxes/{ref}: 0 on 204. */
int sbx_sandbox_remove(sbx_client *c, const char *ref, sbx_error *err);
void sbx_sandbox_free(sbx_sandbox *s);

const char *sbx_sandbox_id(const sbx_sandbox *s);
const char *sbx_sandbox_name(const sbx_sandbox *s);
const char *sbx_sandbox_state(const sbx_sandbox *s);     /* creating running stopping stopped failed */
const char *sbx_sandbox_image(const sbx_sandbox *s);
const char *sbx_sandbox_workdir(const sbx_sandbox *s);
const char *sbx_sandbox_shell(const sbx_sandbox *s);
const char *sbx_sandbox_network(const sbx_sandbox *s);
const char *sbx_sandbox_driver(const sbx_sandbox *s);
const char *sbx_sandbox_accelerator(const sbx_sandbox *s); /* "kvm"/"tcg" (vm), NULL (ns) */
const char *sbx_sandbox_created_at(const sbx_sandbox *s);
const char *sbx_sandbox_started_at(const sbx_sandbox *s); /* NULL if never */
const char *sbx_sandbox_stopped_at(const sbx_sandbox *s); /* NULL if not stopped */
const char *sbx_sandbox_error(const sbx_sandbox *s);      /* NULL unless failed */
long sbx_sandbox_memory_mib(const sbx_sandbox *s);
double sbx_sandbox_cpus(const sbx_sandbox *s);
long sbx_sandbox_pids(const sbx_sandbox *s);
long sbx_sandbox_disk_mib(const sbx_sandbox *s);
long sbx_sandbox_idle_timeout_s(const sbx_sandbox *s);
long sbx_sandbox_max_duration_s(const sbx_sandbox *s);
/* One env / label value by key, NULL if absent. */
const char *sbx_sandbox_env(const sbx_sandbox *s, const char *key);
const char *sbx_sandbox_label(const sbx_sandbox *s, const char *key);
/* The object as the server sent it (compact JSON). */
const char *sbx_sandbox_json(const sbx_sandbox *s);

typedef struct sbx_list_opts {
  const char *state;                 /* filter, NULL = any */
  const char *const *labels;         /* NULL-terminated "k=v" filters, all must match */
  int limit;                         /* 0 = server default (50), max 500 */
  const char *cursor;                /* from sbx_sandbox_list_next_cursor, NULL = first page */
} sbx_list_opts;

typedef struct sbx_sandbox_list sbx_sandbox_list;

/* GET /v1/sandboxes: one page.  opts may be NULL. */
sbx_sandbox_list *sbx_sandbox_list_get(sbx_client *c, const sbx_list_opts *opts, sbx_error *err);
size_t sbx_sandbox_list_count(const sbx_sandbox_list *l);
/* Borrowed from the list; i < count. */
const sbx_sandbox *sbx_sandbox_list_at(const sbx_sandbox_list *l, size_t i);
/* NULL on the last page. */
const char *sbx_sandbox_list_next_cursor(const sbx_sandbox_list *l);
const char *sbx_sandbox_list_json(const sbx_sandbox_list *l);
void sbx_sandbox_list_free(sbx_sandbox_list *l);

/* ---- one-shot exec ------------------------------------------------------------- */

/* Options of every exec, one-shot or streamed; zero/NULL = server default. */
typedef struct sbx_exec_opts {
  const char *cwd;
  const char *const *env;        /* NULL-terminated "K=V", merged over the sandbox's env */
  const char *user;              /* uid ("1000") or a user name of the sandbox */
  long timeout_ms;               /* 0 = none */
  const void *stdin_data;        /* bytes written to stdin, then EOF (at most 512 KiB) */
  size_t stdin_len;
  int stdin_pipe;                /* streams only: keep stdin open for sbx_stream_take_stdin;
                                    without it a stream's stdin gets stdin_data, then EOF */
  int tty;
  int rows, cols;                /* tty size, 0 = default 24x80 */
  const char *encoding;          /* one-shot reply encoding: "utf8" or "base64" (NULL: base64,
                                    so that sbx_output_*_bytes are exact) */
  long long max_output_bytes;    /* per stream, 0 = server default (16 MiB) */
  int detach;                    /* streams only: closing the socket does not kill the exec */
} sbx_exec_opts;

typedef struct sbx_output sbx_output;

/* POST /v1/sandboxes/{ref}/exec: run cmd with args (NULL-terminated, may be
 * NULL) and wait.  Returns 0 with *out set when the program ran, whatever its
 * exit code.  On failure returns -1 and fills err; for SBX_ERR_EXEC_TIMEOUT
 * *out is ALSO set, to the output printed before the kill (free it).  For
 * SBX_ERR_EXEC_FAILED err->failure says why.  opts may be NULL. */
int sbx_exec(sbx_client *c, const char *ref, const char *cmd, const char *const *args,
             const sbx_exec_opts *opts, sbx_output **out, sbx_error *err);
/* POST /v1/sandboxes/{ref}/shell: `<sandbox shell> -c command`; as sbx_exec. */
int sbx_shell(sbx_client *c, const char *ref, const char *command, const sbx_exec_opts *opts,
              sbx_output **out, sbx_error *err);
/* The same with "background": true: returns at once with the exec id copied
 * to exec_id (at least 40 bytes); follow it with sbx_exec_wait / sbx_attach. */
int sbx_exec_background(sbx_client *c, const char *ref, const char *cmd, const char *const *args,
                        const sbx_exec_opts *opts, char *exec_id, size_t exec_id_size,
                        sbx_error *err);
int sbx_shell_background(sbx_client *c, const char *ref, const char *command,
                         const sbx_exec_opts *opts, char *exec_id, size_t exec_id_size,
                         sbx_error *err);

const char *sbx_output_exec_id(const sbx_output *o);
int sbx_output_exit_code(const sbx_output *o);  /* -1 when killed by a signal */
int sbx_output_success(const sbx_output *o);    /* exit_code == 0 */
int sbx_output_signal(const sbx_output *o);     /* 0 = none */
/* Output as NUL-terminated UTF-8 text (invalid bytes became U+FFFD). */
const char *sbx_output_stdout(const sbx_output *o);
const char *sbx_output_stderr(const sbx_output *o);
/* Output as bytes (exact unless the reply was requested as "utf8"); *len set. */
const unsigned char *sbx_output_stdout_bytes(const sbx_output *o, size_t *len);
const unsigned char *sbx_output_stderr_bytes(const sbx_output *o, size_t *len);
int sbx_output_stdout_truncated(const sbx_output *o);
int sbx_output_stderr_truncated(const sbx_output *o);
long sbx_output_duration_ms(const sbx_output *o);   /* -1 when unknown (streamed) */
void sbx_output_free(sbx_output *o);

/* ---- exec records and control (REST) ------------------------------------------ */

typedef struct sbx_exec_info sbx_exec_info;

/* GET /v1/execs/{id}. */
sbx_exec_info *sbx_exec_get(sbx_client *c, const char *exec_id, sbx_error *err);
/* GET /v1/execs/{id}/wait?timeout_ms=: the record once it ended, or still
 * "running" when timeout_ms (0 = server default) passed first. */
sbx_exec_info *sbx_exec_wait(sbx_client *c, const char *exec_id, long timeout_ms, sbx_error *err);
/* POST /v1/execs/{id}/signal: sig is a name ("SIGTERM", "TERM") or a number ("15"). */
int sbx_exec_signal(sbx_client *c, const char *exec_id, const char *sig, sbx_error *err);
/* POST /v1/execs/{id}/kill. */
int sbx_exec_kill(sbx_client *c, const char *exec_id, sbx_error *err);
/* POST /v1/execs/{id}/stdin: append bytes, then close stdin when eof. */
int sbx_exec_stdin(sbx_client *c, const char *exec_id, const void *data, size_t len, int eof,
                   sbx_error *err);
/* POST /v1/execs/{id}/resize (tty execs). */
int sbx_exec_resize(sbx_client *c, const char *exec_id, int rows, int cols, sbx_error *err);
/* GET /v1/execs/{id}/output: the retained bytes of "stdout"/"stderr" from
 * offset.  *data (malloc'd, free() it, NUL-terminated for convenience) and
 * *len; *first (X-Sbx-Offset), *next (X-Sbx-Next-Offset), *complete
 * (X-Sbx-Complete) may be NULL when not wanted. */
int sbx_exec_output(sbx_client *c, const char *exec_id, const char *stream, uint64_t offset,
                    unsigned char **data, size_t *len, uint64_t *first, uint64_t *next,
                    int *complete, sbx_error *err);

typedef struct sbx_exec_list sbx_exec_list;
/* GET /v1/sandboxes/{ref}/execs, newest first; state may be NULL, cursor NULL = first page. */
sbx_exec_list *sbx_exec_list_get(sbx_client *c, const char *ref, const char *state, int limit,
                                 const char *cursor, sbx_error *err);
size_t sbx_exec_list_count(const sbx_exec_list *l);
const sbx_exec_info *sbx_exec_list_at(const sbx_exec_list *l, size_t i);  /* borrowed */
const char *sbx_exec_list_next_cursor(const sbx_exec_list *l);
const char *sbx_exec_list_json(const sbx_exec_list *l);
void sbx_exec_list_free(sbx_exec_list *l);

const char *sbx_exec_info_id(const sbx_exec_info *e);
const char *sbx_exec_info_sandbox_id(const sbx_exec_info *e);
const char *sbx_exec_info_cmd(const sbx_exec_info *e);
const char *sbx_exec_info_state(const sbx_exec_info *e);  /* running exited failed timed_out killed */
int sbx_exec_info_running(const sbx_exec_info *e);
int sbx_exec_info_tty(const sbx_exec_info *e);            /* runs on a pseudo-terminal */
long sbx_exec_info_pid(const sbx_exec_info *e);           /* -1 when null */
int sbx_exec_info_exit_code(const sbx_exec_info *e);      /* -1 when null or killed */
int sbx_exec_info_signal(const sbx_exec_info *e);         /* 0 = none */
/* 1 and *f filled when the record has a failure, else 0. */
int sbx_exec_info_failure(const sbx_exec_info *e, sbx_failure *f);
const char *sbx_exec_info_started_at(const sbx_exec_info *e);
const char *sbx_exec_info_ended_at(const sbx_exec_info *e);  /* NULL while running */
long long sbx_exec_info_stdout_bytes(const sbx_exec_info *e);
long long sbx_exec_info_stderr_bytes(const sbx_exec_info *e);
const char *sbx_exec_info_json(const sbx_exec_info *e);
void sbx_exec_info_free(sbx_exec_info *e);

/* ---- streaming (WebSocket, sbx.v1.binary) -------------------------------------- */

typedef enum sbx_event_type {
  SBX_EV_STARTED = 1, /* exec_id, pid */
  SBX_EV_STDOUT,      /* data, len, offset */
  SBX_EV_STDERR,      /* data, len, offset */
  SBX_EV_STDIN_ERROR, /* failure (not terminal) */
  SBX_EV_GAP,         /* stream (SBX_EV_STDOUT/STDERR), from, to: a viewer fell behind */
  SBX_EV_ERROR,       /* error (e.g. exec_timeout); exited and done follow */
  SBX_EV_EXITED,      /* exit_code (-1 when killed), signal (0 = none) */
  SBX_EV_FAILED,      /* failure: the program never started (terminal) */
  SBX_EV_DONE,        /* the last event */
} sbx_event_type;

/* Filled by sbx_stream_recv; pointers are owned by the stream and valid until
 * the next recv on it or its close. */
typedef struct sbx_event {
  sbx_event_type type;
  char exec_id[40];
  long pid;
  const unsigned char *data;
  size_t len;
  uint64_t offset;
  int exit_code;
  int signal;
  sbx_failure failure;
  sbx_error error;
  sbx_event_type gap_stream;
  uint64_t gap_from, gap_to;
} sbx_event;

typedef struct sbx_stream sbx_stream;
typedef struct sbx_stdin sbx_stdin;

/* Start cmd/args (or a shell command) over GET /v1/sandboxes/{ref}/exec/ws and
 * return once the server accepted the socket (events follow through recv).
 * Closing the stream without opts->detach kills the exec (the server's rule).
 * Connection refusals map to error kinds (4404 -> sandbox_not_found, 4409 ->
 * sandbox_not_running, an HTTP status instead of 101 -> its kind). */
sbx_stream *sbx_exec_stream(sbx_client *c, const char *ref, const char *cmd,
                            const char *const *args, const sbx_exec_opts *opts, sbx_error *err);
sbx_stream *sbx_shell_stream(sbx_client *c, const char *ref, const char *command,
                             const sbx_exec_opts *opts, sbx_error *err);
/* GET /v1/execs/{id}/ws?offset=&stderr_offset=: replay from those byte
 * offsets, then live.  Closing it never affects the exec. */
sbx_stream *sbx_attach(sbx_client *c, const char *exec_id, uint64_t stdout_offset,
                       uint64_t stderr_offset, sbx_error *err);

/* sbx_attach for an interactive viewer: the stream also writes to the exec's
 * stdin (take the writer with sbx_stream_take_stdin; closing the writer
 * closes the exec's stdin for everyone, so a viewer that only leaves must
 * not close it). */
sbx_stream *sbx_attach_stdin(sbx_client *c, const char *exec_id, uint64_t stdout_offset,
                             uint64_t stderr_offset, sbx_error *err);

/* Next event, waiting at most timeout_ms (-1 = forever).  Returns 1 with *ev
 * filled; 0 after SBX_EV_DONE was delivered (no more events); -1 on error:
 * SBX_ERR_TIMEOUT when the wait passed (the stream stays usable), or the
 * reason the socket ended early (kind from its close code, or transport). */
int sbx_stream_recv(sbx_stream *s, sbx_event *ev, int timeout_ms, sbx_error *err);

/* The stdin writer, once: NULL (invalid_request) on a second take or when the
 * stream was not started with stdin_pipe.  Owned by the stream. */
sbx_stdin *sbx_stream_take_stdin(sbx_stream *s, sbx_error *err);
/* Queue bytes for the program's stdin; blocks while more than a few MiB are
 * queued.  Thread-safe against recv. */
int sbx_stdin_write(sbx_stdin *w, const void *data, size_t len, sbx_error *err);
/* Send EOF; later writes fail. */
int sbx_stdin_close(sbx_stdin *w, sbx_error *err);

/* Read every event until done and return the result as an sbx_output, like
 * sbx_exec (exec_failed: -1 and err->failure; exec_timeout: -1 and *out set).
 * timeout_ms bounds the whole collection (-1 = forever). */
int sbx_stream_collect(sbx_stream *s, int timeout_ms, sbx_output **out, sbx_error *err);
/* Discard output until the exec ends; returns 0 and sets *exit_code (-1 when
 * killed) and *signal (0 = none), or -1 (exec_failed with err->failure, ...). */
int sbx_stream_wait(sbx_stream *s, int timeout_ms, int *exit_code, int *signal, sbx_error *err);

/* Control messages over the socket; thread-safe against recv. sig: name or number. */
int sbx_stream_signal(sbx_stream *s, const char *sig, sbx_error *err);
int sbx_stream_kill(sbx_stream *s, sbx_error *err);
int sbx_stream_resize(sbx_stream *s, int rows, int cols, sbx_error *err);
/* Wait until every queued message (stdin, signal, resize...) was handed to
 * the socket, at most timeout_ms (-1 = forever): a caller about to close the
 * stream or exit uses it so that its last messages are not dropped.  -1 with
 * SBX_ERR_TIMEOUT, or SBX_ERR_TRANSPORT when the socket ended first. */
int sbx_stream_flush(sbx_stream *s, int timeout_ms, sbx_error *err);
/* The exec id once `started` arrived (or the attached id), else NULL. */
const char *sbx_stream_exec_id(const sbx_stream *s);
/* Close the socket (normal closure) and free the stream.  An exec started with
 * detach, or attached to, keeps running.  No other thread may be using the
 * stream or its stdin writer when it is called. */
void sbx_stream_close(sbx_stream *s);

#ifdef __cplusplus
}
#endif
#endif
