/*
 * The main() of every fuzz harness.
 *
 * Built with afl-clang-fast, it runs AFL++'s persistent mode: the input
 * arrives in shared memory and fuzz_one() runs on it many times per
 * process. Built with any other compiler it is a replay driver: each
 * argument is a file or a folder (read recursively, in name order), every
 * file is run once, and with --max-seconds=S an input that takes longer is
 * a failure, so the corpus doubles as a regression suite under ASan and
 * UBSan.
 */
#include "harness.h"

#include <dirent.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h> /* read(), used by AFL++'s persistent-mode macros */

void fuzz_fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("fuzz oracle: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    abort();
}

#ifdef __AFL_FUZZ_TESTCASE_LEN

__AFL_FUZZ_INIT();

/* AFL++'s length macro narrows read()'s result itself. */
#pragma clang diagnostic ignored "-Wshorten-64-to-32"

int main(void)
{
    __AFL_INIT();
    const unsigned char *buf = __AFL_FUZZ_TESTCASE_BUF;
    while (__AFL_LOOP(10000))
        fuzz_one(buf, (size_t)__AFL_FUZZ_TESTCASE_LEN);
    return 0;
}

#else

typedef struct replay {
    double max_seconds; /* 0: no limit */
    unsigned long inputs;
    unsigned long failures;
    double slowest;
    char slowest_path[4096];
} replay;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void replay_file(replay *r, const char *path, const struct stat *st)
{
    FILE *f = fopen(path, "rb");
    size_t len = (size_t)st->st_size;
    uint8_t *data = malloc(len ? len : 1);
    if (!f || !data || fread(data, 1, len, f) != len) {
        fprintf(stderr, "%s: cannot read\n", path);
        r->failures++;
    } else {
        fprintf(stderr, "%s\n", path); /* names the input if the harness aborts */
        double start = now();
        fuzz_one(data, len);
        double took = now() - start;
        r->inputs++;
        if (took > r->slowest) {
            r->slowest = took;
            snprintf(r->slowest_path, sizeof(r->slowest_path), "%s", path);
        }
        if (r->max_seconds > 0 && took > r->max_seconds) {
            fprintf(stderr, "%s: took %.2f s, more than the %.2f s allowed\n", path, took,
                    r->max_seconds);
            r->failures++;
        }
    }
    free(data);
    if (f)
        fclose(f);
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void replay_path(replay *r, const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        fprintf(stderr, "%s: not found\n", path);
        r->failures++;
        return;
    }
    if (!S_ISDIR(st.st_mode)) {
        replay_file(r, path, &st);
        return;
    }
    DIR *d = opendir(path);
    if (!d) {
        fprintf(stderr, "%s: cannot open folder\n", path);
        r->failures++;
        return;
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.')
            continue; /* ".", "..", and AFL++'s hidden state files */
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            char **grown = realloc(names, cap * sizeof(*names));
            if (!grown)
                abort();
            names = grown;
        }
        size_t need = strlen(path) + strlen(e->d_name) + 2;
        names[n] = malloc(need);
        if (!names[n])
            abort();
        snprintf(names[n++], need, "%s/%s", path, e->d_name);
    }
    closedir(d);
    qsort(names, n, sizeof(*names), by_name);
    for (size_t i = 0; i < n; i++) {
        replay_path(r, names[i]);
        free(names[i]);
    }
    free(names);
}

int main(int argc, char **argv)
{
    replay r = {0};
    int first = 1;
    if (argc > 1 && strncmp(argv[1], "--max-seconds=", 14) == 0) {
        r.max_seconds = strtod(argv[1] + 14, NULL);
        first = 2;
    }
    if (first >= argc) {
        fprintf(stderr, "usage: %s [--max-seconds=S] FILE|FOLDER...\n", argv[0]);
        return 2;
    }
    for (int i = first; i < argc; i++)
        replay_path(&r, argv[i]);
    printf("%lu inputs replayed, %lu failures; slowest %.3f s (%s)\n", r.inputs, r.failures,
           r.slowest, r.inputs ? r.slowest_path : "-");
    return r.failures || r.inputs == 0 ? 1 : 0;
}

#endif
