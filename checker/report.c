/*
 * Reporting: every finding goes through qc_report(), which counts it in
 * the result, marks what a corruption names for the host map (map.c),
 * hands it to the repair planner's sink, caps what is shown per
 * problem, and renders the message from the problem row's template and
 * the finding's typed context. Also the progress callback, and text from
 * image bytes made printable.
 */
#include <assert.h>
#include <stdio.h>
#include <string.h>

#include "ctx.h"
#include "finding.h"

static void emit(qc_ctx *ctx, const qc_problem *p, const char *object, uint64_t offset,
                 uint64_t count, const char *tmpl, const qc_finding_ctx *fc)
{
    if (!ctx->options.on_finding)
        return;
    char message[512];
    int status = qc_template_render(message, sizeof(message), tmpl, fc);
    /* A template that names a field its call site does not fill is a bug
     * of qcheck's, which the debug builds of the test suite stop at here;
     * a release build (NDEBUG) prints the message without that field. */
    assert(status == 0);
    (void)status;
    qc_finding f = {p, object ? object : "", message, offset, count, fc};
    ctx->options.on_finding(&f, ctx->options.payload);
}

void qc_report(qc_ctx *ctx, qc_problem_id id, const char *object, uint64_t offset,
               uint64_t count, const qc_finding_ctx *fc)
{
    const qc_problem *p = qc_problem_get(id);
    qc_problem_row row = qc_problem_row_of(id);
    if (count == 0)
        count = 1;
    qc_result_tally(ctx->res, p, count);
    qc_map_note_finding(ctx, p, offset, fc);
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
    emit(ctx, p, object, offset, count, p->message, fc);
}

void qc_report_flush(qc_ctx *ctx)
{
    for (size_t i = 0; i < QC_PROBLEM_ROWS; i++) {
        if (!ctx->hidden[i])
            continue;
        /* Not the row's wording: the same summary for every problem. */
        qc_finding_ctx fc = {.present = QC_CTX_VALUE | QC_CTX_SIZE,
                             .value = ctx->hidden[i],
                             .size = ctx->hidden_count[i]};
        emit(ctx, qc_problem_at(i), "(summary)", QC_NO_OFFSET, ctx->hidden_count[i],
             "%{value} more findings of this kind (%{size} items) are not shown one by one", &fc);
    }
}

void qc_report_read_failed(qc_ctx *ctx, const char *what, uint64_t off, size_t len, int err)
{
    qc_report(ctx, QC_P_READ_FAILED, what, off, 1,
              &(qc_finding_ctx){.present = QC_CTX_SIZE | QC_CTX_NAME,
                                .size = len,
                                .name = strerror(-err)});
}

void qc_memory_refused(void *owner, const char *what, uint64_t bytes, bool over_limit)
{
    qc_ctx *ctx = owner;
    if (over_limit)
        qc_report(ctx, QC_P_MEMORY_LIMIT, what, QC_NO_OFFSET, 1,
                  &(qc_finding_ctx){.present = QC_CTX_SIZE | QC_CTX_EXPECTED,
                                    .size = bytes,
                                    .expected = ctx->mem.limit});
    else
        qc_report(ctx, QC_P_MEMORY_LIMIT, what, QC_NO_OFFSET, 1,
                  &(qc_finding_ctx){.present = QC_CTX_SIZE, .variant = 1, .size = bytes});
    ctx->stop = true;
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
