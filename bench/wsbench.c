/* wsbench: WebSocket streaming throughput and time to first byte
 * (libwebsockets client API).
 *
 *   wsbench stream -u URL -c COMMAND [-e BYTES]
 *   wsbench raw    -u URL [-e BYTES]
 *   wsbench ttfb   -u URL -c COMMAND [-n RUNS] [-w WARMUP]
 *
 * stream: connects to sbxd's URL (ws://host:port/v1/sandboxes/NAME/exec/ws)
 *         with the sbx.v1.binary subprotocol, sends {"type":"start","shell":
 *         COMMAND} and counts the data bytes of the stdout/stderr binary
 *         frames ([1|2][8-byte offset][data]; the 9-byte header is not
 *         counted) until the server closes.  Time runs from the start
 *         message written to the "exited" event.  Also checks that the
 *         stdout offsets are contiguous.
 * raw:    connects without a subprotocol and sends nothing (websocketd runs
 *         its program on the upgrade); counts the payload bytes of every
 *         binary frame until the server closes.  Time runs from the
 *         handshake's completion to the close.
 * ttfb:   RUNS + WARMUP times: connect (not timed), send the start message
 *         for COMMAND, time until the first stdout frame arrives, read on to
 *         the close.  One connection after the other.
 *
 * Two client implementations (-k): "sock" (default), a minimal RFC 6455
 * client on a plain socket that reads 1 MiB at a time and skips payload
 * without copying, and "lws", libwebsockets' client API.  The lws client
 * parses payload a byte at a time and is CPU-bound near 0.3 GB/s here, so
 * it would measure itself rather than the server; it stays as a cross-check
 * (`make bench` prints its number in a note).
 *
 * Output is discarded.  -e checks the byte count.  Prints key=value pairs:
 *   stream/raw: bytes=.. secs=.. gbps=.. (10^9 bytes/s) first_ms=.. frames=..
 *   ttfb:       n=.. errors=.. p50_ms=.. p99_ms=.. mean_ms=.. min_ms=.. max_ms=..
 * Exit status 1 when the measurement failed (connection refused, fewer
 * bytes than -e, no exited event, no successful run).
 */
#include <errno.h>
#include <getopt.h>
#include <libwebsockets.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum mode { M_STREAM, M_RAW, M_TTFB };

struct run {
    bool done, failed, exited, in_msg, start_sent;
    int stream;          /* of the binary message being read: 1, 2, or 0 (raw) */
    unsigned hdr_left;   /* header bytes of the current binary message still to skip */
    uint8_t hdr[9];
    uint64_t bytes, frames, next_off;
    double t0, t_first, t_end;
    char why[200];
};

static enum mode g_mode;
static bool g_use_lws;
static const char *g_command = "head -c 2G /dev/zero";
static struct run g_run;
static char g_start[4096];

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The start message, with COMMAND as a JSON string. */
static int build_start(const char *cmd)
{
    size_t o = 0;
    o += (size_t)snprintf(g_start, sizeof g_start, "{\"type\":\"start\",\"shell\":\"");
    for (const char *p = cmd; *p; p++) {
        if (o + 8 >= sizeof g_start)
            return -1;
        unsigned char ch = (unsigned char)*p;
        if (ch == '"' || ch == '\\')
            o += (size_t)snprintf(g_start + o, sizeof g_start - o, "\\%c", ch);
        else if (ch < 0x20)
            o += (size_t)snprintf(g_start + o, sizeof g_start - o, "\\u%04x", ch);
        else
            g_start[o++] = (char)ch;
    }
    if (o + 3 >= sizeof g_start)
        return -1;
    memcpy(g_start + o, "\"}", 3);
    return 0;
}

static void on_binary(struct run *r, const uint8_t *p, size_t len)
{
    if (!r->in_msg) {
        r->in_msg = true;
        r->frames++;
        r->hdr_left = g_mode == M_RAW ? 0 : 9;
        r->stream = 0;
    }
    while (r->hdr_left && len) {
        r->hdr[9 - r->hdr_left] = *p++;
        len--;
        if (--r->hdr_left == 0) {
            r->stream = r->hdr[0];
            uint64_t off = 0;
            for (int i = 1; i < 9; i++)
                off = off << 8 | r->hdr[i];
            if (r->stream == 1) {
                if (off != r->next_off && !r->failed) {
                    snprintf(r->why, sizeof r->why, "stdout offset %llu, expected %llu",
                             (unsigned long long)off, (unsigned long long)r->next_off);
                    r->failed = true;
                }
            }
        }
    }
    if (!len || r->hdr_left)
        return;
    if (r->t_first == 0 && (g_mode == M_RAW || r->stream == 1))
        r->t_first = now_ms();
    r->bytes += len;
    if (r->stream == 1)
        r->next_off += len;
}

static void on_text(struct run *r, const char *p, size_t len)
{
    /* events are small and sbxd sends each in one frame; look for the end */
    char buf[512];
    size_t n = len < sizeof buf - 1 ? len : sizeof buf - 1;
    memcpy(buf, p, n);
    buf[n] = '\0';
    if (strstr(buf, "\"type\":\"exited\"")) {
        r->exited = true;
        r->t_end = now_ms();
    } else if (strstr(buf, "\"type\":\"failed\"") || strstr(buf, "\"type\":\"error\"")) {
        snprintf(r->why, sizeof r->why, "server said: %.180s", buf);
        r->failed = true;
    }
}

static int cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
              size_t len)
{
    struct run *r = &g_run;
    (void)user;
    switch (reason) {
    case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
        snprintf(r->why, sizeof r->why, "connection error: %s",
                 in ? (const char *)in : "(none)");
        r->failed = true;
        r->done = true;
        return 0;
    case LWS_CALLBACK_CLIENT_ESTABLISHED:
        if (g_mode == M_RAW)
            r->t0 = now_ms();
        else
            lws_callback_on_writable(wsi);
        return 0;
    case LWS_CALLBACK_CLIENT_WRITEABLE: {
        if (r->start_sent || g_mode == M_RAW)
            return 0;
        size_t n = strlen(g_start);
        unsigned char buf[LWS_PRE + sizeof g_start];
        memcpy(buf + LWS_PRE, g_start, n);
        if (lws_write(wsi, buf + LWS_PRE, n, LWS_WRITE_TEXT) < (int)n) {
            snprintf(r->why, sizeof r->why, "writing the start message failed");
            r->failed = true;
            return -1;
        }
        r->start_sent = true;
        r->t0 = now_ms();
        return 0;
    }
    case LWS_CALLBACK_CLIENT_RECEIVE:
        if (lws_frame_is_binary(wsi))
            on_binary(r, in, len);
        else if (g_mode != M_RAW)
            on_text(r, in, len);
        if (lws_is_final_fragment(wsi) && !lws_remaining_packet_payload(wsi))
            r->in_msg = false;
        return 0;
    case LWS_CALLBACK_CLIENT_CLOSED:
        if (g_mode == M_RAW)
            r->t_end = now_ms();
        r->done = true;
        return 0;
    default:
        return 0;
    }
}

static const struct lws_protocols protocols[] = {
    {"sbx.v1.binary", cb, 0, 1 << 18, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

static char g_url[1024];
static const char *g_host, *g_path_tail;
static int g_port;
static char g_path[1100];

static int parse_url(const char *url)
{
    snprintf(g_url, sizeof g_url, "%s", url);
    const char *prot;
    if (lws_parse_uri(g_url, &prot, &g_host, &g_port, &g_path_tail) || strcmp(prot, "ws")) {
        fprintf(stderr, "wsbench: want a ws://host:port/path URL, not %s\n", url);
        return -1;
    }
    snprintf(g_path, sizeof g_path, "%s%s", g_path_tail[0] == '/' ? "" : "/", g_path_tail);
    return 0;
}

/* ---- the plain-socket client ------------------------------------------- */

#define SOCK_BUF (1u << 20)
static uint8_t g_buf[SOCK_BUF];

static int sock_write_all(int fd, const void *p, size_t n)
{
    const uint8_t *b = p;
    while (n) {
        ssize_t w = write(fd, b, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        b += w;
        n -= (size_t)w;
    }
    return 0;
}

/* A masked client frame (RFC 6455 5.3: clients always mask). */
static int sock_send(int fd, int opcode, const void *p, size_t n)
{
    uint8_t f[14 + 4096];
    static const uint8_t mask[4] = {0x5a, 0xc3, 0x17, 0x8e};
    size_t h = 0;
    if (n > sizeof f - 14)
        return -1;
    f[h++] = (uint8_t)(0x80 | opcode);
    if (n < 126) {
        f[h++] = (uint8_t)(0x80 | n);
    } else {
        f[h++] = 0x80 | 126;
        f[h++] = (uint8_t)(n >> 8);
        f[h++] = (uint8_t)n;
    }
    memcpy(f + h, mask, 4);
    h += 4;
    for (size_t i = 0; i < n; i++)
        f[h + i] = ((const uint8_t *)p)[i] ^ mask[i & 3];
    return sock_write_all(fd, f, h + n);
}

static int sock_connect(void)
{
    char port[16];
    snprintf(port, sizeof port, "%d", g_port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai;
    if (getaddrinfo(g_host, port, &hints, &ai) != 0)
        return -1;
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
        close(fd);
        fd = -1;
    }
    freeaddrinfo(ai);
    if (fd >= 0) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    return fd;
}

/* Upgrade; on success the bytes after the 101's head are g_buf[0..*have). */
static int sock_handshake(int fd, size_t *have)
{
    char req[2048];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     "Sec-WebSocket-Version: 13\r\n%s%s%s\r\n",
                     g_path, g_host, g_port, g_mode == M_RAW ? "" : "Sec-WebSocket-Protocol: ",
                     g_mode == M_RAW ? "" : "sbx.v1.binary", g_mode == M_RAW ? "" : "\r\n");
    if (sock_write_all(fd, req, (size_t)n) < 0)
        return -1;
    size_t len = 0;
    char *end = NULL;
    while (!end) {
        if (len >= 8192)
            return -1;
        ssize_t r = read(fd, g_buf + len, SOCK_BUF - len - 1);
        if (r <= 0)
            return -1;
        len += (size_t)r;
        g_buf[len] = 0;
        end = strstr((char *)g_buf, "\r\n\r\n");
    }
    size_t head = (size_t)(end - (char *)g_buf) + 4;
    if (strncmp((char *)g_buf, "HTTP/1.1 101", 12) != 0) {
        snprintf(g_run.why, sizeof g_run.why, "handshake answered: %.80s", (char *)g_buf);
        return -1;
    }
    *end = 0;
    if (g_mode != M_RAW && !strcasestr((char *)g_buf, "sec-websocket-protocol: sbx.v1.binary")) {
        snprintf(g_run.why, sizeof g_run.why, "the server did not choose sbx.v1.binary");
        return -1;
    }
    memmove(g_buf, g_buf + head, len - head);
    *have = len - head;
    return 0;
}

static int sock_run(double timeout_s)
{
    struct run *r = &g_run;
    int fd = sock_connect();
    if (fd < 0) {
        snprintf(r->why, sizeof r->why, "cannot connect to %s:%d", g_host, g_port);
        return -1;
    }
    struct timeval tv = {.tv_sec = (time_t)timeout_s};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    size_t have = 0, pos = 0;
    if (sock_handshake(fd, &have) < 0) {
        if (!r->why[0])
            snprintf(r->why, sizeof r->why, "handshake failed");
        close(fd);
        return -1;
    }
    if (g_mode == M_RAW) {
        r->t0 = now_ms();
    } else {
        if (sock_send(fd, 1, g_start, strlen(g_start)) < 0) {
            snprintf(r->why, sizeof r->why, "writing the start message failed");
            close(fd);
            return -1;
        }
        r->start_sent = true;
        r->t0 = now_ms();
    }
    char text[4096];
    size_t text_len = 0;
    int opcode = 0, msg_op = 0;
    bool fin = false;
    while (!r->done) {
        /* a frame header: 2 to 14 bytes (the server does not mask) */
        size_t need = 2;
        for (;;) {
            if (have - pos >= 2) {
                unsigned l7 = g_buf[pos + 1] & 0x7f;
                need = 2 + (l7 == 126 ? 2 : l7 == 127 ? 8 : 0) + (g_buf[pos + 1] & 0x80 ? 4 : 0);
                if (have - pos >= need)
                    break;
            }
            memmove(g_buf, g_buf + pos, have - pos);
            have -= pos;
            pos = 0;
            ssize_t n = read(fd, g_buf + have, SOCK_BUF - have);
            if (n <= 0) {
                r->done = true;
                break;
            }
            have += (size_t)n;
        }
        if (r->done)
            break;
        const uint8_t *h = g_buf + pos;
        fin = h[0] & 0x80;
        opcode = h[0] & 0x0f;
        uint64_t left = h[1] & 0x7f;
        if (left == 126)
            left = (uint64_t)h[2] << 8 | h[3];
        else if (left == 127)
            for (int i = 0; i < 8; i++)
                left = (i ? left << 8 : 0) | h[2 + i];
        pos += need;
        if (opcode != 0)
            msg_op = opcode;
        if (opcode == 1 || opcode == 2 || opcode == 8 || opcode == 9)
            text_len = 0;
        while (left) {
            if (pos == have) {
                pos = have = 0;
                ssize_t n = read(fd, g_buf, SOCK_BUF);
                if (n <= 0) {
                    snprintf(r->why, sizeof r->why, "connection lost inside a frame");
                    r->failed = r->done = true;
                    break;
                }
                have = (size_t)n;
            }
            size_t take = have - pos < left ? have - pos : (size_t)left;
            if (opcode == 2 || (opcode == 0 && msg_op == 2)) {
                on_binary(r, g_buf + pos, take);
            } else {
                size_t c = take < sizeof text - 1 - text_len ? take : sizeof text - 1 - text_len;
                memcpy(text + text_len, g_buf + pos, c);
                text_len += c;
            }
            pos += take;
            left -= take;
        }
        if (r->done)
            break;
        if (opcode == 8) {
            if (g_mode == M_RAW)
                r->t_end = now_ms();
            r->done = true;
        } else if (opcode == 9) {
            sock_send(fd, 10, text, text_len);
        } else if (fin && msg_op == 1 && g_mode != M_RAW) {
            on_text(r, text, text_len);
        }
        if (fin && msg_op != 8 && msg_op != 9 && msg_op != 10)
            r->in_msg = false;
    }
    if (g_mode == M_RAW && r->t_end == 0)
        r->t_end = now_ms();
    close(fd);
    return 0;
}

/* ---- one measured connection ----------------------------------------------- */

static int lws_run(struct lws_context *ctx, double timeout_s)
{
    struct lws_client_connect_info ci;
    memset(&ci, 0, sizeof ci);
    ci.context = ctx;
    ci.address = g_host;
    ci.port = g_port;
    ci.path = g_path;
    ci.host = g_host;
    ci.origin = NULL; /* not a browser: no Origin header */
    ci.protocol = g_mode == M_RAW ? NULL : "sbx.v1.binary";
    ci.local_protocol_name = "sbx.v1.binary";
    ci.ietf_version_or_minus_one = -1;
    if (!lws_client_connect_via_info(&ci)) {
        snprintf(g_run.why, sizeof g_run.why, "lws_client_connect_via_info failed");
        return -1;
    }
    double deadline = now_ms() + timeout_s * 1e3;
    while (!g_run.done) {
        if (lws_service(ctx, 0) < 0)
            break;
        if (now_ms() > deadline) {
            snprintf(g_run.why, sizeof g_run.why, "timed out after %.0f s", timeout_s);
            return -1;
        }
    }
    return 0;
}

/* One connection, served to its end; 0 if it completed. */
static int one_run(struct lws_context *ctx, double timeout_s)
{
    memset(&g_run, 0, sizeof g_run);
    if ((g_use_lws ? lws_run(ctx, timeout_s) : sock_run(timeout_s)) < 0)
        return -1;
    if (g_run.failed)
        return -1;
    if (g_mode != M_RAW && !g_run.exited) {
        snprintf(g_run.why, sizeof g_run.why, "closed without an exited event");
        return -1;
    }
    return 0;
}

static void usage(void)
{
    fprintf(stderr, "usage: wsbench stream|raw|ttfb -u ws://HOST:PORT/PATH [-c COMMAND] "
                    "[-e BYTES] [-n RUNS] [-w WARMUP] [-t TIMEOUT_S] [-k sock|lws]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    if (argc < 2)
        usage();
    if (!strcmp(argv[1], "stream"))
        g_mode = M_STREAM;
    else if (!strcmp(argv[1], "raw"))
        g_mode = M_RAW;
    else if (!strcmp(argv[1], "ttfb"))
        g_mode = M_TTFB;
    else
        usage();
    const char *url = NULL;
    long long expect = -1;
    long runs = 50, warmup = 5;
    double timeout_s = 120;
    int opt;
    optind = 2;
    while ((opt = getopt(argc, argv, "u:c:e:n:w:t:k:")) != -1) {
        switch (opt) {
        case 'u': url = optarg; break;
        case 'c': g_command = optarg; break;
        case 'e': expect = atoll(optarg); break;
        case 'n': runs = atol(optarg); break;
        case 'w': warmup = atol(optarg); break;
        case 't': timeout_s = atof(optarg); break;
        case 'k':
            if (strcmp(optarg, "lws") && strcmp(optarg, "sock"))
                usage();
            g_use_lws = !strcmp(optarg, "lws");
            break;
        default: usage();
        }
    }
    if (!url || runs < 1 || warmup < 0 || parse_url(url) < 0 || build_start(g_command) < 0)
        usage();

    lws_set_log_level(LLL_ERR, NULL);
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.port = CONTEXT_PORT_NO_LISTEN;
    info.protocols = protocols;
    info.pt_serv_buf_size = 1 << 18; /* read in big chunks: this is a throughput tool */
    info.gid = -1;
    info.uid = -1;
    struct lws_context *ctx = lws_create_context(&info);
    if (!ctx) {
        fprintf(stderr, "wsbench: lws_create_context failed\n");
        return 1;
    }

    int rc = 0;
    if (g_mode != M_TTFB) {
        if (one_run(ctx, timeout_s) < 0) {
            fprintf(stderr, "wsbench: %s (after %llu bytes)\n", g_run.why,
                    (unsigned long long)g_run.bytes);
            rc = 1;
        } else if (expect >= 0 && (long long)g_run.bytes != expect) {
            fprintf(stderr, "wsbench: got %llu bytes, expected %lld\n",
                    (unsigned long long)g_run.bytes, expect);
            rc = 1;
        } else {
            double secs = (g_run.t_end - g_run.t0) / 1e3;
            printf("bytes=%llu secs=%.3f gbps=%.3f first_ms=%.3f frames=%llu\n",
                   (unsigned long long)g_run.bytes, secs,
                   secs > 0 ? (double)g_run.bytes / secs / 1e9 : 0,
                   g_run.t_first ? g_run.t_first - g_run.t0 : -1,
                   (unsigned long long)g_run.frames);
        }
    } else {
        double *samples = calloc((size_t)runs, sizeof *samples);
        long ok = 0, errors = 0;
        for (long i = 0; samples && i < warmup + runs; i++) {
            if (one_run(ctx, 30) < 0 || g_run.t_first == 0) {
                if (!errors)
                    fprintf(stderr, "wsbench: run %ld: %s\n", i,
                            g_run.why[0] ? g_run.why : "no stdout frame");
                errors++;
                continue;
            }
            if (i >= warmup)
                samples[ok++] = g_run.t_first - g_run.t0;
        }
        if (!ok) {
            fprintf(stderr, "wsbench: no successful run\n");
            rc = 1;
        } else {
            qsort(samples, (size_t)ok, sizeof *samples, cmp_double);
            double sum = 0;
            for (long i = 0; i < ok; i++)
                sum += samples[i];
            long i99 = (long)((double)ok * 0.99 + 0.999) - 1;
            printf("n=%ld errors=%ld p50_ms=%.3f p99_ms=%.3f mean_ms=%.3f min_ms=%.3f "
                   "max_ms=%.3f\n",
                   ok, errors, samples[(ok - 1) / 2], samples[i99 < 0 ? 0 : i99], sum / (double)ok,
                   samples[0], samples[ok - 1]);
        }
        free(samples);
    }
    lws_context_destroy(ctx);
    return rc;
}
