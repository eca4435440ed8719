/* proto.h - the agent protocol, shared by sbx-agent (in the sandbox) and the
 * gateway (vmm/agent_conn.c).  It runs over any reliable byte stream (a unix
 * socket today, virtio-serial or vsock tomorrow): nothing here assumes a
 * local process.
 *
 * Frame: [u32 payload length, big-endian][u32 session, big-endian][u8 type][payload]
 * The payload length never exceeds SBX_PROTO_MAX_PAYLOAD; a frame that does, an
 * unknown type, or a control payload that is not the JSON object its type
 * needs, is a protocol error: the receiver logs the reason and closes that
 * connection.  Session 0 is the connection itself (hello, list).
 *
 * Control payloads are JSON objects (listed per type below); data payloads
 * (STDIN, STDOUT, STDERR) are raw bytes.
 *
 * Flow control is by credit: the agent reads a program's stdout (or stderr)
 * only while the gateway has granted it room for that stream, and never sends
 * more bytes of a stream than granted.  EXEC carries the initial credit;
 * CREDIT frames add to it.  So a slow consumer slows the program instead of
 * growing memory on either side.
 */
#ifndef SBX_AGENT_PROTO_H
#define SBX_AGENT_PROTO_H

#include <stddef.h>
#include <stdint.h>

#define SBX_PROTO_VERSION 2 /* 2: HELLO only in answer to SYNC */
#define SBX_PROTO_HDR 9u
#define SBX_PROTO_MAX_PAYLOAD (1u << 20) /* 1 MiB: JSON exec specs with big env/stdin */
#define SBX_PROTO_CHUNK (256u * 1024)     /* largest STDOUT/STDERR payload the agent sends */

typedef enum sbx_frame_type {
  /* both directions, session 0 */
  SBX_F_HELLO = 1, /* a->g in answer to each SYNC, the nonce first (the gateway finds the
                      hello by that prefix in a stream that may begin with another
                      connection's leftovers):
                      {"nonce":"<SYNC's>","version":2,"agent":"sbx-agent 0.1","pid":1,
                      "sessions":[{"session":7,"exec_id":"ex_..","state":"running"|"exited"|
                                   "failed","pid":42,"tty":bool,"stdout_bytes":n,"stderr_bytes":n,
                                   "frames":n}]}
                      (every session not yet RELEASEd; *_bytes: output already sent, so a
                      new gateway continues the stream offsets, and frames the seq numbers, where they were)
                      g->a reply: {"version":2} (a version the agent does not speak: it
                      closes the connection) */
  SBX_F_SYNC = 10, /* g->a first on every connection: {"nonce":"<32 hex>"}; the gateway
                      repeats it until the matching HELLO comes (a SYNC written into a
                      port the agent had not reopened yet is lost) */
  /* gateway -> agent */
  SBX_F_EXEC = 2,        /* new session: {"exec_id","cmd","args":[..],"cwd","env":{..} (the
                            complete environment), "user" (uid or name, optional),
                            "timeout_ms" (0 = none), "stdin_b64" (optional; written then
                            closed), "stdin_pipe": bool (keep stdin open for STDIN frames;
                            false and no stdin_b64 = EOF at once), "tty": bool, "rows","cols",
                            "credit_stdout","credit_stderr" (initial credit, bytes),
                            "grace_ms" (drain time after the main process exits; default 200;
                            time spent waiting for credit does not count),
                            "kill_on_disconnect": bool (SIGKILL the session's processes when
                            the owning connection closes; otherwise it keeps running unowned
                            with no credit until ATTACHed)}.  Absent/null fields take defaults:
                            args [], cwd "/", env {} , user = the agent's, timeout 0, rows 24,
                            cols 80, credits 0.  Bad field values end the session with FAILED
                            kind "bad_args", stage "request". */
  SBX_F_STDIN = 3,       /* raw bytes for the program's stdin */
  SBX_F_STDIN_CLOSE = 4, /* no payload: close the program's stdin (EOF) */
  SBX_F_SIGNAL = 5,      /* {"signal": n} to the session's whole process group */
  SBX_F_RESIZE = 6,      /* {"rows": r, "cols": c} (tty sessions) */
  SBX_F_CREDIT = 7,      /* 8 bytes: u32 stdout bytes, u32 stderr bytes (big-endian), added */
  SBX_F_ATTACH = 8,      /* no payload: this connection now owns the session (after a
                            reconnect); the agent resends EXITED/FAILED if it already ended,
                            or STARTED if it runs.  Credit restarts at 0: grant afresh. */
  SBX_F_RELEASE = 9,     /* no payload: the gateway has recorded the end; forget the session */
  /* agent -> gateway */
  SBX_F_STARTED = 16,     /* {"pid": n} host-invisible pid inside the sandbox */
  SBX_F_STDOUT = 17,      /* raw bytes */
  SBX_F_STDERR = 18,      /* raw bytes */
  SBX_F_EXITED = 19,      /* {"exit_code": n (-1 if killed), "signal": n|null,
                             "timed_out": bool, "disconnect_killed": bool (its owner
                             connection went away with kill_on_disconnect), "duration_ms": n} -- after every byte of
                             output the session will send */
  SBX_F_FAILED = 20,      /* the program never started: {"kind","errno","errno_name",
                             "path","stage","message"} (SPEC's failure object) */
  SBX_F_STDIN_ERROR = 21, /* a stdin write failed (not terminal): failure object */
  SBX_F_STDIN_ACK = 23,   /* 4 bytes: u32 stdin bytes written to the program since the last
                             ACK (big-endian).  The gateway keeps what it sent minus what was
                             acknowledged under the agent's stdin buffer, pacing its clients */
  SBX_F_ERROR = 22,       /* a request about this session was refused:
                             {"message": "..."}; session 0: a protocol complaint */
} sbx_frame_type;

typedef struct sbx_frame_hdr {
  uint32_t len; /* payload bytes */
  uint32_t session;
  uint8_t type;
} sbx_frame_hdr;

/* Encode the 9-byte header into out. */
void sbx_proto_put_hdr(uint8_t out[SBX_PROTO_HDR], uint32_t len, uint32_t session, uint8_t type);

/* Decode a header from buf (at least SBX_PROTO_HDR bytes).  Returns 0, or -1 and
 * a static reason in *why when the length exceeds SBX_PROTO_MAX_PAYLOAD or the
 * type is not a known sbx_frame_type. */
int sbx_proto_get_hdr(const uint8_t *buf, sbx_frame_hdr *h, const char **why);

/* Name of a type for logs ("EXEC", ...), "?" if unknown. */
const char *sbx_proto_type_name(uint8_t type);

/* Incremental decoder: feed it bytes as they arrive, take whole frames out.
 * It owns one buffer that grows to at most header + max payload. */
typedef struct sbx_decoder sbx_decoder;
sbx_decoder *sbx_decoder_new(void);
void sbx_decoder_free(sbx_decoder *d);
/* Append n bytes.  Returns 0, or -1 on allocation failure. */
int sbx_decoder_feed(sbx_decoder *d, const void *data, size_t n);
/* Take the next whole frame.  Returns 1 and fills *h and *payload (valid until
 * the next feed/next call; NUL-terminated for convenience, the NUL not counted)
 * when one is ready, 0 when more bytes are needed, -1 on a protocol error with a
 * static reason in *why (the connection must then be closed). */
int sbx_decoder_next(sbx_decoder *d, sbx_frame_hdr *h, const uint8_t **payload, const char **why);
/* For a reader that puts big payloads in place instead of through the
 * decoder: when next() said 0, peek() reports the frame that is started.
 * Returns 1 with its (validated) header in *h and how many of its payload
 * bytes are buffered in *have (< h->len), 0 when not even the header is
 * whole, -1 on a protocol error as next() would.  divert() then copies those
 * buffered bytes to dst (room for h->len), forgets them and the header, and
 * returns how many; the caller reads the rest of the payload itself and
 * feeds only what follows it. */
int sbx_decoder_peek(sbx_decoder *d, sbx_frame_hdr *h, size_t *have, const char **why);
size_t sbx_decoder_divert(sbx_decoder *d, uint8_t *dst);

#endif
