/*
 * The memory accountant (memory.c): every allocation of a check is charged
 * against its limit (--max-mem), so that a hostile image cannot make the
 * check allocate what the file does not justify. The cluster maps and the
 * passes charge the same accountant; it knows nothing else of the check.
 */
#ifndef QC_MEMORY_H
#define QC_MEMORY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct qc_mem {
    uint64_t used, limit;
    /* Once *stopped (memory was refused, or the work stopped for another
     * reason), every request is refused quietly: a limit is reported once
     * and the work winds down. */
    const bool *stopped;
    /* Told of a refused request: what needed the memory, how many bytes,
     * and whether it was over the limit (else the system had none). The
     * owner reports it and sets *stopped. */
    void (*refused)(void *owner, const char *what, uint64_t bytes, bool over_limit);
    void *owner;
} qc_mem;

/* Zeroed memory charged to m; with m NULL, plain zeroed memory charged to
 * nothing (a repair's set that outlives the checks it is used with). */
void *qc_mem_alloc(qc_mem *m, uint64_t bytes, const char *what);
/* Grow an array of `elem`-byte elements at ptr (capacity *cap) to hold
 * `need`; NULL (ptr left as it was) when refused. */
void *qc_mem_grow(qc_mem *m, void *ptr, size_t *cap, size_t elem, size_t need, const char *what);
void qc_mem_free(qc_mem *m, void *ptr, uint64_t bytes);

#endif
