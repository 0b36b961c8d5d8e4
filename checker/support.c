/*
 * Support shared by every pass: the problem table and the reporting
 * decision point, memory accounting against --max-mem, bounded reads.
 */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctx.h"
#include "finding.h"

static const qc_problem problem_table[QC_P_COUNT] = {
#define QC_PROBLEM(name, code_, id_, sev, fix_, summary_, message_)                                \
    [QC_P_##name] = {QC_P_##name, code_, id_, QC_SEV_##sev, QC_FIX_##fix_, summary_, message_},
#include "qcheck_problems.def"
#undef QC_PROBLEM
};

const qc_problem *qc_problem_get(qc_problem_id index)
{
    return (unsigned)index < QC_P_COUNT ? &problem_table[index] : NULL;
}

const qc_problem *qc_problem_by_id(const char *id)
{
    for (unsigned i = 0; i < QC_P_COUNT; i++)
        if (strcmp(problem_table[i].id, id) == 0)
            return &problem_table[i];
    return NULL;
}

const char *qc_severity_name(qc_severity sev)
{
    static const char *const names[] = {"error", "corruption", "leak", "warning", "info"};
    return (unsigned)sev < sizeof(names) / sizeof(names[0]) ? names[sev] : "?";
}

const char *qc_fix_name(qc_fix fix)
{
    static const char *const names[] = {
        "none",          "lower-refcount",    "raise-refcount",        "rebuild-refcounts",
        "fix-copied",    "clear-entry",       "clear-feature-bit",     "repair-snapshot-table",
        "drop-bitmaps",  "clear-bits",        "zero-table-offset",
    };
    return (unsigned)fix < sizeof(names) / sizeof(names[0]) ? names[fix] : "?";
}

static void tally(qc_ctx *ctx, const qc_problem *p, uint64_t count)
{
    qc_result *r = ctx->res;
    switch (p->severity) {
    case QC_SEV_ERROR:
        r->check_errors += count;
        break;
    case QC_SEV_CORRUPTION:
        r->corruptions += count;
        break;
    case QC_SEV_LEAK:
        r->leaks += count;
        break;
    case QC_SEV_WARNING:
        r->warnings += 1;
        break;
    case QC_SEV_INFO:
        break;
    }
    r->per_problem[p->index] += count;
    r->findings++;
}

static void emit(qc_ctx *ctx, const qc_problem *p, const char *object, uint64_t offset,
                 uint64_t count, const char *tmpl, const qc_finding_ctx *fc)
{
    if (!ctx->opts || !ctx->opts->on_finding)
        return;
    char message[512];
    int status = qc_template_render(message, sizeof(message), tmpl, fc);
    /* A template that names a field its call site does not fill is a bug
     * of qcheck's, which the test suite's images catch here. */
    assert(status == 0);
    (void)status;
    qc_finding f = {p, object ? object : "", message, offset, count, fc};
    ctx->opts->on_finding(&f, ctx->opts->payload);
}

void qc_report(qc_ctx *ctx, qc_problem_id id, const char *object, uint64_t offset,
               uint64_t count, const qc_finding_ctx *fc)
{
    const qc_problem *p = &problem_table[id];
    if (count == 0)
        count = 1;
    tally(ctx, p, count);
    if (ctx->fix_sink)
        ctx->fix_sink(ctx->fix_sink_payload, id, offset, count);
    /* Findings past the cap are counted but folded into one summary line, so
     * a thousand bad entries do not flood the output. */
    if (ctx->shown[id] >= QC_REPORT_CAP) {
        ctx->hidden[id]++;
        ctx->hidden_count[id] += count;
        return;
    }
    ctx->shown[id]++;
    emit(ctx, p, object, offset, count, p->message, fc);
}

void qc_report_flush(qc_ctx *ctx)
{
    for (unsigned i = 0; i < QC_P_COUNT; i++) {
        if (!ctx->hidden[i])
            continue;
        /* Not the row's wording: the same summary for every problem. */
        qc_finding_ctx fc = {.present = QC_CTX_VALUE | QC_CTX_SIZE,
                             .value = ctx->hidden[i],
                             .size = ctx->hidden_count[i]};
        emit(ctx, &problem_table[i], "(summary)", QC_NO_OFFSET, ctx->hidden_count[i],
             "%{value} more findings of this kind (%{size} items) are not shown one by one", &fc);
    }
}

void qc_progress(qc_ctx *ctx, unsigned from, unsigned to, uint64_t done, uint64_t total)
{
    if (!ctx->opts || !ctx->opts->on_progress)
        return;
    /* done / total of (to - from), without overflowing for any total. */
    uint64_t part = total ? (uint64_t)((double)(to - from) * ((double)done / (double)total)) : 0;
    unsigned permille = from + (unsigned)(part < to - from ? part : to - from);
    if (permille <= ctx->progress)
        return;
    ctx->progress = permille;
    ctx->opts->on_progress(permille, ctx->opts->payload);
}

void qc_printable(char *dst, size_t dst_len, const uint8_t *src, size_t src_len)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    if (dst_len == 0)
        return;
    for (size_t i = 0; i < src_len; i++) {
        uint8_t ch = src[i];
        bool plain = ch >= 0x20 && ch < 0x7f && ch != '\\' && ch != '"';
        size_t need = plain ? 1 : 4;
        if (o + need + 4 >= dst_len) { /* keep room for "..." and NUL */
            memcpy(dst + o, "...", 3);
            o += 3;
            break;
        }
        if (plain) {
            dst[o++] = (char)ch;
        } else {
            dst[o++] = '\\';
            dst[o++] = 'x';
            dst[o++] = hex[ch >> 4];
            dst[o++] = hex[ch & 15];
        }
    }
    dst[o] = '\0';
}

size_t qc_lower_bound(const void *array, size_t n, size_t elem_size, size_t key_offset,
                      uint64_t key)
{
    const uint8_t *a = array;
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        uint64_t k;
        memcpy(&k, a + mid * elem_size + key_offset, sizeof(k));
        if (k < key)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

void *qc_alloc(qc_ctx *ctx, uint64_t bytes, const char *what)
{
    if (bytes == 0)
        bytes = 1;
    /* Once the check has stopped (memory ran out, say), the passes wind
     * down: whatever they still ask for is refused quietly, so the limit
     * is reported once. */
    if (ctx->stop)
        return NULL;
    if (bytes > ctx->mem_limit - ctx->mem_used || bytes > SIZE_MAX) {
        qc_report(ctx, QC_P_MEMORY_LIMIT, what, QC_NO_OFFSET, 1,
                  &(qc_finding_ctx){.present = QC_CTX_SIZE | QC_CTX_EXPECTED,
                                    .size = bytes,
                                    .expected = ctx->mem_limit});
        ctx->stop = true;
        return NULL;
    }
    void *p = calloc(1, (size_t)bytes);
    if (!p) {
        qc_report(ctx, QC_P_MEMORY_LIMIT, what, QC_NO_OFFSET, 1,
                  &(qc_finding_ctx){.present = QC_CTX_SIZE, .variant = 1, .size = bytes});
        ctx->stop = true;
        return NULL;
    }
    ctx->mem_used += bytes;
    return p;
}

void *qc_grow(qc_ctx *ctx, void *ptr, size_t *cap, size_t elem, size_t need, const char *what)
{
    if (need <= *cap)
        return ptr;
    if (ctx->stop) /* as in qc_alloc */
        return NULL;
    size_t new_cap = *cap ? *cap : 16;
    while (new_cap < need)
        new_cap *= 2;
    uint64_t old_bytes = (uint64_t)*cap * elem, new_bytes;
    if (!qc_mul_ok(new_cap, elem, &new_bytes) ||
        new_bytes - old_bytes > ctx->mem_limit - ctx->mem_used) {
        qc_report(ctx, QC_P_MEMORY_LIMIT, what, QC_NO_OFFSET, 1,
                  &(qc_finding_ctx){.present = QC_CTX_SIZE | QC_CTX_EXPECTED,
                                    .size = new_bytes - old_bytes,
                                    .expected = ctx->mem_limit});
        ctx->stop = true;
        return NULL;
    }
    void *p = realloc(ptr, (size_t)new_bytes);
    if (!p) {
        qc_report(ctx, QC_P_MEMORY_LIMIT, what, QC_NO_OFFSET, 1,
                  &(qc_finding_ctx){.present = QC_CTX_SIZE,
                                    .variant = 1,
                                    .size = new_bytes - old_bytes});
        ctx->stop = true;
        return NULL;
    }
    ctx->mem_used += new_bytes - old_bytes;
    *cap = new_cap;
    return p;
}

void qc_free(qc_ctx *ctx, void *ptr, uint64_t bytes)
{
    if (!ptr)
        return;
    free(ptr);
    ctx->mem_used -= bytes ? bytes : 1;
}

int qc_read_quiet(qc_ctx *ctx, uint64_t off, void *buf, size_t len)
{
    return qc_range_within(off, len, ctx->file_size) ? ctx->io->read(ctx->io->opaque, off, buf, len)
                                                     : -EIO;
}

void qc_report_read_failed(qc_ctx *ctx, const char *what, uint64_t off, size_t len, int err)
{
    qc_report(ctx, QC_P_READ_FAILED, what, off, 1,
              &(qc_finding_ctx){.present = QC_CTX_SIZE | QC_CTX_NAME,
                                .size = len,
                                .name = strerror(-err)});
}

bool qc_read(qc_ctx *ctx, uint64_t off, void *buf, size_t len, const char *what)
{
    int ret = qc_read_quiet(ctx, off, buf, len);
    if (ret < 0)
        qc_report_read_failed(ctx, what, off, len, ret);
    return ret == 0;
}
