/*
 * --metrics=FILE: the run's figures in the Prometheus text exposition
 * format, for node_exporter's textfile collector, so that the alerts a
 * fleet already has see qcheck's verdicts without glue.
 *
 * The collector reads every *.prom file of its directory at each scrape,
 * so a half-written file must never be seen: the figures go to a
 * temporary file in the same directory (not ending in .prom), which is
 * flushed to disk and then renamed over FILE. A file the collector cannot
 * parse costs the whole directory's metrics, so every label value is
 * escaped, bytes that are not UTF-8 are written as \xNN text, and an image
 * named twice is written once.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "command.h"

/* The length of the UTF-8 sequence at p (at most `left` bytes), or 0 if
 * it is not one. */
static size_t utf8_length(const unsigned char *p, size_t left)
{
    size_t n = *p < 0x80 ? 1 : (*p & 0xe0) == 0xc0 ? 2 : (*p & 0xf0) == 0xe0 ? 3
                             : (*p & 0xf8) == 0xf0 ? 4 : 0;
    if (n == 0 || n > left || (n == 2 && *p < 0xc2) || (n == 4 && *p > 0xf4))
        return 0;
    for (size_t i = 1; i < n; i++)
        if ((p[i] & 0xc0) != 0x80)
            return 0;
    return n;
}

/* A label value: backslash, quote and newline escaped as the format
 * says; other bytes that are not UTF-8 as the text \xNN. */
static void label_value(FILE *out, const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t left = strlen(s);
    while (left) {
        size_t n = utf8_length(p, left);
        if (*p == '\\')
            fputs("\\\\", out);
        else if (*p == '"')
            fputs("\\\"", out);
        else if (*p == '\n')
            fputs("\\n", out);
        else if (n == 0)
            fprintf(out, "\\\\x%02x", *p);
        else
            fwrite(p, 1, n, out);
        n = n ? n : 1;
        p += n;
        left -= n;
    }
}

typedef struct series {
    const char *name, *help;
} series;

/* A per-image series: its value, and whether it is a count of the check
 * (left out for an image whose check reached no figures: a 0 would read
 * "checked and fine"). */
typedef struct image_series {
    series s;
    bool count;
    void (*value)(char *buf, size_t len, const image_record *r);
} image_series;

static void leaks_of(char *buf, size_t len, const image_record *r)
{
    snprintf(buf, len, "%" PRIu64, r->leaks);
}

static void corruptions_of(char *buf, size_t len, const image_record *r)
{
    snprintf(buf, len, "%" PRIu64, r->corruptions);
}

static void check_errors_of(char *buf, size_t len, const image_record *r)
{
    snprintf(buf, len, "%" PRIu64, r->check_errors);
}

static void seconds_of(char *buf, size_t len, const image_record *r)
{
    snprintf(buf, len, "%.6f", r->seconds);
}

static void exit_code_of(char *buf, size_t len, const image_record *r)
{
    snprintf(buf, len, "%d", r->status);
}

static void finished_of(char *buf, size_t len, const image_record *r)
{
    snprintf(buf, len, "%.0f", r->finished);
}

static const image_series per_image[] = {
    {{"qcheck_image_leaks", "Leaked clusters found in the image."}, true, leaks_of},
    {{"qcheck_image_corruptions", "Corruptions found in the image."}, true, corruptions_of},
    {{"qcheck_image_check_errors", "Parts of the image that could not be checked."}, true,
     check_errors_of},
    {{"qcheck_image_check_seconds", "Seconds the image's check (or repair) took."}, false,
     seconds_of},
    {{"qcheck_image_exit_code", "The image's exit status (0 for an image in use)."}, false,
     exit_code_of},
    {{"qcheck_image_last_run_timestamp_seconds", "When the image's check ended, Unix time."},
     false, finished_of},
};

static void family(FILE *out, const series *s)
{
    fprintf(out, "# HELP %s %s\n# TYPE %s gauge\n", s->name, s->help, s->name);
}

/* Whether an earlier image of the run has the same name. */
static bool named_before(const image_record *images, size_t i)
{
    for (size_t k = 0; k < i; k++)
        if (strcmp(images[k].name, images[i].name) == 0)
            return true;
    return false;
}

static void write_series(FILE *out, const image_record *images, size_t n, double seconds, int status)
{
    static const series verdict_family = {"qcheck_image_verdict",
                                          "1 for the verdict of the image's last check, 0 for the others."};
    family(out, &verdict_family);
    for (size_t i = 0; i < n; i++) {
        if (named_before(images, i))
            continue;
        for (int v = 0; v < VERDICT_COUNT; v++) {
            fprintf(out, "%s{image=\"", verdict_family.name);
            label_value(out, images[i].name);
            fprintf(out, "\",verdict=\"%s\"} %d\n", image_verdict_name((image_verdict)v),
                    images[i].verdict == (image_verdict)v);
        }
    }
    for (size_t m = 0; m < sizeof(per_image) / sizeof(per_image[0]); m++) {
        const image_series *is = &per_image[m];
        family(out, &is->s);
        for (size_t i = 0; i < n; i++) {
            if (named_before(images, i) || (is->count && !images[i].counted))
                continue;
            char value[40];
            is->value(value, sizeof(value), &images[i]);
            fprintf(out, "%s{image=\"", is->s.name);
            label_value(out, images[i].name);
            fprintf(out, "\"} %s\n", value);
        }
    }
    static const series run_images = {"qcheck_run_images", "Images of the last run, per verdict."};
    family(out, &run_images);
    for (int v = 0; v < VERDICT_COUNT; v++) {
        size_t count = 0;
        for (size_t i = 0; i < n; i++)
            count += images[i].verdict == (image_verdict)v;
        fprintf(out, "%s{verdict=\"%s\"} %zu\n", run_images.name,
                image_verdict_name((image_verdict)v), count);
    }
    static const series run[] = {
        {"qcheck_run_exit_code", "Exit status of the last run."},
        {"qcheck_run_seconds", "Seconds the last run took."},
        {"qcheck_run_last_timestamp_seconds", "When the last run ended, Unix time."},
    };
    double last = 0;
    for (size_t i = 0; i < n; i++)
        last = images[i].finished > last ? images[i].finished : last;
    family(out, &run[0]);
    fprintf(out, "%s %d\n", run[0].name, status);
    family(out, &run[1]);
    fprintf(out, "%s %.6f\n", run[1].name, seconds);
    family(out, &run[2]);
    fprintf(out, "%s %.0f\n", run[2].name, last);
}

int metrics_write(const char *path, const image_record *images, size_t n, double seconds,
                  int status)
{
    size_t len = strlen(path);
    char *tmp = malloc(len + 32);
    if (!tmp)
        return -ENOMEM;
    snprintf(tmp, len + 32, "%s.%ld.tmp", path, (long)getpid());
    FILE *out = fopen(tmp, "wx");
    if (!out) {
        int err = -errno;
        free(tmp);
        return err;
    }
    write_series(out, images, n, seconds, status);
    int err = 0;
    if (fflush(out) != 0 || fsync(fileno(out)) != 0)
        err = -errno;
    if (fclose(out) != 0 && !err)
        err = -errno;
    if (!err && rename(tmp, path) != 0)
        err = -errno;
    if (err)
        unlink(tmp);
    free(tmp);
    return err;
}
