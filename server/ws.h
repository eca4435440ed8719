/* ws.h - the WebSocket side of the one port (SPEC "WebSocket streaming").
 *
 * The listener hands every connection whose request path ends in "/ws" to
 * the loop (LOOP_JOB_WS), which adopts it into libwebsockets with ws_adopt()
 * on the loop thread.  The protocol callbacks live in ws.c; see loop_int.h. */
#ifndef SBX_SERVER_WS_H
#define SBX_SERVER_WS_H

struct loop;

/* Take ownership of a connected client socket whose request is a /ws path. */
void ws_adopt(struct loop *l, int fd);

#endif
