/*
 * Batch mode: several images in one run (FILE..., --files-from), for the
 * cron jobs and pipelines that used to loop over images one qemu-img call
 * at a time.
 *
 * Each image is checked (or repaired) by the single-image command in one
 * of -j worker processes forked from this one, which take image after
 * image (a process per image would spend more on fork and page faults
 * than a small image's check costs). An image that crashes its worker,
 * hangs it (a FIFO, a stuck NFS server) or exhausts its --max-mem ends
 * that image alone: the worker is replaced. One that outlives --timeout is
 * killed and its image reported as timed out. A worker reads the index of
 * its next image from a pipe and answers with the exit status; its stdout
 * and stderr go to temporary files of its slot, and what it concluded
 * (counts, an image in use, its progress) to memory shared with this
 * process.
 *
 * Output comes out in the order the images were given, whatever order the
 * workers finish in, so that -j 1 and -j 8 print the same lines: human
 * lines with each image's findings below it, or JSON Lines (docs/fleet.md
 * has both), then a summary. The exit status is the worst verdict's.
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "command.h"
#include "visual.h"

static const char *const verdict_names[VERDICT_COUNT] = {
    [VERDICT_CLEAN] = "clean",       [VERDICT_REPAIRED] = "repaired",
    [VERDICT_IN_USE] = "in-use",     [VERDICT_UNSUPPORTED] = "unsupported",
    [VERDICT_LEAKS] = "leaks",       [VERDICT_FAILED] = "failed",
    [VERDICT_TIMEOUT] = "timeout",   [VERDICT_CORRUPT] = "corrupt",
};

const char *image_verdict_name(image_verdict v)
{
    return v < VERDICT_COUNT ? verdict_names[v] : "failed";
}

image_verdict image_verdict_of(int status, const image_outcome *o)
{
    switch (status) {
    case 0:
        return o->fixed ? VERDICT_REPAIRED : VERDICT_CLEAN;
    case 2:
        return VERDICT_CORRUPT;
    case 3:
        return VERDICT_LEAKS;
    case 63:
        return VERDICT_UNSUPPORTED;
    default:
        return o->in_use ? VERDICT_IN_USE : VERDICT_FAILED;
    }
}

/* The verdicts in the order of their weight for the batch's exit status:
 * corruption first (data at risk), then images that could not be checked
 * (their state is unknown), then leaks (space only), then files qcheck
 * does not check. An image in use was skipped, not failed. */
int batch_exit_status(const image_record *images, size_t n)
{
    static const int weight[VERDICT_COUNT] = {
        [VERDICT_CLEAN] = 0,       [VERDICT_REPAIRED] = 0, [VERDICT_IN_USE] = 0,
        [VERDICT_UNSUPPORTED] = 1, [VERDICT_LEAKS] = 2,    [VERDICT_FAILED] = 3,
        [VERDICT_TIMEOUT] = 3,     [VERDICT_CORRUPT] = 4,
    };
    static const int status_of_weight[] = {0, 63, 3, 1, 2};
    int worst = 0;
    for (size_t i = 0; i < n; i++)
        if (weight[images[i].verdict] > worst)
            worst = weight[images[i].verdict];
    return status_of_weight[worst];
}

/* ---- the list of images ------------------------------------------------- */

typedef struct name_list {
    char **names;
    size_t nb, cap;
    char *list_text; /* --files-from's content; names point into it */
} name_list;

static bool add_name(name_list *l, char *name)
{
    if (l->nb == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        char **p = realloc(l->names, cap * sizeof(*p));
        if (!p)
            return false;
        l->names = p;
        l->cap = cap;
    }
    l->names[l->nb++] = name;
    return true;
}

/* Read --files-from whole: names one per line, or NUL-separated; empty
 * names are skipped (a trailing newline, a blank line). */
static int read_list(name_list *l, const char *from, bool null_separated)
{
    FILE *f = strcmp(from, "-") == 0 ? stdin : fopen(from, "rb");
    if (!f)
        return -errno;
    size_t len = 0, cap = 0;
    char *text = NULL;
    int err = 0;
    for (;;) {
        if (cap - len < 65536) {
            char *p = cap > SIZE_MAX / 2 ? NULL : realloc(text, cap * 2 + 65536 + 1);
            if (!p) {
                err = -ENOMEM;
                break;
            }
            text = p;
            cap = cap * 2 + 65536;
        }
        size_t got = fread(text + len, 1, cap - len, f);
        len += got;
        if (got == 0) {
            err = ferror(f) ? -EIO : 0;
            break;
        }
    }
    if (f != stdin)
        fclose(f);
    if (err) {
        free(text);
        return err;
    }
    text[len] = '\0';
    l->list_text = text;
    char sep = null_separated ? '\0' : '\n';
    for (size_t at = 0; at < len;) {
        char *end = memchr(text + at, sep, len - at);
        size_t n = end ? (size_t)(end - (text + at)) : len - at;
        text[at + n] = '\0';
        if (n && !add_name(l, text + at))
            return -ENOMEM;
        at += n + 1;
    }
    return 0;
}

static const char *base_name(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash && slash[1] ? slash + 1 : path;
}

static int compare_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* --undo=DIR, --salvage=DIR and --map=DIR name, in a batch, a directory
 * holding one log (DIR/NAME.undo), salvage directory (DIR/NAME) or map
 * (DIR/NAME.svg) per image: refused before any image is touched if DIR is
 * not a directory or two images share a NAME. */
static bool per_image_dirs_usable(const cli *c, const invocation *in, const name_list *l)
{
    const char *dirs[] = {in->undo_path, c->salvage_dir, c->map_path};
    const char *opts[] = {"--undo", "--salvage", "--map"};
    const char *suffix[] = {".undo", "", ".svg"};
    bool any = false;
    for (size_t i = 0; i < 3; i++) {
        struct stat st;
        if (!dirs[i])
            continue;
        any = true;
        if (stat(dirs[i], &st) != 0 || !S_ISDIR(st.st_mode)) {
            cli_message(c, "%s=%s: with several images %s names an existing directory "
                           "(each image's is DIR/NAME%s)",
                        opts[i], dirs[i], opts[i], suffix[i]);
            return false;
        }
    }
    if (!any)
        return true;
    const char **sorted = malloc(l->nb * sizeof(*sorted));
    if (!sorted) {
        cli_message(c, "%s", strerror(ENOMEM));
        return false;
    }
    for (size_t i = 0; i < l->nb; i++)
        sorted[i] = base_name(l->names[i]);
    qsort(sorted, l->nb, sizeof(*sorted), compare_names);
    bool ok = true;
    for (size_t i = 1; i < l->nb && ok; i++) {
        if (strcmp(sorted[i - 1], sorted[i]) == 0) {
            cli_message(c, "two images named '%s': their undo logs, salvage directories or maps "
                           "would collide; nothing was checked",
                        sorted[i]);
            ok = false;
        }
    }
    free(sorted);
    return ok;
}

/* ---- workers ------------------------------------------------------------ */

typedef struct captured {
    char *text;
    size_t len;
} captured;

typedef struct image_state {
    image_record rec;
    bool done;
    captured out, err; /* the worker's stdout and stderr (human: both in out) */
    captured section;  /* --report: its part of the page */
    bool has_section;  /* and it was put on the page */
} image_state;

/* A worker process: it checks image after image, each index it reads
 * from its command pipe, and answers with the exit status on its result
 * pipe. One that dies or is killed (--timeout) is replaced. */
typedef struct worker {
    pid_t pid;               /* 0: none running */
    int command_fd, result_fd; /* this process's ends of its pipes */
    bool busy;
    size_t image;
    double started, deadline;
    FILE *out, *err; /* its capture files, reused image after image */
    FILE *section;   /* --report: the section of its image */
} worker;

typedef struct batch {
    cli *c;
    const invocation *in;
    name_list list;
    image_state *images;
    size_t next_start, next_print, nb_done;
    worker *workers;
    unsigned nb_workers;
    image_outcome *shared; /* one per worker, MAP_SHARED */
    double started;
    bool progress, progress_shown;
    size_t progress_width;
    FILE *sections; /* --report: the sections printed so far, in order */
} batch;

/* In a worker: run the single-image command on image i. */
static int run_image_in_worker(const batch *b, size_t i, image_outcome *slot, FILE *section)
{
    cli c = *b->c;
    invocation in = *b->in;
    c.filename = c.path = b->list.names[i];
    c.outcome = slot;
    /* Human: the worker prints what `qcheck -q FILE` prints, and the
     * batch its line. JSON: the worker prints the image's object. */
    c.quiet = c.output == OUTPUT_HUMAN;
    c.progress_forced = false;
    const char *name = base_name(c.filename);
    char undo[4200], salvage[4200], map[4200];
    if (c.map_path) {
        snprintf(map, sizeof(map), "%s/%s.svg", c.map_path, name);
        c.map_path = map;
    }
    /* The page is the batch's: the worker writes the image's section. */
    c.report_path = NULL;
    c.section_out = section;
    c.visual_index = i;
    if (in.undo_path) {
        snprintf(undo, sizeof(undo), "%s/%s.undo", in.undo_path, name);
        in.undo_path = undo;
    }
    if (c.salvage_dir) {
        snprintf(salvage, sizeof(salvage), "%s/%s", c.salvage_dir, name);
        c.salvage_dir = salvage;
    }
    int status = cli_run_image(&c, &in);
    cli_forget_findings(&c);
    free(c.problems);
    return status;
}

/* The worker's life: its output into the slot's files, then image after
 * image until its command pipe closes. Never returns. */
static void worker_main(const batch *b, unsigned slot, int command_fd, int result_fd)
{
    const worker *w = &b->workers[slot];
    /* Only its own pipes: a sibling's command pipe must see its end when
     * this process lives on. */
    for (unsigned k = 0; k < b->nb_workers; k++) {
        if (k != slot && b->workers[k].pid) {
            close(b->workers[k].command_fd);
            close(b->workers[k].result_fd);
        }
    }
    bool json = b->c->output == OUTPUT_JSON;
    if (dup2(fileno(w->out), STDOUT_FILENO) < 0 ||
        dup2(fileno(json ? w->err : w->out), STDERR_FILENO) < 0)
        _exit(1);
    uint64_t i;
    while (read(command_fd, &i, sizeof(i)) == (ssize_t)sizeof(i) && i < b->list.nb) {
        if (ftruncate(STDOUT_FILENO, 0) != 0 || lseek(STDOUT_FILENO, 0, SEEK_SET) != 0 ||
            ftruncate(STDERR_FILENO, 0) != 0 || lseek(STDERR_FILENO, 0, SEEK_SET) != 0)
            _exit(1);
        if (w->section && (fflush(w->section) != 0 || ftruncate(fileno(w->section), 0) != 0 ||
                           fseek(w->section, 0, SEEK_SET) != 0))
            _exit(1);
        int status = run_image_in_worker(b, (size_t)i, &b->shared[slot], w->section);
        fflush(stdout);
        fflush(stderr);
        if (w->section)
            fflush(w->section);
        if (write(result_fd, &status, sizeof(status)) != (ssize_t)sizeof(status))
            _exit(1);
    }
    _exit(0);
}

static int start_worker(batch *b, unsigned slot)
{
    worker *w = &b->workers[slot];
    int command[2], result[2];
    if (pipe(command) != 0)
        return -errno;
    if (pipe(result) != 0) {
        int err = -errno;
        close(command[0]);
        close(command[1]);
        return err;
    }
    fflush(stdout);
    fflush(stderr);
    w->command_fd = command[1];
    w->result_fd = result[0];
    pid_t pid = fork();
    if (pid == 0) {
        close(command[1]);
        close(result[0]);
        worker_main(b, slot, command[0], result[1]);
    }
    int err = pid < 0 ? -errno : 0;
    close(command[0]);
    close(result[1]);
    if (pid < 0) {
        close(w->command_fd);
        close(w->result_fd);
        return err;
    }
    w->pid = pid;
    return 0;
}

/* The worker is gone (killed, or it died): reap it. */
static void stop_worker(worker *w)
{
    close(w->command_fd);
    close(w->result_fd);
    int wstatus;
    while (waitpid(w->pid, &wstatus, 0) < 0 && errno == EINTR)
        ;
    w->pid = 0;
}

/* The whole of a capture file. */
static captured read_capture(FILE *f)
{
    captured cap = {0};
    int fd = fileno(f);
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size <= 0)
        return cap;
    size_t size = (size_t)st.st_size;
    cap.text = malloc(size + 1);
    if (!cap.text)
        return cap;
    size_t got = 0;
    while (got < size) {
        ssize_t n = pread(fd, cap.text + got, size - got, (off_t)got);
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    cap.text[got] = '\0';
    cap.len = got;
    return cap;
}

static void append_text(captured *cap, const char *text)
{
    size_t n = strlen(text);
    char *p = realloc(cap->text, cap->len + n + 1);
    if (!p)
        return;
    memcpy(p + cap->len, text, n + 1);
    cap->text = p;
    cap->len += n;
}

/* The end of the worker's current image: its exit status, or why it has
 * none (`why`: the worker was killed or died; its message). */
static void finish_image(batch *b, worker *w, int status, image_verdict failed_as, const char *why)
{
    image_state *s = &b->images[w->image];
    image_outcome o = b->shared[w - b->workers];
    image_record *r = &s->rec;
    r->seconds = cli_now() - w->started;
    r->finished = (double)time(NULL);
    s->out = read_capture(w->out);
    if (b->c->output == OUTPUT_JSON)
        s->err = read_capture(w->err);
    if (w->section && !why)
        s->section = read_capture(w->section);
    r->verdict = why ? failed_as : image_verdict_of(status, &o);
    /* Skipped, not failed: a running VM is no fault of the image. */
    r->status = r->verdict == VERDICT_IN_USE ? 0 : status;
    if (why)
        append_text(b->c->output == OUTPUT_JSON ? &s->err : &s->out, why);
    r->counted = o.summarised && !why;
    if (r->counted) {
        r->leaks = o.leaks;
        r->corruptions = o.corruptions;
        r->check_errors = o.check_errors;
    }
    s->done = true;
    b->nb_done++;
    w->busy = false;
}

/* An image no worker could take. */
static void fail_unstarted(batch *b, size_t i, int err)
{
    image_state *s = &b->images[i];
    char msg[300];
    snprintf(msg, sizeof(msg), "%s: could not start a worker for '%s': %s\n", b->c->prog,
             b->list.names[i], strerror(-err));
    append_text(b->c->output == OUTPUT_JSON ? &s->err : &s->out, msg);
    s->rec.status = 1;
    s->rec.verdict = VERDICT_FAILED;
    s->done = true;
    b->nb_done++;
}

/* Give the next image to an idle worker, starting one if need be. */
static void start_image(batch *b, worker *w)
{
    size_t i = b->next_start++;
    unsigned slot = (unsigned)(w - b->workers);
    int err = w->pid ? 0 : start_worker(b, slot);
    if (err < 0) {
        fail_unstarted(b, i, err);
        return;
    }
    memset(&b->shared[slot], 0, sizeof(b->shared[slot]));
    uint64_t index = i;
    w->image = i;
    w->busy = true;
    w->started = cli_now();
    w->deadline = b->in->timeout > 0 ? w->started + b->in->timeout : 0;
    if (write(w->command_fd, &index, sizeof(index)) != (ssize_t)sizeof(index)) {
        /* It died between two images: the next round replaces it. */
        char msg[300];
        snprintf(msg, sizeof(msg), "%s: the worker for '%s' ended before it started\n",
                 b->c->prog, b->list.names[i]);
        stop_worker(w);
        finish_image(b, w, 1, VERDICT_FAILED, msg);
    }
}

/* ---- output ------------------------------------------------------------- */

/* A name on one line: control characters as \xNN. */
static void print_name(FILE *out, const char *name)
{
    for (const unsigned char *p = (const unsigned char *)name; *p; p++) {
        if (*p < 0x20 || *p == 0x7f)
            fprintf(out, "\\x%02x", *p);
        else
            fputc(*p, out);
    }
}

static void progress_clear(batch *b)
{
    if (b->progress_shown)
        fprintf(stderr, "\r%*s\r", (int)b->progress_width, "");
    b->progress_shown = false;
}

/* "[done/total] NN.N% NAME" for the earliest image still running. */
static void progress_draw(batch *b)
{
    if (!b->progress)
        return;
    const worker *current = NULL;
    for (unsigned k = 0; k < b->nb_workers; k++)
        if (b->workers[k].busy && (!current || b->workers[k].image < current->image))
            current = &b->workers[k];
    char line[100];
    int n;
    if (current) {
        unsigned permille = __atomic_load_n(&b->shared[current - b->workers].permille,
                                            __ATOMIC_RELAXED);
        n = snprintf(line, sizeof(line), "[%zu/%zu] %5.1f%% %s", b->nb_done, b->list.nb,
                     permille / 10.0, base_name(b->list.names[current->image]));
    } else {
        n = snprintf(line, sizeof(line), "[%zu/%zu]", b->nb_done, b->list.nb);
    }
    if (n < 0)
        return;
    size_t width = (size_t)n < 79 ? (size_t)n : 79;
    for (size_t k = 0; k < width; k++)
        if ((unsigned char)line[k] < 0x20 || line[k] == 0x7f)
            line[k] = '?';
    fprintf(stderr, "\r%.*s%*s", (int)width, line,
            b->progress_width > width ? (int)(b->progress_width - width) : 0, "");
    fflush(stderr);
    b->progress_width = width;
    b->progress_shown = true;
}

static bool worth_listing(const batch *b, const image_state *s)
{
    /* -q: a cron job's mail only when an image needs a look. */
    return !b->c->quiet || !(s->rec.verdict == VERDICT_CLEAN ||
                             s->rec.verdict == VERDICT_REPAIRED ||
                             s->rec.verdict == VERDICT_IN_USE);
}

/* A count, or "-" where the check never reached its figures. */
static void count_cell(char *buf, size_t len, const image_state *s, uint64_t value)
{
    if (!s->rec.counted)
        snprintf(buf, len, "-");
    else
        snprintf(buf, len, "%" PRIu64, value);
}

static void print_human_image(const image_state *s)
{
    char leaks[24], corruptions[24], errors[24];
    count_cell(leaks, sizeof(leaks), s, s->rec.leaks);
    count_cell(corruptions, sizeof(corruptions), s, s->rec.corruptions);
    count_cell(errors, sizeof(errors), s, s->rec.check_errors);
    printf("%-11s %8s leaks %8s corruptions %6s errors %9.2f s  ", image_verdict_name(s->rec.verdict),
           leaks, corruptions, errors, s->rec.seconds);
    print_name(stdout, s->rec.name);
    fputc('\n', stdout);
    /* What `qcheck -q FILE` printed, indented under the line. */
    const char *p = s->out.text;
    while (p && *p) {
        const char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        printf("    %.*s\n", (int)n, p);
        p += n + (nl != NULL);
    }
}

/* JSON text with the whitespace between its tokens taken out. */
static size_t compact_json(char *text, size_t len)
{
    size_t to = 0;
    bool in_string = false;
    for (size_t i = 0; i < len; i++) {
        char ch = text[i];
        if (in_string) {
            text[to++] = ch;
            if (ch == '\\' && i + 1 < len)
                text[to++] = text[++i];
            else if (ch == '"')
                in_string = false;
        } else if (ch == '"') {
            in_string = true;
            text[to++] = ch;
        } else if (ch != ' ' && ch != '\n' && ch != '\t' && ch != '\r') {
            text[to++] = ch;
        } else if (to && (text[to - 1] == ':' || text[to - 1] == ',')) {
            text[to++] = ' '; /* keep the ", " and ": " of the single-image object */
        }
    }
    text[to] = '\0';
    return to;
}

static void print_json_image(image_state *s)
{
    size_t len = s->out.text ? compact_json(s->out.text, s->out.len) : 0;
    if (len >= 2 && s->out.text[0] == '{' && s->out.text[len - 1] == '}') {
        printf("%.*s, \"verdict\": \"%s\", \"seconds\": %.3f}\n", (int)(len - 1), s->out.text,
               image_verdict_name(s->rec.verdict), s->rec.seconds);
        return;
    }
    /* No object of the image's own: what qcheck said instead. */
    printf("{\"filename\": ");
    cli_json_string(stdout, s->rec.name);
    printf(", \"verdict\": \"%s\", \"error\": ", image_verdict_name(s->rec.verdict));
    size_t n = s->err.len;
    while (n && s->err.text[n - 1] == '\n')
        s->err.text[--n] = '\0';
    cli_json_string(stdout, s->err.text ? s->err.text : "");
    printf(", \"seconds\": %.3f, \"exit-code\": %d}\n", s->rec.seconds, s->rec.status);
}

/* Print the images finished so far in the order given. */
static void print_ready(batch *b)
{
    while (b->next_print < b->list.nb && b->images[b->next_print].done) {
        image_state *s = &b->images[b->next_print++];
        if (worth_listing(b, s)) {
            progress_clear(b);
            if (b->c->output == OUTPUT_JSON)
                print_json_image(s);
            else
                print_human_image(s);
            fflush(stdout);
        }
        if (b->sections && s->section.len) {
            fwrite(s->section.text, 1, s->section.len, b->sections);
            s->has_section = true;
        }
        free(s->out.text);
        free(s->err.text);
        free(s->section.text);
        s->out = s->err = s->section = (captured){0};
    }
}

static const char *exit_reason(int status)
{
    switch (status) {
    case 0:
        return "no image has leaks or corruptions (images in use were skipped)";
    case 63:
        return "some files are not in a format qcheck checks";
    case 3:
        return "leaked clusters only: waste of disk space, no harm to data (-r leaks reclaims "
               "them; in a QED image only those that end the file, with --truncate-leaks)";
    case 1:
        return "some images could not be checked: their state is unknown";
    default:
        return "corruptions were found: data may be corrupted, or further writes may corrupt it";
    }
}

static void print_summary(const batch *b, int status, double seconds)
{
    size_t per[VERDICT_COUNT] = {0};
    uint64_t leaks = 0, corruptions = 0, errors = 0;
    for (size_t i = 0; i < b->list.nb; i++) {
        const image_record *r = &b->images[i].rec;
        per[r->verdict]++;
        leaks += r->leaks;
        corruptions += r->corruptions;
        errors += r->check_errors;
    }
    static const image_verdict columns[] = {
        VERDICT_CLEAN,  VERDICT_REPAIRED, VERDICT_LEAKS,  VERDICT_CORRUPT,
        VERDICT_FAILED, VERDICT_TIMEOUT,  VERDICT_IN_USE, VERDICT_UNSUPPORTED,
    };
    if (b->c->output == OUTPUT_JSON) {
        printf("{\"summary\": {\"images\": %zu", b->list.nb);
        for (size_t k = 0; k < sizeof(columns) / sizeof(columns[0]); k++)
            printf(", \"%s\": %zu", image_verdict_name(columns[k]), per[columns[k]]);
        printf(", \"leaked-clusters\": %" PRIu64 ", \"corruptions\": %" PRIu64
               ", \"check-errors\": %" PRIu64 ", \"seconds\": %.3f, \"exit-code\": %d}}\n",
               leaks, corruptions, errors, seconds, status);
        return;
    }
    printf("\n%8s", "images");
    for (size_t k = 0; k < sizeof(columns) / sizeof(columns[0]); k++)
        printf("  %s", image_verdict_name(columns[k]));
    printf("  %9s\n%8zu", "seconds", b->list.nb);
    for (size_t k = 0; k < sizeof(columns) / sizeof(columns[0]); k++)
        printf("  %*zu", (int)strlen(image_verdict_name(columns[k])), per[columns[k]]);
    printf("  %9.2f\n", seconds);
    printf("Exit status %d: %s\n", status, exit_reason(status));
}

/* --report: one page for the batch, a summary row per image, then the
 * sections the workers wrote (an image that never reached its check has
 * its row alone, which links to nothing). Returns 0 or -errno. */
static int write_report(const batch *b, const image_record *records)
{
    FILE *out = fopen(b->c->report_path, "w");
    if (!out)
        return -errno;
    int ret = vis_page_begin(out, b->list.nb);
    for (size_t i = 0; i < b->list.nb; i++) {
        const image_record *r = &records[i];
        vis_page_summary_row(out, i, r->name, image_verdict_name(r->verdict),
                             b->images[i].has_section, r->counted, r->leaks, r->corruptions,
                             r->check_errors, r->seconds, r->status);
    }
    vis_page_sections_begin(out);
    char buf[65536];
    size_t n;
    rewind(b->sections);
    while ((n = fread(buf, 1, sizeof(buf), b->sections)) > 0)
        fwrite(buf, 1, n, out);
    if (ferror(b->sections) && ret == 0)
        ret = -EIO;
    int end = vis_page_end(out);
    if (fclose(out) != 0 && ret == 0)
        ret = -errno;
    return ret ? ret : end;
}

/* ---- the run ------------------------------------------------------------ */

/* Wait until a worker answers, dies or outlives its deadline (or, with
 * progress shown, a tenth of a second), and settle what happened. */
static void wait_round(batch *b)
{
    struct pollfd fds[1024];
    unsigned of[1024], nfds = 0;
    double now = cli_now(), wait = b->progress ? 0.1 : 3600.0;
    for (unsigned k = 0; k < b->nb_workers; k++) {
        const worker *w = &b->workers[k];
        if (!w->busy)
            continue;
        fds[nfds] = (struct pollfd){.fd = w->result_fd, .events = POLLIN};
        of[nfds++] = k;
        if (w->deadline && w->deadline - now < wait)
            wait = w->deadline - now > 0 ? w->deadline - now : 0;
    }
    int n = poll(fds, nfds, (int)(wait * 1000.0) + 1);
    for (unsigned f = 0; n > 0 && f < nfds; f++) {
        if (!fds[f].revents)
            continue;
        worker *w = &b->workers[of[f]];
        int status;
        ssize_t got = read(w->result_fd, &status, sizeof(status));
        if (got == (ssize_t)sizeof(status)) {
            finish_image(b, w, status, VERDICT_FAILED, NULL);
            continue;
        }
        /* No answer: the worker died on this image. */
        int wstatus = 0;
        close(w->command_fd);
        close(w->result_fd);
        while (waitpid(w->pid, &wstatus, 0) < 0 && errno == EINTR)
            ;
        w->pid = 0;
        int sig = WIFSIGNALED(wstatus) ? WTERMSIG(wstatus) : 0;
        char msg[400];
        if (sig)
            snprintf(msg, sizeof(msg), "%s: the worker checking '%s' was killed by signal %d "
                     "(%s)\n", b->c->prog, b->list.names[w->image], sig, strsignal(sig));
        else
            snprintf(msg, sizeof(msg), "%s: the worker checking '%s' ended with status %d "
                     "without a verdict\n", b->c->prog, b->list.names[w->image],
                     WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : -1);
        finish_image(b, w, 1, VERDICT_FAILED, msg);
    }
    now = cli_now();
    for (unsigned k = 0; k < b->nb_workers; k++) {
        worker *w = &b->workers[k];
        if (w->busy && w->deadline && now >= w->deadline) {
            kill(w->pid, SIGKILL);
            stop_worker(w);
            char msg[400];
            snprintf(msg, sizeof(msg), "%s: '%s': no verdict after %g s (--timeout); the check "
                     "was stopped\n", b->c->prog, b->list.names[w->image], b->in->timeout);
            finish_image(b, w, 1, VERDICT_TIMEOUT, msg);
        }
    }
}

static int open_workers(batch *b, unsigned jobs)
{
    b->workers = calloc(jobs, sizeof(*b->workers));
    void *shared = mmap(NULL, jobs * sizeof(image_outcome), PROT_READ | PROT_WRITE,
                        MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (!b->workers || shared == MAP_FAILED)
        return -ENOMEM;
    b->shared = shared;
    b->nb_workers = jobs;
    for (unsigned k = 0; k < jobs; k++) {
        worker *w = &b->workers[k];
        w->out = tmpfile();
        w->err = tmpfile();
        if (!w->out || !w->err || (b->sections && !(w->section = tmpfile())))
            return -errno;
    }
    return 0;
}

/* Close the command pipes (the workers end) and reap them. */
static void close_workers(batch *b)
{
    for (unsigned k = 0; b->workers && k < b->nb_workers; k++) {
        worker *w = &b->workers[k];
        if (w->pid)
            stop_worker(w);
        if (w->out)
            fclose(w->out);
        if (w->err)
            fclose(w->err);
        if (w->section)
            fclose(w->section);
    }
    if (b->shared)
        munmap(b->shared, b->nb_workers * sizeof(image_outcome));
    free(b->workers);
}

static unsigned default_jobs(void)
{
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    return cores > 0 && cores < 1024 ? (unsigned)cores : 1;
}

static void run_all(batch *b)
{
    /* A worker that died leaves a pipe that would kill this process with
     * SIGPIPE on the next write: the write's error says it instead. */
    struct sigaction ignore = {.sa_handler = SIG_IGN}, old;
    sigaction(SIGPIPE, &ignore, &old);
    while (b->nb_done < b->list.nb) {
        for (unsigned k = 0; k < b->nb_workers && b->next_start < b->list.nb; k++)
            if (!b->workers[k].busy)
                start_image(b, &b->workers[k]);
        print_ready(b);
        progress_draw(b);
        if (b->nb_done < b->list.nb)
            wait_round(b);
    }
    print_ready(b);
    progress_clear(b);
    sigaction(SIGPIPE, &old, NULL);
}

int cli_run_batch(cli *c, invocation *in)
{
    batch b = {.c = c, .in = in, .started = cli_now()};
    int status = 1;
    for (size_t i = 0; i < in->nb_names; i++)
        if (!add_name(&b.list, in->names[i]))
            goto out_of_memory;
    if (in->files_from) {
        int ret = read_list(&b.list, in->files_from, in->null_separated);
        if (ret < 0) {
            cli_message(c, "--files-from=%s: %s", in->files_from, strerror(-ret));
            goto done;
        }
    }
    if (b.list.nb == 0) {
        cli_message(c, "--files-from=%s names no image", in->files_from);
        goto done;
    }
    if (!per_image_dirs_usable(c, in, &b.list))
        goto done;
    b.images = calloc(b.list.nb, sizeof(*b.images));
    if (!b.images)
        goto out_of_memory;
    for (size_t i = 0; i < b.list.nb; i++)
        b.images[i].rec.name = b.list.names[i];
    unsigned jobs = in->jobs ? in->jobs : default_jobs();
    if (jobs > 1024)
        jobs = 1024;
    if (jobs > b.list.nb)
        jobs = (unsigned)b.list.nb;
    if (c->report_path && !(b.sections = tmpfile())) {
        cli_message(c, "cannot write '%s': %s", c->report_path, strerror(errno));
        goto done;
    }
    int ret = open_workers(&b, jobs);
    if (ret < 0) {
        cli_message(c, "cannot set up %u workers: %s", jobs, strerror(-ret));
        goto done;
    }
    b.progress = !c->quiet && c->output == OUTPUT_HUMAN &&
                 (c->progress_forced || isatty(STDERR_FILENO));
    run_all(&b);
    double seconds = cli_now() - b.started;
    image_record *records = malloc(b.list.nb * sizeof(*records));
    if (!records)
        goto out_of_memory;
    for (size_t i = 0; i < b.list.nb; i++)
        records[i] = b.images[i].rec;
    status = batch_exit_status(records, b.list.nb);
    if (!c->quiet)
        print_summary(&b, status, seconds);
    if (c->report_path && (ret = write_report(&b, records)) < 0) {
        cli_message(c, "cannot write '%s': %s", c->report_path, strerror(-ret));
        if (status == 0 || status == 3 || status == 63)
            status = 1;
    }
    if (in->metrics) {
        ret = metrics_write(in->metrics, records, b.list.nb, seconds, status);
        if (ret < 0) {
            cli_message(c, "could not write the metrics file '%s': %s", in->metrics,
                        strerror(-ret));
            if (status == 0 || status == 3 || status == 63)
                status = 1;
        }
    }
    free(records);
    goto done;
out_of_memory:
    cli_message(c, "%s", strerror(ENOMEM));
    status = 1;
done:
    close_workers(&b);
    if (b.sections)
        fclose(b.sections);
    free(b.images);
    free(b.list.names);
    free(b.list.list_text);
    return status;
}
