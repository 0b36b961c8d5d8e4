/*
 * A copy-on-write view of an image: reads come from the base io except
 * where the view was written, which is kept in memory page by page. The
 * repair planner writes into a view so that every stage can re-check the
 * image exactly as the plan so far would leave it, without touching it.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "planner.h"

#define PAGE_BITS 12
#define PAGE_SIZE (1u << PAGE_BITS)

typedef struct page {
    uint64_t index;
    uint8_t *data;
} page;

typedef struct overlay {
    qc_io *base;
    uint64_t base_end; /* the base's bytes from here on were cut off (truncate) */
    page *pages;       /* sorted by index */
    size_t nb_pages, cap_pages;
} overlay;

int qc_read_zero_filled(qc_io *io, uint64_t off, void *buf, size_t len)
{
    uint8_t *p = buf;
    uint64_t avail = off < io->size ? io->size - off : 0;
    size_t n = avail < len ? (size_t)avail : len;
    if (n) {
        int ret = io->read(io->opaque, off, p, n);
        if (ret < 0)
            return ret;
    }
    memset(p + n, 0, len - n);
    return 0;
}

/* The base's bytes as the view has them: zeros past what was cut off. */
static int read_base(const overlay *o, uint64_t off, uint8_t *p, size_t len)
{
    uint64_t keep = off < o->base_end ? o->base_end - off : 0;
    size_t n = keep < len ? (size_t)keep : len;
    memset(p + n, 0, len - n);
    return n ? qc_read_zero_filled(o->base, off, p, n) : 0;
}

/* Index of the page, or of where it would be inserted. */
static size_t find_page(const overlay *o, uint64_t index, bool *found)
{
    size_t lo = qc_lower_bound(o->pages, o->nb_pages, sizeof(page), offsetof(page, index), index);
    *found = lo < o->nb_pages && o->pages[lo].index == index;
    return lo;
}

static int overlay_read(void *opaque, uint64_t off, void *buf, size_t len)
{
    overlay *o = opaque;
    uint8_t *p = buf;
    while (len) {
        uint64_t index = off >> PAGE_BITS;
        size_t in_page = (size_t)(off & (PAGE_SIZE - 1));
        size_t n = PAGE_SIZE - in_page < len ? PAGE_SIZE - in_page : len;
        bool found;
        size_t at = find_page(o, index, &found);
        if (found) {
            memcpy(p, o->pages[at].data + in_page, n);
        } else {
            int ret = read_base(o, off, p, n);
            if (ret < 0)
                return ret;
        }
        p += n;
        off += n;
        len -= n;
    }
    return 0;
}

static int overlay_write(void *opaque, uint64_t off, const void *buf, size_t len)
{
    overlay *o = opaque;
    const uint8_t *p = buf;
    while (len) {
        uint64_t index = off >> PAGE_BITS;
        size_t in_page = (size_t)(off & (PAGE_SIZE - 1));
        size_t n = PAGE_SIZE - in_page < len ? PAGE_SIZE - in_page : len;
        bool found;
        size_t at = find_page(o, index, &found);
        if (!found) {
            if (o->nb_pages == o->cap_pages) {
                size_t cap = o->cap_pages ? o->cap_pages * 2 : 64;
                page *pages = realloc(o->pages, cap * sizeof(page));
                if (!pages)
                    return -ENOMEM;
                o->pages = pages;
                o->cap_pages = cap;
            }
            uint8_t *data = malloc(PAGE_SIZE);
            if (!data)
                return -ENOMEM;
            int ret = read_base(o, index << PAGE_BITS, data, PAGE_SIZE);
            if (ret < 0) {
                free(data);
                return ret;
            }
            memmove(&o->pages[at + 1], &o->pages[at], (o->nb_pages - at) * sizeof(page));
            o->pages[at] = (page){index, data};
            o->nb_pages++;
        }
        memcpy(o->pages[at].data + in_page, p, n);
        p += n;
        off += n;
        len -= n;
    }
    return 0;
}

/* Everything from `size` on reads as zeros until written again (the
 * caller sets the view's size). */
static int overlay_truncate(void *opaque, uint64_t size)
{
    overlay *o = opaque;
    if (size < o->base_end)
        o->base_end = size;
    size_t keep = 0;
    for (size_t i = 0; i < o->nb_pages; i++) {
        page *pg = &o->pages[i];
        uint64_t start = pg->index << PAGE_BITS;
        if (start >= size) {
            free(pg->data);
            continue;
        }
        if (size - start < PAGE_SIZE)
            memset(pg->data + (size - start), 0, PAGE_SIZE - (size_t)(size - start));
        o->pages[keep++] = *pg;
    }
    o->nb_pages = keep;
    return 0;
}

static int overlay_flush(void *opaque)
{
    (void)opaque;
    return 0;
}

static void overlay_close(void *opaque)
{
    overlay *o = opaque;
    for (size_t i = 0; i < o->nb_pages; i++)
        free(o->pages[i].data);
    free(o->pages);
    free(o);
}

int qc_overlay_open(qc_io *view, qc_io *base)
{
    memset(view, 0, sizeof(*view));
    overlay *o = calloc(1, sizeof(*o));
    if (!o)
        return -ENOMEM;
    o->base = base;
    o->base_end = base->size;
    view->read = overlay_read;
    view->write = overlay_write;
    view->flush = overlay_flush;
    view->truncate = overlay_truncate;
    view->close = overlay_close;
    view->opaque = o;
    view->size = base->size;
    return 0;
}
