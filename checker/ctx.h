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
#include "../layout/qed.h"
#include "check_view.h"
#include "clustermap.h"
#include "extents.h"
#include "memory.h"
#include "ondisk.h"
#include "prefetch.h"
#include "report.h"
#include "result.h"
#include "unfollowed.h"

/* Bytes [start, end) of the file. */
typedef struct qc_byte_range {
    uint64_t start, end;
} qc_byte_range;

/* What the QED pass leaves for a repair (repair/stage_qed.c), collected
 * only when a repair runs the check (fix_sink set). */
typedef enum qc_qed_item_kind {
    QC_QED_BAD_L1_ENTRY, /* an L1 entry QEMU's check clears */
    QC_QED_BAD_L2_ENTRY, /* an L2 entry QEMU's check clears */
    QC_QED_SECOND_CLAIM, /* an entry pointing where something else claimed first */
} qc_qed_item_kind;

typedef struct qc_qed_item {
    qc_qed_item_kind kind;
    uint64_t entry;  /* host offset of the L1 or L2 entry */
    uint64_t target; /* what the entry holds */
    /* The guest bytes the entry maps (an L1 entry: all its L2 table's
     * reach, clipped to the image size; 0 bytes past it). */
    uint64_t guest, guest_length;
    bool table;      /* the entry points to an L2 table (an L1 entry) */
    /* SECOND_CLAIM: what claimed the (first shared) cluster first: the L1
     * table or an L2 table (first_l2: which one, by the offset of its L1
     * entry), or guest data (first_guest: its guest offset). */
    bool first_l1, first_l2;
    uint64_t first_l1_entry, first_guest;
} qc_qed_item;

typedef struct qc_qed_view {
    bool walked; /* the header was accepted and every table read: the rest is whole */
    qc_qed_header h;
    uint64_t cluster_size, entries, file_end, nclusters;
    /* The first cluster of the run of leaked clusters that ends at
     * file_end (nclusters when the last cluster is in use). */
    uint64_t trailing_leak;
    qc_qed_item *items;
    size_t nb_items, cap_items;
    qc_cluster_run *leaks; /* the leaked runs, in order */
    size_t nb_leaks, cap_leaks;
    /* Per cluster up to nclusters, its class in the host map (QC_MAP_HEADER,
     * L1, L2, DATA or LEAKED, from what referenced it first): only when a
     * map is asked for and every table was read, else NULL. */
    uint8_t *map_class;
} qc_qed_view;

/* pass_qed.c: whether host cluster c is leaked in a repair's check. */
bool qc_qed_leaked(const qc_qed_view *q, uint64_t c);

typedef struct qc_ctx {
    union {
        struct {
            QC_CHECK_VIEW_FIELDS
        };
        qc_check_view view; /* the same fields, as a repair reads them */
    };

    qc_io *io;
    qc_options options; /* the caller's, read up to its size */
    qc_result *res;
    qc_mem mem; /* every allocation of the check is charged here */

    /* header pass */
    uint8_t *cluster0; /* the first cluster (or the whole file if shorter) */
    size_t cluster0_len;
    bool bitmaps_ext_valid;
    qc_bitmaps_ext bitmaps_ext;
    bool crypto_ext_present;
    uint64_t crypto_offset, crypto_length;
    qc_feature_name *feature_names;
    size_t nb_feature_names;
    bool l1_usable;       /* the active L1 table can be read */
    bool snapshots_usable;

    /* snapshots pass */
    uint8_t *snap_table_buf;

    qc_qed_view qed; /* a QED image's check */

    bool stop;         /* nothing more can be checked */
    /* Set by a repair before the check runs: an L2 table wins an overlap
     * with a refcount block (which is then not read), so that a rebuild
     * of the refcounts can count what the table maps (see
     * repair/stage_refcounts.c). A check alone lets the block win. */
    bool l2_over_refblock;
    /* Set by the tests before the check runs: how many threads decompress
     * in the deep pass (0: one per core; 1: the check's own). */
    unsigned deep_threads;

    /* Every finding, uncapped, for the repair planner (NULL in a check). */
    void (*fix_sink)(void *payload, qc_problem_id id, uint64_t offset, uint64_t count);
    void *fix_sink_payload;

    unsigned progress; /* permille last passed to on_progress */

    /* The host map (map.c), when options.map_cells asks for one: what the
     * passes mark as they go (paged like the refcount map, so only the
     * pages with a mark cost memory), and the corruptions reported before
     * the sets exist (byte ranges, applied once the cluster size is known). */
    qc_bitset map_compressed, map_corrupt, map_overlap;
    uint64_t map_clusters;     /* the host clusters the map classifies */
    unsigned map_cluster_bits; /* log2 of their size */
    qc_byte_range map_early[8];
    unsigned nb_map_early;
    bool compared; /* every pass up to the comparison ran: the map can be built */

    /* findings */
    uint64_t shown[QC_PROBLEM_ROWS]; /* per row */
    uint64_t hidden[QC_PROBLEM_ROWS];
    uint64_t hidden_count[QC_PROBLEM_ROWS];
} qc_ctx;

/* ---- support.c ---- */
/* In an array of n elements of elem_size bytes sorted by the uint64_t at
 * key_offset in each, the index of the first whose key is not below `key`
 * (n if none). */
size_t qc_lower_bound(const void *array, size_t n, size_t elem_size, size_t key_offset,
                      uint64_t key);

/* Allocation charged to the check's accountant (ctx->mem), and reads. */
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
/* Where the next data of a file io at or after `off` starts (its size when
 * only a hole follows), as SEEK_DATA says; -ENOTSUP for an io that is not
 * one of the library's files, or a file system without SEEK_DATA (then
 * every byte is data). A hole reads as zeros. */
int qc_io_next_data(qc_io *io, uint64_t off, uint64_t *data);

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

/* ---- map.c: the host map ---- */
/* Create the map's mark sets for `clusters` host clusters of 2^cluster_bits
 * bytes, once the cluster size is known (does nothing unless the options
 * ask for a map). */
bool qc_map_begin(qc_ctx *ctx, uint64_t clusters, unsigned cluster_bits);
void qc_map_release(qc_ctx *ctx);
/* Mark host clusters [first, first + count) (clipped to the file) in one
 * of the map's sets (nothing when the map is not wanted: the set is empty). */
void qc_map_mark(qc_bitset *set, uint64_t first, uint64_t count);
/* A finding of problem p was reported: a corruption marks what it names. */
void qc_map_note_finding(qc_ctx *ctx, const qc_problem *p, uint64_t offset,
                         const qc_finding_ctx *fc);
/* Classify every host cluster into ctx->res's map (after the comparison,
 * or a QED image's walk). */
void qc_map_build(qc_ctx *ctx);

/* ---- passes ---- */
void qc_pass_header(qc_ctx *ctx);
/* What a file looks like from its first bytes: NULL for qcow2, else "raw",
 * "qed", "qcow (version 1)", ... (qc_result_other_format); they must hold
 * the first QC_V3_HEADER_LENGTH bytes, or the whole file if shorter. */
const char *qc_guess_format(const uint8_t *b, size_t len);
/* pass_qed.c: the whole check of a QED image, from its first bytes. */
void qc_pass_qed(qc_ctx *ctx, const uint8_t *raw, size_t raw_len);
void qc_pass_snapshots(qc_ctx *ctx);
void qc_pass_reftable(qc_ctx *ctx);
void qc_pass_bitmaps(qc_ctx *ctx);
void qc_pass_mapping_collect(qc_ctx *ctx);
void qc_pass_mapping_walk(qc_ctx *ctx);
void qc_pass_compare(qc_ctx *ctx);
void qc_pass_deep(qc_ctx *ctx);

/* The wordings of emptyTableOffsetInvalid (its template's variants). */
enum { QC_EMPTY_TABLE_UNALIGNED, QC_EMPTY_TABLE_HIGH, QC_EMPTY_TABLE_SNAPSHOT_L1 };

#endif
