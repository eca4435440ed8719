/* agent_conn.h - the gateway side of one agent connection.
 *
 * Event-loop agnostic: the owner (server/loop.c) polls the fd and calls
 * agent_conn_read() when it is readable and agent_conn_flush() when it is
 * writable and agent_conn_want_write() says there is queued data.  Frames
 * arrive through the on_frame callback, one at a time, in order.
 *
 * Ownership: agent_conn owns the fd (closes it in agent_conn_free) and its
 * buffers.  The callback must not free the agent_conn it is called for; it
 * returns < 0 to ask the reader to stop (then agent_conn_read returns < 0 and
 * the owner frees the connection after the callback stack has unwound).
 */
#ifndef SBX_VMM_AGENT_CONN_H
#define SBX_VMM_AGENT_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../agent/proto.h"
#include "../common/err.h"

typedef struct agent_conn agent_conn;

/* Called for each whole frame; payload is NUL-terminated (not counted). */
typedef int (*agent_frame_cb)(agent_conn *c, const sbx_frame_hdr *h, const uint8_t *payload,
                              void *ud);

/* Optional: where a big STDOUT/STDERR payload goes, so it is read from the
 * socket straight into its final place instead of through the frame buffer.
 * Called when such a frame's header is in and most of its payload is still
 * to come; returns room for h->len + 1 bytes and sets *block to what free()
 * releases, or returns NULL to have the frame buffered as usual.  The frame
 * callback then gets that room as its payload, and may keep it with
 * agent_conn_take_block(); otherwise it is freed after the callback (or with
 * the connection, when that goes first). */
typedef uint8_t *(*agent_sink_cb)(agent_conn *c, const sbx_frame_hdr *h, void *ud, void **block);
void agent_conn_set_sink(agent_conn *c, agent_sink_cb sink);
/* In a frame callback: the block of the payload being delivered, now the
 * caller's to free; NULL when the payload came through the frame buffer. */
void *agent_conn_take_block(agent_conn *c);

/* Wrap a connected fd (made non-blocking here). */
agent_conn *agent_conn_new(int fd, agent_frame_cb cb, void *ud);
void agent_conn_free(agent_conn *c);
int agent_conn_fd(const agent_conn *c);

/* Resynchronize: drop every byte until a HELLO frame whose payload starts
 * with {"nonce":"<nonce>" (the agent's answer to our SYNC) and decode from
 * there.  A byte stream that may carry leftovers of an earlier connection
 * (a virtio-serial port reconnected) is usable this way; a forged hello would
 * need the nonce.  -1 on allocation failure. */
int agent_conn_sync(agent_conn *c, const char *nonce);
/* True until the expected HELLO has been found. */
bool agent_conn_syncing(const agent_conn *c);

/* Read what is available and dispatch whole frames.  Returns 0 while the
 * connection is fine, -1 on EOF, a read error or a protocol error (the reason
 * is in *err), or when a callback asked to stop. */
int agent_conn_read(agent_conn *c, sbx_err *err);

/* Queue a frame.  Never blocks; the queue has no hard cap because output
 * flows only from the agent to us (credit-limited) and what we send is small
 * control frames and stdin the caller bounds.  -1 on allocation failure or an
 * oversized payload. */
int agent_conn_send(agent_conn *c, uint32_t session, uint8_t type, const void *payload,
                    size_t len);
/* Convenience: queue a control frame with a JSON object payload (not stolen). */
struct json_t;
int agent_conn_send_json(agent_conn *c, uint32_t session, uint8_t type, struct json_t *obj);
/* Queue a CREDIT frame granting more bytes of stdout/stderr. */
int agent_conn_send_credit(agent_conn *c, uint32_t session, uint32_t out, uint32_t err_bytes);

/* True while queued bytes wait for the fd to become writable. */
bool agent_conn_want_write(const agent_conn *c);
/* Write queued bytes; 0 (maybe partially flushed) or -1 on a write error. */
int agent_conn_flush(agent_conn *c, sbx_err *err);

#endif
