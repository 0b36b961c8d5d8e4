/*
 * Backing chains and external data files (qc_chain_check; docs/passes.md
 * §3.10, codes 9xx), on the caller's explicit request only (--chain,
 * --data-file): the one place the library opens a file an image names.
 *
 * Checks: every layer fully (qc_check), then what lies between a layer and
 * the files it names: a backing name qcheck will not follow (json:, a
 * protocol), a backing file that cannot be opened or is not in its
 * recorded format, a missing recorded format (probed only with
 * allow_probe), raw recorded for a file that is an image, a loop (same
 * device and inode), a chain deeper than the limit, a layer in a format
 * qcheck cannot check (qcow2 and QED layers are checked, raw ones have
 * nothing to check); an external data file that cannot be opened, is
 * shorter than what the image maps into it, or is named relative to the
 * working directory. Needs: each layer's check (its header names, the end
 * of the data it maps). Produces: the layers (open, for the digest) and
 * their results, with the findings between layers counted on the layer
 * whose header names the file.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../layout/format.h"
#include "ctx.h"
#include "digest.h"
#include "result.h"

typedef struct layer {
    qc_chain_layer pub;
    char *path, *data_path;
    qc_io io, data;
    bool own_io, data_open;
    qc_result *result;
    dev_t dev;
    ino_t ino;
} layer;

struct qc_chain {
    layer *layers;
    size_t n, cap;
    qc_options check;
    qc_chain_options opts;
};

/* ---- findings between layers ---- */

/* Report a finding about what layer L names, counted in L's result. */
static void report(qc_chain *ch, layer *L, qc_problem_id id, const char *object,
                   const qc_finding_ctx *fc)
{
    const qc_problem *p = qc_problem_get(id);
    qc_result_tally(L->result, p, 1);
    if (!ch->check.on_finding)
        return;
    char message[1024];
    qc_finding_format(p, fc, message, sizeof(message));
    qc_finding f = {p, object, message, QC_NO_OFFSET, 1, fc};
    ch->check.on_finding(&f, ch->check.payload);
}

/* A finding naming a file by `name` (bytes of an image: made printable),
 * with the other facts in fc. */
static void report_file(qc_chain *ch, layer *L, qc_problem_id id, const char *object,
                        const char *name, qc_finding_ctx fc)
{
    char printable[600];
    qc_printable(printable, sizeof(printable), (const uint8_t *)name, strlen(name));
    fc.present |= QC_CTX_NAME;
    fc.name = printable;
    report(ch, L, id, object, &fc);
}

/* The same, where the row's wording is picked by `variant` and names at
 * most a `value` (an errno). */
static void report_name(qc_chain *ch, layer *L, qc_problem_id id, const char *object,
                        const char *name, unsigned variant, uint64_t value)
{
    report_file(ch, L, id, object, name,
                (qc_finding_ctx){.present = QC_CTX_VALUE, .variant = variant, .value = value});
}

/* Why a file could not be opened, as the variants of backingUnopenable
 * and dataFileUnopenable number it. */
enum { OPEN_MISSING, OPEN_DENIED, OPEN_ERRNO, OPEN_NOT_A_FILE };

static unsigned open_variant(int err)
{
    return err == ENOENT ? OPEN_MISSING
         : err == EACCES ? OPEN_DENIED
         : err == EINVAL ? OPEN_NOT_A_FILE
                         : OPEN_ERRNO;
}

/* ---- names as QEMU resolves them ---- */

/* QEMU's test for a protocol prefix: a colon before any slash. */
static bool names_protocol(const char *name)
{
    return name[strcspn(name, ":/")] == ':';
}

/* A backing file name relative to the image naming it: in that image's
 * folder (an absolute name as it is). */
static char *resolve_backing(const char *parent, const char *name)
{
    const char *slash = strrchr(parent, '/');
    size_t dir = name[0] == '/' || !slash ? 0 : (size_t)(slash - parent) + 1;
    size_t len = strlen(name);
    char *path = malloc(dir + len + 1);
    if (path) {
        memcpy(path, parent, dir);
        memcpy(path + dir, name, len + 1);
    }
    return path;
}

/* ---- layers ---- */

/* The names layer L's header holds: a qcow2 header that decoded, or a QED
 * one (whose check records its backing file; it names no data file). NULL
 * when the check found no header to read them from. */
static const qc_header_info *names_of(const layer *L)
{
    const qc_result *r = L->result;
    return qc_result_header(r) ? qc_result_header(r) : r->qed ? &r->header : NULL;
}

/* The formats qcheck reads a layer in: checked (qcow2, qed) or raw. */
static const char *readable_format(const char *format)
{
    static const char *const formats[] = {"qcow2", "qed", "raw"};
    for (size_t i = 0; format && i < sizeof(formats) / sizeof(formats[0]); i++)
        if (strcmp(format, formats[i]) == 0)
            return formats[i];
    return NULL;
}

static layer *push_layer(qc_chain *ch, char *path)
{
    if (ch->n == ch->cap) {
        size_t cap = ch->cap ? ch->cap * 2 : 4;
        layer *l = realloc(ch->layers, cap * sizeof(*l));
        if (!l)
            return NULL;
        ch->layers = l;
        ch->cap = cap;
    }
    layer *L = &ch->layers[ch->n];
    memset(L, 0, sizeof(*L));
    L->path = path;
    L->result = qc_result_new();
    if (!L->result)
        return NULL;
    L->pub.depth = (unsigned)ch->n;
    L->pub.path = path;
    ch->n++;
    return L;
}

static void event(const qc_chain *ch, qc_chain_event ev, const layer *L)
{
    if (ch->opts.on_layer)
        ch->opts.on_layer(ev, &L->pub, ch->opts.payload);
}

/* The driver QEMU's probing picks for the file behind io. */
static const char *probe(qc_io *io)
{
    uint8_t head[QC_V3_HEADER_LENGTH] = {0};
    size_t n = io->size < sizeof(head) ? (size_t)io->size : sizeof(head);
    if (n && io->read(io->opaque, 0, head, n) < 0)
        return "raw";
    return qc_driver_of(qc_guess_format(head, n));
}

/* The external data file of layer L: opened, and compared with what the
 * image maps into it. */
static void open_data_file(qc_chain *ch, layer *L)
{
    const qc_header_info *h = names_of(L);
    const char *given = L->pub.depth == 0 ? ch->opts.data_file : NULL;
    const char *obj = "external data file";
    enum { DATA_NOT_NAMED = OPEN_NOT_A_FILE + 1, DATA_NOT_WANTED, DATA_PROTOCOL };
    if (given && !h->external_data_file) {
        report_name(ch, L, QC_P_DATA_FILE_UNOPENABLE, obj, given, DATA_NOT_WANTED, 0);
        return;
    }
    if (!h->external_data_file || (!given && !ch->opts.data_files))
        return;
    const char *name = given ? given : h->data_file;
    if (!name) {
        report_name(ch, L, QC_P_DATA_FILE_UNOPENABLE, obj, "", DATA_NOT_NAMED, 0);
        return;
    }
    if (!given && names_protocol(name)) {
        report_name(ch, L, QC_P_DATA_FILE_UNOPENABLE, obj, name, DATA_PROTOCOL, 0);
        return;
    }
    if (!given && name[0] != '/')
        report_name(ch, L, QC_P_DATA_FILE_NAME_RELATIVE, obj, name, 0, 0);
    if (!(L->data_path = strdup(name))) {
        report_name(ch, L, QC_P_DATA_FILE_UNOPENABLE, obj, name, OPEN_ERRNO, ENOMEM);
        return;
    }
    int ret = qc_io_open_image(&L->data, name, ch->opts.lock, NULL);
    if (ret < 0) {
        report_name(ch, L, QC_P_DATA_FILE_UNOPENABLE, obj, name, open_variant(-ret),
                    (uint64_t)-ret);
        return;
    }
    L->data_open = true;
    L->pub.data_file = L->data_path;
    if (L->result->data_file_end > L->data.size)
        report_file(ch, L, QC_P_DATA_FILE_TOO_SHORT, obj, name,
                    (qc_finding_ctx){.present = QC_CTX_FILE_SIZE | QC_CTX_EXPECTED,
                                     .file_size = L->data.size,
                                     .expected = L->result->data_file_end});
}

/* The layer with this device and inode, or -1. */
static long find_layer(const qc_chain *ch, const struct stat *st)
{
    for (size_t i = 0; i < ch->n; i++)
        if (ch->layers[i].dev == st->st_dev && ch->layers[i].ino == st->st_ino)
            return (long)i;
    return -1;
}

/* Open the backing file layer L names and decide how QEMU reads it: a
 * new layer after L, or none where the chain ends (reported). L may move. */
static void open_backing(qc_chain *ch, layer *L)
{
    const qc_header_info *h = names_of(L);
    const char *name = h ? h->backing_file : NULL;
    const char *obj = "backing file name";
    if (!name || !ch->opts.backing)
        return;
    if (names_protocol(name)) {
        report_name(ch, L, QC_P_BACKING_NOT_FOLLOWED, obj, name, strncmp(name, "json:", 5) != 0,
                    0);
        return;
    }
    unsigned limit = ch->opts.max_depth ? ch->opts.max_depth : QC_CHAIN_DEFAULT_DEPTH;
    if (L->pub.depth + 1 > limit) {
        report_file(ch, L, QC_P_CHAIN_TOO_DEEP, obj, name,
                    (qc_finding_ctx){.present = QC_CTX_INDEX | QC_CTX_EXPECTED,
                                     .index = L->pub.depth + 1,
                                     .expected = limit});
        return;
    }
    char *path = resolve_backing(L->path, name);
    struct stat st;
    if (!path) {
        report_name(ch, L, QC_P_BACKING_UNOPENABLE, obj, name, OPEN_ERRNO, ENOMEM);
        return;
    }
    if (stat(path, &st) < 0) {
        report_name(ch, L, QC_P_BACKING_UNOPENABLE, obj, path, open_variant(errno),
                    (uint64_t)errno);
        free(path);
        return;
    }
    long seen = find_layer(ch, &st);
    if (seen >= 0) {
        report_file(ch, L, QC_P_BACKING_LOOP, obj, path,
                    (qc_finding_ctx){.present = QC_CTX_INDEX, .index = (uint64_t)seen});
        free(path);
        return;
    }
    qc_io io;
    int ret = qc_io_open_image(&io, path, ch->opts.lock, NULL);
    if (ret < 0) {
        report_name(ch, L, QC_P_BACKING_UNOPENABLE, obj, path, open_variant(-ret),
                    (uint64_t)-ret);
        free(path);
        return;
    }
    const char *content = probe(&io), *format = h->backing_format;
    enum { NOT_QCOW2 = OPEN_NOT_A_FILE + 1, NOT_IN_FORMAT, UNKNOWN_FORMAT };
    if (!format && !ch->opts.allow_probe) {
        report_name(ch, L, QC_P_BACKING_FORMAT_NOT_RECORDED, obj, path, 0, 0);
    } else if (!format) {
        report_name(ch, L, QC_P_BACKING_FORMAT_PROBED, obj, path, 0, 0);
        format = content;
    } else if (strcmp(format, "raw") == 0) {
        if (strcmp(content, "raw") != 0)
            report_name(ch, L, QC_P_BACKING_FORMAT_MISMATCH, obj, path, 0, 0);
    } else if (strcmp(format, content) != 0) {
        /* backingFormatUnknown: the check of L found no such driver. */
        bool known = !qc_result_problem_count(L->result, QC_P_BACKING_FORMAT_UNKNOWN);
        unsigned why = strcmp(format, "qcow2") == 0 ? NOT_QCOW2
                     : known                        ? NOT_IN_FORMAT
                                                    : UNKNOWN_FORMAT;
        report_name(ch, L, QC_P_BACKING_UNOPENABLE, obj, path, why, 0);
        format = NULL;
    } else if (!readable_format(format)) {
        report_name(ch, L, QC_P_LAYER_NOT_CHECKED, obj, path, qc_driver_index(format), 0);
        format = NULL;
    }
    if (!readable_format(format)) {
        qc_io_close(&io);
        free(path);
        return;
    }
    bool probed = !h->backing_format;
    size_t parent = (size_t)(L - ch->layers);
    layer *B = push_layer(ch, path);
    if (!B) {
        L = &ch->layers[parent]; /* push_layer may have moved the layers */
        report_name(ch, L, QC_P_BACKING_UNOPENABLE, obj, path, OPEN_ERRNO, ENOMEM);
        qc_io_close(&io);
        free(path);
        return;
    }
    B->io = io;
    B->own_io = true;
    B->dev = st.st_dev;
    B->ino = st.st_ino;
    B->pub.format = readable_format(format);
    B->pub.probed = probed;
}

/* ---- the chain ---- */

int qc_chain_check(qc_io *top, const char *top_path, const qc_options *check,
                   const qc_chain_options *opts, qc_chain **out)
{
    *out = NULL;
    if (!top || !top_path || !check || !opts || opts->size == 0)
        return -EINVAL;
    qc_chain *ch = calloc(1, sizeof(*ch));
    if (!ch)
        return -ENOMEM;
    if (!qc_options_load(&ch->check, check)) {
        free(ch);
        return -EINVAL;
    }
    size_t n = opts->size < sizeof(ch->opts) ? opts->size : sizeof(ch->opts);
    memcpy(&ch->opts, opts, n);
    if (ch->opts.lock == QC_LOCK_REPAIR)
        ch->opts.lock = QC_LOCK_CHECK; /* the chain only reads */
    char *path = strdup(top_path);
    layer *L = path ? push_layer(ch, path) : NULL;
    if (!L) {
        free(path);
        qc_chain_free(ch);
        return -ENOMEM;
    }
    L->io = *top;
    struct stat st;
    if (stat(top_path, &st) == 0) {
        L->dev = st.st_dev;
        L->ino = st.st_ino;
    }
    L->pub.format = "qcow2";
    /* Layers are reached by index: opening the next one may move them. */
    for (size_t k = 0; k < ch->n; k++) {
        L = &ch->layers[k];
        L->pub.result = L->result;
        event(ch, QC_CHAIN_LAYER_BEGIN, L);
        bool raw = strcmp(L->pub.format, "raw") == 0;
        int ret = raw ? 0 : qc_check(&L->io, &ch->check, L->result);
        if (ret < 0) {
            qc_chain_free(ch);
            return ret;
        }
        if (k == 0)
            L->pub.format = qc_result_driver(L->result);
        if (names_of(L)) {
            open_data_file(ch, L);
            open_backing(ch, L);
        }
        event(ch, QC_CHAIN_LAYER_END, &ch->layers[k]);
    }
    *out = ch;
    return 0;
}

size_t qc_chain_layers(const qc_chain *ch)
{
    return ch->n;
}

const qc_chain_layer *qc_chain_layer_at(const qc_chain *ch, size_t i)
{
    return i < ch->n ? &ch->layers[i].pub : NULL;
}

uint64_t qc_chain_count(const qc_chain *ch, qc_counter counter)
{
    uint64_t sum = 0;
    for (size_t i = 0; i < ch->n; i++)
        sum += qc_result_count(ch->layers[i].result, counter);
    return sum;
}

int qc_chain_exit_status(const qc_chain *ch)
{
    if (ch->n == 0)
        return 1;
    if (ch->layers[0].result->other_format)
        return 63;
    return qc_status_of(qc_chain_count(ch, QC_COUNT_CHECK_ERRORS),
                        qc_chain_count(ch, QC_COUNT_CORRUPTIONS),
                        qc_chain_count(ch, QC_COUNT_LEAKS));
}

int qc_chain_digest(const qc_chain *ch, qc_digest_alg alg, uint8_t *digest, size_t *digest_len,
                    char *why, size_t why_len)
{
    qc_digest_layer *specs = calloc(ch->n ? ch->n : 1, sizeof(*specs));
    if (!specs)
        return -ENOMEM;
    for (size_t i = 0; i < ch->n; i++) {
        layer *L = &ch->layers[i];
        specs[i].io = &L->io;
        specs[i].data = L->data_open ? &L->data : NULL;
        specs[i].raw = strcmp(L->pub.format, "raw") == 0;
    }
    int ret = qc_digest_layers(specs, ch->n, alg, digest, digest_len, why, why_len);
    free(specs);
    return ret;
}

void qc_chain_free(qc_chain *ch)
{
    if (!ch)
        return;
    for (size_t i = 0; i < ch->n; i++) {
        layer *L = &ch->layers[i];
        if (L->own_io)
            qc_io_close(&L->io);
        if (L->data_open)
            qc_io_close(&L->data);
        free(L->path);
        free(L->data_path);
        qc_result_free(L->result);
    }
    free(ch->layers);
    free(ch);
}
