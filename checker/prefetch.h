/*
 * Read-ahead of a long ordered sequence of reads (prefetch.c).
 */
#ifndef QC_PREFETCH_H
#define QC_PREFETCH_H

#include <stddef.h>
#include <stdint.h>

typedef struct qc_ctx qc_ctx;

typedef struct qc_prefetch qc_prefetch;
#define QC_PREFETCH_SKIP UINT64_MAX
/* Where item i lies, or QC_PREFETCH_SKIP for an item the pass will not
 * ask for. Called from the read-ahead thread: it may only look at what the
 * pass does not change while the prefetch runs. */
typedef uint64_t (*qc_prefetch_offset)(void *arg, size_t i);
/* Start reading `count` items of `len` bytes ahead (on a second thread
 * when there are enough of them; with count 0, or when the thread cannot
 * start, each item is read when asked). NULL when memory ran out
 * (reported). */
qc_prefetch *qc_prefetch_start(qc_ctx *ctx, size_t count, size_t len, qc_prefetch_offset offset_of,
                               void *arg);
/* Item i (increasing from call to call; items may be skipped) and its read
 * status in *ret (0 or a negative errno); the buffer is valid until the
 * next call. */
const uint8_t *qc_prefetch_get(qc_prefetch *p, size_t i, int *ret);
void qc_prefetch_stop(qc_prefetch *p);

#endif
