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
#include "clustermap.h"
#include "extents.h"
#include "memory.h"
#include "ondisk.h"
#include "prefetch.h"
#include "report.h"
#include "result.h"
#include "unfollowed.h"

#define QC_ACTIVE ((uint32_t)-1) /* "snapshot index" of the active L1 */


enum { QC_REFBLOCK_NONE, QC_REFBLOCK_VALID, QC_REFBLOCK_INVALID };

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

typedef struct qc_ctx {
    qc_io *io;
    qc_options options; /* the caller's, read up to its size */
    qc_result *res;
    uint64_t file_size;
    qc_mem mem; /* every allocation of the check is charged here */

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
     * likely meant (`unfollowed_targets`). */
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
    qc_bitset unfollowed_targets;        /* what broken leaf pointers most likely meant */
    qc_bitset bitmap_unfollowed_targets; /* of those, what bitmap table entries meant */
    qc_bitset orphans;        /* compare: clusters reported as refcountOrphan */
    qc_bitset refcount_above_refs; /* compare: on-disk refcount above the references found */
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
    uint64_t shown[QC_PROBLEM_ROWS]; /* per row */
    uint64_t hidden[QC_PROBLEM_ROWS];
    uint64_t hidden_count[QC_PROBLEM_ROWS];
} qc_ctx;

static inline uint64_t qc_l2_table_offset(const qc_ctx *ctx, const qc_l2_table *t)
{
    return ctx->l2_refs[t->first_ref].l2_offset;
}

/* In an array of n elements of elem_size bytes sorted by the uint64_t at
 * key_offset in each, the index of the first whose key is not below `key`
 * (n if none). */
size_t qc_lower_bound(const void *array, size_t n, size_t elem_size, size_t key_offset,
                      uint64_t key);

/* ---- support.c: allocation charged to the check's accountant, reads ---- */
void *qc_alloc(qc_ctx *ctx, uint64_t bytes, const char *what);
void *qc_grow(qc_ctx *ctx, void *ptr, size_t *cap, size_t elem, size_t need, const char *what);
void qc_free(qc_ctx *ctx, void *ptr, uint64_t bytes);
/* Read [off, off+len) into buf; on failure reports readFailed for `what`. */
bool qc_read(qc_ctx *ctx, uint64_t off, void *buf, size_t len, const char *what);
/* The same in two steps, for callers that name what they read only when
 * it fails: 0 or a negative errno, and the report. */
int qc_read_quiet(qc_ctx *ctx, uint64_t off, void *buf, size_t len);

/* ---- io.c ---- */
/* Write all of buf at off (short writes and EINTR retried): 0 or a
 * negative errno. The file backend and the salvage file use it. */
int qc_pwrite_full(int fd, uint64_t off, const void *buf, size_t len);

/* ---- check.c: running the passes ---- */
/* Bind a zeroed ctx to its io, options and result (the fuzz harness of
 * the header pass starts here and runs that pass alone). */
void qc_ctx_begin(qc_ctx *ctx, qc_io *io, const qc_options *opts, qc_result *result);
/* Copy the caller's options (NULL: all defaults), read up to the size it
 * gives: false when that size is too small to be one. */
bool qc_options_load(qc_options *dst, const qc_options *src);
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
