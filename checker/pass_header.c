/*
 * The header and its extensions (docs/passes.md §3.1; codes 1xx and 2xx).
 *
 * Checks: magic and version (and what other format the file looks like),
 * every fixed field against its valid range, feature bits (unknown ones
 * named from the image's feature table), the header extension area
 * (bounds, padding, duplicates, the end marker's length, each known
 * extension), the LUKS header the encryption extension points to (layout
 * and algorithm names, as QEMU parses them on every open), the backing file
 * name's placement, and where the L1 table, refcount table and snapshot
 * table lie relative to the file and to QEMU's limits (empty tables
 * included).
 * Needs: the io and the real file size.
 * Produces: ctx->hdr, ctx->geo, ctx->file_clusters, cluster 0 in memory,
 * extension facts, the *_usable flags, the header extent, result->header
 * (with the backing file, backing format and data file names QEMU would
 * open, for --chain). Sets ctx->stop when nothing behind the header can be checked.
 */
#include <stdio.h>
#include <string.h>

#include "ctx.h"

/* What a file looks like from its first bytes: NULL for qcow2 (the qcow
 * magic with any version but 1, which is qcow's). */
const char *qc_guess_format(const uint8_t *b, size_t len)
{
    static const struct {
        size_t off;
        const char *sig;
        size_t sig_len;
        const char *name;
    } sigs[] = {
        {0, "QED\0", 4, "qed"},
        {0, "KDMV", 4, "vmdk"},
        {0, "# Disk DescriptorFile", 21, "vmdk (descriptor)"},
        {0, "vhdxfile", 8, "vhdx"},
        {0, "conectix", 8, "vpc (vhd)"},
        {0, "WithoutFreeSpace", 16, "parallels"},
        {0, "WithouFreSpacExt", 16, "parallels"},
        {0, "LUKS\xba\xbe", 6, "luks"},
        {0, "cloop", 5, "cloop"},
        {0, "\x7f\x10\xda\xbe", 4, "vdi"}, /* at 0x40, checked below */
    };
    if (len >= 8 && qc_be32(b) == QC_MAGIC && qc_be32(b + 4) != 1)
        return NULL;
    if (len == 0)
        return "empty file";
    if (len >= 8 && qc_be32(b) == QC_MAGIC && qc_be32(b + 4) == 1)
        return "qcow (version 1)";
    for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++) {
        size_t off = sigs[i].off;
        if (strcmp(sigs[i].name, "vdi") == 0)
            off = 0x40;
        if (len >= off + sigs[i].sig_len && memcmp(b + off, sigs[i].sig, sigs[i].sig_len) == 0)
            return sigs[i].name;
    }
    return "raw";
}

static const char *ext_name(uint32_t magic)
{
    switch (magic) {
    case QC_EXT_BACKING_FORMAT:
        return "backing format";
    case QC_EXT_FEATURE_TABLE:
        return "feature name table";
    case QC_EXT_BITMAPS:
        return "bitmaps";
    case QC_EXT_CRYPTO:
        return "full disk encryption header pointer";
    case QC_EXT_DATA_FILE:
        return "external data file name";
    }
    return NULL;
}

/* "name1, name2, bit 40" for the set bits of `bits` of feature `type`. */
static void feature_list(const qc_ctx *ctx, unsigned type, uint64_t bits, char *buf, size_t len)
{
    size_t o = 0;
    buf[0] = '\0';
    for (unsigned bit = 0; bit < 64 && o < len; bit++) {
        if (!(bits >> bit & 1))
            continue;
        const char *name = NULL;
        for (size_t i = 0; i < ctx->nb_feature_names; i++)
            if (ctx->feature_names[i].type == type && ctx->feature_names[i].bit == bit)
                name = ctx->feature_names[i].name;
        char printable[100];
        if (name) {
            qc_printable(printable, sizeof(printable), (const uint8_t *)name, strlen(name));
            o += (size_t)snprintf(buf + o, len - o, "%s\"%s\" (bit %u)", o ? ", " : "", printable, bit);
        } else {
            o += (size_t)snprintf(buf + o, len - o, "%sbit %u", o ? ", " : "", bit);
        }
    }
}

static bool check_fixed_fields(qc_ctx *ctx, const uint8_t *buf, size_t len)
{
    qc_header *h = &ctx->hdr;
    size_t min_len = h->version >= 3 ? QC_V3_HEADER_MIN_LENGTH : QC_V2_HEADER_LENGTH;
    if (!qc_header_decode(buf, len, h) || len < min_len) {
        qc_report(ctx, QC_P_HEADER_TRUNCATED, "image header", 0, 1,
                  &(qc_finding_ctx){.present = QC_CTX_FILE_SIZE | QC_CTX_VALUE | QC_CTX_EXPECTED,
                                    .file_size = ctx->file_size,
                                    .value = h->version,
                                    .expected = min_len});
        return false;
    }
    if (h->cluster_bits < QC_MIN_CLUSTER_BITS || h->cluster_bits > QC_MAX_CLUSTER_BITS) {
        qc_report(ctx, QC_P_CLUSTER_BITS_INVALID, "image header", 20, 1,
                  &(qc_finding_ctx){.present = QC_CTX_VALUE, .value = h->cluster_bits});
        return false;
    }
    uint64_t cluster_size = 1ull << h->cluster_bits;
    if (h->version >= 3 && (h->header_length < QC_V3_HEADER_MIN_LENGTH ||
                            h->header_length > cluster_size)) {
        qc_report(ctx, QC_P_HEADER_LENGTH_INVALID, "image header", 100, 1,
                  &(qc_finding_ctx){.present = QC_CTX_VALUE | QC_CTX_EXPECTED,
                                    .value = h->header_length,
                                    .expected = cluster_size});
        return false;
    }
    if (h->header_length > ctx->file_size) {
        qc_report(ctx, QC_P_HEADER_TRUNCATED, "image header", 0, 1,
                  &(qc_finding_ctx){.present = QC_CTX_VALUE | QC_CTX_FILE_SIZE,
                                    .variant = 1,
                                    .value = h->header_length,
                                    .file_size = ctx->file_size});
        return false;
    }
    if (h->header_length % 8)
        qc_report(ctx, QC_P_HEADER_LENGTH_UNALIGNED, "image header", 100, 1,
                  &(qc_finding_ctx){.present = QC_CTX_VALUE, .value = h->header_length});
    if (h->refcount_order > QC_MAX_REFCOUNT_ORDER) {
        qc_report(ctx, QC_P_REFCOUNT_ORDER_INVALID, "image header", 96, 1,
                  &(qc_finding_ctx){.present = QC_CTX_VALUE, .value = h->refcount_order});
        return false;
    }
    return true;
}

/* Fields that do not prevent reading the rest of the image. */
static void check_optional_fields(qc_ctx *ctx)
{
    const qc_header *h = &ctx->hdr;
    if (h->header_length > 104) {
        if (h->compression_type > 1)
            qc_report(ctx, QC_P_COMPRESSION_TYPE_INVALID, "image header", 104, 1,
                      &(qc_finding_ctx){.present = QC_CTX_VALUE, .value = h->compression_type});
        bool bit = h->incompatible_features & QC_INCOMPAT_COMPRESSION;
        if (bit != (h->compression_type != 0))
            qc_report(ctx, QC_P_COMPRESSION_BIT_MISMATCH, "image header", 72, 1,
                      &(qc_finding_ctx){.present = QC_CTX_VALUE,
                                        .variant = bit, /* 0: clear, 1: set */
                                        .value = h->compression_type});
        for (unsigned i = 0; i < sizeof(h->padding); i++) {
            if (h->padding[i]) {
                qc_report(ctx, QC_P_HEADER_PADDING_NONZERO, "image header", 105 + i, 1,
                          &(qc_finding_ctx){.present = QC_CTX_INDEX | QC_CTX_ENTRY,
                                            .index = 105 + i,
                                            .entry = h->padding[i]});
                break;
            }
        }
    } else if (h->incompatible_features & QC_INCOMPAT_COMPRESSION) {
        qc_report(ctx, QC_P_COMPRESSION_BIT_MISMATCH, "image header", 72, 1,
                  &(qc_finding_ctx){.present = QC_CTX_VALUE,
                                    .variant = 2,
                                    .value = h->header_length});
    }
    if (h->crypt_method > 2)
        qc_report(ctx, QC_P_CRYPT_METHOD_INVALID, "image header", 32, 1,
                  &(qc_finding_ctx){.present = QC_CTX_VALUE, .value = h->crypt_method});
    if (h->size % 512)
        qc_report(ctx, QC_P_VIRTUAL_SIZE_UNALIGNED, "image header", 24, 1,
                  &(qc_finding_ctx){.present = QC_CTX_SIZE, .size = h->size});
    if ((h->incompatible_features & QC_INCOMPAT_EXTL2) && h->cluster_bits < 14)
        qc_report(ctx, QC_P_EXTENDED_L2_CLUSTER_TOO_SMALL, "image header", 20, 1,
                  &(qc_finding_ctx){.present = QC_CTX_SIZE | QC_CTX_VALUE,
                                    .size = ctx->geo.cluster_size,
                                    .value = ctx->geo.cluster_size / 32});
}

/* Which wording of a row's message applies (the `variant` of its
 * template): extensionTruncated and backingNameOverlapsExtensions share
 * the cases of an extension that runs too far. */
enum { EXT_AREA_SHORT = 0, NAME_INSIDE_HEADER = 0, EXT_TOO_LARGE = 1, EXT_END_TOO_LARGE = 2 };
/* encryptionExtensionInvalid */
enum { CRYPTO_EXT_NOT_LUKS, CRYPTO_EXT_LENGTH, CRYPTO_EXT_OFFSET, CRYPTO_EXT_PAST_EOF, CRYPTO_EXT_MISSING };

typedef struct ext_walk {
    uint64_t ext_end;
    bool names_backing_file; /* a backing file name QEMU will open */
    /* The last backing format (QEMU uses it), if not empty and printable. */
    bool backing_format_fits;
    qc_extension backing_format;
    unsigned seen_backing_format : 1, seen_feature_table : 1, seen_bitmaps : 1, seen_crypto : 1,
        seen_data_file : 1;
    unsigned data_file_named : 1; /* the last data file name is not empty (QEMU uses the last) */
    qc_extension data_file;       /* the last data file extension */
} ext_walk;

/* Whether the backing format fits QEMU's 16-byte buffer (with its NUL):
 * QEMU refuses to open the image otherwise, backing file or not. What it
 * holds matters only when a backing file is named (check_backing_driver). */
static bool check_backing_format(qc_ctx *ctx, const qc_extension *x)
{
    if (x->length < 16)
        return true;
    char fmt[80];
    qc_printable(fmt, sizeof(fmt), x->data, x->length);
    qc_report(ctx, QC_P_BACKING_FORMAT_INVALID, "backing format extension", x->offset, 1,
              &(qc_finding_ctx){.present = QC_CTX_NAME | QC_CTX_SIZE, .name = fmt, .size = x->length});
    return false;
}

/* The backing format as QEMU uses it: a C string, so up to the first NUL. */
static size_t backing_format_length(const qc_extension *x)
{
    size_t n = 0;
    while (n < x->length && x->data[n])
        n++;
    return n;
}

/* Every block driver name of QEMU 7.2 (formats, protocols and filters,
 * modules included): QEMU opens a backing file with any of them, and
 * with nothing else. */
static const char *const qemu_drivers[] = {
    "blkdebug", "blkio", "blklogwrites", "blkreplay", "blkverify", "bochs", "cloop", "compress",
    "copy-before-write", "copy-on-read", "dmg", "file", "ftp", "ftps", "gluster", "host_cdrom",
    "host_device", "http", "https", "io_uring", "iscsi", "iser", "luks", "nbd", "nfs",
    "null-aio", "null-co", "nvme", "nvme-io_uring", "parallels", "preallocate", "qcow", "qcow2",
    "qed", "quorum", "raw", "rbd", "replication", "snapshot-access", "ssh", "throttle", "vdi",
    "vhdx", "virtio-blk-vfio-pci", "virtio-blk-vhost-user", "virtio-blk-vhost-vdpa", "vmdk",
    "vpc", "vvfat",
};

/* The backing format QEMU will open the backing file with (the last
 * extension's, up to its first NUL), once it is known to fit and not to
 * be empty. Bytes that are not printable name no driver either. */
static void check_backing_driver(qc_ctx *ctx, const qc_extension *x, size_t length)
{
    char name[16];
    memcpy(name, x->data, length);
    name[length] = '\0';
    for (size_t i = 0; i < sizeof(qemu_drivers) / sizeof(qemu_drivers[0]); i++)
        if (strcmp(qemu_drivers[i], name) == 0)
            return;
    char shown[80];
    qc_printable(shown, sizeof(shown), x->data, length);
    qc_report(ctx, QC_P_BACKING_FORMAT_UNKNOWN, "backing format extension", x->offset, 1,
              &(qc_finding_ctx){.present = QC_CTX_NAME, .name = shown});
}

static void read_feature_table(qc_ctx *ctx, const qc_extension *x)
{
    if (x->length % QC_FEATURE_NAME_ENTRY_SIZE) {
        qc_report(ctx, QC_P_FEATURE_TABLE_INVALID, "feature name table", x->offset, 1,
                  &(qc_finding_ctx){.present = QC_CTX_SIZE, .size = x->length});
    }
    size_t n = x->length / QC_FEATURE_NAME_ENTRY_SIZE;
    ctx->feature_names = qc_alloc(ctx, n * sizeof(qc_feature_name), "feature name table");
    if (!ctx->feature_names)
        return;
    for (size_t i = 0; i < n; i++) {
        qc_feature_name *f = &ctx->feature_names[ctx->nb_feature_names];
        qc_feature_name_decode(x->data + i * QC_FEATURE_NAME_ENTRY_SIZE, f);
        if (f->type > 2 || f->bit > 63) {
            enum { TYPE_INVALID = 1, BIT_INVALID };
            qc_report(ctx, QC_P_FEATURE_TABLE_INVALID, "feature name table",
                      x->offset + i * QC_FEATURE_NAME_ENTRY_SIZE, 1,
                      &(qc_finding_ctx){.present = QC_CTX_INDEX | QC_CTX_VALUE,
                                        .variant = f->type > 2 ? TYPE_INVALID : BIT_INVALID,
                                        .index = i,
                                        .value = f->type > 2 ? f->type : f->bit});
            continue;
        }
        ctx->nb_feature_names++;
    }
}

static void check_bitmaps_ext(qc_ctx *ctx, const qc_extension *x)
{
    const char *obj = "bitmaps extension";
    qc_bitmaps_ext *b = &ctx->bitmaps_ext;
    *b = (qc_bitmaps_ext){0};
    if (x->length >= QC_BITMAPS_EXT_SIZE)
        qc_bitmaps_ext_decode(x->data, b);
    /* Without autoclear bit 0, QEMU ignores the extension whatever it holds
     * except its length, which it checks first. */
    if (!(ctx->hdr.autoclear_features & QC_AUTOCLEAR_BITMAPS) && x->length == QC_BITMAPS_EXT_SIZE) {
        qc_report(ctx, QC_P_BITMAPS_WITHOUT_AUTOCLEAR, obj, x->offset, 1,
                  &(qc_finding_ctx){.present = QC_CTX_VALUE, .value = b->nb_bitmaps});
        return;
    }
    bool valid = false;
    enum { RESERVED, COUNT, DIRECTORY_SIZE, DIRECTORY_OFFSET, DIRECTORY_PAST_EOF };
    qc_finding_ctx fc = {.present = QC_CTX_SIZE | QC_CTX_HOST_OFFSET,
                         .size = b->directory_size,
                         .host_offset = b->directory_offset};
    if (x->length != QC_BITMAPS_EXT_SIZE)
        qc_report(ctx, QC_P_BITMAPS_EXTENSION_LENGTH, obj, x->offset, 1,
                  &(qc_finding_ctx){.present = QC_CTX_SIZE | QC_CTX_EXPECTED,
                                    .size = x->length,
                                    .expected = QC_BITMAPS_EXT_SIZE});
    else if (b->reserved)
        qc_report(ctx, QC_P_BITMAPS_EXTENSION_INVALID, obj, x->offset + 4, 1,
                  &(qc_finding_ctx){.present = QC_CTX_VALUE, .variant = RESERVED,
                                    .value = b->reserved});
    else if (b->nb_bitmaps == 0 || b->nb_bitmaps > QC_MAX_BITMAPS)
        qc_report(ctx, QC_P_BITMAPS_EXTENSION_INVALID, obj, x->offset, 1,
                  &(qc_finding_ctx){.present = QC_CTX_VALUE | QC_CTX_EXPECTED, .variant = COUNT,
                                    .value = b->nb_bitmaps, .expected = QC_MAX_BITMAPS});
    else if (b->directory_size == 0 || b->directory_size > QC_MAX_BITMAP_DIRECTORY) {
        fc.present |= QC_CTX_EXPECTED;
        fc.variant = DIRECTORY_SIZE;
        fc.expected = QC_MAX_BITMAP_DIRECTORY;
        qc_report(ctx, QC_P_BITMAPS_EXTENSION_INVALID, obj, x->offset + 8, 1, &fc);
    } else if (!qc_cluster_aligned(&ctx->view, b->directory_offset) || b->directory_offset == 0) {
        fc.variant = DIRECTORY_OFFSET;
        qc_report(ctx, QC_P_BITMAPS_EXTENSION_INVALID, obj, x->offset + 16, 1, &fc);
    } else if (!qc_range_within(b->directory_offset, b->directory_size, ctx->file_size)) {
        fc.variant = DIRECTORY_PAST_EOF;
        qc_report(ctx, QC_P_BITMAPS_EXTENSION_INVALID, obj, x->offset + 16, 1, &fc);
        qc_note_past_eof(ctx, b->directory_offset, b->directory_size);
    }
    else
        valid = true;
    if (valid) {
        ctx->bitmaps_ext_valid = true;
    } else {
        ctx->unfollowed++; /* the bitmaps' clusters may still be owned */
        ctx->unfollowed_bitmaps++;
    }
}

/* What QEMU 7.2 accepts in a LUKS header's names: exactly these strings. */
static const struct {
    const char *name;
    unsigned key_bytes[3];
    const char *essiv_name; /* in QEMU's message; NULL: no ESSIV variant */
} luks_ciphers[] = {
    {"aes", {16, 24, 32}, "AES"},
    {"cast5", {16, 0, 0}, NULL},
    {"serpent", {16, 24, 32}, "Serpent"},
    {"twofish", {16, 24, 32}, "Twofish"},
};
static const struct {
    const char *name;
    unsigned digest_bytes;
} luks_hashes[] = {
    {"md5", 16},    {"sha1", 20},   {"sha224", 28},    {"sha256", 32},
    {"sha384", 48}, {"sha512", 64}, {"ripemd160", 20},
};
static const char *const luks_modes[] = {"ecb", "cbc", "xts", "ctr"};
static const char *const luks_ivgens[] = {"plain", "plain64", "essiv"};

#define COUNT_OF(a) (sizeof(a) / sizeof((a)[0]))

static int luks_hash(const char *name)
{
    for (size_t i = 0; i < COUNT_OF(luks_hashes); i++)
        if (strcmp(luks_hashes[i].name, name) == 0)
            return (int)i;
    return -1;
}

static int luks_word(const char *const *words, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(words[i], name) == 0)
            return (int)i;
    return -1;
}

/* Key material of a key slot, in sectors: its split key rounded up to
 * whole sectors, then to the 4 KiB alignment QEMU (as cryptsetup) uses. */
static uint64_t luks_slot_sectors(const qc_luks_header *l, uint32_t stripes)
{
    return (qc_div_round_up((uint64_t)l->key_bytes * stripes, 512) + 7) & ~7ull;
}

/* The layout checks QEMU makes on the fixed part of a LUKS header, in its
 * order: false with QEMU's sentence in `why` and the field's offset in
 * the header in *field. */
static bool luks_layout_ok(const qc_luks_header *l, char *why, size_t len, unsigned *field)
{
    static const char luks_magic[6] = {'L', 'U', 'K', 'S', (char)0xba, (char)0xbe};
    static const struct {
        unsigned offset;
        const char *what;
    } names[] = {{QC_LUKS_OFF_CIPHER_NAME, "cipher name"},
                 {QC_LUKS_OFF_CIPHER_MODE, "cipher mode"},
                 {QC_LUKS_OFF_HASH_SPEC, "hash spec"}};
    const char *fields[] = {l->cipher_name, l->cipher_mode, l->hash_spec};
    *field = 0;
    if (memcmp(l->magic, luks_magic, sizeof(luks_magic)) != 0) {
        snprintf(why, len, "Volume is not in LUKS format");
        return false;
    }
    *field = QC_LUKS_OFF_VERSION;
    if (l->version != 1) {
        snprintf(why, len, "LUKS version %u is not supported", l->version);
        return false;
    }
    for (size_t i = 0; i < COUNT_OF(names); i++) {
        *field = names[i].offset;
        if (!memchr(fields[i], '\0', QC_LUKS_NAME_SIZE)) {
            snprintf(why, len, "LUKS header %s is not NUL terminated", names[i].what);
            return false;
        }
    }
    *field = QC_LUKS_OFF_PAYLOAD;
    if (l->payload_offset < 8) {
        snprintf(why, len, "LUKS payload is overlapping with the header");
        return false;
    }
    *field = QC_LUKS_OFF_ITERATIONS;
    if (l->master_key_iterations == 0) {
        snprintf(why, len, "LUKS key iteration count is zero");
        return false;
    }
    for (unsigned i = 0; i < QC_LUKS_KEY_SLOTS; i++) {
        const qc_luks_key_slot *s = &l->slots[i];
        uint64_t start = s->key_offset, sectors = luks_slot_sectors(l, s->stripes);
        *field = QC_LUKS_OFF_SLOTS + i * QC_LUKS_SLOT_SIZE;
        if (s->stripes != 4000)
            snprintf(why, len, "Keyslot %u is corrupted (stripes %u != 4000)", i, s->stripes);
        else if (s->active != QC_LUKS_SLOT_ENABLED && s->active != QC_LUKS_SLOT_DISABLED)
            snprintf(why, len, "Keyslot %u state (active/disable) is corrupted", i);
        else if (s->active == QC_LUKS_SLOT_ENABLED && s->iterations == 0)
            snprintf(why, len, "Keyslot %u iteration count is zero", i);
        else if (start < 8)
            snprintf(why, len, "Keyslot %u is overlapping with the LUKS header", i);
        else if (start + sectors > l->payload_offset)
            snprintf(why, len, "Keyslot %u is overlapping with the encrypted payload", i);
        else
            why[0] = '\0';
        for (unsigned j = i + 1; !why[0] && j < QC_LUKS_KEY_SLOTS; j++) {
            uint64_t start2 = l->slots[j].key_offset;
            uint64_t sectors2 = luks_slot_sectors(l, l->slots[j].stripes);
            if (start < start2 + sectors2 && start2 < start + sectors)
                snprintf(why, len, "Keyslots %u and %u are overlapping in the header", i, j);
        }
        if (why[0])
            return false;
    }
    return true;
}

/* The algorithm names: "<mode>-<ivgen>[:<hash>]" in cipher_mode, the
 * cipher with its key size, the hash; QEMU parses them in this order. */
static bool luks_names_ok(const qc_luks_header *l, char *why, size_t len, unsigned *field)
{
    char mode[QC_LUKS_NAME_SIZE + 1], p[4 * QC_LUKS_NAME_SIZE + 1];
    memcpy(mode, l->cipher_mode, QC_LUKS_NAME_SIZE);
    mode[QC_LUKS_NAME_SIZE] = '\0';
    *field = QC_LUKS_OFF_CIPHER_MODE;
    char *ivgen = strchr(mode, '-');
    if (!ivgen) {
        qc_printable(p, sizeof(p), (const uint8_t *)mode, strlen(mode));
        snprintf(why, len, "Unexpected cipher mode string format '%s'", p);
        return false;
    }
    *ivgen++ = '\0';
    char *ivhash_name = strchr(ivgen, ':');
    int ivhash = -1;
    if (ivhash_name) {
        *ivhash_name++ = '\0';
        ivhash = luks_hash(ivhash_name);
        if (ivhash < 0) {
            qc_printable(p, sizeof(p), (const uint8_t *)ivhash_name, strlen(ivhash_name));
            snprintf(why, len, "Hash algorithm '%s' not supported", p);
            return false;
        }
    }
    int m = luks_word(luks_modes, COUNT_OF(luks_modes), mode);
    if (m < 0) {
        qc_printable(p, sizeof(p), (const uint8_t *)mode, strlen(mode));
        snprintf(why, len, "Cipher mode '%s' not supported", p);
        return false;
    }
    /* XTS keys are two keys of half the size. */
    unsigned key = strcmp(luks_modes[m], "xts") == 0 ? l->key_bytes / 2 : l->key_bytes;
    int cipher = -1;
    for (size_t i = 0; i < COUNT_OF(luks_ciphers); i++)
        for (size_t k = 0; k < COUNT_OF(luks_ciphers[i].key_bytes); k++)
            if (strcmp(luks_ciphers[i].name, l->cipher_name) == 0 && luks_ciphers[i].key_bytes[k] &&
                luks_ciphers[i].key_bytes[k] == key)
                cipher = (int)i;
    if (cipher < 0) {
        *field = QC_LUKS_OFF_CIPHER_NAME;
        qc_printable(p, sizeof(p), (const uint8_t *)l->cipher_name, strlen(l->cipher_name));
        snprintf(why, len, "Algorithm '%s' with key size %u bytes not supported", p, key);
        return false;
    }
    if (luks_hash(l->hash_spec) < 0) {
        *field = QC_LUKS_OFF_HASH_SPEC;
        qc_printable(p, sizeof(p), (const uint8_t *)l->hash_spec, strlen(l->hash_spec));
        snprintf(why, len, "Hash algorithm '%s' not supported", p);
        return false;
    }
    int iv = luks_word(luks_ivgens, COUNT_OF(luks_ivgens), ivgen);
    if (iv < 0) {
        qc_printable(p, sizeof(p), (const uint8_t *)ivgen, strlen(ivgen));
        snprintf(why, len, "IV generator '%s' not supported", p);
        return false;
    }
    if (strcmp(luks_ivgens[iv], "essiv") != 0)
        return true;
    if (!ivhash_name) {
        snprintf(why, len, "Missing IV generator hash specification");
        return false;
    }
    /* ESSIV encrypts with the same cipher keyed by the hash's digest. */
    unsigned digest = luks_hashes[ivhash].digest_bytes;
    if (digest == key)
        return true;
    if (!luks_ciphers[cipher].essiv_name) {
        snprintf(why, len, "Cipher %s-128 not supported with essiv", luks_ciphers[cipher].name);
        return false;
    }
    if (digest != 16 && digest != 24 && digest != 32) {
        snprintf(why, len, "No %s cipher with key size %u available",
                 luks_ciphers[cipher].essiv_name, digest);
        return false;
    }
    return true;
}

/* The LUKS header behind a valid encryption extension: QEMU parses it on
 * every open, with or without the key. */
static void check_luks_header(qc_ctx *ctx)
{
    enum { LUKS_HEADER_SHORT, LUKS_HEADER_REFUSED, LUKS_KEY_MATERIAL_OUTSIDE };
    const char *obj = "LUKS header";
    if (ctx->crypto_length < QC_LUKS_HEADER_SIZE) {
        qc_report(ctx, QC_P_LUKS_HEADER_INVALID, obj, ctx->crypto_offset, 1,
                  &(qc_finding_ctx){.present = QC_CTX_SIZE | QC_CTX_EXPECTED,
                                    .variant = LUKS_HEADER_SHORT,
                                    .size = ctx->crypto_length,
                                    .expected = QC_LUKS_HEADER_SIZE});
        ctx->unfollowed++; /* the key material past that length still owns its clusters */
        return;
    }
    uint8_t raw[QC_LUKS_HEADER_SIZE];
    if (!qc_read(ctx, ctx->crypto_offset, raw, sizeof(raw), obj))
        return;
    qc_luks_header l;
    qc_luks_header_decode(raw, &l);
    char why[200];
    unsigned field;
    if (!luks_layout_ok(&l, why, sizeof(why), &field) || !luks_names_ok(&l, why, sizeof(why), &field)) {
        qc_report(ctx, QC_P_LUKS_HEADER_INVALID, obj, ctx->crypto_offset + field, 1,
                  &(qc_finding_ctx){.present = QC_CTX_HOST_OFFSET | QC_CTX_NAME,
                                    .variant = LUKS_HEADER_REFUSED,
                                    .host_offset = ctx->crypto_offset,
                                    .name = why});
        return;
    }
    /* Opening with the key, QEMU reads the key material of the enabled
     * slots in turn, through the length the extension gives the header. */
    for (unsigned i = 0; i < QC_LUKS_KEY_SLOTS; i++) {
        const qc_luks_key_slot *slot = &l.slots[i];
        uint64_t end = (uint64_t)slot->key_offset * 512 + (uint64_t)l.key_bytes * slot->stripes;
        if (slot->active != QC_LUKS_SLOT_ENABLED || end <= ctx->crypto_length)
            continue;
        qc_report(ctx, QC_P_LUKS_HEADER_INVALID, obj,
                  ctx->crypto_offset + QC_LUKS_OFF_SLOTS + i * QC_LUKS_SLOT_SIZE, 1,
                  &(qc_finding_ctx){.present = QC_CTX_HOST_OFFSET | QC_CTX_INDEX | QC_CTX_VALUE |
                                               QC_CTX_SIZE,
                                    .variant = LUKS_KEY_MATERIAL_OUTSIDE,
                                    .host_offset = ctx->crypto_offset,
                                    .index = i,
                                    .value = end,
                                    .size = ctx->crypto_length});
        ctx->unfollowed++; /* the key material past that length still owns its clusters */
        return;
    }
}

static void check_crypto_ext(qc_ctx *ctx, const qc_extension *x)
{
    const char *obj = "encryption header extension";
    ctx->crypto_ext_present = true;
    if (ctx->hdr.crypt_method != 2) {
        qc_report(ctx, QC_P_ENCRYPTION_EXTENSION_INVALID, obj, x->offset, 1,
                  &(qc_finding_ctx){.present = QC_CTX_VALUE,
                                    .variant = CRYPTO_EXT_NOT_LUKS,
                                    .value = ctx->hdr.crypt_method});
        return;
    }
    if (x->length != QC_CRYPTO_EXT_SIZE) {
        qc_report(ctx, QC_P_ENCRYPTION_EXTENSION_INVALID, obj, x->offset, 1,
                  &(qc_finding_ctx){.present = QC_CTX_SIZE | QC_CTX_EXPECTED,
                                    .variant = CRYPTO_EXT_LENGTH,
                                    .size = x->length,
                                    .expected = QC_CRYPTO_EXT_SIZE});
        return;
    }
    uint64_t off = qc_be64(x->data), len = qc_be64(x->data + 8);
    qc_finding_ctx fc = {.present = QC_CTX_HOST_OFFSET | QC_CTX_SIZE, .host_offset = off, .size = len};
    if (!qc_cluster_aligned(&ctx->view, off) || off == 0) {
        fc.variant = CRYPTO_EXT_OFFSET;
        qc_report(ctx, QC_P_ENCRYPTION_EXTENSION_INVALID, obj, x->offset, 1, &fc);
    } else if (len == 0 || !qc_range_within(off, len, ctx->file_size)) {
        fc.variant = CRYPTO_EXT_PAST_EOF;
        qc_report(ctx, QC_P_ENCRYPTION_EXTENSION_INVALID, obj, x->offset, 1, &fc);
        qc_note_past_eof(ctx, off, len);
    } else {
        ctx->crypto_offset = off;
        ctx->crypto_length = len;
        check_luks_header(ctx);
    }
}

static void check_extension(qc_ctx *ctx, ext_walk *w, const qc_extension *x)
{
    unsigned dup = 0;
    switch (x->magic) {
    case QC_EXT_BACKING_FORMAT:
        dup = w->seen_backing_format;
        w->seen_backing_format = 1;
        w->backing_format = *x;
        w->backing_format_fits = check_backing_format(ctx, x);
        break;
    case QC_EXT_FEATURE_TABLE:
        dup = w->seen_feature_table;
        w->seen_feature_table = 1;
        if (!dup)
            read_feature_table(ctx, x);
        break;
    case QC_EXT_BITMAPS:
        dup = w->seen_bitmaps;
        w->seen_bitmaps = 1;
        ctx->bitmaps_ext_valid = false; /* QEMU uses the last copy */
        check_bitmaps_ext(ctx, x);
        break;
    case QC_EXT_CRYPTO:
        dup = w->seen_crypto;
        w->seen_crypto = 1;
        check_crypto_ext(ctx, x);
        break;
    case QC_EXT_DATA_FILE:
        dup = w->seen_data_file;
        w->seen_data_file = 1;
        /* QEMU reads the name as a C string: a leading NUL names nothing. */
        w->data_file_named = x->length > 0 && x->data[0] != '\0';
        w->data_file = *x;
        if (!ctx->has_data_file)
            qc_report(ctx, QC_P_DATA_FILE_EXTENSION_INVALID, "external data file extension",
                      x->offset, 1, &(qc_finding_ctx){0});
        break;
    default:
        qc_report(ctx, QC_P_EXTENSION_UNKNOWN, "header extension", x->offset - 8, 1,
                  &(qc_finding_ctx){.present = QC_CTX_VALUE | QC_CTX_SIZE,
                                    .value = x->magic,
                                    .size = x->length});
        break;
    }
    if (dup)
        qc_report(ctx, QC_P_EXTENSION_DUPLICATE, "header extension", x->offset - 8, 1,
                  &(qc_finding_ctx){.present = QC_CTX_NAME | QC_CTX_VALUE,
                                    .name = ext_name(x->magic),
                                    .value = x->magic});
}

static void walk_extensions(qc_ctx *ctx, ext_walk *w)
{
    uint64_t off = ctx->hdr.header_length;
    if (w->ext_end < off)
        return; /* the backing file name starts inside the header: no extension area */
    while (off < w->ext_end) {
        if (w->ext_end - off < 8) {
            qc_report(ctx, QC_P_EXTENSION_TRUNCATED, "header extension", off, 1,
                      &(qc_finding_ctx){.present = QC_CTX_SIZE | QC_CTX_HOST_OFFSET,
                                        .variant = EXT_AREA_SHORT,
                                        .size = w->ext_end - off,
                                        .host_offset = w->ext_end});
            return;
        }
        qc_extension x;
        x.magic = qc_be32(ctx->cluster0 + off);
        x.length = qc_be32(ctx->cluster0 + off + 4);
        x.offset = off + 8;
        uint64_t padded = ((uint64_t)x.length + 7) & ~7ull;
        /* QEMU checks the length before the type, so an end marker whose
         * length field runs past the area is refused too. */
        if (x.length > w->ext_end - x.offset) {
            const char *name = ext_name(x.magic);
            /* Running into the backing file name is a placement error of
             * its own; running off cluster 0 is a truncated extension. */
            bool into_name = ctx->hdr.backing_file_offset &&
                             x.length <= ctx->cluster0_len - x.offset;
            qc_report(ctx, into_name ? QC_P_BACKING_NAME_OVERLAPS_EXTENSIONS : QC_P_EXTENSION_TRUNCATED,
                      "header extension", off, 1,
                      &(qc_finding_ctx){.present = QC_CTX_NAME | QC_CTX_VALUE | QC_CTX_SIZE |
                                                   QC_CTX_EXPECTED | QC_CTX_HOST_OFFSET,
                                        .variant = x.magic == QC_EXT_END ? EXT_END_TOO_LARGE
                                                                         : EXT_TOO_LARGE,
                                        .name = name ? name : "unknown",
                                        .value = x.magic,
                                        .size = x.length,
                                        .expected = w->ext_end - x.offset,
                                        .host_offset = w->ext_end});
            return;
        }
        if (x.magic == QC_EXT_END)
            return;
        x.data = ctx->cluster0 + x.offset;
        check_extension(ctx, w, &x);
        uint64_t pad_end = x.offset + padded < w->ext_end ? x.offset + padded : w->ext_end;
        for (uint64_t i = x.offset + x.length; i < pad_end; i++) {
            if (ctx->cluster0[i]) {
                qc_report(ctx, QC_P_EXTENSION_PADDING_NONZERO, "header extension", i, 1,
                          &(qc_finding_ctx){.present = QC_CTX_HOST_OFFSET | QC_CTX_VALUE |
                                                       QC_CTX_ENTRY,
                                            .host_offset = i,
                                            .value = x.magic,
                                            .entry = ctx->cluster0[i]});
                break;
            }
        }
        off = x.offset + padded;
    }
    qc_report(ctx, QC_P_EXTENSION_END_MISSING, "header extension area", w->ext_end, 1,
              &(qc_finding_ctx){.present = QC_CTX_HOST_OFFSET, .host_offset = w->ext_end});
}

static void check_backing_name(qc_ctx *ctx, ext_walk *w)
{
    const qc_header *h = &ctx->hdr;
    uint64_t cs = ctx->geo.cluster_size;
    w->ext_end = ctx->cluster0_len;
    if (h->backing_file_offset == 0)
        return;
    const char *obj = "backing file name";
    if (h->backing_file_offset > cs || h->backing_file_size > QC_MAX_BACKING_NAME ||
        h->backing_file_size > cs - h->backing_file_offset) {
        qc_report(ctx, QC_P_BACKING_NAME_INVALID, obj, 8, 1,
                  &(qc_finding_ctx){.present = QC_CTX_SIZE | QC_CTX_HOST_OFFSET | QC_CTX_EXPECTED,
                                    .size = h->backing_file_size,
                                    .host_offset = h->backing_file_offset,
                                    .expected = cs});
        return;
    }
    if (h->backing_file_offset < h->header_length) {
        /* QEMU's extension area ends where the name starts, so it reads no
         * extension at all, and takes the name from the header's own
         * bytes (as a C string: a leading NUL names no file). */
        w->ext_end = h->backing_file_offset;
        w->names_backing_file = h->backing_file_size && ctx->cluster0[h->backing_file_offset];
        qc_report(ctx,
                  w->names_backing_file ? QC_P_BACKING_NAME_OVERLAPS_EXTENSIONS
                                        : QC_P_BACKING_NAME_IN_HEADER,
                  obj, h->backing_file_offset, 1,
                  &(qc_finding_ctx){.present = QC_CTX_HOST_OFFSET | QC_CTX_SIZE,
                                    .variant = NAME_INSIDE_HEADER,
                                    .host_offset = h->backing_file_offset,
                                    .size = h->header_length});
        return;
    }
    if (!qc_range_within(h->backing_file_offset, h->backing_file_size, ctx->cluster0_len)) {
        qc_report(ctx, QC_P_HEADER_TRUNCATED, obj, h->backing_file_offset, 1,
                  &(qc_finding_ctx){.variant = 2});
        return;
    }
    w->ext_end = h->backing_file_offset;
    /* QEMU reads the name as a C string: a leading NUL names no file. */
    w->names_backing_file = h->backing_file_size && ctx->cluster0[h->backing_file_offset];
}

static void check_features(qc_ctx *ctx, const ext_walk *w, const uint8_t *raw)
{
    const qc_header *h = &ctx->hdr;
    qc_header_info *info = &ctx->res->header;
    char names[400];
    if (h->incompatible_features & QC_INCOMPAT_DIRTY)
        qc_report(ctx, QC_P_DIRTY_BIT_SET, "image header", 72, 1,
                  &(qc_finding_ctx){.variant = !!(h->compatible_features &
                                                   QC_COMPAT_LAZY_REFCOUNTS)});
    if (h->incompatible_features & QC_INCOMPAT_CORRUPT)
        qc_report(ctx, QC_P_CORRUPT_BIT_SET, "image header", 72, 1, &(qc_finding_ctx){0});
    if (info->unknown_compatible) {
        feature_list(ctx, 1, info->unknown_compatible, names, sizeof(names));
        qc_report(ctx, QC_P_UNKNOWN_COMPAT_FEATURE, "image header", 80, 1,
                  &(qc_finding_ctx){.present = QC_CTX_NAME | QC_CTX_ENTRY,
                                    .name = names,
                                    .entry = info->unknown_compatible});
    }
    if (info->unknown_autoclear) {
        feature_list(ctx, 2, info->unknown_autoclear, names, sizeof(names));
        qc_report(ctx, QC_P_UNKNOWN_AUTOCLEAR_FEATURE, "image header", 88, 1,
                  &(qc_finding_ctx){.present = QC_CTX_NAME | QC_CTX_ENTRY,
                                    .name = names,
                                    .entry = info->unknown_autoclear});
    }
    if ((h->autoclear_features & QC_AUTOCLEAR_BITMAPS) && !w->seen_bitmaps)
        qc_report(ctx, QC_P_AUTOCLEAR_WITHOUT_BITMAPS, "image header", 88, 1, &(qc_finding_ctx){0});
    if (h->autoclear_features & QC_AUTOCLEAR_DATA_FILE_RAW) {
        enum { WITHOUT_DATA_FILE, WITH_BACKING_FILE };
        if (!ctx->has_data_file)
            qc_report(ctx, QC_P_RAW_DATA_FILE_INVALID, "image header", 88, 1,
                      &(qc_finding_ctx){.variant = WITHOUT_DATA_FILE});
        else if (h->backing_file_offset)
            qc_report(ctx, QC_P_RAW_DATA_FILE_INVALID, "image header", 88, 1,
                      &(qc_finding_ctx){.variant = WITH_BACKING_FILE});
    }
    if (ctx->has_data_file && !w->data_file_named) /* variant 1: the name is empty */
        qc_report(ctx, QC_P_DATA_FILE_NAME_MISSING, "image header", 72, 1,
                  &(qc_finding_ctx){.variant = w->seen_data_file});
    if (h->crypt_method == 2 && !w->seen_crypto)
        qc_report(ctx, QC_P_ENCRYPTION_EXTENSION_INVALID, "image header", 32, 1,
                  &(qc_finding_ctx){.variant = CRYPTO_EXT_MISSING});
    /* A LUKS header we cannot locate still owns its clusters (and the keys). */
    if ((h->crypt_method == 2 || w->seen_crypto) && !ctx->crypto_length)
        ctx->unfollowed++;
    size_t format_length = w->seen_backing_format ? backing_format_length(&w->backing_format) : 0;
    if (w->names_backing_file && (!w->seen_backing_format || w->backing_format_fits) &&
        !format_length)
        qc_report(ctx, QC_P_BACKING_FORMAT_MISSING, "backing file name", h->backing_file_offset, 1,
                  &(qc_finding_ctx){.variant = w->seen_backing_format}); /* 1: it is empty */
    if (w->names_backing_file && w->backing_format_fits && format_length)
        check_backing_driver(ctx, &w->backing_format, format_length);
    if (info->unknown_incompatible) {
        feature_list(ctx, 0, info->unknown_incompatible, names, sizeof(names));
        /* A v2-era writer may have put an extension where v3 keeps the
         * upper incompatible bits: say so when bytes 72..75 look like one. */
        uint32_t high = qc_be32(raw + 72);
        qc_report(ctx, QC_P_UNKNOWN_INCOMPAT_FEATURE, "image header", 72, 1,
                  &(qc_finding_ctx){.present = QC_CTX_NAME | QC_CTX_ENTRY,
                                    .variant = ext_name(high) && h->version == 3, /* the hint */
                                    .name = names,
                                    .entry = info->unknown_incompatible});
        ctx->stop = true;
    }
}

/* QEMU validates the offset of the active L1 table and of the snapshot
 * table even when they have no entries (`qemu_name` is its name for the
 * table in the message it refuses the image with). */
static void check_empty_table_offset(qc_ctx *ctx, const char *obj, uint64_t field, uint64_t offset,
                                     const char *qemu_name)
{
    qc_finding_ctx fc = {.present = QC_CTX_HOST_OFFSET | QC_CTX_EXPECTED | QC_CTX_NAME,
                         .host_offset = offset,
                         .expected = ctx->geo.cluster_size,
                         .name = qemu_name};
    if (!qc_cluster_aligned(&ctx->view, offset)) {
        fc.variant = QC_EMPTY_TABLE_UNALIGNED;
        qc_report(ctx, QC_P_EMPTY_TABLE_OFFSET_INVALID, obj, field, 1, &fc);
    } else if (offset > INT64_MAX) {
        fc.variant = QC_EMPTY_TABLE_HIGH;
        qc_report(ctx, QC_P_EMPTY_TABLE_OFFSET_INVALID, obj, field, 1, &fc);
    }
}

static void check_table_locations(qc_ctx *ctx)
{
    const qc_header *h = &ctx->hdr;
    uint64_t bytes;

    /* Active L1 table. */
    uint64_t needed = qc_l1_entries_needed(&ctx->geo, h->size);
    bytes = (uint64_t)h->l1_size * 8;
    ctx->l1_usable = h->l1_size > 0;
    if (h->l1_size < needed) {
        qc_report(ctx, QC_P_L1_TOO_SMALL, "active L1 table", 36, 1,
                  &(qc_finding_ctx){.present = QC_CTX_VALUE | QC_CTX_SIZE | QC_CTX_EXPECTED,
                                    .value = h->l1_size,
                                    .size = h->size,
                                    .expected = needed});
        ctx->unfollowed++; /* entries past l1_size may map real data */
    }
    if (h->l1_size == 0) {
        check_empty_table_offset(ctx, "active L1 table", 40, h->l1_table_offset, "Active L1 table");
    } else if (!qc_cluster_aligned(&ctx->view, h->l1_table_offset)) {
        qc_report(ctx, QC_P_L1_OFFSET_UNALIGNED, "active L1 table", 40, 1,
                  &(qc_finding_ctx){.present = QC_CTX_HOST_OFFSET | QC_CTX_EXPECTED,
                                    .host_offset = h->l1_table_offset,
                                    .expected = ctx->geo.cluster_size});
        ctx->l1_usable = false;
        ctx->unfollowed++;
    } else if (!qc_range_within(h->l1_table_offset, bytes, ctx->file_size)) {
        qc_report(ctx, QC_P_L1_PAST_EOF, "active L1 table", h->l1_table_offset, 1,
                  &(qc_finding_ctx){.present = QC_CTX_VALUE | QC_CTX_HOST_OFFSET | QC_CTX_FILE_SIZE,
                                    .value = h->l1_size,
                                    .host_offset = h->l1_table_offset,
                                    .file_size = ctx->file_size});
        qc_claim_past_eof(ctx, h->l1_table_offset, bytes, false);
        ctx->l1_usable = false;
        ctx->unfollowed++;
    }
    if (bytes > QC_MAX_L1_BYTES)
        qc_report(ctx, QC_P_QEMU_LIMIT_EXCEEDED, "active L1 table", 36, 1,
                  &(qc_finding_ctx){.present = QC_CTX_VALUE | QC_CTX_SIZE,
                                    .variant = 0, /* the L1 table */
                                    .value = h->l1_size,
                                    .size = bytes});

    /* Refcount table. */
    bytes = (uint64_t)h->refcount_table_clusters << ctx->geo.cluster_bits;
    ctx->reftable_usable = false;
    if (h->refcount_table_clusters == 0 || h->refcount_table_offset == 0)
        qc_report(ctx, QC_P_REFTABLE_MISSING, "refcount table", 48, 1,
                  &(qc_finding_ctx){.present = QC_CTX_HOST_OFFSET | QC_CTX_VALUE,
                                    .host_offset = h->refcount_table_offset,
                                    .value = h->refcount_table_clusters});
    else if (!qc_cluster_aligned(&ctx->view, h->refcount_table_offset))
        qc_report(ctx, QC_P_REFTABLE_OFFSET_UNALIGNED, "refcount table", 48, 1,
                  &(qc_finding_ctx){.present = QC_CTX_HOST_OFFSET | QC_CTX_EXPECTED,
                                    .host_offset = h->refcount_table_offset,
                                    .expected = ctx->geo.cluster_size});
    else if (!qc_range_within(h->refcount_table_offset, bytes, ctx->file_size)) {
        qc_report(ctx, QC_P_REFTABLE_PAST_EOF, "refcount table", h->refcount_table_offset, 1,
                  &(qc_finding_ctx){.present = QC_CTX_VALUE | QC_CTX_HOST_OFFSET | QC_CTX_FILE_SIZE,
                                    .value = h->refcount_table_clusters,
                                    .host_offset = h->refcount_table_offset,
                                    .file_size = ctx->file_size});
        qc_claim_past_eof(ctx, h->refcount_table_offset, bytes, true);
    } else {
        ctx->reftable_usable = true;
    }
    if (bytes > QC_MAX_REFTABLE_BYTES)
        qc_report(ctx, QC_P_QEMU_LIMIT_EXCEEDED, "refcount table", 56, 1,
                  &(qc_finding_ctx){.present = QC_CTX_VALUE | QC_CTX_SIZE,
                                    .variant = 1, /* the refcount table */
                                    .value = h->refcount_table_clusters,
                                    .size = bytes});

    /* Snapshot table: its entries are parsed by the snapshot pass. */
    ctx->snapshots_usable = false;
    if (h->nb_snapshots == 0) {
        check_empty_table_offset(ctx, "snapshot table", 64, h->snapshots_offset, "Snapshot table");
        return;
    }
    /* QEMU accepts offset 0 (it is aligned) and reads the header as
     * snapshot entries; nothing there can be a snapshot. */
    if (h->snapshots_offset == 0)
        qc_report(ctx, QC_P_SNAPSHOT_TABLE_IN_HEADER, "snapshot table", 64, 1,
                  &(qc_finding_ctx){.present = QC_CTX_VALUE, .value = h->nb_snapshots});
    else if (!qc_cluster_aligned(&ctx->view, h->snapshots_offset))
        qc_report(ctx, QC_P_SNAPSHOT_TABLE_UNALIGNED, "snapshot table", 64, 1,
                  &(qc_finding_ctx){.present = QC_CTX_HOST_OFFSET,
                                    .host_offset = h->snapshots_offset});
    else if (h->snapshots_offset >= ctx->file_size) {
        qc_report(ctx, QC_P_SNAPSHOT_TABLE_PAST_EOF, "snapshot table", 64, 1,
                  &(qc_finding_ctx){.present = QC_CTX_HOST_OFFSET | QC_CTX_FILE_SIZE,
                                    .host_offset = h->snapshots_offset,
                                    .file_size = ctx->file_size});
        qc_claim_past_eof(ctx, h->snapshots_offset,
                          (uint64_t)h->nb_snapshots * QC_SNAPSHOT_FIXED_SIZE, false);
    } else {
        ctx->snapshots_usable = true;
    }
    if (!ctx->snapshots_usable)
        ctx->unfollowed++; /* the snapshots' tables and data are not followed */
}

static void fill_header_info(qc_ctx *ctx)
{
    const qc_header *h = &ctx->hdr;
    qc_header_info *i = &ctx->res->header;
    i->version = h->version;
    i->cluster_bits = h->cluster_bits;
    i->virtual_size = h->size;
    i->refcount_bits = 1u << (h->refcount_order > 6 ? 0 : h->refcount_order);
    i->incompatible_features = h->incompatible_features;
    i->compatible_features = h->compatible_features;
    i->autoclear_features = h->autoclear_features;
    i->unknown_incompatible = h->incompatible_features & ~QC_INCOMPAT_KNOWN;
    i->unknown_compatible = h->compatible_features & ~QC_COMPAT_KNOWN;
    i->unknown_autoclear = h->autoclear_features & ~QC_AUTOCLEAR_KNOWN;
    i->dirty = h->incompatible_features & QC_INCOMPAT_DIRTY;
    i->corrupt = h->incompatible_features & QC_INCOMPAT_CORRUPT;
    i->external_data_file = h->incompatible_features & QC_INCOMPAT_DATA_FILE;
    i->extended_l2 = h->incompatible_features & QC_INCOMPAT_EXTL2;
    i->compression_type = h->compression_type;
    i->nb_snapshots = h->nb_snapshots;
    i->has_backing_file = h->backing_file_offset != 0;
    i->has_bitmaps = h->autoclear_features & QC_AUTOCLEAR_BITMAPS;
    ctx->res->header_valid = true;
}

/* A name as QEMU takes it from the image (a C string: up to the first
 * NUL), into the result's buffer; its header field points there. */
static const char *copy_name(char *dst, size_t dst_len, const uint8_t *src, size_t src_len)
{
    size_t n = 0;
    while (n < src_len && n + 1 < dst_len && src[n])
        n++;
    memcpy(dst, src, n);
    dst[n] = '\0';
    return dst;
}

/* The backing file, its format and the data file, as QEMU would open them
 * (for --chain, which opens them on request). */
static void record_names(qc_ctx *ctx, const ext_walk *w)
{
    const qc_header *h = &ctx->hdr;
    qc_result *r = ctx->res;
    if (w->names_backing_file && h->backing_file_offset < ctx->cluster0_len) {
        size_t room = ctx->cluster0_len - (size_t)h->backing_file_offset;
        r->header.backing_file = copy_name(r->backing_file, sizeof(r->backing_file),
                                           ctx->cluster0 + h->backing_file_offset,
                                           h->backing_file_size < room ? h->backing_file_size
                                                                       : room);
    }
    if (w->names_backing_file && w->seen_backing_format && w->backing_format_fits &&
        backing_format_length(&w->backing_format))
        r->header.backing_format = copy_name(r->backing_format, sizeof(r->backing_format),
                                             w->backing_format.data,
                                             w->backing_format.length);
    if (ctx->has_data_file && w->data_file_named)
        r->header.data_file = copy_name(r->data_file, sizeof(r->data_file), w->data_file.data,
                                        w->data_file.length);
}

void qc_pass_header(qc_ctx *ctx)
{
    uint8_t raw[QC_V3_HEADER_LENGTH] = {0};
    size_t raw_len = ctx->file_size < sizeof(raw) ? (size_t)ctx->file_size : sizeof(raw);
    if (raw_len && !qc_read(ctx, 0, raw, raw_len, "image header")) {
        ctx->stop = true;
        return;
    }
    const char *guess = qc_guess_format(raw, raw_len);
    if (guess && strcmp(guess, "qed") == 0) {
        /* A QED image: its own check, and nothing of qcow2's. */
        qc_pass_qed(ctx, raw, raw_len);
        ctx->stop = true;
        return;
    }
    if ((ctx->res->other_format = guess)) {
        ctx->stop = true;
        return;
    }
    ctx->hdr.version = qc_be32(raw + 4);
    if (ctx->hdr.version != 2 && ctx->hdr.version != 3) {
        qc_report(ctx, QC_P_VERSION_UNSUPPORTED, "image header", 4, 1,
                  &(qc_finding_ctx){.present = QC_CTX_VALUE, .value = ctx->hdr.version});
        ctx->stop = true;
        return;
    }
    if (!check_fixed_fields(ctx, raw, raw_len)) {
        ctx->stop = true;
        return;
    }
    const qc_header *h = &ctx->hdr;
    ctx->has_data_file = h->incompatible_features & QC_INCOMPAT_DATA_FILE;
    qc_geometry_init(&ctx->geo, h->cluster_bits, h->refcount_order,
                     h->incompatible_features & QC_INCOMPAT_EXTL2);
    ctx->file_clusters = qc_div_round_up(ctx->file_size, ctx->geo.cluster_size);
    /* As QEMU: the disk the guest sees, whole 512-byte sectors, in
     * clusters rounded up. */
    ctx->res->total_clusters = qc_div_round_up(h->size / 512 * 512, ctx->geo.cluster_size);
    fill_header_info(ctx);
    check_optional_fields(ctx);

    ctx->cluster0_len = ctx->file_size < ctx->geo.cluster_size ? (size_t)ctx->file_size
                                                                : (size_t)ctx->geo.cluster_size;
    ctx->cluster0 = qc_alloc(ctx, ctx->cluster0_len, "cluster 0");
    if (!ctx->cluster0 || !qc_read(ctx, 0, ctx->cluster0, ctx->cluster0_len, "cluster 0")) {
        ctx->stop = true;
        return;
    }
    ext_walk w = {0};
    check_backing_name(ctx, &w);
    walk_extensions(ctx, &w);
    check_features(ctx, &w, raw);
    record_names(ctx, &w);
    if (ctx->stop)
        return;
    check_table_locations(ctx);
}
