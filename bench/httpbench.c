/* httpbench: latency of sbxd requests over keep-alive connections (libcurl).
 *
 *   httpbench exec   -u BASE -s SANDBOX [-c CLIENTS] [-n RUNS] [-w WARMUP]
 *   httpbench create -u BASE [-n RUNS] [-w WARMUP] [-p NAME_PREFIX] [-f JSON_MEMBERS]
 *
 * exec:   each of CLIENTS threads owns one curl easy handle (so one
 *         keep-alive connection) and POSTs {"cmd":"/bin/true"} to
 *         BASE/v1/sandboxes/SANDBOX/exec WARMUP times, waits for every
 *         thread at a start line, then RUNS more timed times.  A sample is one
 *         request, send to full reply (CLOCK_MONOTONIC).  Throughput is all
 *         timed requests over the wall time from the start to the last
 *         thread's end.
 * create: one thread POSTs {"name":"PREFIX-i"} to BASE/v1/sandboxes (timed),
 *         then DELETEs BASE/v1/sandboxes/PREFIX-i (timed separately),
 *         WARMUP + RUNS times.
 *
 * A request counts as an error unless the status is the expected one (200
 * with "success": true for exec, 201 for create, 204 for delete); errors are
 * timed like the others and reported (first failure's status and body go
 * to stderr).  Prints key=value pairs, times in milliseconds:
 *   n=300 errors=0 p50_ms=.. p99_ms=.. mean_ms=.. min_ms=.. max_ms=.. rps=..
 * create adds del_p50_ms and del_p99_ms.  Exit status 1 only when nothing
 * useful was measured (no successful request) or on a setup failure.
 */
#include <curl/curl.h>
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_CLIENTS 256
#define BODY_KEEP 4096 /* bytes of a reply kept for checks and error reports */

struct reply {
    char buf[BODY_KEEP + 1];
    size_t len;
};

struct client {
    pthread_t thread;
    int index;
    CURL *curl;
    struct curl_slist *headers;
    struct reply reply;
    double *samples; /* RUNS of them */
    long errors;
    double end_ms;
};

static void free_doublep(double **p)
{
    free(*p);
}
#define cleanup_double __attribute__((cleanup(free_doublep)))

static const char *g_base, *g_sandbox, *g_prefix = "bench-create";
static const char *g_fields = ""; /* create: more JSON members, e.g. "driver":"vm" */
static long g_runs = 300, g_warmup = 20;
static int g_clients = 1;
/* start line: every thread warms up, checks in, and waits for "go" */
static pthread_mutex_t g_start_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_start_cond = PTHREAD_COND_INITIALIZER;
static int g_ready, g_go;
static pthread_mutex_t g_report_lock = PTHREAD_MUTEX_INITIALIZER;
static int g_reported; /* the first failure only, or stderr drowns */

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

/* Nearest-rank percentile of a sorted array. */
static double percentile(const double *sorted, size_t n, double p)
{
    size_t rank = (size_t)(p * (double)n + 0.999999);
    if (rank < 1)
        rank = 1;
    if (rank > n)
        rank = n;
    return sorted[rank - 1];
}

/* Keep the head of the body; the rest is read and dropped so that the
 * connection stays usable. */
static size_t on_body(char *data, size_t size, size_t nmemb, void *userp)
{
    struct reply *r = userp;
    size_t n = size * nmemb;
    size_t room = BODY_KEEP - r->len;
    size_t take = n < room ? n : room;
    memcpy(r->buf + r->len, data, take);
    r->len += take;
    r->buf[r->len] = '\0';
    return n;
}

static void report_failure(const char *what, CURLcode cc, long status, const struct reply *r)
{
    pthread_mutex_lock(&g_report_lock);
    if (!g_reported) {
        g_reported = 1;
        if (cc != CURLE_OK)
            fprintf(stderr, "httpbench: %s: %s\n", what, curl_easy_strerror(cc));
        else
            fprintf(stderr, "httpbench: %s: HTTP %ld: %.300s\n", what, status, r->buf);
    }
    pthread_mutex_unlock(&g_report_lock);
}

/* One request on the client's handle.  Returns 0 if the reply was the
 * expected one; *ms gets its latency. */
static int do_request(struct client *c, const char *method, const char *url, const char *body,
                      long want_status, int want_success, double *ms)
{
    c->reply.len = 0;
    c->reply.buf[0] = '\0';
    curl_easy_setopt(c->curl, CURLOPT_URL, url);
    curl_easy_setopt(c->curl, CURLOPT_CUSTOMREQUEST, method);
    if (body) {
        curl_easy_setopt(c->curl, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c->curl, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    } else {
        curl_easy_setopt(c->curl, CURLOPT_HTTPGET, 1L);
        curl_easy_setopt(c->curl, CURLOPT_CUSTOMREQUEST, method);
    }
    double t0 = now_ms();
    CURLcode cc = curl_easy_perform(c->curl);
    *ms = now_ms() - t0;

    long status = 0;
    if (cc == CURLE_OK)
        curl_easy_getinfo(c->curl, CURLINFO_RESPONSE_CODE, &status);
    int ok = cc == CURLE_OK && status == want_status;
    if (ok && want_success)
        ok = strstr(c->reply.buf, "\"success\":true") || strstr(c->reply.buf, "\"success\": true");
    if (!ok) {
        char what[512];
        snprintf(what, sizeof what, "%s %s", method, url);
        report_failure(what, cc, status, &c->reply);
        return -1;
    }
    return 0;
}

static int client_setup(struct client *c)
{
    c->curl = curl_easy_init();
    c->samples = calloc((size_t)g_runs, sizeof *c->samples);
    if (!c->curl || !c->samples)
        return -1;
    c->headers = curl_slist_append(NULL, "Content-Type: application/json");
    /* no "Expect: 100-continue" round trip: bodies are tiny */
    c->headers = curl_slist_append(c->headers, "Expect:");
    curl_easy_setopt(c->curl, CURLOPT_HTTPHEADER, c->headers);
    curl_easy_setopt(c->curl, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c->curl, CURLOPT_WRITEDATA, &c->reply);
    curl_easy_setopt(c->curl, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(c->curl, CURLOPT_TIMEOUT, 60L);
    curl_easy_setopt(c->curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c->curl, CURLOPT_MAXCONNECTS, 1L);
    return 0;
}

static void client_free(struct client *c)
{
    if (c->curl)
        curl_easy_cleanup(c->curl);
    curl_slist_free_all(c->headers);
    free(c->samples);
}

static void *exec_thread(void *arg)
{
    struct client *c = arg;
    char url[1024];
    snprintf(url, sizeof url, "%s/v1/sandboxes/%s/exec", g_base, g_sandbox);
    const char *body = "{\"cmd\":\"/bin/true\"}";
    double ms;

    for (long i = 0; i < g_warmup; i++)
        do_request(c, "POST", url, body, 200, 1, &ms);
    pthread_mutex_lock(&g_start_lock);
    g_ready++;
    pthread_cond_broadcast(&g_start_cond);
    while (!g_go)
        pthread_cond_wait(&g_start_cond, &g_start_lock);
    pthread_mutex_unlock(&g_start_lock);
    for (long i = 0; i < g_runs; i++) {
        if (do_request(c, "POST", url, body, 200, 1, &ms) < 0)
            c->errors++;
        c->samples[i] = ms;
    }
    c->end_ms = now_ms();
    return NULL;
}

static void print_stats(const char *prefix, double *s, size_t n)
{
    double sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += s[i];
    qsort(s, n, sizeof *s, cmp_double);
    printf("%sp50_ms=%.3f %sp99_ms=%.3f %smean_ms=%.3f %smin_ms=%.3f %smax_ms=%.3f", prefix,
           percentile(s, n, 0.50), prefix, percentile(s, n, 0.99), prefix, sum / (double)n,
           prefix, s[0], prefix, s[n - 1]);
}

/* Merge every client's samples and print the line.  Returns 1 if no
 * request succeeded. */
static int exec_report(struct client *cl, double t0)
{
    size_t n = (size_t)g_runs * (size_t)g_clients;
    cleanup_double double *all = malloc(n * sizeof *all);
    if (!all) {
        fprintf(stderr, "httpbench: out of memory\n");
        return 1;
    }
    long errors = 0;
    double t_end = t0;
    for (int i = 0; i < g_clients; i++) {
        memcpy(all + (size_t)i * (size_t)g_runs, cl[i].samples, (size_t)g_runs * sizeof *all);
        errors += cl[i].errors;
        if (cl[i].end_ms > t_end)
            t_end = cl[i].end_ms;
    }
    printf("n=%zu clients=%d errors=%ld ", n, g_clients, errors);
    print_stats("", all, n);
    printf(" rps=%.1f\n", (double)n / ((t_end - t0) / 1e3));
    return (size_t)errors == n;
}

static int run_exec(void)
{
    struct client *cl = calloc((size_t)g_clients, sizeof *cl);
    if (!cl) {
        fprintf(stderr, "httpbench: out of memory\n");
        return 1;
    }
    int rc = 0, started = 0;
    for (int i = 0; i < g_clients && rc == 0; i++) {
        cl[i].index = i;
        if (client_setup(&cl[i]) < 0) {
            fprintf(stderr, "httpbench: cannot set up client %d\n", i);
            rc = 1;
        }
    }
    for (int i = 0; i < g_clients && rc == 0; i++) {
        if (pthread_create(&cl[i].thread, NULL, exec_thread, &cl[i]) != 0) {
            fprintf(stderr, "httpbench: cannot start thread %d\n", i);
            rc = 1;
            break;
        }
        started++;
    }
    /* wait for the warm-ups, then start every client at once; on a failed
     * start the threads that did start are released and joined too */
    pthread_mutex_lock(&g_start_lock);
    while (rc == 0 && g_ready < started)
        pthread_cond_wait(&g_start_cond, &g_start_lock);
    double t0 = now_ms();
    g_go = 1;
    pthread_cond_broadcast(&g_start_cond);
    pthread_mutex_unlock(&g_start_lock);
    for (int i = 0; i < started; i++)
        pthread_join(cl[i].thread, NULL);
    if (rc == 0)
        rc = exec_report(cl, t0);
    for (int i = 0; i < g_clients; i++)
        client_free(&cl[i]);
    free(cl);
    return rc;
}

static int run_create(void)
{
    struct client c = {0};
    int rc = 0;
    double *del = calloc((size_t)g_runs, sizeof *del);
    if (client_setup(&c) < 0 || !del) {
        fprintf(stderr, "httpbench: cannot set up the client\n");
        client_free(&c);
        free(del);
        return 1;
    }
    char url[1024], del_url[1024], body[1024];
    snprintf(url, sizeof url, "%s/v1/sandboxes", g_base);
    long errors = 0, del_errors = 0;
    for (long i = 0; i < g_warmup + g_runs; i++) {
        double ms_create, ms_del;
        snprintf(body, sizeof body, "{\"name\":\"%s-%ld\"%s%s}", g_prefix, i,
                 *g_fields ? "," : "", g_fields);
        snprintf(del_url, sizeof del_url, "%s/v1/sandboxes/%s-%ld", g_base, g_prefix, i);
        int bad = do_request(&c, "POST", url, body, 201, 0, &ms_create) < 0;
        /* delete even after a failed create: a 201 may have been lost */
        int del_bad = do_request(&c, "DELETE", del_url, NULL, 204, 0, &ms_del) < 0;
        if (i < g_warmup)
            continue;
        errors += bad;
        del_errors += del_bad;
        c.samples[i - g_warmup] = ms_create;
        del[i - g_warmup] = ms_del;
    }
    printf("n=%ld errors=%ld del_errors=%ld ", g_runs, errors, del_errors);
    print_stats("", c.samples, (size_t)g_runs);
    printf(" ");
    print_stats("del_", del, (size_t)g_runs);
    printf("\n");
    if (errors == g_runs)
        rc = 1;
    client_free(&c);
    free(del);
    return rc;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: httpbench exec   -u BASE -s SANDBOX [-c CLIENTS] [-n RUNS] [-w WARMUP]\n"
            "       httpbench create -u BASE [-n RUNS] [-w WARMUP] [-p NAME_PREFIX] [-f JSON_MEMBERS]\n");
}

static int parse_count(const char *s, long lo, long hi, long *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (!*s || *end || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage();
        return 2;
    }
    const char *mode = argv[1];
    int opt;
    long v;
    optind = 2;
    while ((opt = getopt(argc, argv, "u:s:c:n:w:p:f:h")) != -1) {
        switch (opt) {
        case 'u':
            g_base = optarg;
            break;
        case 's':
            g_sandbox = optarg;
            break;
        case 'p':
            g_prefix = optarg;
            break;
        case 'f':
            g_fields = optarg;
            break;
        case 'c':
            if (parse_count(optarg, 1, MAX_CLIENTS, &v) < 0) {
                fprintf(stderr, "httpbench: -c wants 1..%d, got '%s'\n", MAX_CLIENTS, optarg);
                return 2;
            }
            g_clients = (int)v;
            break;
        case 'n':
            if (parse_count(optarg, 1, 10000000, &g_runs) < 0) {
                fprintf(stderr, "httpbench: -n wants a positive count, got '%s'\n", optarg);
                return 2;
            }
            break;
        case 'w':
            if (parse_count(optarg, 0, 1000000, &g_warmup) < 0) {
                fprintf(stderr, "httpbench: -w wants a count >= 0, got '%s'\n", optarg);
                return 2;
            }
            break;
        default:
            usage();
            return 2;
        }
    }
    if (!g_base || optind != argc) {
        usage();
        return 2;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "httpbench: curl_global_init failed\n");
        return 1;
    }
    int rc;
    if (strcmp(mode, "exec") == 0) {
        if (!g_sandbox) {
            usage();
            rc = 2;
        } else {
            rc = run_exec();
        }
    } else if (strcmp(mode, "create") == 0) {
        rc = run_create();
    } else {
        fprintf(stderr, "httpbench: unknown mode '%s'\n", mode);
        usage();
        rc = 2;
    }
    curl_global_cleanup();
    return rc;
}
