/* loop.h - "the loop": the one thread that owns live state.
 *
 * It runs the libwebsockets service and owns every agent connection (one per
 * running sandbox, a "link") and every exec session.  Other threads never
 * touch that state: they post a loop_job and get it back through the job's
 * done() callback, which runs ON THE LOOP THREAD (for a REST request it
 * typically stores nothing more and calls MHD_resume_connection).
 *
 * Ownership: the poster allocates the job and keeps it alive until done() has
 * run; the loop never frees a job.  Results (buffers, failure objects) are
 * moved into the job and freed by loop_job_clear().
 */
#ifndef SBX_SERVER_LOOP_H
#define SBX_SERVER_LOOP_H

#include <jansson.h>
#include <libwebsockets.h>
#include <stdbool.h>
#include <stdint.h>

#include "../common/buf.h"
#include "../common/err.h"

typedef struct loop loop;

typedef enum {
  LOOP_JOB_LINK,   /* connect to the sandbox's agent (if not yet) and wait for its hello */
  LOOP_JOB_UNLINK, /* drop the sandbox's agent connection; its sessions end as "killed" */
  LOOP_JOB_EXEC,   /* start an exec; done at STARTED (background) or at its end */
  LOOP_JOB_WS,     /* adopt a WebSocket connection (fd) */
  /* control of a running exec, by exec_id; rc < 0 with exec_not_found when
   * the loop does not hold it, sandbox_not_running when it has ended */
  LOOP_JOB_SIGNAL, /* signal -> the exec's process group */
  LOOP_JOB_STDIN,  /* data/len appended to stdin, then EOF if eof */
  LOOP_JOB_RESIZE, /* rows x cols (tty execs) */
  LOOP_JOB_WAIT,   /* done when the exec ends or timeout_ms passes (rc 0 both) */
  LOOP_JOB_OUTPUT, /* copy retained output of `stream` from `offset` */
  LOOP_JOB_RELEASE_WAITS, /* answer every pending WAIT now (shutdown) */
  LOOP_JOB_COUNTS,        /* res.out_bytes/err_bytes of a running exec so far */
} loop_job_kind;

typedef struct exec_result {
  int pid;
  bool started;
  json_t *failure; /* the program never started: SPEC failure object */
  bool exited;
  int exit_code, signal;
  bool timed_out;
  int64_t duration_ms;
  sbx_chunks out, err; /* collected output, at most the cap each */
  bool out_truncated, err_truncated;
  uint64_t out_bytes, err_bytes; /* everything the program wrote */
} exec_result;

typedef struct loop_job {
  loop_job_kind kind;
  struct loop_job *next; /* the loop's queue link */
  json_t *sandbox;       /* LINK/UNLINK/EXEC: the sandbox object (reference held by poster) */
  /* EXEC */
  json_t *agent_spec;    /* the EXEC payload without "session" (reference held by poster) */
  char exec_id[32];
  bool background;       /* done() at STARTED instead of at the end */
  uint64_t max_output;   /* per-stream cap of collected output */
  exec_result res;
  /* WS */
  int fd;
  /* control */
  int signal;
  bool kill; /* SIGNAL sent by the kill route: the exec ends as "killed" */
  const uint8_t *data; /* STDIN: borrowed from the poster */
  size_t len;
  bool eof;
  int rows, cols;
  int64_t timeout_ms;
  lws_sorted_usec_list_t timer; /* WAIT timeout, loop-owned */
  struct loop_job *next_waiter;
  bool timed_out_wait;
  /* OUTPUT: in stream/offset; out bytes (malloc'd, freed by loop_job_clear),
   * the first offset returned, the next one, whether the stream has ended,
   * and whether the exec is in memory at all */
  int stream;
  uint64_t offset;
  uint8_t *out;
  size_t out_len;
  uint64_t out_from, out_next;
  bool out_complete;
  /* outcome: rc < 0 means the job itself failed (err says why) */
  int rc;
  sbx_err err;
  void (*done)(struct loop_job *job);
  void *ud;
  void *ud2; /* loop-private */
} loop_job;

/* Create the lws context and start the loop thread. */
int loop_start(loop **out, sbx_err *err);
/* Hand a job to the loop (any thread). */
void loop_post(loop *l, loop_job *job);
/* Post a job and block until it is done (not from the loop thread).  For
 * short jobs (LINK, UNLINK) run from MHD threads or main.  Returns job->rc. */
int loop_call(loop *l, loop_job *job);
/* Finish every job still waiting with kind capacity ("server shutting down"),
 * then stop the thread and free everything.  Agent connections close; the
 * sandboxes keep running. */
void loop_stop(loop *l);
/* Free what a finished job holds (output buffers, failure). */
void loop_job_clear(loop_job *job);

#endif
