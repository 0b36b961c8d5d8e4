/*
 * The refcounts on disk, walked one span at a time (ondisk.c).
 */
#ifndef QC_ONDISK_H
#define QC_ONDISK_H

#include <stdbool.h>
#include <stdint.h>

typedef struct qc_ctx qc_ctx;

/* A run of clusters whose on-disk refcounts come from one place. */
typedef struct qc_refcount_span {
    uint64_t first, count; /* clusters [first, first + count) */
    enum {
        QC_SPAN_BLOCK,   /* a readable refcount block: `block`, reftable entry `index` */
        QC_SPAN_ZERO,    /* no refcount block (or no table): refcounts read as 0 */
        QC_SPAN_UNKNOWN, /* the refcount block pointer or the table is unusable */
    } kind;
    uint64_t index;
    const uint8_t *block; /* cluster_size bytes; may cover clusters past the file end */
} qc_refcount_span;
/* Visit the on-disk refcounts of every cluster of the file, in order, one
 * span at a time (spans of refcount blocks also cover clusters past the
 * end of the file). Returns false when reading or allocating failed (a
 * finding was reported). With `read_ahead` the blocks are read ahead on a
 * second thread: only for a visitor that neither reads nor writes through
 * ctx->io (the check's; not a repair's, which writes to the view). */
typedef void (*qc_span_visit)(qc_ctx *ctx, void *state, const qc_refcount_span *span);
bool qc_each_refcount_span(qc_ctx *ctx, void *state, qc_span_visit visit, bool read_ahead);

#endif
