/*
 * The memory accountant: see memory.h.
 */
#include <stdlib.h>

#include "../layout/bytes.h"
#include "memory.h"

static bool refuse(qc_mem *m, const char *what, uint64_t bytes, bool over_limit)
{
    if (m->refused)
        m->refused(m->owner, what, bytes, over_limit);
    return false;
}

static bool may_take(qc_mem *m, const char *what, uint64_t bytes)
{
    if (m->stopped && *m->stopped)
        return false;
    if (bytes > m->limit - m->used || bytes > SIZE_MAX)
        return refuse(m, what, bytes, true);
    return true;
}

void *qc_mem_alloc(qc_mem *m, uint64_t bytes, const char *what)
{
    if (bytes == 0)
        bytes = 1;
    if (!m)
        return bytes <= SIZE_MAX ? calloc(1, (size_t)bytes) : NULL;
    if (!may_take(m, what, bytes))
        return NULL;
    void *p = calloc(1, (size_t)bytes);
    if (!p) {
        refuse(m, what, bytes, false);
        return NULL;
    }
    m->used += bytes;
    return p;
}

void *qc_mem_grow(qc_mem *m, void *ptr, size_t *cap, size_t elem, size_t need, const char *what)
{
    if (need <= *cap)
        return ptr;
    if (m && m->stopped && *m->stopped)
        return NULL;
    size_t new_cap = *cap ? *cap : 16;
    while (new_cap < need)
        new_cap *= 2;
    uint64_t old_bytes = (uint64_t)*cap * elem, new_bytes;
    if (!qc_mul_ok(new_cap, elem, &new_bytes) || new_bytes > SIZE_MAX) {
        if (m)
            refuse(m, what, UINT64_MAX, true);
        return NULL;
    }
    if (m && !may_take(m, what, new_bytes - old_bytes))
        return NULL;
    void *p = realloc(ptr, (size_t)new_bytes);
    if (!p) {
        if (m)
            refuse(m, what, new_bytes - old_bytes, false);
        return NULL;
    }
    if (m)
        m->used += new_bytes - old_bytes;
    *cap = new_cap;
    return p;
}

void qc_mem_free(qc_mem *m, void *ptr, uint64_t bytes)
{
    if (!ptr)
        return;
    free(ptr);
    if (m)
        m->used -= bytes ? bytes : 1;
}
