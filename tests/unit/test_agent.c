/* test_agent.c - the real sbx-agent binary driven over its socket with the
 * agent protocol: real processes, real pipes and ptys, no mocks.
 *
 * The binary is $SBX_AGENT or build/sbx-agent (tests run from the repo root).
 * Each test starts its own agent with --listen in a fresh mkdtemp dir and
 * fixture passwd/group files. */
#include "agent/proto.h"

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- fixture: one agent per test ---- */

static char g_dir[64];
static char g_sock[sizeof(((struct sockaddr_un *)0)->sun_path)];
static pid_t g_agent = -1;

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void write_fixture(const char *name, const char *text) {
  char path[400];
  snprintf(path, sizeof path, "%s/%s", g_dir, name);
  FILE *f = fopen(path, "w");
  ck_assert_ptr_nonnull(f);
  fputs(text, f);
  fclose(f);
}

static int try_connect(void) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  snprintf(sa.sun_path, sizeof sa.sun_path, "%s", g_sock);
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
    close(fd);
    return -1;
  }
  return fd;
}

static void agent_setup(void) {
  snprintf(g_dir, sizeof g_dir, "/tmp/sbx-agent-test-XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(g_dir));
  chmod(g_dir, 0755); /* uid 1000 must be able to run things from here */
  snprintf(g_sock, sizeof g_sock, "%s/agent.sock", g_dir);
  write_fixture("passwd", "root:x:0:0:root:/root:/bin/sh\n"
                          "# a comment line\n"
                          "alice:x:1000:1000:Alice:/home/alice:/bin/sh\n");
  write_fixture("group", "root:x:0:\nalice:x:1000:\nstaff:x:50:bob,alice\nother:x:60:bob\n");
  const char *bin = getenv("SBX_AGENT");
  if (!bin)
    bin = "build/sbx-agent";
  ck_assert_msg(access(bin, X_OK) == 0, "agent binary %s not found (run from the repo root)", bin);
  char pw[400], gr[400], log[400];
  snprintf(pw, sizeof pw, "%s/passwd", g_dir);
  snprintf(gr, sizeof gr, "%s/group", g_dir);
  snprintf(log, sizeof log, "%s/agent.log", g_dir);
  g_agent = fork();
  ck_assert_int_ge(g_agent, 0);
  if (g_agent == 0) {
    int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0)
      dup2(fd, 2);
    execl(bin, bin, "--listen", g_sock, "--passwd", pw, "--group", gr, "--log-level", "debug",
          (char *)NULL);
    _exit(127);
  }
  for (int i = 0; i < 200; i++) {
    int fd = try_connect();
    if (fd >= 0) {
      close(fd);
      return;
    }
    usleep(10000);
  }
  ck_abort_msg("agent did not start listening on %s", g_sock);
}

static void agent_teardown(void) {
  if (g_agent > 0) {
    kill(g_agent, SIGTERM);
    int st;
    int64_t end = now_ms() + 3000;
    while (waitpid(g_agent, &st, WNOHANG) == 0) {
      if (now_ms() > end) { /* a wrapper (SBX_AGENT=unshare ...) may ignore SIGTERM */
        kill(g_agent, SIGKILL);
        waitpid(g_agent, &st, 0);
        break;
      }
      usleep(10000);
    }
    g_agent = -1;
  }
  char cmd[400];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
  if (system(cmd) != 0)
    fprintf(stderr, "could not remove %s\n", g_dir);
}

/* ---- a small protocol client ---- */

#define MAX_SID 64

typedef struct sres {
  bool started, done;
  int pid;
  json_t *final; /* EXITED or FAILED payload */
  uint8_t final_type;
  uint8_t *out, *err;
  size_t out_len, err_len;
  int n_errors, n_stdin_errors;
  uint64_t stdin_acked; /* STDIN_ACK totals: what the program took */
  json_t *stdin_error;
  bool auto_credit; /* grant back every byte received, like the gateway */
  int64_t done_ms;
} sres;

typedef struct client {
  int fd;
  sbx_decoder *dec;
  json_t *hello;
  bool closed;
  sres s[MAX_SID];
} client;

static void cl_send(client *c, uint32_t sid, uint8_t type, const void *p, size_t n) {
  uint8_t hdr[SBX_PROTO_HDR];
  sbx_proto_put_hdr(hdr, (uint32_t)n, sid, type);
  ck_assert_int_eq(write(c->fd, hdr, sizeof hdr), (ssize_t)sizeof hdr);
  size_t off = 0;
  while (off < n) {
    ssize_t w = write(c->fd, (const uint8_t *)p + off, n - off);
    ck_assert_int_gt(w, 0);
    off += (size_t)w;
  }
}

static void cl_send_json(client *c, uint32_t sid, uint8_t type, json_t *j) {
  char *s = json_dumps(j, JSON_COMPACT);
  json_decref(j);
  cl_send(c, sid, type, s, strlen(s));
  free(s);
}

static void cl_credit(client *c, uint32_t sid, uint32_t out, uint32_t err) {
  uint8_t b[8] = {(uint8_t)(out >> 24), (uint8_t)(out >> 16), (uint8_t)(out >> 8), (uint8_t)out,
                  (uint8_t)(err >> 24), (uint8_t)(err >> 16), (uint8_t)(err >> 8), (uint8_t)err};
  cl_send(c, sid, SBX_F_CREDIT, b, sizeof b);
}

static void append(uint8_t **buf, size_t *len, const uint8_t *p, size_t n) {
  *buf = realloc(*buf, *len + n + 1);
  memcpy(*buf + *len, p, n);
  *len += n;
  (*buf)[*len] = 0;
}

static void cl_handle(client *c, const sbx_frame_hdr *h, const uint8_t *p) {
  if (h->session == 0) {
    ck_assert_uint_eq(h->type, SBX_F_HELLO);
    json_decref(c->hello);
    c->hello = json_loadb((const char *)p, h->len, 0, NULL);
    ck_assert_ptr_nonnull(c->hello);
    return;
  }
  ck_assert_uint_lt(h->session, MAX_SID);
  sres *r = &c->s[h->session];
  ck_assert_msg(!r->done || h->type == SBX_F_ERROR || h->type == SBX_F_EXITED ||
                    h->type == SBX_F_FAILED,
                "session %u: %s after the end", h->session, sbx_proto_type_name(h->type));
  switch (h->type) {
  case SBX_F_STARTED: {
    json_t *j = json_loadb((const char *)p, h->len, 0, NULL);
    ck_assert_ptr_nonnull(j);
    r->pid = (int)json_integer_value(json_object_get(j, "pid"));
    json_decref(j);
    r->started = true;
    break;
  }
  case SBX_F_STDOUT:
  case SBX_F_STDERR:
    ck_assert_msg(r->started, "output before STARTED");
    ck_assert_uint_le(h->len, SBX_PROTO_CHUNK);
    if (h->type == SBX_F_STDOUT)
      append(&r->out, &r->out_len, p, h->len);
    else
      append(&r->err, &r->err_len, p, h->len);
    if (r->auto_credit)
      cl_credit(c, h->session, h->type == SBX_F_STDOUT ? h->len : 0,
                h->type == SBX_F_STDERR ? h->len : 0);
    break;
  case SBX_F_EXITED:
  case SBX_F_FAILED:
    json_decref(r->final);
    r->final = json_loadb((const char *)p, h->len, 0, NULL);
    ck_assert_ptr_nonnull(r->final);
    r->final_type = h->type;
    r->done = true;
    r->done_ms = now_ms();
    break;
  case SBX_F_STDIN_ERROR:
    r->n_stdin_errors++;
    json_decref(r->stdin_error);
    r->stdin_error = json_loadb((const char *)p, h->len, 0, NULL);
    break;
  case SBX_F_ERROR:
    r->n_errors++;
    break;
  case SBX_F_STDIN_ACK:
    ck_assert_uint_eq(h->len, 4);
    r->stdin_acked += (uint64_t)p[0] << 24 | (uint64_t)p[1] << 16 | (uint64_t)p[2] << 8 | p[3];
    break;
  default:
    ck_abort_msg("unexpected frame %s", sbx_proto_type_name(h->type));
  }
}

/* Read and handle what arrives within timeout_ms; false once the agent closed. */
static bool cl_pump(client *c, int timeout_ms) {
  if (c->closed)
    return false;
  struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
  if (poll(&pfd, 1, timeout_ms) <= 0)
    return true;
  uint8_t buf[65536];
  ssize_t n = read(c->fd, buf, sizeof buf);
  if (n <= 0) {
    c->closed = true;
    return false;
  }
  ck_assert_int_eq(sbx_decoder_feed(c->dec, buf, (size_t)n), 0);
  for (;;) {
    sbx_frame_hdr h;
    const uint8_t *p;
    const char *why = NULL;
    int r = sbx_decoder_next(c->dec, &h, &p, &why);
    ck_assert_msg(r >= 0, "agent sent a bad frame: %s", why);
    if (r == 0)
      break;
    cl_handle(c, &h, p);
  }
  return true;
}

static client *cl_open(void) {
  client *c = calloc(1, sizeof *c);
  c->fd = try_connect();
  ck_assert_int_ge(c->fd, 0);
  c->dec = sbx_decoder_new();
  cl_send_json(c, 0, SBX_F_SYNC, json_pack("{s:s}", "nonce", "5eed"));
  int64_t end = now_ms() + 3000;
  while (!c->hello && now_ms() < end && cl_pump(c, 100))
    ;
  ck_assert_msg(c->hello != NULL, "no HELLO from the agent");
  ck_assert_str_eq(json_string_value(json_object_get(c->hello, "nonce")), "5eed");
  cl_send_json(c, 0, SBX_F_HELLO, json_pack("{s:i}", "version", SBX_PROTO_VERSION));
  return c;
}

static void cl_close(client *c) {
  if (c->fd >= 0)
    close(c->fd);
  sbx_decoder_free(c->dec);
  json_decref(c->hello);
  for (int i = 0; i < MAX_SID; i++) {
    free(c->s[i].out);
    free(c->s[i].err);
    json_decref(c->s[i].final);
    json_decref(c->s[i].stdin_error);
  }
  free(c);
}

/* Start a session: spec is an EXEC object (stolen); unless it says otherwise,
 * grant generous credit and keep granting. */
static void cl_exec(client *c, uint32_t sid, json_t *spec) {
  if (!json_object_get(spec, "credit_stdout")) {
    json_object_set_new(spec, "credit_stdout", json_integer(1 << 20));
    json_object_set_new(spec, "credit_stderr", json_integer(1 << 20));
    c->s[sid].auto_credit = true;
  }
  if (!json_object_get(spec, "env"))
    json_object_set_new(spec, "env", json_pack("{s:s}", "PATH", "/usr/bin:/bin"));
  cl_send_json(c, sid, SBX_F_EXEC, spec);
}

static bool cl_wait(client *c, uint32_t sid, int timeout_ms) {
  int64_t end = now_ms() + timeout_ms;
  while (!c->s[sid].done && now_ms() < end)
    if (!cl_pump(c, 50))
      break;
  return c->s[sid].done;
}

static sres *run(client *c, uint32_t sid, json_t *spec) {
  cl_exec(c, sid, spec);
  ck_assert_msg(cl_wait(c, sid, 10000), "session %u did not end", sid);
  return &c->s[sid];
}

static json_int_t jint(json_t *o, const char *k) {
  json_t *v = json_object_get(o, k);
  ck_assert_msg(json_is_integer(v), "\"%s\" is not an integer", k);
  return json_integer_value(v);
}

static const char *jstr(json_t *o, const char *k) {
  json_t *v = json_object_get(o, k);
  ck_assert_msg(json_is_string(v), "\"%s\" is not a string", k);
  return json_string_value(v);
}

static void assert_exited(sres *r, int code) {
  ck_assert_uint_eq(r->final_type, SBX_F_EXITED);
  ck_assert_int_eq(jint(r->final, "exit_code"), code);
}

static void assert_failed(sres *r, const char *kind) {
  ck_assert_msg(r->final_type == SBX_F_FAILED, "expected FAILED");
  ck_assert_str_eq(jstr(r->final, "kind"), kind);
  ck_assert_msg(!r->started, "FAILED session sent STARTED");
  ck_assert_uint_eq(r->out_len + r->err_len, 0);
}

#define SH(script) json_pack("{s:s,s:[s,s]}", "cmd", "/bin/sh", "args", "-c", script)

static bool pid_gone(pid_t pid, int timeout_ms) {
  int64_t end = now_ms() + timeout_ms;
  do {
    if (kill(pid, 0) < 0 && errno == ESRCH)
      return true;
    usleep(10000);
  } while (now_ms() < end);
  return false;
}

/* ---- tests ---- */

START_TEST(test_hello_and_streams) {
  client *c = cl_open();
  ck_assert_int_eq(jint(c->hello, "version"), SBX_PROTO_VERSION);
  ck_assert_str_eq(jstr(c->hello, "agent"), "sbx-agent 0.1");
  ck_assert_int_eq(jint(c->hello, "pid"), g_agent);
  ck_assert_uint_eq(json_array_size(json_object_get(c->hello, "sessions")), 0);
  sres *r = run(c, 1, SH("echo out; echo err >&2; echo out2"));
  ck_assert(r->started);
  ck_assert_int_gt(r->pid, 0);
  assert_exited(r, 0);
  ck_assert_str_eq((char *)r->out, "out\nout2\n");
  ck_assert_str_eq((char *)r->err, "err\n");
  ck_assert(json_is_null(json_object_get(r->final, "signal")));
  ck_assert(json_is_false(json_object_get(r->final, "timed_out")));
  ck_assert_int_ge(jint(r->final, "duration_ms"), 0);
  /* argv and env reach the program as given; PATH search from the env */
  json_t *spec = json_pack("{s:s,s:[s,s,s],s:{s:s,s:s}}", "cmd", "sh", "args", "-c",
                           "printf '%s|%s|%s' \"$0\" \"$FOO\" \"$(pwd)\"", "a b", "env", "PATH",
                           "/usr/bin:/bin", "FOO", "bar baz");
  json_object_set_new(spec, "cwd", json_string("/tmp"));
  r = run(c, 2, spec);
  assert_exited(r, 0);
  ck_assert_str_eq((char *)r->out, "a b|bar baz|/tmp");
  cl_close(c);
}
END_TEST

START_TEST(test_exit_codes_and_signals) {
  client *c = cl_open();
  sres *r = run(c, 1, SH("exit 3"));
  assert_exited(r, 3);
  r = run(c, 2, SH("kill -9 $$"));
  assert_exited(r, -1);
  ck_assert_int_eq(jint(r->final, "signal"), 9);
  /* SIGNAL frame to the group */
  cl_exec(c, 3, json_pack("{s:s,s:[s]}", "cmd", "sleep", "args", "100"));
  while (!c->s[3].started && cl_pump(c, 100))
    ;
  cl_send_json(c, 3, SBX_F_SIGNAL, json_pack("{s:i}", "signal", 15));
  ck_assert(cl_wait(c, 3, 5000));
  assert_exited(&c->s[3], -1);
  ck_assert_int_eq(jint(c->s[3].final, "signal"), 15);
  /* a bad signal number and a signal to an ended session are refused, the
   * connection stays */
  cl_send_json(c, 3, SBX_F_SIGNAL, json_pack("{s:i}", "signal", 15));
  cl_send_json(c, 3, SBX_F_SIGNAL, json_pack("{s:i}", "signal", 99));
  int64_t end = now_ms() + 2000;
  while (c->s[3].n_errors < 2 && now_ms() < end && cl_pump(c, 50))
    ;
  ck_assert_int_eq(c->s[3].n_errors, 2);
  r = run(c, 4, SH("exit 0"));
  assert_exited(r, 0);
  cl_close(c);
}
END_TEST

START_TEST(test_failures) {
  client *c = cl_open();
  sres *r = run(c, 1, json_pack("{s:s}", "cmd", "/nonexistent/prog"));
  assert_failed(r, "not_found");
  ck_assert_int_eq(jint(r->final, "errno"), ENOENT);
  ck_assert_str_eq(jstr(r->final, "errno_name"), "ENOENT");
  ck_assert_str_eq(jstr(r->final, "stage"), "execve");
  ck_assert_str_eq(jstr(r->final, "path"), "/nonexistent/prog");
  ck_assert(strlen(jstr(r->final, "message")) > 0);

  r = run(c, 2, json_pack("{s:s}", "cmd", "no-such-command-sbx"));
  assert_failed(r, "not_found");

  char path[400];
  snprintf(path, sizeof path, "%s/noexec.sh", g_dir);
  write_fixture("noexec.sh", "#!/bin/sh\necho hi\n");
  chmod(path, 0644);
  r = run(c, 3, json_pack("{s:s}", "cmd", path));
  assert_failed(r, "permission_denied");
  ck_assert_str_eq(jstr(r->final, "errno_name"), "EACCES");

  snprintf(path, sizeof path, "%s/garbage.bin", g_dir);
  write_fixture("garbage.bin", "\x7f" "ELFnot really an elf at all, just bytes\n");
  chmod(path, 0755);
  r = run(c, 4, json_pack("{s:s}", "cmd", path));
  assert_failed(r, "not_executable");

  r = run(c, 5, json_pack("{s:s,s:s}", "cmd", "/bin/true", "cwd", "/nonexistent-dir"));
  assert_failed(r, "bad_cwd");
  ck_assert_str_eq(jstr(r->final, "stage"), "chdir");
  ck_assert_str_eq(jstr(r->final, "path"), "/nonexistent-dir");

  r = run(c, 6, json_pack("{s:s,s:s}", "cmd", "/bin/true", "user", "nobody-here"));
  assert_failed(r, "bad_user");

  r = run(c, 7, json_pack("{s:s,s:i}", "cmd", "/bin/true", "timeout_ms", -5));
  assert_failed(r, "bad_args");
  /* HELLO on a new connection lists ended, unreleased sessions; RELEASE forgets */
  client *c2 = cl_open();
  ck_assert_uint_eq(json_array_size(json_object_get(c2->hello, "sessions")), 7);
  for (uint32_t i = 1; i <= 7; i++)
    cl_send(c, i, SBX_F_RELEASE, NULL, 0);
  cl_pump(c, 200);
  client *c3 = cl_open();
  ck_assert_uint_eq(json_array_size(json_object_get(c3->hello, "sessions")), 0);
  cl_close(c3);
  cl_close(c2);
  cl_close(c);
}
END_TEST

START_TEST(test_user_by_name) {
  client *c = cl_open();
  if (geteuid() != 0) {
    /* not root: switching identity must fail as bad_user, not crash */
    sres *r = run(c, 1, json_pack("{s:s,s:[s],s:s}", "cmd", "id", "args", "-u", "user", "alice"));
    assert_failed(r, "bad_user");
    cl_close(c);
    return;
  }
  sres *r = run(c, 1, json_pack("{s:s,s:[s],s:s}", "cmd", "id", "args", "-u", "user", "alice"));
  assert_exited(r, 0);
  ck_assert_str_eq((char *)r->out, "1000\n");
  r = run(c, 2, json_pack("{s:s,s:[s,s],s:s}", "cmd", "sh", "args", "-c", "id -g; id -G; echo $HOME",
                          "user", "alice"));
  assert_exited(r, 0);
  ck_assert_str_eq((char *)r->out, "1000\n1000 50\n/home/alice\n");
  /* a numeric uid the passwd file does not know */
  r = run(c, 3, json_pack("{s:s,s:[s,s],s:i}", "cmd", "sh", "args", "-c", "id -u; id -g", "user",
                          4242));
  assert_exited(r, 0);
  ck_assert_str_eq((char *)r->out, "4242\n4242\n");
  /* the user's rights apply to cwd */
  char dir[400];
  snprintf(dir, sizeof dir, "%s/private", g_dir);
  ck_assert_int_eq(mkdir(dir, 0700), 0);
  r = run(c, 4, json_pack("{s:s,s:s,s:s}", "cmd", "/bin/true", "user", "1000", "cwd", dir));
  assert_failed(r, "bad_cwd");
  ck_assert_str_eq(jstr(r->final, "errno_name"), "EACCES");
  cl_close(c);
}
END_TEST

START_TEST(test_stdin_b64_and_pipe) {
  client *c = cl_open();
  sres *r = run(c, 1, json_pack("{s:s,s:s}", "cmd", "cat", "stdin_b64", "aGVsbG8gd29ybGQ="));
  assert_exited(r, 0);
  ck_assert_str_eq((char *)r->out, "hello world");
  /* no stdin at all: EOF at once */
  r = run(c, 2, json_pack("{s:s}", "cmd", "cat"));
  assert_exited(r, 0);
  ck_assert_uint_eq(r->out_len, 0);
  /* stdin_pipe: STDIN frames then STDIN_CLOSE */
  cl_exec(c, 3, json_pack("{s:s,s:b}", "cmd", "cat", "stdin_pipe", 1));
  cl_send(c, 3, SBX_F_STDIN, "abc", 3);
  cl_pump(c, 100);
  cl_send(c, 3, SBX_F_STDIN, "def\n", 4);
  ck_assert(!cl_wait(c, 3, 300)); /* still waiting for more */
  cl_send(c, 3, SBX_F_STDIN_CLOSE, NULL, 0);
  ck_assert(cl_wait(c, 3, 5000));
  assert_exited(&c->s[3], 0);
  ck_assert_str_eq((char *)c->s[3].out, "abcdef\n");
  ck_assert_uint_eq(c->s[3].stdin_acked, 7); /* every byte the program took is acknowledged */
  /* STDIN after STDIN_CLOSE, or to a session without stdin_pipe, is a stdin error */
  cl_exec(c, 4, json_pack("{s:s,s:[s],s:b}", "cmd", "sleep", "args", "0.3", "stdin_pipe", 1));
  cl_send(c, 4, SBX_F_STDIN_CLOSE, NULL, 0);
  cl_send(c, 4, SBX_F_STDIN, "late", 4);
  cl_exec(c, 5, json_pack("{s:s,s:[s]}", "cmd", "sleep", "args", "0.3"));
  cl_send(c, 5, SBX_F_STDIN, "nope", 4);
  ck_assert(cl_wait(c, 4, 5000));
  ck_assert(cl_wait(c, 5, 5000));
  ck_assert_int_eq(c->s[4].n_stdin_errors, 1);
  ck_assert_int_eq(c->s[5].n_stdin_errors, 1);
  cl_close(c);
}
END_TEST

START_TEST(test_stdin_never_read) {
  client *c = cl_open();
  /* the program never reads; 1 MiB of stdin must not block the agent */
  cl_exec(c, 1, json_pack("{s:s,s:[s,s],s:b}", "cmd", "sh", "args", "-c", "sleep 1", "stdin_pipe",
                          1));
  static uint8_t chunk[256 * 1024];
  memset(chunk, 'x', sizeof chunk);
  for (int i = 0; i < 4; i++)
    cl_send(c, 1, SBX_F_STDIN, chunk, sizeof chunk);
  int64_t t0 = now_ms();
  sres *r = run(c, 2, SH("echo alive"));
  assert_exited(r, 0);
  ck_assert_str_eq((char *)r->out, "alive\n");
  ck_assert_int_lt(now_ms() - t0, 800);
  ck_assert(!c->s[1].done);
  ck_assert(cl_wait(c, 1, 5000));
  assert_exited(&c->s[1], 0);
  /* the unwritten rest: one STDIN_ERROR (EPIPE), before EXITED */
  ck_assert_int_eq(c->s[1].n_stdin_errors, 1);
  ck_assert_str_eq(jstr(c->s[1].stdin_error, "errno_name"), "EPIPE");
  ck_assert_str_eq(jstr(c->s[1].stdin_error, "kind"), "other");
  /* overfilling the buffer (4 MiB) is refused with STDIN_ERROR, not silently */
  cl_exec(c, 3, json_pack("{s:s,s:[s],s:b}", "cmd", "sleep", "args", "1", "stdin_pipe", 1));
  static uint8_t big[SBX_PROTO_MAX_PAYLOAD];
  for (int i = 0; i < 6; i++)
    cl_send(c, 3, SBX_F_STDIN, big, sizeof big);
  int64_t end = now_ms() + 3000;
  while (c->s[3].n_stdin_errors == 0 && now_ms() < end && cl_pump(c, 50))
    ;
  ck_assert_int_ge(c->s[3].n_stdin_errors, 1);
  ck_assert(strstr(jstr(c->s[3].stdin_error, "message"), "buffer is full") != NULL);
  cl_send_json(c, 3, SBX_F_SIGNAL, json_pack("{s:i}", "signal", 9));
  ck_assert(cl_wait(c, 3, 5000));
  cl_close(c);
}
END_TEST

START_TEST(test_timeout_kills_group) {
  client *c = cl_open();
  json_t *spec = SH("sleep 100 & sleep 100");
  json_object_set_new(spec, "timeout_ms", json_integer(300));
  int64_t t0 = now_ms();
  sres *r = run(c, 1, spec);
  int64_t took = now_ms() - t0;
  ck_assert_int_ge(took, 250);
  ck_assert_int_lt(took, 3000);
  assert_exited(r, -1);
  ck_assert_int_eq(jint(r->final, "signal"), 9);
  ck_assert(json_is_true(json_object_get(r->final, "timed_out")));
  /* no process of that group remains (zombies reaped too) */
  ck_assert_int_gt(r->pid, 0);
  ck_assert_msg(pid_gone(-r->pid, 2000), "process group %d survived the timeout", r->pid);
  cl_close(c);
}
END_TEST

START_TEST(test_grace_background_holder) {
  client *c = cl_open();
  /* the subshell's background sleep keeps stdout open for 5 s */
  int64_t t0 = now_ms();
  sres *r = run(c, 1, SH("echo hi; (sleep 5 &)"));
  ck_assert_int_lt(now_ms() - t0, 2000);
  assert_exited(r, 0);
  ck_assert_str_eq((char *)r->out, "hi\n");
  /* output a background process writes within the grace period is kept */
  json_t *spec = SH("(sleep 0.1; echo late) & echo early");
  json_object_set_new(spec, "grace_ms", json_integer(1000));
  r = run(c, 2, spec);
  assert_exited(r, 0);
  ck_assert_str_eq((char *)r->out, "early\nlate\n");
  cl_close(c);
}
END_TEST

START_TEST(test_credit) {
  client *c = cl_open();
  cl_exec(c, 1, json_pack("{s:s,s:[s,s,s],s:i,s:i}", "cmd", "head", "args", "-c", "1000000",
                          "/dev/zero", "credit_stdout", 0, "credit_stderr", 0));
  ck_assert(!cl_wait(c, 1, 300));
  ck_assert(c->s[1].started);
  ck_assert_uint_eq(c->s[1].out_len, 0);
  /* part of it: exactly that much comes, and no EXITED */
  cl_credit(c, 1, 100000, 0);
  ck_assert(!cl_wait(c, 1, 300));
  ck_assert_uint_eq(c->s[1].out_len, 100000);
  cl_credit(c, 1, 900000, 0);
  ck_assert(cl_wait(c, 1, 5000));
  assert_exited(&c->s[1], 0);
  ck_assert_uint_eq(c->s[1].out_len, 1000000);
  for (size_t i = 0; i < c->s[1].out_len; i++)
    ck_assert_uint_eq(c->s[1].out[i], 0);
  /* grace does not run while waiting for credit: the program ends, its
   * output stays until credit comes, none is dropped */
  cl_exec(c, 2, json_pack("{s:s,s:[s,s],s:i,s:i,s:i}", "cmd", "sh", "args", "-c",
                          "head -c 5000 /dev/zero; (sleep 3 &)", "credit_stdout", 0,
                          "credit_stderr", 100, "grace_ms", 50));
  ck_assert(!cl_wait(c, 2, 500));
  cl_credit(c, 2, 5000, 0);
  ck_assert(cl_wait(c, 2, 2000));
  assert_exited(&c->s[2], 0);
  ck_assert_uint_eq(c->s[2].out_len, 5000);
  cl_close(c);
}
END_TEST

START_TEST(test_big_output_exact) {
  client *c = cl_open();
  size_t n = 5u << 20;
  uint8_t *data = malloc(n);
  uint32_t x = 2463534242u;
  for (size_t i = 0; i < n; i++) {
    x ^= x << 13, x ^= x >> 17, x ^= x << 5;
    data[i] = (uint8_t)x;
  }
  char path[400];
  snprintf(path, sizeof path, "%s/big.bin", g_dir);
  FILE *f = fopen(path, "wb");
  ck_assert_uint_eq(fwrite(data, 1, n, f), n);
  fclose(f);
  cl_exec(c, 1, json_pack("{s:s,s:[s],s:i,s:i}", "cmd", "cat", "args", path, "credit_stdout",
                          256 * 1024, "credit_stderr", 0));
  c->s[1].auto_credit = true;
  ck_assert(cl_wait(c, 1, 20000));
  assert_exited(&c->s[1], 0);
  ck_assert_uint_eq(c->s[1].out_len, n);
  ck_assert(memcmp(c->s[1].out, data, n) == 0);
  free(data);
  cl_close(c);
}
END_TEST

/* A reader that stalls while the agent has plenty of credit: the socket
 * fills in the middle of frames (spliced payloads cut short, the rest read
 * and queued), a second stream and a second session interleave, and every
 * byte still arrives once, in order, in whole frames. */
START_TEST(test_big_output_slow_reader) {
  client *c = cl_open();
  size_t n = 3u << 20;
  uint8_t *data = malloc(n);
  uint32_t x = 88172645u;
  for (size_t i = 0; i < n; i++) {
    x ^= x << 13, x ^= x >> 17, x ^= x << 5;
    data[i] = (uint8_t)x;
  }
  char path[400], script[1300];
  snprintf(path, sizeof path, "%s/big2.bin", g_dir);
  FILE *f = fopen(path, "wb");
  ck_assert_uint_eq(fwrite(data, 1, n, f), n);
  fclose(f);
  snprintf(script, sizeof script, "cat %s; cat %s >&2; cat %s", path, path, path);
  cl_exec(c, 1, json_pack("{s:s,s:[s,s],s:i,s:i}", "cmd", "/bin/sh", "args", "-c", script,
                          "credit_stdout", 8 << 20, "credit_stderr", 8 << 20));
  cl_exec(c, 2, json_pack("{s:s,s:[s],s:i,s:i}", "cmd", "cat", "args", path, "credit_stdout",
                          8 << 20, "credit_stderr", 0));
  for (int i = 0; i < 6; i++) { /* read a little, now and then */
    usleep(100000);
    cl_pump(c, 0);
  }
  ck_assert(cl_wait(c, 1, 20000));
  ck_assert(cl_wait(c, 2, 20000));
  assert_exited(&c->s[1], 0);
  assert_exited(&c->s[2], 0);
  ck_assert_uint_eq(c->s[1].out_len, 2 * n);
  ck_assert(memcmp(c->s[1].out, data, n) == 0);
  ck_assert(memcmp(c->s[1].out + n, data, n) == 0);
  ck_assert_uint_eq(c->s[1].err_len, n);
  ck_assert(memcmp(c->s[1].err, data, n) == 0);
  ck_assert_uint_eq(c->s[2].out_len, n);
  ck_assert(memcmp(c->s[2].out, data, n) == 0);
  free(data);
  cl_close(c);
}
END_TEST

START_TEST(test_tty) {
  client *c = cl_open();
  sres *r = run(c, 1, json_pack("{s:s,s:b}", "cmd", "tty", "tty", 1));
  assert_exited(r, 0);
  ck_assert_msg(strncmp((char *)r->out, "/dev/pts/", 9) == 0, "tty said %s", r->out);
  ck_assert_uint_eq(r->err_len, 0);
  r = run(c, 2, json_pack("{s:s,s:[s],s:b,s:i,s:i}", "cmd", "stty", "args", "size", "tty", 1,
                          "rows", 33, "cols", 101));
  assert_exited(r, 0);
  ck_assert_str_eq((char *)r->out, "33 101\r\n");
  /* stderr is merged into the terminal; TERM is set */
  r = run(c, 3, json_pack("{s:s,s:[s,s],s:b}", "cmd", "sh", "args", "-c", "echo $TERM >&2", "tty",
                          1));
  assert_exited(r, 0);
  ck_assert_str_eq((char *)r->out, "xterm-256color\r\n");
  /* RESIZE while it runs */
  cl_exec(c, 4, json_pack("{s:s,s:[s,s],s:b}", "cmd", "sh", "args", "-c", "sleep 0.3; stty size",
                          "tty", 1));
  cl_send_json(c, 4, SBX_F_RESIZE, json_pack("{s:i,s:i}", "rows", 40, "cols", 120));
  ck_assert(cl_wait(c, 4, 5000));
  ck_assert_str_eq((char *)c->s[4].out, "40 120\r\n");
  /* stdin through the terminal, and EOF as ^D */
  cl_exec(c, 5, json_pack("{s:s,s:b,s:b}", "cmd", "cat", "tty", 1, "stdin_pipe", 1));
  cl_send(c, 5, SBX_F_STDIN, "ping\n", 5);
  cl_send(c, 5, SBX_F_STDIN_CLOSE, NULL, 0);
  ck_assert(cl_wait(c, 5, 5000));
  assert_exited(&c->s[5], 0);
  ck_assert_msg(strstr((char *)c->s[5].out, "ping") != NULL, "cat said %s", c->s[5].out);
  /* RESIZE of a non-tty session is refused */
  cl_exec(c, 6, json_pack("{s:s,s:[s]}", "cmd", "sleep", "args", "0.3"));
  cl_send_json(c, 6, SBX_F_RESIZE, json_pack("{s:i,s:i}", "rows", 40, "cols", 120));
  ck_assert(cl_wait(c, 6, 5000));
  ck_assert_int_eq(c->s[6].n_errors, 1);
  cl_close(c);
}
END_TEST

START_TEST(test_concurrent_sessions) {
  client *c = cl_open();
  client *c2 = cl_open();
  cl_exec(c, 1, SH("sleep 0.4; echo A"));
  cl_exec(c, 2, SH("echo B; echo B2 >&2"));
  cl_exec(c2, 3, SH("sleep 0.2; echo C"));
  ck_assert(cl_wait(c, 2, 5000));
  ck_assert(!c->s[1].done);
  ck_assert(cl_wait(c2, 3, 5000));
  ck_assert(cl_wait(c, 1, 5000));
  ck_assert_str_eq((char *)c->s[1].out, "A\n");
  ck_assert_str_eq((char *)c->s[2].out, "B\n");
  ck_assert_str_eq((char *)c->s[2].err, "B2\n");
  ck_assert_str_eq((char *)c2->s[3].out, "C\n");
  ck_assert_int_lt(c->s[2].done_ms, c->s[1].done_ms);
  /* the other connection got nothing of c's sessions */
  ck_assert(!c2->s[1].started && !c2->s[2].started);
  cl_close(c2);
  cl_close(c);
}
END_TEST

/* A SYNC with another nonce on the same connection is another gateway (a
 * virtio-serial port reopened on the host faster than the guest saw the
 * hang-up): the old one's sessions are orphaned as on a disconnect, and the
 * hello answers the new nonce.  The same nonce again is the same gateway. */
START_TEST(test_new_gateway_on_same_stream) {
  client *c = cl_open(); /* SYNC 5eed */
  cl_exec(c, 1, json_pack("{s:s,s:[s],s:b}", "cmd", "sleep", "args", "100", "kill_on_disconnect",
                          1));
  cl_exec(c, 2, json_pack("{s:s,s:[s]}", "cmd", "sleep", "args", "100"));
  while ((!c->s[1].started || !c->s[2].started) && cl_pump(c, 100))
    ;
  pid_t p1 = c->s[1].pid, p2 = c->s[2].pid;
  /* a repeated SYNC of the same gateway changes nothing */
  json_decref(c->hello);
  c->hello = NULL;
  cl_send_json(c, 0, SBX_F_SYNC, json_pack("{s:s}", "nonce", "5eed"));
  while (!c->hello && cl_pump(c, 100))
    ;
  ck_assert_ptr_nonnull(c->hello);
  usleep(200000);
  ck_assert_int_eq(kill(p1, 0), 0);
  /* another nonce: the kill_on_disconnect session goes, the other stays */
  json_decref(c->hello);
  c->hello = NULL;
  cl_send_json(c, 0, SBX_F_SYNC, json_pack("{s:s}", "nonce", "0be1"));
  while (!c->hello && cl_pump(c, 100))
    ;
  ck_assert_ptr_nonnull(c->hello);
  ck_assert_str_eq(jstr(c->hello, "nonce"), "0be1");
  ck_assert_msg(pid_gone(p1, 2000), "kill_on_disconnect session survived a new gateway");
  ck_assert_int_eq(kill(p2, 0), 0);
  kill(p2, SIGKILL);
  cl_close(c);
}
END_TEST

START_TEST(test_disconnect) {
  client *c = cl_open();
  cl_exec(c, 1, json_pack("{s:s,s:[s],s:b}", "cmd", "sleep", "args", "100", "kill_on_disconnect",
                          1));
  cl_exec(c, 2, json_pack("{s:s,s:[s]}", "cmd", "sleep", "args", "100"));
  while ((!c->s[1].started || !c->s[2].started) && cl_pump(c, 100))
    ;
  pid_t p1 = c->s[1].pid, p2 = c->s[2].pid;
  cl_close(c);
  ck_assert_msg(pid_gone(p1, 2000), "kill_on_disconnect session survived");
  usleep(200000);
  ck_assert_int_eq(kill(p2, 0), 0); /* the other one keeps running, unowned */
  /* a new connection sees both; attaches; ends the survivor */
  c = cl_open();
  json_t *list = json_object_get(c->hello, "sessions");
  ck_assert_uint_eq(json_array_size(list), 2);
  size_t i;
  json_t *e;
  int running = 0;
  json_array_foreach(list, i, e) {
    if (jint(e, "session") == 2) {
      ck_assert_str_eq(jstr(e, "state"), "running");
      ck_assert_int_eq(jint(e, "pid"), p2);
      running++;
    } else {
      ck_assert_str_eq(jstr(e, "state"), "exited");
    }
  }
  ck_assert_int_eq(running, 1);
  cl_send(c, 2, SBX_F_ATTACH, NULL, 0);
  cl_send_json(c, 2, SBX_F_SIGNAL, json_pack("{s:i}", "signal", 9));
  ck_assert(cl_wait(c, 2, 5000));
  ck_assert_int_eq(jint(c->s[2].final, "signal"), 9);
  /* ATTACH to an ended session resends its end */
  cl_send(c, 1, SBX_F_ATTACH, NULL, 0);
  ck_assert(cl_wait(c, 1, 5000));
  ck_assert_int_eq(jint(c->s[1].final, "signal"), 9);
  /* RELEASE of a running session is refused */
  cl_exec(c, 3, json_pack("{s:s,s:[s]}", "cmd", "sleep", "args", "100"));
  cl_send(c, 3, SBX_F_RELEASE, NULL, 0);
  int64_t end = now_ms() + 2000;
  while (c->s[3].n_errors == 0 && now_ms() < end && cl_pump(c, 50))
    ;
  ck_assert_int_eq(c->s[3].n_errors, 1);
  cl_send_json(c, 3, SBX_F_SIGNAL, json_pack("{s:i}", "signal", 9));
  ck_assert(cl_wait(c, 3, 5000));
  cl_close(c);
}
END_TEST

/* Send raw bytes on a fresh connection; true if the agent then closes it. */
static bool closes_on(const void *bytes, size_t n) {
  client *c = cl_open();
  ck_assert_int_eq(write(c->fd, bytes, n), (ssize_t)n);
  int64_t end = now_ms() + 3000;
  while (!c->closed && now_ms() < end)
    cl_pump(c, 50);
  bool closed = c->closed;
  cl_close(c);
  return closed;
}

static size_t mk_frame(uint8_t *buf, uint32_t sid, uint8_t type, const char *payload) {
  size_t n = payload ? strlen(payload) : 0;
  sbx_proto_put_hdr(buf, (uint32_t)n, sid, type);
  memcpy(buf + SBX_PROTO_HDR, payload ? payload : "", n);
  return SBX_PROTO_HDR + n;
}

START_TEST(test_malformed) {
  uint8_t buf[512];
  ck_assert(closes_on("GET / HTTP/1.1\r\n\r\n", 18));
  ck_assert(closes_on(buf, mk_frame(buf, 1, 77, "x")));               /* unknown type */
  ck_assert(closes_on(buf, mk_frame(buf, 1, SBX_F_EXEC, "{not json"))); /* bad JSON */
  ck_assert(closes_on(buf, mk_frame(buf, 1, SBX_F_EXEC, "[1,2]")));     /* not an object */
  ck_assert(closes_on(buf, mk_frame(buf, 9, SBX_F_SIGNAL, "{\"signal\":9}"))); /* unknown */
  ck_assert(closes_on(buf, mk_frame(buf, 0, SBX_F_EXEC, "{\"cmd\":\"true\"}")));
  ck_assert(closes_on(buf, mk_frame(buf, 0, SBX_F_HELLO, "{\"version\":99}")));
  ck_assert(closes_on(buf, mk_frame(buf, 0, SBX_F_SYNC, "{\"nonce\":\"not hex\"}")));
  ck_assert(closes_on(buf, mk_frame(buf, 0, SBX_F_SYNC, "{}")));
  ck_assert(closes_on(buf, mk_frame(buf, 1, SBX_F_STDOUT, "x"))); /* wrong direction */
  sbx_proto_put_hdr(buf, SBX_PROTO_MAX_PAYLOAD + 1, 1, SBX_F_STDIN);
  ck_assert(closes_on(buf, SBX_PROTO_HDR));
  /* EXEC for an existing session id */
  size_t n = mk_frame(buf, 5, SBX_F_EXEC, "{\"cmd\":\"/bin/sleep\",\"args\":[\"0.2\"]}");
  n += mk_frame(buf + n, 5, SBX_F_EXEC, "{\"cmd\":\"/bin/true\"}");
  ck_assert(closes_on(buf, n));
  /* CREDIT with a wrong size */
  n = mk_frame(buf, 6, SBX_F_EXEC, "{\"cmd\":\"/bin/true\"}");
  n += mk_frame(buf + n, 6, SBX_F_CREDIT, "abc");
  ck_assert(closes_on(buf, n));
  /* and the agent still serves new connections */
  client *c = cl_open();
  sres *r = run(c, 1, SH("echo still here"));
  assert_exited(r, 0);
  ck_assert_str_eq((char *)r->out, "still here\n");
  cl_close(c);
  ck_assert_int_eq(waitpid(g_agent, NULL, WNOHANG), 0);
}
END_TEST

START_TEST(test_zombies_reaped) {
  client *c = cl_open();
  /* the grandchild is orphaned and must be reaped by the agent */
  sres *r = run(c, 1, SH("sleep 0.1 & echo $!"));
  assert_exited(r, 0);
  pid_t orphan = (pid_t)atoi((char *)r->out);
  ck_assert_int_gt(orphan, 0);
  ck_assert_msg(pid_gone(orphan, 3000), "orphan %d not reaped", orphan);
  cl_close(c);
}
END_TEST

static Suite *agent_suite(void) {
  Suite *s = suite_create("agent");
  TCase *tc = tcase_create("agent");
  tcase_set_timeout(tc, 60);
  tcase_add_checked_fixture(tc, agent_setup, agent_teardown);
  tcase_add_test(tc, test_hello_and_streams);
  tcase_add_test(tc, test_exit_codes_and_signals);
  tcase_add_test(tc, test_failures);
  tcase_add_test(tc, test_user_by_name);
  tcase_add_test(tc, test_stdin_b64_and_pipe);
  tcase_add_test(tc, test_stdin_never_read);
  tcase_add_test(tc, test_timeout_kills_group);
  tcase_add_test(tc, test_grace_background_holder);
  tcase_add_test(tc, test_credit);
  tcase_add_test(tc, test_big_output_exact);
  tcase_add_test(tc, test_big_output_slow_reader);
  tcase_add_test(tc, test_tty);
  tcase_add_test(tc, test_concurrent_sessions);
  tcase_add_test(tc, test_disconnect);
  tcase_add_test(tc, test_new_gateway_on_same_stream);
  tcase_add_test(tc, test_malformed);
  tcase_add_test(tc, test_zombies_reaped);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  SRunner *sr = srunner_create(agent_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
