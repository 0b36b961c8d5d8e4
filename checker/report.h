/*
 * Reporting (report.c): one finding at a time through the problem table,
 * the report cap, progress, and text from image bytes made printable.
 */
#ifndef QC_REPORT_H
#define QC_REPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "qcheck.h"

typedef struct qc_ctx qc_ctx;

#define QC_REPORT_CAP 20 /* findings shown per problem; the rest are counted */

/* Report one finding. `object` names the structure (may be NULL), `offset`
 * is a host offset or QC_NO_OFFSET, `count` how many clusters/entries it
 * covers (at least 1), `fc` the facts the problem's message template names
 * (the message is made from the row, never at the call site). */
void qc_report(qc_ctx *ctx, qc_problem_id id, const char *object, uint64_t offset,
               uint64_t count, const qc_finding_ctx *fc);
/* Emit the "N more" summaries for findings past the per-problem cap. */
void qc_report_flush(qc_ctx *ctx);
/* Tell the caller the check is `done` parts of `total` through the stage
 * that spans [from, to] thousandths of the whole. */
void qc_progress(qc_ctx *ctx, unsigned from, unsigned to, uint64_t done, uint64_t total);
/* Where the walk and the comparison start, in thousandths. */
#define QC_PROGRESS_WALK 100
#define QC_PROGRESS_COMPARE 800
/* Report readFailed for `what`: reading len bytes at off failed with err. */
void qc_report_read_failed(qc_ctx *ctx, const char *what, uint64_t off, size_t len, int err);
/* The memory accountant's refusals (memory.h): memoryLimit, and the check
 * stops. */
void qc_memory_refused(void *owner, const char *what, uint64_t bytes, bool over_limit);
/* Copy image-provided bytes into dst as printable ASCII (escaped). */
void qc_printable(char *dst, size_t dst_len, const uint8_t *src, size_t src_len);

#endif
