/* spawnbench: time posix_spawn + waitpid of a command, N times.
 *
 *   spawnbench [-n RUNS] [-w WARMUP] [-q] -- PROGRAM [ARGS...]
 *
 * Each run spawns PROGRAM (looked up in PATH unless it has a '/') and waits
 * for it; the time from just before posix_spawn to just after waitpid is the
 * sample (CLOCK_MONOTONIC).  With -q the child's stdin, stdout and stderr are
 * /dev/null (needed for ssh and bwrap, which would otherwise talk to the
 * terminal); without it the spawn is as bare as it gets, which is the point
 * of the "physical limit" row.
 *
 * Prints one line of key=value pairs (times in milliseconds):
 *   n=1000 errors=0 p50_ms=0.412 p99_ms=0.733 mean_ms=0.430 min_ms=0.380 max_ms=1.9
 * spawnbench is a child subreaper: what a child leaves behind (bwrap's
 * pid-namespace helper outlives the bwrap that is waited for) comes back to
 * it and is reaped between samples, outside the timing, instead of piling
 * up under a PID 1 that may not reap (containers).
 *
 * A run whose child exits non-zero or dies counts as an error but is still
 * timed; the exit status is 1 only if every run failed (nothing to report).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

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

/* Nearest-rank percentile of a sorted array: the smallest sample such that
 * at least p of all samples are <= it. */
static double percentile(const double *sorted, size_t n, double p)
{
    size_t rank = (size_t)(p * (double)n + 0.999999);
    if (rank < 1)
        rank = 1;
    if (rank > n)
        rank = n;
    return sorted[rank - 1];
}

/* One spawn + wait.  Returns the child's wait status, or -1 if the spawn
 * itself failed (errno-style code in *spawn_err). */
static int run_once(char **argv, const posix_spawn_file_actions_t *fa, int *spawn_err)
{
    pid_t pid;
    int rc = posix_spawnp(&pid, argv[0], fa, NULL, argv, environ);
    if (rc != 0) {
        *spawn_err = rc;
        return -1;
    }
    int status;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) {
            *spawn_err = errno;
            return -1;
        }
    }
    return status;
}

/* Reap whatever orphans have come back to us, without waiting for more. */
static void reap_orphans(void)
{
    while (waitpid(-1, NULL, WNOHANG) > 0)
        ;
}

/* At the end, give orphans still running a moment to finish, then leave
 * any stragglers to init rather than hang. */
static void reap_orphans_final(void)
{
    for (int i = 0; i < 100; i++) {
        pid_t p = waitpid(-1, NULL, WNOHANG);
        if (p < 0)
            return; /* ECHILD: nothing left */
        if (p == 0) {
            struct timespec ts = {0, 10 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
}

static void usage(void)
{
    fprintf(stderr, "usage: spawnbench [-n RUNS] [-w WARMUP] [-q] -- PROGRAM [ARGS...]\n");
}

int main(int argc, char **argv)
{
    long runs = 1000, warmup = 20;
    int quiet = 0, opt;

    while ((opt = getopt(argc, argv, "+n:w:qh")) != -1) {
        char *end;
        switch (opt) {
        case 'n':
            runs = strtol(optarg, &end, 10);
            if (*end || runs < 1 || runs > 10000000) {
                fprintf(stderr, "spawnbench: -n wants a positive count, got '%s'\n", optarg);
                return 2;
            }
            break;
        case 'w':
            warmup = strtol(optarg, &end, 10);
            if (*end || warmup < 0 || warmup > 1000000) {
                fprintf(stderr, "spawnbench: -w wants a count >= 0, got '%s'\n", optarg);
                return 2;
            }
            break;
        case 'q':
            quiet = 1;
            break;
        default:
            usage();
            return 2;
        }
    }
    if (optind >= argc) {
        usage();
        return 2;
    }
    char **cmd = argv + optind;

    posix_spawn_file_actions_t fa_store, *fa = NULL;
    if (quiet) {
        fa = &fa_store;
        posix_spawn_file_actions_init(fa);
        posix_spawn_file_actions_addopen(fa, 0, "/dev/null", O_RDONLY, 0);
        posix_spawn_file_actions_addopen(fa, 1, "/dev/null", O_WRONLY, 0);
        posix_spawn_file_actions_addopen(fa, 2, "/dev/null", O_WRONLY, 0);
    }

    if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) < 0)
        fprintf(stderr, "spawnbench: cannot become a subreaper: %s (orphans go to init)\n",
                strerror(errno));

    double *samples = calloc((size_t)runs, sizeof *samples);
    if (!samples) {
        fprintf(stderr, "spawnbench: out of memory for %ld samples\n", runs);
        return 1;
    }

    long errors = 0;
    int last_status = 0, spawn_err = 0;
    for (long i = 0; i < warmup + runs; i++) {
        double t0 = now_ms();
        int st = run_once(cmd, fa, &spawn_err);
        double t1 = now_ms();
        if (st < 0) {
            /* a spawn that cannot start will not start next time either */
            fprintf(stderr, "spawnbench: cannot spawn %s: %s\n", cmd[0], strerror(spawn_err));
            return 1;
        }
        reap_orphans();
        if (i < warmup)
            continue;
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            errors++;
            last_status = st;
        }
        samples[i - warmup] = t1 - t0;
    }
    reap_orphans_final();
    if (errors == runs) {
        fprintf(stderr, "spawnbench: every run of %s failed (last wait status 0x%x)\n", cmd[0],
                (unsigned)last_status);
        return 1;
    }
    if (errors)
        fprintf(stderr, "spawnbench: %ld of %ld runs of %s failed (last wait status 0x%x)\n",
                errors, runs, cmd[0], (unsigned)last_status);

    double sum = 0;
    for (long i = 0; i < runs; i++)
        sum += samples[i];
    qsort(samples, (size_t)runs, sizeof *samples, cmp_double);
    printf("n=%ld errors=%ld p50_ms=%.3f p99_ms=%.3f mean_ms=%.3f min_ms=%.3f max_ms=%.3f\n",
           runs, errors, percentile(samples, (size_t)runs, 0.50),
           percentile(samples, (size_t)runs, 0.99), sum / (double)runs, samples[0],
           samples[runs - 1]);
    free(samples);
    if (fa)
        posix_spawn_file_actions_destroy(fa);
    return 0;
}
