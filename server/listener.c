#include "listener.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <stdint.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../common/util.h"
#include "loop.h"
#include "server.h"

#define MAX_PENDING 1024
#define PEEK_LIMIT 65536 /* the most --max-header-bytes may be */

typedef struct pending {
  int fd;
  int64_t deadline_ms;
  struct sockaddr_storage addr;
  socklen_t addrlen;
} pending;

struct listener {
  int fd;
  int port;
  int wake[2];
  pthread_t thread;
  pending pend[MAX_PENDING];
  int npend;
};

int listener_port(const listener *l) { return l->port; }

/* Decide where a connection goes.  1: WebSocket side, 0: REST, -1: the
 * request head is not complete yet, -2: hopeless (closed or garbage), -3:
 * the head is over --max-header-bytes.  The whole head must arrive within
 * the handshake timeout, so a client that trickles header bytes cannot hold
 * a connection (slowloris). */
static int classify(int fd) {
  static char buf[PEEK_LIMIT + 2]; /* only the listener thread calls this */
  size_t max = g_server->cfg.max_header_bytes;
  /* one byte more than allowed tells "full" from "just fits" */
  ssize_t n = recv(fd, buf, max + 1, MSG_PEEK | MSG_DONTWAIT);
  if (n == 0)
    return -2;
  if (n < 0)
    return (errno == EAGAIN || errno == EINTR) ? -1 : -2;
  buf[n] = '\0';
  char *end = strstr(buf, "\r\n\r\n");
  if (!end)
    end = strstr(buf, "\n\n");
  if (!end)
    return (size_t)n > max ? -3 : -1;
  if ((size_t)(end - buf) > max)
    return -3;
  char *eol = memchr(buf, '\n', (size_t)n);
  *eol = '\0';
  char *sp = strchr(buf, ' ');
  if (!sp)
    return 0; /* not HTTP: MHD answers 400 */
  char *path = sp + 1;
  size_t plen = strcspn(path, " ?\r");
  return plen >= 3 && memcmp(path + plen - 3, "/ws", 3) == 0 ? 1 : 0;
}

/* ---- REST connections per client address (admission control) ---- */

#define ADDR_SLOTS 4096
static struct {
  char addr[INET6_ADDRSTRLEN];
  int n;
} per_addr[ADDR_SLOTS];
static int total_conns;
static pthread_mutex_t conns_mu = PTHREAD_MUTEX_INITIALIZER;

static void addr_key(const struct sockaddr *sa, char *out, size_t outsz) {
  out[0] = '\0';
  if (sa->sa_family == AF_INET)
    inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, out, (socklen_t)outsz);
  else if (sa->sa_family == AF_INET6)
    inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, out, (socklen_t)outsz);
}

/* The slot of an address (linear probing; a slot whose count fell to 0 is free). */
static size_t addr_slot(const char *a) {
  uint32_t h = 2166136261u;
  for (const char *p = a; *p; p++)
    h = (h ^ (uint8_t)*p) * 16777619u;
  size_t free_slot = SIZE_MAX;
  for (size_t k = 0; k < ADDR_SLOTS; k++) {
    size_t i = (h + k) % ADDR_SLOTS;
    if (!strcmp(per_addr[i].addr, a))
      return i;
    if (per_addr[i].n == 0 && free_slot == SIZE_MAX)
      free_slot = i;
    if (!per_addr[i].addr[0])
      break;
  }
  return free_slot;
}

/* Count a new REST connection; false if it is over a cap. */
static bool conn_admit(const struct sockaddr *sa) {
  char a[INET6_ADDRSTRLEN];
  addr_key(sa, a, sizeof a);
  pthread_mutex_lock(&conns_mu);
  size_t i = addr_slot(a);
  bool ok = i != SIZE_MAX && total_conns < g_server->cfg.max_conns &&
            (!strcmp(per_addr[i].addr, a) ? per_addr[i].n : 0) < g_server->cfg.max_conns_per_ip;
  if (ok) {
    if (strcmp(per_addr[i].addr, a) != 0) {
      snprintf(per_addr[i].addr, sizeof per_addr[i].addr, "%s", a);
      per_addr[i].n = 0;
    }
    per_addr[i].n++;
    total_conns++;
  }
  pthread_mutex_unlock(&conns_mu);
  return ok;
}

void listener_conn_closed(const struct sockaddr *sa) {
  char a[INET6_ADDRSTRLEN];
  addr_key(sa, a, sizeof a);
  pthread_mutex_lock(&conns_mu);
  size_t i = addr_slot(a);
  if (i != SIZE_MAX && !strcmp(per_addr[i].addr, a) && per_addr[i].n > 0) {
    per_addr[i].n--;
    total_conns--;
  }
  pthread_mutex_unlock(&conns_mu);
}

/* A canned error reply before any HTTP machinery (the head was peeked, not
 * read: read it off first so the close does not reset the reply away). */
static void refuse(int fd, int status, const char *reason, const char *kind, const char *message) {
  char body[256], resp[768], id[40], sink[4096];
  int bn = snprintf(body, sizeof body, "{\"error\":{\"kind\":\"%s\",\"message\":\"%s\"}}", kind,
                    message);
  sbx_new_id("req_", id, sizeof id);
  int n = snprintf(resp, sizeof resp,
                   "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                   "Content-Length: %d\r\n%sX-Request-Id: %s\r\n"
                   "Connection: close\r\n\r\n%s",
                   status, reason, bn, status == 503 ? "Retry-After: 1\r\n" : "", id, body);
  while (recv(fd, sink, sizeof sink, MSG_DONTWAIT) > 0)
    ;
  if (send(fd, resp, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT) != n)
    log_debug("refusal (%d) not fully sent", status);
  shutdown(fd, SHUT_WR);
  close(fd);
}

static void ws_done(loop_job *job) { free(job); }

static void dispatch(listener *l, int i) {
  pending *p = &l->pend[i];
  int where = classify(p->fd);
  if (where == -1 && sbx_mono_ms() < p->deadline_ms)
    return;
  int fd = p->fd;
  struct sockaddr_storage addr = p->addr;
  socklen_t addrlen = p->addrlen;
  l->pend[i] = l->pend[--l->npend];
  if (where == -3) {
    refuse(fd, 413, "Content Too Large", "payload_too_large",
           "the request head is over --max-header-bytes");
    return;
  }
  if (where < 0) {
    close(fd);
    return;
  }
  if (where == 1) {
    loop_job *job = calloc(1, sizeof *job);
    if (!job) {
      close(fd);
      return;
    }
    job->kind = LOOP_JOB_WS;
    job->fd = fd;
    job->done = ws_done;
    loop_post(g_server->loop, job);
    return;
  }
  if (!conn_admit((struct sockaddr *)&addr)) {
    refuse(fd, 503, "Service Unavailable", "capacity",
           "too many connections (--max-conns, --max-conns-per-ip); retry later");
    return;
  }
  if (MHD_add_connection(g_server->mhd, fd, (struct sockaddr *)&addr, addrlen) != MHD_YES) {
    /* MHD has closed the socket and will not report it closed */
    log_warn("libmicrohttpd refused a connection: %s", strerror(errno));
    listener_conn_closed((struct sockaddr *)&addr);
  }
}

static void *listener_main(void *arg) {
  listener *l = arg;
  struct pollfd pfd[2 + MAX_PENDING];
  for (;;) {
    pfd[0] = (struct pollfd){.fd = l->fd, .events = l->npend < MAX_PENDING ? POLLIN : 0};
    pfd[1] = (struct pollfd){.fd = l->wake[0], .events = POLLIN};
    for (int i = 0; i < l->npend; i++)
      pfd[2 + i] = (struct pollfd){.fd = l->pend[i].fd, .events = POLLIN};
    int n = poll(pfd, (nfds_t)(2 + l->npend), l->npend ? 200 : -1);
    if (n < 0 && errno != EINTR)
      break;
    if (pfd[1].revents)
      break;
    /* walk backwards: dispatch() moves the last entry into slot i */
    for (int i = l->npend - 1; i >= 0; i--)
      if (pfd[2 + i].revents || sbx_mono_ms() >= l->pend[i].deadline_ms)
        dispatch(l, i);
    if (pfd[0].revents & POLLIN) {
      for (;;) {
        pending p = {.addrlen = sizeof p.addr};
        p.fd = accept4(l->fd, (struct sockaddr *)&p.addr, &p.addrlen,
                       SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (p.fd < 0)
          break;
        if (atomic_load(&g_server->stopping) || l->npend >= MAX_PENDING) {
          close(p.fd); /* admission control: refuse before allocating anything */
          continue;
        }
        p.deadline_ms = sbx_mono_ms() + (int64_t)g_server->cfg.handshake_timeout_s * 1000;
        l->pend[l->npend++] = p;
        dispatch(l, l->npend - 1); /* the request line is often there already */
      }
    }
  }
  for (int i = 0; i < l->npend; i++)
    close(l->pend[i].fd);
  l->npend = 0;
  return NULL;
}

int listener_start(const char *host, int port, listener **out, sbx_err *err) {
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                           .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
  struct addrinfo *ai = NULL;
  char portstr[16];
  snprintf(portstr, sizeof portstr, "%d", port);
  int rc = getaddrinfo(host, portstr, &hints, &ai);
  if (rc != 0)
    return sbx_fail(err, SBX_E_INVALID_REQUEST, 0, "--listen %s: %s", host, gai_strerror(rc));
  cleanup_fd int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int one = 1;
  if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
      bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 1024) < 0) {
    int e = errno;
    freeaddrinfo(ai);
    return sbx_fail_errno(err, e, "listen on %s:%d", host, port);
  }
  freeaddrinfo(ai);
  struct sockaddr_storage sa;
  socklen_t salen = sizeof sa;
  getsockname(fd, (struct sockaddr *)&sa, &salen);
  listener *l = calloc(1, sizeof *l);
  if (!l)
    return sbx_fail_errno(err, ENOMEM, "listener");
  l->port = ntohs(sa.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&sa)->sin6_port
                                           : ((struct sockaddr_in *)&sa)->sin_port);
  if (pipe2(l->wake, O_CLOEXEC) < 0) {
    free(l);
    return sbx_fail_errno(err, errno, "pipe");
  }
  l->fd = sbx_steal_fd(&fd);
  rc = pthread_create(&l->thread, NULL, listener_main, l);
  if (rc != 0) {
    close(l->fd);
    close(l->wake[0]);
    close(l->wake[1]);
    free(l);
    return sbx_fail_errno(err, rc, "start the listener thread");
  }
  *out = l;
  return 0;
}

void listener_stop(listener *l) {
  if (!l)
    return;
  ssize_t w = write(l->wake[1], "x", 1);
  (void)w;
  pthread_join(l->thread, NULL);
  close(l->fd);
  close(l->wake[0]);
  close(l->wake[1]);
  free(l);
}
