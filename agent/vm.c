/* vm.c - the agent's side of a microVM: entering the real root and the
 * virtio-serial ports (see agent.h). */
#include "agent/agent.h"
#include "common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <unistd.h>

int agent_vm_enter_root(const char *dir) {
  if (chdir(dir) < 0 || mount(dir, "/", NULL, MS_MOVE, NULL) < 0 || chroot(".") < 0 ||
      chdir("/") < 0)
    return -1;
  return 0;
}

int agent_port_open(const char *path) {
  int fd = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
  if (fd < 0)
    return -1;
  /* F_SETSIG makes the signal carry si_fd and the band; SIGIO is blocked and
   * read through the agent's signalfd, so it only wakes the loop */
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETOWN, getpid()) < 0 || fcntl(fd, F_SETSIG, SIGIO) < 0 ||
      fcntl(fd, F_SETFL, fl | O_ASYNC) < 0) {
    int e = errno;
    close(fd);
    errno = e;
    return -1;
  }
  return fd;
}

bool agent_port_host_connected(int fd) {
  struct pollfd p = {.fd = fd, .events = POLLIN | POLLOUT};
  return poll(&p, 1, 0) >= 0 && !(p.revents & (POLLHUP | POLLERR | POLLNVAL));
}

void agent_vm_poweroff(void) {
  sync();
  if (reboot(RB_POWER_OFF) < 0)
    log_error("power off: %s", strerror(errno));
}
