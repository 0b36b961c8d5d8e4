/*
 * Support shared by every pass: the problem table and the reporting
 * decision point, memory accounting against --max-mem, bounded reads.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctx.h"

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
    r->per_problem[qc_problem_row_of(p->code)] += count;
    r->findings++;
}

static void emit(qc_ctx *ctx, const qc_problem *p, const char *object, uint64_t offset,
                 uint64_t count, const char *message)
{
    if (!ctx->options.on_finding)
        return;
    qc_finding f = {p, object ? object : "", message, offset, count};
    ctx->options.on_finding(&f, ctx->options.payload);
}

void qc_report(qc_ctx *ctx, qc_problem_id id, const char *object, uint64_t offset,
               uint64_t count, const char *fmt, ...)
{
    const qc_problem *p = qc_problem_get(id);
    qc_problem_row row = qc_problem_row_of(id);
    if (count == 0)
        count = 1;
    tally(ctx, p, count);
    if (ctx->fix_sink)
        ctx->fix_sink(ctx->fix_sink_payload, id, offset, count);
    /* Findings past the cap are counted but folded into one summary line, so
     * a thousand bad entries do not flood the output. */
    if (ctx->shown[row] >= QC_REPORT_CAP) {
        ctx->hidden[row]++;
        ctx->hidden_count[row] += count;
        return;
    }
    ctx->shown[row]++;
    char message[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof(message), fmt, ap);
    va_end(ap);
    emit(ctx, p, object, offset, count, message);
}

void qc_report_flush(qc_ctx *ctx)
{
    for (size_t i = 0; i < QC_PROBLEM_ROWS; i++) {
        if (!ctx->hidden[i])
            continue;
        char message[160];
        snprintf(message, sizeof(message),
                 "%llu more findings of this kind (%llu items) are not shown one by one",
                 (unsigned long long)ctx->hidden[i], (unsigned long long)ctx->hidden_count[i]);
        emit(ctx, qc_problem_at(i), "(summary)", QC_NO_OFFSET, ctx->hidden_count[i], message);
    }
}

void qc_progress(qc_ctx *ctx, unsigned from, unsigned to, uint64_t done, uint64_t total)
{
    if (!ctx->options.on_progress)
        return;
    /* done / total of (to - from), without overflowing for any total. */
    uint64_t part = total ? (uint64_t)((double)(to - from) * ((double)done / (double)total)) : 0;
    unsigned permille = from + (unsigned)(part < to - from ? part : to - from);
    if (permille <= ctx->progress)
        return;
    ctx->progress = permille;
    ctx->options.on_progress(permille, ctx->options.payload);
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

void qc_memory_refused(void *owner, const char *what, uint64_t bytes, bool over_limit)
{
    qc_ctx *ctx = owner;
    if (over_limit)
        qc_report(ctx, QC_P_MEMORY_LIMIT, what, QC_NO_OFFSET, 1,
                  "needs %llu more bytes, over the memory limit of %llu bytes (--max-mem)",
                  (unsigned long long)bytes, (unsigned long long)ctx->mem.limit);
    else
        qc_report(ctx, QC_P_MEMORY_LIMIT, what, QC_NO_OFFSET, 1,
                  "out of memory allocating %llu bytes", (unsigned long long)bytes);
    ctx->stop = true;
}

void *qc_alloc(qc_ctx *ctx, uint64_t bytes, const char *what)
{
    return qc_mem_alloc(&ctx->mem, bytes, what);
}

void *qc_grow(qc_ctx *ctx, void *ptr, size_t *cap, size_t elem, size_t need, const char *what)
{
    return qc_mem_grow(&ctx->mem, ptr, cap, elem, need, what);
}

void qc_free(qc_ctx *ctx, void *ptr, uint64_t bytes)
{
    qc_mem_free(&ctx->mem, ptr, bytes);
}

int qc_read_quiet(qc_ctx *ctx, uint64_t off, void *buf, size_t len)
{
    return qc_range_within(off, len, ctx->file_size) ? ctx->io->read(ctx->io->opaque, off, buf, len)
                                                     : -EIO;
}

void qc_report_read_failed(qc_ctx *ctx, const char *what, uint64_t off, size_t len, int err)
{
    qc_report(ctx, QC_P_READ_FAILED, what, off, 1, "reading %zu bytes failed: %s", len,
              strerror(-err));
}

bool qc_read(qc_ctx *ctx, uint64_t off, void *buf, size_t len, const char *what)
{
    int ret = qc_read_quiet(ctx, off, buf, len);
    if (ret < 0)
        qc_report_read_failed(ctx, what, off, len, ret);
    return ret == 0;
}
