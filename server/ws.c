#include "ws.h"

#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../common/util.h"

void ws_adopt(int fd) {
  static const char body[] =
      "{\"error\":{\"kind\":\"not_implemented\",\"message\":\"WebSocket streaming is not "
      "available in this version of sbxd; use POST /v1/sandboxes/{ref}/exec\"}}";
  char resp[512];
  char id[40];
  sbx_new_id("req_", id, sizeof id);
  int n = snprintf(resp, sizeof resp,
                   "HTTP/1.1 501 Not Implemented\r\nContent-Type: application/json\r\n"
                   "Content-Length: %zu\r\nX-Request-Id: %s\r\nConnection: close\r\n\r\n%s",
                   sizeof body - 1, id, body);
  /* The request head is already in the socket buffer (the listener peeked
   * it): read it off so that closing does not reset the connection before
   * the client has read the answer. */
  char sink[8192];
  while (recv(fd, sink, sizeof sink, MSG_DONTWAIT) > 0)
    ;
  if (send(fd, resp, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT) != n)
    log_debug("ws refusal not fully sent");
  shutdown(fd, SHUT_WR);
  close(fd);
  log_info("ws refused: streaming not implemented");
}
