/*
 * Support shared by every pass: allocation charged to the check's memory
 * accountant (memory.h), bounded reads, and a binary search.
 */
#include <errno.h>
#include <string.h>

#include "ctx.h"

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

bool qc_read(qc_ctx *ctx, uint64_t off, void *buf, size_t len, const char *what)
{
    int ret = qc_read_quiet(ctx, off, buf, len);
    if (ret < 0)
        qc_report_read_failed(ctx, what, off, len, ret);
    return ret == 0;
}
