/*
 * The check context: the one struct that flows through every pass.
 *
 * Pass order and what each leaves here (see docs/passes.md):
 *   header     -> hdr, geo, file_clusters, extension facts, feature flags
 *   snapshots  -> snapshots[] (with a "follow" verdict each)
 *   reftable   -> reftable[] (entry verdicts), refblock extents
 *   bitmaps    -> bitmap directory/table/data extents
 *   mapping    -> L1 and L2 extents, computed refcounts, statistics
 *   compare    -> leaks, corruptions, COPIED verdicts, image end offset
 */
#ifndef QC_CTX_H
#define QC_CTX_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>

#include "../layout/format.h"
#include "qcheck.h"

#define QC_ACTIVE ((uint32_t)-1) /* "snapshot index" of the active L1 */
#define QC_REPORT_CAP 20        /* findings shown per problem; the rest are counted */

enum { QC_REFBLOCK_NONE, QC_REFBLOCK_VALID, QC_REFBLOCK_INVALID };

/* What owns a host cluster, for overlap detection and messages. */
typedef enum qc_owner {
    QC_OWN_HEADER,
    QC_OWN_L1,
    QC_OWN_L2,
    QC_OWN_REFTABLE,
    QC_OWN_REFBLOCK,
    QC_OWN_SNAPSHOT_TABLE,
    QC_OWN_BITMAP_DIRECTORY,
    QC_OWN_BITMAP_TABLE,
    QC_OWN_BITMAP_DATA,
    QC_OWN_CRYPTO_HEADER,
} qc_owner;

/* One metadata structure occupying [start, start + length). */
typedef struct qc_extent {
    uint64_t start;
    uint64_t length;
    uint32_t index;  /* snapshot / bitmap / reftable index, QC_ACTIVE for active */
    uint32_t index2; /* L1 index for L2 tables */
    uint8_t owner;   /* a qc_owner (one byte: there is one extent per L2 table) */
    bool conflicted; /* overlaps a more trusted structure: not followed */
} qc_extent;

/* A snapshot, after validation. */
typedef struct qc_snapshot {
    qc_snapshot_entry entry; /* id/name point into snap_table_buf */
    uint64_t table_offset;   /* where the entry starts in the image */
    bool follow;             /* its L1 table is valid and will be walked */
    /* Its extra data, id or name runs past the end of the file: what
     * could be read is in `entry` (see qc_snapshot_decode_truncated). */
    bool truncated, id_lost;
} qc_snapshot;

/* One reference from an L1 entry to an L2 table. These and the table
 * records below exist once per L2 table, so they are kept small. */
typedef struct qc_l2_ref {
    uint64_t l2_offset;
    uint32_t snapshot;      /* QC_ACTIVE or snapshot index */
    uint32_t l1_index : 31; /* below QC_MAX_L1_BYTES / 8 */
    uint32_t copied : 1;    /* bit 63 of the L1 entry */
} qc_l2_ref;

/* At most this many references are collected (memoryLimit beyond), so the
 * counts below fit 32 bits. */
#define QC_MAX_L2_REFS UINT32_MAX

/* One distinct L2 table, with how many L1 entries reference it: its
 * references are l2_refs[first_ref .. first_ref + refs), the active ones
 * first (its offset is theirs: qc_l2_table_offset). */
typedef struct qc_l2_table {
    uint32_t first_ref;
    uint32_t refs;
    uint32_t active_refs;
} qc_l2_table;

/* Per-host-cluster maps are paged: a page covers QC_PAGE_CLUSTERS clusters
 * and is allocated on its first write, so a sparse file costs a pointer
 * per page where nothing is, and memory follows the metadata actually
 * present rather than the file's length. */
#define QC_PAGE_SHIFT 15
#define QC_PAGE_CLUSTERS (1ull << QC_PAGE_SHIFT)

struct qc_ctx;

/* The computed refcounts, with three flags per cluster. A page's cells
 * start one byte wide (a count up to 31) and are widened to 2, 4 or 8
 * bytes when a count outgrows them, so a typical image costs one byte per
 * cluster and a count above any refcount_max stays visible. The flags
 * live in each cell's top three bits. */
enum {
    QC_CELL_META = 1,       /* some metadata structure owns the cluster */
    QC_CELL_COPIED = 2,     /* an active L2 entry maps it as data with COPIED set */
    QC_CELL_NOT_COPIED = 4, /* ... and with COPIED clear */
};
#define QC_CELL_FLAG_BITS 3

typedef struct qc_refmap {
    struct qc_ctx *ctx; /* memory accounting */
    uint64_t clusters;
    uint64_t nb_pages;
    void **pages;       /* NULL: every cell of the page is 0 */
    uint8_t *width_log; /* per page: cells of 1 << width_log bytes */
} qc_refmap;

/* A set of clusters, paged like the refcount map. */
typedef struct qc_bitset {
    struct qc_ctx *ctx; /* memory accounting; NULL: not accounted */
    uint64_t bits;
    uint64_t nb_pages;
    uint64_t **pages; /* NULL: no bit of the page is set */
} qc_bitset;

/* Host clusters [first, end). */
typedef struct qc_cluster_run {
    uint64_t first, end;
} qc_cluster_run;

#define QC_MAX_PAST_EOF_CLAIMS 65536u

typedef struct qc_ctx {
    qc_io *io;
    const qc_options *opts;
    qc_result *res;
    uint64_t file_size;
    uint64_t mem_used;
    uint64_t mem_limit;

    /* header pass */
    uint8_t *cluster0; /* the first cluster (or the whole file if shorter) */
    size_t cluster0_len;
    qc_header hdr;
    qc_geometry geo;
    uint64_t file_clusters;
    bool has_data_file;
    bool bitmaps_ext_valid;
    qc_bitmaps_ext bitmaps_ext;
    bool crypto_ext_present;
    uint64_t crypto_offset, crypto_length;
    qc_feature_name *feature_names;
    size_t nb_feature_names;
    bool l1_usable;       /* the active L1 table can be read */
    bool reftable_usable; /* the refcount table can be read */
    bool snapshots_usable;

    /* snapshots pass */
    uint8_t *snap_table_buf;
    qc_snapshot *snapshots;
    uint32_t nb_snapshots; /* entries decoded */

    /* reftable pass */
    uint64_t *reftable; /* refcount block offset per entry (masked) */
    uint64_t reftable_entries;
    uint8_t *refblock_state; /* per entry: QC_REFBLOCK_NONE/VALID/INVALID */

    /* metadata extents (every pass adds; sorted before the L2 walk) */
    qc_extent *extents;
    size_t nb_extents, cap_extents;

    /* mapping pass */
    qc_refmap refmap; /* counts, and flags: metadata, active COPIED set / clear */
    qc_l2_ref *l2_refs; /* sorted by L2 offset after collection */
    size_t nb_l2_refs, cap_l2_refs;
    qc_l2_table *l2_tables;
    size_t nb_l2_tables;

    /* Pointers that were reported and not followed. What they may own is
     * not called leaked: any cluster when a whole structure was skipped
     * (`unfollowed`), or just the cluster a broken leaf pointer most
     * likely meant (`suspect`). */
    uint64_t unfollowed;
    /* Highest end of a structure a pointer places past the end of the
     * file: of the refcount table and blocks (which a rebuild replaces),
     * and of anything else. */
    uint64_t past_eof_end_refcounts, past_eof_end;
    /* Every host cluster a pointer places past the end of the file, as
     * runs (sorted and merged by qc_past_eof_claims_finish): a repair
     * never lowers their refcounts, which QEMU counts. Beyond
     * QC_MAX_PAST_EOF_CLAIMS runs, or before the runs are sorted, every
     * cluster below past_eof_claims_end counts as claimed. */
    qc_cluster_run *past_eof_claims;
    size_t nb_past_eof_claims, cap_past_eof_claims;
    uint64_t past_eof_claims_end; /* in clusters */
    bool past_eof_claims_lost, past_eof_claims_sorted;
    /* Of those structures, the ones the end of the file cuts short by less
     * than one cluster, which QEMU accepts (reading zeros past the end):
     * the lowest start of any, and the end of the last cluster any
     * occupies (0: none). A repair completes them with zeros. */
    uint64_t short_past_eof_start, short_past_eof_end;
    uint64_t unfollowed_refblocks; /* of those: refcount blocks behind bad pointers */
    uint64_t unfollowed_bitmaps;   /* of those: bitmap structures */
    qc_bitset suspect;
    qc_bitset bitmap_suspect; /* suspect because of a bitmap table entry */
    qc_bitset orphans;        /* compare: clusters reported as refcountOrphan */
    qc_bitset over;           /* compare: on-disk refcount above the references found */
    bool stop;         /* nothing more can be checked */
    /* Set by a repair before the check runs: an L2 table wins an overlap
     * with a refcount block (which is then not read), so that a rebuild
     * of the refcounts can count what the table maps (see
     * repair/stage_refcounts.c). A check alone lets the block win. */
    bool l2_over_refblock;

    /* Every finding, uncapped, for the repair planner (NULL in a check). */
    void (*fix_sink)(void *payload, qc_problem_id id, uint64_t offset, uint64_t count);
    void *fix_sink_payload;

    unsigned progress; /* permille last passed to on_progress */

    /* findings */
    uint64_t shown[QC_P_COUNT];
    uint64_t hidden[QC_P_COUNT];
    uint64_t hidden_count[QC_P_COUNT];
} qc_ctx;

static inline uint64_t qc_l2_table_offset(const qc_ctx *ctx, const qc_l2_table *t)
{
    return ctx->l2_refs[t->first_ref].l2_offset;
}

/* ---- support.c: reporting ---- */
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
/* Copy image-provided bytes into dst as printable ASCII (escaped). */
void qc_printable(char *dst, size_t dst_len, const uint8_t *src, size_t src_len);
/* In an array of n elements of elem_size bytes sorted by the uint64_t at
 * key_offset in each, the index of the first whose key is not below `key`
 * (n if none). */
size_t qc_lower_bound(const void *array, size_t n, size_t elem_size, size_t key_offset,
                      uint64_t key);

/* ---- support.c: allocation bounded by max_mem, reads ---- */
void *qc_alloc(qc_ctx *ctx, uint64_t bytes, const char *what);
void *qc_grow(qc_ctx *ctx, void *ptr, size_t *cap, size_t elem, size_t need, const char *what);
void qc_free(qc_ctx *ctx, void *ptr, uint64_t bytes);
/* Read [off, off+len) into buf; on failure reports readFailed for `what`. */
bool qc_read(qc_ctx *ctx, uint64_t off, void *buf, size_t len, const char *what);
/* The same in two steps, for callers that name what they read only when
 * it fails: 0 or a negative errno, and the report. */
int qc_read_quiet(qc_ctx *ctx, uint64_t off, void *buf, size_t len);
void qc_report_read_failed(qc_ctx *ctx, const char *what, uint64_t off, size_t len, int err);

/* ---- io.c ---- */
/* Write all of buf at off (short writes and EINTR retried): 0 or a
 * negative errno. The file backend and the salvage file use it. */
int qc_pwrite_full(int fd, uint64_t off, const void *buf, size_t len);

/* ---- prefetch.c: read-ahead of a long ordered sequence of reads ---- */
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

/* ---- clustermap.c ---- */
bool qc_refmap_init(struct qc_ctx *ctx, qc_refmap *map, uint64_t clusters);
void qc_refmap_release(qc_refmap *map);
/* Add n references to `cluster` and set `flags` on it. Returns the
 * cluster's flags after the change, or -1 when a page could not be
 * allocated (memoryLimit was reported, ctx->stop set). */
int qc_refmap_add_slow(qc_refmap *map, uint64_t cluster, uint64_t n, unsigned flags);
/* Set the count of `cluster` to `value`, keeping its flags. */
bool qc_refmap_set(qc_refmap *map, uint64_t cluster, uint64_t value);
/* The first cluster in [cluster, limit) whose page is allocated (any
 * cluster skipped has count 0 and no flags), or `limit` if there is none.
 * The work is bounded by the pages up to `limit`. */
uint64_t qc_refmap_next_page(const qc_refmap *map, uint64_t cluster, uint64_t limit);

static inline uint64_t qc_cell_load(const void *page, unsigned width_log, uint64_t i)
{
    switch (width_log) {
    case 0:
        return ((const uint8_t *)page)[i];
    case 1:
        return ((const uint16_t *)page)[i];
    case 2:
        return ((const uint32_t *)page)[i];
    default:
        return ((const uint64_t *)page)[i];
    }
}

static inline unsigned qc_cell_count_bits(unsigned width_log)
{
    return (8u << width_log) - QC_CELL_FLAG_BITS;
}

/* A cell's count and flags, for cells of 1 << width_log bytes. */
static inline uint64_t qc_cell_count(uint64_t cell, unsigned width_log)
{
    return cell & ((1ull << qc_cell_count_bits(width_log)) - 1);
}

static inline unsigned qc_cell_flags(uint64_t cell, unsigned width_log)
{
    return (unsigned)(cell >> qc_cell_count_bits(width_log));
}

static inline int qc_refmap_add(qc_refmap *map, uint64_t cluster, uint64_t n, unsigned flags)
{
    uint8_t *page = map->pages[cluster >> QC_PAGE_SHIFT];
    if (page && map->width_log[cluster >> QC_PAGE_SHIFT] == 0) {
        uint8_t *cell = page + (cluster & (QC_PAGE_CLUSTERS - 1));
        unsigned v = *cell;
        if (n <= 31u - (v & 31u)) {
            v = (unsigned)(v + n) | flags << 5;
            *cell = (uint8_t)v;
            return (int)(v >> 5);
        }
    }
    return qc_refmap_add_slow(map, cluster, n, flags);
}

static inline uint64_t qc_refmap_cell(const qc_refmap *map, uint64_t cluster, unsigned *width_log)
{
    const void *page = map->pages[cluster >> QC_PAGE_SHIFT];
    if (!page) {
        *width_log = 0;
        return 0;
    }
    *width_log = map->width_log[cluster >> QC_PAGE_SHIFT];
    return qc_cell_load(page, *width_log, cluster & (QC_PAGE_CLUSTERS - 1));
}

static inline uint64_t qc_refmap_get(const qc_refmap *map, uint64_t cluster)
{
    unsigned wl;
    uint64_t cell = qc_refmap_cell(map, cluster, &wl);
    return qc_cell_count(cell, wl);
}

static inline unsigned qc_refmap_flags(const qc_refmap *map, uint64_t cluster)
{
    unsigned wl;
    uint64_t cell = qc_refmap_cell(map, cluster, &wl);
    return qc_cell_flags(cell, wl);
}

/* ctx NULL: the set's memory is not charged to any check (for a set that
 * outlives the checks it is used with). */
bool qc_bitset_init(struct qc_ctx *ctx, qc_bitset *set, uint64_t bits);
void qc_bitset_release(qc_bitset *set);
/* Returns false when a page could not be allocated (memoryLimit was
 * reported, ctx->stop set). */
bool qc_bitset_set(qc_bitset *set, uint64_t i);
static inline bool qc_bitset_test(const qc_bitset *s, uint64_t i)
{
    const uint64_t *page = s->pages[i >> QC_PAGE_SHIFT];
    uint64_t bit = i & (QC_PAGE_CLUSTERS - 1);
    return page && (page[bit / 64] >> (bit % 64)) & 1;
}
/* The first set bit at or after `i`, or set->bits. */
uint64_t qc_bitset_next(const qc_bitset *set, uint64_t i);

/* A data or bitmap-data pointer at `host_offset` was not followed: mark
 * the cluster it most likely meant (its aligned-down cluster) as suspect,
 * or count an unfollowed structure when that is outside the file. */
void qc_unfollowed_leaf(qc_ctx *ctx, uint64_t host_offset);
/* A pointer places [start, start + length) past the end of the file:
 * remember how far, so that a repair appends nothing that pointer would
 * then find (see past_eof_end). */
void qc_claim_past_eof(qc_ctx *ctx, uint64_t start, uint64_t length, bool refcount_structure);
/* Record only that a structure claims [start, start + length) past the end
 * of the file (qc_claimed_past_eof), for one a repair drops before it
 * appends anything (bitmap structures, the encryption header). */
void qc_note_past_eof(qc_ctx *ctx, uint64_t start, uint64_t length);
/* Sort and merge the runs (before the comparison pass). */
void qc_past_eof_claims_finish(qc_ctx *ctx);
/* Whether a structure or pointer the check found claims host cluster
 * `cluster`, which lies past the end of the file. */
bool qc_claimed_past_eof(const qc_ctx *ctx, uint64_t cluster);
/* The same for a bitmap data pointer (bitmap_suspect / unfollowed_bitmaps
 * too: -r all drops broken bitmaps, so what only they own is not kept). */
void qc_unfollowed_bitmap_leaf(qc_ctx *ctx, uint64_t host_offset);
/* Whether the check's orphan verdict on `cluster` must hold in a repair
 * that rebuilds the refcount structures (damaged refcount blocks are then
 * replaced) and/or drops the bitmaps: orphans only they explain are not
 * kept. */
bool qc_orphan_binds(const qc_ctx *ctx, bool rebuilds_refcounts, bool drops_bitmaps,
                     uint64_t cluster);

/* ---- extents.c ---- */
/* Describe an owner for messages: "L2 table (active L1 index 3)". */
void qc_describe_extent(const qc_ctx *ctx, const qc_extent *e, char *buf, size_t len);
/* The same for a distinct L2 table, named after its first reference. */
void qc_describe_l2_table(const qc_ctx *ctx, const qc_l2_table *t, char *buf, size_t len);
/* Register a metadata structure and count `refs` references to each
 * cluster it touches. Returns false, reporting nothing, when it does not lie
 * inside the file (callers validate and report first) or memory ran out;
 * the caller then must not read it. */
bool qc_add_extent(qc_ctx *ctx, qc_owner owner, uint32_t index, uint32_t index2, uint64_t start,
                   uint64_t length, uint64_t refs);
/* Sort extents, report overlaps, flag metadata clusters in the map. Extents that overlap
 * an earlier one are marked so their contents are not followed. */
bool qc_extents_finish(qc_ctx *ctx);
/* The extent owning host cluster `cluster`, or NULL. */
const qc_extent *qc_extent_at(const qc_ctx *ctx, uint64_t cluster);
/* Whether the structure of `owner` at `offset` lost an overlap (it is not
 * followed). */
bool qc_extent_conflicted(const qc_ctx *ctx, qc_owner owner, uint64_t offset);
/* Whether the first cluster of the structure of `owner` at `offset` is
 * also claimed by another structure, whichever won the overlap. */
bool qc_extent_shared(const qc_ctx *ctx, qc_owner owner, uint64_t offset);
/* The kinds of structure claiming host cluster `cluster`, as a mask of
 * 1 << qc_owner. */
uint32_t qc_cluster_owners(const qc_ctx *ctx, uint64_t cluster);
/* Whether two structures claim host cluster `cluster`; `pair`, if not
 * NULL, receives two of them. */
bool qc_cluster_shared(const qc_ctx *ctx, uint64_t cluster, const qc_extent *pair[2]);

/* ---- ondisk.c: the refcounts on disk ---- */
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

/* ---- check.c: running the passes ---- */
/* Bind a zeroed ctx to its io, options and result (the fuzz harness of
 * the header pass starts here and runs that pass alone). */
void qc_ctx_begin(qc_ctx *ctx, qc_io *io, const qc_options *opts, qc_result *result);
/* Run every pass on a zeroed ctx; the caller reads the context and then
 * releases it. */
void qc_ctx_run(qc_ctx *ctx, qc_io *io, const qc_options *opts, qc_result *result);
void qc_ctx_release(qc_ctx *ctx);

/* ---- passes ---- */
void qc_pass_header(qc_ctx *ctx);
void qc_pass_snapshots(qc_ctx *ctx);
void qc_pass_reftable(qc_ctx *ctx);
void qc_pass_bitmaps(qc_ctx *ctx);
void qc_pass_mapping_collect(qc_ctx *ctx);
void qc_pass_mapping_walk(qc_ctx *ctx);
void qc_pass_compare(qc_ctx *ctx);

/* Helpers shared by passes. */
static inline bool qc_cluster_aligned(const qc_ctx *ctx, uint64_t off)
{
    return (off & (ctx->geo.cluster_size - 1)) == 0;
}

/* Whether QEMU accepts the offset of a table without entries: it validates
 * it all the same (aligned, below 2^63), though it reads nothing there. */
static inline bool qc_empty_table_offset_ok(const qc_ctx *ctx, uint64_t off)
{
    return qc_cluster_aligned(ctx, off) && off <= INT64_MAX;
}
/* The wordings of emptyTableOffsetInvalid (its template's variants). */
enum { QC_EMPTY_TABLE_UNALIGNED, QC_EMPTY_TABLE_HIGH, QC_EMPTY_TABLE_SNAPSHOT_L1 };
void qc_describe_snapshot(const qc_ctx *ctx, uint32_t index, char *buf, size_t len);

#endif
