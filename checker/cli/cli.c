/*
 * The qcheck command: a drop-in for `qemu-img check` on qcow2 images.
 *
 * Parses qemu-img check's options, runs the library, prints findings (one
 * line each, on stderr, as qemu-img prints its diagnostics) and the summary
 * lines qemu-img prints (on stdout), or one JSON object on stdout. Where
 * qemu-img prints a fixed sentence (a usage error, an image it cannot open
 * or check, an image in use), qcheck prints the same sentence after its
 * program name and its own explanation on the next line, and exits with
 * qemu-img's status. With -r it plans a repair, carries it out (or, with
 * --dry-run, only shows it) and checks the image again (repair_mode.c);
 * several images go to batch.c, --chain to chain_mode.c.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "command.h"
#include "visual.h"
#include "qcheck.h"

verdict cli_verdict_of(const qc_result *r)
{
    const qc_header_info *h = qc_result_header(r);
    verdict v = {
        .other_format = qc_result_other_format(r),
        .driver = qc_result_driver(r),
        .header_valid = h != NULL,
        .check_errors = qc_result_count(r, QC_COUNT_CHECK_ERRORS),
        .corruptions = qc_result_count(r, QC_COUNT_CORRUPTIONS),
        .leaks = qc_result_count(r, QC_COUNT_LEAKS),
        .image_end_offset = qc_result_count(r, QC_COUNT_IMAGE_END_OFFSET),
        .total_clusters = qc_result_count(r, QC_COUNT_TOTAL_CLUSTERS),
        .allocated_clusters = qc_result_count(r, QC_COUNT_ALLOCATED_CLUSTERS),
        .fragmented_clusters = qc_result_count(r, QC_COUNT_FRAGMENTED_CLUSTERS),
        .compressed_clusters = qc_result_count(r, QC_COUNT_COMPRESSED_CLUSTERS),
        .warnings = qc_result_count(r, QC_COUNT_WARNINGS),
        .findings = qc_result_count(r, QC_COUNT_FINDINGS),
        .status = qc_exit_status(r),
    };
    if (h)
        v.header = *h;
    return v;
}

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: qcheck [-q] [-p] [-f qcow2] [--output=human|json] [-U] [--image-opts]\n"
            "              [--max-mem=SIZE] [--deep] [--digest[=sha256|xxh128]]\n"
            "              [--chain [--allow-probe] [--max-depth=N]] [--data-file=PATH]\n"
            "              [--map=FILE.svg] [--report=FILE.html]\n"
            "              [-r leaks|all [-n] [--undo=LOG] [--salvage=DIR] [--truncate-leaks]]\n"
            "              [--metrics=FILE] FILE\n"
            "       qcheck [options] [-j N] [--timeout=SECONDS] [--files-from=LIST [--null]]\n"
            "              [--metrics=FILE] FILE...\n"
            "       qcheck --rollback=LOG FILE\n"
            "       qcheck --list-problems[=markdown]\n"
            "\n"
            "Check a qcow2 image for consistency (read-only unless -r is given). Options\n"
            "and exit status follow `qemu-img check`:\n"
            "  -q, --quiet            print no summary (findings still go to stderr)\n"
            "  -p, --progress         show progress on stderr (shown anyway on a terminal when\n"
            "                         the check takes a while; never with -q or JSON output)\n"
            "  -f, --format=FMT       image format: qcow2 or qed (the others are not checked)\n"
            "  --output=FMT           human (default) or json\n"
            "  -r, --repair=leaks     lower the refcounts of leaked clusters\n"
            "  -r, --repair=all       repair everything qcheck can repair safely\n"
            "  -n, --dry-run          with -r: print every write the repair would make, write nothing\n"
            "  --undo=LOG             with -r: save the bytes the repair overwrites in LOG (a new file)\n"
            "  --salvage=DIR          with -r: first copy every cluster the repair unlinks or frees\n"
            "                         into DIR (new or empty), with an index\n"
            "  --truncate-leaks       with -r on a QED image: cut off the leaked clusters that\n"
            "                         end the file (QED has no refcounts to lower)\n"
            "  --rollback=LOG         restore FILE from an undo log, byte for byte\n"
            "  -U, --force-share      check an image another process (a VM) has open for writing;\n"
            "                         the results may be inconsistent (without -U such an image\n"
            "                         is refused, as qemu-img refuses it)\n"
            "  --image-opts           FILE is an option string (driver=qcow2,file.filename=PATH,\n"
            "                         also file.locking=off, force-share=on)\n"
            "  -T, --cache=MODE       accepted for compatibility (none, writeback, ...)\n"
            "  --object=OBJDEF        accepted for compatibility (no secret is ever needed)\n"
            "  --max-mem=SIZE         memory the check may use (default 8G; suffixes K M G T)\n"
            "  --deep                 also read what the metadata points at: every compressed\n"
            "                         cluster must decompress to a whole cluster, every data\n"
            "                         cluster must be readable\n"
            "  --digest[=ALG]         after the check, print a digest of the guest content\n"
            "                         (sha256, the default, or xxh128; a raw FILE: its bytes)\n"
            "  --chain                open the backing files and external data files the images\n"
            "                         name, as QEMU resolves them, and check every layer\n"
            "                         (json: and protocol names are never followed)\n"
            "  --allow-probe          with --chain: guess the format of a backing file that has\n"
            "                         none recorded (autoprobing: just say no)\n"
            "  --max-depth=N          with --chain: at most N layers below FILE (default 256)\n"
            "  --data-file=PATH       FILE's external data file (instead of the name in it)\n"
            "  --map=FILE.svg         also draw the host file, cluster by cluster, as an SVG picture\n"
            "  --report=FILE.html     also write a self-contained HTML report: summary, map and\n"
            "                         findings (sortable, filterable)\n"
            "  --metrics=FILE         write the verdicts for Prometheus (node_exporter's\n"
            "                         textfile format), replacing FILE at once\n"
            "Several images (FILE..., or --files-from) are a batch: one line per image, its\n"
            "findings under it, then a summary table (JSON: one object per line):\n"
            "  --files-from=LIST      also check the images named in LIST, one per line (- for\n"
            "                         standard input)\n"
            "  -0, --null             with --files-from: names end with NUL (find -print0)\n"
            "  -j, --jobs=N           check N images at once (default: one per core)\n"
            "  --timeout=SECONDS      stop an image's check after SECONDS (verdict timeout)\n"
            "  With -r, --undo=DIR and --salvage=DIR name directories: DIR/NAME.undo and\n"
            "  DIR/NAME for the image named NAME. Images in use are skipped (in-use). -q\n"
            "  lists only the images that need a look, and no summary.\n"
            "  --list-problems[=markdown]  list every problem qcheck can report\n"
            "  -h, --help             show this help\n"
            "  -V, --version          show the version\n"
            "\n"
            "Exit status: 0 no problems, 1 the check could not be made or completed (usage\n"
            "error, cannot open, image in use, -f qcow2 on another format, repair refused or\n"
            "failed), 2 corruptions found, 3 only leaked clusters found, 63 a format without\n"
            "checks in qcheck. After a repair: the state the image was left in. With --chain:\n"
            "the same over the sums of every layer. A batch: the worst image's, in the order\n"
            "2 (corrupt), 1 (failed, timeout), 3 (leaks), 63 (unsupported), 0 (clean,\n"
            "repaired, in use).\n"
            "Without --chain or --data-file, qcheck never opens a backing file or external\n"
            "data file named in the image.\n");
}

/* One line on stderr after the program's name, as qemu-img's error_report
 * prints its sentences: callers and their tests grep them, so where
 * qemu-img has a fixed sentence for a situation qcheck prints that one,
 * and its own explanation as a second message. */
__attribute__((format(printf, 2, 3))) void cli_message(const cli *c, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s: ", c->prog);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* A usage error: the sentence, then qemu-img's pointer to the help.
 * Nothing is printed on stdout when nothing was checked, in JSON mode
 * either: qemu-img prints nothing there, and a caller reading JSON keys
 * with defaults (CloudStack reads a missing "leaks" as 0) must not take a
 * failure for a clean image. */
__attribute__((format(printf, 2, 3))) static int usage_error(const cli *c, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s: ", c->prog);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry '%s --help' for more information\n", c->prog);
    return 1;
}

void cli_json_string(FILE *out, const char *s)
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
    cli_json_string(m, f->problem->id);
    fprintf(m, ", \"severity\": ");
    cli_json_string(m, qc_severity_name(f->problem->severity));
    fprintf(m, ", \"message\": ");
    cli_json_string(m, f->message);
    fprintf(m, ", \"object\": ");
    cli_json_string(m, f->object);
    if (f->offset == QC_NO_OFFSET)
        fprintf(m, ", \"offset\": null");
    else
        fprintf(m, ", \"offset\": %" PRIu64, f->offset);
    fprintf(m, ", \"count\": %" PRIu64 ", \"fix\": ", f->count);
    cli_json_string(m, qc_fix_name(f->problem->fix));
    /* The facts the message was made from, typed, under their field names. */
    const qc_finding_ctx *c = f->context;
    bool present;
    uint64_t value;
    const char *key;
    for (unsigned i = 0; c && (key = qc_finding_field(c, i, &present, &value)); i++)
        if (present)
            fprintf(m, ", \"%s\": %" PRIu64, key, value);
    if (c && (c->present & QC_CTX_NAME) && c->name) {
        fprintf(m, ", \"name\": ");
        cli_json_string(m, c->name);
    }
    fputc('}', m);
    if (fclose(m) != 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

double cli_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* qemu-img's progress format, "    (12.34/100%)", rewritten in place. */
static void on_progress(unsigned permille, void *payload)
{
    cli *c = payload;
    __atomic_store_n(&c->outcome->permille, permille, __ATOMIC_RELAXED);
    if (!c->progress_allowed ||
        (!c->progress_forced && cli_now() - c->progress_start < PROGRESS_DELAY))
        return;
    fprintf(stderr, "\r    (%6.2f/100%%)", permille / 10.0);
    fflush(stderr);
    c->progress_shown = true;
}

/* Take the progress line off the screen before other output. */
void cli_progress_clear(cli *c)
{
    if (c->progress_shown)
        fputs("\r                  \r", stderr);
    c->progress_shown = false;
}

void cli_progress_begin(cli *c)
{
    c->progress_allowed = !c->quiet && c->output == OUTPUT_HUMAN &&
                          (c->progress_forced || isatty(STDERR_FILENO));
    c->progress_start = cli_now();
}

static void on_finding(const qc_finding *f, void *payload)
{
    cli *c = payload;
    if (c->visual)
        vis_section_add_finding(c->visual, f);
    if (c->output == OUTPUT_HUMAN) {
        cli_progress_clear(c);
        if (c->layer >= 0)
            fprintf(stderr, "layer %d: ", c->layer);
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

void cli_print_human_summary(const verdict *r)
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





static void json_field(FILE *out, const char *ind, const char *key, uint64_t value, bool always)
{
    if (value || always)
        fprintf(out, ",\n%s\"%s\": %" PRIu64, ind, key, value);
}

/* The JSON object's members up to "problems". First qemu-img's ImageCheck
 * keys, optional ones left out when zero, in the order qemu-img 7.2 prints
 * them: the order of its QDict's hash buckets, which is fixed for these
 * names (observed, and derived from QEMU's tdb_hash modulo 512: every key
 * has a bucket of its own, so the order does not depend on which keys are
 * present). Then qcheck's own keys. */
void cli_print_json_members(FILE *out, const cli *c, const verdict *r, const char *ind)
{
    uint64_t leaks_fixed = 0, corruptions_fixed = 0;
    if (c->plan && c->repaired)
        qc_repair_plan_fixed(c->plan, &leaks_fixed, &corruptions_fixed);
    const struct {
        const char *key;
        uint64_t value;
        bool always;
    } before_filename[] = {
        {"image-end-offset", r->image_end_offset, false},
        {"compressed-clusters", r->compressed_clusters, false},
        {"total-clusters", r->total_clusters, false},
        {"corruptions", r->corruptions, false},
        {"corruptions-fixed", corruptions_fixed, false},
        {"check-errors", r->check_errors, true},
        {"leaks", r->leaks, false},
        {"leaks-fixed", leaks_fixed, false},
        {"allocated-clusters", r->allocated_clusters, false},
    };
    const char *sep = "";
    for (size_t i = 0; i < sizeof(before_filename) / sizeof(before_filename[0]); i++) {
        if (!before_filename[i].value && !before_filename[i].always)
            continue;
        fprintf(out, "%s%s\"%s\": %" PRIu64, sep, ind, before_filename[i].key,
                before_filename[i].value);
        sep = ",\n";
    }
    fprintf(out, ",\n%s\"filename\": ", ind);
    cli_json_string(out, c->layer > 0 ? c->layer_path : c->filename);
    fprintf(out, ",\n%s\"format\": ", ind);
    cli_json_string(out, r->driver ? r->driver : "qcow2");
    json_field(out, ind, "fragmented-clusters", r->fragmented_clusters, false);
    json_field(out, ind, "warnings", r->warnings, true);
    if (r->header_valid) {
        const qc_header_info *h = &r->header;
        fprintf(out,
                ",\n%s\"header\": {\"version\": %u, \"cluster-size\": %" PRIu64
                ", \"virtual-size\": %" PRIu64 ", \"refcount-bits\": %u, \"dirty\": %s, "
                "\"corrupt\": %s, \"external-data-file\": %s, \"extended-l2\": %s, "
                "\"snapshots\": %u, \"incompatible-features\": %" PRIu64
                ", \"compatible-features\": %" PRIu64 ", \"autoclear-features\": %" PRIu64
                ", \"unknown-incompatible-features\": %" PRIu64
                ", \"unknown-compatible-features\": %" PRIu64
                ", \"unknown-autoclear-features\": %" PRIu64 "}",
                ind, h->version, (uint64_t)1 << h->cluster_bits, h->virtual_size,
                h->refcount_bits, h->dirty ? "true" : "false", h->corrupt ? "true" : "false",
                h->external_data_file ? "true" : "false", h->extended_l2 ? "true" : "false",
                h->nb_snapshots, h->incompatible_features, h->compatible_features,
                h->autoclear_features, h->unknown_incompatible, h->unknown_compatible,
                h->unknown_autoclear);
    }
    fprintf(out, ",\n%s\"problems\": [", ind);
    for (size_t i = 0; i < c->nb_problems; i++)
        fprintf(out, "%s\n%s    %s", i ? "," : "", ind, c->problems[i]);
    fprintf(out, "%s%s]", c->nb_problems ? "\n" : "", c->nb_problems ? ind : "");
}

/* The JSON object of a check or repair; `error` is set for a refused
 * repair. */
void cli_print_json(const cli *c, const verdict *r, const char *error, int status)
{
    printf("{\n");
    cli_print_json_members(stdout, c, r, "    ");
    if (c->plan)
        cli_print_json_repair(c);
    if (error) {
        printf(",\n    \"error\": ");
        cli_json_string(stdout, error);
    }
    if (c->digest[0]) {
        printf(",\n    \"digest\": ");
        cli_json_string(stdout, c->digest);
    }
    printf(",\n    \"exit-code\": %d\n}\n", status);
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

/* A template as a Markdown table cell: in code, with its `|` escaped. */
static void markdown_cell(const char *s)
{
    putchar('`');
    for (; *s; s++) {
        if (*s == '|')
            putchar('\\');
        putchar(*s);
    }
    putchar('`');
}

static void list_problems(bool markdown)
{
    if (markdown) {
        fputs("# qcheck problem ids\n\n"
               "Generated from `checker/include/qcheck_problems.def` by `qcheck --list-problems=markdown`;\n"
               "a test fails when this file and the table disagree.\n\n"
               "Severity `corruption` and `leak` count towards qemu-img's `corruptions` and\n"
               "`leaks`; `error` means the check could not be completed (exit 1); `warning`\n"
               "and `info` do not change the exit status.\n\n"
               "Message is the template of every finding's message: `%{field}` is a fact of\n"
               "the finding, given in the JSON output under that key too (see the README);\n"
               "`%{field=a|b}` picks the wording by the field's value, `%{field?a|b}` by\n"
               "whether the finding has it.\n\n"
               "| Code | Id | Severity | Fix | Meaning | Message |\n"
               "|---|---|---|---|---|---|\n",
              stdout);
    }
    for (size_t i = 0; i < qc_problem_count(); i++) {
        const qc_problem *p = qc_problem_at(i);
        if (markdown) {
            printf("| %u | `%s` | %s | %s | %s | ", (unsigned)p->code, p->id, qc_severity_name(p->severity),
                   qc_fix_name(p->fix), p->summary);
            markdown_cell(p->message);
            printf(" |\n");
        } else {
            printf("%u\t%s\t%s\t%s\t%s\n", (unsigned)p->code, p->id, qc_severity_name(p->severity),
                   qc_fix_name(p->fix), p->summary);
        }
    }
}


/* ---- Formats: what qemu-img does with a file that is not qcow2 ---------- */

/* The block drivers of QEMU 7.2 as Debian builds it (`qemu-img --help`);
 * qemu-img calls any other -f value an unknown driver. */
static bool qemu_driver(const char *name)
{
    static const char *const drivers[] = {
        "blkdebug", "blklogwrites", "blkverify", "bochs", "cloop", "compress",
        "copy-before-write", "copy-on-read", "dmg", "file", "ftp", "ftps", "gluster",
        "host_cdrom", "host_device", "http", "https", "iscsi", "iser", "luks", "nbd", "nfs",
        "null-aio", "null-co", "nvme", "parallels", "preallocate", "qcow", "qcow2", "qed",
        "quorum", "raw", "rbd", "replication", "snapshot-access", "ssh", "throttle", "vdi",
        "vhdx", "vmdk", "vpc", "vvfat",
    };
    for (size_t i = 0; i < sizeof(drivers) / sizeof(drivers[0]); i++)
        if (strcmp(name, drivers[i]) == 0)
            return true;
    return false;
}

/* Formats whose QEMU driver has a check of its own. */
static bool qemu_checks(const char *driver)
{
    return strcmp(driver, "qed") == 0 || strcmp(driver, "vmdk") == 0 ||
           strcmp(driver, "vdi") == 0 || strcmp(driver, "vhdx") == 0 ||
           strcmp(driver, "parallels") == 0;
}

/* Raw (and the file protocol used as a format) shares the write permission
 * with other processes, so an image in use does not stop qemu-img from
 * reaching "This image format does not support checks". */
bool cli_shares_write(const char *driver)
{
    return strcmp(driver, "raw") == 0 || strcmp(driver, "file") == 0;
}

/* How the driver named by -f refuses a file in another format, where its
 * sentence does not depend on the file (observed with qemu-img 7.2). */
static const char *not_in_format(const char *driver)
{
    static const struct {
        const char *driver, *sentence;
    } refusals[] = {
        {"qcow2", "Image is not in qcow2 format"},
        {"qed", "Image not in QED format"},
        {"parallels", "Image not in Parallels format"},
        {"bochs", "Image not in Bochs format"},
        {"vpc", "invalid VPC image"},
        {"vmdk", "invalid VMDK image descriptor"},
        {"qcow", "Image not in qcow format"},
    };
    for (size_t i = 0; i < sizeof(refusals) / sizeof(refusals[0]); i++)
        if (strcmp(driver, refusals[i].driver) == 0)
            return refusals[i].sentence;
    return NULL;
}

/* QEMU's LUKS driver cannot even look at a file without a key. */
static int luks_without_key(const cli *c)
{
    cli_message(c, "Could not open '%s': Parameter 'key-secret' is required for cipher", c->filename);
    cli_message(c, "'%s' would be opened as a LUKS image; qcheck checks qcow2 and QED images only", c->path);
    return 1;
}

/* -f names a format the file is not in: qemu-img's driver refuses to open
 * it (exit 1). */
static int wrong_format(const cli *c, const char *looks_like)
{
    const char *sentence = not_in_format(c->format);
    if (sentence)
        cli_message(c, "Could not open '%s': %s", c->filename, sentence);
    else
        cli_message(c, "Could not open '%s': Image not in %s format", c->filename, c->format);
    cli_message(c, "'%s' is not a %s image (it looks like %s)%s", c->path, c->format, looks_like,
            sentence ? "" : "; qemu-img's own reason for this driver may differ");
    return 1;
}

/* The file is not qcow2 (the library's guess says what it looks like):
 * what qemu-img says with the same -f or driver=, and its exit status. */
int cli_not_qcow2(const cli *c, const char *guess, const char *driver)
{
    if (c->format && strcmp(c->format, "qcow2") == 0 && strcmp(driver, "qcow") == 0) {
        /* The qcow2 driver reads the same magic and refuses the version. */
        cli_message(c, "Could not open '%s': Unsupported qcow2 version 1", c->filename);
        cli_message(c, "'%s' is a qcow (version 1) image, not qcow2", c->path);
        return 1;
    }
    if (c->format && strcmp(c->format, driver) != 0)
        return wrong_format(c, guess);
    if (strcmp(driver, "luks") == 0 && !c->key_secret)
        return luks_without_key(c);
    if (c->probed_raw_warning && strcmp(driver, "raw") == 0)
        fprintf(stderr, "WARNING: Image format was not specified for '%s' and probing guessed raw.\n"
                        "         Automatically detecting the format is dangerous for raw images, "
                        "write operations on block 0 will be restricted.\n"
                        "         Specify the 'raw' format explicitly to remove the restrictions.\n",
                c->path);
    cli_message(c, "This image format does not support checks");
    if (qemu_checks(driver))
        cli_message(c, "'%s' is a %s image: qemu-img can check it, qcheck checks qcow2 and QED images only",
                c->path, driver);
    else
        cli_message(c, "'%s' is not a qcow2 image (it looks like %s); qcheck checks qcow2 and QED images only",
                c->path, guess);
    return 63;
}

/* The version field of a file that starts with the qcow magic (QEMU's
 * qcow2 driver takes 2 and up, its qcow driver 1); 0 without the magic. */
static uint32_t qcow_version(qc_io *io)
{
    uint8_t b[8];
    if (io->size < sizeof(b) || io->read(io->opaque, 0, b, sizeof(b)) < 0 ||
        memcmp(b, "QFI\xfb", 4) != 0)
        return 0;
    return (uint32_t)b[4] << 24 | (uint32_t)b[5] << 16 | (uint32_t)b[6] << 8 | b[7];
}

/* -f raw (or file): qemu-img opens the file and finds no check. */
static int given_raw(const cli *c)
{
    cli_message(c, "This image format does not support checks");
    cli_message(c, "the format was given as %s; qcheck checks qcow2 and QED images only", c->format);
    return 63;
}

/* What an -f (or driver=) other than qcow2 decides before anything is
 * checked, once the file is open: raw has no check; the key-less LUKS
 * driver, and the other drivers given a qcow2 file, refuse to open it.
 * Returns -1 to go on, or the exit status (io closed). */
int cli_given_format(const cli *c, qc_io *io)
{
    int status = -1;
    if (!c->format || strcmp(c->format, "qcow2") == 0)
        return -1;
    uint32_t version = qcow_version(io);
    if (cli_shares_write(c->format)) {
        status = given_raw(c);
    } else if (strcmp(c->format, "luks") == 0 && !c->key_secret) {
        status = luks_without_key(c);
    } else if (version >= 2 && strcmp(c->format, "qcow") == 0) {
        cli_message(c, "Could not open '%s': qcow (v1) does not support qcow version %" PRIu32,
                c->filename, version);
        fprintf(stderr, "Try the 'qcow2' driver instead.\n");
        status = 1;
    } else if (version >= 2) {
        status = wrong_format(c, "qcow2");
    }
    if (status >= 0)
        qc_io_close(io);
    return status;
}

/* ---- QEMU's image locks -------------------------------------------------- */

/* QEMU's names of its permissions (bdrv_perm_names). */
static const char *perm_name(unsigned perm)
{
    switch (perm) {
    case QC_PERM_CONSISTENT_READ: return "consistent read";
    case QC_PERM_WRITE: return "write";
    case QC_PERM_WRITE_UNCHANGED: return "write unchanged";
    case QC_PERM_RESIZE: return "resize";
    default: return "graph change";
    }
}

/* The lock QEMU would fail to get first with the same open, in the order
 * its file-posix driver tests them (raw_check_lock_bytes): a permission we
 * need that another process refuses to share (`*shared` false), then one
 * another process holds that we refuse to share (`*shared` true: QEMU's
 * "shared" lock), each in permission order. A check needs consistent read
 * and refuses to share write and resize; a repair needs read, write and
 * resize and shares nothing; -U and raw share everything. 0: no
 * conflict. */
static unsigned lock_conflict(const qc_lock_state *o, qc_lock_mode mode, bool raw, bool *shared)
{
    unsigned need = 0, refuse = 0;
    switch (mode) {
    case QC_LOCK_CHECK:
        need = QC_PERM_CONSISTENT_READ;
        refuse = QC_PERM_WRITE | QC_PERM_RESIZE;
        break;
    case QC_LOCK_SHARED:
        need = QC_PERM_CONSISTENT_READ;
        break;
    case QC_LOCK_NONE:
        break;
    case QC_LOCK_REPAIR:
        need = QC_PERM_CONSISTENT_READ | QC_PERM_WRITE | QC_PERM_RESIZE;
        refuse = QC_PERM_WRITE | QC_PERM_RESIZE;
        break;
    }
    if (raw)
        refuse = 0;
    for (unsigned perm = 1; perm <= QC_PERM_GRAPH_MOD; perm <<= 1) {
        if (need & perm & o->unshared) {
            *shared = false;
            return perm;
        }
    }
    for (unsigned perm = 1; perm <= QC_PERM_GRAPH_MOD; perm <<= 1) {
        if (refuse & perm & o->held) {
            *shared = true;
            return perm;
        }
    }
    return 0;
}

/* The open was refused for the locks of another process (or one of ours
 * could not be taken): QEMU's sentences, then qcheck's advice. */
static int lock_refused(const cli *c, const qc_lock_state *o, bool repair)
{
    bool shared = false;
    unsigned perm = lock_conflict(o, repair ? QC_LOCK_REPAIR : c->lock_mode, false, &shared);
    /* Every refusal but a file system that takes no locks at all means
     * another process has the image. */
    c->outcome->in_use = !o->failed_byte || o->failed_errno == EAGAIN ||
                             o->failed_errno == EACCES;
    if (o->failed_byte && (o->failed_errno == EAGAIN || o->failed_errno == EACCES)) {
        cli_message(c, "Could not open '%s': Failed to lock byte %d", c->filename, o->failed_byte);
        cli_message(c, "another process holds a write lock on byte %d of '%s' (QEMU itself takes "
                   "only read locks there)",
                o->failed_byte, c->path);
        return 1;
    }
    if (o->failed_byte) {
        cli_message(c, "Could not open '%s': Failed to lock byte %d: %s", c->filename, o->failed_byte,
                strerror(o->failed_errno));
        cli_message(c, "the file system refused QEMU's image lock; --image-opts "
                   "driver=qcow2,file.filename=PATH,file.locking=off checks without locks");
        return 1;
    }
    if (perm)
        cli_message(c, "Could not open '%s': Failed to get %s\"%s\" lock", c->filename,
                shared ? "shared " : "", perm_name(perm));
    else /* a repair refuses readers too, which QEMU would let in */
        cli_message(c, "Could not open '%s': the image is in use by another process", c->filename);
    fprintf(stderr, "Is another process using the image [%s]?\n", c->path);
    if (repair)
        cli_message(c, "a repair needs the image to itself: stop the process that has it open (a VM, "
                   "qemu-img, qemu-io), or repair a copy; nothing was written");
    else if (perm == QC_PERM_CONSISTENT_READ)
        cli_message(c, "another process has the image open and lets no one else read it (as the "
                   "target of a block job does); -U does not change that");
    else
        cli_message(c, "another process (a VM, qemu-io) has the image open for writing, so a check "
                   "could read writes half done; stop it, or check anyway with -U (the results "
                   "may then be inconsistent)");
    return 1;
}

int cli_open_error(const cli *c, int err, const qc_lock_state *o, bool repair)
{
    if (err == -EBUSY)
        return lock_refused(c, o, repair);
    if (err == -EINVAL)
        cli_message(c, "Could not open '%s': 'file' driver requires '%s' to be a regular file",
                c->filename, c->path);
    else
        cli_message(c, "Could not open '%s': Could not open '%s': %s", c->filename, c->path,
                strerror(-err));
    return 1;
}

/* Whether QEMU would probe the file as raw: it does not start with the
 * qcow magic, and the library's look at its first bytes finds no other
 * format (this stops at the header). */
static bool probes_as_raw(qc_io *io)
{
    if (qcow_version(io))
        return false;
    qc_result *r = qc_result_new();
    bool raw = r && qc_check(io, NULL, r) == 0 && qc_result_other_format(r) &&
               strcmp(qc_result_driver(r), "raw") == 0;
    qc_result_free(r);
    return raw;
}

/* A repair's open was refused for another process's locks. QEMU's raw
 * driver shares everything, so with a raw file qemu-img gets as far as
 * "This image format does not support checks" unless the other process
 * refuses to share what a writer needs. Returns the exit status. */
int cli_repair_open_busy(const cli *c, const qc_lock_state *others)
{
    bool shared, raw = c->format && cli_shares_write(c->format);
    if (!others->failed_byte && !c->format) {
        qc_io probe;
        if (qc_io_open_image(&probe, c->path, QC_LOCK_NONE, NULL) == 0) {
            raw = probes_as_raw(&probe);
            qc_io_close(&probe);
        }
    }
    if (others->failed_byte || !raw || lock_conflict(others, QC_LOCK_REPAIR, true, &shared))
        return lock_refused(c, others, true);
    return c->format ? given_raw(c) : cli_not_qcow2(c, "raw", "raw");
}

/* -r with -f raw (or file): qemu-img opens the file read-write, sharing
 * everything as its raw driver does, and finds no check. qcheck does the
 * same without taking a repair's exclusive locks for it. */
int cli_repair_raw(const cli *c)
{
    qc_lock_state others = {0};
    int fd = open(c->path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return cli_open_error(c, -errno, &others, true);
    close(fd);
    qc_io io;
    bool shared;
    int ret = qc_io_open_image(&io, c->path, QC_LOCK_NONE, &others);
    if (ret < 0)
        return cli_open_error(c, ret, &others, true);
    qc_io_close(&io);
    if (lock_conflict(&others, QC_LOCK_REPAIR, true, &shared))
        return lock_refused(c, &others, true);
    return given_raw(c);
}

/* Open the image for a check (or a dry run) and settle, in qemu-img's
 * order, what it settles before checking: the open itself, the locks of
 * other processes, the format given. Returns -1 with io open to go on
 * (*in_use: another process may be writing, and -U or file.locking=off
 * let the check go ahead), or the exit status of a failure reported. */
int cli_open_for_check(const cli *c, qc_io *io, bool *in_use)
{
    qc_lock_state others;
    *in_use = false;
    int ret = qc_io_open_image(io, c->path, c->lock_mode, &others);
    if (ret < 0)
        return cli_open_error(c, ret, &others, false);
    bool shared, raw = c->format && cli_shares_write(c->format);
    /* Probing a file is only needed when raw's sharing would save it. */
    if (!raw && !c->format && lock_conflict(&others, c->lock_mode, false, &shared))
        raw = probes_as_raw(io);
    if (lock_conflict(&others, c->lock_mode, raw, &shared)) {
        qc_io_close(io);
        return lock_refused(c, &others, false);
    }
    *in_use = others.held & (QC_PERM_WRITE | QC_PERM_RESIZE);
    return cli_given_format(c, io);
}

/* -U (or file.locking=off) let the check of an image in use go ahead:
 * say so among the findings, where a caller of the JSON output sees it. */
void cli_report_in_use(cli *c, verdict *r)
{
    const qc_problem *p = qc_problem_get(QC_P_IMAGE_IN_USE);
    qc_finding_ctx fc = {.present = QC_CTX_NAME,
                         .name = c->lock_mode == QC_LOCK_NONE ? "file.locking=off" : "-U"};
    char message[256];
    qc_finding_format(p, &fc, message, sizeof(message));
    qc_finding f = {
        .problem = p,
        .object = "image file",
        .message = message,
        .offset = QC_NO_OFFSET,
        .count = 1,
        .context = &fc,
    };
    on_finding(&f, c);
    r->warnings++;
    r->findings++;
}

enum {
    OPT_OUTPUT = 256, OPT_DIGEST, OPT_DEEP, OPT_IMAGE_OPTS, OPT_OBJECT, OPT_MAX_MEM, OPT_LIST,
    OPT_UNDO, OPT_ROLLBACK, OPT_SALVAGE, OPT_CHAIN, OPT_DATA_FILE, OPT_ALLOW_PROBE, OPT_MAX_DEPTH,
    OPT_FILES_FROM, OPT_TIMEOUT, OPT_METRICS, OPT_MAP, OPT_REPORT, OPT_TRUNCATE_LEAKS
};
static const char shortopts[] = ":hVqpf:r:nUT:j:0";
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
    {"digest", optional_argument, NULL, OPT_DIGEST},
    {"deep", no_argument, NULL, OPT_DEEP},
    {"chain", no_argument, NULL, OPT_CHAIN},
    {"data-file", required_argument, NULL, OPT_DATA_FILE},
    {"allow-probe", no_argument, NULL, OPT_ALLOW_PROBE},
    {"max-depth", required_argument, NULL, OPT_MAX_DEPTH},
    {"dry-run", no_argument, NULL, 'n'},
    {"undo", required_argument, NULL, OPT_UNDO},
    {"rollback", required_argument, NULL, OPT_ROLLBACK},
    {"salvage", required_argument, NULL, OPT_SALVAGE},
    {"truncate-leaks", no_argument, NULL, OPT_TRUNCATE_LEAKS},
    {"files-from", required_argument, NULL, OPT_FILES_FROM},
    {"null", no_argument, NULL, '0'},
    {"jobs", required_argument, NULL, 'j'},
    {"timeout", required_argument, NULL, OPT_TIMEOUT},
    {"metrics", required_argument, NULL, OPT_METRICS},
    {"map", required_argument, NULL, OPT_MAP},
    {"report", required_argument, NULL, OPT_REPORT},
    {NULL, 0, NULL, 0},
};

/* The header problems that make QEMU refuse to open the image and that
 * qcheck reports as check errors (it cannot go on either): qemu-img's
 * reason, kept in c->cannot_open. The version is read again from the file,
 * as the result has no header for a version qcheck does not know. QEMU
 * names an unknown bit from the image's feature name table when it has
 * one; this names the mask. */
void cli_note_cannot_open(cli *c, qc_io *io, const qc_result *r)
{
    c->cannot_open[0] = '\0';
    const qc_header_info *h = qc_result_header(r);
    if (qc_result_problem_count(r, QC_P_VERSION_UNSUPPORTED))
        snprintf(c->cannot_open, sizeof(c->cannot_open), "Unsupported qcow2 version %" PRIu32,
                 qcow_version(io));
    else if (qc_result_problem_count(r, QC_P_UNKNOWN_INCOMPAT_FEATURE) && h)
        snprintf(c->cannot_open, sizeof(c->cannot_open),
                 "Unsupported qcow2 feature(s): Unknown incompatible feature: %" PRIx64,
                 h->unknown_incompatible);
}

/* After the summary of a check that could not be completed: qemu-img's
 * "Check failed" (or, for a header QEMU cannot open, its "Could not open"
 * sentence), on stderr, with -q and in JSON mode too, as qemu-img. */
void cli_check_failed(const cli *c, const verdict *r, const char *why)
{
    if (c->cannot_open[0]) {
        cli_message(c, "Could not open '%s': %s", c->filename, c->cannot_open);
        cli_message(c, "%s", why ? why : "the image header cannot be used: see the error findings");
    } else {
        cli_message(c, "Check failed");
        if (why)
            cli_message(c, "%s", why);
        else
            cli_message(c, "%" PRIu64 " check errors: parts of the image could not be checked (the "
                       "error findings say which)",
                    r->check_errors);
    }
}

/* The figures a run reached, for batch mode and --metrics. */
void cli_note_outcome(const cli *c, const verdict *r)
{
    image_outcome *o = c->outcome;
    o->summarised = true;
    o->leaks = r->leaks;
    o->corruptions = r->corruptions;
    o->check_errors = r->check_errors;
    uint64_t leaks_fixed = 0, corruptions_fixed = 0;
    if (c->plan && c->repaired)
        qc_repair_plan_fixed(c->plan, &leaks_fixed, &corruptions_fixed);
    o->fixed = leaks_fixed + corruptions_fixed;
}

/* Print the outcome of a check: the summary (human) or the JSON object,
 * then whether the check failed. */
void cli_print_result(const cli *c, const verdict *r, int status)
{
    cli_note_outcome(c, r);
    if (!c->quiet) {
        if (c->output == OUTPUT_JSON)
            cli_print_json(c, r, NULL, status);
        else
            cli_print_human_summary(r);
    }
    /* Asked for by name, the digest is printed with -q too. */
    if (c->digest[0] && (c->quiet || c->output == OUTPUT_HUMAN))
        printf("%s\n", c->digest);
    if (r->check_errors)
        cli_check_failed(c, r, NULL);
}

/* The check's options: findings and progress to the command. */
qc_options cli_check_options(cli *c)
{
    qc_options o = QC_OPTIONS_INIT;
    o.max_mem = c->max_mem;
    o.on_finding = on_finding;
    o.on_progress = on_progress;
    o.deep = c->deep;
    o.truncate_leaks = c->truncate_leaks;
    o.payload = c;
    return o;
}

/* qemu-img check's exit status for a check's verdict; findings the command
 * could not keep in memory make it a check error. */
int cli_final_status(const cli *c, verdict *v)
{
    if (c->out_of_memory) {
        v->check_errors++;
        return 1;
    }
    return v->status;
}

/* "ALG:HEX" of `n` bytes into c->digest. */
static void set_digest(cli *c, const uint8_t *d, size_t n)
{
    int at = snprintf(c->digest, sizeof(c->digest), "%s:", qc_digest_name(c->digest_alg));
    for (size_t i = 0; i < n && at > 0 && (size_t)at < sizeof(c->digest); i++)
        at += snprintf(c->digest + at, sizeof(c->digest) - (size_t)at, "%02x", d[i]);
}

bool cli_take_digest(cli *c, qc_io *io, bool raw, const qc_chain *chain)
{
    uint8_t d[QC_DIGEST_MAX];
    size_t n;
    char why[300];
    int ret = chain ? qc_chain_digest(chain, c->digest_alg, d, &n, why, sizeof(why))
                    : qc_digest(io, c->digest_alg, raw, d, &n, why, sizeof(why));
    if (ret < 0) {
        cli_message(c, "no digest of '%s': %s", c->filename, why[0] ? why : strerror(-ret));
        return false;
    }
    set_digest(c, d, n);
    return true;
}

/* The digest of a raw file, which has nothing to check: the line, or a
 * JSON object with it. */
int cli_print_raw_digest(const cli *c)
{
    if (c->output == OUTPUT_JSON && !c->quiet) {
        printf("{\n    \"filename\": ");
        cli_json_string(stdout, c->filename);
        printf(",\n    \"format\": \"raw\",\n    \"digest\": ");
        cli_json_string(stdout, c->digest);
        printf(",\n    \"exit-code\": 0\n}\n");
    } else {
        printf("%s\n", c->digest);
    }
    return 0;
}

/* Check the file read-only; returns the exit status. *checked tells
 * whether there is a result to print (failures were reported already). */
static int check_file(cli *c, verdict *v, bool *checked)
{
    *checked = false;
    qc_io io;
    bool in_use;
    int status = cli_open_for_check(c, &io, &in_use);
    if (status >= 0)
        return status;
    qc_options o = cli_check_options(c);
    if (c->map_path || c->report_path || c->section_out) {
        /* No section (no memory): cli_write_visual says so. */
        c->visual = vis_section_new(c->filename, c->visual_index);
        c->visual_no_memory = !c->visual;
        o.map_cells = c->visual ? VIS_MAP_CELLS : 0;
    }
    qc_result *r = qc_result_new();
    cli_progress_begin(c);
    double started = cli_now();
    int ret = r ? qc_check(&io, &o, r) : -ENOMEM;
    c->visual_seconds = cli_now() - started;
    cli_progress_clear(c);
    if (ret == 0) {
        cli_note_cannot_open(c, &io, r);
        *v = cli_verdict_of(r);
        if (c->visual)
            vis_section_set_result(c->visual, r); /* without a map, the section says so */
    }
    qc_result_free(r);
    bool raw = ret == 0 && v->other_format && strcmp(v->driver, "raw") == 0;
    bool no_digest = false;
    if (ret == 0 && c->digest_alg) {
        /* The guest's content means something only where the metadata
         * holds: no digest of an image with corruptions. */
        if (!raw && !v->other_format && (v->corruptions || v->check_errors))
            cli_message(c, "no digest of '%s': the check found corruptions or could not complete",
                    c->filename);
        else if (raw || !v->other_format)
            no_digest = !cli_take_digest(c, &io, raw, NULL);
    }
    qc_io_close(&io);
    if (ret < 0) {
        cli_message(c, "Check failed: %s", strerror(-ret));
        return 1;
    }
    if (raw && c->digest[0])
        return cli_print_raw_digest(c);
    if (v->other_format)
        return cli_not_qcow2(c, v->other_format, v->driver);
    /* A QED image with -f qcow2 (or the other way round, refused when
     * opened): QEMU's driver refuses the file. */
    if (c->format && v->driver && strcmp(c->format, v->driver) != 0)
        return wrong_format(c, v->driver);
    if (in_use)
        cli_report_in_use(c, v);
    *checked = true;
    status = cli_final_status(c, v);
    /* A clean or leaky image whose digest could not be taken: what was
     * asked for was not done. */
    return no_digest && (status == 0 || status == 3) ? 1 : status;
}

void cli_forget_findings(cli *c)
{
    for (size_t i = 0; i < c->nb_problems; i++)
        free(c->problems[i]);
    c->nb_problems = 0;
}








/* -T: qemu-img's cache modes (bdrv_parse_cache_mode); qcheck has no cache
 * to set, but rejects what qemu-img rejects. */
static bool cache_mode_valid(const char *mode)
{
    static const char *const modes[] = {"off", "none", "directsync", "writeback", "unsafe",
                                        "writethrough"};
    for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++)
        if (strcmp(mode, modes[i]) == 0)
            return true;
    return false;
}

static bool option_on(const char *v)
{
    return strcmp(v, "on") == 0 || strcmp(v, "yes") == 0 || strcmp(v, "true") == 0;
}

/* --image-opts: the keys of QEMU's option string qcheck acts on
 * (driver=qcow2,file.filename=PATH,file.locking=off,force-share=on,
 * encrypt.key-secret=ID); the others are accepted and ignored. Returns -1,
 * or the exit status of an error reported. */
static int parse_image_opts(cli *c, char *opts, bool *force_share)
{
    const char *path = NULL, *force = NULL;
    bool has_keys = strchr(c->filename, '=') != NULL;
    for (char *tok = strtok(opts, ","); tok; tok = strtok(NULL, ",")) {
        char *value = strchr(tok, '=');
        if (!value)
            continue;
        *value++ = '\0';
        if (strcmp(tok, "driver") == 0)
            c->format = value;
        else if (strcmp(tok, "file.filename") == 0 || strcmp(tok, "filename") == 0)
            path = value;
        else if (strcmp(tok, "force-share") == 0)
            force = value;
        else if (strcmp(tok, "file.locking") == 0 || strcmp(tok, "locking") == 0)
            c->lock_mode = strcmp(value, "off") == 0 ? QC_LOCK_NONE : c->lock_mode;
        else if (strcmp(tok, "encrypt.key-secret") == 0 || strcmp(tok, "key-secret") == 0)
            c->key_secret = true;
    }
    if (*force_share && force && !option_on(force)) {
        cli_message(c, "--force-share/-U conflicts with image options");
        return 1;
    }
    if (force && option_on(force))
        *force_share = true;
    if (!has_keys) {
        cli_message(c, "Could not open '%s': Cannot find device='%s' nor node-name='%s'", c->filename,
                c->filename, c->filename);
        cli_message(c, "with --image-opts the file is an option string, such as "
                   "driver=qcow2,file.filename=PATH");
        return 1;
    }
    if (!path) {
        cli_message(c, "Could not open '%s': A block device must be specified for \"file\"",
                c->filename);
        cli_message(c, "name the image with file.filename=PATH");
        return 1;
    }
    c->path = path;
    return -1;
}

/* Check, repair or roll back, once the options are settled, after what
 * qemu-img refuses when it opens the image. */
int cli_run_image(cli *c, const invocation *in)
{
    qc_repair_mode mode = in->mode;
    const char *undo_path = in->undo_path, *rollback_log = in->rollback_log;
    bool force_share = in->force_share;
    if (c->format && !qemu_driver(c->format)) {
        cli_message(c, "Could not open '%s': Unknown driver '%s'", c->filename, c->format);
        return 1;
    }
    if (force_share && (c->repair_mode || rollback_log)) {
        cli_message(c, "Could not open '%s': force-share=on can only be used with read-only images",
                c->filename);
        cli_message(c, "-U checks an image in use; a repair or rollback needs the image to itself");
        return 1;
    }
    if (rollback_log)
        return cli_rollback_file(c, rollback_log);
    if (force_share && c->lock_mode == QC_LOCK_CHECK)
        c->lock_mode = QC_LOCK_SHARED;
    if (c->repair_mode)
        return cli_repair_file(c, mode, undo_path);
    if (c->chain || c->data_file)
        return cli_check_chain(c);
    verdict v = {0};
    bool checked;
    int status = check_file(c, &v, &checked);
    if (checked)
        cli_print_result(c, &v, status);
    return cli_write_visual(c, &v, status);
}


/* Read the options, in the order qemu-img reports their errors. Returns -1
 * to go on, or the exit status (help, version, a usage error). */
static int read_options(cli *c, int argc, char **argv, invocation *in)
{
    int opt, at = optind;
    opterr = 0; /* getopt's own messages are not qemu-img's */
    for (; (opt = getopt_long(argc, argv, shortopts, longopts, NULL)) != -1; at = optind) {
        /* The argument the option was in: getopt has not moved past it
         * when more of it follows (-x2). */
        const char *arg = argv[optind > at ? optind - 1 : optind];
        switch (opt) {
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf("qcheck %s\n", QC_VERSION_STRING);
            return 0;
        case 'q':
            c->quiet = true;
            break;
        case 'p':
            c->progress_forced = true;
            break;
        case 'f':
            c->format = optarg;
            break;
        case OPT_OUTPUT:
            in->output = optarg;
            break;
        case 'r':
            in->repair = optarg;
            if (strcmp(optarg, "leaks") == 0)
                in->mode = QC_REPAIR_LEAKS;
            else if (strcmp(optarg, "all") == 0)
                in->mode = QC_REPAIR_ALL;
            else
                return usage_error(c, "Unknown option value for -r (expecting 'leaks' or 'all'): %s",
                                   optarg);
            break;
        case 'n':
            c->dry_run = true;
            break;
        case OPT_UNDO:
            in->undo_path = optarg;
            break;
        case OPT_ROLLBACK:
            in->rollback_log = optarg;
            break;
        case OPT_SALVAGE:
            c->salvage_dir = optarg;
            break;
        case OPT_MAP:
            c->map_path = optarg;
            break;
        case OPT_REPORT:
            c->report_path = optarg;
            break;
        case 'U':
            in->force_share = true;
            break;
        case 'T':
            in->cache = optarg;
            break;
        case OPT_OBJECT:
            break;
        case OPT_IMAGE_OPTS:
            in->image_opts = true;
            break;
        case OPT_MAX_MEM:
            if (!parse_size(optarg, &c->max_mem) || c->max_mem == 0)
                return usage_error(c, "--max-mem expects a size such as 512M or 4G, not '%s'",
                                   optarg);
            break;
        case OPT_LIST:
            list_problems(optarg && strcmp(optarg, "markdown") == 0);
            return 0;
        case OPT_DEEP:
            c->deep = true;
            break;
        case OPT_TRUNCATE_LEAKS:
            c->truncate_leaks = true;
            break;
        case OPT_CHAIN:
            c->chain = true;
            break;
        case OPT_DATA_FILE:
            c->data_file = optarg;
            break;
        case OPT_ALLOW_PROBE:
            c->allow_probe = true;
            break;
        case OPT_MAX_DEPTH: {
            char *end;
            errno = 0;
            unsigned long depth = strtoul(optarg, &end, 10);
            if (errno || *end || end == optarg || optarg[0] == '-' || depth == 0 ||
                depth > 65535)
                return usage_error(c, "--max-depth expects a number of layers from 1 to 65535, "
                                      "not '%s'", optarg);
            c->max_depth = (unsigned)depth;
            break;
        }
        case OPT_DIGEST:
            if (!optarg || strcmp(optarg, "sha256") == 0)
                c->digest_alg = QC_DIGEST_SHA256;
            else if (strcmp(optarg, "xxh128") == 0)
                c->digest_alg = QC_DIGEST_XXH128;
            else
                return usage_error(c, "--digest takes sha256 or xxh128, not '%s'", optarg);
            break;
        case OPT_FILES_FROM:
            in->files_from = optarg;
            break;
        case '0':
            in->null_separated = true;
            break;
        case 'j': {
            char *end;
            errno = 0;
            unsigned long jobs = strtoul(optarg, &end, 10);
            if (errno || *end || end == optarg || optarg[0] == '-' || jobs == 0 || jobs > 1024)
                return usage_error(c, "-j expects a number of workers from 1 to 1024, not '%s'",
                                   optarg);
            in->jobs = (unsigned)jobs;
            break;
        }
        case OPT_TIMEOUT: {
            char *end;
            errno = 0;
            double t = strtod(optarg, &end);
            if (errno || *end || end == optarg || !(t > 0 && t <= 1e7))
                return usage_error(c, "--timeout expects seconds, such as 30 or 0.5, not '%s'",
                                   optarg);
            in->timeout = t;
            break;
        }
        case OPT_METRICS:
            in->metrics = optarg;
            break;
        case ':':
            return usage_error(c, "missing argument for option '%s'", arg);
        default:
            return usage_error(c, "unrecognized option '%s'", arg);
        }
    }
    return -1;
}

/* After the options: the file name, --output, -T, and the combinations
 * qcheck refuses. Returns -1 to go on, or the exit status. */
static int settle_options(cli *c, int argc, char **argv, invocation *in)
{
    in->names = argv + optind;
    in->nb_names = (size_t)(argc - optind);
    in->batch = in->nb_names > 1 || in->files_from;
    if (in->nb_names == 0 && !in->files_from)
        return usage_error(c, "Expecting one image file name");
    if (in->null_separated && !in->files_from)
        return usage_error(c, "--null goes with --files-from");
    if (!in->batch && (in->jobs || in->timeout))
        return usage_error(c, "-j and --timeout go with several images (FILE... or --files-from)");
    if (in->batch && (in->rollback_log || in->image_opts || c->chain || c->data_file))
        return usage_error(c, "--rollback, --image-opts, --chain and --data-file take one image, "
                              "not several");
    c->filename = c->path = in->nb_names ? in->names[0] : NULL;
    if (in->output && strcmp(in->output, "json") == 0) {
        c->output = OUTPUT_JSON;
    } else if (in->output && strcmp(in->output, "human") != 0) {
        cli_message(c, "--output must be used with human or json as argument.");
        return 1;
    }
    if (in->cache && !cache_mode_valid(in->cache)) {
        cli_message(c, "Invalid source cache option: %s", in->cache);
        return 1;
    }
    if ((c->dry_run || in->undo_path) && !in->repair)
        return usage_error(c, "--dry-run and --undo go with -r leaks or -r all");
    if (c->salvage_dir && !in->repair)
        return usage_error(c, "--salvage goes with -r leaks or -r all");
    if (c->truncate_leaks && !in->repair)
        return usage_error(c, "--truncate-leaks goes with -r leaks or -r all");
    if (in->rollback_log && in->repair)
        return usage_error(c, "--rollback cannot be combined with -r");
    if ((c->digest_alg || c->deep) && (in->repair || in->rollback_log))
        return usage_error(c, "--digest and --deep go with a check, not with -r or --rollback");
    if ((c->chain || c->data_file) && (in->repair || in->rollback_log))
        return usage_error(c, "repairs are single-image: --chain and --data-file go with a "
                              "check, not with -r or --rollback (repair each layer on its own)");
    if ((c->map_path || c->report_path) &&
        (in->repair || in->rollback_log || c->chain || c->data_file))
        return usage_error(c, "--map and --report go with a check, not with -r, "
                              "--rollback, --chain or --data-file");
    if ((c->allow_probe || c->max_depth) && !c->chain)
        return usage_error(c, "--allow-probe and --max-depth go with --chain");
    c->repair_mode = in->repair;
    c->lock_mode = QC_LOCK_CHECK;
    return -1;
}

/* One image; with --metrics, its figures are written after it. */
static int run_one(cli *c, const invocation *in)
{
    image_outcome outcome = {0};
    c->outcome = &outcome;
    double start = cli_now();
    int status = cli_run_image(c, in);
    if (!in->metrics)
        return status;
    image_record rec = {
        .name = c->filename,
        .status = status,
        .verdict = image_verdict_of(status, &outcome),
        .counted = outcome.summarised,
        .leaks = outcome.leaks,
        .corruptions = outcome.corruptions,
        .check_errors = outcome.check_errors,
        .seconds = cli_now() - start,
        .finished = (double)time(NULL),
    };
    int ret = metrics_write(in->metrics, &rec, 1, rec.seconds, status);
    if (ret < 0) {
        cli_message(c, "could not write the metrics file '%s': %s", in->metrics, strerror(-ret));
        if (status == 0 || status == 3)
            status = 1;
    }
    return status;
}

int qcheck_cli_main(int argc, char **argv, const qcheck_cli_hooks *hooks)
{
    cli c = {.hooks = hooks, .layer = -1};
    const char *slash = argc > 0 && argv[0] ? strrchr(argv[0], '/') : NULL;
    c.prog = slash ? slash + 1 : argc > 0 && argv[0] && argv[0][0] ? argv[0] : "qcheck";
    invocation in = {0};
    int status = read_options(&c, argc, argv, &in);
    if (status < 0)
        status = settle_options(&c, argc, argv, &in);
    if (status >= 0)
        return status;
    if (in.batch)
        return cli_run_batch(&c, &in);
    char *opts_copy = NULL;
    if (in.image_opts && c.format) {
        cli_message(&c, "--image-opts and --format are mutually exclusive");
        status = 1;
    } else if (in.image_opts && !(opts_copy = strdup(argv[optind]))) {
        cli_message(&c, "Could not open '%s': %s", c.filename, strerror(ENOMEM));
        status = 1;
    } else if (in.image_opts) {
        status = parse_image_opts(&c, opts_copy, &in.force_share);
    }
    if (status < 0)
        status = run_one(&c, &in);
    for (size_t i = 0; i < c.nb_problems; i++)
        free(c.problems[i]);
    free(c.problems);
    free(opts_copy);
    return status;
}
