/* sbx - the command-line client of sbxd, a thin main over libsbx.
 *
 * Exit codes a script can rely on: the program's own exit code for exec,
 * shell and wait; 128+N when it was killed by signal N; 127 when the program
 * was not found and 126 when it could not be run (permission, cwd, user...);
 * 124 when its timeout passed; 1 for an API or connection error; 2 for usage
 * errors. */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "client/sbx.h"

#define EXIT_API 1
#define EXIT_USAGE 2
#define EXIT_TIMEOUT 124
#define EXIT_CANNOT_RUN 126
#define EXIT_NOT_FOUND 127

static struct {
  const char *url;
  const char *key;
  bool json;
} g;

static sbx_client *client;

/* ---- small helpers ------------------------------------------------------------ */

static void freep(void *p) { free(*(void **)p); }
#define autofree __attribute__((cleanup(freep)))
static void jsonp(json_t **j) { json_decref(*j); }
#define autojson __attribute__((cleanup(jsonp)))

static int usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int usage_error(const char *cmd, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("sbx: ", stderr);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fprintf(stderr, "\nTry 'sbx %s--help'.\n", cmd ? cmd : "");
  return EXIT_USAGE;
}

/* An option getopt refused: the culprit is optopt (short) or argv[optind-1]. */
static int bad_option(const char *cmd, char **argv) {
  if (optopt > 0 && optopt < 256 && strncmp(argv[optind - 1], "--", 2) != 0)
    return usage_error(cmd, "bad option -%c (unknown, or its value is missing)", optopt);
  return usage_error(cmd, "bad option %s (unknown, or its value is missing)", argv[optind - 1]);
}

/* Print an API error (or as JSON {"error": ...} under --json); returns 1. */
static int api_error(const char *what, const sbx_error *e) {
  if (g.json) {
    autojson json_t *j = json_pack("{s:{s:s,s:s,s:i}}", "error", "kind", e->kind_name, "message",
                                   e->message, "http_status", e->http_status);
    if (e->has_failure)
      json_object_set_new(json_object_get(j, "error"), "failure",
                          json_pack("{s:s,s:i,s:s,s:s,s:s,s:s}", "kind", e->failure.kind, "errno",
                                    e->failure.err_no, "errno_name", e->failure.errno_name, "path",
                                    e->failure.path, "stage", e->failure.stage, "message",
                                    e->failure.message));
    json_dumpf(j, stdout, JSON_INDENT(2));
    putchar('\n');
  }
  fprintf(stderr, "sbx: %s%s%s (%s)\n", what ? what : "", what ? ": " : "", e->message,
          e->kind_name);
  return EXIT_API;
}

/* Exit status for a program that never started. */
static int failure_exit(const sbx_failure *f) {
  if (strcmp(f->kind, "not_found") == 0)
    return EXIT_NOT_FOUND;
  return EXIT_CANNOT_RUN;
}

static int exit_status(int exit_code, int sig) {
  if (sig > 0)
    return 128 + sig;
  if (exit_code < 0)
    return EXIT_API;
  return exit_code & 0xff;
}

static void print_failure(const sbx_failure *f) {
  fprintf(stderr, "sbx: cannot run%s%s: %s (%s%s%s)\n", f->path[0] ? " " : "", f->path, f->message,
          f->kind, f->errno_name[0] ? ", " : "", f->errno_name);
}

static int write_all(int fd, const void *p, size_t n) {
  const char *c = p;
  while (n > 0) {
    ssize_t w = write(fd, c, n);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      return -1;
    c += w;
    n -= (size_t)w;
  }
  return 0;
}

static void print_json_text(const char *txt) {
  autojson json_t *j = json_loads(txt, 0, NULL);
  if (j)
    json_dumpf(j, stdout, JSON_INDENT(2));
  else
    fputs(txt, stdout);
  putchar('\n');
}

/* "10" (seconds), "10s", "500ms", "2m", "1h" -> ms; -1 when malformed. */
static long parse_duration_ms(const char *s) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || end == s || v < 0)
    return -1;
  double mult = 1000;
  if (strcmp(end, "ms") == 0)
    mult = 1;
  else if (strcmp(end, "s") == 0 || !*end)
    mult = 1000;
  else if (strcmp(end, "m") == 0)
    mult = 60000;
  else if (strcmp(end, "h") == 0)
    mult = 3600000;
  else
    return -1;
  double ms = v * mult;
  if (ms > 604800000.0)
    return -1;
  return (long)ms;
}

static bool parse_long(const char *s, long *out) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || end == s || *end)
    return false;
  *out = v;
  return true;
}

/* A NULL-terminated growable list of strings (borrowed from argv). */
typedef struct strlist {
  const char **v;
  size_t n;
} strlist;

static void strlist_add(strlist *l, const char *s) {
  const char **v = realloc(l->v, (l->n + 2) * sizeof *v);
  if (!v) {
    fprintf(stderr, "sbx: out of memory\n");
    exit(EXIT_API);
  }
  l->v = v;
  l->v[l->n++] = s;
  l->v[l->n] = NULL;
}

/* ---- common options ----------------------------------------------------------------- */

enum { OPT_URL = 1000, OPT_KEY, OPT_JSON, OPT_HELP };
#define COMMON_LONGOPTS                                                                   \
  {"url", required_argument, NULL, OPT_URL}, {"key", required_argument, NULL, OPT_KEY},   \
      {"json", no_argument, NULL, OPT_JSON}, {"help", no_argument, NULL, OPT_HELP}

static const char common_help[] =
    "      --url URL     server (default $SBX_URL or http://127.0.0.1:7070)\n"
    "      --key KEY     API key (default $SBX_KEY)\n"
    "      --json        machine-readable output\n"
    "      --help        this help\n";

/* Handles a common option; returns true when it was one. */
static bool common_opt(int c) {
  switch (c) {
  case OPT_URL: g.url = optarg; return true;
  case OPT_KEY: g.key = optarg; return true;
  case OPT_JSON: g.json = true; return true;
  default: return false;
  }
}

static int connect_client(void) {
  sbx_error e;
  client = sbx_client_new(g.url, g.key, &e);
  if (!client)
    return api_error(NULL, &e);
  return 0;
}

/* ---- create / ls / inspect / stop / start / rm ---------------------------------------- */

static int cmd_create(int argc, char **argv) {
  static const char help[] =
      "Usage: sbx create [OPTIONS]\n"
      "Create and start a sandbox; prints its id.\n"
      "  -n, --name NAME       unique name\n"
      "      --image IMAGE     \"host\" (default) or an image folder of the server\n"
      "      --driver D        ns (namespaces) or vm (a QEMU microVM; needs --image)\n"
      "  -m, --memory MIB      memory limit in MiB\n"
      "      --cpus N          CPU limit (e.g. 0.5)\n"
      "      --pids N          process limit\n"
      "      --disk MIB        writable layer limit in MiB\n"
      "  -e, --env K=V         environment of every exec (repeatable)\n"
      "  -l, --label K=V       label (repeatable)\n"
      "  -w, --workdir DIR     default cwd of execs\n"
      "      --shell PATH      shell of `sbx shell` (default /bin/sh)\n"
      "      --replace         remove a sandbox of the same name first\n";
  static const struct option lo[] = {
      {"name", required_argument, NULL, 'n'}, {"image", required_argument, NULL, 'I'},
      {"memory", required_argument, NULL, 'm'}, {"cpus", required_argument, NULL, 'c'},
      {"pids", required_argument, NULL, 'p'}, {"disk", required_argument, NULL, 'd'},
      {"env", required_argument, NULL, 'e'}, {"label", required_argument, NULL, 'l'},
      {"workdir", required_argument, NULL, 'w'}, {"shell", required_argument, NULL, 's'},
      {"replace", no_argument, NULL, 'r'}, {"driver", required_argument, NULL, 'D'},
      COMMON_LONGOPTS, {NULL, 0, NULL, 0}};
  sbx_create_opts o = {0};
  strlist env = {0}, labels = {0};
  int c;
  while ((c = getopt_long(argc, argv, "n:m:e:l:w:", lo, NULL)) != -1) {
    if (common_opt(c))
      continue;
    char *end;
    switch (c) {
    case 'n': o.name = optarg; break;
    case 'I': o.image = optarg; break;
    case 'D': o.driver = optarg; break;
    case 'm':
      if (!parse_long(optarg, &o.memory_mib) || o.memory_mib <= 0)
        return usage_error("create ", "bad --memory %s", optarg);
      break;
    case 'c':
      o.cpus = strtod(optarg, &end);
      if (*end || o.cpus <= 0)
        return usage_error("create ", "bad --cpus %s", optarg);
      break;
    case 'p':
      if (!parse_long(optarg, &o.pids) || o.pids <= 0)
        return usage_error("create ", "bad --pids %s", optarg);
      break;
    case 'd':
      if (!parse_long(optarg, &o.disk_mib) || o.disk_mib <= 0)
        return usage_error("create ", "bad --disk %s", optarg);
      break;
    case 'e':
      if (!strchr(optarg, '=') || optarg[0] == '=')
        return usage_error("create ", "--env wants K=V, got %s", optarg);
      strlist_add(&env, optarg);
      break;
    case 'l':
      if (!strchr(optarg, '=') || optarg[0] == '=')
        return usage_error("create ", "--label wants K=V, got %s", optarg);
      strlist_add(&labels, optarg);
      break;
    case 'w': o.workdir = optarg; break;
    case 's': o.shell = optarg; break;
    case 'r': o.replace = 1; break;
    case OPT_HELP: printf("%s%s", help, common_help); return 0;
    default: return bad_option("create ", argv);
    }
  }
  if (optind < argc)
    return usage_error("create ", "unexpected argument %s", argv[optind]);
  o.env = env.v;
  o.labels = labels.v;
  if (connect_client())
    return EXIT_API;
  sbx_error e;
  sbx_sandbox *s = sbx_sandbox_create(client, &o, &e);
  free(env.v);
  free(labels.v);
  if (!s)
    return api_error("create", &e);
  if (g.json)
    print_json_text(sbx_sandbox_json(s));
  else
    printf("%s\n", sbx_sandbox_id(s));
  sbx_sandbox_free(s);
  return 0;
}

static int cmd_ls(int argc, char **argv) {
  static const char help[] =
      "Usage: sbx ls [OPTIONS]\n"
      "List sandboxes.\n"
      "      --state STATE     only sandboxes in that state\n"
      "  -l, --label K=V       only sandboxes with that label (repeatable)\n"
      "  -q, --quiet           ids only\n";
  static const struct option lo[] = {{"state", required_argument, NULL, 's'},
                                     {"label", required_argument, NULL, 'l'},
                                     {"quiet", no_argument, NULL, 'q'},
                                     COMMON_LONGOPTS,
                                     {NULL, 0, NULL, 0}};
  sbx_list_opts o = {0};
  strlist labels = {0};
  bool quiet = false;
  int c;
  while ((c = getopt_long(argc, argv, "l:q", lo, NULL)) != -1) {
    if (common_opt(c))
      continue;
    switch (c) {
    case 's': o.state = optarg; break;
    case 'l': strlist_add(&labels, optarg); break;
    case 'q': quiet = true; break;
    case OPT_HELP: printf("%s%s", help, common_help); return 0;
    default: return bad_option("ls ", argv);
    }
  }
  if (optind < argc)
    return usage_error("ls ", "unexpected argument %s", argv[optind]);
  o.labels = labels.v;
  o.limit = 500;
  if (connect_client())
    return EXIT_API;
  autojson json_t *all = json_array();
  autofree char *cursor = NULL;
  if (!g.json && !quiet)
    printf("%-20s  %-24s  %-8s  %-10s  %s\n", "ID", "NAME", "STATE", "IMAGE", "CREATED");
  for (;;) {
    sbx_error e;
    o.cursor = cursor;
    sbx_sandbox_list *l = sbx_sandbox_list_get(client, &o, &e);
    if (!l) {
      free(labels.v);
      return api_error("ls", &e);
    }
    for (size_t i = 0; i < sbx_sandbox_list_count(l); i++) {
      const sbx_sandbox *s = sbx_sandbox_list_at(l, i);
      if (g.json)
        json_array_append_new(all, json_loads(sbx_sandbox_json(s), 0, NULL));
      else if (quiet)
        printf("%s\n", sbx_sandbox_id(s));
      else
        printf("%-20s  %-24s  %-8s  %-10s  %s\n", sbx_sandbox_id(s), sbx_sandbox_name(s),
               sbx_sandbox_state(s), sbx_sandbox_image(s), sbx_sandbox_created_at(s));
    }
    free(cursor);
    cursor = sbx_sandbox_list_next_cursor(l) ? strdup(sbx_sandbox_list_next_cursor(l)) : NULL;
    sbx_sandbox_list_free(l);
    if (!cursor)
      break;
  }
  free(labels.v);
  if (g.json) {
    json_dumpf(all, stdout, JSON_INDENT(2));
    putchar('\n');
  }
  return 0;
}

/* Parses the common options of a command that takes only refs; returns -1 on
 * --help printed (exit 0), >0 on a usage error, 0 when refs start at optind. */
static int refs_opts(int argc, char **argv, const char *cmd, const char *help) {
  static const struct option lo[] = {COMMON_LONGOPTS, {NULL, 0, NULL, 0}};
  int c;
  while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
    if (common_opt(c))
      continue;
    if (c == OPT_HELP) {
      printf("%s%s", help, common_help);
      return -1;
    }
    return bad_option(cmd, argv);
  }
  if (optind >= argc)
    return usage_error(cmd, "missing argument");
  return 0;
}

static int cmd_inspect(int argc, char **argv) {
  int rc = refs_opts(argc, argv, "inspect ",
                     "Usage: sbx inspect REF...\nPrint sandboxes (by id or name) as JSON.\n");
  if (rc)
    return rc < 0 ? 0 : rc;
  if (connect_client())
    return EXIT_API;
  int status = 0;
  for (int i = optind; i < argc; i++) {
    sbx_error e;
    sbx_sandbox *s = sbx_sandbox_get(client, argv[i], &e);
    if (!s) {
      status = api_error(argv[i], &e);
      continue;
    }
    print_json_text(sbx_sandbox_json(s));
    sbx_sandbox_free(s);
  }
  return status;
}

static int cmd_console(int argc, char **argv) {
  static const char help[] =
      "Usage: sbx console REF [--tail BYTES]\n"
      "Print the end of a sandbox's log: a VM's serial console (boot, guest kernel,\n"
      "agent), an ns sandbox's agent log.\n";
  static const struct option lo[] = {
      {"tail", required_argument, NULL, 't'}, COMMON_LONGOPTS, {NULL, 0, NULL, 0}};
  long tail = 0;
  int c;
  while ((c = getopt_long(argc, argv, "t:", lo, NULL)) != -1) {
    if (common_opt(c))
      continue;
    if (c == 't') {
      if (!parse_long(optarg, &tail) || tail <= 0)
        return usage_error("console ", "bad --tail %s", optarg);
    } else if (c == OPT_HELP) {
      printf("%s%s", help, common_help);
      return 0;
    } else
      return bad_option("console ", argv);
  }
  if (optind + 1 != argc)
    return usage_error("console ", optind >= argc ? "missing REF" : "one REF only");
  if (connect_client())
    return EXIT_API;
  sbx_error e;
  unsigned char *data;
  size_t len;
  if (sbx_sandbox_logs(client, argv[optind], tail, &data, &len, &e) < 0)
    return api_error(argv[optind], &e);
  fwrite(data, 1, len, stdout);
  free(data);
  return 0;
}

static int cmd_lifecycle(int argc, char **argv, const char *cmd) {
  char help[200];
  snprintf(help, sizeof help, "Usage: sbx %s REF...\n%s\n", cmd,
           strcmp(cmd, "stop") == 0    ? "Stop sandboxes (their writable layer is kept)."
           : strcmp(cmd, "start") == 0 ? "Start stopped sandboxes again."
                                       : "Stop and remove sandboxes with their data.");
  char cmdsp[16];
  snprintf(cmdsp, sizeof cmdsp, "%s ", cmd);
  int rc = refs_opts(argc, argv, cmdsp, help);
  if (rc)
    return rc < 0 ? 0 : rc;
  if (connect_client())
    return EXIT_API;
  int status = 0;
  for (int i = optind; i < argc; i++) {
    sbx_error e;
    if (strcmp(cmd, "rm") == 0) {
      if (sbx_sandbox_remove(client, argv[i], &e) < 0) {
        status = api_error(argv[i], &e);
        continue;
      }
      if (g.json)
        printf("{\"ref\": \"%s\", \"removed\": true}\n", argv[i]);
      else
        printf("%s\n", argv[i]);
      continue;
    }
    sbx_sandbox *s = strcmp(cmd, "stop") == 0 ? sbx_sandbox_stop(client, argv[i], &e)
                                              : sbx_sandbox_start(client, argv[i], &e);
    if (!s) {
      status = api_error(argv[i], &e);
      continue;
    }
    if (g.json)
      print_json_text(sbx_sandbox_json(s));
    else
      printf("%s\n", argv[i]);
    sbx_sandbox_free(s);
  }
  return status;
}

/* ---- exec / shell --------------------------------------------------------------------- */

static volatile sig_atomic_t interrupts, winch;
static void on_sigint(int sig) {
  (void)sig;
  interrupts++;
}
static void on_sigwinch(int sig) {
  (void)sig;
  winch = 1;
}

/* -i -T and attach on a terminal: raw mode, so keys (Ctrl-C too) reach the
 * remote tty.  The terminal is put back on every way out: a normal return
 * (atexit), a terminating signal (the handler restores it at once, then the
 * event loop ends the session), a crash (restore, then die of the signal),
 * and Ctrl-Z-style stops (restore while stopped, raw again on SIGCONT). */
static struct termios saved_tio, raw_tio;
static volatile sig_atomic_t tio_saved, tio_raw;
/* A terminating signal (SIGTERM, SIGHUP, SIGQUIT) seen by a raw-mode session. */
static volatile sig_atomic_t term_sig;

/* Async-signal-safe: only tcsetattr. */
static void restore_tty(void) {
  if (tio_saved && tio_raw) {
    tcsetattr(STDIN_FILENO, TCSADRAIN, &saved_tio);
    tio_raw = 0;
  }
}

static void on_term_signal(int sig) {
  int saved = errno;
  restore_tty();
  term_sig = sig;
  errno = saved;
}

static void on_fatal_signal(int sig) {
  restore_tty();
  signal(sig, SIG_DFL);
  raise(sig);
}

static void on_tstp(int sig) {
  (void)sig;
  int saved = errno;
  bool was_raw = tio_raw;
  restore_tty();
  kill(getpid(), SIGSTOP); /* returns once continued */
  if (was_raw && tcsetattr(STDIN_FILENO, TCSADRAIN, &raw_tio) == 0)
    tio_raw = 1;
  winch = 1; /* the window may have changed while stopped */
  errno = saved;
}

/* Handlers that end a session cleanly instead of dying with a raw terminal. */
static void guard_signals(void) {
  static const int term[] = {SIGTERM, SIGHUP, SIGQUIT};
  static const int fatal[] = {SIGSEGV, SIGBUS, SIGABRT, SIGFPE, SIGILL};
  struct sigaction sa = {0};
  sigemptyset(&sa.sa_mask);
  sa.sa_handler = on_term_signal;
  for (size_t i = 0; i < sizeof term / sizeof term[0]; i++)
    sigaction(term[i], &sa, NULL);
  sa.sa_handler = on_fatal_signal;
  for (size_t i = 0; i < sizeof fatal / sizeof fatal[0]; i++)
    sigaction(fatal[i], &sa, NULL);
  sa.sa_handler = on_tstp;
  sigaction(SIGTSTP, &sa, NULL);
}

static void raw_tty(void) {
  if (!tio_saved) {
    if (tcgetattr(STDIN_FILENO, &saved_tio) < 0)
      return;
    raw_tio = saved_tio;
    cfmakeraw(&raw_tio);
    tio_saved = 1;
    atexit(restore_tty);
  }
  guard_signals();
  if (tcsetattr(STDIN_FILENO, TCSADRAIN, &raw_tio) == 0)
    tio_raw = 1;
}

/* The local window size (stdout, else stdin); false when neither is a tty. */
static bool term_size(int *rows, int *cols) {
  struct winsize ws;
  if ((ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 || ioctl(STDIN_FILENO, TIOCGWINSZ, &ws) == 0) &&
      ws.ws_row && ws.ws_col) {
    *rows = ws.ws_row;
    *cols = ws.ws_col;
    return true;
  }
  return false;
}

typedef struct stdin_pump {
  sbx_stdin *w;
  volatile bool running;
} stdin_pump;

static void *stdin_main(void *arg) {
  stdin_pump *p = arg;
  char buf[65536];
  for (;;) {
    ssize_t n = read(STDIN_FILENO, buf, sizeof buf);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    if (sbx_stdin_write(p->w, buf, (size_t)n, NULL) < 0)
      break;
  }
  sbx_stdin_close(p->w, NULL);
  p->running = false;
  return NULL;
}

/* Read all of stdin (for the REST fallback), at most limit bytes. */
static unsigned char *slurp_stdin(size_t limit, size_t *len) {
  size_t cap = 65536, n = 0;
  unsigned char *b = malloc(cap);
  if (!b)
    return NULL;
  for (;;) {
    if (n == cap) {
      if (cap >= limit + 1)
        break;
      unsigned char *nb = realloc(b, cap * 2);
      if (!nb) {
        free(b);
        return NULL;
      }
      b = nb;
      cap *= 2;
    }
    ssize_t r = read(STDIN_FILENO, b + n, cap - n);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      break;
    n += (size_t)r;
  }
  *len = n;
  return b;
}

static void output_json(const sbx_output *o, const sbx_error *e) {
  autojson json_t *j = json_pack(
      "{s:s,s:i,s:b,s:o,s:s,s:s,s:b,s:b}", "exec_id", sbx_output_exec_id(o), "exit_code",
      sbx_output_exit_code(o), "success", sbx_output_success(o), "signal",
      sbx_output_signal(o) ? json_integer(sbx_output_signal(o)) : json_null(), "stdout",
      sbx_output_stdout(o), "stderr", sbx_output_stderr(o), "stdout_truncated",
      sbx_output_stdout_truncated(o), "stderr_truncated", sbx_output_stderr_truncated(o));
  if (e)
    json_object_set_new(j, "error", json_pack("{s:s,s:s}", "kind", e->kind_name, "message", e->message));
  json_dumpf(j, stdout, JSON_INDENT(2));
  putchar('\n');
}

/* The one-shot path: --json, or a server without WebSocket streaming. */
static int exec_rest(const char *ref, const char *cmd, const char *const *args, const char *command,
                     sbx_exec_opts *o, bool with_stdin) {
  autofree unsigned char *in = NULL;
  if (with_stdin) {
    size_t n = 0;
    in = slurp_stdin(512 * 1024, &n);
    o->stdin_data = in;
    o->stdin_len = n;
  }
  o->stdin_pipe = 0;
  o->detach = 0;
  sbx_output *out = NULL;
  sbx_error e;
  int rc = command ? sbx_shell(client, ref, command, o, &out, &e)
                   : sbx_exec(client, ref, cmd, args, o, &out, &e);
  int status;
  if (rc < 0 && e.kind == SBX_ERR_EXEC_FAILED && !g.json) {
    print_failure(&e.failure);
    status = failure_exit(&e.failure);
  } else if (rc < 0 && e.kind == SBX_ERR_EXEC_FAILED) {
    api_error(NULL, &e);
    status = failure_exit(&e.failure);
  } else if (rc < 0 && e.kind != SBX_ERR_EXEC_TIMEOUT) {
    return api_error(NULL, &e);
  } else {
    status = rc < 0 ? EXIT_TIMEOUT : exit_status(sbx_output_exit_code(out), sbx_output_signal(out));
  }
  if (out) {
    if (g.json) {
      output_json(out, rc < 0 ? &e : NULL);
    } else {
      size_t n;
      const unsigned char *p = sbx_output_stdout_bytes(out, &n);
      write_all(STDOUT_FILENO, p, n);
      p = sbx_output_stderr_bytes(out, &n);
      write_all(STDERR_FILENO, p, n);
    }
    if (rc < 0 && !g.json)
      fprintf(stderr, "sbx: %s\n", e.message);
  }
  sbx_output_free(out);
  return status;
}

/* How a pump ended. */
typedef enum pump_end {
  PUMP_DONE,     /* the stream's last event (status: the exec's) */
  PUMP_LOST,     /* the connection failed (reported; terminal restored) */
  PUMP_DETACHED, /* the detach key was typed (attach) */
  PUMP_SIGNALED, /* a terminating signal (status: 128+N; terminal restored) */
} pump_end;

typedef enum pump_mode {
  PUMP_VIEW,   /* logs --follow: local signals are not forwarded */
  PUMP_EXEC,   /* exec/shell: Ctrl-C sends SIGINT, a second one kills */
  PUMP_ATTACH, /* attach: every SIGINT is forwarded, never a kill; detach key */
} pump_mode;

/* Set by the attach input thread when the detach keys were typed. */
static volatile sig_atomic_t detach_now;

/* Stream events to stdout/stderr until done; returns the exit status. */
static int pump_events(sbx_stream *s, pump_mode mode, pump_end *end) {
  int status = EXIT_API;
  bool out_ok = true, err_ok = true;
  int handled = 0;
  *end = PUMP_DONE;
  for (;;) {
    if (term_sig) {
      *end = PUMP_SIGNALED;
      return 128 + term_sig;
    }
    if (mode == PUMP_ATTACH && detach_now) {
      *end = PUMP_DETACHED;
      return 0;
    }
    if (winch) {
      winch = 0;
      int rows, cols;
      if (term_size(&rows, &cols))
        sbx_stream_resize(s, rows, cols, NULL);
    }
    if (mode != PUMP_VIEW && interrupts > handled) {
      handled = interrupts;
      if (handled == 1 || mode == PUMP_ATTACH)
        sbx_stream_signal(s, "SIGINT", NULL);
      else
        sbx_stream_kill(s, NULL);
    }
    sbx_event ev;
    sbx_error e;
    int rc = sbx_stream_recv(s, &ev, 200, &e);
    if (rc == 0)
      return status;
    if (rc < 0) {
      if (e.kind == SBX_ERR_TIMEOUT)
        continue;
      restore_tty();
      *end = PUMP_LOST;
      return api_error(NULL, &e);
    }
    switch (ev.type) {
    case SBX_EV_STDOUT:
      if (out_ok && write_all(STDOUT_FILENO, ev.data, ev.len) < 0)
        out_ok = false;
      break;
    case SBX_EV_STDERR:
      if (err_ok && write_all(STDERR_FILENO, ev.data, ev.len) < 0)
        err_ok = false;
      break;
    case SBX_EV_EXITED:
      if (status != EXIT_TIMEOUT)
        status = exit_status(ev.exit_code, ev.signal);
      break;
    case SBX_EV_FAILED:
      restore_tty();
      print_failure(&ev.failure);
      status = failure_exit(&ev.failure);
      break;
    case SBX_EV_STDIN_ERROR:
      fprintf(stderr, "sbx: stdin: %s%s", ev.failure.message, tio_raw ? "\r\n" : "\n");
      break;
    case SBX_EV_GAP:
      fprintf(stderr, "sbx: %s bytes %llu..%llu were dropped (fell behind retention)%s",
              ev.gap_stream == SBX_EV_STDERR ? "stderr" : "stdout",
              (unsigned long long)ev.gap_from, (unsigned long long)ev.gap_to,
              tio_raw ? "\r\n" : "\n");
      break;
    case SBX_EV_ERROR:
      restore_tty();
      fprintf(stderr, "sbx: %s (%s)\n", ev.error.message, ev.error.kind_name);
      status = ev.error.kind == SBX_ERR_EXEC_TIMEOUT ? EXIT_TIMEOUT : EXIT_API;
      break;
    case SBX_EV_DONE:
    case SBX_EV_STARTED:
      break;
    }
  }
}

/* ---- attach ---------------------------------------------------------------------------- */

#define DETACH_KEYS_MAX 16

/* "ctrl-]" (the default), "ctrl-p,ctrl-q" (a sequence), "x" (one character)
 * or "none" -> the bytes to match; -1 with a message when malformed. */
static int parse_detach_keys(const char *spec, unsigned char *keys, size_t *n) {
  *n = 0;
  if (strcmp(spec, "none") == 0 || !*spec)
    return 0;
  autofree char *copy = strdup(spec);
  if (!copy)
    return -1;
  char *save = NULL;
  for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
    unsigned char k;
    if (strncasecmp(tok, "ctrl-", 5) == 0 && strlen(tok) == 6) {
      int ch = tok[5];
      if (ch >= 'a' && ch <= 'z')
        ch -= 'a' - 'A';
      if (ch == '?')
        k = 0x7f;
      else if (ch >= '@' && ch <= '_')
        k = (unsigned char)(ch - '@');
      else
        return -1;
    } else if (strlen(tok) == 1 && tok[0] > ' ' && tok[0] < 0x7f) {
      k = (unsigned char)tok[0];
    } else {
      return -1;
    }
    if (*n == DETACH_KEYS_MAX)
      return -1;
    keys[(*n)++] = k;
  }
  return *n ? 0 : -1;
}

/* The attach input thread: local stdin to the exec's stdin, watching for the
 * detach keys (held back while they could still be the sequence, so the
 * remote program never sees them). */
typedef struct attach_input {
  sbx_stdin *w;
  unsigned char keys[DETACH_KEYS_MAX];
  size_t nkeys; /* 0: no detach key */
  bool close_on_eof; /* the exec's owner: a local EOF is the program's EOF */
  volatile bool running;
} attach_input;

static void *attach_input_main(void *arg) {
  attach_input *in = arg;
  unsigned char buf[16384], out[16384 + DETACH_KEYS_MAX];
  size_t matched = 0;
  for (;;) {
    ssize_t n = read(STDIN_FILENO, buf, sizeof buf);
    if (n < 0 && errno == EINTR)
      continue;
    if (n == 0 && in->close_on_eof)
      sbx_stdin_close(in->w, NULL); /* a piped stdin ended: so does the program's */
    if (n <= 0)
      break;
    size_t o = 0;
    bool hit = false;
    for (ssize_t i = 0; i < n && !hit; i++) {
      unsigned char b = buf[i];
      if (in->nkeys && b == in->keys[matched]) {
        hit = ++matched == in->nkeys;
        continue;
      }
      /* a broken sequence: the keys held back were ordinary input */
      memcpy(out + o, in->keys, matched);
      o += matched;
      matched = 0;
      if (in->nkeys && b == in->keys[0]) {
        hit = ++matched == in->nkeys;
        continue;
      }
      out[o++] = b;
    }
    if (o && sbx_stdin_write(in->w, out, o, NULL) < 0)
      break;
    if (hit) {
      detach_now = 1;
      break;
    }
  }
  in->running = false;
  return NULL;
}

/* Replay the tail of an exec's terminal output (from a line start, at most
 * 4 KiB back) before attaching; returns the offset to attach from.  (The
 * exec record's byte counts may lag while it runs: ask the output route
 * where the stream ends, with an offset past any real end.) */
static uint64_t replay_tail(const char *exec_id) {
  unsigned char *data = NULL;
  size_t len = 0;
  uint64_t end = 0;
  if (sbx_exec_output(client, exec_id, "stdout", (uint64_t)1 << 53, &data, &len, NULL, &end, NULL,
                      NULL) < 0)
    return 0;
  free(data);
  data = NULL;
  uint64_t start = end > 4096 ? end - 4096 : 0, first = start, next = end;
  if (end == 0 ||
      sbx_exec_output(client, exec_id, "stdout", start, &data, &len, &first, &next, NULL, NULL) < 0)
    return end;
  size_t skip = 0;
  if (first > 0) {
    unsigned char *nl = memchr(data, '\n', len);
    skip = nl ? (size_t)(nl - data) + 1 : len;
  }
  write_all(STDOUT_FILENO, data + skip, len - skip);
  free(data);
  return next;
}

/* After a kill: wait at most ms for the exec's end, so that exiting at once
 * cannot reset the connection before the server has read the kill. */
static void await_end(sbx_stream *s, long ms) {
  struct timespec t0, now;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (;;) {
    sbx_event ev;
    sbx_error e;
    int rc = sbx_stream_recv(s, &ev, 100, &e);
    if (rc == 0 || (rc > 0 && (ev.type == SBX_EV_EXITED || ev.type == SBX_EV_FAILED)) ||
        (rc < 0 && e.kind != SBX_ERR_TIMEOUT))
      return;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if ((now.tv_sec - t0.tv_sec) * 1000 + (now.tv_nsec - t0.tv_nsec) / 1000000 > ms)
      return;
  }
}

/* An interactive session: start cmd/args (NULL: the sandbox's shell) in ref
 * on a pseudo-terminal, detached on the server so that the detach keys can
 * leave it running; or join the running exec exec_id.  Returns the exit
 * status (the exec's; 0 when detached; 128+N on local signal N; 1 when the
 * connection was lost). */
static int attach_session(const char *ref, const char *cmd, const char *const *args,
                          const char *exec_id, sbx_exec_opts *o, const char *detach_keys) {
  static attach_input in;
  if (parse_detach_keys(detach_keys ? detach_keys : "ctrl-]", in.keys, &in.nkeys) < 0)
    return usage_error("attach ", "bad --detach-keys %s (want e.g. ctrl-], ctrl-p,ctrl-q, none)",
                       detach_keys);
  sbx_error e;
  sbx_stream *s;
  bool owner = exec_id == NULL, tty = true;
  if (owner) {
    autofree char *shell = NULL;
    if (!cmd) {
      sbx_sandbox *sb = sbx_sandbox_get(client, ref, &e);
      if (!sb)
        return api_error(ref, &e);
      const char *sh = sbx_sandbox_shell(sb);
      shell = strdup(sh && *sh ? sh : "/bin/sh");
      sbx_sandbox_free(sb);
      if (!shell)
        return api_error(NULL, &(sbx_error){.kind_name = "internal", .message = "out of memory"});
      cmd = shell;
      args = NULL;
    }
    o->tty = 1;
    if (!term_size(&o->rows, &o->cols))
      o->rows = o->cols = 0;
    o->stdin_pipe = 1;
    o->detach = 1; /* the server keeps it when we detach (or lose the connection) */
    s = sbx_exec_stream(client, ref, cmd, args, o, &e);
    if (!s)
      return api_error(NULL, &e);
  } else {
    sbx_exec_info *x = sbx_exec_get(client, exec_id, &e);
    if (!x)
      return api_error(exec_id, &e);
    tty = sbx_exec_info_tty(x);
    sbx_exec_info_free(x);
    uint64_t off = replay_tail(exec_id), eoff = 0;
    /* stderr (no tty) is not replayed: join it live */
    unsigned char *d = NULL;
    size_t dl;
    if (sbx_exec_output(client, exec_id, "stderr", (uint64_t)1 << 53, &d, &dl, NULL, &eoff, NULL,
                        NULL) == 0)
      free(d);
    s = sbx_attach_stdin(client, exec_id, off, eoff, &e);
    if (!s)
      return api_error(exec_id, &e);
    if (tty)
      winch = 1; /* the exec may have another size: tell it ours (and redraw) */
  }

  struct sigaction sa = {0};
  sigemptyset(&sa.sa_mask);
  sa.sa_handler = on_sigint;
  sigaction(SIGINT, &sa, NULL);
  sa.sa_handler = on_sigwinch;
  sigaction(SIGWINCH, &sa, NULL);
  guard_signals();
  if (tty && isatty(STDIN_FILENO))
    raw_tty();

  pthread_t th;
  in.w = sbx_stream_take_stdin(s, &e);
  in.close_on_eof = owner; /* a viewer comes and goes without touching the exec */
  in.running = true;
  if (!in.w || pthread_create(&th, NULL, attach_input_main, &in) != 0) {
    in.running = false;
    restore_tty();
    sbx_stream_close(s);
    return api_error("stdin", &e);
  }
  pump_end end;
  int status = pump_events(s, PUMP_ATTACH, &end);
  const char *id = sbx_stream_exec_id(s);
  char idbuf[40] = "";
  if (id)
    snprintf(idbuf, sizeof idbuf, "%s", id);

  bool joined = false;
  switch (end) {
  case PUMP_DONE:
    break;
  case PUMP_DETACHED:
    pthread_join(th, NULL); /* it typed the detach keys and is on its way out */
    joined = true;
    sbx_stream_flush(s, 2000, NULL); /* the keys typed before the detach keys */
    restore_tty();
    if (idbuf[0])
      fprintf(stderr, "\r\nsbx: detached; %s keeps running (re-attach: sbx attach --exec %s)\n",
              idbuf, idbuf);
    else
      fprintf(stderr, "\r\nsbx: detached\n");
    break;
  case PUMP_SIGNALED:
    /* the session's owner going away ends the exec, as a non-detached
     * stream's close would; a viewer just leaves */
    if (owner && sbx_stream_kill(s, NULL) == 0)
      await_end(s, 2000);
    restore_tty();
    break;
  case PUMP_LOST:
    if (owner && idbuf[0])
      fprintf(stderr, "sbx: %s may still be running (re-attach: sbx attach --exec %s)\n", idbuf,
              idbuf);
    break;
  }
  restore_tty();
  fflush(stdout);
  /* a stdin thread still blocked in read() owns a pointer into the stream:
   * leave both to the process exit */
  if (joined || !in.running) {
    if (!joined)
      pthread_join(th, NULL);
    sbx_stream_close(s);
  }
  return status;
}

static int cmd_exec(int argc, char **argv, bool shell) {
  static const char help_exec[] =
      "Usage: sbx exec REF [OPTIONS] [--] CMD [ARGS...]\n"
      "Run a program in a sandbox, streaming its output live.  Exits with its exit\n"
      "code (128+N if killed by signal N, 127 not found, 126 cannot run, 124 timeout).\n";
  static const char help_shell[] =
      "Usage: sbx shell REF [OPTIONS] [--] 'COMMAND'\n"
      "Run COMMAND with the sandbox's shell (sh -c), streaming its output live.\n";
  static const char help_opts[] =
      "  -w, --workdir DIR     working directory\n"
      "  -e, --env K=V         environment variable (repeatable)\n"
      "  -u, --user USER       user name or uid\n"
      "  -t, --timeout T       kill after T (10, 10s, 500ms, 2m)\n"
      "  -i, --interactive     forward stdin (EOF when it ends)\n"
      "  -T, --tty             run under a pseudo-terminal\n"
      "Ctrl-C sends SIGINT to the program, a second Ctrl-C kills it.\n";
  static const char help_shell_attach[] =
      "Without COMMAND, `sbx shell REF` opens the sandbox's shell on a terminal, as\n"
      "`sbx attach REF` does (see sbx attach --help):\n"
      "  -d, --detach-keys KEYS  keys that detach (default ctrl-])\n";
  static const struct option lo[] = {
      {"workdir", required_argument, NULL, 'w'}, {"env", required_argument, NULL, 'e'},
      {"user", required_argument, NULL, 'u'},    {"timeout", required_argument, NULL, 't'},
      {"interactive", no_argument, NULL, 'i'},   {"tty", no_argument, NULL, 'T'},
      {"detach-keys", required_argument, NULL, 'd'}, COMMON_LONGOPTS,
      {NULL, 0, NULL, 0}};
  const char *cmdname = shell ? "shell " : "exec ";
  const char *detach_keys = NULL;
  sbx_exec_opts o = {0};
  strlist env = {0};
  const char *ref = NULL;
  bool interactive = false;
  /* "+": stop at the program's own arguments; the first operand is REF */
  for (;;) {
    int c = getopt_long(argc, argv, shell ? "+w:e:u:t:iTd:" : "+w:e:u:t:iT", lo, NULL);
    if (c == -1) {
      if (!ref && optind < argc && strcmp(argv[optind - 1], "--") != 0) {
        ref = argv[optind++];
        continue;
      }
      break;
    }
    if (common_opt(c))
      continue;
    switch (c) {
    case 'w': o.cwd = optarg; break;
    case 'e':
      if (!strchr(optarg, '=') || optarg[0] == '=')
        return usage_error(cmdname, "--env wants K=V, got %s", optarg);
      strlist_add(&env, optarg);
      break;
    case 'u': o.user = optarg; break;
    case 't':
      if ((o.timeout_ms = parse_duration_ms(optarg)) < 0)
        return usage_error(cmdname, "bad --timeout %s", optarg);
      if (o.timeout_ms == 0 && strcmp(optarg, "0") != 0)
        o.timeout_ms = 1;
      break;
    case 'i': interactive = true; break;
    case 'T': o.tty = 1; break;
    case 'd':
      if (!shell)
        return bad_option(cmdname, argv);
      detach_keys = optarg;
      break;
    case OPT_HELP:
      printf("%s%s%s%s", shell ? help_shell : help_exec, help_opts,
             shell ? help_shell_attach : "", common_help);
      return 0;
    default: return bad_option(cmdname, argv);
    }
  }
  if (!ref)
    return usage_error(cmdname, "missing REF");
  if (shell && optind >= argc && !g.json) {
    /* no COMMAND: an interactive shell, as `sbx attach REF` */
    o.env = env.v;
    if (connect_client())
      return EXIT_API;
    int status = attach_session(ref, NULL, NULL, NULL, &o, detach_keys);
    free(env.v);
    return status;
  }
  if (optind >= argc)
    return usage_error(cmdname, shell ? "missing COMMAND" : "missing CMD");
  if (detach_keys)
    return usage_error(cmdname, "--detach-keys is for `sbx shell REF` without COMMAND");
  if (shell && argc - optind > 1)
    return usage_error(cmdname, "COMMAND is one argument; quote it");
  o.env = env.v;
  const char *cmd = argv[optind];
  const char *const *args = (const char *const *)argv + optind + 1;
  const char *command = shell ? cmd : NULL;
  if (o.tty)
    term_size(&o.rows, &o.cols);
  if (connect_client())
    return EXIT_API;
  if (g.json)
    return exec_rest(ref, cmd, args, command, &o, interactive);

  o.stdin_pipe = interactive;
  sbx_error e;
  sbx_stream *s = shell ? sbx_shell_stream(client, ref, command, &o, &e)
                        : sbx_exec_stream(client, ref, cmd, args, &o, &e);
  if (!s) {
    /* a server without streaming answers the upgrade with a plain HTTP error */
    if (e.kind == SBX_ERR_TRANSPORT && e.http_status >= 400)
      return exec_rest(ref, cmd, args, command, &o, interactive);
    return api_error(NULL, &e);
  }
  struct sigaction sa = {0};
  sa.sa_handler = on_sigint;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
  if (o.tty) {
    sa.sa_handler = on_sigwinch;
    sigaction(SIGWINCH, &sa, NULL);
    if (interactive && isatty(STDIN_FILENO))
      raw_tty();
  }
  static stdin_pump pump;
  pthread_t th;
  bool have_thread = false;
  if (interactive) {
    pump.w = sbx_stream_take_stdin(s, &e);
    pump.running = true;
    if (!pump.w || pthread_create(&th, NULL, stdin_main, &pump) != 0) {
      sbx_stream_close(s);
      return api_error("stdin", &e);
    }
    have_thread = true;
  }
  pump_end end;
  int status = pump_events(s, PUMP_EXEC, &end);
  free(env.v);
  /* a stdin thread still blocked in read() owns a pointer into the stream:
   * leave both to the process exit */
  if (!have_thread || !pump.running)
    sbx_stream_close(s);
  if (have_thread && !pump.running)
    pthread_join(th, NULL);
  return status;
}

static int cmd_attach(int argc, char **argv) {
  static const char help[] =
      "Usage: sbx attach REF [OPTIONS] [-- CMD [ARGS...]]\n"
      "       sbx attach --exec EXEC_ID [OPTIONS]\n"
      "Open an interactive terminal into a sandbox: CMD (default: the sandbox's\n"
      "shell) runs on a pseudo-terminal of the local window's size, the local terminal\n"
      "is in raw mode (every key, Ctrl-C too, goes to the program) and window size\n"
      "changes follow.  Exits with the program's exit code when it ends.\n"
      "The detach keys (default Ctrl-]) leave the program running and print its exec\n"
      "id; `sbx attach --exec EXEC_ID` joins it again (so does a lost connection).\n"
      "SIGTERM/SIGHUP to sbx kill a program it started (a re-attached viewer only\n"
      "leaves).\n"
      "  -d, --detach-keys KEYS  ctrl-X, a comma-separated sequence (ctrl-p,ctrl-q),\n"
      "                          or none (default ctrl-])\n"
      "  -x, --exec EXEC_ID      join a running exec instead of starting one\n"
      "  -w, --workdir DIR       working directory\n"
      "  -e, --env K=V           environment variable (repeatable)\n"
      "  -u, --user USER         user name or uid\n";
  static const struct option lo[] = {
      {"detach-keys", required_argument, NULL, 'd'}, {"exec", required_argument, NULL, 'x'},
      {"workdir", required_argument, NULL, 'w'},     {"env", required_argument, NULL, 'e'},
      {"user", required_argument, NULL, 'u'},        COMMON_LONGOPTS,
      {NULL, 0, NULL, 0}};
  sbx_exec_opts o = {0};
  strlist env = {0};
  const char *ref = NULL, *exec_id = NULL, *detach_keys = NULL;
  for (;;) {
    int c = getopt_long(argc, argv, "+d:x:w:e:u:", lo, NULL);
    if (c == -1) {
      if (!ref && optind < argc && strcmp(argv[optind - 1], "--") != 0) {
        ref = argv[optind++];
        continue;
      }
      break;
    }
    if (common_opt(c))
      continue;
    switch (c) {
    case 'd': detach_keys = optarg; break;
    case 'x': exec_id = optarg; break;
    case 'w': o.cwd = optarg; break;
    case 'e':
      if (!strchr(optarg, '=') || optarg[0] == '=')
        return usage_error("attach ", "--env wants K=V, got %s", optarg);
      strlist_add(&env, optarg);
      break;
    case 'u': o.user = optarg; break;
    case OPT_HELP: printf("%s%s", help, common_help); return 0;
    default: return bad_option("attach ", argv);
    }
  }
  if (exec_id && (ref || optind < argc || o.cwd || o.user || env.n))
    return usage_error("attach ", "--exec joins a running exec: no REF, CMD, -w, -e or -u");
  if (!exec_id && !ref)
    return usage_error("attach ", "missing REF (or --exec EXEC_ID)");
  o.env = env.v;
  if (connect_client())
    return EXIT_API;
  const char *cmd = optind < argc ? argv[optind] : NULL;
  const char *const *args = cmd ? (const char *const *)argv + optind + 1 : NULL;
  int status = attach_session(ref, cmd, args, exec_id, &o, detach_keys);
  free(env.v);
  return status;
}

/* ---- execs / logs / kill / wait ------------------------------------------------------------ */

static int cmd_execs(int argc, char **argv) {
  static const char help[] =
      "Usage: sbx execs REF [--state STATE]\nList a sandbox's execs, newest first.\n";
  static const struct option lo[] = {
      {"state", required_argument, NULL, 's'}, COMMON_LONGOPTS, {NULL, 0, NULL, 0}};
  const char *state = NULL;
  int c;
  while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
    if (common_opt(c))
      continue;
    if (c == 's')
      state = optarg;
    else if (c == OPT_HELP) {
      printf("%s%s", help, common_help);
      return 0;
    } else
      return bad_option("execs ", argv);
  }
  if (optind + 1 != argc)
    return usage_error("execs ", "want exactly one REF");
  if (connect_client())
    return EXIT_API;
  autojson json_t *all = json_array();
  autofree char *cursor = NULL;
  if (!g.json)
    printf("%-19s  %-9s  %-5s  %-24s  %s\n", "EXEC_ID", "STATE", "EXIT", "STARTED", "CMD");
  for (;;) {
    sbx_error e;
    sbx_exec_list *l = sbx_exec_list_get(client, argv[optind], state, 500, cursor, &e);
    if (!l)
      return api_error("execs", &e);
    for (size_t i = 0; i < sbx_exec_list_count(l); i++) {
      const sbx_exec_info *x = sbx_exec_list_at(l, i);
      if (g.json) {
        json_array_append_new(all, json_loads(sbx_exec_info_json(x), 0, NULL));
        continue;
      }
      char code[16] = "-";
      if (!sbx_exec_info_running(x) && sbx_exec_info_signal(x) > 0)
        snprintf(code, sizeof code, "sig%d", sbx_exec_info_signal(x));
      else if (!sbx_exec_info_running(x) && sbx_exec_info_exit_code(x) >= 0)
        snprintf(code, sizeof code, "%d", sbx_exec_info_exit_code(x));
      printf("%-19s  %-9s  %-5s  %-24s  %s\n", sbx_exec_info_id(x), sbx_exec_info_state(x), code,
             sbx_exec_info_started_at(x) ? sbx_exec_info_started_at(x) : "-", sbx_exec_info_cmd(x));
    }
    free(cursor);
    cursor = sbx_exec_list_next_cursor(l) ? strdup(sbx_exec_list_next_cursor(l)) : NULL;
    sbx_exec_list_free(l);
    if (!cursor)
      break;
  }
  if (g.json) {
    json_dumpf(all, stdout, JSON_INDENT(2));
    putchar('\n');
  }
  return 0;
}

static int cmd_logs(int argc, char **argv) {
  static const char help[] =
      "Usage: sbx logs EXEC [--follow] [--offset N] [--stderr-offset M]\n"
      "Print an exec's retained stdout and stderr; --follow streams until it ends.\n";
  static const struct option lo[] = {{"follow", no_argument, NULL, 'f'},
                                     {"offset", required_argument, NULL, 'o'},
                                     {"stderr-offset", required_argument, NULL, 'E'},
                                     COMMON_LONGOPTS,
                                     {NULL, 0, NULL, 0}};
  bool follow = false;
  long off = 0, eoff = 0;
  int c;
  while ((c = getopt_long(argc, argv, "f", lo, NULL)) != -1) {
    if (common_opt(c))
      continue;
    switch (c) {
    case 'f': follow = true; break;
    case 'o':
      if (!parse_long(optarg, &off) || off < 0)
        return usage_error("logs ", "bad --offset %s", optarg);
      break;
    case 'E':
      if (!parse_long(optarg, &eoff) || eoff < 0)
        return usage_error("logs ", "bad --stderr-offset %s", optarg);
      break;
    case OPT_HELP: printf("%s%s", help, common_help); return 0;
    default: return bad_option("logs ", argv);
    }
  }
  if (optind + 1 != argc)
    return usage_error("logs ", "want exactly one EXEC");
  const char *id = argv[optind];
  if (connect_client())
    return EXIT_API;
  sbx_error e;
  if (follow && !g.json) {
    sbx_stream *s = sbx_attach(client, id, (uint64_t)off, (uint64_t)eoff, &e);
    if (!s)
      return api_error(id, &e);
    pump_end end;
    int status = pump_events(s, PUMP_VIEW, &end);
    sbx_stream_close(s);
    return status == EXIT_API ? EXIT_API : 0;
  }
  autojson json_t *j = json_pack("{s:s}", "exec_id", id);
  const char *streams[2] = {"stdout", "stderr"};
  for (int i = 0; i < 2; i++) {
    unsigned char *data;
    size_t len;
    uint64_t next;
    int complete;
    if (sbx_exec_output(client, id, streams[i], (uint64_t)(i ? eoff : off), &data, &len, NULL,
                        &next, &complete, &e) < 0)
      return api_error(id, &e);
    if (g.json) {
      /* invalid UTF-8 cannot be a JSON string: say so instead of mangling it */
      json_t *txt = json_stringn((const char *)data, len);
      json_object_set_new(j, streams[i], txt ? txt : json_null());
      if (!txt) {
        char bk[32];
        snprintf(bk, sizeof bk, "%s_binary", streams[i]);
        json_object_set_new(j, bk, json_true());
      }
      char key[32];
      snprintf(key, sizeof key, "%s_next_offset", streams[i]);
      json_object_set_new(j, key, json_integer((json_int_t)next));
    } else {
      write_all(i ? STDERR_FILENO : STDOUT_FILENO, data, len);
    }
    free(data);
  }
  if (g.json) {
    json_dumpf(j, stdout, JSON_INDENT(2));
    putchar('\n');
  }
  return 0;
}

static int cmd_kill(int argc, char **argv) {
  static const char help[] =
      "Usage: sbx kill EXEC... [--signal SIG]\n"
      "Kill an exec's whole process group (SIGKILL), or send it SIG (name or number).\n";
  static const struct option lo[] = {
      {"signal", required_argument, NULL, 's'}, COMMON_LONGOPTS, {NULL, 0, NULL, 0}};
  const char *sig = NULL;
  int c;
  while ((c = getopt_long(argc, argv, "s:", lo, NULL)) != -1) {
    if (common_opt(c))
      continue;
    if (c == 's')
      sig = optarg;
    else if (c == OPT_HELP) {
      printf("%s%s", help, common_help);
      return 0;
    } else
      return bad_option("kill ", argv);
  }
  if (optind >= argc)
    return usage_error("kill ", "missing EXEC");
  if (connect_client())
    return EXIT_API;
  int status = 0;
  for (int i = optind; i < argc; i++) {
    sbx_error e;
    int rc = sig ? sbx_exec_signal(client, argv[i], sig, &e) : sbx_exec_kill(client, argv[i], &e);
    if (rc < 0)
      status = api_error(argv[i], &e);
    else if (g.json)
      printf("{\"exec_id\": \"%s\", \"signal\": \"%s\"}\n", argv[i], sig ? sig : "SIGKILL");
  }
  return status;
}

static int cmd_wait(int argc, char **argv) {
  static const char help[] =
      "Usage: sbx wait EXEC [--timeout T]\n"
      "Wait for an exec to end; exit with its exit code (128+N killed by signal N,\n"
      "127/126 never started, 124 timed out or --timeout passed).\n";
  static const struct option lo[] = {
      {"timeout", required_argument, NULL, 't'}, COMMON_LONGOPTS, {NULL, 0, NULL, 0}};
  long timeout = -1;
  int c;
  while ((c = getopt_long(argc, argv, "t:", lo, NULL)) != -1) {
    if (common_opt(c))
      continue;
    if (c == 't') {
      if ((timeout = parse_duration_ms(optarg)) < 0)
        return usage_error("wait ", "bad --timeout %s", optarg);
    } else if (c == OPT_HELP) {
      printf("%s%s", help, common_help);
      return 0;
    } else
      return bad_option("wait ", argv);
  }
  if (optind + 1 != argc)
    return usage_error("wait ", "want exactly one EXEC");
  if (connect_client())
    return EXIT_API;
  long left = timeout;
  sbx_exec_info *x = NULL;
  for (;;) {
    long chunk = left < 0 || left > 30000 ? 30000 : left;
    sbx_error e;
    x = sbx_exec_wait(client, argv[optind], chunk > 0 ? chunk : 1, &e);
    if (!x)
      return api_error(argv[optind], &e);
    if (!sbx_exec_info_running(x))
      break;
    if (left >= 0 && (left -= chunk) <= 0)
      break;
    sbx_exec_info_free(x);
  }
  if (g.json)
    print_json_text(sbx_exec_info_json(x));
  int status;
  const char *st = sbx_exec_info_state(x);
  sbx_failure f;
  if (sbx_exec_info_running(x))
    status = EXIT_TIMEOUT;
  else if (strcmp(st, "timed_out") == 0)
    status = EXIT_TIMEOUT;
  else if (sbx_exec_info_failure(x, &f))
    status = failure_exit(&f);
  else
    status = exit_status(sbx_exec_info_exit_code(x), sbx_exec_info_signal(x));
  sbx_exec_info_free(x);
  return status;
}

/* ---- main ---------------------------------------------------------------------------- */

static const char main_help[] =
    "Usage: sbx [--url URL] [--key KEY] [--json] COMMAND [ARGS...]\n"
    "The command-line client of sbxd.\n\n"
    "Sandboxes:\n"
    "  create [--name N] [--image I] [--driver ns|vm] [--memory MIB] [--cpus N]\n"
    "         [--env K=V]... [--label K=V]...\n"
    "  ls                       list sandboxes\n"
    "  inspect REF...           one sandbox as JSON\n"
    "  console REF [--tail N]   a sandbox's log (a VM's serial console)\n"
    "  stop|start|rm REF...     lifecycle\n"
    "Execs:\n"
    "  exec REF [-w CWD] [-e K=V] [-u USER] [-t TIMEOUT] [-i] [-T] -- CMD ARGS...\n"
    "  shell REF 'command'      run with the sandbox's shell\n"
    "  attach REF [-- CMD ARGS...]  interactive terminal (default: the sandbox's shell;\n"
    "                           Ctrl-] detaches); `shell REF` without a command is the same\n"
    "  attach --exec EXEC_ID    join a running exec again\n"
    "  execs REF                a sandbox's execs\n"
    "  logs EXEC [--follow] [--offset N]\n"
    "  kill EXEC [--signal S]\n"
    "  wait EXEC\n\n"
    "Every command takes --help, --json, --url and --key.\n"
    "Exit codes: exec/shell/wait exit with the program's code, 128+N when killed by\n"
    "signal N, 127 not found, 126 cannot run, 124 timeout; 1 API error; 2 usage.\n";

int main(int argc, char **argv) {
  g.url = getenv("SBX_URL");
  g.key = getenv("SBX_KEY");
  if (!g.url || !*g.url)
    g.url = "http://127.0.0.1:7070";
  signal(SIGPIPE, SIG_IGN);
  opterr = 0; /* usage_error() says what was wrong, in one format */
  static const struct option lo[] = {COMMON_LONGOPTS, {NULL, 0, NULL, 0}};
  int c;
  while ((c = getopt_long(argc, argv, "+h", lo, NULL)) != -1) {
    if (common_opt(c))
      continue;
    if (c == OPT_HELP || c == 'h') {
      fputs(main_help, stdout);
      return 0;
    }
    return bad_option(NULL, argv);
  }
  if (optind >= argc)
    return usage_error(NULL, "missing COMMAND");
  const char *cmd = argv[optind];
  int sub_argc = argc - optind;
  char **sub_argv = argv + optind;
  optind = 0; /* full getopt re-initialisation for the command's own options */
  int rc;
  if (strcmp(cmd, "create") == 0)
    rc = cmd_create(sub_argc, sub_argv);
  else if (strcmp(cmd, "ls") == 0 || strcmp(cmd, "list") == 0)
    rc = cmd_ls(sub_argc, sub_argv);
  else if (strcmp(cmd, "inspect") == 0)
    rc = cmd_inspect(sub_argc, sub_argv);
  else if (strcmp(cmd, "console") == 0)
    rc = cmd_console(sub_argc, sub_argv);
  else if (strcmp(cmd, "stop") == 0 || strcmp(cmd, "start") == 0 || strcmp(cmd, "rm") == 0)
    rc = cmd_lifecycle(sub_argc, sub_argv, cmd);
  else if (strcmp(cmd, "exec") == 0)
    rc = cmd_exec(sub_argc, sub_argv, false);
  else if (strcmp(cmd, "shell") == 0)
    rc = cmd_exec(sub_argc, sub_argv, true);
  else if (strcmp(cmd, "attach") == 0)
    rc = cmd_attach(sub_argc, sub_argv);
  else if (strcmp(cmd, "execs") == 0)
    rc = cmd_execs(sub_argc, sub_argv);
  else if (strcmp(cmd, "logs") == 0)
    rc = cmd_logs(sub_argc, sub_argv);
  else if (strcmp(cmd, "kill") == 0)
    rc = cmd_kill(sub_argc, sub_argv);
  else if (strcmp(cmd, "wait") == 0)
    rc = cmd_wait(sub_argc, sub_argv);
  else if (strcmp(cmd, "help") == 0) {
    fputs(main_help, stdout);
    rc = 0;
  } else
    rc = usage_error(NULL, "unknown command %s", cmd);
  fflush(stdout);
  sbx_client_free(client);
  return rc;
}
