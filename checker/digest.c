/*
 * The guest-content digest (qc_digest, and qc_chain_digest through a
 * backing chain): what the guest of the active image reads, hashed in
 * blocks of QC_DIGEST_BLOCK bytes as blkhash builds its digest:
 * H(H(block 0) || H(block 1) || ... || le64(virtual size)). Zero and
 * unallocated ranges are known from the metadata and hashed without being
 * read; compressed clusters are decompressed (zlib, zstd); extended L2
 * entries are read subcluster by subcluster. A QED layer is read through
 * its two table levels the same way (an L2 entry 0 unallocated, 1 a zero
 * cluster). What a layer leaves unallocated is read from the layer below
 * it (zeros past that layer's end, or below the last one), and guest data
 * clusters from the layer's external data file when it has one.
 *
 * Needs: layers a check found consistent (the caller checks first), or a
 * raw file. Every read is bounded by the file all the same. Produces: the
 * digest. A layer whose guest content lies partly elsewhere (a backing
 * file or external data file not given) or is encrypted is refused.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <xxhash.h>

#include "../layout/bytes.h"
#include "../layout/format.h"
#include "../layout/qed.h"
#include "compressed.h"
#include "ctx.h"
#include "digest.h"

/* ---- the hash: inner digests per block, one outer digest ---- */

#define ZERO_BATCH 512

typedef struct hasher {
    qc_digest_alg alg;
    EVP_MD_CTX *outer_sha, *inner_sha;
    XXH3_state_t *outer_xxh;
    uint8_t zero_digest[QC_DIGEST_MAX]; /* of a whole zero block */
    size_t size;                        /* bytes of a digest */
    /* ZERO_BATCH copies of zero_digest: runs of zero blocks are added a
     * batch per update, not a digest per call. */
    uint8_t zero_batch[ZERO_BATCH * QC_DIGEST_MAX];
} hasher;

static void block_digest(hasher *h, const uint8_t *buf, size_t len, uint8_t *out)
{
    if (h->alg == QC_DIGEST_SHA256) {
        EVP_DigestInit_ex(h->inner_sha, EVP_sha256(), NULL);
        EVP_DigestUpdate(h->inner_sha, buf, len);
        EVP_DigestFinal_ex(h->inner_sha, out, NULL);
    } else {
        XXH128_canonical_t c;
        XXH128_canonicalFromHash(&c, XXH3_128bits(buf, len));
        memcpy(out, c.digest, sizeof(c.digest));
    }
}

static void outer_update(hasher *h, const uint8_t *bytes, size_t len)
{
    if (h->alg == QC_DIGEST_SHA256)
        EVP_DigestUpdate(h->outer_sha, bytes, len);
    else
        XXH3_128bits_update(h->outer_xxh, bytes, len);
}

static void hasher_free(hasher *h)
{
    EVP_MD_CTX_free(h->outer_sha);
    EVP_MD_CTX_free(h->inner_sha);
    XXH3_freeState(h->outer_xxh);
}

static int hasher_init(hasher *h, qc_digest_alg alg)
{
    memset(h, 0, sizeof(*h));
    h->alg = alg;
    if (alg == QC_DIGEST_SHA256) {
        h->size = 32;
        h->outer_sha = EVP_MD_CTX_new();
        h->inner_sha = EVP_MD_CTX_new();
        if (!h->outer_sha || !h->inner_sha ||
            !EVP_DigestInit_ex(h->outer_sha, EVP_sha256(), NULL)) {
            hasher_free(h);
            return -ENOMEM;
        }
    } else if (alg == QC_DIGEST_XXH128) {
        h->size = 16;
        h->outer_xxh = XXH3_createState();
        if (!h->outer_xxh || XXH3_128bits_reset(h->outer_xxh) != XXH_OK) {
            hasher_free(h);
            return -ENOMEM;
        }
    } else {
        return -EINVAL;
    }
    uint8_t *zeros = calloc(1, QC_DIGEST_BLOCK);
    if (!zeros) {
        hasher_free(h);
        return -ENOMEM;
    }
    block_digest(h, zeros, QC_DIGEST_BLOCK, h->zero_digest);
    free(zeros);
    for (size_t i = 0; i < ZERO_BATCH; i++)
        memcpy(h->zero_batch + i * h->size, h->zero_digest, h->size);
    return 0;
}

/* Whether len bytes are all zero. */
static bool all_zero(const uint8_t *buf, size_t len)
{
    return len == 0 || (buf[0] == 0 && memcmp(buf, buf + 1, len - 1) == 0);
}

/* Add one block: its bytes, or (buf NULL) a whole block of zeros. A block
 * read as zeros gets the precomputed digest too. */
static void hash_block(hasher *h, const uint8_t *buf, size_t len)
{
    if (!buf || (len == QC_DIGEST_BLOCK && all_zero(buf, len))) {
        outer_update(h, h->zero_digest, h->size);
        return;
    }
    uint8_t d[QC_DIGEST_MAX];
    block_digest(h, buf, len, d);
    outer_update(h, d, h->size);
}

/* Add n whole blocks of zeros. */
static void hash_zero_blocks(hasher *h, uint64_t n)
{
    while (n) {
        uint64_t k = n < ZERO_BATCH ? n : ZERO_BATCH;
        outer_update(h, h->zero_batch, (size_t)k * h->size);
        n -= k;
    }
}

static void hash_finish(hasher *h, uint64_t total, uint8_t *out)
{
    uint8_t le[8];
    for (int i = 0; i < 8; i++)
        le[i] = (uint8_t)(total >> (8 * i));
    outer_update(h, le, sizeof(le));
    if (h->alg == QC_DIGEST_SHA256) {
        EVP_DigestFinal_ex(h->outer_sha, out, NULL);
    } else {
        XXH128_canonical_t c;
        XXH128_canonicalFromHash(&c, XXH3_128bits_digest(h->outer_xxh));
        memcpy(out, c.digest, sizeof(c.digest));
    }
}

/* ---- reading the guest of a qcow2 or QED image ---- */

typedef enum layer_kind { LAYER_RAW, LAYER_QCOW2, LAYER_QED } layer_kind;

typedef struct guest {
    qc_io *io;              /* the image: header and tables (and data, without a data file) */
    qc_io *data;            /* where guest data clusters are: io or the external data file */
    layer_kind kind;        /* raw: the file's bytes are the guest's */
    uint64_t size;          /* bytes the guest of this layer has */
    qc_header hdr;          /* qcow2 */
    qc_geometry g;          /* qcow2 */
    /* Both formats' two levels: L1 entries (the L2 tables' host offsets,
     * 0 for none), and L2 tables of l2_entries entries mapping clusters
     * of cluster_size bytes. */
    uint64_t cluster_size, l1_entries, l2_entries, l2_bytes;
    uint64_t *l1;
    uint8_t *l2;            /* the L2 table of l2_index, or none (UINT64_MAX) */
    uint64_t l2_index;
    uint8_t *cluster;       /* a decompressed cluster, of host entry `decompressed` */
    uint64_t decompressed;
    uint8_t *compressed;    /* its compressed bytes */
    qc_decompressor *decompressor;
    char *why;              /* the caller's message buffer, or NULL */
    size_t why_len;
} guest;

static int read_io(qc_io *io, uint64_t off, void *buf, uint64_t len)
{
    if (!qc_range_within(off, len, io->size))
        return -EIO;
    return io->read(io->opaque, off, buf, (size_t)len);
}

static int read_host(const guest *gu, uint64_t off, void *buf, uint64_t len)
{
    return read_io(gu->io, off, buf, len);
}

/* Guest data at host offset `off`. An external data file may end before
 * what is mapped into it (dataFileTooShort): QEMU reads zeros there. */
static int read_data(const guest *gu, uint64_t off, uint8_t *buf, uint64_t len)
{
    if (gu->data == gu->io)
        return read_host(gu, off, buf, len);
    uint64_t have = off < gu->data->size ? gu->data->size - off : 0;
    if (have > len)
        have = len;
    memset(buf + have, 0, (size_t)(len - have));
    return have ? read_io(gu->data, off, buf, have) : 0;
}

/* The L2 entry (and, with extended L2, its subcluster bitmap) mapping the
 * guest cluster `vc`; 0 for none. */
static int l2_entry(guest *gu, uint64_t vc, uint64_t *entry, uint64_t *bitmap)
{
    uint64_t l1_index = vc / gu->l2_entries, i = vc % gu->l2_entries;
    *entry = *bitmap = 0;
    if (l1_index >= gu->l1_entries || !gu->l1[l1_index])
        return 0;
    if (gu->l2_index != l1_index) {
        int ret = read_host(gu, gu->l1[l1_index], gu->l2, gu->l2_bytes);
        if (ret < 0)
            return ret;
        gu->l2_index = l1_index;
    }
    if (gu->kind == LAYER_QED) {
        *entry = qc_qed_entry(gu->l2, i);
        return 0;
    }
    const uint8_t *e = gu->l2 + i * gu->g.l2_entry_size;
    *entry = qc_be64(e);
    if (gu->g.extended_l2)
        *bitmap = qc_be64(e + 8);
    return 0;
}

/* The guest cluster `vc` of compressed entry `entry`, decompressed. */
static int compressed_cluster(guest *gu, uint64_t vc, uint64_t entry, const uint8_t **data)
{
    if (gu->decompressed == entry) {
        *data = gu->cluster;
        return 0;
    }
    qc_compressed c;
    qc_compressed_decode(&gu->g, entry, &c);
    uint64_t len = c.length;
    /* The descriptor may reach past the end of the file by less than a
     * sector: QEMU reads what is there. */
    if (c.host_offset < gu->io->size && len > gu->io->size - c.host_offset)
        len = gu->io->size - c.host_offset;
    if (len > 2 * gu->g.cluster_size)
        return -EIO;
    int ret = read_host(gu, c.host_offset, gu->compressed, len);
    const char *reason = NULL;
    if (ret == 0)
        ret = qc_decompress_cluster(gu->decompressor, gu->hdr.compression_type, gu->compressed,
                                    (size_t)len, gu->cluster, gu->g.cluster_size, &reason);
    gu->decompressed = ret == 0 ? entry : UINT64_MAX;
    if (ret == -EIO && gu->why && gu->why_len)
        snprintf(gu->why, gu->why_len,
                 "the compressed cluster at guest offset 0x%llx (host 0x%llx, %llu bytes) does "
                 "not decompress to a whole cluster (%s)",
                 (unsigned long long)(vc * gu->g.cluster_size),
                 (unsigned long long)c.host_offset, (unsigned long long)len,
                 reason ? reason : "unreadable");
    *data = gu->cluster;
    return ret;
}

/* The block's bytes up to `upto` are about to be followed by data: while
 * everything before was known to be zero, nothing was written there. */
static void mark_data(uint8_t *block, uint64_t upto, bool *zero)
{
    if (*zero)
        memset(block, 0, upto);
    *zero = false;
}

/* Zeros at [at, at + n) of the block, written only once the block holds
 * data: a block of zeros known from the metadata is never filled. */
static void zeros(uint8_t *block, uint64_t at, uint64_t n, bool zero)
{
    if (!zero)
        memset(block + at, 0, n);
}

/* The layers of the guest being read, top first. */
typedef struct layers {
    guest *layer;
    size_t n;
} layers;

static int read_range(const layers *ls, size_t k, uint64_t off, uint8_t *block, uint64_t pos,
                      uint64_t len, bool *zero);

/* What layer k leaves unallocated: the layer below's bytes, or zeros
 * below the last one. */
static int read_below(const layers *ls, size_t k, uint64_t off, uint8_t *block, uint64_t pos,
                      uint64_t len, bool *zero)
{
    if (k + 1 < ls->n)
        return read_range(ls, k + 1, off, block, pos, len, zero);
    zeros(block, pos, len, *zero);
    return 0;
}

/* Whether an entry with host offset 0 maps guest data: only in an
 * external data file (where 0 is an offset like any other), which QEMU
 * tells by OFLAG_COPIED, as every cluster there has refcount 1. */
static bool entry_allocated(const guest *gu, uint64_t entry)
{
    return (entry & QC_L2_OFFSET_MASK) || (gu->data != gu->io && (entry & QC_OFLAG_COPIED));
}

/* Fill block[pos, pos + len) with the guest bytes [off, off + len) of
 * layer k, which lie in one of its guest clusters. *zero stays true while
 * everything so far is known to be zero from the metadata. */
static int read_in_cluster(const layers *ls, size_t k, uint64_t off, uint8_t *block,
                           uint64_t pos, uint64_t len, bool *zero)
{
    guest *gu = &ls->layer[k];
    uint64_t cs = gu->cluster_size, in = off & (cs - 1);
    uint64_t entry, bitmap;
    int ret = l2_entry(gu, off / cs, &entry, &bitmap);
    if (ret < 0)
        return ret;
    if (gu->kind == LAYER_QED) {
        if (entry == QC_QED_UNALLOCATED)
            return read_below(ls, k, off, block, pos, len, zero);
        if (entry == QC_QED_ZERO_CLUSTER) {
            zeros(block, pos, len, *zero);
            return 0;
        }
        uint64_t host;
        if (!qc_add_ok(entry, in, &host))
            return -EIO;
        mark_data(block, pos, zero);
        return read_host(gu, host, block + pos, len);
    }
    if (entry & QC_OFLAG_COMPRESSED) {
        const uint8_t *data;
        if ((ret = compressed_cluster(gu, off / cs, entry, &data)) < 0)
            return ret;
        mark_data(block, pos, zero);
        memcpy(block + pos, data + in, len);
        return 0;
    }
    uint64_t host = entry & QC_L2_OFFSET_MASK;
    bool allocated = entry_allocated(gu, entry);
    if (!gu->g.extended_l2) {
        if (entry & QC_OFLAG_ZERO) {
            zeros(block, pos, len, *zero);
            return 0;
        }
        if (!allocated)
            return read_below(ls, k, off, block, pos, len, zero);
        mark_data(block, pos, zero);
        return read_data(gu, host + in, block + pos, len);
    }
    /* Subclusters: zero, allocated at their place in the cluster, or
     * unallocated (the layer below's). */
    uint64_t sub = cs / 32;
    for (uint64_t done = 0; done < len;) {
        uint64_t at = in + done, s = at / sub, n = sub - at % sub;
        if (n > len - done)
            n = len - done;
        bool sub_allocated = allocated && ((bitmap >> s) & 1);
        if ((bitmap >> (32 + s)) & 1) {
            zeros(block, pos + done, n, *zero);
        } else if (!sub_allocated) {
            ret = read_below(ls, k, off + done, block, pos + done, n, zero);
        } else {
            mark_data(block, pos + done, zero);
            ret = read_data(gu, host + at, block + pos + done, n);
        }
        if (ret < 0)
            return ret;
        done += n;
    }
    return 0;
}

/* Fill block[pos, pos + len) with the guest bytes [off, off + len) of
 * layer k: zeros past its end, as QEMU reads a shorter backing file. */
static int read_range(const layers *ls, size_t k, uint64_t off, uint8_t *block, uint64_t pos,
                      uint64_t len, bool *zero)
{
    guest *gu = &ls->layer[k];
    uint64_t have = off < gu->size ? gu->size - off : 0;
    if (have > len)
        have = len;
    if (have < len)
        zeros(block, pos + have, len - have, *zero);
    if (have && gu->kind == LAYER_RAW) {
        mark_data(block, pos, zero);
        return read_io(gu->io, off, block + pos, have);
    }
    for (uint64_t done = 0; done < have;) {
        uint64_t at = off + done, cs = gu->cluster_size;
        uint64_t n = cs - (at & (cs - 1));
        if (n > have - done)
            n = have - done;
        int ret = read_in_cluster(ls, k, at, block, pos + done, n, zero);
        if (ret < 0)
            return ret;
        done += n;
    }
    return 0;
}

static void guest_free(guest *gu)
{
    free(gu->l1);
    free(gu->l2);
    free(gu->cluster);
    free(gu->compressed);
    qc_decompressor_free(gu->decompressor);
}

__attribute__((format(printf, 3, 4))) static int refuse(char *why, size_t len, const char *fmt,
                                                        ...)
{
    if (why && len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, len, fmt, ap);
        va_end(ap);
    }
    return -ENOTSUP;
}

#define REFUSE_BACKING                                                                         \
    "the image has a backing file, whose content the guest also reads: take the digest "     \
    "through the chain (--chain)"
#define REFUSE_DATA_FILE "a data file was given for an image without one"

/* The L1 table: l1_entries entries at `offset` in the file, as the L2
 * tables' host offsets (0: none), and room for one L2 table. */
static int read_l1(guest *gu, uint64_t offset)
{
    uint64_t l1_bytes = gu->l1_entries * 8;
    if (!qc_range_within(offset, l1_bytes, gu->io->size))
        return refuse(gu->why, gu->why_len, "the L1 table lies outside the file");
    gu->l1 = malloc(l1_bytes ? l1_bytes : 1);
    gu->l2 = malloc(gu->l2_bytes);
    if (!gu->l1 || !gu->l2)
        return -ENOMEM;
    uint8_t *raw = (uint8_t *)gu->l1;
    int ret = l1_bytes ? read_host(gu, offset, raw, l1_bytes) : 0;
    for (uint64_t i = 0; ret == 0 && i < gu->l1_entries; i++)
        gu->l1[i] = gu->kind == LAYER_QED ? qc_qed_entry(raw, i)
                                          : qc_be64(raw + 8 * i) & QC_L1_OFFSET_MASK;
    return ret;
}

/* A QED layer from its first n bytes: tables of table_size clusters, the
 * guest image_size bytes; it has no data file. */
static int qed_open(guest *gu, const uint8_t *head, size_t n, const qc_digest_layer *spec,
                    bool below)
{
    qc_qed_header h;
    qc_qed_header_decode(head, n, &h);
    if (h.cluster_size < QC_QED_MIN_CLUSTER_SIZE || h.cluster_size > QC_QED_MAX_CLUSTER_SIZE ||
        (h.cluster_size & (h.cluster_size - 1)) || h.table_size < QC_QED_MIN_TABLE_SIZE ||
        h.table_size > QC_QED_MAX_TABLE_SIZE)
        return refuse(gu->why, gu->why_len, "the header cannot be read");
    gu->kind = LAYER_QED;
    gu->size = h.image_size;
    if ((h.features & QC_QED_F_BACKING_FILE) && !below)
        return refuse(gu->why, gu->why_len, REFUSE_BACKING);
    if (spec->data)
        return refuse(gu->why, gu->why_len, REFUSE_DATA_FILE);
    gu->cluster_size = h.cluster_size;
    gu->l2_bytes = (uint64_t)h.table_size * h.cluster_size;
    gu->l1_entries = gu->l2_entries = qc_qed_table_entries(&h);
    return read_l1(gu, h.l1_table_offset);
}

/* A qcow2 layer from its first n bytes. */
static int qcow2_open(guest *gu, const uint8_t *head, size_t n, const qc_digest_layer *spec,
                      bool below)
{
    char *why = gu->why;
    size_t why_len = gu->why_len;
    if (!qc_header_decode(head, n, &gu->hdr) || gu->hdr.cluster_bits < 9 ||
        gu->hdr.cluster_bits > 21 || gu->hdr.refcount_order > 6)
        return refuse(why, why_len, "the header cannot be read");
    gu->kind = LAYER_QCOW2;
    gu->size = gu->hdr.size & ~(uint64_t)511; /* QEMU's guest ends at a whole sector */
    if (gu->hdr.backing_file_offset && !below)
        return refuse(why, why_len, REFUSE_BACKING);
    bool data_file = gu->hdr.incompatible_features & QC_INCOMPAT_DATA_FILE;
    if (data_file && !spec->data)
        return refuse(why, why_len, "the guest data are in an external data file: name it "
                                    "(--data-file, or --chain to open the one the image names)");
    if (!data_file && spec->data)
        return refuse(why, why_len, REFUSE_DATA_FILE);
    if (gu->hdr.crypt_method)
        return refuse(why, why_len, "the image is encrypted");
    qc_geometry_init(&gu->g, gu->hdr.cluster_bits, gu->hdr.refcount_order,
                     gu->hdr.incompatible_features & QC_INCOMPAT_EXTL2);
    gu->cluster_size = gu->g.cluster_size;
    gu->l1_entries = gu->hdr.l1_size;
    gu->l2_entries = gu->g.l2_entries;
    gu->l2_bytes = gu->g.cluster_size;
    gu->cluster = malloc(gu->g.cluster_size);
    gu->compressed = malloc(2 * gu->g.cluster_size);
    gu->decompressor = qc_decompressor_new();
    if (!gu->cluster || !gu->compressed || !gu->decompressor)
        return -ENOMEM;
    return read_l1(gu, gu->hdr.l1_table_offset);
}

/* Open layer `spec` for reading; `below`: a layer under it is given. */
static int guest_open(guest *gu, const qc_digest_layer *spec, bool below, char *why,
                      size_t why_len)
{
    qc_io *io = spec->io;
    memset(gu, 0, sizeof(*gu));
    gu->io = io;
    gu->data = spec->data ? spec->data : io;
    gu->why = why;
    gu->why_len = why_len;
    gu->l2_index = gu->decompressed = UINT64_MAX;
    if (spec->raw) {
        gu->kind = LAYER_RAW;
        gu->size = io->size;
        return 0;
    }
    uint8_t head[QC_V3_HEADER_LENGTH] = {0};
    size_t n = io->size < sizeof(head) ? (size_t)io->size : sizeof(head);
    if (io->read(io->opaque, 0, head, n) < 0)
        return refuse(why, why_len, "the header cannot be read");
    const char *format = qc_guess_format(head, n);
    if (format && strcmp(format, "qed") == 0)
        return qed_open(gu, head, n, spec, below);
    return qcow2_open(gu, head, n, spec, below);
}

/* How many bytes from `off` layer k (and the layers below it) read as
 * zeros by their L1 tables (or a raw layer's holes) alone: an L1 entry
 * without an L2 table leaves its whole range to the layer below, and past
 * a lower layer's end everything is zero. 0 when that is not known without
 * reading. */
static uint64_t zero_span(const layers *ls, size_t k, uint64_t off)
{
    const guest *gu = &ls->layer[k];
    if (off >= gu->size)
        return k ? UINT64_MAX : 0;
    uint64_t data;
    if (gu->kind == LAYER_RAW) /* a hole of the file reads as zeros */
        return qc_io_next_data(gu->io, off, &data) == 0 && data > off ? data - off : 0;
    uint64_t range = gu->cluster_size * gu->l2_entries, l1_index = off / range;
    if (l1_index < gu->l1_entries && gu->l1[l1_index])
        return 0;
    uint64_t here = range - off % range;
    uint64_t below = k + 1 < ls->n ? zero_span(ls, k + 1, off) : UINT64_MAX;
    return here < below ? here : below;
}

/* ---- the digest ---- */

const char *qc_digest_name(qc_digest_alg alg)
{
    return alg == QC_DIGEST_SHA256 ? "sha256" : alg == QC_DIGEST_XXH128 ? "xxh128" : NULL;
}

int qc_digest_layers(const qc_digest_layer *specs, size_t n, qc_digest_alg alg, uint8_t *digest,
                     size_t *digest_len, char *why, size_t why_len)
{
    if (why && why_len)
        why[0] = '\0';
    if (n == 0)
        return -EINVAL;
    hasher h;
    int ret = hasher_init(&h, alg);
    if (ret < 0)
        return ret;
    layers ls = {calloc(n, sizeof(guest)), 0};
    uint8_t *block = malloc(QC_DIGEST_BLOCK);
    if (!block || !ls.layer)
        ret = -ENOMEM;
    for (; ret == 0 && ls.n < n; ls.n++)
        ret = guest_open(&ls.layer[ls.n], &specs[ls.n], ls.n + 1 < n, why, why_len);
    uint64_t size = ret == 0 ? ls.layer[0].size : 0;
    for (uint64_t off = 0; ret == 0 && off < size;) {
        uint64_t len = size - off < QC_DIGEST_BLOCK ? size - off : QC_DIGEST_BLOCK;
        uint64_t span = zero_span(&ls, 0, off);
        uint64_t blocks = (span < size - off ? span : size - off) / QC_DIGEST_BLOCK;
        if (blocks) {
            hash_zero_blocks(&h, blocks);
            off += blocks * QC_DIGEST_BLOCK;
            continue;
        }
        bool zero = true;
        ret = read_range(&ls, 0, off, block, 0, len, &zero);
        /* A short block known to be zero still has to be hashed. */
        if (ret == 0 && zero && len < QC_DIGEST_BLOCK)
            memset(block, 0, (size_t)len);
        if (ret == 0)
            hash_block(&h, zero && len == QC_DIGEST_BLOCK ? NULL : block, (size_t)len);
        off += len;
    }
    if (ret == 0) {
        hash_finish(&h, size, digest);
        *digest_len = h.size;
    }
    for (size_t i = 0; ls.layer && i < ls.n; i++)
        guest_free(&ls.layer[i]);
    free(ls.layer);
    free(block);
    hasher_free(&h);
    return ret;
}

int qc_digest(qc_io *io, qc_digest_alg alg, bool raw, uint8_t *digest, size_t *digest_len,
              char *why, size_t why_len)
{
    qc_digest_layer layer = {.io = io, .raw = raw};
    return qc_digest_layers(&layer, 1, alg, digest, digest_len, why, why_len);
}
