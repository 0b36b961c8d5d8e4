/*
 * The qcheck command: a drop-in for `qemu-img check` on qcow2 images.
 *
 * Parses qemu-img check's options, runs the library, prints findings (one
 * line each, on stderr, as qemu-img prints its diagnostics) and the summary
 * lines qemu-img prints (on stdout), or one JSON object on stdout. The exit
 * status is qemu-img check's. With -r it plans a repair, carries it out
 * (or, with --dry-run, only shows it) and checks the image again.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "qcheck.h"

enum output_format { OUTPUT_HUMAN, OUTPUT_JSON };

typedef struct cli {
    const char *filename; /* as given, for output */
    const char *path;     /* what is opened */
    bool quiet;
    enum output_format output;
    uint64_t max_mem;
    /* JSON mode collects findings and prints them inside the object. */
    char **problems;
    size_t nb_problems, cap_problems;
    bool out_of_memory;
    /* Repair: set when -r ran; printed in JSON. */
    const char *repair_mode;
    const qc_repair_plan *plan;
    bool dry_run, repaired;
    /* --salvage: the directory, what was (or would be) saved, and why not. */
    const char *salvage_dir;
    qc_salvage_info salvage;
    int salvage_ret;
    bool salvaged;
    char salvage_why[900];
    /* Progress on stderr: forced by -p, or on a terminal once the check
     * has taken longer than PROGRESS_DELAY; never with -q or JSON. */
    bool progress_forced, progress_allowed, progress_shown;
    double progress_start;
} cli;

#define PROGRESS_DELAY 0.5 /* seconds */

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: qcheck [-q] [-p] [-f qcow2] [--output=human|json] [-U] [--image-opts]\n"
            "              [--max-mem=SIZE] [-r leaks|all [-n] [--undo=LOG] [--salvage=DIR]] FILE\n"
            "       qcheck --rollback=LOG FILE\n"
            "       qcheck --list-problems[=markdown]\n"
            "\n"
            "Check a qcow2 image for consistency (read-only unless -r is given). Options\n"
            "and exit status follow `qemu-img check`:\n"
            "  -q, --quiet            print no summary (findings still go to stderr)\n"
            "  -p, --progress         show progress on stderr (shown anyway on a terminal when\n"
            "                         the check takes a while; never with -q or JSON output)\n"
            "  -f, --format=FMT       image format; only qcow2 can be checked\n"
            "  --output=FMT           human (default) or json\n"
            "  -r, --repair=leaks     lower the refcounts of leaked clusters\n"
            "  -r, --repair=all       repair everything qcheck can repair safely\n"
            "  -n, --dry-run          with -r: print every write the repair would make, write nothing\n"
            "  --undo=LOG             with -r: save the bytes the repair overwrites in LOG (a new file)\n"
            "  --salvage=DIR          with -r: first copy every cluster the repair unlinks or frees\n"
            "                         into DIR (new or empty), with an index\n"
            "  --rollback=LOG         restore FILE from an undo log, byte for byte\n"
            "  -U, --force-share      accepted for compatibility when checking (qcheck takes no\n"
            "                         locks to check; a repair refuses images QEMU has open)\n"
            "  --image-opts           FILE is an option string (driver=qcow2,file.filename=PATH)\n"
            "  -T, --cache=MODE       accepted for compatibility\n"
            "  --object=OBJDEF        accepted for compatibility (no secret is ever needed)\n"
            "  --max-mem=SIZE         memory the check may use (default 8G; suffixes K M G T)\n"
            "  --list-problems[=markdown]  list every problem qcheck can report\n"
            "  -h, --help             show this help\n"
            "  -V, --version          show the version\n"
            "\n"
            "Exit status: 0 no problems, 1 the check could not be completed (or the repair\n"
            "was refused or failed), 2 corruptions found, 3 only leaked clusters found,\n"
            "63 not a qcow2 image. After a repair: the state the image was left in.\n"
            "qcheck never opens a backing file or external data file named in the image.\n");
}

static void json_string(FILE *out, const char *s)
{
    fputc('"', out);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(out, "\\%c", *p);
        else if (*p < 0x20 || *p >= 0x7f)
            fprintf(out, "\\u%04x", *p);
        else
            fputc(*p, out);
    }
    fputc('"', out);
}

/* Print one finding as a JSON object into a heap string. */
static char *finding_json(const qc_finding *f)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&buf, &len);
    if (!m)
        return NULL;
    fprintf(m, "{\"code\": %u, \"id\": ", f->problem->code);
    json_string(m, f->problem->id);
    fprintf(m, ", \"severity\": ");
    json_string(m, qc_severity_name(f->problem->severity));
    fprintf(m, ", \"message\": ");
    json_string(m, f->message);
    fprintf(m, ", \"object\": ");
    json_string(m, f->object);
    if (f->offset == QC_NO_OFFSET)
        fprintf(m, ", \"offset\": null");
    else
        fprintf(m, ", \"offset\": %" PRIu64, f->offset);
    fprintf(m, ", \"count\": %" PRIu64 ", \"fix\": ", f->count);
    json_string(m, qc_fix_name(f->problem->fix));
    fputc('}', m);
    if (fclose(m) != 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* qemu-img's progress format, "    (12.34/100%)", rewritten in place. */
static void on_progress(unsigned permille, void *payload)
{
    cli *c = payload;
    if (!c->progress_allowed ||
        (!c->progress_forced && now_seconds() - c->progress_start < PROGRESS_DELAY))
        return;
    fprintf(stderr, "\r    (%6.2f/100%%)", permille / 10.0);
    fflush(stderr);
    c->progress_shown = true;
}

/* Take the progress line off the screen before other output. */
static void progress_clear(cli *c)
{
    if (c->progress_shown)
        fputs("\r                  \r", stderr);
    c->progress_shown = false;
}

static void progress_begin(cli *c)
{
    c->progress_allowed = !c->quiet && c->output == OUTPUT_HUMAN &&
                          (c->progress_forced || isatty(STDERR_FILENO));
    c->progress_start = now_seconds();
}

static void on_finding(const qc_finding *f, void *payload)
{
    cli *c = payload;
    if (c->output == OUTPUT_HUMAN) {
        progress_clear(c);
        fprintf(stderr, "%s: %s (%u) in %s", qc_severity_name(f->problem->severity),
                f->problem->id, f->problem->code, f->object);
        if (f->offset != QC_NO_OFFSET)
            fprintf(stderr, " at 0x%" PRIx64, f->offset);
        fprintf(stderr, ": %s\n", f->message);
        return;
    }
    if (c->nb_problems == c->cap_problems) {
        size_t cap = c->cap_problems ? c->cap_problems * 2 : 32;
        char **p = realloc(c->problems, cap * sizeof(*p));
        if (!p) {
            c->out_of_memory = true;
            return;
        }
        c->problems = p;
        c->cap_problems = cap;
    }
    char *s = finding_json(f);
    if (!s) {
        c->out_of_memory = true;
        return;
    }
    c->problems[c->nb_problems++] = s;
}

static void print_human_summary(const qc_result *r)
{
    if (!(r->corruptions || r->leaks || r->check_errors)) {
        printf("No errors were found on the image.\n");
    } else {
        if (r->corruptions)
            printf("\n%" PRIu64 " errors were found on the image.\n"
                   "Data may be corrupted, or further writes to the image may corrupt it.\n",
                   r->corruptions);
        if (r->leaks)
            printf("\n%" PRIu64 " leaked clusters were found on the image.\n"
                   "This means waste of disk space, but no harm to data.\n",
                   r->leaks);
        if (r->check_errors)
            printf("\n%" PRIu64 " internal errors have occurred during the check.\n",
                   r->check_errors);
    }
    if (r->total_clusters && r->allocated_clusters)
        printf("%" PRIu64 "/%" PRIu64 " = %0.2f%% allocated, %0.2f%% fragmented, %0.2f%% "
               "compressed clusters\n",
               r->allocated_clusters, r->total_clusters,
               (double)r->allocated_clusters * 100.0 / (double)r->total_clusters,
               (double)r->fragmented_clusters * 100.0 / (double)r->allocated_clusters,
               (double)r->compressed_clusters * 100.0 / (double)r->allocated_clusters);
    if (r->image_end_offset)
        printf("Image end offset: %" PRIu64 "\n", r->image_end_offset);
}

static void json_field(const char *key, uint64_t value, bool always)
{
    if (value || always)
        printf(",\n    \"%s\": %" PRIu64, key, value);
}

/* "unlinked": what the repair drops, frees or recovers (qc_unlinked);
 * offsets unknown or not applicable are left out. */
static void print_json_unlinked(const qc_repair_plan *plan)
{
    const qc_unlinked *u;
    size_t n = qc_repair_plan_unlinked(plan, &u);
    printf(", \"unlinked\": [");
    for (size_t i = 0; i < n; i++) {
        unsigned k = u[i].kind;
        printf("%s\n        {\"kind\": \"%s%s%s%s%s\", \"problem\": \"%s\"", i ? "," : "",
               k & QC_UNLINK_DROPPED ? "dropped" : "",
               (k & QC_UNLINK_DROPPED) && (k & ~QC_UNLINK_DROPPED) ? "+" : "",
               k & QC_UNLINK_FREED ? "freed" : "",
               (k & QC_UNLINK_FREED) && (k & QC_UNLINK_RECOVERED) ? "+" : "",
               k & QC_UNLINK_RECOVERED ? "recovered" : "", qc_problem_get(u[i].problem)->id);
        if (u[i].host_offset != QC_NO_OFFSET)
            printf(", \"host-offset\": %" PRIu64 ", \"length\": %" PRIu64, u[i].host_offset,
                   u[i].length);
        if (u[i].snapshot == QC_UNLINKED_ACTIVE)
            printf(", \"snapshot\": \"active\"");
        else if (u[i].snapshot != QC_UNLINKED_NONE)
            printf(", \"snapshot\": %" PRIu32, u[i].snapshot);
        if (u[i].guest_offset != QC_NO_OFFSET)
            printf(", \"guest-offset\": %" PRIu64 ", \"guest-length\": %" PRIu64,
                   u[i].guest_offset, u[i].guest_length);
        if (u[i].entry_offset != QC_NO_OFFSET)
            printf(", \"entry-offset\": %" PRIu64, u[i].entry_offset);
        if (u[i].target != QC_NO_OFFSET)
            printf(", \"target\": %" PRIu64, u[i].target);
        if (u[i].new_target != QC_NO_OFFSET)
            printf(", \"new-target\": %" PRIu64, u[i].new_target);
        printf("}");
    }
    printf("%s]", n ? "\n    " : "");
}

/* DIR/index.tsv, without doubling a trailing slash. */
static void salvage_index_path(const char *dir, char *buf, size_t len)
{
    size_t n = strlen(dir);
    snprintf(buf, len, "%s%s%s", dir, n && dir[n - 1] == '/' ? "" : "/", QC_SALVAGE_INDEX);
}

/* "salvage": what --salvage saved, or (dry run) would save. */
static void print_json_salvage(const cli *c)
{
    char index[4200];
    salvage_index_path(c->salvage_dir, index, sizeof(index));
    printf(", \"salvage\": {\"dir\": ");
    json_string(stdout, c->salvage_dir);
    printf(", \"ranges\": %" PRIu64 ", \"bytes\": %" PRIu64 ", \"index\": ", c->salvage.ranges,
           c->salvage.bytes);
    json_string(stdout, index);
    printf(", \"saved\": %s", c->salvaged ? "true" : "false");
    if (c->salvage_ret < 0) {
        printf(", \"refused\": ");
        json_string(stdout, c->salvage_why);
    }
    printf("}");
}

/* "repair": what -r did or (with --dry-run) would do. */
static void print_json_repair(const cli *c)
{
    const qc_repair_step *steps;
    const char *const *notes;
    size_t nb_steps = qc_repair_plan_steps(c->plan, &steps);
    size_t nb_notes = qc_repair_plan_notes(c->plan, &notes);
    printf(",\n    \"repair\": {\"mode\": ");
    json_string(stdout, c->repair_mode);
    printf(", \"dry-run\": %s, \"applied\": %s", c->dry_run ? "true" : "false",
           c->repaired ? "true" : "false");
    if (qc_repair_plan_refusal(c->plan)) {
        printf(", \"refused\": ");
        json_string(stdout, qc_repair_plan_refusal(c->plan));
    }
    printf(", \"notes\": [");
    for (size_t i = 0; i < nb_notes; i++) {
        printf("%s", i ? ", " : "");
        json_string(stdout, notes[i]);
    }
    printf("], \"steps\": [");
    for (size_t i = 0; i < nb_steps; i++) {
        printf("%s\n        ", i ? "," : "");
        if (steps[i].kind == QC_STEP_FLUSH) {
            printf("{\"flush\": true}");
            continue;
        }
        printf("{\"offset\": %" PRIu64 ", \"length\": %" PRIu64 ", \"what\": ", steps[i].offset,
               steps[i].length);
        json_string(stdout, steps[i].what);
        printf(", \"why\": ");
        json_string(stdout, steps[i].why);
        printf("}");
    }
    printf("%s]", nb_steps ? "\n    " : "");
    print_json_unlinked(c->plan);
    if (c->salvage_dir)
        print_json_salvage(c);
    printf("}");
}

/* The JSON object: qemu-img's ImageCheck keys (optional ones omitted when
 * zero), then qcheck's own. `error` is set when no check could be made. */
static void print_json(const cli *c, const qc_result *r, const char *format, const char *error,
                       int status)
{
    printf("{\n    \"filename\": ");
    json_string(stdout, c->filename);
    printf(",\n    \"format\": ");
    json_string(stdout, format);
    json_field("check-errors", r->check_errors, true);
    json_field("image-end-offset", r->image_end_offset, false);
    json_field("corruptions", r->corruptions, false);
    json_field("leaks", r->leaks, false);
    json_field("total-clusters", r->total_clusters, false);
    json_field("allocated-clusters", r->allocated_clusters, false);
    json_field("fragmented-clusters", r->fragmented_clusters, false);
    json_field("compressed-clusters", r->compressed_clusters, false);
    if (c->plan && c->repaired) {
        uint64_t leaks_fixed, corruptions_fixed;
        qc_repair_plan_fixed(c->plan, &leaks_fixed, &corruptions_fixed);
        json_field("leaks-fixed", leaks_fixed, false);
        json_field("corruptions-fixed", corruptions_fixed, false);
    }
    json_field("warnings", r->warnings, true);
    if (r->header_valid) {
        const qc_header_info *h = &r->header;
        printf(",\n    \"header\": {\"version\": %u, \"cluster-size\": %" PRIu64
               ", \"virtual-size\": %" PRIu64 ", \"refcount-bits\": %u, \"dirty\": %s, "
               "\"corrupt\": %s, \"external-data-file\": %s, \"extended-l2\": %s, "
               "\"snapshots\": %u, \"incompatible-features\": %" PRIu64
               ", \"compatible-features\": %" PRIu64 ", \"autoclear-features\": %" PRIu64
               ", \"unknown-incompatible-features\": %" PRIu64
               ", \"unknown-compatible-features\": %" PRIu64
               ", \"unknown-autoclear-features\": %" PRIu64 "}",
               h->version, (uint64_t)1 << h->cluster_bits, h->virtual_size, h->refcount_bits,
               h->dirty ? "true" : "false", h->corrupt ? "true" : "false",
               h->external_data_file ? "true" : "false", h->extended_l2 ? "true" : "false",
               h->nb_snapshots, h->incompatible_features, h->compatible_features,
               h->autoclear_features, h->unknown_incompatible, h->unknown_compatible,
               h->unknown_autoclear);
    }
    printf(",\n    \"problems\": [");
    for (size_t i = 0; i < c->nb_problems; i++)
        printf("%s\n        %s", i ? "," : "", c->problems[i]);
    printf("%s]", c->nb_problems ? "\n    " : "");
    if (c->plan)
        print_json_repair(c);
    if (error) {
        printf(",\n    \"error\": ");
        json_string(stdout, error);
    }
    printf(",\n    \"exit-code\": %d\n}\n", status);
}

/* Report a failure to start the check; returns the exit status. */
static int fail(const cli *c, int status, const char *format, const char *message)
{
    if (c->output == OUTPUT_JSON) {
        if (!c->quiet) {
            qc_result empty = {0};
            empty.check_errors = status == 1 ? 1 : 0;
            print_json(c, &empty, format, message, status);
        }
    } else {
        fprintf(stderr, "qcheck: %s\n", message);
    }
    return status;
}

static bool parse_size(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s)
        return false;
    unsigned shift = 0;
    switch (*end) {
    case 'k': case 'K': shift = 10; end++; break;
    case 'm': case 'M': shift = 20; end++; break;
    case 'g': case 'G': shift = 30; end++; break;
    case 't': case 'T': shift = 40; end++; break;
    case '\0': break;
    default: return false;
    }
    if (*end || v > (UINT64_MAX >> shift))
        return false;
    *out = (uint64_t)v << shift;
    return true;
}

/* --image-opts: "driver=qcow2,file.filename=PATH" (or filename=PATH). */
static const char *image_opts_path(char *opts, const char **driver)
{
    const char *path = NULL;
    *driver = NULL;
    for (char *tok = strtok(opts, ","); tok; tok = strtok(NULL, ",")) {
        if (strncmp(tok, "driver=", 7) == 0)
            *driver = tok + 7;
        else if (strncmp(tok, "file.filename=", 14) == 0)
            path = tok + 14;
        else if (strncmp(tok, "filename=", 9) == 0)
            path = tok + 9;
    }
    return path;
}

static void list_problems(bool markdown)
{
    if (markdown) {
        printf("# qcheck problem ids\n\n"
               "Generated from `checker/problems.def` by `qcheck --list-problems=markdown`;\n"
               "a test fails when this file and the table disagree.\n\n"
               "Severity `corruption` and `leak` count towards qemu-img's `corruptions` and\n"
               "`leaks`; `error` means the check could not be completed (exit 1); `warning`\n"
               "and `info` do not change the exit status.\n\n"
               "| Code | Id | Severity | Fix | Meaning |\n"
               "|---|---|---|---|---|\n");
    }
    for (unsigned i = 0; i < QC_P_COUNT; i++) {
        const qc_problem *p = qc_problem_get((qc_problem_id)i);
        if (markdown)
            printf("| %u | `%s` | %s | %s | %s |\n", p->code, p->id, qc_severity_name(p->severity),
                   qc_fix_name(p->fix), p->summary);
        else
            printf("%u\t%s\t%s\t%s\t%s\n", p->code, p->id, qc_severity_name(p->severity),
                   qc_fix_name(p->fix), p->summary);
    }
}

enum { OPT_OUTPUT = 256, OPT_IMAGE_OPTS, OPT_OBJECT, OPT_MAX_MEM, OPT_LIST, OPT_UNDO, OPT_ROLLBACK,
       OPT_SALVAGE };
static const char shortopts[] = ":hVqpf:r:nUT:";
static const struct option longopts[] = {
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, 'V'},
    {"quiet", no_argument, NULL, 'q'},
    {"progress", no_argument, NULL, 'p'},
    {"format", required_argument, NULL, 'f'},
    {"output", required_argument, NULL, OPT_OUTPUT},
    {"repair", required_argument, NULL, 'r'},
    {"force-share", no_argument, NULL, 'U'},
    {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS},
    {"cache", required_argument, NULL, 'T'},
    {"object", required_argument, NULL, OPT_OBJECT},
    {"max-mem", required_argument, NULL, OPT_MAX_MEM},
    {"list-problems", optional_argument, NULL, OPT_LIST},
    {"dry-run", no_argument, NULL, 'n'},
    {"undo", required_argument, NULL, OPT_UNDO},
    {"rollback", required_argument, NULL, OPT_ROLLBACK},
    {"salvage", required_argument, NULL, OPT_SALVAGE},
    {NULL, 0, NULL, 0},
};

/* A first pass over the options only to learn the output format, so that
 * usage errors found by the real pass are reported in JSON when asked. */
static enum output_format output_requested(int argc, char **argv)
{
    enum output_format out = OUTPUT_HUMAN;
    int opt;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, shortopts, longopts, NULL)) != -1)
        if (opt == OPT_OUTPUT && strcmp(optarg, "json") == 0)
            out = OUTPUT_JSON;
    optind = 0; /* GNU getopt: start over, reinitialising */
    return out;
}

/* Print the outcome of a check: the summary (human) or the JSON object. */
static void print_result(const cli *c, const qc_result *r, int status)
{
    if (c->output == OUTPUT_JSON) {
        if (!c->quiet)
            print_json(c, r, "qcow2", NULL, status);
        return;
    }
    if (!c->quiet)
        print_human_summary(r);
    if (r->check_errors)
        fprintf(stderr, "qcheck: Check failed: the check could not be completed\n");
}

/* Not a qcow2 image: exit 63, as qemu-img does for formats without checks. */
static int fail_other_format(const cli *c, const char *other_format)
{
    char msg[600];
    snprintf(msg, sizeof(msg),
             "'%s' is not a qcow2 image (it looks like %s); this image format does not support "
             "checks",
             c->path, other_format);
    return fail(c, 63, other_format, msg);
}

/* Check the file read-only; returns the exit status. *checked tells
 * whether there is a result to print (failures were reported already). */
static int check_file(cli *c, qc_result *r, bool *checked)
{
    char msg[600];
    *checked = false;
    qc_io io;
    int ret = qc_io_open_file(&io, c->path);
    if (ret < 0) {
        snprintf(msg, sizeof(msg), "Could not open '%s': %s", c->path, strerror(-ret));
        return fail(c, 1, "qcow2", msg);
    }
    qc_options o = {on_finding, c, c->max_mem, on_progress};
    progress_begin(c);
    ret = qc_check(&io, &o, r);
    progress_clear(c);
    qc_io_close(&io);
    if (ret < 0) {
        snprintf(msg, sizeof(msg), "Could not check '%s': %s", c->path, strerror(-ret));
        return fail(c, 1, "qcow2", msg);
    }
    if (r->other_format)
        return fail_other_format(c, r->other_format);
    int status = qc_exit_status(r);
    if (c->out_of_memory) {
        r->check_errors++;
        status = 1;
    }
    *checked = true;
    return status;
}

static void forget_findings(cli *c)
{
    for (size_t i = 0; i < c->nb_problems; i++)
        free(c->problems[i]);
    c->nb_problems = 0;
}

/* Human output of a plan: notes and steps on stderr (dry run: steps on
 * stdout, since they are what was asked for). */
static void print_plan_human(const cli *c, const qc_result *after)
{
    const qc_repair_step *steps;
    const char *const *notes;
    size_t nb_steps = qc_repair_plan_steps(c->plan, &steps);
    size_t nb_notes = qc_repair_plan_notes(c->plan, &notes);
    for (size_t i = 0; i < nb_notes; i++)
        fprintf(stderr, "repair: %s\n", notes[i]);
    char index[4200] = "";
    if (c->salvage_dir)
        salvage_index_path(c->salvage_dir, index, sizeof(index));
    if (c->salvaged)
        fprintf(stderr, "Saved %" PRIu64 " range%s (%" PRIu64 " bytes) to %s before repairing; index %s\n",
                c->salvage.ranges, c->salvage.ranges == 1 ? "" : "s", c->salvage.bytes,
                c->salvage_dir, index);
    if (!c->dry_run) {
        /* Like qemu-img's "Repairing ..." lines, capped for huge repairs. */
        size_t shown = 0, writes = 0;
        for (size_t i = 0; i < nb_steps; i++) {
            if (steps[i].kind != QC_STEP_WRITE)
                continue;
            writes++;
            if (shown++ < 50)
                fprintf(stderr, "Repairing %s: %s\n", steps[i].what, steps[i].why);
        }
        if (writes > 50)
            fprintf(stderr, "Repairing: ... and %zu more writes\n", writes - 50);
        return;
    }
    FILE *out = c->quiet ? stderr : stdout;
    size_t writes = 0;
    for (size_t i = 0; i < nb_steps; i++)
        writes += steps[i].kind == QC_STEP_WRITE;
    if (writes == 0) {
        fprintf(out, "Dry run (-r %s): the repair would write nothing.\n", c->repair_mode);
        return;
    }
    if (c->salvage_dir && c->salvage_ret == 0)
        fprintf(out, "Dry run (--salvage): %" PRIu64 " range%s (%" PRIu64 " bytes) would be saved to %s "
                "first; index %s\n",
                c->salvage.ranges, c->salvage.ranges == 1 ? "" : "s", c->salvage.bytes,
                c->salvage_dir, index);
    else if (c->salvage_dir)
        fprintf(out, "Dry run (--salvage): the repair would stop: %s\n", c->salvage_why);
    fprintf(out, "Dry run (-r %s): the repair would make these writes, in this order:\n",
            c->repair_mode);
    for (size_t i = 0; i < nb_steps; i++) {
        if (steps[i].kind == QC_STEP_FLUSH)
            fprintf(out, "    flush\n");
        else
            fprintf(out, "    write %" PRIu64 " bytes at 0x%" PRIx64 " (%s): %s\n", steps[i].length,
                    steps[i].offset, steps[i].what, steps[i].why);
    }
    fprintf(out,
            "After them, the check would find %" PRIu64 " errors and %" PRIu64
            " leaked clusters.\nNothing was written. The image as it is now:\n",
            after->corruptions, after->leaks);
}

/* Open the undo log: a new file, so an old log is never overwritten. */
static int open_undo(const char *path, qc_io *io)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    close(fd);
    int ret = qc_io_open_file_rw(io, path);
    if (ret < 0)
        unlink(path);
    return ret;
}

/* The crash-injection hook of the test suite: QCHECK_TEST_CRASH_AFTER_WRITES=N
 * lets N writes reach the image and fails the rest;
 * QCHECK_TEST_CRASH_DROP_UNFLUSHED=1 also takes back the unflushed ones. */
static bool crash_hook(qc_io *crash, qc_io *image)
{
    const char *after = getenv("QCHECK_TEST_CRASH_AFTER_WRITES");
    if (!after || !*after)
        return false;
    const char *drop = getenv("QCHECK_TEST_CRASH_DROP_UNFLUSHED");
    return qc_io_open_crash(crash, image, strtoull(after, NULL, 10), drop && *drop == '1') == 0;
}

/* --salvage: save what the plan unlinks or frees before anything is
 * written (a dry run only computes it). False when the repair must stop. */
static bool salvage(cli *c, qc_io *io, size_t nb_steps)
{
    if (!c->salvage_dir || nb_steps == 0)
        return true;
    c->salvage_ret = qc_repair_salvage(c->plan, io, c->salvage_dir, c->dry_run, &c->salvage,
                                       c->salvage_why, sizeof(c->salvage_why));
    if (c->salvage_ret < 0 && !c->salvage_why[0])
        snprintf(c->salvage_why, sizeof(c->salvage_why), "cannot save to '%s': %s", c->salvage_dir,
                 strerror(-c->salvage_ret));
    c->salvaged = c->salvage_ret == 0 && !c->dry_run;
    if (c->salvage_ret == 0 || c->dry_run)
        return true;
    size_t len = strlen(c->salvage_why);
    snprintf(c->salvage_why + len, sizeof(c->salvage_why) - len, " (nothing was written)");
    return false;
}

static int repair_file(cli *c, qc_repair_mode mode, const char *undo_path)
{
    char msg[700];
    qc_io io;
    int ret = c->dry_run ? qc_io_open_file(&io, c->path) : qc_io_open_file_rw(&io, c->path);
    if (ret < 0) {
        if (ret == -EBUSY)
            snprintf(msg, sizeof(msg),
                     "Could not open '%s' for repair: another process (QEMU?) holds its image "
                     "locks; stop it first, or repair a copy",
                     c->path);
        else
            snprintf(msg, sizeof(msg), "Could not open '%s'%s: %s", c->path,
                     c->dry_run ? "" : " for repair", strerror(-ret));
        return fail(c, 1, "qcow2", msg);
    }
    qc_options o = {on_finding, c, c->max_mem, on_progress};
    qc_result before, after;
    qc_repair_plan *plan = NULL;
    progress_begin(c);
    ret = qc_repair_plan_build(&io, &o, mode, &before, &after, &plan);
    progress_clear(c);
    c->plan = plan;
    int status;
    if (ret == -EPERM && before.other_format) {
        c->plan = NULL;
        status = fail_other_format(c, before.other_format);
    } else if (ret == -EPERM) {
        /* The check's own figures, then why nothing was written. */
        snprintf(msg, sizeof(msg), "cannot repair '%s': %s", c->path, qc_repair_plan_refusal(plan));
        status = 1;
        if (c->output == OUTPUT_JSON) {
            if (!c->quiet)
                print_json(c, &before, "qcow2", msg, status);
        } else {
            if (!c->quiet)
                print_human_summary(&before);
            fprintf(stderr, "qcheck: %s\n", msg);
        }
    } else if (ret < 0) {
        snprintf(msg, sizeof(msg), "Could not plan the repair of '%s': %s", c->path, strerror(-ret));
        status = fail(c, 1, "qcow2", msg);
    } else {
        const qc_repair_step *steps;
        size_t nb_steps = qc_repair_plan_steps(plan, &steps);
        qc_io undo = {0}, crash = {0};
        ret = undo_path && nb_steps && !c->dry_run ? open_undo(undo_path, &undo) : 0;
        bool salvage_refused = ret == 0 && !salvage(c, &io, nb_steps);
        if (salvage_refused && undo.close) {
            qc_io_close(&undo);
            unlink(undo_path);
        }
        if (c->output == OUTPUT_HUMAN && ret == 0 && !salvage_refused)
            print_plan_human(c, &after);
        if (ret == 0 && (c->dry_run || nb_steps == 0)) {
            status = qc_exit_status(&before);
            print_result(c, &before, status);
        } else {
            if (ret < 0) {
                snprintf(msg, sizeof(msg), "Could not create the undo log '%s': %s (nothing was written)",
                         undo_path, strerror(-ret));
                status = fail(c, 1, "qcow2", msg);
            } else if (salvage_refused) {
                status = fail(c, 1, "qcow2", c->salvage_why);
            } else {
                qc_io *target = crash_hook(&crash, &io) ? &crash : &io;
                ret = qc_repair_apply(plan, target, undo_path ? &undo : NULL);
                if (crash.close)
                    qc_io_close(&crash);
                if (undo.close)
                    qc_io_close(&undo);
                if (ret < 0) {
                    snprintf(msg, sizeof(msg),
                             "the repair of '%s' stopped: %s. The image is safe to check and "
                             "repair again (qcheck -r all)%s",
                             c->path, strerror(-ret), undo_path ? ", or to roll back" : "");
                    status = fail(c, 1, "qcow2", msg);
                } else {
                    c->repaired = true;
                    uint64_t leaks_fixed, corruptions_fixed;
                    qc_repair_plan_fixed(plan, &leaks_fixed, &corruptions_fixed);
                    if (c->output == OUTPUT_HUMAN && !c->quiet)
                        printf("The following inconsistencies were found and repaired:\n\n"
                               "    %" PRIu64 " leaked clusters\n    %" PRIu64 " corruptions\n\n"
                               "Double checking the fixed image now...\n",
                               leaks_fixed, corruptions_fixed);
                    qc_io_close(&io);
                    forget_findings(c);
                    qc_result final;
                    bool checked;
                    status = check_file(c, &final, &checked);
                    if (checked)
                        print_result(c, &final, status);
                }
            }
        }
    }
    if (io.close)
        qc_io_close(&io);
    qc_repair_plan_free(plan);
    c->plan = NULL;
    return status;
}

static int rollback_file(cli *c, const char *log_path)
{
    char msg[900], why[600] = "";
    qc_io image, log;
    int ret = qc_io_open_file_rw(&image, c->path);
    if (ret < 0) {
        snprintf(msg, sizeof(msg), "Could not open '%s' for rollback: %s", c->path,
                 ret == -EBUSY ? "another process (QEMU?) holds its image locks" : strerror(-ret));
        return fail(c, 1, "qcow2", msg);
    }
    ret = qc_io_open_file(&log, log_path);
    if (ret < 0) {
        qc_io_close(&image);
        snprintf(msg, sizeof(msg), "Could not open the undo log '%s': %s", log_path, strerror(-ret));
        return fail(c, 1, "qcow2", msg);
    }
    ret = qc_rollback(&image, &log, why, sizeof(why));
    qc_io_close(&log);
    qc_io_close(&image);
    if (ret < 0) {
        snprintf(msg, sizeof(msg), "refusing to roll back '%s' with '%s': %s%s", c->path, log_path,
                 why[0] ? why : strerror(-ret), ret == -EINVAL || ret == -ESTALE ? " (nothing was written)" : "");
        return fail(c, 1, "qcow2", msg);
    }
    if (!c->quiet) {
        if (c->output == OUTPUT_JSON) {
            printf("{\n    \"filename\": ");
            json_string(stdout, c->filename);
            printf(",\n    \"rolled-back\": true,\n    \"exit-code\": 0\n}\n");
        } else {
            printf("Rolled back '%s' to its state before the repair.\n", c->filename);
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    cli c = {0};
    const char *format = NULL, *repair = NULL, *undo_path = NULL, *rollback_log = NULL;
    bool image_opts = false, force_share = false;
    int opt;
    c.output = output_requested(argc, argv);
    c.filename = "";
    while ((opt = getopt_long(argc, argv, shortopts, longopts, NULL)) != -1) {
        char msg[300];
        switch (opt) {
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf("qcheck %s\n", QC_VERSION_STRING);
            return 0;
        case 'q':
            c.quiet = true;
            break;
        case 'p':
            c.progress_forced = true;
            break;
        case 'f':
            format = optarg;
            break;
        case OPT_OUTPUT:
            if (strcmp(optarg, "json") == 0) {
                c.output = OUTPUT_JSON;
            } else if (strcmp(optarg, "human") == 0) {
                c.output = OUTPUT_HUMAN;
            } else {
                c.output = OUTPUT_HUMAN;
                return fail(&c, 1, "unknown", "--output must be used with human or json as argument.");
            }
            break;
        case 'r':
            repair = optarg;
            break;
        case 'n':
            c.dry_run = true;
            break;
        case OPT_UNDO:
            undo_path = optarg;
            break;
        case OPT_ROLLBACK:
            rollback_log = optarg;
            break;
        case OPT_SALVAGE:
            c.salvage_dir = optarg;
            break;
        case 'U':
            force_share = true;
            break;
        case 'T':
        case OPT_OBJECT:
            break;
        case OPT_IMAGE_OPTS:
            image_opts = true;
            break;
        case OPT_MAX_MEM:
            if (!parse_size(optarg, &c.max_mem) || c.max_mem == 0) {
                snprintf(msg, sizeof(msg), "--max-mem expects a size such as 512M or 4G, not '%s'", optarg);
                return fail(&c, 1, "unknown", msg);
            }
            break;
        case OPT_LIST:
            list_problems(optarg && strcmp(optarg, "markdown") == 0);
            return 0;
        case ':':
            snprintf(msg, sizeof(msg), "option '%s' needs an argument (see qcheck --help)",
                     argv[optind - 1]);
            return fail(&c, 1, "unknown", msg);
        default:
            snprintf(msg, sizeof(msg), "unknown option '%s' (see qcheck --help)", argv[optind - 1]);
            return fail(&c, 1, "unknown", msg);
        }
    }
    if (optind != argc - 1)
        return fail(&c, 1, "unknown", "Expecting one image file name (see qcheck --help)");
    c.filename = c.path = argv[optind];
    char *opts_copy = NULL;
    if (image_opts) {
        opts_copy = strdup(argv[optind]);
        const char *driver;
        c.path = opts_copy ? image_opts_path(opts_copy, &driver) : NULL;
        if (!c.path) {
            free(opts_copy);
            return fail(&c, 1, "unknown", "--image-opts needs file.filename=PATH in its option string");
        }
        if (driver && !format)
            format = driver;
    }
    int status;
    char msg[600];
    qc_repair_mode mode = 0;
    if (repair && strcmp(repair, "leaks") == 0)
        mode = QC_REPAIR_LEAKS;
    else if (repair && strcmp(repair, "all") == 0)
        mode = QC_REPAIR_ALL;
    c.repair_mode = repair;
    if (repair && !mode) {
        snprintf(msg, sizeof(msg), "--repair (-r) expects 'leaks' or 'all', not '%s'", repair);
        status = fail(&c, 1, "qcow2", msg);
    } else if ((c.dry_run || undo_path) && !repair) {
        status = fail(&c, 1, "qcow2", "--dry-run and --undo go with -r leaks or -r all");
    } else if (c.salvage_dir && !repair) {
        status = fail(&c, 1, "qcow2", "--salvage goes with -r leaks or -r all");
    } else if (rollback_log && repair) {
        status = fail(&c, 1, "qcow2", "--rollback cannot be combined with -r");
    } else if (force_share && (repair || rollback_log)) {
        status = fail(&c, 1, "qcow2",
                      "--force-share (-U) can only be used when checking, not when writing");
    } else if (format && strcmp(format, "qcow2") != 0) {
        snprintf(msg, sizeof(msg), "format '%s' does not support checks; qcheck checks qcow2 images only", format);
        status = fail(&c, 63, format, msg);
    } else if (rollback_log) {
        status = rollback_file(&c, rollback_log);
    } else if (repair) {
        status = repair_file(&c, mode, undo_path);
    } else {
        qc_result r;
        bool checked;
        status = check_file(&c, &r, &checked);
        if (checked)
            print_result(&c, &r, status);
    }
    for (size_t i = 0; i < c.nb_problems; i++)
        free(c.problems[i]);
    free(c.problems);
    free(opts_copy);
    return status;
}
