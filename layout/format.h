/*
 * qcow2 on-disk format: constants, decoded structures, decode and encode.
 *
 * Format knowledge only: no policy and no reporting. Decoders take bytes the
 * caller has read and return plain values; deciding whether a value is
 * acceptable is the checker's job. Facts come from the qcow2 specification
 * (docs/interop/qcow2.txt in QEMU) and QEMU's documented limits.
 */
#ifndef QC_LAYOUT_FORMAT_H
#define QC_LAYOUT_FORMAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bytes.h"

#define QC_MAGIC 0x514649fbu
#define QC_V2_HEADER_LENGTH 72u
#define QC_V3_HEADER_MIN_LENGTH 104u
#define QC_V3_HEADER_LENGTH 112u /* what QEMU writes: with compression_type */
#define QC_MIN_CLUSTER_BITS 9u
#define QC_MAX_CLUSTER_BITS 21u
#define QC_MAX_REFCOUNT_ORDER 6u
#define QC_MAX_BACKING_NAME 1023u
#define QC_MAX_SNAPSHOTS 65536u
#define QC_MAX_SNAPSHOT_EXTRA 1024u
#define QC_MAX_SNAPSHOT_TABLE (64ull << 20)
#define QC_MAX_L1_BYTES (32ull << 20)       /* QEMU limit */
#define QC_MAX_REFTABLE_BYTES (8ull << 20)  /* QEMU limit */
#define QC_MAX_BITMAPS 65535u
#define QC_MAX_BITMAP_DIRECTORY (1024ull * 65535)
#define QC_MAX_BITMAP_NAME 1023u
#define QC_MAX_BITMAP_TABLE_ENTRIES 0x8000000u
#define QC_MAX_BITMAP_TABLE_CLUSTER_BYTES (512ull << 20) /* QEMU limit: entries x cluster size */

/* Incompatible, compatible and autoclear feature bits. */
#define QC_INCOMPAT_DIRTY (1ull << 0)
#define QC_INCOMPAT_CORRUPT (1ull << 1)
#define QC_INCOMPAT_DATA_FILE (1ull << 2)
#define QC_INCOMPAT_COMPRESSION (1ull << 3)
#define QC_INCOMPAT_EXTL2 (1ull << 4)
#define QC_INCOMPAT_KNOWN 0x1full
#define QC_COMPAT_LAZY_REFCOUNTS (1ull << 0)
#define QC_COMPAT_KNOWN 0x1ull
#define QC_AUTOCLEAR_BITMAPS (1ull << 0)
#define QC_AUTOCLEAR_DATA_FILE_RAW (1ull << 1)
#define QC_AUTOCLEAR_KNOWN 0x3ull

/* Header extension magics. */
#define QC_EXT_END 0x00000000u
#define QC_EXT_BACKING_FORMAT 0xe2792acau
#define QC_EXT_FEATURE_TABLE 0x6803f857u
#define QC_EXT_BITMAPS 0x23852875u
#define QC_EXT_CRYPTO 0x0537be77u
#define QC_EXT_DATA_FILE 0x44415441u

/* Table entries. */
#define QC_OFLAG_COPIED (1ull << 63)
#define QC_OFLAG_COMPRESSED (1ull << 62)
#define QC_OFLAG_ZERO (1ull << 0)
#define QC_L1_OFFSET_MASK 0x00fffffffffffe00ull
#define QC_L1_RESERVED_MASK 0x7f000000000001ffull
#define QC_L2_OFFSET_MASK 0x00fffffffffffe00ull
#define QC_L2_RESERVED_MASK 0x3f000000000001feull /* bit 0 judged separately */
#define QC_REFTABLE_OFFSET_MASK 0xfffffffffffffe00ull
#define QC_REFTABLE_RESERVED_MASK 0x1ffull
#define QC_BITMAP_TABLE_OFFSET_MASK 0x00fffffffffffe00ull
#define QC_BITMAP_TABLE_RESERVED_MASK 0xff000000000001feull
#define QC_BITMAP_TABLE_ALL_ONES 1ull

/* The decoded header. Fields a v2 header lacks hold their implied values. */
typedef struct qc_header {
    uint32_t magic;
    uint32_t version;
    uint64_t backing_file_offset;
    uint32_t backing_file_size;
    uint32_t cluster_bits;
    uint64_t size;
    uint32_t crypt_method;
    uint32_t l1_size;
    uint64_t l1_table_offset;
    uint64_t refcount_table_offset;
    uint32_t refcount_table_clusters;
    uint32_t nb_snapshots;
    uint64_t snapshots_offset;
    uint64_t incompatible_features;
    uint64_t compatible_features;
    uint64_t autoclear_features;
    uint32_t refcount_order;
    uint32_t header_length;
    uint8_t compression_type; /* 0 when header_length <= 104 */
    uint8_t padding[7];       /* bytes 105..111 when present */
} qc_header;

/* Decode the fixed header from the first `len` bytes of the image (len may
 * be shorter than the header: returns false then, with `header` holding
 * what could be read). */
bool qc_header_decode(const uint8_t *buf, size_t len, qc_header *header);
/* Encode into buf (at least header_length or 72 bytes for v2; bytes past
 * 112 are left alone). */
void qc_header_encode(const qc_header *header, uint8_t *buf);

/* One header extension, as found in the extension area. */
typedef struct qc_extension {
    uint32_t magic;
    uint32_t length;
    uint64_t offset; /* of the data, in the image */
    const uint8_t *data;
} qc_extension;

/* The feature name table entry. */
typedef struct qc_feature_name {
    uint8_t type; /* 0 incompatible, 1 compatible, 2 autoclear */
    uint8_t bit;
    char name[47]; /* NUL-terminated copy of the 46-byte field */
} qc_feature_name;
#define QC_FEATURE_NAME_ENTRY_SIZE 48u
void qc_feature_name_decode(const uint8_t *p, qc_feature_name *out);

/* The bitmaps extension (24 bytes). */
typedef struct qc_bitmaps_ext {
    uint32_t nb_bitmaps;
    uint32_t reserved;
    uint64_t directory_size;
    uint64_t directory_offset;
} qc_bitmaps_ext;
#define QC_BITMAPS_EXT_SIZE 24u
void qc_bitmaps_ext_decode(const uint8_t *p, qc_bitmaps_ext *out);

/* The full-disk-encryption header pointer (16 bytes). */
#define QC_CRYPTO_EXT_SIZE 16u

/* The LUKS (version 1) header it points to: the fixed part, without the
 * key material the key slots point to. Field offsets are kept for
 * messages. */
#define QC_LUKS_HEADER_SIZE 592u
#define QC_LUKS_KEY_SLOTS 8u
#define QC_LUKS_NAME_SIZE 32u /* cipher name, cipher mode, hash spec */
#define QC_LUKS_SLOT_ENABLED 0x00ac71f3u
#define QC_LUKS_SLOT_DISABLED 0x0000deadu
enum {
    QC_LUKS_OFF_VERSION = 6,
    QC_LUKS_OFF_CIPHER_NAME = 8,
    QC_LUKS_OFF_CIPHER_MODE = 40,
    QC_LUKS_OFF_HASH_SPEC = 72,
    QC_LUKS_OFF_PAYLOAD = 104,
    QC_LUKS_OFF_KEY_BYTES = 108,
    QC_LUKS_OFF_ITERATIONS = 164,
    QC_LUKS_OFF_SLOTS = 208,
    QC_LUKS_SLOT_SIZE = 48,
};
typedef struct qc_luks_key_slot {
    uint32_t active;     /* QC_LUKS_SLOT_ENABLED or _DISABLED */
    uint32_t iterations;
    uint32_t key_offset; /* in 512-byte sectors from the header */
    uint32_t stripes;
} qc_luks_key_slot;
typedef struct qc_luks_header {
    uint8_t magic[6];
    uint16_t version;
    /* The three names as stored (NUL-padded, not necessarily terminated). */
    char cipher_name[QC_LUKS_NAME_SIZE];
    char cipher_mode[QC_LUKS_NAME_SIZE];
    char hash_spec[QC_LUKS_NAME_SIZE];
    uint32_t payload_offset; /* in sectors */
    uint32_t key_bytes;
    uint32_t master_key_iterations;
    qc_luks_key_slot slots[QC_LUKS_KEY_SLOTS];
} qc_luks_header;
/* Decode QC_LUKS_HEADER_SIZE bytes. */
void qc_luks_header_decode(const uint8_t *p, qc_luks_header *out);

/* Geometry derived from a header whose cluster_bits and refcount_order
 * have been validated. */
typedef struct qc_geometry {
    unsigned cluster_bits;
    uint64_t cluster_size;
    bool extended_l2;
    unsigned l2_entry_size; /* 8 or 16 bytes */
    uint64_t l2_entries;    /* entries per L2 table */
    unsigned refcount_bits;
    uint64_t refcount_max;
    uint64_t refblock_entries; /* entries per refcount block */
    unsigned csize_shift;      /* compressed descriptor: sector count position */
    uint64_t csize_mask;
    uint64_t coffset_mask;
} qc_geometry;

void qc_geometry_init(qc_geometry *g, unsigned cluster_bits, unsigned refcount_order,
                      bool extended_l2);

/* Number of L1 entries needed to map `size` guest bytes (may exceed
 * UINT32_MAX for absurd sizes, hence 64 bits). */
uint64_t qc_l1_entries_needed(const qc_geometry *g, uint64_t size);

/* Compressed cluster descriptor, decoded. */
typedef struct qc_compressed {
    uint64_t host_offset; /* byte offset, not aligned */
    uint64_t length;      /* bytes QEMU reads: (sectors+1)*512 - offset%512 */
    bool high_bits;       /* offset bits above 55 set */
} qc_compressed;

void qc_compressed_decode(const qc_geometry *g, uint64_t entry, qc_compressed *out);
uint64_t qc_compressed_encode(const qc_geometry *g, uint64_t host_offset, uint64_t sectors);

/* Refcount block entries, for refcount widths 1 to 64 bits: widths below 8
 * are packed LSB first inside each byte, wider ones are big-endian. */
uint64_t qc_refblock_get(const uint8_t *block, unsigned refcount_bits, uint64_t index);
void qc_refblock_set(uint8_t *block, unsigned refcount_bits, uint64_t index, uint64_t value);

/* Snapshot table entry (variable length). */
#define QC_SNAPSHOT_FIXED_SIZE 40u
typedef struct qc_snapshot_entry {
    uint64_t l1_table_offset;
    uint32_t l1_size;
    uint16_t id_str_size;
    uint16_t name_size;
    uint32_t date_sec;
    uint32_t date_nsec;
    uint64_t vm_clock_nsec;
    uint32_t vm_state_size;
    uint32_t extra_data_size;
    bool has_vm_state_size_large, has_disk_size, has_icount;
    uint64_t vm_state_size_large;
    uint64_t disk_size;
    uint64_t icount;
    /* Extra data past the 24 bytes of known fields: kept as it is (the
     * spec lets later versions add fields there). */
    const uint8_t *unknown_extra;
    uint32_t unknown_extra_size;
    const uint8_t *id;   /* id_str_size bytes, not NUL-terminated */
    const uint8_t *name; /* name_size bytes */
    size_t entry_size;   /* bytes including padding to a multiple of 8 */
} qc_snapshot_entry;

/* Decode one entry at the cursor; false if the buffer ends inside it. The
 * cursor advances past the entry and its padding. */
bool qc_snapshot_decode(qc_cursor *c, qc_snapshot_entry *out);
/* Decode what there is of an entry the buffer ends inside (the last entry
 * of a table cut short by the end of the file): the fixed fields, the
 * known extra fields that are complete in the buffer, and the id and the
 * name when complete in the buffer (otherwise their size is 0 and
 * *id_lost / *name_lost are set; a name of size 0 is never lost).
 * extra_data_size keeps the size the entry declares; unknown extra data is
 * not kept. False if the fixed part itself is incomplete. The cursor ends
 * at the end of the buffer. */
bool qc_snapshot_decode_truncated(qc_cursor *c, qc_snapshot_entry *out, bool *id_lost,
                                  bool *name_lost);
/* Encode; returns the entry size, or 0 if buf (len bytes) is too small.
 * The extra data is the known fields the entry has, and with
 * unknown_extra_size, all 24 bytes of them followed by the unknown ones. */
size_t qc_snapshot_encode(const qc_snapshot_entry *e, uint8_t *buf, size_t len);

/* Bitmap directory entry (variable length). */
#define QC_BITMAP_ENTRY_FIXED_SIZE 24u
#define QC_BITMAP_FLAG_IN_USE 1u
#define QC_BITMAP_FLAG_AUTO 2u
#define QC_BITMAP_FLAG_EXTRA_DATA_COMPATIBLE 4u
typedef struct qc_bitmap_entry {
    uint64_t table_offset;
    uint32_t table_size;
    uint32_t flags;
    uint8_t type;
    uint8_t granularity_bits;
    uint16_t name_size;
    uint32_t extra_data_size;
    const uint8_t *name;
    size_t entry_size;
} qc_bitmap_entry;

bool qc_bitmap_entry_decode(qc_cursor *c, qc_bitmap_entry *out);

#endif
