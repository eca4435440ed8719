/* ws.h - the WebSocket side of the one port.
 *
 * The listener hands every connection whose request path ends in "/ws" to
 * the loop (LOOP_JOB_WS), which calls ws_adopt() on the loop thread.
 * WebSocket streaming is the next milestone; until then ws_adopt() answers
 * every such request with a clear HTTP 501 JSON refusal and closes. */
#ifndef SBX_SERVER_WS_H
#define SBX_SERVER_WS_H

/* Take ownership of a connected client socket whose request is a /ws path. */
void ws_adopt(int fd);

#endif
