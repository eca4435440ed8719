/* listener.h - the one port: accept, peek the request line, dispatch.
 *
 * A connection whose request path (before any '?') ends in "/ws" goes to the
 * loop (the WebSocket side); everything else to libmicrohttpd.  The peek uses
 * MSG_PEEK, so the chosen side reads the request from the first byte.
 * Connections that send no request line within the handshake timeout are
 * closed, and at most `max_pending` may wait at once (a cheap refusal before
 * any allocation when over). */
#ifndef SBX_SERVER_LISTENER_H
#define SBX_SERVER_LISTENER_H

#include "../common/err.h"

typedef struct listener listener;

/* Bind host:port (port 0 picks one) and start the accept thread. */
int listener_start(const char *host, int port, listener **out, sbx_err *err);
/* The port actually bound. */
int listener_port(const listener *l);
/* libmicrohttpd closed a REST connection from this address (for the
 * per-address and total caps; wired to MHD_OPTION_NOTIFY_CONNECTION). */
struct sockaddr;
void listener_conn_closed(const struct sockaddr *sa);

/* Stop accepting, close pending connections, join the thread, free. */
void listener_stop(listener *l);

#endif
