/*
 * QED on-disk format: constants and the header's decoder.
 *
 * Format knowledge only, as format.h for qcow2. Facts from QEMU's
 * docs/interop/qed_spec.txt: every field is little-endian; tables are
 * table_size clusters of 64-bit offsets; an L2 entry of 0 is unallocated
 * and 1 a zero cluster.
 */
#ifndef QC_LAYOUT_QED_H
#define QC_LAYOUT_QED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define QC_QED_MAGIC 0x00444551u /* "QED\0" read little-endian */
#define QC_QED_HEADER_LENGTH 64u /* the fields below, as QEMU reads them */
#define QC_QED_MIN_CLUSTER_SIZE (4u << 10)
#define QC_QED_MAX_CLUSTER_SIZE (64u << 20)
#define QC_QED_MIN_TABLE_SIZE 1u
#define QC_QED_MAX_TABLE_SIZE 16u

/* Feature bits (features), and those QEMU knows. No compat or autoclear
 * bit is defined. */
#define QC_QED_F_BACKING_FILE (1ull << 0)
#define QC_QED_F_NEED_CHECK (1ull << 1)
#define QC_QED_F_BACKING_FORMAT_NO_PROBE (1ull << 2)
#define QC_QED_FEATURES_KNOWN 0x7ull

/* Data cluster entries with a meaning of their own. */
#define QC_QED_UNALLOCATED 0u
#define QC_QED_ZERO_CLUSTER 1u

typedef struct qc_qed_header {
    uint32_t magic, cluster_size, table_size, header_size;
    uint64_t features, compat_features, autoclear_features;
    uint64_t l1_table_offset, image_size;
    uint32_t backing_filename_offset, backing_filename_size;
} qc_qed_header;

/* Decode the header from the first `len` bytes of the file; bytes past
 * `len` read as zeros, as QEMU reads past the end of a file. */
void qc_qed_header_decode(const uint8_t *buf, size_t len, qc_qed_header *h);

/* Entry i of a table read into `table` (64-bit little-endian). */
static inline uint64_t qc_qed_entry(const uint8_t *table, uint64_t i)
{
    const uint8_t *p = table + i * 8;
    uint64_t v = 0;
    for (int k = 7; k >= 0; k--)
        v = v << 8 | p[k];
    return v;
}

/* Set entry i of a table (64-bit little-endian). */
static inline void qc_qed_put_entry(uint8_t *table, uint64_t i, uint64_t v)
{
    for (int k = 0; k < 8; k++, v >>= 8)
        table[i * 8 + (uint64_t)k] = (uint8_t)v;
}

/* Entries per table. */
static inline uint64_t qc_qed_table_entries(const qc_qed_header *h)
{
    return (uint64_t)h->table_size * h->cluster_size / 8;
}

/* The largest image size QEMU accepts for this geometry, computed as QEMU
 * computes it (64-bit arithmetic that wraps for the largest geometries,
 * where QEMU then refuses sizes it could address). */
static inline uint64_t qc_qed_max_image_size(const qc_qed_header *h)
{
    uint64_t entries = qc_qed_table_entries(h);
    return entries * h->cluster_size * entries;
}

#endif
