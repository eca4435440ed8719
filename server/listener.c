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
#include <sys/socket.h>
#include <unistd.h>

#include "../common/util.h"
#include "loop.h"
#include "server.h"

#define MAX_PENDING 1024
#define HANDSHAKE_MS 10000
#define PEEK_MAX 2048

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

/* Decide where a connection goes.  1: WebSocket side, 0: REST, -1: not yet
 * a whole request line, -2: hopeless (closed or garbage). */
static int classify(int fd) {
  char buf[PEEK_MAX + 1];
  ssize_t n = recv(fd, buf, PEEK_MAX, MSG_PEEK | MSG_DONTWAIT);
  if (n == 0)
    return -2;
  if (n < 0)
    return (errno == EAGAIN || errno == EINTR) ? -1 : -2;
  buf[n] = '\0';
  char *eol = memchr(buf, '\n', (size_t)n);
  if (!eol)
    return n == PEEK_MAX ? 0 : -1; /* an overlong line: let MHD answer it */
  *eol = '\0';
  char *sp = strchr(buf, ' ');
  if (!sp)
    return 0; /* not HTTP: MHD answers 400 */
  char *path = sp + 1;
  size_t plen = strcspn(path, " ?\r");
  return plen >= 3 && memcmp(path + plen - 3, "/ws", 3) == 0 ? 1 : 0;
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
  if (MHD_add_connection(g_server->mhd, fd, (struct sockaddr *)&addr, addrlen) != MHD_YES) {
    log_warn("libmicrohttpd refused a connection: %s", strerror(errno));
    close(fd); /* MHD closes it on failure in most versions; a second close is harmless */
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
        p.deadline_ms = sbx_mono_ms() + HANDSHAKE_MS;
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
