/* sbxd - the sbx gateway server. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <libgen.h>
#include <limits.h>
#include <microhttpd.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/util.h"
#include "../routes/routes.h"
#include "../store/store.h"
#include "auth.h"
#include "http.h"
#include "listener.h"
#include "../vmm/vm.h"
#include "loop.h"
#include "server.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: sbxd [options]\n"
          "  --listen HOST:PORT   address to serve REST and WebSocket on (default 127.0.0.1:7070)\n"
          "  --data-dir DIR       database, sandbox layers and sockets (default ./var)\n"
          "  --images-dir DIR     rootfs folders usable as \"image\" (default DATA-DIR/images)\n"
          "  --agent PATH         the static sbx-agent binary (default: next to sbxd)\n"
          "  --max-body BYTES     largest accepted request body (default 1048576)\n"
          "  --http-threads N     libmicrohttpd worker threads (default 4)\n"
          "  --shutdown-grace-ms N  how long in-flight requests may finish at SIGTERM (default 30000)\n"
          "  --retain-bytes N     output kept per stream of each exec (default 4194304, min 2097152)\n"
          "  --retain-after-exit-s N  how long an ended exec's output stays (default 300)\n"
          "  --ws-ping-s N        ping idle WebSockets after N s, drop them after 2N (default 30)\n"
          "  --allow-origin URL   a browser Origin allowed to open WebSockets (repeatable; \"*\" = any)\n"
          "  --rate N             requests per second per API key, burst 2N (default 50; 0 = off)\n"
          "  --max-sandboxes N    sandboxes per server (default 1000)\n"
          "  --max-execs N        running execs per sandbox (default 1024)\n"
          "  --max-conns N        REST connections at once (default 4096)\n"
          "  --max-header-bytes N request line + headers, larger is a 413 (default 16384, 1024..65536)\n"
          "  --handshake-timeout-s N  the whole request head must arrive within N s (default 10)\n"
          "  --idle-timeout-s N   close REST connections idle this long (default 60)\n"
          "  --max-conns-per-ip N REST connections at once per client address (default 512)\n"
          "  --insecure           serve every client without API keys (else: loopback only)\n"
          "  --default-driver D   ns (namespaces, default) or vm (QEMU microVMs) without \"driver\"\n"
          "  --vm-accel A         the vm driver's accelerator: auto (default: KVM if it runs a\n"
          "                       test guest, else TCG), kvm or tcg\n"
          "  --log-level LEVEL    error, warn, info (default) or debug\n"
          "\n"
          "       sbxd keys create [--scope read|exec|admin] [--label K=V]... [--name N] [--data-dir DIR]\n"
          "       sbxd keys list [--data-dir DIR]\n"
          "       sbxd keys revoke KEY_ID [--data-dir DIR]\n"
          "  --help\n");
}

static int parse_listen(const char *s, sbx_config *c) {
  const char *colon = strrchr(s, ':');
  if (!colon)
    return -1;
  char *end;
  long port = strtol(colon + 1, &end, 10);
  if (*end || port < 0 || port > 65535 || colon == s)
    return -1;
  size_t hl = (size_t)(colon - s);
  if (s[0] == '[' && hl >= 2 && s[hl - 1] == ']') /* [::1]:7070 */
    snprintf(c->host, sizeof c->host, "%.*s", (int)(hl - 2), s + 1);
  else
    snprintf(c->host, sizeof c->host, "%.*s", (int)hl, s);
  c->port = (int)port;
  return 0;
}

static int absolute_dir(const char *in, char *out, size_t outsz, bool create) {
  /* out is at least 1024 bytes; longer paths are refused below */
  if (create && sbx_mkdir_p(in, 0755) < 0)
    return -1;
  char buf[PATH_MAX];
  if (!realpath(in, buf))
    return -1;
  if (strlen(buf) >= outsz)
    return errno = ENAMETOOLONG, -1;
  memcpy(out, buf, strlen(buf) + 1);
  return 0;
}

static int parse_args(int argc, char **argv, sbx_config *c) {
  enum { O_LISTEN = 1, O_DATA, O_IMAGES, O_AGENT, O_MAXBODY, O_THREADS, O_GRACE, O_LOG, O_HELP,
         O_RETAIN, O_RETAIN_AFTER, O_PING, O_ORIGIN, O_RATE, O_MAXSB, O_MAXEX, O_INSECURE,
         O_MAXCONN, O_MAXCONNIP, O_MAXHDR, O_HSTIMEOUT, O_IDLE, O_DRIVER, O_VMACCEL };
  static const struct option opts[] = {
      {"listen", required_argument, 0, O_LISTEN},   {"data-dir", required_argument, 0, O_DATA},
      {"images-dir", required_argument, 0, O_IMAGES}, {"agent", required_argument, 0, O_AGENT},
      {"max-body", required_argument, 0, O_MAXBODY}, {"http-threads", required_argument, 0, O_THREADS},
      {"shutdown-grace-ms", required_argument, 0, O_GRACE}, {"log-level", required_argument, 0, O_LOG},
      {"retain-bytes", required_argument, 0, O_RETAIN},
      {"retain-after-exit-s", required_argument, 0, O_RETAIN_AFTER},
      {"ws-ping-s", required_argument, 0, O_PING}, {"allow-origin", required_argument, 0, O_ORIGIN},
      {"rate", required_argument, 0, O_RATE}, {"max-sandboxes", required_argument, 0, O_MAXSB},
      {"max-execs", required_argument, 0, O_MAXEX}, {"insecure", no_argument, 0, O_INSECURE},
      {"max-conns", required_argument, 0, O_MAXCONN},
      {"max-conns-per-ip", required_argument, 0, O_MAXCONNIP},
      {"max-header-bytes", required_argument, 0, O_MAXHDR},
      {"handshake-timeout-s", required_argument, 0, O_HSTIMEOUT},
      {"idle-timeout-s", required_argument, 0, O_IDLE},
      {"default-driver", required_argument, 0, O_DRIVER},
      {"vm-accel", required_argument, 0, O_VMACCEL},
      {"help", no_argument, 0, O_HELP},              {0, 0, 0, 0}};
  const char *data = "./var", *images = NULL, *agent = NULL;
  snprintf(c->host, sizeof c->host, "127.0.0.1");
  c->port = 7070;
  c->max_body = 1 << 20;
  c->http_threads = 4;
  c->shutdown_grace_ms = 30000;
  c->retain_bytes = 4u << 20;
  c->retain_after_exit_ms = 300000;
  c->ws_ping_s = 30;
  c->rate_per_s = 50;
  c->max_sandboxes = 1000;
  c->max_execs = 1024;
  c->max_conns = 4096;
  c->max_conns_per_ip = 512;
  c->max_header_bytes = 16384;
  c->handshake_timeout_s = 10;
  c->idle_timeout_s = 60;
  snprintf(c->default_driver, sizeof c->default_driver, "ns");
  snprintf(c->vm_accel, sizeof c->vm_accel, "auto");
  int o;
  while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    char *end = NULL;
    switch (o) {
    case O_LISTEN:
      if (parse_listen(optarg, c) < 0)
        return fprintf(stderr, "sbxd: --listen wants HOST:PORT, got '%s'\n", optarg), -1;
      break;
    case O_DATA: data = optarg; break;
    case O_IMAGES: images = optarg; break;
    case O_AGENT: agent = optarg; break;
    case O_MAXBODY:
      c->max_body = strtoull(optarg, &end, 10);
      if (*end || c->max_body < 1024)
        return fprintf(stderr, "sbxd: --max-body wants a byte count >= 1024\n"), -1;
      break;
    case O_THREADS:
      c->http_threads = (int)strtol(optarg, &end, 10);
      if (*end || c->http_threads < 1 || c->http_threads > 256)
        return fprintf(stderr, "sbxd: --http-threads wants 1..256\n"), -1;
      break;
    case O_GRACE:
      c->shutdown_grace_ms = strtoll(optarg, &end, 10);
      if (*end || c->shutdown_grace_ms < 0)
        return fprintf(stderr, "sbxd: --shutdown-grace-ms wants a number of ms\n"), -1;
      break;
    case O_RETAIN:
      c->retain_bytes = strtoull(optarg, &end, 10);
      if (*end || c->retain_bytes < (2u << 20))
        return fprintf(stderr, "sbxd: --retain-bytes wants a byte count >= 2097152\n"), -1;
      break;
    case O_RETAIN_AFTER: {
      long long v = strtoll(optarg, &end, 10);
      if (*end || v < 0)
        return fprintf(stderr, "sbxd: --retain-after-exit-s wants seconds >= 0\n"), -1;
      c->retain_after_exit_ms = v * 1000;
      break;
    }
    case O_PING:
      c->ws_ping_s = (int)strtol(optarg, &end, 10);
      if (*end || c->ws_ping_s < 1 || c->ws_ping_s > 3600)
        return fprintf(stderr, "sbxd: --ws-ping-s wants 1..3600\n"), -1;
      break;
    case O_ORIGIN:
      if (c->n_allow_origin == (int)SBX_ARRAY_LEN(c->allow_origin) || strlen(optarg) >= 256)
        return fprintf(stderr, "sbxd: too many or too long --allow-origin\n"), -1;
      snprintf(c->allow_origin[c->n_allow_origin++], 256, "%s", optarg);
      break;
    case O_RATE:
      c->rate_per_s = strtod(optarg, &end);
      if (*end || c->rate_per_s < 0)
        return fprintf(stderr, "sbxd: --rate wants requests per second >= 0\n"), -1;
      break;
    case O_MAXSB:
    case O_MAXEX:
    case O_MAXCONN:
    case O_MAXCONNIP: {
      long v = strtol(optarg, &end, 10);
      if (*end || v < 1 || v > 1000000)
        return fprintf(stderr, "sbxd: --max-* options want 1..1000000\n"), -1;
      *(o == O_MAXSB ? &c->max_sandboxes : o == O_MAXEX ? &c->max_execs
                                          : o == O_MAXCONN ? &c->max_conns : &c->max_conns_per_ip) = (int)v;
      break;
    }
    case O_INSECURE: c->insecure = true; break;
    case O_MAXHDR:
    case O_HSTIMEOUT:
    case O_IDLE: {
      long v = strtol(optarg, &end, 10);
      long lo = o == O_MAXHDR ? 1024 : 1, hi = o == O_MAXHDR ? 65536 : 3600;
      if (*end || v < lo || v > hi)
        return fprintf(stderr, "sbxd: %s wants %ld..%ld\n", argv[optind - 1], lo, hi), -1;
      if (o == O_MAXHDR)
        c->max_header_bytes = (size_t)v;
      else
        *(o == O_HSTIMEOUT ? &c->handshake_timeout_s : &c->idle_timeout_s) = (int)v;
      break;
    }
    case O_LOG:
      if (sbx_log_parse_level(optarg, &sbx_log_threshold) < 0)
        return fprintf(stderr, "sbxd: unknown --log-level '%s'\n", optarg), -1;
      break;
    case O_DRIVER:
      if (!vmm_driver_by_name(optarg))
        return fprintf(stderr, "sbxd: --default-driver must be ns or vm\n"), -1;
      snprintf(c->default_driver, sizeof c->default_driver, "%s", optarg);
      break;
    case O_VMACCEL:
      if (strcmp(optarg, "auto") && strcmp(optarg, "kvm") && strcmp(optarg, "tcg"))
        return fprintf(stderr, "sbxd: --vm-accel must be auto, kvm or tcg\n"), -1;
      snprintf(c->vm_accel, sizeof c->vm_accel, "%s", optarg);
      break;
    case O_HELP: usage(stdout); exit(0);
    default: usage(stderr); return -1;
    }
  }
  if (optind < argc)
    return fprintf(stderr, "sbxd: unexpected argument '%s'\n", argv[optind]), -1;
  if (absolute_dir(data, c->data_dir, sizeof c->data_dir, true) < 0)
    return fprintf(stderr, "sbxd: data dir %s: %s\n", data, strerror(errno)), -1;
  chmod(c->data_dir, 0700); /* layers and agent sockets live here */
  char def_images[1100];
  snprintf(def_images, sizeof def_images, "%s/images", c->data_dir);
  if (absolute_dir(images ? images : def_images, c->images_dir, sizeof c->images_dir, !images) < 0)
    return fprintf(stderr, "sbxd: images dir %s: %s\n", images ? images : def_images,
                   strerror(errno)), -1;
  snprintf(c->db_path, sizeof c->db_path, "%s/sbx.db", c->data_dir);
  if (agent) {
    if (absolute_dir(agent, c->agent_path, sizeof c->agent_path, false) < 0)
      return fprintf(stderr, "sbxd: agent %s: %s\n", agent, strerror(errno)), -1;
  } else {
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n < 0)
      return fprintf(stderr, "sbxd: cannot find myself: %s\n", strerror(errno)), -1;
    self[n] = '\0';
    snprintf(c->agent_path, sizeof c->agent_path, "%s/sbx-agent", dirname(self));
  }
  if (access(c->agent_path, X_OK) < 0)
    return fprintf(stderr, "sbxd: agent %s: %s\n", c->agent_path, strerror(errno)), -1;
  return 0;
}

static int sig_pipe[2] = {-1, -1};

static void on_signal(int sig) {
  unsigned char b = (unsigned char)sig;
  ssize_t w = write(sig_pipe[1], &b, 1); /* async-signal-safe */
  (void)w;
}

/* libmicrohttpd closed a connection: the listener's caps count it out. */
static void conn_notify(void *cls, struct MHD_Connection *conn, void **socket_context,
                        enum MHD_ConnectionNotificationCode toe) {
  if (toe != MHD_CONNECTION_NOTIFY_CLOSED)
    return;
  const union MHD_ConnectionInfo *ci =
      MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
  if (ci && ci->client_addr)
    listener_conn_closed(ci->client_addr);
}

/* Wait until no REST request is in flight, or the deadline passes. */
static void wait_idle(int64_t ms) {
  int64_t deadline = sbx_mono_ms() + ms;
  while (atomic_load(&g_server->inflight) > 0 && sbx_mono_ms() < deadline)
    usleep(10 * 1000);
}

/* `sbxd keys ...`: --data-dir may come anywhere after "keys". */
static int keys_main(int argc, char **argv) {
  const char *data = "./var";
  char *rest[64];
  int n = 0;
  for (int i = 2; i < argc && n < 63; i++) {
    if (!strcmp(argv[i], "--data-dir") && i + 1 < argc)
      data = argv[++i];
    else
      rest[n++] = argv[i];
  }
  rest[n] = NULL;
  if (sbx_mkdir_p(data, 0700) < 0)
    return fprintf(stderr, "sbxd keys: %s: %s\n", data, strerror(errno)), 1;
  char db[4200];
  snprintf(db, sizeof db, "%s/sbx.db", data);
  return auth_keys_main(n, rest, db);
}

static bool is_loopback_host(const char *h) {
  return !strcmp(h, "localhost") || !strncmp(h, "127.", 4) || !strcmp(h, "::1");
}

int main(int argc, char **argv) {
  if (argc > 1 && !strcmp(argv[1], "keys"))
    return keys_main(argc, argv);
  static sbx_server server;
  g_server = &server;
  if (parse_args(argc, argv, &server.cfg) < 0)
    return 2;
  server.driver = vmm_driver_by_name(server.cfg.default_driver);
  sbx_err verr;
  if (vmm_vm_setup(server.cfg.vm_accel, server.cfg.agent_path, &verr) < 0) /* forks a probe: before any thread */
    return fprintf(stderr, "sbxd: %s\n", verr.msg), 2;
  server.started_ms = sbx_now_ms();
  /* SIGTERM/SIGINT are blocked here and so in every thread started below;
   * a handler backs that up (a thread a library started before this point,
   * e.g. a sanitizer's, may still take the signal) by waking the main loop
   * through a pipe.  Either way the main thread does the shutdown. */
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  pthread_sigmask(SIG_BLOCK, &sigs, NULL);
  signal(SIGPIPE, SIG_IGN);
  if (pipe2(sig_pipe, O_CLOEXEC | O_NONBLOCK) < 0)
    return 1;
  struct sigaction sa = {.sa_handler = on_signal};
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);

  sbx_err err;
  if (store_global_init(server.cfg.db_path, &err) < 0) {
    log_error("database %s: %s", server.cfg.db_path, err.msg);
    return 1;
  }
  if (!is_loopback_host(server.cfg.host) && !server.cfg.insecure && !auth_enabled()) {
    log_error("refusing to serve %s without API keys: create one with `sbxd keys create "
              "--data-dir %s`, or pass --insecure", server.cfg.host, server.cfg.data_dir);
    return 1;
  }
  if (loop_start(&server.loop, &err) < 0) {
    log_error("%s", err.msg);
    return 1;
  }
  sandboxes_recover();
  server.mhd = MHD_start_daemon(
      MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME |
          MHD_USE_NO_LISTEN_SOCKET | MHD_USE_ITC,
      0, NULL, NULL, http_access, NULL, MHD_OPTION_THREAD_POOL_SIZE,
      (unsigned)server.cfg.http_threads, MHD_OPTION_NOTIFY_COMPLETED, http_completed, NULL,
      MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)server.cfg.idle_timeout_s,
      MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)128 * 1024,
      MHD_OPTION_NOTIFY_CONNECTION, conn_notify, NULL,
      MHD_OPTION_END);
  if (!server.mhd) {
    log_error("cannot start libmicrohttpd");
    return 1;
  }
  listener *lst = NULL;
  if (listener_start(server.cfg.host, server.cfg.port, &lst, &err) < 0) {
    log_error("%s", err.msg);
    return 1;
  }
  log_info("sbxd %s listening on %s:%d data_dir=%s images_dir=%s", SBX_VERSION, server.cfg.host,
           listener_port(lst), server.cfg.data_dir, server.cfg.images_dir);

  /* The main thread waits for a signal and, every second, stops sandboxes
   * past their idle_timeout_s or max_duration_s. */
  int sig = 0;
  for (;;) {
    struct timespec tick = {1, 0};
    sig = sigtimedwait(&sigs, NULL, &tick);
    if (sig > 0)
      break;
    unsigned char b;
    if (read(sig_pipe[0], &b, 1) == 1) {
      sig = b;
      break;
    }
    sandboxes_reap();
  }
  log_info("signal %d: shutting down (in-flight requests may finish for %lld ms)", sig,
           (long long)server.cfg.shutdown_grace_ms);
  atomic_store(&server.stopping, true);
  listener_stop(lst);
  loop_call(server.loop, &(loop_job){.kind = LOOP_JOB_RELEASE_WAITS, .fd = -1});
  wait_idle(server.cfg.shutdown_grace_ms);
  loop_stop(server.loop); /* answers what is still waiting with 503 */
  server.loop = NULL;
  wait_idle(2000);
  MHD_stop_daemon(server.mhd);
  store_global_shutdown();
  log_info("stopped; sandboxes keep running");
  return 0;
}
