/*
 * The refcounts on disk, walked one span at a time (ondisk.c).
 */
#ifndef QC_ONDISK_H
#define QC_ONDISK_H

#include <stdbool.h>
#include <stdint.h>

#include "qcheck.h"

typedef struct qc_ctx qc_ctx;
typedef struct qc_check_view qc_check_view;

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
typedef void (*qc_span_visit)(const qc_check_view *v, void *state, const qc_refcount_span *span);
/* The check's walk: visit the on-disk refcounts of every cluster of the
 * file, in order, one span at a time (spans of refcount blocks also cover
 * clusters past the end of the file), the blocks read ahead on a second
 * thread. Returns false when reading or allocating failed (a finding was
 * reported). */
bool qc_each_refcount_span(qc_ctx *ctx, void *state, qc_span_visit visit);
/* A repair's walk over the same spans of a check's view, each block read
 * from `io` (the image as the plan leaves it) when its turn comes. Returns
 * false when a block cannot be read or memory for one is lacking. */
bool qc_view_each_refcount_span(const qc_check_view *v, qc_io *io, void *state,
                                qc_span_visit visit);

#endif
