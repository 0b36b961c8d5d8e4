/* qcow2 on-disk format: decode and encode (see format.h). */
#include "format.h"

#include <string.h>

bool qc_header_decode(const uint8_t *buf, size_t len, qc_header *h)
{
    memset(h, 0, sizeof(*h));
    qc_cursor c = qc_cursor_make(buf, len);
    h->magic = qc_cursor_be32(&c);
    h->version = qc_cursor_be32(&c);
    h->backing_file_offset = qc_cursor_be64(&c);
    h->backing_file_size = qc_cursor_be32(&c);
    h->cluster_bits = qc_cursor_be32(&c);
    h->size = qc_cursor_be64(&c);
    h->crypt_method = qc_cursor_be32(&c);
    h->l1_size = qc_cursor_be32(&c);
    h->l1_table_offset = qc_cursor_be64(&c);
    h->refcount_table_offset = qc_cursor_be64(&c);
    h->refcount_table_clusters = qc_cursor_be32(&c);
    h->nb_snapshots = qc_cursor_be32(&c);
    h->snapshots_offset = qc_cursor_be64(&c);
    if (c.overrun)
        return false;
    if (h->version < 3) {
        /* v2 has no feature fields; refcounts are implicitly 16 bits. */
        h->refcount_order = 4;
        h->header_length = QC_V2_HEADER_LENGTH;
        return true;
    }
    h->incompatible_features = qc_cursor_be64(&c);
    h->compatible_features = qc_cursor_be64(&c);
    h->autoclear_features = qc_cursor_be64(&c);
    h->refcount_order = qc_cursor_be32(&c);
    h->header_length = qc_cursor_be32(&c);
    if (c.overrun)
        return false;
    /* Optional fields exist only below header_length; absent means zero. */
    if (h->header_length > 104) {
        h->compression_type = qc_cursor_u8(&c);
        for (unsigned i = 0; i < sizeof(h->padding) && 105 + i < h->header_length; i++)
            h->padding[i] = qc_cursor_u8(&c);
        if (c.overrun)
            return false;
    }
    return true;
}

void qc_header_encode(const qc_header *h, uint8_t *buf)
{
    qc_put_be32(buf + 0, h->magic);
    qc_put_be32(buf + 4, h->version);
    qc_put_be64(buf + 8, h->backing_file_offset);
    qc_put_be32(buf + 16, h->backing_file_size);
    qc_put_be32(buf + 20, h->cluster_bits);
    qc_put_be64(buf + 24, h->size);
    qc_put_be32(buf + 32, h->crypt_method);
    qc_put_be32(buf + 36, h->l1_size);
    qc_put_be64(buf + 40, h->l1_table_offset);
    qc_put_be64(buf + 48, h->refcount_table_offset);
    qc_put_be32(buf + 56, h->refcount_table_clusters);
    qc_put_be32(buf + 60, h->nb_snapshots);
    qc_put_be64(buf + 64, h->snapshots_offset);
    if (h->version < 3)
        return;
    qc_put_be64(buf + 72, h->incompatible_features);
    qc_put_be64(buf + 80, h->compatible_features);
    qc_put_be64(buf + 88, h->autoclear_features);
    qc_put_be32(buf + 96, h->refcount_order);
    qc_put_be32(buf + 100, h->header_length);
    if (h->header_length > 104) {
        buf[104] = h->compression_type;
        for (unsigned i = 0; i < sizeof(h->padding) && 105 + i < h->header_length; i++)
            buf[105 + i] = h->padding[i];
    }
}

void qc_feature_name_decode(const uint8_t *p, qc_feature_name *out)
{
    out->type = p[0];
    out->bit = p[1];
    memcpy(out->name, p + 2, 46);
    out->name[46] = '\0';
}

void qc_bitmaps_ext_decode(const uint8_t *p, qc_bitmaps_ext *out)
{
    out->nb_bitmaps = qc_be32(p);
    out->reserved = qc_be32(p + 4);
    out->directory_size = qc_be64(p + 8);
    out->directory_offset = qc_be64(p + 16);
}

void qc_luks_header_decode(const uint8_t *p, qc_luks_header *out)
{
    memcpy(out->magic, p, sizeof(out->magic));
    out->version = qc_be16(p + QC_LUKS_OFF_VERSION);
    memcpy(out->cipher_name, p + QC_LUKS_OFF_CIPHER_NAME, QC_LUKS_NAME_SIZE);
    memcpy(out->cipher_mode, p + QC_LUKS_OFF_CIPHER_MODE, QC_LUKS_NAME_SIZE);
    memcpy(out->hash_spec, p + QC_LUKS_OFF_HASH_SPEC, QC_LUKS_NAME_SIZE);
    out->payload_offset = qc_be32(p + QC_LUKS_OFF_PAYLOAD);
    out->key_bytes = qc_be32(p + QC_LUKS_OFF_KEY_BYTES);
    out->master_key_iterations = qc_be32(p + QC_LUKS_OFF_ITERATIONS);
    for (unsigned i = 0; i < QC_LUKS_KEY_SLOTS; i++) {
        const uint8_t *s = p + QC_LUKS_OFF_SLOTS + i * QC_LUKS_SLOT_SIZE;
        out->slots[i].active = qc_be32(s);
        out->slots[i].iterations = qc_be32(s + 4);
        out->slots[i].key_offset = qc_be32(s + 40);
        out->slots[i].stripes = qc_be32(s + 44);
    }
}

void qc_geometry_init(qc_geometry *g, unsigned cluster_bits, unsigned refcount_order,
                      bool extended_l2)
{
    g->cluster_bits = cluster_bits;
    g->cluster_size = 1ull << cluster_bits;
    g->extended_l2 = extended_l2;
    g->l2_entry_size = extended_l2 ? 16 : 8;
    g->l2_entries = g->cluster_size / g->l2_entry_size;
    g->refcount_bits = 1u << refcount_order;
    g->refcount_max = g->refcount_bits == 64 ? UINT64_MAX : (1ull << g->refcount_bits) - 1;
    g->refblock_entries = g->cluster_size * 8 / g->refcount_bits;
    g->csize_shift = 62 - (cluster_bits - 8);
    g->csize_mask = (1ull << (cluster_bits - 8)) - 1;
    g->coffset_mask = (1ull << g->csize_shift) - 1;
}

uint64_t qc_l1_entries_needed(const qc_geometry *g, uint64_t size)
{
    /* Bytes one L1 entry maps: cluster_size * l2_entries <= 2^42. */
    return qc_div_round_up(size, g->cluster_size * g->l2_entries);
}

void qc_compressed_decode(const qc_geometry *g, uint64_t entry, qc_compressed *out)
{
    uint64_t sectors = ((entry >> g->csize_shift) & g->csize_mask) + 1;
    out->host_offset = entry & g->coffset_mask;
    out->length = sectors * 512 - (out->host_offset & 511);
    out->high_bits = (out->host_offset >> 56) != 0;
}

uint64_t qc_compressed_encode(const qc_geometry *g, uint64_t host_offset, uint64_t sectors)
{
    return QC_OFLAG_COMPRESSED | ((sectors & g->csize_mask) << g->csize_shift) |
           (host_offset & g->coffset_mask);
}

uint64_t qc_refblock_get(const uint8_t *block, unsigned bits, uint64_t index)
{
    switch (bits) {
    case 1:
    case 2:
    case 4: {
        unsigned per_byte = 8 / bits;
        unsigned shift = (unsigned)(index % per_byte) * bits;
        return (block[index / per_byte] >> shift) & ((1u << bits) - 1);
    }
    case 8:
        return block[index];
    case 16:
        return qc_be16(block + index * 2);
    case 32:
        return qc_be32(block + index * 4);
    default:
        return qc_be64(block + index * 8);
    }
}

void qc_refblock_set(uint8_t *block, unsigned bits, uint64_t index, uint64_t value)
{
    switch (bits) {
    case 1:
    case 2:
    case 4: {
        unsigned per_byte = 8 / bits;
        unsigned shift = (unsigned)(index % per_byte) * bits;
        unsigned mask = ((1u << bits) - 1) << shift;
        uint8_t *p = &block[index / per_byte];
        *p = (uint8_t)((*p & ~mask) | (((unsigned)value << shift) & mask));
        break;
    }
    case 8:
        block[index] = (uint8_t)value;
        break;
    case 16:
        qc_put_be16(block + index * 2, (uint16_t)value);
        break;
    case 32:
        qc_put_be32(block + index * 4, (uint32_t)value);
        break;
    default:
        qc_put_be64(block + index * 8, value);
        break;
    }
}

static size_t pad8(size_t n)
{
    return (n + 7) & ~(size_t)7;
}

/* The fixed 40 bytes of a snapshot entry. */
static void decode_snapshot_fixed(qc_cursor *c, qc_snapshot_entry *e)
{
    memset(e, 0, sizeof(*e));
    e->l1_table_offset = qc_cursor_be64(c);
    e->l1_size = qc_cursor_be32(c);
    e->id_str_size = qc_cursor_be16(c);
    e->name_size = qc_cursor_be16(c);
    e->date_sec = qc_cursor_be32(c);
    e->date_nsec = qc_cursor_be32(c);
    e->vm_clock_nsec = qc_cursor_be64(c);
    e->vm_state_size = qc_cursor_be32(c);
    e->extra_data_size = qc_cursor_be32(c);
}

/* The known extra fields among the first `have` bytes of extra data. */
static void decode_snapshot_known_extra(const uint8_t *extra, uint64_t have, qc_snapshot_entry *e)
{
    if (have >= 8) {
        e->has_vm_state_size_large = true;
        e->vm_state_size_large = qc_be64(extra);
    }
    if (have >= 16) {
        e->has_disk_size = true;
        e->disk_size = qc_be64(extra + 8);
    }
    if (have >= 24) {
        e->has_icount = true;
        e->icount = qc_be64(extra + 16);
    }
}

bool qc_snapshot_decode(qc_cursor *c, qc_snapshot_entry *e)
{
    size_t start = c->pos;
    decode_snapshot_fixed(c, e);
    if (c->overrun)
        return false;
    const uint8_t *extra = qc_cursor_take(c, e->extra_data_size);
    e->id = qc_cursor_take(c, e->id_str_size);
    e->name = qc_cursor_take(c, e->name_size);
    if (c->overrun)
        return false;
    decode_snapshot_known_extra(extra, e->extra_data_size, e);
    if (e->extra_data_size > 24) {
        e->unknown_extra = extra + 24;
        e->unknown_extra_size = e->extra_data_size - 24;
    }
    size_t used = c->pos - start;
    e->entry_size = pad8(used);
    /* Padding may be missing after the last entry at the end of the file. */
    qc_cursor_take(c, e->entry_size - used);
    if (c->overrun) {
        c->overrun = false;
        c->pos = c->len;
    }
    return true;
}

bool qc_snapshot_decode_truncated(qc_cursor *c, qc_snapshot_entry *e, bool *id_lost,
                                  bool *name_lost)
{
    decode_snapshot_fixed(c, e);
    if (c->overrun)
        return false;
    size_t start = c->pos, have = c->len - start;
    const uint8_t *extra = c->buf + start;
    uint64_t known = e->extra_data_size < 24 ? e->extra_data_size : 24;
    decode_snapshot_known_extra(extra, known < have ? known : have, e);
    /* Offsets inside the buffer, from the start of the extra data. */
    uint64_t id_at = e->extra_data_size, name_at = id_at + e->id_str_size;
    *id_lost = e->id_str_size && name_at > have;
    *name_lost = e->name_size && name_at + e->name_size > have;
    if (*id_lost)
        e->id_str_size = 0;
    else
        e->id = c->buf + start + id_at;
    if (*name_lost)
        e->name_size = 0;
    else
        e->name = c->buf + start + name_at;
    e->entry_size = pad8(QC_SNAPSHOT_FIXED_SIZE + have);
    c->pos = c->len;
    return true;
}

size_t qc_snapshot_encode(const qc_snapshot_entry *e, uint8_t *buf, size_t len)
{
    size_t extra = e->unknown_extra_size ? 24 + (size_t)e->unknown_extra_size
                   : e->has_icount       ? 24
                   : e->has_disk_size    ? 16
                   : e->has_vm_state_size_large ? 8
                                                : 0;
    size_t size = pad8(QC_SNAPSHOT_FIXED_SIZE + extra + e->id_str_size + e->name_size);
    if (size > len)
        return 0;
    memset(buf, 0, size);
    qc_put_be64(buf, e->l1_table_offset);
    qc_put_be32(buf + 8, e->l1_size);
    qc_put_be16(buf + 12, e->id_str_size);
    qc_put_be16(buf + 14, e->name_size);
    qc_put_be32(buf + 16, e->date_sec);
    qc_put_be32(buf + 20, e->date_nsec);
    qc_put_be64(buf + 24, e->vm_clock_nsec);
    qc_put_be32(buf + 32, e->vm_state_size);
    qc_put_be32(buf + 36, (uint32_t)extra);
    uint8_t *p = buf + QC_SNAPSHOT_FIXED_SIZE;
    if (extra >= 8)
        qc_put_be64(p, e->vm_state_size_large);
    if (extra >= 16)
        qc_put_be64(p + 8, e->disk_size);
    if (extra >= 24)
        qc_put_be64(p + 16, e->icount);
    if (e->unknown_extra_size)
        memcpy(p + 24, e->unknown_extra, e->unknown_extra_size);
    p += extra;
    if (e->id_str_size)
        memcpy(p, e->id, e->id_str_size);
    p += e->id_str_size;
    if (e->name_size)
        memcpy(p, e->name, e->name_size);
    return size;
}

bool qc_bitmap_entry_decode(qc_cursor *c, qc_bitmap_entry *e)
{
    memset(e, 0, sizeof(*e));
    size_t start = c->pos;
    e->table_offset = qc_cursor_be64(c);
    e->table_size = qc_cursor_be32(c);
    e->flags = qc_cursor_be32(c);
    e->type = qc_cursor_u8(c);
    e->granularity_bits = qc_cursor_u8(c);
    e->name_size = qc_cursor_be16(c);
    e->extra_data_size = qc_cursor_be32(c);
    if (c->overrun)
        return false;
    qc_cursor_take(c, e->extra_data_size);
    e->name = qc_cursor_take(c, e->name_size);
    size_t used = c->pos - start;
    e->entry_size = pad8(used);
    qc_cursor_take(c, e->entry_size - used);
    return !c->overrun;
}
