#include "util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

sbx_log_level sbx_log_threshold = SBX_LOG_INFO;

void sbx_closep(int *fd) {
  if (*fd >= 0) {
    int saved = errno;
    close(*fd);
    errno = saved;
    *fd = -1;
  }
}

int sbx_log_parse_level(const char *name, sbx_log_level *out) {
  static const char *names[] = {"error", "warn", "info", "debug"};
  for (size_t i = 0; i < SBX_ARRAY_LEN(names); i++)
    if (strcmp(name, names[i]) == 0) {
      *out = (sbx_log_level)i;
      return 0;
    }
  return -1;
}

void sbx_log(sbx_log_level level, const char *fmt, ...) {
  static const char *tags[] = {"error", "warn", "info", "debug"};
  if (level > sbx_log_threshold)
    return;
  char ts[32], line[4096];
  sbx_rfc3339(sbx_now_ms(), ts, sizeof ts);
  int n = snprintf(line, sizeof line, "%s level=%s ", ts, tags[level]);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
  va_end(ap);
  size_t len = strlen(line);
  if (len < sizeof line - 1)
    line[len++] = '\n';
  else
    line[sizeof line - 2] = '\n', len = sizeof line - 1;
  /* one write() per line so concurrent threads never interleave a line */
  ssize_t r = write(STDERR_FILENO, line, len);
  (void)r;
}

void sbx_new_id(const char *prefix, char *out, size_t outsz) {
  uint8_t b[8];
  if (getrandom(b, sizeof b, 0) != (ssize_t)sizeof b) {
    /* getrandom on Linux >= 3.17 does not fail for 8 bytes; fall back anyway */
    uint64_t v = (uint64_t)sbx_mono_ns() ^ ((uint64_t)getpid() << 32);
    memcpy(b, &v, sizeof b);
  }
  snprintf(out, outsz, "%s%02x%02x%02x%02x%02x%02x%02x%02x", prefix, b[0], b[1], b[2], b[3],
           b[4], b[5], b[6], b[7]);
}

int64_t sbx_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t sbx_mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int64_t sbx_mono_ms(void) { return sbx_mono_ns() / 1000000; }

void sbx_sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

void sbx_rfc3339(int64_t ms, char *out, size_t outsz) {
  time_t secs = (time_t)(ms / 1000);
  struct tm tm;
  gmtime_r(&secs, &tm);
  snprintf(out, outsz, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
           tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ms % 1000));
}

static bool name_char(char c, bool first) {
  if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))
    return true;
  return !first && (c == '_' || c == '.' || c == '-');
}

bool sbx_valid_name(const char *s) {
  size_t n = s ? strlen(s) : 0;
  if (n == 0 || n > 63)
    return false;
  for (size_t i = 0; i < n; i++)
    if (!name_char(s[i], i == 0))
      return false;
  return true;
}

bool sbx_is_id(const char *s, const char *prefix) {
  size_t p = strlen(prefix);
  if (!s || strncmp(s, prefix, p) != 0 || strlen(s) != p + 16)
    return false;
  for (size_t i = p; i < p + 16; i++)
    if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
      return false;
  return true;
}

int sbx_set_nonblock(int fd, bool on) {
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0)
    return -1;
  return fcntl(fd, F_SETFL, on ? (fl | O_NONBLOCK) : (fl & ~O_NONBLOCK));
}

int sbx_set_cloexec(int fd, bool on) {
  int fl = fcntl(fd, F_GETFD);
  if (fl < 0)
    return -1;
  return fcntl(fd, F_SETFD, on ? (fl | FD_CLOEXEC) : (fl & ~FD_CLOEXEC));
}

int sbx_write_all(int fd, const void *buf, size_t n) {
  const char *p = buf;
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

ssize_t sbx_read_full(int fd, void *buf, size_t n) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = read(fd, (char *)buf + got, n - got);
    if (r < 0) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    if (r == 0)
      break;
    got += (size_t)r;
  }
  return (ssize_t)got;
}

char *sbx_read_file(const char *path, size_t max, size_t *len_out) {
  cleanup_fd int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return NULL;
  char *buf = malloc(max + 1);
  if (!buf)
    return NULL;
  ssize_t n = sbx_read_full(fd, buf, max);
  if (n < 0) {
    free(buf);
    return NULL;
  }
  buf[n] = '\0';
  if (len_out)
    *len_out = (size_t)n;
  return buf;
}

int sbx_write_file(const char *path, const char *data) {
  cleanup_fd int fd = open(path, O_WRONLY | O_TRUNC | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0)
    return -1;
  return sbx_write_all(fd, data, strlen(data));
}

int sbx_mkdir_p(const char *path, mode_t mode) {
  char buf[4096];
  if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
    return errno = ENAMETOOLONG, -1;
  for (char *p = buf + 1; *p; p++) {
    if (*p != '/')
      continue;
    *p = '\0';
    if (mkdir(buf, mode) < 0 && errno != EEXIST)
      return -1;
    *p = '/';
  }
  if (mkdir(buf, mode) < 0 && errno != EEXIST)
    return -1;
  return 0;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st, (void)ftw;
  int r = (flag == FTW_DP) ? rmdir(path) : unlink(path);
  return (r < 0 && errno != ENOENT) ? -1 : 0;
}

int sbx_rm_rf(const char *path) {
  if (nftw(path, rm_one, 64, FTW_DEPTH | FTW_PHYS | FTW_MOUNT) < 0 && errno != ENOENT)
    return -1;
  return 0;
}
