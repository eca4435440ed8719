/* util.h - small helpers every module shares: cleanup attributes, logging,
 * ids, times and fd I/O.  Nothing here allocates behind the caller's back
 * except where the contract says "caller frees". */
#ifndef SBX_COMMON_UTIL_H
#define SBX_COMMON_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/types.h>

/* ---- cleanup attributes (bubblewrap / crun style) ---- */
static inline void sbx_freep(void *p) { free(*(void **)p); }
void sbx_closep(int *fd); /* closes if >= 0, keeps errno */
#define cleanup_free __attribute__((cleanup(sbx_freep)))
#define cleanup_fd __attribute__((cleanup(sbx_closep)))

/* Hand ownership out of a cleanup variable: returns the value and nulls it. */
static inline void *sbx_steal_pointer(void *pp) {
  void **p = (void **)pp;
  void *v = *p;
  *p = NULL;
  return v;
}
#define steal_pointer(pp) ((__typeof__(*(pp)))sbx_steal_pointer(pp))
static inline int sbx_steal_fd(int *fd) {
  int v = *fd;
  *fd = -1;
  return v;
}

#define SBX_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* ---- logging: one line per event, "ts level msg" to stderr ---- */
typedef enum { SBX_LOG_ERROR, SBX_LOG_WARN, SBX_LOG_INFO, SBX_LOG_DEBUG } sbx_log_level;
extern sbx_log_level sbx_log_threshold;
/* Parse "error|warn|info|debug"; returns -1 on an unknown name. */
int sbx_log_parse_level(const char *name, sbx_log_level *out);
void sbx_log(sbx_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define log_error(...) sbx_log(SBX_LOG_ERROR, __VA_ARGS__)
#define log_warn(...) sbx_log(SBX_LOG_WARN, __VA_ARGS__)
#define log_info(...) sbx_log(SBX_LOG_INFO, __VA_ARGS__)
#define log_debug(...)                                                         \
  do {                                                                         \
    if (sbx_log_threshold >= SBX_LOG_DEBUG)                                    \
      sbx_log(SBX_LOG_DEBUG, __VA_ARGS__);                                     \
  } while (0)

/* ---- ids and times ---- */
/* Writes prefix + 16 lowercase hex random digits + NUL into out (size >= strlen(prefix)+17). */
void sbx_new_id(const char *prefix, char *out, size_t outsz);
/* Wall clock in milliseconds since the epoch. */
int64_t sbx_now_ms(void);
/* Monotonic clock in milliseconds / nanoseconds. */
int64_t sbx_mono_ms(void);
/* Sleep ms milliseconds (EINTR cuts it short). */
void sbx_sleep_ms(int ms);
int64_t sbx_mono_ns(void);
/* Formats ms-since-epoch as RFC 3339 UTC with milliseconds: "2026-11-30T19:56:20.123Z".
 * out must hold at least 25 bytes. */
void sbx_rfc3339(int64_t ms, char *out, size_t outsz);

/* ---- names ---- */
/* True if s matches [A-Za-z0-9][A-Za-z0-9_.-]{0,62}. */
bool sbx_valid_name(const char *s);
/* True if s is a sandbox id ("sbx_" + 16 hex) or exec id ("ex_" + 16 hex). */
bool sbx_is_id(const char *s, const char *prefix);

/* ---- fd I/O ---- */
int sbx_set_nonblock(int fd, bool on);
int sbx_set_cloexec(int fd, bool on);
/* Write/read everything, retrying on EINTR; return 0 or -1 with errno. read_full
 * returns the number of bytes read (< n only at EOF). */
int sbx_write_all(int fd, const void *buf, size_t n);
ssize_t sbx_read_full(int fd, void *buf, size_t n);
/* Read a whole small file (<= max bytes) into a NUL-terminated malloc'd buffer. */
char *sbx_read_file(const char *path, size_t max, size_t *len_out);
/* Write a string to a file (O_WRONLY|O_TRUNC, created 0644 if missing). */
int sbx_write_file(const char *path, const char *data);
/* mkdir -p with mode; 0 or -1/errno. */
int sbx_mkdir_p(const char *path, mode_t mode);
/* rm -rf that does not cross mount points; 0 or -1/errno. */
int sbx_rm_rf(const char *path);

#endif
