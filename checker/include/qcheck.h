/*
 * qcheck public interface: check and repair qcow2 images.
 *
 * The library never prints, never exits and keeps no global state: every
 * call works on the context or the result it is given, findings are passed
 * to a callback, and errors are returned as negative errno values.
 */
#ifndef QCHECK_H
#define QCHECK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif
/* The library is built with hidden symbols; what this header declares is
 * its exported interface. */
#pragma GCC visibility push(default)

#include "qcheck_version.h"

/* ---- I/O: where the image bytes come from ---------------------------- */

typedef struct qc_io {
    /* Read exactly len bytes at off; returns 0 or a negative errno.
     * Reading past the end of the image is -EIO (callers bound their reads
     * by `size` first). A check may call it from a second thread it
     * starts (read-ahead), but never from two threads at once. */
    int (*read)(void *opaque, uint64_t off, void *buf, size_t len);
    /* Write exactly len bytes at off, extending the image if needed (the
     * caller then updates `size`). NULL in a read-only io. */
    int (*write)(void *opaque, uint64_t off, const void *buf, size_t len);
    /* Make every completed write durable. NULL in a read-only io. */
    int (*flush)(void *opaque);
    /* Set the image length (used by rollback only). */
    int (*truncate)(void *opaque, uint64_t size);
    void (*close)(void *opaque);
    void *opaque;
    uint64_t size; /* real length of the image in bytes */
} qc_io;

/* Open a file read-only (O_RDONLY; nothing is ever written), taking no
 * locks (undo logs). */
int qc_io_open_file(qc_io *io, const char *path);

/* QEMU's block permissions, numbered as its image locks number them: a
 * process holding permission bit n has a lock on byte 100 + n of the file,
 * and one on byte 200 + n while it refuses to share that permission
 * (block/file-posix.c). */
enum {
    QC_PERM_CONSISTENT_READ = 1u << 0,
    QC_PERM_WRITE = 1u << 1,
    QC_PERM_WRITE_UNCHANGED = 1u << 2,
    QC_PERM_RESIZE = 1u << 3,
    QC_PERM_GRAPH_MOD = 1u << 4, /* QEMU before 6.0 */
};

typedef enum qc_lock_mode {
    QC_LOCK_CHECK,  /* as `qemu-img check`: hold consistent read, share
                     * neither write nor resize */
    QC_LOCK_SHARED, /* as `qemu-img check -U`: hold consistent read,
                     * share everything */
    QC_LOCK_NONE,   /* as file.locking=off: take no lock, only look */
    QC_LOCK_REPAIR, /* read-write; hold read, write and resize, share
                     * nothing, and refuse any other user */
} qc_lock_mode;

/* Other processes' locks, as seen once ours were taken. */
typedef struct qc_lock_state {
    unsigned held;     /* QC_PERM_* other processes hold */
    unsigned unshared; /* QC_PERM_* other processes refuse to share */
    int failed_byte;   /* a byte we could not lock ourselves, or 0 */
    int failed_errno;  /* and why (EAGAIN: someone holds a write lock on it) */
} qc_lock_state;

/* Open an image with QEMU's image locks (read-only except for
 * QC_LOCK_REPAIR). *others (may be NULL) receives the other processes'
 * locks. A check is not refused for them: whether they conflict depends
 * on the format (QEMU's raw driver shares write), which is the caller's
 * decision. A repair is refused with -EBUSY when any other process holds
 * or refuses any permission (a VM, qemu-img, qemu-io, a guest using the
 * image as a backing file), and keeps QEMU from opening the image until it
 * is closed. -EBUSY with others->failed_byte set: one of our own locks
 * could not be taken. -EINVAL: not a regular file or block device (a
 * directory opened read-only, a pipe; open() itself may fail otherwise,
 * e.g. -EISDIR for a directory opened read-write). */
int qc_io_open_image(qc_io *io, const char *path, qc_lock_mode mode, qc_lock_state *others);
/* Wrap a caller-owned buffer read-only; it must outlive the io. */
void qc_io_open_memory(qc_io *io, const void *buf, size_t len);
/* A writable memory image: *buf (malloc'd, *len bytes) is taken over and
 * grown with realloc as writes extend it; *buf and *len follow the image
 * until qc_io_close(). */
int qc_io_open_memory_rw(qc_io *io, uint8_t **buf, size_t *len);
void qc_io_close(qc_io *io);

/* ---- The problem table ----------------------------------------------- */

typedef enum qc_severity {
    QC_SEV_ERROR,      /* the check could not be completed (check-errors) */
    QC_SEV_CORRUPTION, /* counted in "corruptions" */
    QC_SEV_LEAK,       /* counted in "leaks" */
    QC_SEV_WARNING,    /* non-conforming but not counted */
    QC_SEV_INFO,
} qc_severity;

/* What a repair does about a problem: the fix column of the problem table.
 * Each action has one handler in the repair planner (repair/planner.c),
 * which runs only when the check found a problem naming its action. */
typedef enum qc_fix {
    QC_FIX_NONE = 0,
    QC_FIX_LOWER_REFCOUNT = 1,     /* patched in place */
    QC_FIX_RAISE_REFCOUNT = 2,     /* patched in place (rebuilt where no block covers it) */
    QC_FIX_REBUILD_REFCOUNTS = 3,  /* a new refcount table and blocks */
    QC_FIX_FIX_COPIED = 4,         /* OFLAG_COPIED made to agree with the refcount */
    QC_FIX_CLEAR_ENTRY = 5,        /* an L2 entry mapping guest data onto metadata cleared */
    QC_FIX_CLEAR_FEATURE_BIT = 6,
    QC_FIX_TRIM_SNAPSHOT_TABLE = 7, /* entries or the table that do not fit discarded */
    QC_FIX_DROP_BITMAPS = 8,
    QC_FIX_CLEAR_BITS = 9,         /* bits QEMU ignores in an entry cleared */
    QC_FIX_ZERO_TABLE_OFFSET = 10, /* the offset of a table without entries set to 0 */
    QC_FIX_REWRITE_SNAPSHOT_TABLE = 11, /* the table rewritten as QEMU writes it */
    QC_FIX_REPOINT_OR_CLEAR = 12,  /* a broken L1/L2 pointer re-pointed, or else cleared */
    QC_FIX_CLEAR_DIRTY_BIT = 13,   /* once the refcounts are right */
    QC_FIX_CLEAR_CORRUPT_BIT = 14, /* once the image is clean */
    QC_FIX_QED_CLEAR_ENTRY = 15,   /* a QED entry QEMU's check clears set to 0 */
    QC_FIX_QED_SEPARATE = 16,      /* a QED cluster two entries share: data copied, or a data
                                      mapping onto a table cleared */
    QC_FIX_QED_TRUNCATE_LEAKS = 17, /* leaked QED clusters that end the file cut off
                                       (qc_options.truncate_leaks) */
} qc_fix;

/* A problem's stable code (the row's number, never reused): values do
 * not move when rows are added. */
typedef enum qc_problem_id {
    QC_P_NONE = 0, /* no problem (no row has code 0) */
#define QC_PROBLEM(name, code, ...) QC_P_##name = code,
#include "qcheck_problems.def"
#undef QC_PROBLEM
} qc_problem_id;

/* A row of the problem table. The library owns it; fields are only ever
 * added at the end. */
typedef struct qc_problem {
    qc_problem_id code;
    const char *id;
    qc_severity severity;
    qc_fix fix;
    const char *summary;
    const char *message; /* the template every finding's message is made from */
} qc_problem;

/* The row with this code, or NULL. */
const qc_problem *qc_problem_get(qc_problem_id code);
/* The rows in code order: qc_problem_at(i) for i below qc_problem_count(). */
size_t qc_problem_count(void);
const qc_problem *qc_problem_at(size_t i);
const qc_problem *qc_problem_by_id(const char *id);
const char *qc_severity_name(qc_severity sev);
const char *qc_fix_name(qc_fix fix);

/* ---- Findings --------------------------------------------------------- */

#define QC_NO_OFFSET UINT64_MAX

/* The facts of one finding, typed, as its message names them. A field is
 * set only when its bit is in `present`; its name is the placeholder the
 * problem's message template uses for it (`%{l2_index}`) and the key the
 * JSON output gives it. */
enum {
    QC_CTX_HOST_OFFSET = 1u << 0,  /* a host offset the finding is about (a pointer's target) */
    QC_CTX_GUEST_OFFSET = 1u << 1, /* a guest offset */
    QC_CTX_CLUSTER = 1u << 2,      /* the first host cluster (index) of a range */
    QC_CTX_CLUSTERS = 1u << 3,     /* how many clusters the range has */
    QC_CTX_L1_INDEX = 1u << 4,     /* index of the L1 entry */
    QC_CTX_L2_INDEX = 1u << 5,     /* index of the L2 entry in its table */
    QC_CTX_SNAPSHOT = 1u << 6,     /* index of the snapshot in the snapshot table */
    QC_CTX_REFCOUNT = 1u << 7,     /* the refcount on disk */
    QC_CTX_REFERENCES = 1u << 8,   /* the references found (the computed refcount) */
    QC_CTX_ENTRY = 1u << 9,        /* the raw value of a table entry or header field */
    QC_CTX_INDEX = 1u << 10,       /* index of an entry in another table or list */
    QC_CTX_VALUE = 1u << 11,       /* a header or entry field, decoded */
    QC_CTX_SIZE = 1u << 12,        /* a length in bytes */
    QC_CTX_EXPECTED = 1u << 13,    /* what the value should be, or its bound */
    QC_CTX_FILE_SIZE = 1u << 14,   /* the length of the image file */
    QC_CTX_NAME = 1u << 15,        /* a name (printable ASCII: image bytes are escaped) */
};

typedef struct qc_finding_ctx {
    uint32_t present; /* QC_CTX_* bits */
    /* Which wording of the template applies (its `%{variant=a|b}` parts);
     * 0 by default, never printed. */
    uint32_t variant;
    uint64_t host_offset, guest_offset;
    uint64_t cluster, clusters;
    uint64_t l1_index, l2_index, snapshot;
    uint64_t refcount, references;
    uint64_t entry, index, value, size, expected, file_size;
    const char *name;
} qc_finding_ctx;

/* The numeric fields of a context, in a fixed order: for i = 0, 1, ... the
 * name of field i (bit 1u << i), whether `c` has it and its value; NULL
 * past the last one. The name is QC_CTX_NAME's, `c->name`. */
const char *qc_finding_field(const qc_finding_ctx *c, unsigned i, bool *present, uint64_t *value);

/* Render the message of `problem` for the facts in `c` into buf (always
 * NUL-terminated, cut short when it does not fit). Returns the length the
 * whole message has. */
size_t qc_finding_format(const qc_problem *problem, const qc_finding_ctx *c, char *buf,
                         size_t len);

typedef struct qc_finding {
    const qc_problem *problem;
    const char *object;  /* e.g. "L2 table (L1 index 3)", "snapshot 1 \"s1\"" */
    const char *message; /* made from the problem's template, printable ASCII */
    uint64_t offset;     /* host byte offset, or QC_NO_OFFSET */
    uint64_t count;      /* how many clusters or entries this finding covers */
    const qc_finding_ctx *context; /* the facts the message was made from */
} qc_finding;

typedef void (*qc_finding_cb)(const qc_finding *finding, void *payload);

/* ---- Checking ---------------------------------------------------------- */

/* How far the check has come, in thousandths; called each time it grows
 * (at most 1000 times per check). */
typedef void (*qc_progress_cb)(unsigned permille, void *payload);

/* Options of a check. Initialise with QC_OPTIONS_INIT: it sets `size`,
 * which tells the library which fields the caller was built with. Fields
 * are only ever added at the end; the library takes those past `size` as
 * zero. */
typedef struct qc_options {
    size_t size;                /* sizeof(qc_options) as the caller was built */
    uint64_t max_mem;           /* bytes the check may allocate; 0 = default */
    qc_finding_cb on_finding;   /* may be NULL */
    qc_progress_cb on_progress; /* may be NULL; a repair reports its first check */
    bool deep;                  /* also read what the metadata points at (--deep) */
    void *payload;              /* passed to both callbacks */
    /* At most this many cells in the host map of qc_check's result
     * (qc_result_map); 0: no map. */
    size_t map_cells;
    /* A repair of a QED image may truncate the leaked clusters that end
     * the file (QED has no refcounts: nothing else reclaims them). */
    bool truncate_leaks;
} qc_options;

#define QC_OPTIONS_INIT {.size = sizeof(qc_options)}

#define QC_DEFAULT_MAX_MEM (8ULL << 30)

typedef struct qc_header_info {
    unsigned version;
    unsigned cluster_bits;
    uint64_t virtual_size;
    unsigned refcount_bits;
    uint64_t incompatible_features;
    uint64_t compatible_features;
    uint64_t autoclear_features;
    uint64_t unknown_incompatible; /* bits qcheck does not know */
    uint64_t unknown_compatible;
    uint64_t unknown_autoclear;
    bool dirty, corrupt, external_data_file, extended_l2;
    unsigned compression_type;
    unsigned nb_snapshots;
    bool has_backing_file;
    bool has_bitmaps;
    /* The names QEMU opens, as C strings up to their first NUL (bytes of
     * the image: not necessarily printable), or NULL for none: the backing
     * file, its recorded format (only when it fits QEMU's buffer) and the
     * external data file. They live as long as the result. */
    const char *backing_file;
    const char *backing_format;
    const char *data_file;
} qc_header_info;

/* The outcome of a check: opaque, read through the accessors below, so
 * that it can grow with the problem table. */
typedef struct qc_result qc_result;

qc_result *qc_result_new(void);
void qc_result_free(qc_result *result);

/* qemu-img check's ImageCheck counters, same meaning, and qcheck's own. */
typedef enum qc_counter {
    QC_COUNT_CHECK_ERRORS,
    QC_COUNT_CORRUPTIONS,
    QC_COUNT_LEAKS,
    QC_COUNT_IMAGE_END_OFFSET,
    QC_COUNT_TOTAL_CLUSTERS,
    QC_COUNT_ALLOCATED_CLUSTERS,
    QC_COUNT_FRAGMENTED_CLUSTERS,
    QC_COUNT_COMPRESSED_CLUSTERS,
    QC_COUNT_WARNINGS, /* warning findings */
    QC_COUNT_FINDINGS, /* every finding */
} qc_counter;

/* A counter (0 for one this library does not know). */
uint64_t qc_result_count(const qc_result *result, qc_counter counter);
/* What the findings of one problem counted (clusters or entries). */
uint64_t qc_result_problem_count(const qc_result *result, qc_problem_id problem);
/* Not a qcow2 image at all: what it looks like ("raw", "qed", "qcow
 * (version 1)", "vmdk", ...). NULL for a qcow2 image. */
const char *qc_result_other_format(const qc_result *result);
/* The header as decoded, or NULL when it did not decode far enough. The
 * result owns it; fields are only ever added at the end. */
const qc_header_info *qc_result_header(const qc_result *result);
/* The QEMU driver that would open the file when probing it: "qcow2" for a
 * qcow2 image (whatever its state), "qed", "vmdk", "qcow", ... for the
 * other formats the check recognised, and "raw" for anything else. */
const char *qc_result_driver(const qc_result *result);

/* Check the image behind io. Returns 0 when the check ran (whatever it
 * found: see result) or a negative errno for a failure of the caller's
 * making (bad arguments). Out-of-memory and read failures during the check
 * are findings (check errors), not return values. */
int qc_check(qc_io *io, const qc_options *opts, qc_result *result);

/* Exit status with qemu-img check's meaning: 0 clean, 1 check not
 * completed, 2 corruptions, 3 leaks only, 63 not a checkable format. */
int qc_exit_status(const qc_result *result);

/* ---- The host map: what each cluster of the file holds -------------- */

/* The class of a host cluster of the image file. Clusters past the end of
 * the file are not in the map. A QED image has no refcounts: its header
 * is its header_size clusters, a cluster after them that nothing
 * references is leaked (qedClusterLeaked), and only the partial cluster
 * that may end the file is free. */
typedef enum qc_map_class {
    QC_MAP_FREE,           /* no structure, no reference, refcount 0 */
    QC_MAP_HEADER,         /* cluster 0 (the header and its extensions), the encryption header */
    QC_MAP_L1,             /* the active L1 table */
    QC_MAP_L2,             /* an L2 table the active L1 table references */
    QC_MAP_REFCOUNT_TABLE,
    QC_MAP_REFCOUNT_BLOCK,
    QC_MAP_SNAPSHOT_TABLE,
    QC_MAP_SNAPSHOT_L1,    /* a snapshot's L1 table, or an L2 table only snapshots reference */
    QC_MAP_BITMAP,         /* a bitmap directory, bitmap table or bitmap data cluster */
    QC_MAP_DATA,           /* guest data an L2 entry maps (active or snapshot) */
    QC_MAP_COMPRESSED,     /* holds compressed guest data (all or part of it) */
    /* Problems, in increasing severity; a cluster with one of them has
     * that class whatever else it holds (the most severe one). */
    QC_MAP_LEAKED,         /* refcount on disk above the references found (refcountLeak);
                            * QED: referenced by nothing */
    QC_MAP_ORPHANED,       /* the same, where a pointer the check reported and did
                            * not follow may own it (refcountOrphan) */
    QC_MAP_CORRUPT,        /* named by a corruption finding: its cluster range, or
                            * the cluster of its offset (where the bad entry lies) */
    QC_MAP_OVERLAP,        /* claimed by two structures, or guest data on metadata */
    QC_MAP_CLASSES
} qc_map_class;

#define QC_MAP_FIRST_PROBLEM QC_MAP_LEAKED

/* One cell of the map: `clusters_per_cell` consecutive host clusters (the
 * last cell may have fewer). */
typedef struct qc_map_cell {
    uint8_t dominant;  /* the class most of its clusters have (ties: the lower class) */
    uint8_t problem;   /* the most severe problem class any of its clusters has,
                        * or QC_MAP_FREE for none: one leaked cluster among a
                        * thousand free ones still shows */
    uint16_t reserved;
    uint32_t classes;  /* 1u << class for every class its clusters have */
} qc_map_cell;

/* The host map of a check made with opts->map_cells (NULL and *cells 0 when
 * none was asked for, or the check stopped before the comparison of the
 * refcounts: not a qcow2 image, an unusable header, memory ran out). Cell
 * i covers host clusters [i * clusters_per_cell, (i + 1) *
 * clusters_per_cell); clusters_per_cell is the smallest that fits the
 * file's clusters into map_cells cells. The output pointers may be NULL.
 * The result owns the map. */
const qc_map_cell *qc_result_map(const qc_result *result, size_t *cells,
                                 uint64_t *clusters_per_cell, uint64_t *clusters,
                                 uint64_t *cluster_size);
/* How many host clusters of the file have this class (0 without a map). */
uint64_t qc_result_map_clusters(const qc_result *result, qc_map_class cls);
/* The class's stable name ("free", "header", "l1", "l2", "refcount-table",
 * "refcount-block", "snapshot-table", "snapshot-l1", "bitmap", "data",
 * "compressed", "leaked", "orphaned", "corrupt", "overlap"), or NULL. */
const char *qc_map_class_name(qc_map_class cls);

/* ---- The guest-content digest ----------------------------------------- */

typedef enum qc_digest_alg {
    QC_DIGEST_SHA256 = 1, /* SHA-256 inner and outer digests (blkhash's construction) */
    QC_DIGEST_XXH128 = 2, /* the same construction with XXH3-128, faster */
} qc_digest_alg;

#define QC_DIGEST_BLOCK 65536 /* bytes of guest content per inner digest */
#define QC_DIGEST_MAX 32      /* bytes of the longest digest */

/* The digest of what the guest reads from the image behind io (its active
 * image; with `raw`, the file's own bytes): H(H(block 0) || H(block 1) ||
 * ... || le64(virtual size)), blocks of QC_DIGEST_BLOCK bytes, the last
 * one shorter when the size is not a multiple; a qcow2 virtual size counts
 * whole 512-byte sectors, as QEMU reads it. Zero and unallocated ranges
 * are hashed from the metadata without being read; compressed clusters are
 * decompressed. Check the image first: the metadata is trusted as far as
 * it stays inside the file. Returns 0 with the digest in `digest` (at
 * least QC_DIGEST_MAX bytes) and its length in *digest_len, or a negative
 * errno: -ENOTSUP for an image whose guest content is not all in this
 * file or is encrypted (`why` says which), -EIO for a read that failed or
 * a compressed cluster that does not decompress, -ENOMEM. */
int qc_digest(qc_io *io, qc_digest_alg alg, bool raw, uint8_t *digest, size_t *digest_len,
              char *why, size_t why_len);
/* "sha256", "xxh128", or NULL. */
const char *qc_digest_name(qc_digest_alg alg);

/* ---- Backing chains and external data files ----------------------------- */

/* A check never opens a file an image names. These calls do, on the
 * caller's explicit request: the backing files (resolved as QEMU resolves
 * them, relative to the folder of the image naming them; json: and
 * protocol names are never followed) and the external data files
 * (resolved as QEMU 7.2 does: a relative name against the working
 * directory). Every layer gets the full check; what is wrong between
 * layers is reported with codes 9xx on the layer whose header names the
 * file. */

#define QC_CHAIN_DEFAULT_DEPTH 256 /* layers below the top image */

typedef struct qc_chain qc_chain;

typedef struct qc_chain_layer {
    unsigned depth;          /* 0: the top image; 1: its backing file; ... */
    const char *path;        /* the file, as opened */
    const char *format;      /* the driver it is read with: "qcow2", "qed" or "raw" */
    bool probed;             /* the format was guessed from the content (--allow-probe) */
    const qc_result *result; /* its check (a raw layer has nothing to check: no findings) */
    const char *data_file;   /* the external data file opened for it, or NULL */
} qc_chain_layer;

typedef enum qc_chain_event {
    QC_CHAIN_LAYER_BEGIN, /* the layer's check comes next (findings follow) */
    QC_CHAIN_LAYER_END,   /* its check and the findings about what it names are done */
} qc_chain_event;

typedef struct qc_chain_options {
    size_t size;           /* sizeof(qc_chain_options) as the caller was built (QC_CHAIN_OPTIONS_INIT) */
    bool backing;          /* open and check the backing files */
    bool data_files;       /* open the external data files the images name */
    const char *data_file; /* the top image's external data file, instead of the name in it */
    bool allow_probe;      /* a backing file without a recorded format is probed */
    unsigned max_depth;    /* 0: QC_CHAIN_DEFAULT_DEPTH */
    qc_lock_mode lock;     /* how the other files are opened: CHECK, SHARED or NONE */
    void (*on_layer)(qc_chain_event event, const qc_chain_layer *layer, void *payload);
    void *payload;
} qc_chain_options;

#define QC_CHAIN_OPTIONS_INIT {.size = sizeof(qc_chain_options)}

/* Check the image behind `top` (its path as given: the other names are
 * resolved from it) and, as `opts` allow, the files it names, layer by
 * layer. Findings go to check->on_finding, each between the BEGIN and END
 * events of its layer. Returns 0 with *out set whatever was found (the
 * top image may not even be qcow2: see its layer's result), or a negative
 * errno for bad arguments or no memory. `top` must outlive the chain. */
int qc_chain_check(qc_io *top, const char *top_path, const qc_options *check,
                   const qc_chain_options *opts, qc_chain **out);
size_t qc_chain_layers(const qc_chain *chain);
const qc_chain_layer *qc_chain_layer_at(const qc_chain *chain, size_t i);
/* The counter summed over the layers. */
uint64_t qc_chain_count(const qc_chain *chain, qc_counter counter);
/* qc_exit_status of the sums: the worst over the chain (a raw layer below
 * the top counts as clean). */
int qc_chain_exit_status(const qc_chain *chain);
/* qc_digest of what the guest of the top image reads through every layer
 * (and data file) the chain opened. Refused (-ENOTSUP, with `why`) when
 * a layer's content lies in a file the chain could not open. */
int qc_chain_digest(const qc_chain *chain, qc_digest_alg alg, uint8_t *digest,
                    size_t *digest_len, char *why, size_t why_len);
void qc_chain_free(qc_chain *chain);

/* ---- Repairing ---------------------------------------------------------- */

typedef enum qc_repair_mode {
    QC_REPAIR_LEAKS = 1, /* lower refcounts of leaked clusters only */
    QC_REPAIR_ALL = 2,   /* everything qcheck can repair safely */
} qc_repair_mode;

/* One step of a repair, in the order it must happen. */
typedef struct qc_repair_step {
    enum { QC_STEP_WRITE, QC_STEP_FLUSH, QC_STEP_TRUNCATE } kind;
    uint64_t offset;     /* WRITE: where; TRUNCATE: the file's new size */
    uint64_t length;     /* WRITE: how many bytes; TRUNCATE: how many go */
    const uint8_t *data; /* WRITE: the new bytes (NULL otherwise) */
    const char *what;    /* the structure written, e.g. "refcount block 0" */
    const char *why;     /* e.g. "host cluster 5: refcount 2 -> 1 (leaked)" */
} qc_repair_step;

typedef struct qc_repair_plan qc_repair_plan;

/* Plan a repair of the image behind io without changing it: every stage
 * runs against a copy-on-write view in memory and records its writes.
 * `before` receives the check of the image as it is (its findings go to
 * opts->on_finding), `after` the check of the image as the plan leaves it.
 * Returns 0 with *plan set (possibly with no steps), or a negative errno:
 * -EPERM when the image must not be repaired (unknown incompatible
 * features, a check that could not complete; see qc_repair_plan_refusal
 * of the returned plan, which is set in that case too), -ENOMEM. */
int qc_repair_plan_build(qc_io *io, const qc_options *opts, qc_repair_mode mode,
                         qc_result *before, qc_result *after, qc_repair_plan **plan);
/* The steps, in order: qc_repair_plan_step(plan, i) for i below
 * qc_repair_plan_steps(plan). */
size_t qc_repair_plan_steps(const qc_repair_plan *plan);
const qc_repair_step *qc_repair_plan_step(const qc_repair_plan *plan, size_t i);
/* Decisions worth telling the user that are not writes: clusters kept
 * because an unparsed structure may own them, guest ranges dropped,
 * problems left alone and why. */
size_t qc_repair_plan_notes(const qc_repair_plan *plan, const char *const **notes);
/* What a repair takes away from the image, or gives back: one item per
 * host range it unlinks (a pointer to it is dropped: an L1 or L2 entry
 * cleared, a snapshot entry dropped, a structure replaced), frees (its
 * refcount goes to 0) or recovers (a broken pointer re-pointed to it).
 * A dropped pointer whose own cluster is freed is one item with both
 * bits. Everything a repair unlinks or frees is listed, so it can be
 * saved first. */
enum {
    QC_UNLINK_DROPPED = 1,   /* a pointer to the range was dropped */
    QC_UNLINK_FREED = 2,     /* the range's refcount was lowered to 0 */
    QC_UNLINK_RECOVERED = 4, /* a broken pointer was re-pointed to the range */
};
#define QC_UNLINKED_ACTIVE UINT32_MAX       /* the active image */
#define QC_UNLINKED_NONE (UINT32_MAX - 1)   /* no guest view (metadata, a leak) */

typedef struct qc_unlinked {
    unsigned kind;         /* QC_UNLINK_* bits */
    qc_problem_id problem; /* the finding that caused it */
    /* The host range: cluster aligned; QC_NO_OFFSET and 0 when nothing of
     * it lies in the file (a pointer past the end, an unreadable entry). */
    uint64_t host_offset, length;
    /* Whose guest data it held: QC_UNLINKED_ACTIVE, a snapshot's index in
     * the snapshot table as it was before the repair, or
     * QC_UNLINKED_NONE; and which guest bytes, or QC_NO_OFFSET and 0. */
    uint32_t snapshot;
    uint64_t guest_offset, guest_length;
    /* The pointer that was dropped or re-pointed (an L1 or L2 entry, a
     * snapshot table entry, a header field), or QC_NO_OFFSET; what it
     * held (possibly unaligned or past the end of the file) and, when
     * recovered, what it holds now (QC_NO_OFFSET otherwise). */
    uint64_t entry_offset, target, new_target;
} qc_unlinked;

size_t qc_repair_plan_unlinked(const qc_repair_plan *plan);
const qc_unlinked *qc_repair_plan_unlinked_item(const qc_repair_plan *plan, size_t i);
/* Why the image must not be repaired, or NULL. */
const char *qc_repair_plan_refusal(const qc_repair_plan *plan);
/* Clusters counted as leaked / corruptions before minus after, as
 * qemu-img reports "leaks-fixed" and "corruptions-fixed". */
void qc_repair_plan_fixed(const qc_repair_plan *plan, uint64_t *leaks_fixed,
                          uint64_t *corruptions_fixed);
void qc_repair_plan_free(qc_repair_plan *plan);

/* Carry out a plan on the image it was built from: if `undo` is given,
 * first write the undo log there (the original bytes of every region the
 * plan changes, each record checksummed) and flush it; then every step in
 * order, flushing where the plan says. Returns 0 or the first negative
 * errno; a failed repair leaves an image qcheck can check and repair
 * again (see docs/repair.md). */
int qc_repair_apply(const qc_repair_plan *plan, qc_io *image, qc_io *undo);

/* ---- Salvage: what a repair unlinks, saved before it writes ------------ */

/* The files of a salvage directory (docs/repair.md, "Salvage"). */
#define QC_SALVAGE_DATA "clusters.bin"
#define QC_SALVAGE_INDEX "index.tsv"
#define QC_SALVAGE_README "README.txt"

typedef struct qc_salvage_info {
    uint64_t ranges;    /* rows of the index: dropped or freed items inside the file */
    uint64_t bytes;     /* length of clusters.bin (each host byte saved once) */
    uint64_t needed;    /* room the files take (whole blocks), 0 when not known */
    uint64_t available; /* room statvfs reports there, UINT64_MAX when not known */
} qc_salvage_info;

/* Save every host range the plan drops or frees (qc_unlinked items of kind
 * DROPPED or FREED, clipped to the file) into the directory `dir`, as the
 * image behind `image` holds them now, before the plan is applied:
 * clusters.bin, index.tsv (with the xxh64 of each range) and README.txt,
 * each fsync'ed, then the directory. `dir` must not exist (it is created,
 * mode 0700; its parent must exist) or be an empty directory, and have room
 * for all of it (statvfs). With `dry_run` nothing is read or created: the
 * figures and the same refusals only. Returns 0, or a negative errno with
 * nothing of the salvage left behind: -ENOTEMPTY, -ENOTDIR, -ENOSPC, -ESTALE
 * (the image changed since planning), or the error of a failed mkdir,
 * read, write or fsync. `why` (may be NULL) receives a message naming
 * `dir`, the bytes needed and the bytes available. */
int qc_repair_salvage(const qc_repair_plan *plan, qc_io *image, const char *dir, bool dry_run,
                      qc_salvage_info *info, char *why, size_t why_len);

/* ---- The repair transaction ------------------------------------------ */

/* How far a repair came (qc_repair_outcome_of). */
typedef enum qc_repair_outcome {
    QC_REPAIR_REFUSED,  /* the image must not be repaired: qc_repair_why; nothing written */
    QC_REPAIR_UNPLANNED, /* planning failed (qc_repair_error): nothing written */
    QC_REPAIR_PLANNED,  /* a dry run, or nothing to write: nothing written */
    QC_REPAIR_STOPPED,  /* the undo log or the salvage could not be written, or
                         * the caller stopped it: qc_repair_why; nothing
                         * written to the image */
    QC_REPAIR_FAILED,   /* a write failed part way (qc_repair_error): the image
                         * is safe to check and repair again, or to roll back */
    QC_REPAIR_DONE,     /* applied and checked again: qc_repair_after */
} qc_repair_outcome;

/* The points at which a repair tells its caller how far it is. */
typedef enum qc_repair_event {
    /* The plan is made, the undo log written and the salvage saved; the
     * first write to the image comes next. A non-zero return stops the
     * repair with nothing written (QC_REPAIR_STOPPED). */
    QC_REPAIR_EVENT_WRITING,
    /* Every step is written; the check of the repaired image comes next
     * (its findings go to the check options' on_finding). */
    QC_REPAIR_EVENT_APPLIED,
} qc_repair_event;

typedef struct qc_repair qc_repair;

typedef struct qc_repair_options {
    size_t size; /* sizeof(qc_repair_options) as the caller was built (QC_REPAIR_OPTIONS_INIT) */
    qc_repair_mode mode;
    bool dry_run; /* plan, and size the salvage, only */
    /* The undo log: a new file created at this path (never an existing
     * one, removed again if the repair stops before writing), or an io the
     * caller opened, or neither. */
    const char *undo_path;
    qc_io *undo;
    /* Save what the plan unlinks or frees here first (qc_repair_salvage). */
    const char *salvage_dir;
    int (*on_event)(qc_repair_event event, const qc_repair *repair, void *payload);
    void *payload;
} qc_repair_options;

#define QC_REPAIR_OPTIONS_INIT {.size = sizeof(qc_repair_options)}

/* Repair the image behind io as one transaction: plan it (the first check's
 * findings go to check->on_finding), refuse what must not be repaired;
 * unless it is a dry run or there is nothing to write: write the undo log,
 * save the salvage, apply the plan and check the image again (io must be
 * writable, and open with QC_LOCK_REPAIR for a file). Returns 0 with *out
 * set, whatever the outcome (see qc_repair_outcome_of), or a negative
 * errno for bad arguments or no memory for the transaction itself. */
int qc_repair_run(qc_io *io, const qc_options *check, const qc_repair_options *opts,
                  qc_repair **out);
qc_repair_outcome qc_repair_outcome_of(const qc_repair *repair);
/* The plan (NULL when planning failed). */
const qc_repair_plan *qc_repair_get_plan(const qc_repair *repair);
/* The check before, the check the plan predicts, and the check of the
 * repaired image (NULL unless QC_REPAIR_DONE). */
const qc_result *qc_repair_before(const qc_repair *repair);
const qc_result *qc_repair_predicted(const qc_repair *repair);
const qc_result *qc_repair_after(const qc_repair *repair);
/* The negative errno that ended it (0 for REFUSED, PLANNED and DONE). */
int qc_repair_error(const qc_repair *repair);
/* Why it was refused or stopped, or NULL. */
const char *qc_repair_why(const qc_repair *repair);
/* The salvage: its figures and 0, or the negative errno that refused it
 * (a dry run reports the refusal without stopping). */
int qc_repair_salvage_status(const qc_repair *repair, const qc_salvage_info **info);
void qc_repair_free(qc_repair *repair);

/* Restore an image from an undo log written by qc_repair_apply. The log is
 * verified completely, and so is the image (every region must hold either
 * the bytes the repair wrote or the ones it saved) before anything is
 * written. Returns 0, -EINVAL for a log that does not verify, -ESTALE for
 * a log that does not belong to this image, or another negative errno;
 * `why` (may be NULL) receives a message. */
int qc_rollback(qc_io *image, qc_io *undo, char *why, size_t why_len);

#pragma GCC visibility pop
#ifdef __cplusplus
}
#endif
#endif
