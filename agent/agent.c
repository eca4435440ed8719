/* agent.c - sbx-agent: PID 1 of a sandbox.  One single-threaded poll() loop
 * owns every gateway connection and every exec session:
 *
 *   - connections speak agent/proto.h; each session belongs to the connection
 *     that created (or ATTACHed) it, and survives that connection unless the
 *     EXEC asked for kill_on_disconnect;
 *   - a session's program runs in its own session/process group (spawn.c);
 *     its stdout/stderr are read only within the credit the gateway granted,
 *     its stdin is written from a bounded buffer, never blocking the loop;
 *   - SIGCHLD comes through a signalfd; every child (orphans too, as PID 1 or
 *     as a child subreaper) is reaped, and a session's main pid ends it once
 *     its pipes are drained (or a grace period passed with them held open).
 *
 * Nothing is freed inside its own event handler: dead connections and
 * released sessions are swept at the end of each loop turn. */
#include "agent/agent.h"
#include "agent/proto.h"
#include "common/b64.h"
#include "common/util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#define AGENT_NAME "sbx-agent 0.1"
#define AGENT_MAX_CONNS 64
#define AGENT_MAX_SESSIONS 1024
#define AGENT_STDIN_MAX ((size_t)SBX_PROTO_MAX_PAYLOAD * 4) /* the gateway paces at 256 KiB in flight; room for messages already on their way */
#define AGENT_OUTQ_PAUSE (8u << 20) /* stop reading a connection that does not drain */
#define AGENT_CREDIT_MAX (1ull << 40)
#define AGENT_GRACE_DEFAULT 200
#define AGENT_READ_CHUNK (64u * 1024)
#define AGENT_NOFILE 65536u

/* ---- a growable byte queue (a connection's outgoing frames) ---- */

typedef struct obuf {
  uint8_t *buf;
  size_t head, len, cap;
} obuf;

/* Make room for n more bytes at the tail; returns the tail or NULL. */
static uint8_t *obuf_reserve(obuf *b, size_t n) {
  if (b->head + b->len + n > b->cap && b->head > 0) {
    memmove(b->buf, b->buf + b->head, b->len);
    b->head = 0;
  }
  if (b->head + b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 16384;
    while (cap < b->len + n)
      cap *= 2;
    uint8_t *nb = realloc(b->buf, cap);
    if (!nb)
      return NULL;
    b->buf = nb;
    b->cap = cap;
  }
  return b->buf + b->head + b->len;
}

/* ---- state ---- */

typedef struct agent_conn agent_conn;
struct agent_conn {
  int fd;
  unsigned serial; /* for logs */
  sbx_decoder *dec;
  obuf out;
  bool dead;
  bool no_splice; /* the transport refused splice(): output is read and written */
  bool sndbuf_set;  /* the send buffer was sized for output (conn_size_sndbuf) */
  char nonce[72];   /* of the last SYNC answered: another one is another gateway */
  agent_conn *next;
};

typedef enum { SS_SPAWNING, SS_RUNNING, SS_ENDED } sess_state;

enum { OUT_STDOUT = 0, OUT_STDERR = 1 };

typedef struct agent_session agent_session;
struct agent_session {
  uint32_t id;
  char *exec_id;
  agent_conn *owner; /* NULL: unowned (its connection went away) */
  sess_state state;
  pid_t pid; /* main pid = process group = session id */
  bool tty;
  bool kill_on_disconnect;
  int pty_fd;
  int out_fd[2];
  bool out_hup[2]; /* poll saw the writers gone while we had no credit to read */
  uint64_t credit[2];
  uint64_t sent[2]; /* output bytes handed to a connection, per stream (HELLO reports them) */
  uint64_t frames;  /* output frames handed to a connection (HELLO reports them) */
  bool disconnect_killed; /* killed because its owner went away (EXITED says so) */
  /* stdin */
  int in_fd;
  uint8_t *in_buf;
  size_t in_head, in_len;
  bool in_pipe;      /* STDIN frames accepted */
  bool in_closing;   /* close once the buffer is written */
  bool in_failed;    /* STDIN_ERROR sent; drop the rest */
  uint64_t in_unacked; /* stdin bytes written to the program, not yet in a STDIN_ACK */
  /* spawn report */
  int report_fd;
  agent_spawn_report report;
  size_t report_len;
  /* lifecycle */
  bool main_exited;
  int status;
  bool timed_out;
  int64_t start_ms, exit_ms, deadline_ms; /* monotonic; deadline 0 = none */
  int64_t grace_ms, grace_spent, grace_tick;
  bool grace_clock; /* the grace period is running (not waiting for credit) */
  uint8_t final_type; /* EXITED or FAILED once ended */
  json_t *final;
  bool released;
  agent_session *next;
};

/* A virtio-serial port (vm.c): path, and the fd while not handed to a
 * connection. */
typedef struct agent_port {
  const char *path;
  int fd;
} agent_port;

typedef struct agent {
  int listen_fd;
  int sig_fd;
  agent_port port;       /* --port: the gateway's connection, one at a time */
  agent_conn *port_conn; /* the connection that owns port's fd now */
  agent_port ctl;        /* --ctl-port: "poweroff" lines from the driver */
  char ctl_line[64];
  size_t ctl_len;
  bool poweroff;
  const char *passwd_path;
  const char *group_path;
  agent_conn *conns;
  size_t nconns;
  unsigned next_serial;
  agent_session *sessions;
  size_t nsessions;
  bool stopping;
} agent;

/* ---- output: frames to a connection ---- */

static void conn_kill(agent_conn *c, const char *why) {
  if (!c->dead)
    log_info("conn=%u closing: %s", c->serial, why);
  c->dead = true;
}

static void conn_send(agent_conn *c, uint32_t session, uint8_t type, const void *data, size_t n) {
  if (!c || c->dead)
    return;
  uint8_t *p = obuf_reserve(&c->out, SBX_PROTO_HDR + n);
  if (!p) {
    conn_kill(c, "out of memory queueing a frame");
    return;
  }
  sbx_proto_put_hdr(p, (uint32_t)n, session, type);
  if (n)
    memcpy(p + SBX_PROTO_HDR, data, n);
  c->out.len += SBX_PROTO_HDR + n;
}

/* Send a JSON control frame; takes ownership of j. */
static void conn_send_json(agent_conn *c, uint32_t session, uint8_t type, json_t *j) {
  if (!j) {
    if (c)
      conn_kill(c, "out of memory building a frame");
    return;
  }
  char *s = json_dumps(j, JSON_COMPACT);
  json_decref(j);
  if (!s) {
    if (c)
      conn_kill(c, "out of memory encoding a frame");
    return;
  }
  conn_send(c, session, type, s, strlen(s));
  free(s);
}

static void send_error(agent_conn *c, uint32_t session, const char *msg) {
  log_info("conn=%u session=%u refused: %s", c->serial, session, msg);
  conn_send_json(c, session, SBX_F_ERROR, json_pack("{s:s}", "message", msg));
}

static void conn_flush(agent_conn *c) {
  while (!c->dead && c->out.len > 0) {
    ssize_t n = write(c->fd, c->out.buf + c->out.head, c->out.len);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      if (errno == EAGAIN)
        return;
      conn_kill(c, strerror(errno));
      return;
    }
    c->out.head += (size_t)n;
    c->out.len -= (size_t)n;
  }
  if (c->out.len == 0)
    c->out.head = 0;
}

/* ---- sessions ---- */

static agent_session *session_find(agent *a, uint32_t id) {
  for (agent_session *s = a->sessions; s; s = s->next)
    if (s->id == id && !s->released)
      return s;
  return NULL;
}

static json_t *fail_json(const agent_fail *f) {
  const char *ename = f->errnum ? strerrorname_np(f->errnum) : NULL;
  return json_pack("{s:s,s:i,s:s,s:s,s:s,s:s}", "kind", f->kind, "errno", f->errnum,
                   "errno_name", ename ? ename : "", "path", f->path, "stage", f->stage,
                   "message", f->message);
}

static void close_fd(int *fd) { sbx_closep(fd); }

static void session_close_outputs(agent_session *s) {
  close_fd(&s->out_fd[0]);
  close_fd(&s->out_fd[1]);
}

static void session_close_stdin(agent_session *s) {
  close_fd(&s->in_fd);
  free(s->in_buf);
  s->in_buf = NULL;
  s->in_head = s->in_len = 0;
}

/* Record the terminal frame (FAILED or EXITED), send it to the owner, keep it
 * for ATTACH until RELEASE. */
static void session_end(agent_session *s, uint8_t type, json_t *payload) {
  session_close_outputs(s);
  session_close_stdin(s);
  close_fd(&s->report_fd);
  close_fd(&s->pty_fd);
  s->state = SS_ENDED;
  s->final_type = type;
  s->final = payload;
  if (s->owner && payload)
    conn_send_json(s->owner, s->id, type, json_incref(payload));
}

static void session_fail(agent_session *s, const agent_fail *f) {
  log_info("session=%u exec=%s failed: kind=%s stage=%s %s", s->id, s->exec_id, f->kind, f->stage,
           f->message);
  session_end(s, SBX_F_FAILED, fail_json(f));
}

static void session_stdin_error(agent_session *s, int e) {
  if (!s->in_failed) {
    agent_fail f;
    agent_fail_setk(&f, "other", "stdin", e, "", "writing the program's stdin: %s", strerror(e));
    log_info("session=%u stdin error: %s", s->id, strerror(e));
    if (s->owner)
      conn_send_json(s->owner, s->id, SBX_F_STDIN_ERROR, fail_json(&f));
  }
  s->in_failed = true;
  session_close_stdin(s);
}

/* Stdin that cannot be taken is a (non-terminal) STDIN_ERROR for the client. */
static void stdin_refused(agent_conn *c, agent_session *s, const char *why) {
  agent_fail f;
  agent_fail_setk(&f, "other", "stdin", 0, "", "stdin refused: %s", why);
  conn_send_json(c, s->id, SBX_F_STDIN_ERROR, fail_json(&f));
}

/* Write as much buffered stdin as the pipe takes now. */
static void session_write_stdin(agent_session *s) {
  if (s->state != SS_RUNNING)
    return; /* nothing before STARTED: a program that never starts gets FAILED alone */
  while (s->in_fd >= 0 && s->in_len > 0) {
    ssize_t n = write(s->in_fd, s->in_buf + s->in_head, s->in_len);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      if (errno == EAGAIN)
        return;
      session_stdin_error(s, errno);
      return;
    }
    s->in_head += (size_t)n;
    s->in_len -= (size_t)n;
    s->in_unacked += (uint64_t)n;
  }
  if (s->in_len == 0)
    s->in_head = 0;
  /* tell the gateway what the program took, so it can send more */
  if (s->owner && s->in_unacked && (s->in_len == 0 || s->in_unacked >= 64 * 1024)) {
    uint8_t ack[4] = {(uint8_t)(s->in_unacked >> 24), (uint8_t)(s->in_unacked >> 16),
                      (uint8_t)(s->in_unacked >> 8), (uint8_t)s->in_unacked};
    conn_send(s->owner, s->id, SBX_F_STDIN_ACK, ack, sizeof ack);
    s->in_unacked = 0;
  }
  if (s->in_fd >= 0 && s->in_len == 0 && s->in_closing)
    session_close_stdin(s);
}

static int session_stdin_append(agent_session *s, const void *data, size_t n) {
  if (s->in_len + n > AGENT_STDIN_MAX)
    return -1;
  if (s->in_head > 0) {
    memmove(s->in_buf, s->in_buf + s->in_head, s->in_len);
    s->in_head = 0;
  }
  uint8_t *nb = realloc(s->in_buf, s->in_len + n ? s->in_len + n : 1);
  if (!nb)
    return -1;
  s->in_buf = nb;
  memcpy(s->in_buf + s->in_len, data, n);
  s->in_len += n;
  return 0;
}

/* Ask for stdin's EOF: on a pipe, close it; on a terminal, the VEOF
 * character (the pty must stay open for output). */
static void session_stdin_eof(agent_session *s) {
  if (s->in_fd < 0 || s->in_closing)
    return;
  s->in_closing = true;
  if (s->tty) {
    struct termios t;
    uint8_t eof = tcgetattr(s->pty_fd, &t) == 0 ? t.c_cc[VEOF] : 4;
    session_stdin_append(s, &eof, 1);
  }
  session_write_stdin(s);
}

/* Every process of the exec: its process group, and (for shells with job
 * control on a tty) every group of its session. */
static void session_kill_all(agent_session *s, int sig) {
  if (s->pid <= 0)
    return; /* never started: kill(-0) would hit the agent's own group */
  if (kill(-s->pid, sig) < 0 && errno == ESRCH && !s->main_exited)
    kill(s->pid, sig); /* not yet past setsid() */
  cleanup_fd int dfd = open("/proc", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0)
    return;
  DIR *d = fdopendir(dfd);
  if (!d)
    return;
  dfd = -1;
  struct dirent *de;
  while ((de = readdir(d))) {
    char *end;
    long pid = strtol(de->d_name, &end, 10);
    if (*end || pid <= 0)
      continue;
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    cleanup_fd int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
      continue;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    if (n <= 0)
      continue;
    buf[n] = 0;
    char *rp = strrchr(buf, ')');
    char state;
    int ppid, pgrp, sid;
    if (rp && sscanf(rp + 1, " %c %d %d %d", &state, &ppid, &pgrp, &sid) == 4 && sid == s->pid)
      kill((pid_t)pid, sig);
  }
  closedir(d);
}

/* Splice at least this much of a pipe, or read it: below it the extra
 * FIONREAD and header send cost more than the copy saves. */
#define AGENT_SPLICE_MIN (16u * 1024)

/* Room in the socket for the output credit the gateway gives (several
 * chunks per stream): with the default (~208 KiB, less than one chunk) a
 * spliced chunk rarely fits whole, and once a splice is cut short the
 * connection's output is read and copied until the queue drains.  The kernel
 * caps SO_SNDBUF at net.core.wmem_max; SO_SNDBUFFORCE passes that where we
 * may (CAP_NET_ADMIN); failing both just keeps the default. */
#define AGENT_SNDBUF (4u << 20)

static void conn_size_sndbuf(agent_conn *c) {
  c->sndbuf_set = true;
  int v = AGENT_SNDBUF;
  if (setsockopt(c->fd, SOL_SOCKET, SO_SNDBUFFORCE, &v, sizeof v) < 0)
    setsockopt(c->fd, SOL_SOCKET, SO_SNDBUF, &v, sizeof v);
}

/* Send one output frame of n bytes whose payload is in the session's pipe:
 * the header now, then the payload moved by splice() from the pipe into the
 * socket (the kernel hands the pipe's pages over, so the agent copies
 * nothing).  The caller made sure that nothing is queued ahead of it and
 * that the pipe holds n bytes.  Whatever the socket does not take now
 * (header or payload) is read into the queue behind it, so the frame is
 * always whole and nothing overtakes it.  Returns 0, or -1 with the
 * connection killed. */
static int conn_splice_frame(agent_conn *c, int fd, uint32_t session, uint8_t type, size_t n) {
  uint8_t hdr[SBX_PROTO_HDR];
  sbx_proto_put_hdr(hdr, (uint32_t)n, session, type);
  ssize_t w; /* write(), not send(): the transport need not be a socket */
  do
    w = write(c->fd, hdr, sizeof hdr);
  while (w < 0 && errno == EINTR);
  if (w < 0 && errno != EAGAIN) {
    conn_kill(c, strerror(errno));
    return -1;
  }
  size_t sent_hdr = w > 0 ? (size_t)w : 0, done = 0;
  while (sent_hdr == sizeof hdr && done < n && !c->no_splice) {
    ssize_t k = splice(fd, NULL, c->fd, NULL, n - done, SPLICE_F_NONBLOCK);
    if (k > 0) {
      done += (size_t)k;
    } else if (k < 0 && errno == EINTR) {
      continue;
    } else if (k < 0 && (errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP ||
                         errno == ENOTSOCK)) {
      log_info("conn=%u cannot splice output (%s): reading it instead", c->serial,
               strerror(errno));
      c->no_splice = true;
    } else if (k < 0 && errno != EAGAIN) {
      conn_kill(c, strerror(errno));
      return -1;
    } else {
      break; /* the socket is full */
    }
  }
  size_t rest = sizeof hdr - sent_hdr + (n - done);
  if (rest == 0)
    return 0;
  uint8_t *p = obuf_reserve(&c->out, rest);
  if (!p) {
    conn_kill(c, "out of memory queueing output");
    return -1;
  }
  memcpy(p, hdr + sent_hdr, sizeof hdr - sent_hdr);
  size_t got = sizeof hdr - sent_hdr;
  while (got < rest) {
    ssize_t r = read(fd, p + got, rest - got);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0) { /* FIONREAD promised these bytes and only we read the pipe */
      conn_kill(c, "output pipe gave fewer bytes than it held");
      return -1;
    }
    got += (size_t)r;
  }
  c->out.len += rest;
  return 0;
}

/* Read one chunk of a stream within credit; returns false at EOF/error
 * (the fd is then closed), true otherwise. */
static bool session_read_stream(agent_session *s, int which) {
  int fd = s->out_fd[which];
  if (fd < 0 || !s->owner || s->owner->dead || s->credit[which] == 0)
    return fd >= 0;
  size_t want = s->credit[which] < SBX_PROTO_CHUNK ? (size_t)s->credit[which] : SBX_PROTO_CHUNK;
  agent_conn *c = s->owner;
  uint8_t type = which == OUT_STDOUT ? SBX_F_STDOUT : SBX_F_STDERR;
  if (!c->sndbuf_set)
    conn_size_sndbuf(c);
  int avail = 0;
  /* a pipe with a good chunk waiting and nothing queued ahead: splice it */
  if (!s->tty && !c->no_splice && c->out.len == 0 && want >= AGENT_SPLICE_MIN &&
      ioctl(fd, FIONREAD, &avail) == 0 && (size_t)avail >= AGENT_SPLICE_MIN) {
    size_t n = (size_t)avail < want ? (size_t)avail : want;
    if (conn_splice_frame(c, fd, s->id, type, n) < 0)
      return true;
    s->credit[which] -= (uint64_t)n;
    s->sent[which] += (uint64_t)n;
    s->frames++;
    return true;
  }
  uint8_t *p = obuf_reserve(&c->out, SBX_PROTO_HDR + want);
  if (!p) {
    conn_kill(c, "out of memory reading output");
    return true;
  }
  ssize_t n;
  do
    n = read(fd, p + SBX_PROTO_HDR, want);
  while (n < 0 && errno == EINTR);
  if (n > 0) {
    sbx_proto_put_hdr(p, (uint32_t)n, s->id, type);
    c->out.len += SBX_PROTO_HDR + (size_t)n;
    s->credit[which] -= (uint64_t)n;
    s->sent[which] += (uint64_t)n;
    s->frames++;
    return true;
  }
  if (n < 0 && errno == EAGAIN)
    return true;
  /* 0: every writer is gone; EIO: the pty's slave side hung up */
  if (n < 0 && errno != EIO)
    log_warn("session=%u reading %s: %s", s->id, which ? "stderr" : "stdout", strerror(errno));
  close_fd(&s->out_fd[which]);
  return false;
}

static void session_finish(agent_session *s) {
  /* last chance for buffered stdin; then the pipe goes */
  if (s->in_fd >= 0 && s->in_len > 0)
    session_write_stdin(s);
  int code = -1;
  json_t *sig = json_null();
  if (WIFEXITED(s->status)) {
    code = WEXITSTATUS(s->status);
  } else if (WIFSIGNALED(s->status)) {
    json_decref(sig);
    sig = json_integer(WTERMSIG(s->status));
  }
  int64_t dur = s->exit_ms - s->start_ms;
  log_info("session=%u exec=%s exited code=%d signal=%d timed_out=%d duration_ms=%lld", s->id,
           s->exec_id, code, WIFSIGNALED(s->status) ? WTERMSIG(s->status) : 0, s->timed_out,
           (long long)dur);
  json_t *j = json_pack("{s:i,s:o,s:b,s:b,s:I}", "exit_code", code, "signal", sig, "timed_out",
                        s->timed_out, "disconnect_killed", s->disconnect_killed, "duration_ms",
                        (json_int_t)dur);
  session_end(s, SBX_F_EXITED, j);
}

static void session_maybe_finish(agent_session *s) {
  if (s->state == SS_RUNNING && s->main_exited && s->out_fd[0] < 0 && s->out_fd[1] < 0)
    session_finish(s);
}

/* The grace period ran out with a descendant holding the pipes: take what is
 * there now (within credit) and stop listening. */
static void session_grace_expired(agent_session *s) {
  log_info("session=%u grace period over with output still open; closing it", s->id);
  for (int w = 0; w < 2; w++) {
    int guard = 0;
    while (s->out_fd[w] >= 0 && s->credit[w] > 0 && s->owner && guard++ < 1024) {
      uint64_t before = s->sent[w]; /* (a spliced frame does not grow the queue) */
      if (!session_read_stream(s, w) || s->sent[w] == before)
        break;
    }
  }
  session_close_outputs(s);
  session_maybe_finish(s);
}

/* True when output is waiting that the gateway has not (yet) made room for:
 * bytes sit in a pipe whose stream has no credit (or no owner to take them).
 * An empty pipe held open by a descendant is not waiting for credit. */
static bool session_credit_blocked(const agent_session *s) {
  for (int w = 0; w < 2; w++) {
    if (s->out_fd[w] < 0 || (s->owner && s->credit[w] > 0))
      continue;
    int avail = 0;
    if (ioctl(s->out_fd[w], FIONREAD, &avail) < 0 || avail > 0)
      return true;
  }
  return false;
}

static void session_free(agent_session *s) {
  session_close_outputs(s);
  session_close_stdin(s);
  close_fd(&s->report_fd);
  close_fd(&s->pty_fd);
  json_decref(s->final);
  free(s->exec_id);
  free(s);
}

/* ---- EXEC ---- */


typedef struct exec_spec {
  char **argv;
  char **envp;
  size_t nenv;
} exec_spec;

static void exec_spec_clear(exec_spec *e) {
  if (e->argv)
    for (char **p = e->argv; *p; p++)
      free(*p);
  free(e->argv);
  if (e->envp)
    for (char **p = e->envp; *p; p++)
      free(*p);
  free(e->envp);
  memset(e, 0, sizeof *e);
}

static bool get_uint(json_t *o, const char *key, int64_t max, int64_t dflt, int64_t *out,
                     char *why, size_t whysz) {
  json_t *v = json_object_get(o, key);
  if (!v || json_is_null(v)) {
    *out = dflt;
    return true;
  }
  if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > max) {
    snprintf(why, whysz, "\"%s\" must be an integer from 0 to %lld", key, (long long)max);
    return false;
  }
  *out = json_integer_value(v);
  return true;
}

static bool get_bool(json_t *o, const char *key, bool *out, char *why, size_t whysz) {
  json_t *v = json_object_get(o, key);
  *out = false;
  if (!v || json_is_null(v))
    return true;
  if (!json_is_boolean(v)) {
    snprintf(why, whysz, "\"%s\" must be a boolean", key);
    return false;
  }
  *out = json_is_true(v);
  return true;
}

static bool get_str(json_t *o, const char *key, const char **out, char *why, size_t whysz) {
  json_t *v = json_object_get(o, key);
  *out = NULL;
  if (!v || json_is_null(v))
    return true;
  if (!json_is_string(v)) {
    snprintf(why, whysz, "\"%s\" must be a string", key);
    return false;
  }
  *out = json_string_value(v);
  return true;
}

static bool env_has(char **envp, size_t n, const char *name) {
  size_t l = strlen(name);
  for (size_t i = 0; i < n; i++)
    if (strncmp(envp[i], name, l) == 0 && envp[i][l] == '=')
      return true;
  return false;
}

static bool env_add(exec_spec *e, const char *k, const char *v) {
  char *s = NULL;
  if (asprintf(&s, "%s=%s", k, v) < 0)
    return false;
  char **ne = realloc(e->envp, (e->nenv + 2) * sizeof *ne);
  if (!ne) {
    free(s);
    return false;
  }
  e->envp = ne;
  e->envp[e->nenv++] = s;
  e->envp[e->nenv] = NULL;
  return true;
}

/* Build argv and envp from the EXEC object; false with a reason on bad input. */
static bool exec_build(json_t *o, const char *cmd, exec_spec *e, char *why, size_t whysz) {
  json_t *args = json_object_get(o, "args");
  if (args && !json_is_null(args) && !json_is_array(args)) {
    snprintf(why, whysz, "\"args\" must be an array of strings");
    return false;
  }
  size_t nargs = args && json_is_array(args) ? json_array_size(args) : 0;
  e->argv = calloc(nargs + 2, sizeof *e->argv);
  if (!e->argv || !(e->argv[0] = strdup(cmd))) {
    snprintf(why, whysz, "out of memory");
    return false;
  }
  for (size_t i = 0; i < nargs; i++) {
    json_t *a = json_array_get(args, i);
    if (!json_is_string(a)) {
      snprintf(why, whysz, "\"args\"[%zu] must be a string", i);
      return false;
    }
    if (!(e->argv[i + 1] = strdup(json_string_value(a)))) {
      snprintf(why, whysz, "out of memory");
      return false;
    }
  }
  e->envp = calloc(1, sizeof *e->envp);
  if (!e->envp) {
    snprintf(why, whysz, "out of memory");
    return false;
  }
  json_t *env = json_object_get(o, "env");
  if (env && !json_is_null(env)) {
    if (!json_is_object(env)) {
      snprintf(why, whysz, "\"env\" must be an object of strings");
      return false;
    }
    const char *k;
    json_t *v;
    json_object_foreach(env, k, v) {
      if (!*k || strchr(k, '=')) {
        snprintf(why, whysz, "env name \"%.64s\" is empty or contains '='", k);
        return false;
      }
      if (!json_is_string(v)) {
        snprintf(why, whysz, "env \"%.64s\" must be a string", k);
        return false;
      }
      if (!env_add(e, k, json_string_value(v))) {
        snprintf(why, whysz, "out of memory");
        return false;
      }
    }
  }
  return true;
}

/* Handle EXEC: validate, resolve the user, spawn.  Every outcome but a
 * protocol error leaves a session behind (running, or ended with FAILED). */
static void handle_exec(agent *a, agent_conn *c, uint32_t id, json_t *o) {
  agent_session *s = calloc(1, sizeof *s);
  if (!s) {
    conn_kill(c, "out of memory creating a session");
    return;
  }
  s->id = id;
  s->owner = c;
  s->pty_fd = s->in_fd = s->report_fd = -1;
  s->out_fd[0] = s->out_fd[1] = -1;
  s->start_ms = sbx_mono_ms();
  s->state = SS_SPAWNING;
  const char *exec_id = NULL;
  char why[256] = "";
  get_str(o, "exec_id", &exec_id, why, sizeof why);
  s->exec_id = strdup(exec_id ? exec_id : "");
  if (!s->exec_id) {
    free(s);
    conn_kill(c, "out of memory creating a session");
    return;
  }
  s->next = a->sessions;
  a->sessions = s;
  a->nsessions++;

  agent_fail f;
  const char *cmd = NULL, *cwd = NULL, *user = NULL, *stdin_b64 = NULL;
  char user_num[32];
  int64_t timeout_ms, rows, cols, cr_out, cr_err, grace;
  bool stdin_pipe, tty, kod;
  json_t *ju = json_object_get(o, "user");
  if (ju && json_is_integer(ju)) {
    snprintf(user_num, sizeof user_num, "%lld", (long long)json_integer_value(ju));
    user = user_num;
  } else if (!get_str(o, "user", &user, why, sizeof why)) {
    snprintf(why, sizeof why, "\"user\" must be a uid or a name");
  }
  bool ok = !why[0] && get_str(o, "cmd", &cmd, why, sizeof why) &&
            get_str(o, "cwd", &cwd, why, sizeof why) &&
            get_str(o, "stdin_b64", &stdin_b64, why, sizeof why) &&
            get_uint(o, "timeout_ms", INT32_MAX, 0, &timeout_ms, why, sizeof why) &&
            get_uint(o, "rows", 65535, 24, &rows, why, sizeof why) &&
            get_uint(o, "cols", 65535, 80, &cols, why, sizeof why) &&
            get_uint(o, "credit_stdout", INT64_MAX, 0, &cr_out, why, sizeof why) &&
            get_uint(o, "credit_stderr", INT64_MAX, 0, &cr_err, why, sizeof why) &&
            get_uint(o, "grace_ms", INT32_MAX, AGENT_GRACE_DEFAULT, &grace, why, sizeof why) &&
            get_bool(o, "stdin_pipe", &stdin_pipe, why, sizeof why) &&
            get_bool(o, "tty", &tty, why, sizeof why) &&
            get_bool(o, "kill_on_disconnect", &kod, why, sizeof why);
  if (ok && (!cmd || !*cmd)) {
    snprintf(why, sizeof why, "\"cmd\" is required and must not be empty");
    ok = false;
  }
  if (ok && (rows == 0 || cols == 0)) {
    snprintf(why, sizeof why, "\"rows\" and \"cols\" must be at least 1");
    ok = false;
  }
  __attribute__((cleanup(exec_spec_clear))) exec_spec spec = {0};
  if (ok)
    ok = exec_build(o, cmd, &spec, why, sizeof why);
  if (!ok) {
    agent_fail_setk(&f, "bad_args", "request", 0, "", "bad EXEC request: %s", why);
    session_fail(s, &f);
    return;
  }
  cleanup_free uint8_t *stdin_bytes = NULL;
  ssize_t stdin_n = 0;
  if (stdin_b64) {
    size_t l = strlen(stdin_b64);
    size_t dn = 0;
    stdin_bytes = sbx_b64_decode(stdin_b64, l, &dn);
    stdin_n = stdin_bytes ? (ssize_t)dn : -1;
    if (stdin_n < 0) {
      agent_fail_setk(&f, "bad_args", "request", 0, "", "bad EXEC request: %s",
                      stdin_bytes ? "\"stdin_b64\" is not valid base64" : "out of memory");
      session_fail(s, &f);
      return;
    }
  }
  if (a->nsessions > AGENT_MAX_SESSIONS) {
    agent_fail_setk(&f, "resource_limit", "request", EAGAIN, "",
                    "the agent already holds %d sessions (release ended ones)",
                    AGENT_MAX_SESSIONS);
    session_fail(s, &f);
    return;
  }
  s->tty = tty;
  s->kill_on_disconnect = kod;
  s->credit[0] = (uint64_t)cr_out;
  s->credit[1] = (uint64_t)cr_err;
  s->grace_ms = grace;
  s->in_pipe = stdin_pipe;

  agent_user u = {0};
  bool have_user = user && *user;
  if (have_user && agent_user_resolve(user, a->passwd_path, a->group_path, &u, &f) < 0) {
    session_fail(s, &f);
    return;
  }
  if (have_user && u.home && !env_has(spec.envp, spec.nenv, "HOME"))
    env_add(&spec, "HOME", u.home);
  if (tty && !env_has(spec.envp, spec.nenv, "TERM"))
    env_add(&spec, "TERM", "xterm-256color");

  agent_spawn_req req = {
      .argv = spec.argv,
      .envp = spec.envp,
      .cwd = cwd && *cwd ? cwd : "/",
      .user = have_user ? &u : NULL,
      .tty = tty,
      .rows = (unsigned short)rows,
      .cols = (unsigned short)cols,
      .stdin_open = stdin_pipe || stdin_b64,
  };
  agent_spawn_res res;
  int r = agent_spawn(&req, &res, &f);
  agent_user_clear(&u);
  if (r < 0) {
    session_fail(s, &f);
    return;
  }
  s->pid = res.pid;
  s->in_fd = res.in_fd;
  s->out_fd[0] = res.out_fd;
  s->out_fd[1] = res.err_fd;
  s->pty_fd = res.pty_fd;
  s->report_fd = res.report_fd;
  s->deadline_ms = timeout_ms > 0 ? s->start_ms + timeout_ms : 0;
  log_info("session=%u exec=%s spawned pid=%d cmd=%s tty=%d conn=%u", s->id, s->exec_id,
           (int)s->pid, cmd, tty, c->serial);
  if (stdin_n > 0 && session_stdin_append(s, stdin_bytes, (size_t)stdin_n) < 0)
    log_warn("session=%u out of memory buffering stdin", s->id);
  if (stdin_b64 && !stdin_pipe)
    session_stdin_eof(s); /* the bytes and the EOF go out once STARTED is sent */
}

/* The report pipe is readable: a report (never started) or EOF (exec'd). */
static void session_on_report(agent_session *s) {
  for (;;) {
    uint8_t *dst = (uint8_t *)&s->report + s->report_len;
    size_t room = sizeof s->report - s->report_len;
    ssize_t n = room ? read(s->report_fd, dst, room) : 0;
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && errno == EAGAIN)
      return;
    if (n > 0) {
      s->report_len += (size_t)n;
      continue;
    }
    break; /* EOF (or error, or a full report) */
  }
  close_fd(&s->report_fd);
  if (s->report_len > 0) {
    agent_fail f;
    agent_spawn_report_fail(&s->report, &f);
    session_fail(s, &f);
    return;
  }
  s->state = SS_RUNNING;
  if (s->owner)
    conn_send_json(s->owner, s->id, SBX_F_STARTED, json_pack("{s:i}", "pid", (int)s->pid));
  session_write_stdin(s);
  session_maybe_finish(s);
}

/* ---- frames from the gateway ---- */

static json_t *parse_object(agent_conn *c, const sbx_frame_hdr *h, const uint8_t *p) {
  json_error_t jerr;
  json_t *j = json_loadb((const char *)p, h->len, 0, &jerr);
  if (!j || !json_is_object(j)) {
    char why[300];
    snprintf(why, sizeof why, "%s payload is not a JSON object: %s", sbx_proto_type_name(h->type),
             j ? "wrong type" : jerr.text);
    json_decref(j);
    conn_kill(c, why);
    return NULL;
  }
  return j;
}

/* The gateway behind c is gone: its sessions lose their owner (and those
 * that asked for it, their processes). */
static void conn_orphan_sessions(agent *a, agent_conn *c) {
  for (agent_session *s = a->sessions; s; s = s->next) {
    if (s->owner != c)
      continue;
    s->owner = NULL;
    s->credit[0] = s->credit[1] = 0;
    if (s->kill_on_disconnect && s->state != SS_ENDED) {
      log_info("session=%u owner gone: killing its processes", s->id);
      s->disconnect_killed = true;
      session_kill_all(s, SIGKILL);
      /* nobody will take its remaining output: end it once reaped */
      session_close_outputs(s);
    }
  }
}

/* HELLO in answer to a SYNC: the nonce is the first member, so that the
 * gateway can find this frame by its bytes (agent/proto.h). */
static void send_hello(agent *a, agent_conn *c, const char *nonce) {
  json_t *list = json_array();
  for (agent_session *s = a->sessions; s && list; s = s->next) {
    if (s->released)
      continue;
    const char *st = s->state != SS_ENDED            ? "running"
                     : s->final_type == SBX_F_FAILED ? "failed"
                                                     : "exited";
    json_array_append_new(list, json_pack("{s:i,s:s,s:s,s:i,s:b,s:I,s:I,s:I}", "session",
                                          (json_int_t)s->id, "exec_id", s->exec_id, "state", st,
                                          "pid", (int)s->pid, "tty", s->tty, "stdout_bytes",
                                          (json_int_t)s->sent[0], "stderr_bytes",
                                          (json_int_t)s->sent[1], "frames", (json_int_t)s->frames));
  }
  json_t *hello = list ? json_pack("{s:s,s:i,s:s,s:i,s:o}", "nonce", nonce, "version",
                                   SBX_PROTO_VERSION, "agent", AGENT_NAME, "pid", (int)getpid(),
                                   "sessions", list)
                        : NULL;
  cleanup_free char *text = hello ? json_dumps(hello, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
  json_decref(hello);
  if (!text) {
    conn_kill(c, "out of memory building the hello");
    return;
  }
  conn_send(c, 0, SBX_F_HELLO, text, strlen(text));
}

static void handle_session_frame(agent *a, agent_conn *c, const sbx_frame_hdr *h,
                                 const uint8_t *p) {
  char why[128];
  agent_session *s = session_find(a, h->session);
  if (!s) {
    snprintf(why, sizeof why, "%s for unknown session %u", sbx_proto_type_name(h->type),
             h->session);
    conn_kill(c, why);
    return;
  }
  bool ended = s->state == SS_ENDED;
  switch (h->type) {
  case SBX_F_STDIN:
    if (ended)
      send_error(c, s->id, "stdin refused: the session has ended");
    else if (s->in_failed)
      ; /* STDIN_ERROR already told the gateway; drop quietly */
    else if (!s->in_pipe || s->in_fd < 0 || s->in_closing)
      stdin_refused(c, s, "the program's stdin is closed");
    else if (session_stdin_append(s, p, h->len) < 0)
      stdin_refused(c, s, "the stdin buffer is full (the program is not reading)");
    else if (s->state == SS_RUNNING)
      session_write_stdin(s);
    break;
  case SBX_F_STDIN_CLOSE:
    if (!ended)
      session_stdin_eof(s);
    break;
  case SBX_F_SIGNAL: {
    json_t *j = parse_object(c, h, p);
    if (!j)
      return;
    json_t *v = json_object_get(j, "signal");
    json_int_t sig = json_is_integer(v) ? json_integer_value(v) : 0;
    json_decref(j);
    if (sig < 1 || sig > 64) {
      send_error(c, s->id, "signal must be an integer from 1 to 64");
      break;
    }
    if (ended) {
      send_error(c, s->id, "signal refused: the session has ended");
      break;
    }
    pid_t target = s->pid;
    if (s->tty && s->pty_fd >= 0) {
      pid_t fg = tcgetpgrp(s->pty_fd);
      if (fg > 0)
        target = fg;
    }
    int r = kill(-target, (int)sig);
    if (r < 0 && errno == ESRCH && !s->main_exited)
      r = kill(s->pid, (int)sig);
    if (r < 0) {
      snprintf(why, sizeof why, "signal %d: %s", (int)sig, strerror(errno));
      send_error(c, s->id, why);
    } else {
      log_info("session=%u signal %d to group %d", s->id, (int)sig, (int)target);
    }
    break;
  }
  case SBX_F_RESIZE: {
    json_t *j = parse_object(c, h, p);
    if (!j)
      return;
    json_t *jr = json_object_get(j, "rows"), *jc = json_object_get(j, "cols");
    json_int_t rows = json_is_integer(jr) ? json_integer_value(jr) : 0;
    json_int_t cols = json_is_integer(jc) ? json_integer_value(jc) : 0;
    json_decref(j);
    if (!s->tty) {
      send_error(c, s->id, "resize refused: not a tty session");
    } else if (rows < 1 || rows > 65535 || cols < 1 || cols > 65535) {
      send_error(c, s->id, "rows and cols must be integers from 1 to 65535");
    } else if (ended || s->pty_fd < 0) {
      send_error(c, s->id, "resize refused: the session has ended");
    } else {
      struct winsize ws = {.ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols};
      if (ioctl(s->pty_fd, TIOCSWINSZ, &ws) < 0) {
        snprintf(why, sizeof why, "resize: %s", strerror(errno));
        send_error(c, s->id, why);
      }
    }
    break;
  }
  case SBX_F_CREDIT: {
    if (h->len != 8) {
      conn_kill(c, "CREDIT payload is not 8 bytes");
      return;
    }
    if (ended)
      break; /* crossed an EXITED in flight: harmless */
    if (s->owner != c) {
      send_error(c, s->id, "credit refused: this connection does not own the session");
      break;
    }
    for (int w = 0; w < 2; w++) {
      const uint8_t *q = p + 4 * w;
      uint32_t add = (uint32_t)q[0] << 24 | (uint32_t)q[1] << 16 | (uint32_t)q[2] << 8 | q[3];
      s->credit[w] += add;
      if (s->credit[w] > AGENT_CREDIT_MAX)
        s->credit[w] = AGENT_CREDIT_MAX;
    }
    break;
  }
  case SBX_F_ATTACH:
    log_info("session=%u attached by conn=%u", s->id, c->serial);
    s->owner = c;
    /* credit was granted by the previous consumer: the new one grants afresh */
    s->credit[0] = s->credit[1] = 0;
    if (ended && s->final)
      conn_send_json(c, s->id, s->final_type, json_incref(s->final));
    else if (s->state == SS_RUNNING)
      conn_send_json(c, s->id, SBX_F_STARTED, json_pack("{s:i}", "pid", (int)s->pid));
    break;
  case SBX_F_RELEASE:
    if (!ended) {
      send_error(c, s->id, "release refused: the session is still running");
    } else {
      log_debug("session=%u released", s->id);
      s->released = true;
    }
    break;
  default:
    snprintf(why, sizeof why, "unexpected %s frame from the gateway", sbx_proto_type_name(h->type));
    conn_kill(c, why);
  }
}

static void handle_frame(agent *a, agent_conn *c, const sbx_frame_hdr *h, const uint8_t *p) {
  char why[128];
  log_debug("conn=%u <- %s session=%u len=%u", c->serial, sbx_proto_type_name(h->type),
            h->session, h->len);
  if (h->type == SBX_F_HELLO) {
    if (h->session != 0) {
      conn_kill(c, "HELLO on a session other than 0");
      return;
    }
    json_t *j = parse_object(c, h, p);
    if (!j)
      return;
    json_t *v = json_object_get(j, "version");
    bool ok = json_is_integer(v) && json_integer_value(v) == SBX_PROTO_VERSION;
    json_decref(j);
    if (!ok)
      conn_kill(c, "gateway HELLO asks for a protocol version this agent does not speak");
    return;
  }
  if (h->type == SBX_F_SYNC && h->session == 0) {
    json_t *j = parse_object(c, h, p);
    if (!j)
      return;
    const char *nonce = json_string_value(json_object_get(j, "nonce"));
    bool ok = nonce && strlen(nonce) <= 64 && strspn(nonce, "0123456789abcdef") == strlen(nonce);
    if (ok && c->nonce[0] && strcmp(c->nonce, nonce) != 0) {
      /* a new gateway on the same byte stream: a port whose host side was
       * closed and reopened faster than we could see the hang-up.  What the
       * old one owned is orphaned as if its connection had closed, and what
       * was queued for it is dropped (the new one skips to our hello). */
      log_info("conn=%u a new gateway (another SYNC nonce): the old one is gone", c->serial);
      conn_orphan_sessions(a, c);
      c->out.head = c->out.len = 0;
    }
    if (ok) {
      snprintf(c->nonce, sizeof c->nonce, "%s", nonce);
      send_hello(a, c, nonce);
    } else {
      conn_kill(c, "SYNC without a hex nonce");
    }
    json_decref(j);
    return;
  }
  if (h->session == 0) {
    snprintf(why, sizeof why, "%s on session 0", sbx_proto_type_name(h->type));
    conn_kill(c, why);
    return;
  }
  if (h->type == SBX_F_EXEC) {
    if (session_find(a, h->session)) {
      snprintf(why, sizeof why, "EXEC for existing session %u", h->session);
      conn_kill(c, why);
      return;
    }
    json_t *j = parse_object(c, h, p);
    if (!j)
      return;
    handle_exec(a, c, h->session, j);
    json_decref(j);
    return;
  }
  handle_session_frame(a, c, h, p);
}

static void conn_on_readable(agent *a, agent_conn *c) {
  uint8_t buf[AGENT_READ_CHUNK];
  ssize_t n = read(c->fd, buf, sizeof buf);
  if (n < 0) {
    if (errno != EAGAIN && errno != EINTR)
      conn_kill(c, strerror(errno));
    return;
  }
  if (n == 0) {
    conn_kill(c, "peer closed the connection");
    return;
  }
  if (sbx_decoder_feed(c->dec, buf, (size_t)n) < 0) {
    conn_kill(c, "out of memory buffering input");
    return;
  }
  while (!c->dead) {
    sbx_frame_hdr h;
    const uint8_t *p;
    const char *why = NULL;
    int r = sbx_decoder_next(c->dec, &h, &p, &why);
    if (r == 0)
      break;
    if (r < 0) {
      conn_kill(c, why);
      break;
    }
    handle_frame(a, c, &h, p);
  }
}

/* Wrap a connected fd; NULL (fd closed) when out of memory. */
static agent_conn *conn_add(agent *a, int fd) {
  agent_conn *c = calloc(1, sizeof *c);
  if (!c || !(c->dec = sbx_decoder_new())) {
    free(c);
    close(fd);
    log_error("out of memory accepting a connection");
    return NULL;
  }
  c->fd = fd;
  c->serial = ++a->next_serial;
  c->next = a->conns;
  a->conns = c;
  a->nconns++;
  log_info("conn=%u accepted", c->serial); /* the gateway speaks first: SYNC */
  return c;
}

static void on_accept(agent *a) {
  for (;;) {
    int fd = accept4(a->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
        log_warn("accept: %s", strerror(errno));
      return;
    }
    if (a->nconns >= AGENT_MAX_CONNS) {
      log_warn("refusing a connection: %d already open", AGENT_MAX_CONNS);
      close(fd);
      continue;
    }
    if (!conn_add(a, fd))
      return;
  }
}

/* The port's host side: hand the port to a new connection once a host client
 * is there (the connection owns the fd; sweep reopens the port after it). */
static void port_service(agent *a) {
  if (!a->port.path || a->port_conn)
    return;
  if (a->port.fd < 0 && (a->port.fd = agent_port_open(a->port.path)) < 0) {
    log_error("open %s: %s", a->port.path, strerror(errno));
    return;
  }
  if (!agent_port_host_connected(a->port.fd))
    return;
  /* connected: data and hang-ups now come through poll, so SIGIO (one per
   * arriving buffer) is only noise until the port is reopened */
  int fl = fcntl(a->port.fd, F_GETFL);
  if (fl >= 0)
    fcntl(a->port.fd, F_SETFL, fl & ~O_ASYNC);
  a->port_conn = conn_add(a, a->port.fd);
  a->port.fd = -1;
  /* a port is a character device: no socket send buffer to size, and its
   * splice_write copies anyway; read and write it plainly */
  if (a->port_conn)
    a->port_conn->no_splice = true;
}

/* A line on the control port; "poweroff" is the only command. */
static void on_ctl(agent *a) {
  char buf[64];
  ssize_t n;
  while ((n = read(a->ctl.fd, buf, sizeof buf)) > 0) {
    for (ssize_t i = 0; i < n; i++) {
      if (buf[i] != '\n') {
        if (a->ctl_len < sizeof a->ctl_line - 1)
          a->ctl_line[a->ctl_len++] = buf[i];
        continue;
      }
      a->ctl_line[a->ctl_len] = 0;
      a->ctl_len = 0;
      if (strcmp(a->ctl_line, "poweroff") == 0) {
        log_info("control port: powering off");
        a->stopping = a->poweroff = true;
      } else {
        log_warn("control port: unknown command \"%.32s\"", a->ctl_line);
      }
    }
  }
}

/* ---- children ---- */

static void reap_children(agent *a) {
  for (;;) {
    int st;
    pid_t pid = waitpid(-1, &st, WNOHANG);
    if (pid <= 0)
      return;
    agent_session *s = NULL;
    for (agent_session *x = a->sessions; x; x = x->next)
      if (x->pid == pid && x->state != SS_ENDED && !x->main_exited)
        s = x;
    if (!s) {
      log_debug("reaped pid=%d (not a session's main process)", (int)pid);
      continue;
    }
    s->main_exited = true;
    s->status = st;
    s->exit_ms = sbx_mono_ms();
    s->grace_spent = 0;
    s->grace_tick = s->exit_ms;
    s->grace_clock = false;
    log_debug("session=%u main pid %d exited, status 0x%x", s->id, (int)pid, st);
  }
}

static void on_signal(agent *a) {
  struct signalfd_siginfo si;
  bool chld = false;
  while (read(a->sig_fd, &si, sizeof si) == (ssize_t)sizeof si) {
    if (si.ssi_signo == SIGCHLD) {
      chld = true;
    } else if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT) {
      log_info("signal %d: stopping", (int)si.ssi_signo);
      a->stopping = true;
    }
  }
  if (chld)
    reap_children(a);
}

/* ---- sweeping ---- */

static void sweep(agent *a) {
  for (agent_conn **pc = &a->conns; *pc;) {
    agent_conn *c = *pc;
    if (!c->dead) {
      pc = &c->next;
      continue;
    }
    conn_orphan_sessions(a, c);
    *pc = c->next;
    a->nconns--;
    if (c == a->port_conn)
      a->port_conn = NULL;
    close(c->fd);
    sbx_decoder_free(c->dec);
    free(c->out.buf);
    free(c);
  }
  for (agent_session **ps = &a->sessions; *ps;) {
    agent_session *s = *ps;
    if (!s->released) {
      ps = &s->next;
      continue;
    }
    *ps = s->next;
    a->nsessions--;
    session_free(s);
  }
}

/* ---- the loop ---- */

typedef enum { EV_LISTEN, EV_SIGNAL, EV_CTL, EV_CONN, EV_REPORT, EV_OUT, EV_ERR, EV_IN } ev_kind;
typedef struct ev_ref {
  ev_kind kind;
  void *ptr;
} ev_ref;

/* Advance timers: timeouts kill, grace periods expire. */
static void run_timers(agent *a, int64_t now) {
  for (agent_session *s = a->sessions; s; s = s->next) {
    if (s->state == SS_ENDED || s->released)
      continue;
    if (!s->main_exited && s->deadline_ms && now >= s->deadline_ms) {
      log_info("session=%u timeout: killing process group %d", s->id, (int)s->pid);
      s->timed_out = true;
      s->deadline_ms = 0;
      session_kill_all(s, SIGKILL);
    }
    if (s->state == SS_RUNNING && s->main_exited) {
      if (s->grace_clock)
        s->grace_spent += now - s->grace_tick;
      s->grace_tick = now;
      if (s->grace_spent >= s->grace_ms && (s->out_fd[0] >= 0 || s->out_fd[1] >= 0))
        session_grace_expired(s);
    }
  }
}

static int loop_once(agent *a) {
  int64_t now = sbx_mono_ms();
  run_timers(a, now);
  sweep(a); /* grace expiry may have sent frames; nothing to free yet, but cheap */
  port_service(a);

  size_t cap = 3 + a->nconns + a->nsessions * 4;
  cleanup_free struct pollfd *pfd = calloc(cap, sizeof *pfd);
  cleanup_free ev_ref *refs = calloc(cap, sizeof *refs);
  if (!pfd || !refs) {
    log_error("out of memory building the poll set");
    return -1;
  }
  size_t n = 0;
#define ADD(fd_, ev_, kind_, ptr_)                                                                 \
  do {                                                                                             \
    pfd[n].fd = (fd_);                                                                             \
    pfd[n].events = (short)(ev_);                                                                  \
    refs[n].kind = (kind_);                                                                        \
    refs[n].ptr = (ptr_);                                                                          \
    n++;                                                                                           \
  } while (0)
  ADD(a->listen_fd, a->nconns < AGENT_MAX_CONNS ? POLLIN : 0, EV_LISTEN, NULL);
  ADD(a->sig_fd, POLLIN, EV_SIGNAL, NULL);
  bool ctl_up = a->ctl.fd >= 0 && agent_port_host_connected(a->ctl.fd);
  if (ctl_up)
    ADD(a->ctl.fd, POLLIN, EV_CTL, NULL);
  for (agent_conn *c = a->conns; c; c = c->next) {
    short ev = c->out.len < AGENT_OUTQ_PAUSE ? POLLIN : 0;
    if (c->out.len)
      ev |= POLLOUT;
    ADD(c->fd, ev, EV_CONN, c);
  }
  int timeout = 60000;
  /* a port with no host client cannot be polled (it reports POLLHUP at once):
   * SIGIO wakes us when one connects; look again every second anyway */
  if ((a->port.path && !a->port_conn) || (a->ctl.fd >= 0 && !ctl_up))
    timeout = 1000;
  for (agent_session *s = a->sessions; s; s = s->next) {
    if (s->state == SS_ENDED)
      continue;
    if (s->report_fd >= 0)
      ADD(s->report_fd, POLLIN, EV_REPORT, s);
    if (s->state == SS_RUNNING) {
      bool can = s->owner && !s->owner->dead && s->owner->out.len < AGENT_OUTQ_PAUSE;
      for (int w = 0; w < 2; w++) {
        if (s->out_fd[w] < 0)
          continue;
        bool want = can && s->credit[w] > 0;
        /* with no credit still watch for the writers going away (POLLHUP),
         * unless that was seen already with data pending (it would spin) */
        if (want || !s->out_hup[w])
          ADD(s->out_fd[w], want ? POLLIN : 0, w == 0 ? EV_OUT : EV_ERR, s);
      }
      if (s->in_fd >= 0 && s->in_len > 0)
        ADD(s->in_fd, POLLOUT, EV_IN, s);
    }
    if (!s->main_exited && s->deadline_ms) {
      int64_t left = s->deadline_ms - now;
      if (left < timeout)
        timeout = left < 0 ? 0 : (int)left;
    }
    if (s->state == SS_RUNNING && s->main_exited) {
      s->grace_clock = !session_credit_blocked(s);
      if (s->grace_clock) {
        int64_t left = s->grace_ms - s->grace_spent;
        if (left < timeout)
          timeout = left < 0 ? 0 : (int)left;
      }
    }
  }
#undef ADD
  int r = poll(pfd, n, timeout);
  if (r < 0) {
    if (errno == EINTR)
      return 0;
    log_error("poll: %s", strerror(errno));
    return -1;
  }
  for (size_t i = 0; i < n && r > 0; i++) {
    short re = pfd[i].revents;
    if (!re)
      continue;
    switch (refs[i].kind) {
    case EV_LISTEN:
      on_accept(a);
      break;
    case EV_SIGNAL:
      on_signal(a);
      break;
    case EV_CTL:
      on_ctl(a);
      break;
    case EV_CONN: {
      agent_conn *c = refs[i].ptr;
      if (c->dead)
        break;
      if (re & POLLOUT)
        conn_flush(c);
      if (re & (POLLIN | POLLHUP | POLLERR))
        conn_on_readable(a, c);
      break;
    }
    case EV_REPORT: {
      agent_session *s = refs[i].ptr;
      if (!s->released && s->report_fd == pfd[i].fd)
        session_on_report(s);
      break;
    }
    case EV_OUT:
    case EV_ERR: {
      agent_session *s = refs[i].ptr;
      int w = refs[i].kind == EV_OUT ? 0 : 1;
      if (s->released || s->state != SS_RUNNING || s->out_fd[w] != pfd[i].fd)
        break;
      if ((re & POLLIN) && s->credit[w] > 0 && s->owner) {
        session_read_stream(s, w);
      } else if (re & (POLLHUP | POLLERR)) {
        /* polled without POLLIN (no credit), so revents cannot tell whether
         * bytes are left: ask the fd */
        int avail = 0;
        if (ioctl(s->out_fd[w], FIONREAD, &avail) == 0 && avail > 0)
          s->out_hup[w] = true; /* data left: wait for CREDIT, without spinning */
        else
          close_fd(&s->out_fd[w]); /* writers gone and nothing left */
      }
      session_maybe_finish(s);
      break;
    }
    case EV_IN: {
      agent_session *s = refs[i].ptr;
      if (!s->released && s->state == SS_RUNNING && s->in_fd == pfd[i].fd)
        session_write_stdin(s);
      break;
    }
    }
  }
  /* the main pid may have been reaped with the pipes already closed */
  for (agent_session *s = a->sessions; s; s = s->next)
    if (!s->released)
      session_maybe_finish(s);
  for (agent_conn *c = a->conns; c; c = c->next)
    conn_flush(c);
  sweep(a);
  return 0;
}

/* ---- setup ---- */

static int listen_on(const char *path) {
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  if (strlen(path) >= sizeof sa.sun_path) {
    log_error("socket path too long: %s", path);
    return -1;
  }
  strcpy(sa.sun_path, path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    log_error("socket: %s", strerror(errno));
    return -1;
  }
  unlink(path); /* a stale socket from an earlier run */
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, 64) < 0) {
    log_error("listen on %s: %s", path, strerror(errno));
    close(fd);
    return -1;
  }
  return fd;
}

/* Every session holds 4-5 descriptors, so the usual 1024 (what a VM guest's
 * init gets) caps a sandbox at ~200 execs: raise the soft limit to
 * AGENT_NOFILE (and the hard one with it where allowed: PID 1 of a VM is
 * root); a limit already that high is left alone.  The programs inherit it,
 * as they would a host's raised limit. */
static void raise_nofile(void) {
  struct rlimit r;
  if (getrlimit(RLIMIT_NOFILE, &r) < 0 || r.rlim_cur >= AGENT_NOFILE)
    return;
  struct rlimit want = {AGENT_NOFILE, r.rlim_max > AGENT_NOFILE ? r.rlim_max : AGENT_NOFILE};
  if (setrlimit(RLIMIT_NOFILE, &want) == 0)
    return;
  r.rlim_cur = r.rlim_max; /* not allowed to lift the hard limit: up to it */
  if (setrlimit(RLIMIT_NOFILE, &r) < 0)
    log_warn("raise RLIMIT_NOFILE: %s", strerror(errno));
}

static void usage(FILE *f) {
  fprintf(f, "usage: sbx-agent (--listen-fd N | --listen PATH | --port DEV [--ctl-port DEV])\n"
             "                 [--vm-root DIR] [--passwd PATH] [--group PATH]\n"
             "                 [--log-level error|warn|info|debug]\n"
             "  --port DEV      serve one gateway connection at a time on a virtio-serial port\n"
             "  --ctl-port DEV  read \"poweroff\" lines from a second port\n"
             "  --vm-root DIR   first move DIR's mount over / and chroot into it\n");
}

int main(int argc, char **argv) {
  /* Code in the sandbox runs as the same uid as this agent: without this it
   * could ptrace us and use our host-side descriptors (the listening socket,
   * agent.log).  Children get a fresh dumpable flag at execve. */
  prctl(PR_SET_DUMPABLE, 0);
  static const struct option opts[] = {
      {"listen-fd", required_argument, NULL, 'f'}, {"listen", required_argument, NULL, 'l'},
      {"passwd", required_argument, NULL, 'p'},    {"group", required_argument, NULL, 'g'},
      {"log-level", required_argument, NULL, 'L'}, {"help", no_argument, NULL, 'h'},
      {"port", required_argument, NULL, 'P'},      {"ctl-port", required_argument, NULL, 'C'},
      {"vm-root", required_argument, NULL, 'R'},
      {NULL, 0, NULL, 0}};
  agent a = {.listen_fd = -1, .sig_fd = -1, .passwd_path = "/etc/passwd",
             .group_path = "/etc/group", .port.fd = -1, .ctl.fd = -1};
  const char *vm_root = NULL;
  const char *listen_path = NULL;
  int listen_fd = -1;
  int opt;
  while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (opt) {
    case 'f': {
      char *end;
      long v = strtol(optarg, &end, 10);
      if (*end || v < 0 || v > INT_MAX) {
        fprintf(stderr, "sbx-agent: bad --listen-fd %s\n", optarg);
        return 2;
      }
      listen_fd = (int)v;
      break;
    }
    case 'l': listen_path = optarg; break;
    case 'P': a.port.path = optarg; break;
    case 'C': a.ctl.path = optarg; break;
    case 'R': vm_root = optarg; break;
    case 'p': a.passwd_path = optarg; break;
    case 'g': a.group_path = optarg; break;
    case 'L':
      if (sbx_log_parse_level(optarg, &sbx_log_threshold) < 0) {
        fprintf(stderr, "sbx-agent: bad --log-level %s\n", optarg);
        return 2;
      }
      break;
    case 'h': usage(stdout); return 0;
    default: usage(stderr); return 2;
    }
  }
  if ((listen_fd >= 0) + (listen_path != NULL) + (a.port.path != NULL) != 1 ||
      (a.ctl.path && !a.port.path) || optind != argc) {
    usage(stderr);
    return 2;
  }
  /* fds 0-2 must exist, or a pipe could land on them and be clobbered by
   * dup2 in a child */
  for (int fd = 0; fd < 3; fd++)
    if (fcntl(fd, F_GETFD) < 0 && open("/dev/null", O_RDWR) < 0)
      return 1;
  signal(SIGPIPE, SIG_IGN);
  raise_nofile();
  /* outside a pid namespace (tests), orphans of our sessions still come to
   * us, as they would to PID 1 */
  if (getpid() != 1)
    prctl(PR_SET_CHILD_SUBREAPER, 1);
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGCHLD);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGIO); /* a port's host side came or went: only wakes the loop */
  sigprocmask(SIG_BLOCK, &mask, NULL);
  a.sig_fd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
  if (a.sig_fd < 0) {
    log_error("signalfd: %s", strerror(errno));
    return 1;
  }
  if (vm_root && agent_vm_enter_root(vm_root) < 0) {
    log_error("enter root %s: %s", vm_root, strerror(errno));
    return 1;
  }
  if (a.port.path) {
    if ((a.port.fd = agent_port_open(a.port.path)) < 0 ||
        (a.ctl.path && (a.ctl.fd = agent_port_open(a.ctl.path)) < 0)) {
      log_error("open port %s: %s", a.port.fd < 0 ? a.port.path : a.ctl.path, strerror(errno));
      return 1;
    }
  } else if (listen_path) {
    a.listen_fd = listen_on(listen_path);
    if (a.listen_fd < 0)
      return 1;
  } else {
    a.listen_fd = listen_fd;
    if (sbx_set_nonblock(listen_fd, true) < 0 || sbx_set_cloexec(listen_fd, true) < 0) {
      log_error("--listen-fd %d: %s", listen_fd, strerror(errno));
      return 1;
    }
  }
  if (a.port.path) {
    /* the vm driver waits for this line on the console: print it whatever
     * the level (single-threaded: nothing else logs meanwhile) */
    sbx_log_level level = sbx_log_threshold;
    if (sbx_log_threshold < SBX_LOG_INFO)
      sbx_log_threshold = SBX_LOG_INFO;
    log_info("%s pid=%d serving port %s", AGENT_NAME, (int)getpid(), a.port.path);
    sbx_log_threshold = level;
  } else if (listen_path)
    log_info("%s pid=%d listening on %s", AGENT_NAME, (int)getpid(), listen_path);
  else
    log_info("%s pid=%d listening on fd %d", AGENT_NAME, (int)getpid(), listen_fd);
  while (!a.stopping)
    if (loop_once(&a) < 0)
      return 1;
  for (agent_session *s = a.sessions; s; s = s->next)
    if (s->state != SS_ENDED)
      session_kill_all(s, SIGKILL);
  for (agent_conn *c = a.conns; c; c = c->next)
    conn_kill(c, "agent stopping");
  sweep(&a);
  while (a.sessions) {
    agent_session *s = a.sessions;
    a.sessions = s->next;
    session_free(s);
  }
  if (listen_path)
    unlink(listen_path);
  if (a.poweroff)
    agent_vm_poweroff();
  return 0;
}
