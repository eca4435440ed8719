/* libsbx against a real sbxd: main() starts build/sbxd on a free port with a
 * temporary data dir, every test talks to it, main() stops it with SIGTERM.
 * Streaming tests need the server's WebSocket routes: when the server answers
 * the upgrade with 501 they are reported as skipped on stderr (set
 * SBX_REQUIRE_STREAMING=1 to make that a failure). */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "client/sbx.h"

static char url[128];
static char build_dir[512] = "build";
static pid_t server_pid = -1;
static char data_dir[256];

/* ---- fixture helpers ------------------------------------------------------------ */

static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t l = sizeof a;
  if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0 ||
      getsockname(fd, (struct sockaddr *)&a, &l) < 0)
    return -1;
  close(fd);
  return ntohs(a.sin_port);
}

static sbx_client *cl(void) {
  sbx_error e;
  sbx_client *c = sbx_client_new(url, NULL, &e);
  ck_assert_msg(c != NULL, "client: %s", e.message);
  return c;
}

static char *uniq(const char *prefix) {
  static char buf[64];
  snprintf(buf, sizeof buf, "%s-%d-%ld", prefix, getpid(), random() % 100000);
  return buf;
}

/* A running sandbox with a unique name; removed by rm(). */
static sbx_sandbox *mk(sbx_client *c, const char *prefix) {
  sbx_error e;
  sbx_create_opts o = {.name = uniq(prefix), .env = (const char *[]){"SBX_A=1", NULL}};
  sbx_sandbox *s = sbx_sandbox_create(c, &o, &e);
  ck_assert_msg(s != NULL, "create: %s (%s)", e.message, e.kind_name);
  return s;
}

static void rm(sbx_client *c, sbx_sandbox *s) {
  sbx_error e;
  ck_assert_msg(sbx_sandbox_remove(c, sbx_sandbox_id(s), &e) == 0, "remove: %s", e.message);
  sbx_sandbox_free(s);
}

static int streaming_supported = -1;

/* 1 when the server streams; else prints a skip note (or fails when required). */
static int need_streaming(const char *test) {
  if (streaming_supported == 0) {
    if (getenv("SBX_REQUIRE_STREAMING"))
      ck_abort_msg("%s: the server does not support WebSocket streaming", test);
    fprintf(stderr, "SKIP %s: server has no WebSocket streaming (HTTP 501)\n", test);
    return 0;
  }
  return 1;
}

/* ---- client, errors ------------------------------------------------------------- */

START_TEST(test_kind_names) {
  for (int k = SBX_ERR_INVALID_REQUEST; k <= SBX_ERR_UNKNOWN; k++) {
    if (k == SBX_ERR_UNKNOWN)
      continue;
    ck_assert_int_eq(sbx_error_kind_from_name(sbx_error_kind_name(k)), k);
  }
  ck_assert_str_eq(sbx_error_kind_name(SBX_ERR_EXEC_FAILED), "exec_failed");
  ck_assert_str_eq(sbx_error_kind_name(SBX_ERR_TRANSPORT), "transport");
  ck_assert_int_eq(sbx_error_kind_from_name("nope"), SBX_ERR_UNKNOWN);
  ck_assert_int_eq(sbx_error_kind_from_name(NULL), SBX_ERR_UNKNOWN);
}
END_TEST

START_TEST(test_client_bad_url) {
  sbx_error e;
  ck_assert_ptr_null(sbx_client_new("ftp://x", NULL, &e));
  ck_assert_int_eq(e.kind, SBX_ERR_INVALID_REQUEST);
  ck_assert_ptr_null(sbx_client_new("http://", NULL, &e));
  ck_assert_int_eq(e.kind, SBX_ERR_INVALID_REQUEST);
  ck_assert_ptr_null(sbx_client_new(NULL, NULL, NULL)); /* err may be NULL */
  sbx_client *c = sbx_client_new("http://127.0.0.1:1///", "k", &e);
  ck_assert_ptr_nonnull(c);
  ck_assert_str_eq(sbx_client_url(c), "http://127.0.0.1:1");
  sbx_client_free(c);
}
END_TEST

START_TEST(test_transport_error) {
  char u[64];
  snprintf(u, sizeof u, "http://127.0.0.1:%d", free_port());
  sbx_error e;
  sbx_client *c = sbx_client_new(u, NULL, &e);
  ck_assert_int_eq(sbx_health(c, &e), -1);
  ck_assert_int_eq(e.kind, SBX_ERR_TRANSPORT);
  ck_assert_str_eq(e.kind_name, "transport");
  ck_assert_int_eq(e.http_status, 0);
  ck_assert_ptr_null(sbx_exec_stream(c, "x", "true", NULL, NULL, &e));
  ck_assert_int_eq(e.kind, SBX_ERR_TRANSPORT);
  sbx_client_free(c);
}
END_TEST

START_TEST(test_route_not_found) {
  /* a base URL with a path prefix the server does not serve: 404 not_found */
  char u[200];
  snprintf(u, sizeof u, "%s/not-here", url);
  sbx_error e;
  sbx_client *c = sbx_client_new(u, NULL, &e);
  ck_assert_ptr_nonnull(c);
  ck_assert_int_eq(sbx_health(c, &e), -1);
  ck_assert_int_eq(e.kind, SBX_ERR_NOT_FOUND);
  ck_assert_str_eq(e.kind_name, "not_found");
  ck_assert_int_eq(e.http_status, 404);
  sbx_client_free(c);
}
END_TEST

START_TEST(test_health_and_timeout) {
  sbx_client *c = cl();
  sbx_error e;
  ck_assert_int_eq(sbx_health(c, &e), 0);
  sbx_sandbox *s = mk(c, "to");
  sbx_client_set_timeouts(c, 0, 300);
  sbx_output *o = NULL;
  const char *args[] = {"2", NULL};
  ck_assert_int_eq(sbx_exec(c, sbx_sandbox_id(s), "sleep", args, NULL, &o, &e), -1);
  ck_assert_int_eq(e.kind, SBX_ERR_TIMEOUT);
  ck_assert_ptr_null(o);
  sbx_client_set_timeouts(c, 0, 0);
  rm(c, s);
  sbx_client_free(c);
}
END_TEST

/* ---- sandboxes -------------------------------------------------------------------- */

START_TEST(test_sandbox_all_fields) {
  sbx_client *c = cl();
  sbx_error e;
  char name[64];
  snprintf(name, sizeof name, "%s", uniq("full"));
  sbx_create_opts o = {.name = name,
                       .image = "host",
                       .env = (const char *[]){"K1=v1", "K2=a=b", NULL},
                       .workdir = "/tmp",
                       .shell = "/bin/sh",
                       .memory_mib = 256,
                       .cpus = 0.5,
                       .pids = 100,
                       .disk_mib = 512,
                       .network = "none",
                       .labels = (const char *[]){"team=a", "tier=web", NULL},
                       .idle_timeout_s = 60,
                       .max_duration_s = 3600,
                       .driver = "ns"};
  sbx_sandbox *s = sbx_sandbox_create(c, &o, &e);
  ck_assert_msg(s != NULL, "%s", e.message);
  ck_assert_str_eq(sbx_sandbox_name(s), name);
  ck_assert_str_eq(sbx_sandbox_state(s), "running");
  ck_assert_str_eq(sbx_sandbox_image(s), "host");
  ck_assert_str_eq(sbx_sandbox_workdir(s), "/tmp");
  ck_assert_str_eq(sbx_sandbox_shell(s), "/bin/sh");
  ck_assert_str_eq(sbx_sandbox_network(s), "none");
  ck_assert_str_eq(sbx_sandbox_driver(s), "ns");
  ck_assert_int_eq(sbx_sandbox_memory_mib(s), 256);
  ck_assert(sbx_sandbox_cpus(s) > 0.49 && sbx_sandbox_cpus(s) < 0.51);
  ck_assert_int_eq(sbx_sandbox_pids(s), 100);
  ck_assert_int_eq(sbx_sandbox_disk_mib(s), 512);
  ck_assert_int_eq(sbx_sandbox_idle_timeout_s(s), 60);
  ck_assert_int_eq(sbx_sandbox_max_duration_s(s), 3600);
  ck_assert_str_eq(sbx_sandbox_env(s, "K1"), "v1");
  ck_assert_str_eq(sbx_sandbox_env(s, "K2"), "a=b");
  ck_assert_ptr_null(sbx_sandbox_env(s, "NOPE"));
  ck_assert_str_eq(sbx_sandbox_label(s, "team"), "a");
  ck_assert_ptr_nonnull(sbx_sandbox_created_at(s));
  ck_assert_ptr_nonnull(sbx_sandbox_started_at(s));
  ck_assert_ptr_null(sbx_sandbox_stopped_at(s));
  ck_assert_ptr_null(sbx_sandbox_error(s));
  ck_assert_ptr_nonnull(strstr(sbx_sandbox_json(s), "\"tier\":\"web\""));
  ck_assert_int_eq(strncmp(sbx_sandbox_id(s), "sbx_", 4), 0);
  ck_assert_ptr_null(sbx_sandbox_accelerator(s)); /* ns */
  /* the sandbox's log: the ns agent's, whole and as a tail */
  unsigned char *log = NULL;
  size_t loglen = 0;
  ck_assert_msg(sbx_sandbox_logs(c, name, 0, &log, &loglen, &e) == 0, "%s", e.message);
  ck_assert_ptr_nonnull(memmem(log, loglen, "listening on fd", 15));
  free(log);
  ck_assert_int_eq(sbx_sandbox_logs(c, name, 3, &log, &loglen, &e), 0);
  ck_assert_uint_eq(loglen, 3);
  free(log);
  ck_assert_int_eq(sbx_sandbox_logs(c, "no-such-sandbox", 0, &log, &loglen, &e), -1);
  ck_assert_int_eq(e.kind, SBX_ERR_SANDBOX_NOT_FOUND);

  /* get by name and by id */
  sbx_sandbox *g = sbx_sandbox_get(c, name, &e);
  ck_assert_ptr_nonnull(g);
  ck_assert_str_eq(sbx_sandbox_id(g), sbx_sandbox_id(s));
  sbx_sandbox_free(g);
  g = sbx_sandbox_get(c, sbx_sandbox_id(s), &e);
  ck_assert_ptr_nonnull(g);
  ck_assert_str_eq(sbx_sandbox_name(g), name);
  sbx_sandbox_free(g);

  /* the same name again: 409, then replace */
  sbx_create_opts dup = {.name = name};
  ck_assert_ptr_null(sbx_sandbox_create(c, &dup, &e));
  ck_assert_int_eq(e.kind, SBX_ERR_SANDBOX_ALREADY_EXISTS);
  ck_assert_int_eq(e.http_status, 409);
  ck_assert_str_eq(e.kind_name, "sandbox_already_exists");
  dup.replace = 1;
  sbx_sandbox *r = sbx_sandbox_create(c, &dup, &e);
  ck_assert_msg(r != NULL, "%s", e.message);
  ck_assert_str_ne(sbx_sandbox_id(r), sbx_sandbox_id(s));
  g = sbx_sandbox_get(c, sbx_sandbox_id(s), &e);
  ck_assert_ptr_null(g);
  ck_assert_int_eq(e.kind, SBX_ERR_SANDBOX_NOT_FOUND);
  sbx_sandbox_free(s);
  rm(c, r);
  sbx_client_free(c);
}
END_TEST

START_TEST(test_sandbox_invalid) {
  sbx_client *c = cl();
  sbx_error e;
  sbx_create_opts o = {.name = "bad name!"};
  ck_assert_ptr_null(sbx_sandbox_create(c, &o, &e));
  ck_assert_int_eq(e.kind, SBX_ERR_INVALID_REQUEST);
  ck_assert_int_eq(e.http_status, 400);
  ck_assert_str_eq(e.field, "name");
  ck_assert(e.message[0]);
  sbx_create_opts o2 = {.env = (const char *[]){"NOEQUALS", NULL}};
  ck_assert_ptr_null(sbx_sandbox_create(c, &o2, &e));
  ck_assert_int_eq(e.kind, SBX_ERR_INVALID_REQUEST);
  ck_assert_int_eq(e.http_status, 0); /* caught client-side */
  ck_assert_ptr_null(sbx_sandbox_get(c, "no-such-sandbox", &e));
  ck_assert_int_eq(e.kind, SBX_ERR_SANDBOX_NOT_FOUND);
  ck_assert_int_eq(e.http_status, 404);
  ck_assert_int_eq(sbx_sandbox_remove(c, "no-such-sandbox", &e), -1);
  ck_assert_int_eq(e.kind, SBX_ERR_SANDBOX_NOT_FOUND);
  ck_assert_ptr_null(sbx_sandbox_stop(c, "", &e));
  ck_assert_int_eq(e.kind, SBX_ERR_INVALID_REQUEST);
  sbx_client_free(c);
}
END_TEST

START_TEST(test_sandbox_lifecycle) {
  sbx_client *c = cl();
  sbx_error e;
  sbx_sandbox *s = mk(c, "life");
  const char *id = sbx_sandbox_id(s);
  sbx_sandbox *st = sbx_sandbox_stop(c, id, &e);
  ck_assert_msg(st != NULL, "%s", e.message);
  ck_assert_str_eq(sbx_sandbox_state(st), "stopped");
  ck_assert_ptr_nonnull(sbx_sandbox_stopped_at(st));
  sbx_sandbox_free(st);
  sbx_output *o = NULL;
  ck_assert_int_eq(sbx_exec(c, id, "true", NULL, NULL, &o, &e), -1);
  ck_assert_int_eq(e.kind, SBX_ERR_SANDBOX_NOT_RUNNING);
  ck_assert_int_eq(e.http_status, 409);
  ck_assert_ptr_null(o);
  st = sbx_sandbox_start(c, id, &e);
  ck_assert_msg(st != NULL, "%s", e.message);
  ck_assert_str_eq(sbx_sandbox_state(st), "running");
  sbx_sandbox_free(st);
  ck_assert_int_eq(sbx_exec(c, id, "true", NULL, NULL, &o, &e), 0);
  sbx_output_free(o);
  ck_assert_int_eq(sbx_sandbox_remove(c, id, &e), 0);
  ck_assert_ptr_null(sbx_sandbox_get(c, id, &e));
  ck_assert_int_eq(e.kind, SBX_ERR_SANDBOX_NOT_FOUND);
  sbx_sandbox_free(s);
  sbx_client_free(c);
}
END_TEST

START_TEST(test_sandbox_list) {
  sbx_client *c = cl();
  sbx_error e;
  char label[96];
  snprintf(label, sizeof label, "run=%s", uniq("l"));
  sbx_sandbox *s[3];
  for (int i = 0; i < 3; i++) {
    char name[96];
    snprintf(name, sizeof name, "%s-%d", uniq("list"), i);
    sbx_create_opts o = {.name = name, .labels = (const char *[]){label, NULL}};
    s[i] = sbx_sandbox_create(c, &o, &e);
    ck_assert_msg(s[i] != NULL, "%s", e.message);
  }
  sbx_sandbox *st = sbx_sandbox_stop(c, sbx_sandbox_id(s[2]), &e);
  ck_assert_ptr_nonnull(st);
  sbx_sandbox_free(st);
  /* label filter */
  sbx_list_opts lo = {.labels = (const char *[]){label, NULL}};
  sbx_sandbox_list *l = sbx_sandbox_list_get(c, &lo, &e);
  ck_assert_msg(l != NULL, "%s", e.message);
  ck_assert_int_eq(sbx_sandbox_list_count(l), 3);
  ck_assert_ptr_null(sbx_sandbox_list_next_cursor(l));
  ck_assert_ptr_null(sbx_sandbox_list_at(l, 3));
  ck_assert_ptr_nonnull(strstr(sbx_sandbox_list_json(l), "\"data\""));
  sbx_sandbox_list_free(l);
  /* state filter */
  lo.state = "stopped";
  l = sbx_sandbox_list_get(c, &lo, &e);
  ck_assert_ptr_nonnull(l);
  ck_assert_int_eq(sbx_sandbox_list_count(l), 1);
  ck_assert_str_eq(sbx_sandbox_id(sbx_sandbox_list_at(l, 0)), sbx_sandbox_id(s[2]));
  sbx_sandbox_list_free(l);
  /* pages of one, by cursor */
  lo.state = NULL;
  lo.limit = 1;
  int seen = 0;
  char cursor[256] = "";
  for (int guard = 0; guard < 10; guard++) {
    lo.cursor = cursor[0] ? cursor : NULL;
    l = sbx_sandbox_list_get(c, &lo, &e);
    ck_assert_msg(l != NULL, "%s", e.message);
    ck_assert_int_le(sbx_sandbox_list_count(l), 1);
    seen += (int)sbx_sandbox_list_count(l);
    const char *nx = sbx_sandbox_list_next_cursor(l);
    snprintf(cursor, sizeof cursor, "%s", nx ? nx : "");
    sbx_sandbox_list_free(l);
    if (!cursor[0])
      break;
  }
  ck_assert_int_eq(seen, 3);
  /* a bad filter value */
  sbx_list_opts bad = {.state = "sleeping"};
  ck_assert_ptr_null(sbx_sandbox_list_get(c, &bad, &e));
  ck_assert_int_eq(e.kind, SBX_ERR_INVALID_REQUEST);
  for (int i = 0; i < 3; i++)
    rm(c, s[i]);
  sbx_client_free(c);
}
END_TEST

/* ---- one-shot exec ------------------------------------------------------------------ */

START_TEST(test_exec_basic) {
  sbx_client *c = cl();
  sbx_error e;
  sbx_sandbox *s = mk(c, "ex");
  const char *id = sbx_sandbox_id(s);
  sbx_output *o = NULL;
  const char *args[] = {"-c", "echo out; echo err >&2; exit 3", NULL};
  ck_assert_int_eq(sbx_exec(c, id, "sh", args, NULL, &o, &e), 0);
  ck_assert_str_eq(sbx_output_stdout(o), "out\n");
  ck_assert_str_eq(sbx_output_stderr(o), "err\n");
  ck_assert_int_eq(sbx_output_exit_code(o), 3);
  ck_assert_int_eq(sbx_output_success(o), 0);
  ck_assert_int_eq(sbx_output_signal(o), 0);
  ck_assert_int_eq(sbx_output_stdout_truncated(o), 0);
  ck_assert_int_ge(sbx_output_duration_ms(o), 0);
  ck_assert_int_eq(strncmp(sbx_output_exec_id(o), "ex_", 3), 0);
  size_t n;
  const unsigned char *b = sbx_output_stdout_bytes(o, &n);
  ck_assert_int_eq(n, 4);
  ck_assert_int_eq(memcmp(b, "out\n", 4), 0);
  sbx_output_free(o);

  /* killed by a signal */
  ck_assert_int_eq(sbx_shell(c, id, "kill -TERM $$", NULL, &o, &e), 0);
  ck_assert_int_eq(sbx_output_exit_code(o), -1);
  ck_assert_int_eq(sbx_output_signal(o), 15);
  ck_assert_int_eq(sbx_output_success(o), 0);
  sbx_output_free(o);

  /* shell, env merged over the sandbox's, cwd */
  sbx_exec_opts op = {.env = (const char *[]){"SBX_B=2", NULL}, .cwd = "/tmp"};
  ck_assert_int_eq(sbx_shell(c, id, "echo $SBX_A$SBX_B; pwd", &op, &o, &e), 0);
  ck_assert_str_eq(sbx_output_stdout(o), "12\n/tmp\n");
  ck_assert_int_eq(sbx_output_success(o), 1);
  sbx_output_free(o);

  /* user */
  sbx_exec_opts ou = {.user = "1000"};
  const char *idargs[] = {"-u", NULL};
  ck_assert_int_eq(sbx_exec(c, id, "id", idargs, &ou, &o, &e), 0);
  ck_assert_str_eq(sbx_output_stdout(o), "1000\n");
  sbx_output_free(o);
  rm(c, s);
  sbx_client_free(c);
}
END_TEST

START_TEST(test_exec_bytes_and_encodings) {
  sbx_client *c = cl();
  sbx_error e;
  sbx_sandbox *s = mk(c, "bytes");
  const char *id = sbx_sandbox_id(s);
  sbx_output *o = NULL;
  /* stdin bytes (with NUL and invalid UTF-8) come back exact through cat */
  unsigned char in[256];
  for (int i = 0; i < 256; i++)
    in[i] = (unsigned char)i;
  sbx_exec_opts op = {.stdin_data = in, .stdin_len = sizeof in};
  ck_assert_int_eq(sbx_exec(c, id, "cat", NULL, &op, &o, &e), 0);
  size_t n;
  const unsigned char *b = sbx_output_stdout_bytes(o, &n);
  ck_assert_int_eq(n, 256);
  ck_assert_int_eq(memcmp(b, in, 256), 0);
  /* the text form replaces invalid bytes with U+FFFD */
  /* (byte 0 is a NUL, so look from byte 1) */
  ck_assert_ptr_nonnull(strstr(sbx_output_stdout(o) + 1, "\xEF\xBF\xBD"));
  sbx_output_free(o);
  /* utf8 on the wire: the server replaced them already */
  sbx_exec_opts u8 = {.encoding = "utf8"};
  ck_assert_int_eq(sbx_shell(c, id, "printf 'a\\377b'", &u8, &o, &e), 0);
  ck_assert_str_eq(sbx_output_stdout(o), "a\xEF\xBF\xBD" "b");
  sbx_output_free(o);
  /* truncation */
  sbx_exec_opts tr = {.max_output_bytes = 10};
  ck_assert_int_eq(sbx_shell(c, id, "head -c 1000 /dev/zero; echo x >&2", &tr, &o, &e), 0);
  sbx_output_stdout_bytes(o, &n);
  ck_assert_int_eq(n, 10);
  ck_assert_int_eq(sbx_output_stdout_truncated(o), 1);
  ck_assert_int_eq(sbx_output_stderr_truncated(o), 0);
  sbx_output_free(o);
  /* bad encoding: the server says which field */
  sbx_exec_opts be = {.encoding = "latin1"};
  ck_assert_int_eq(sbx_exec(c, id, "true", NULL, &be, &o, &e), -1);
  ck_assert_int_eq(e.kind, SBX_ERR_INVALID_REQUEST);
  ck_assert_str_eq(e.field, "encoding");
  /* a stdin pipe needs a stream */
  sbx_exec_opts sp = {.stdin_pipe = 1};
  ck_assert_int_eq(sbx_exec(c, id, "true", NULL, &sp, &o, &e), -1);
  ck_assert_int_eq(e.kind, SBX_ERR_INVALID_REQUEST);
  rm(c, s);
  sbx_client_free(c);
}
END_TEST

START_TEST(test_exec_failed_and_timeout) {
  sbx_client *c = cl();
  sbx_error e;
  sbx_sandbox *s = mk(c, "fail");
  const char *id = sbx_sandbox_id(s);
  sbx_output *o = NULL;
  ck_assert_int_eq(sbx_exec(c, id, "/nonexistent/prog", NULL, NULL, &o, &e), -1);
  ck_assert_ptr_null(o);
  ck_assert_int_eq(e.kind, SBX_ERR_EXEC_FAILED);
  ck_assert_int_eq(e.http_status, 422);
  ck_assert_int_eq(e.has_failure, 1);
  ck_assert_str_eq(e.failure.kind, "not_found");
  ck_assert_str_eq(e.failure.errno_name, "ENOENT");
  ck_assert_int_eq(e.failure.err_no, 2);
  ck_assert(e.failure.message[0]);
  sbx_exec_opts cwd = {.cwd = "/nonexistent"};
  ck_assert_int_eq(sbx_exec(c, id, "true", NULL, &cwd, &o, &e), -1);
  ck_assert_int_eq(e.kind, SBX_ERR_EXEC_FAILED);
  ck_assert_str_eq(e.failure.kind, "bad_cwd");
  ck_assert_int_eq(sbx_exec(c, id, "/etc/hostname", NULL, NULL, &o, &e), -1);
  ck_assert_int_eq(e.kind, SBX_ERR_EXEC_FAILED);
  ck_assert_str_eq(e.failure.kind, "not_executable"); /* a file without x bits */

  /* timeout: the kind AND the partial output */
  sbx_exec_opts to = {.timeout_ms = 500};
  ck_assert_int_eq(sbx_shell(c, id, "echo before; echo e >&2; sleep 10", &to, &o, &e), -1);
  ck_assert_int_eq(e.kind, SBX_ERR_EXEC_TIMEOUT);
  ck_assert_int_eq(e.http_status, 504);
  ck_assert_int_eq(strncmp(e.exec_id, "ex_", 3), 0);
  ck_assert_ptr_nonnull(o);
  ck_assert_str_eq(sbx_output_stdout(o), "before\n");
  ck_assert_str_eq(sbx_output_stderr(o), "e\n");
  ck_assert_int_eq(sbx_output_success(o), 0);
  ck_assert_str_eq(sbx_output_exec_id(o), e.exec_id);
  sbx_output_free(o);
  rm(c, s);
  sbx_client_free(c);
}
END_TEST

START_TEST(test_payload_too_large) {
  sbx_client *c = cl();
  sbx_error e;
  sbx_sandbox *s = mk(c, "big");
  size_t n = 64u << 20;
  unsigned char *big = calloc(1, n);
  sbx_exec_opts op = {.stdin_data = big, .stdin_len = n};
  sbx_output *o = NULL;
  ck_assert_int_eq(sbx_exec(c, sbx_sandbox_id(s), "true", NULL, &op, &o, &e), -1);
  ck_assert_msg(e.kind == SBX_ERR_PAYLOAD_TOO_LARGE, "kind %s: %s", e.kind_name, e.message);
  ck_assert_int_eq(e.http_status, 413);
  free(big);
  rm(c, s);
  sbx_client_free(c);
}
END_TEST

/* ---- exec records --------------------------------------------------------------------- */

START_TEST(test_exec_records) {
  sbx_client *c = cl();
  sbx_error e;
  sbx_sandbox *s = mk(c, "rec");
  const char *id = sbx_sandbox_id(s);
  sbx_output *o = NULL;
  const char *args[] = {"hello", NULL};
  ck_assert_int_eq(sbx_exec(c, id, "echo", args, NULL, &o, &e), 0);
  sbx_exec_info *x = sbx_exec_get(c, sbx_output_exec_id(o), &e);
  ck_assert_msg(x != NULL, "%s", e.message);
  ck_assert_str_eq(sbx_exec_info_id(x), sbx_output_exec_id(o));
  ck_assert_str_eq(sbx_exec_info_sandbox_id(x), id);
  ck_assert_str_eq(sbx_exec_info_cmd(x), "echo");
  ck_assert_str_eq(sbx_exec_info_state(x), "exited");
  ck_assert_int_eq(sbx_exec_info_running(x), 0);
  ck_assert_int_eq(sbx_exec_info_exit_code(x), 0);
  ck_assert_int_eq(sbx_exec_info_signal(x), 0);
  ck_assert_int_eq(sbx_exec_info_stdout_bytes(x), 6);
  ck_assert_int_eq(sbx_exec_info_stderr_bytes(x), 0);
  ck_assert_int_eq(sbx_exec_info_failure(x, NULL), 0);
  ck_assert_ptr_nonnull(sbx_exec_info_started_at(x));
  ck_assert_ptr_nonnull(sbx_exec_info_ended_at(x));
  ck_assert_ptr_nonnull(strstr(sbx_exec_info_json(x), "\"exec_id\""));
  sbx_exec_info_free(x);
  sbx_output_free(o);
  ck_assert_int_eq(sbx_exec(c, id, "/nope", NULL, NULL, &o, &e), -1);
  /* list: newest first, with a state filter */
  sbx_exec_list *l = sbx_exec_list_get(c, id, NULL, 0, NULL, &e);
  ck_assert_msg(l != NULL, "%s", e.message);
  ck_assert_int_eq(sbx_exec_list_count(l), 2);
  ck_assert_str_eq(sbx_exec_info_state(sbx_exec_list_at(l, 0)), "failed");
  sbx_failure f;
  ck_assert_int_eq(sbx_exec_info_failure(sbx_exec_list_at(l, 0), &f), 1);
  ck_assert_str_eq(f.kind, "not_found");
  ck_assert_str_eq(sbx_exec_info_state(sbx_exec_list_at(l, 1)), "exited");
  sbx_exec_list_free(l);
  l = sbx_exec_list_get(c, id, "exited", 0, NULL, &e);
  ck_assert_ptr_nonnull(l);
  ck_assert_int_eq(sbx_exec_list_count(l), 1);
  sbx_exec_list_free(l);
  l = sbx_exec_list_get(c, id, NULL, 1, NULL, &e);
  ck_assert_ptr_nonnull(l);
  ck_assert_int_eq(sbx_exec_list_count(l), 1);
  ck_assert_ptr_nonnull(sbx_exec_list_next_cursor(l));
  sbx_exec_list *l2 = sbx_exec_list_get(c, id, NULL, 1, sbx_exec_list_next_cursor(l), &e);
  ck_assert_ptr_nonnull(l2);
  ck_assert_int_eq(sbx_exec_list_count(l2), 1);
  ck_assert_str_ne(sbx_exec_info_id(sbx_exec_list_at(l2, 0)), sbx_exec_info_id(sbx_exec_list_at(l, 0)));
  sbx_exec_list_free(l2);
  sbx_exec_list_free(l);
  ck_assert_ptr_null(sbx_exec_list_get(c, "no-such-sandbox", NULL, 0, NULL, &e));
  ck_assert_int_eq(e.kind, SBX_ERR_SANDBOX_NOT_FOUND);
  /* unknown exec */
  ck_assert_ptr_null(sbx_exec_get(c, "ex_0000000000000000", &e));
  ck_assert_int_eq(e.kind, SBX_ERR_EXEC_NOT_FOUND);
  ck_assert_int_eq(e.http_status, 404);
  rm(c, s);
  sbx_client_free(c);
}
END_TEST

/* Is this REST route there yet?  (404 not_found / 405 / 501 = not yet) */
static int route_missing(const sbx_error *e) {
  return e->kind == SBX_ERR_NOT_FOUND || e->kind == SBX_ERR_METHOD_NOT_ALLOWED ||
         e->http_status == 501;
}

START_TEST(test_background_control) {
  sbx_client *c = cl();
  sbx_error e;
  sbx_sandbox *s = mk(c, "bg");
  const char *id = sbx_sandbox_id(s);
  char ex[40];
  ck_assert_int_eq(sbx_shell_background(c, id, "echo started; sleep 30", NULL, ex, sizeof ex, &e), 0);
  ck_assert_int_eq(strncmp(ex, "ex_", 3), 0);
  sbx_exec_info *x = sbx_exec_get(c, ex, &e);
  ck_assert_ptr_nonnull(x);
  ck_assert_int_eq(sbx_exec_info_running(x), 1);
  ck_assert_int_gt(sbx_exec_info_pid(x), 0);
  sbx_exec_info_free(x);
  x = sbx_exec_wait(c, ex, 200, &e);
  if (!x && route_missing(&e)) {
    fprintf(stderr, "SKIP test_background_control: server has no /wait yet (%s)\n", e.message);
    sbx_exec_kill(c, ex, NULL);
    rm(c, s);
    sbx_client_free(c);
    return;
  }
  ck_assert_msg(x != NULL, "%s", e.message);
  ck_assert_int_eq(sbx_exec_info_running(x), 1); /* wait timed out: still running */
  sbx_exec_info_free(x);
  /* output so far */
  unsigned char *data;
  size_t len;
  uint64_t first, next;
  int complete;
  for (int i = 0; i < 50; i++) {
    ck_assert_msg(sbx_exec_output(c, ex, "stdout", 0, &data, &len, &first, &next, &complete, &e) == 0,
                  "%s", e.message);
    if (len)
      break;
    free(data);
    usleep(100000);
  }
  ck_assert_int_eq(len, 8);
  ck_assert_str_eq((char *)data, "started\n");
  ck_assert_int_eq(first, 0);
  ck_assert_int_eq(next, 8);
  ck_assert_int_eq(complete, 0);
  free(data);
  ck_assert_int_eq(sbx_exec_output(c, ex, "stdout", 3, &data, &len, &first, &next, NULL, &e), 0);
  ck_assert_str_eq((char *)data, "rted\n");
  ck_assert_int_eq(first, 3);
  free(data);
  ck_assert_int_eq(sbx_exec_output(c, ex, "both", 0, &data, &len, NULL, NULL, NULL, &e), -1);
  ck_assert_int_eq(e.kind, SBX_ERR_INVALID_REQUEST);
  /* resize a non-tty exec: refused; a bad signal: invalid_request */
  ck_assert_int_eq(sbx_exec_resize(c, ex, 40, 120, &e), -1);
  ck_assert_int_eq(sbx_exec_signal(c, ex, "SIGNOPE", &e), -1);
  ck_assert_int_eq(e.kind, SBX_ERR_INVALID_REQUEST);
  /* signal by name ends it */
  ck_assert_msg(sbx_exec_signal(c, ex, "SIGTERM", &e) == 0, "%s", e.message);
  x = sbx_exec_wait(c, ex, 10000, &e);
  ck_assert_ptr_nonnull(x);
  ck_assert_int_eq(sbx_exec_info_running(x), 0);
  ck_assert_int_eq(sbx_exec_info_signal(x), 15);
  sbx_exec_info_free(x);
  /* signal to an ended exec */
  ck_assert_int_eq(sbx_exec_signal(c, ex, "15", &e), -1);
  ck_assert_int_eq(e.kind, SBX_ERR_SANDBOX_NOT_RUNNING);
  ck_assert_int_eq(sbx_exec_output(c, ex, "stdout", 0, &data, &len, NULL, NULL, &complete, &e), 0);
  ck_assert_int_eq(complete, 1);
  free(data);

  /* stdin over REST, then kill */
  ck_assert_int_eq(sbx_exec_background(c, id, "cat", NULL, NULL, ex, sizeof ex, &e), 0);
  ck_assert_msg(sbx_exec_stdin(c, ex, "abc", 3, 0, &e) == 0, "%s", e.message);
  ck_assert_int_eq(sbx_exec_stdin(c, ex, "def", 3, 1, &e), 0);
  x = sbx_exec_wait(c, ex, 10000, &e);
  ck_assert_ptr_nonnull(x);
  ck_assert_str_eq(sbx_exec_info_state(x), "exited");
  sbx_exec_info_free(x);
  ck_assert_int_eq(sbx_exec_output(c, ex, "stdout", 0, &data, &len, NULL, NULL, NULL, &e), 0);
  ck_assert_str_eq((char *)data, "abcdef");
  free(data);
  ck_assert_int_eq(sbx_exec_background(c, id, "sleep", (const char *[]){"30", NULL}, NULL, ex,
                                       sizeof ex, &e), 0);
  ck_assert_int_eq(sbx_exec_kill(c, ex, &e), 0);
  x = sbx_exec_wait(c, ex, 10000, &e);
  ck_assert_ptr_nonnull(x);
  ck_assert_int_eq(sbx_exec_info_signal(x), 9);
  sbx_exec_info_free(x);
  ck_assert_int_eq(sbx_exec_kill(c, "ex_0000000000000000", &e), -1);
  ck_assert_int_eq(e.kind, SBX_ERR_EXEC_NOT_FOUND);
  rm(c, s);
  sbx_client_free(c);
}
END_TEST

/* ---- streaming ------------------------------------------------------------------------- */

START_TEST(test_stream_order) {
  if (!need_streaming("test_stream_order"))
    return;
  sbx_client *c = cl();
  sbx_error e;
  sbx_sandbox *s = mk(c, "st");
  sbx_stream *st = sbx_shell_stream(c, sbx_sandbox_id(s),
                                    "echo a; sleep 0.1; echo b >&2; sleep 0.1; echo c; exit 4", NULL, &e);
  ck_assert_msg(st != NULL, "%s (%s)", e.message, e.kind_name);
  sbx_event ev;
  ck_assert_int_eq(sbx_stream_recv(st, &ev, 10000, &e), 1);
  ck_assert_int_eq(ev.type, SBX_EV_STARTED);
  ck_assert_int_eq(strncmp(ev.exec_id, "ex_", 3), 0);
  ck_assert_int_gt(ev.pid, 0);
  ck_assert_str_eq(sbx_stream_exec_id(st), ev.exec_id);
  char out[64] = "", err[64] = "", order[64] = "";
  int exited = 0;
  for (;;) {
    int rc = sbx_stream_recv(st, &ev, 10000, &e);
    ck_assert_msg(rc >= 0, "%s", e.message);
    if (rc == 0)
      break;
    if (ev.type == SBX_EV_STDOUT) {
      ck_assert_int_eq(ev.offset, strlen(out));
      strncat(out, (const char *)ev.data, ev.len);
      strcat(order, "o");
    } else if (ev.type == SBX_EV_STDERR) {
      ck_assert_int_eq(ev.offset, strlen(err));
      strncat(err, (const char *)ev.data, ev.len);
      strcat(order, "e");
    } else if (ev.type == SBX_EV_EXITED) {
      ck_assert_int_eq(ev.exit_code, 4);
      ck_assert_int_eq(ev.signal, 0);
      strcat(order, "X");
      exited = 1;
    } else if (ev.type == SBX_EV_DONE) {
      ck_assert(exited);
      strcat(order, "D");
    }
  }
  ck_assert_str_eq(out, "a\nc\n");
  ck_assert_str_eq(err, "b\n");
  ck_assert_str_eq(order, "oeoXD");
  ck_assert_int_eq(sbx_stream_recv(st, &ev, 100, &e), 0); /* after done: no more */
  sbx_stream_close(st);
  rm(c, s);
  sbx_client_free(c);
}
END_TEST

START_TEST(test_stream_collect_wait_failed) {
  if (!need_streaming("test_stream_collect_wait_failed"))
    return;
  sbx_client *c = cl();
  sbx_error e;
  sbx_sandbox *s = mk(c, "sc");
  const char *id = sbx_sandbox_id(s);
  const char *args[] = {"-c", "printf '\\000\\377x'; echo err >&2; exit 2", NULL};
  sbx_stream *st = sbx_exec_stream(c, id, "sh", args, NULL, &e);
  ck_assert_msg(st != NULL, "%s", e.message);
  sbx_output *o = NULL;
  ck_assert_int_eq(sbx_stream_collect(st, 10000, &o, &e), 0);
  size_t n;
  const unsigned char *b = sbx_output_stdout_bytes(o, &n);
  ck_assert_int_eq(n, 3);
  ck_assert_int_eq(memcmp(b, "\0\377x", 3), 0);
  ck_assert_str_eq(sbx_output_stderr(o), "err\n");
  ck_assert_int_eq(sbx_output_exit_code(o), 2);
  ck_assert_int_eq(strncmp(sbx_output_exec_id(o), "ex_", 3), 0);
  sbx_output_free(o);
  sbx_stream_close(st);
  /* wait */
  st = sbx_shell_stream(c, id, "kill -9 $$", NULL, &e);
  ck_assert_ptr_nonnull(st);
  int code, sig;
  ck_assert_int_eq(sbx_stream_wait(st, 10000, &code, &sig, &e), 0);
  ck_assert_int_eq(code, -1);
  ck_assert_int_eq(sig, 9);
  sbx_stream_close(st);
  /* failed */
  st = sbx_exec_stream(c, id, "/no/such/prog", NULL, NULL, &e);
  ck_assert_ptr_nonnull(st);
  ck_assert_int_eq(sbx_stream_collect(st, 10000, &o, &e), -1);
  ck_assert_ptr_null(o);
  ck_assert_int_eq(e.kind, SBX_ERR_EXEC_FAILED);
  ck_assert_str_eq(e.failure.kind, "not_found");
  sbx_stream_close(st);
  /* timeout: the error event, the kind and the partial output */
  sbx_exec_opts to = {.timeout_ms = 400};
  st = sbx_shell_stream(c, id, "echo part; sleep 10", &to, &e);
  ck_assert_ptr_nonnull(st);
  ck_assert_int_eq(sbx_stream_collect(st, 10000, &o, &e), -1);
  ck_assert_int_eq(e.kind, SBX_ERR_EXEC_TIMEOUT);
  ck_assert_ptr_nonnull(o);
  ck_assert_str_eq(sbx_output_stdout(o), "part\n");
  sbx_output_free(o);
  sbx_stream_close(st);
  /* unknown sandbox */
  ck_assert_ptr_null(sbx_exec_stream(c, "no-such-sandbox", "true", NULL, NULL, &e));
  ck_assert_int_eq(e.kind, SBX_ERR_SANDBOX_NOT_FOUND);
  /* a stopped sandbox */
  sbx_sandbox *stopped = sbx_sandbox_stop(c, id, &e);
  ck_assert_ptr_nonnull(stopped);
  sbx_sandbox_free(stopped);
  ck_assert_ptr_null(sbx_exec_stream(c, id, "true", NULL, NULL, &e));
  ck_assert_int_eq(e.kind, SBX_ERR_SANDBOX_NOT_RUNNING);
  rm(c, s);
  sbx_client_free(c);
}
END_TEST

START_TEST(test_stream_stdin_pipe) {
  if (!need_streaming("test_stream_stdin_pipe"))
    return;
  sbx_client *c = cl();
  sbx_error e;
  sbx_sandbox *s = mk(c, "sp");
  sbx_exec_opts op = {.stdin_pipe = 1};
  sbx_stream *st = sbx_exec_stream(c, sbx_sandbox_id(s), "wc", (const char *[]){"-c", NULL}, &op, &e);
  ck_assert_msg(st != NULL, "%s", e.message);
  sbx_stdin *w = sbx_stream_take_stdin(st, &e);
  ck_assert_ptr_nonnull(w);
  ck_assert_ptr_null(sbx_stream_take_stdin(st, &e)); /* single take */
  ck_assert_int_eq(e.kind, SBX_ERR_INVALID_REQUEST);
  size_t n = 3u << 20;
  char *buf = malloc(n);
  memset(buf, 'x', n);
  ck_assert_int_eq(sbx_stdin_write(w, buf, n, &e), 0);
  ck_assert_int_eq(sbx_stdin_write(w, "y", 1, &e), 0);
  ck_assert_int_eq(sbx_stdin_close(w, &e), 0);
  ck_assert_int_eq(sbx_stdin_write(w, "z", 1, &e), -1);
  free(buf);
  sbx_output *o = NULL;
  ck_assert_msg(sbx_stream_collect(st, 20000, &o, &e) == 0, "%s", e.message);
  ck_assert_int_eq(atol(sbx_output_stdout(o)), (long)n + 1);
  sbx_output_free(o);
  sbx_stream_close(st);
  /* no stdin_pipe: no writer */
  st = sbx_exec_stream(c, sbx_sandbox_id(s), "true", NULL, NULL, &e);
  ck_assert_ptr_nonnull(st);
  ck_assert_ptr_null(sbx_stream_take_stdin(st, &e));
  sbx_stream_close(st);
  rm(c, s);
  sbx_client_free(c);
}
END_TEST

typedef struct {
  sbx_stream *st;
  int kill;
} sig_arg;

static void *signal_later(void *p) {
  sig_arg *a = p;
  usleep(300000);
  if (a->kill)
    sbx_stream_kill(a->st, NULL);
  else
    sbx_stream_signal(a->st, "SIGTERM", NULL);
  return NULL;
}

START_TEST(test_stream_concurrent_signal) {
  if (!need_streaming("test_stream_concurrent_signal"))
    return;
  sbx_client *c = cl();
  sbx_error e;
  sbx_sandbox *s = mk(c, "sig");
  for (int k = 0; k < 2; k++) {
    sbx_stream *st = sbx_shell_stream(c, sbx_sandbox_id(s), "sleep 30 & wait", NULL, &e);
    ck_assert_msg(st != NULL, "%s", e.message);
    sig_arg a = {st, k};
    pthread_t th;
    pthread_create(&th, NULL, signal_later, &a);
    int code, sig;
    ck_assert_msg(sbx_stream_wait(st, 10000, &code, &sig, &e) == 0, "%s", e.message);
    pthread_join(th, NULL);
    ck_assert_int_eq(code, -1);
    ck_assert_int_eq(sig, k ? 9 : 15);
    sbx_stream_close(st);
  }
  rm(c, s);
  sbx_client_free(c);
}
END_TEST

START_TEST(test_stream_detach_attach) {
  if (!need_streaming("test_stream_detach_attach"))
    return;
  sbx_client *c = cl();
  sbx_error e;
  sbx_sandbox *s = mk(c, "att");
  sbx_exec_opts op = {.detach = 1};
  sbx_stream *st = sbx_shell_stream(c, sbx_sandbox_id(s), "echo one; echo two >&2; sleep 1; echo three",
                                    &op, &e);
  ck_assert_msg(st != NULL, "%s", e.message);
  sbx_event ev;
  ck_assert_int_eq(sbx_stream_recv(st, &ev, 10000, &e), 1);
  ck_assert_int_eq(ev.type, SBX_EV_STARTED);
  char ex[40];
  snprintf(ex, sizeof ex, "%s", ev.exec_id);
  sbx_stream_close(st); /* detached: keeps running */
  sbx_exec_info *x = sbx_exec_get(c, ex, &e);
  ck_assert_ptr_nonnull(x);
  ck_assert_str_eq(sbx_exec_info_state(x), "running");
  sbx_exec_info_free(x);
  /* attach from byte 2 of stdout and 0 of stderr */
  st = sbx_attach(c, ex, 2, 0, &e);
  ck_assert_msg(st != NULL, "%s", e.message);
  ck_assert_str_eq(sbx_stream_exec_id(st), ex);
  sbx_output *o = NULL;
  ck_assert_msg(sbx_stream_collect(st, 10000, &o, &e) == 0, "%s", e.message);
  ck_assert_str_eq(sbx_output_stdout(o), "e\nthree\n");
  ck_assert_str_eq(sbx_output_stderr(o), "two\n");
  ck_assert_int_eq(sbx_output_exit_code(o), 0);
  sbx_output_free(o);
  sbx_stream_close(st);
  ck_assert_ptr_null(sbx_attach(c, "ex_0000000000000000", 0, 0, &e));
  ck_assert_int_eq(e.kind, SBX_ERR_EXEC_NOT_FOUND);
  rm(c, s);
  sbx_client_free(c);
}
END_TEST

START_TEST(test_stream_tty_resize_and_large) {
  if (!need_streaming("test_stream_tty_resize_and_large"))
    return;
  sbx_client *c = cl();
  sbx_error e;
  sbx_sandbox *s = mk(c, "tty");
  sbx_exec_opts op = {.tty = 1, .rows = 30, .cols = 100, .stdin_pipe = 1};
  sbx_stream *st = sbx_shell_stream(c, sbx_sandbox_id(s), "stty size; read x; stty size", &op, &e);
  ck_assert_msg(st != NULL, "%s", e.message);
  usleep(300000);
  ck_assert_int_eq(sbx_stream_resize(st, 40, 120, &e), 0);
  ck_assert_int_eq(sbx_stream_resize(st, 0, 120, &e), -1);
  usleep(200000);
  sbx_stdin *w = sbx_stream_take_stdin(st, &e);
  ck_assert_int_eq(sbx_stdin_write(w, "go\n", 3, &e), 0);
  sbx_output *o = NULL;
  ck_assert_msg(sbx_stream_collect(st, 10000, &o, &e) == 0, "%s", e.message);
  ck_assert_ptr_nonnull(strstr(sbx_output_stdout(o), "30 100"));
  ck_assert_ptr_nonnull(strstr(sbx_output_stdout(o), "40 120"));
  sbx_output_free(o);
  sbx_stream_close(st);
  /* 64 MiB through a slow reader: bounded, complete, in order */
  st = sbx_shell_stream(c, sbx_sandbox_id(s), "head -c 67108864 /dev/zero", NULL, &e);
  ck_assert_ptr_nonnull(st);
  uint64_t total = 0;
  sbx_event ev;
  int slept = 0;
  for (;;) {
    int rc = sbx_stream_recv(st, &ev, 20000, &e);
    ck_assert_msg(rc >= 0, "%s", e.message);
    if (rc == 0)
      break;
    if (ev.type == SBX_EV_STDOUT) {
      ck_assert_int_eq(ev.offset, total);
      total += ev.len;
      if (!slept++)
        usleep(500000); /* let the server hit backpressure */
    }
  }
  ck_assert_int_eq(total, 67108864);
  sbx_stream_close(st);
  rm(c, s);
  sbx_client_free(c);
}
END_TEST

/* ---- the README example ----------------------------------------------------------------- */

START_TEST(test_readme_example) {
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "%s/tests/example_libsbx %s", build_dir, url);
  FILE *p = popen(cmd, "r");
  ck_assert_ptr_nonnull(p);
  char line[256] = "";
  ck_assert_ptr_nonnull(fgets(line, sizeof line, p));
  int rc = pclose(p);
  ck_assert_int_eq(WEXITSTATUS(rc), 0);
  ck_assert_str_eq(line, "exit 0: hi 42\n");
}
END_TEST

/* ---- server ------------------------------------------------------------------------------ */


/* ---- auth and limits: a second sbxd with a key, --rate and --max-sandboxes ---------- */

/* Run `sbxd keys create` on dir; the key (one line) into key. */
static void make_key(const char *dir, const char *scope, char *key, size_t keysz) {
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "%s/sbxd keys create --scope %s --data-dir %s 2>/dev/null", build_dir,
           scope, dir);
  FILE *p = popen(cmd, "r");
  ck_assert_ptr_nonnull(p);
  ck_assert_ptr_nonnull(fgets(key, (int)keysz, p));
  key[strcspn(key, "\n")] = 0;
  ck_assert_int_eq(pclose(p), 0);
}

START_TEST(test_auth_rate_capacity_errors) {
  char dir[] = "/tmp/sbx-libsbx-auth-XXXXXX";
  ck_assert_ptr_nonnull(mkdtemp(dir));
  char admin[128], reader[128];
  make_key(dir, "admin", admin, sizeof admin);
  make_key(dir, "read", reader, sizeof reader);
  int port = free_port();
  char u[64], listen_at[64], bin[600];
  snprintf(u, sizeof u, "http://127.0.0.1:%d", port);
  snprintf(listen_at, sizeof listen_at, "127.0.0.1:%d", port);
  snprintf(bin, sizeof bin, "%s/sbxd", build_dir);
  pid_t pid = fork();
  if (pid == 0) {
    int null = open("/dev/null", O_WRONLY);
    dup2(null, 1);
    dup2(null, 2);
    execl(bin, bin, "--listen", listen_at, "--data-dir", dir, "--rate", "3", "--max-sandboxes",
          "1", (char *)NULL);
    _exit(127);
  }
  sbx_error e;
  sbx_client *anon = sbx_client_new(u, NULL, &e), *ro = sbx_client_new(u, reader, &e),
             *adm = sbx_client_new(u, admin, &e);
  int up = -1;
  for (int i = 0; i < 100 && up != 0; i++, usleep(50000))
    up = sbx_health(anon, &e);
  ck_assert_int_eq(up, 0);
  /* no key, a key without the scope */
  ck_assert_ptr_null(sbx_sandbox_get(anon, "x", &e));
  ck_assert_int_eq(e.kind, SBX_ERR_UNAUTHORIZED);
  ck_assert_int_eq(e.http_status, 401);
  sbx_create_opts o = {.name = "auth-a"};
  ck_assert_ptr_null(sbx_sandbox_create(ro, &o, &e));
  ck_assert_int_eq(e.kind, SBX_ERR_FORBIDDEN);
  ck_assert_int_eq(e.http_status, 403);
  usleep(1100 * 1000); /* let the buckets fill again */
  /* --max-sandboxes 1: the second is a capacity error with Retry-After */
  sbx_sandbox *a = sbx_sandbox_create(adm, &o, &e);
  ck_assert_msg(a != NULL, "create: %s", e.message);
  sbx_create_opts o2 = {.name = "auth-b"};
  ck_assert_ptr_null(sbx_sandbox_create(adm, &o2, &e));
  ck_assert_int_eq(e.kind, SBX_ERR_CAPACITY);
  ck_assert_int_eq(e.retry_after_s, 1);
  /* --rate 3 (burst 6): a quick burst runs out */
  int limited = 0;
  for (int i = 0; i < 20 && !limited; i++) {
    sbx_sandbox *g = sbx_sandbox_get(ro, "auth-a", &e);
    if (g)
      sbx_sandbox_free(g);
    else
      limited = e.kind == SBX_ERR_RATE_LIMITED;
  }
  ck_assert_msg(limited, "20 quick calls never hit --rate 3");
  ck_assert_int_eq(e.http_status, 429);
  ck_assert_int_ge(e.retry_after_s, 1);
  usleep(1100 * 1000);
  ck_assert_int_eq(sbx_sandbox_remove(adm, sbx_sandbox_id(a), &e), 0);
  sbx_sandbox_free(a);
  sbx_client_free(anon);
  sbx_client_free(ro);
  sbx_client_free(adm);
  kill(pid, SIGTERM);
  int st;
  waitpid(pid, &st, 0);
  char cmd[256];
  snprintf(cmd, sizeof cmd, "rm -rf --one-file-system %s", dir);
  ck_assert_int_eq(system(cmd), 0);
}
END_TEST

static int start_server(void) {
  const char *b = getenv("BUILD");
  if (b && *b)
    snprintf(build_dir, sizeof build_dir, "%s", b);
  snprintf(data_dir, sizeof data_dir, "/tmp/sbx-libsbx-XXXXXX");
  if (!mkdtemp(data_dir))
    return -1;
  int port = free_port();
  snprintf(url, sizeof url, "http://127.0.0.1:%d", port);
  char listen[64], bin[600], log[300];
  snprintf(listen, sizeof listen, "127.0.0.1:%d", port);
  snprintf(bin, sizeof bin, "%s/sbxd", build_dir);
  snprintf(log, sizeof log, "%s.log", data_dir);
  server_pid = fork();
  if (server_pid == 0) {
    FILE *f = freopen(log, "w", stderr);
    (void)f;
    dup2(2, 1);
    execl(bin, bin, "--listen", listen, "--data-dir", data_dir, (char *)NULL);
    _exit(127);
  }
  sbx_error e;
  sbx_client *c = sbx_client_new(url, NULL, &e);
  for (int i = 0; i < 300; i++) {
    if (sbx_health(c, &e) == 0) {
      /* does it stream yet? (501 until the WebSocket routes land) */
      sbx_stream *st = sbx_exec_stream(c, "no-such-sandbox-probe", "true", NULL, NULL, &e);
      streaming_supported = !(e.http_status == 501 || e.http_status == 404) || st != NULL;
      if (st)
        sbx_stream_close(st);
      sbx_client_free(c);
      return 0;
    }
    int st;
    if (waitpid(server_pid, &st, WNOHANG) == server_pid) {
      server_pid = -1;
      break;
    }
    usleep(100000);
  }
  sbx_client_free(c);
  fprintf(stderr, "sbxd did not come up (%s): see %s\n", e.message, log);
  return -1;
}

/* Sandboxes outlive sbxd by design: remove whatever a failed test left. */
static void remove_all_sandboxes(void) {
  sbx_client *c = sbx_client_new(url, NULL, NULL);
  sbx_list_opts o = {.limit = 500};
  sbx_sandbox_list *l = c ? sbx_sandbox_list_get(c, &o, NULL) : NULL;
  for (size_t i = 0; l && i < sbx_sandbox_list_count(l); i++)
    sbx_sandbox_remove(c, sbx_sandbox_id(sbx_sandbox_list_at(l, i)), NULL);
  sbx_sandbox_list_free(l);
  sbx_client_free(c);
}

static void stop_server(void) {
  if (server_pid > 0) {
    remove_all_sandboxes();
    kill(server_pid, SIGTERM);
    int st;
    for (int i = 0; i < 300 && waitpid(server_pid, &st, WNOHANG) == 0; i++)
      usleep(100000);
    if (waitpid(server_pid, &st, WNOHANG) == 0) {
      kill(server_pid, SIGKILL);
      waitpid(server_pid, &st, 0);
    }
  }
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf --one-file-system %s %s.log", data_dir, data_dir);
  if (system(cmd) != 0)
    fprintf(stderr, "could not remove %s\n", data_dir);
}

static Suite *suite(void) {
  Suite *s = suite_create("libsbx");
  TCase *tc = tcase_create("client");
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, test_kind_names);
  tcase_add_test(tc, test_client_bad_url);
  tcase_add_test(tc, test_transport_error);
  tcase_add_test(tc, test_route_not_found);
  tcase_add_test(tc, test_health_and_timeout);
  tcase_add_test(tc, test_sandbox_all_fields);
  tcase_add_test(tc, test_sandbox_invalid);
  tcase_add_test(tc, test_sandbox_lifecycle);
  tcase_add_test(tc, test_sandbox_list);
  tcase_add_test(tc, test_exec_basic);
  tcase_add_test(tc, test_exec_bytes_and_encodings);
  tcase_add_test(tc, test_exec_failed_and_timeout);
  tcase_add_test(tc, test_payload_too_large);
  tcase_add_test(tc, test_exec_records);
  tcase_add_test(tc, test_background_control);
  tcase_add_test(tc, test_stream_order);
  tcase_add_test(tc, test_stream_collect_wait_failed);
  tcase_add_test(tc, test_stream_stdin_pipe);
  tcase_add_test(tc, test_stream_concurrent_signal);
  tcase_add_test(tc, test_stream_detach_attach);
  tcase_add_test(tc, test_stream_tty_resize_and_large);
  tcase_add_test(tc, test_readme_example);
  tcase_add_test(tc, test_auth_rate_capacity_errors);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  srandom((unsigned)time(NULL) ^ (unsigned)getpid());
  signal(SIGPIPE, SIG_IGN);
  if (start_server() < 0) {
    stop_server();
    return 1;
  }
  SRunner *sr = srunner_create(suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  stop_server();
  return failed ? 1 : 0;
}
