/*
 * Unit tests for the on-disk decoders and encoders (layout/bytes.h and
 * layout/format.c). Expected values come from the qcow2 specification
 * (QEMU's docs/interop/qcow2.txt), written out by hand.
 */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bytes.h"
#include "format.h"
#include "runner.h"

/* ---- helpers ------------------------------------------------------------ */

static size_t pad8(size_t n)
{
    return (n + 7) / 8 * 8;
}

/* A deterministic pseudo-random sequence (xorshift64*). */
static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545f4914f6cdd1dull;
}

/* ---- bytes.h ------------------------------------------------------------- */

START_TEST(test_be16_known_bytes)
{
    const uint8_t b[2] = {0x12, 0x34};
    ck_assert_uint_eq(qc_be16(b), 0x1234);
    const uint8_t hi[2] = {0xff, 0x01};
    ck_assert_uint_eq(qc_be16(hi), 0xff01);
    uint8_t out[4] = {0xaa, 0xaa, 0xaa, 0xaa};
    qc_put_be16(out + 1, 0xbeef);
    ck_assert_uint_eq(out[0], 0xaa);
    ck_assert_uint_eq(out[1], 0xbe);
    ck_assert_uint_eq(out[2], 0xef);
    ck_assert_uint_eq(out[3], 0xaa);
}
END_TEST

START_TEST(test_be32_known_bytes)
{
    const uint8_t b[4] = {0x51, 0x46, 0x49, 0xfb};
    ck_assert_uint_eq(qc_be32(b), QC_MAGIC);
    const uint8_t top[4] = {0x80, 0x00, 0x00, 0x01};
    ck_assert_uint_eq(qc_be32(top), 0x80000001u);
    uint8_t out[6];
    memset(out, 0xcc, sizeof(out));
    qc_put_be32(out + 1, 0xdeadbeefu);
    const uint8_t want[6] = {0xcc, 0xde, 0xad, 0xbe, 0xef, 0xcc};
    ck_assert_mem_eq(out, want, sizeof(want));
}
END_TEST

START_TEST(test_be64_known_bytes)
{
    const uint8_t b[8] = {0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef};
    ck_assert_uint_eq(qc_be64(b), 0x0123456789abcdefull);
    const uint8_t top[8] = {0xff, 0, 0, 0, 0, 0, 0, 0xfe};
    ck_assert_uint_eq(qc_be64(top), 0xff000000000000feull);
    uint8_t out[10];
    memset(out, 0x5a, sizeof(out));
    qc_put_be64(out + 1, 0x8000000000000001ull);
    const uint8_t want[10] = {0x5a, 0x80, 0, 0, 0, 0, 0, 0, 0x01, 0x5a};
    ck_assert_mem_eq(out, want, sizeof(want));
}
END_TEST

START_TEST(test_be_round_trips)
{
    uint64_t s = 0x9e3779b97f4a7c15ull;
    uint8_t buf[8];
    for (int i = 0; i < 2000; i++) {
        uint64_t v = rng_next(&s);
        qc_put_be16(buf, (uint16_t)v);
        ck_assert_uint_eq(qc_be16(buf), (uint16_t)v);
        ck_assert_uint_eq(buf[0], (uint8_t)(v >> 8));
        qc_put_be32(buf, (uint32_t)v);
        ck_assert_uint_eq(qc_be32(buf), (uint32_t)v);
        ck_assert_uint_eq(buf[0], (uint8_t)(v >> 24));
        qc_put_be64(buf, v);
        ck_assert_uint_eq(qc_be64(buf), v);
        ck_assert_uint_eq(buf[0], (uint8_t)(v >> 56));
        ck_assert_uint_eq(buf[7], (uint8_t)v);
    }
    /* Edges. */
    const uint64_t edges[] = {0, 1, UINT16_MAX, UINT32_MAX, UINT64_MAX, 1ull << 63, 1ull << 31};
    for (size_t i = 0; i < sizeof(edges) / sizeof(edges[0]); i++) {
        qc_put_be64(buf, edges[i]);
        ck_assert_uint_eq(qc_be64(buf), edges[i]);
    }
}
END_TEST

START_TEST(test_checked_arithmetic)
{
    uint64_t r = 0;
    ck_assert(qc_add_ok(1, 2, &r));
    ck_assert_uint_eq(r, 3);
    ck_assert(qc_add_ok(UINT64_MAX - 1, 1, &r));
    ck_assert_uint_eq(r, UINT64_MAX);
    ck_assert(!qc_add_ok(UINT64_MAX, 1, &r));
    ck_assert(qc_mul_ok(1ull << 31, 1ull << 32, &r));
    ck_assert_uint_eq(r, 1ull << 63);
    ck_assert(!qc_mul_ok(1ull << 32, 1ull << 32, &r));
    ck_assert(qc_range_within(0, 10, 10));
    ck_assert(qc_range_within(10, 0, 10));
    ck_assert(!qc_range_within(11, 0, 10));
    ck_assert(!qc_range_within(5, 6, 10));
    ck_assert(!qc_range_within(1, UINT64_MAX, 10));
    ck_assert(!qc_range_within(UINT64_MAX, 2, UINT64_MAX));
    ck_assert_uint_eq(qc_div_round_up(0, 512), 0);
    ck_assert_uint_eq(qc_div_round_up(1, 512), 1);
    ck_assert_uint_eq(qc_div_round_up(512, 512), 1);
    ck_assert_uint_eq(qc_div_round_up(513, 512), 2);
    ck_assert_uint_eq(qc_div_round_up(UINT64_MAX, 2), 1ull << 63);
}
END_TEST

START_TEST(test_cursor_reads)
{
    const uint8_t b[15] = {0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08,
                           0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f};
    qc_cursor c = qc_cursor_make(b, sizeof(b));
    ck_assert_uint_eq(qc_cursor_remaining(&c), 15);
    ck_assert_uint_eq(qc_cursor_u8(&c), 0x01);
    ck_assert_uint_eq(qc_cursor_be16(&c), 0x0203);
    ck_assert_uint_eq(qc_cursor_be32(&c), 0x04050607u);
    ck_assert_uint_eq(qc_cursor_be64(&c), 0x08090a0b0c0d0e0full);
    ck_assert(!c.overrun);
    ck_assert_uint_eq(c.pos, 15);
    ck_assert_uint_eq(qc_cursor_remaining(&c), 0);
    /* Zero bytes at the very end is still fine. */
    ck_assert_ptr_nonnull(qc_cursor_take(&c, 0));
    ck_assert(!c.overrun);
}
END_TEST

START_TEST(test_cursor_overrun_latches)
{
    const uint8_t b[6] = {0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff};
    qc_cursor c = qc_cursor_make(b, sizeof(b));
    ck_assert_uint_eq(qc_cursor_be32(&c), 0xaabbccddu);
    /* Only two bytes left: a 4-byte read fails, returns 0, leaves pos. */
    ck_assert_uint_eq(qc_cursor_be32(&c), 0);
    ck_assert(c.overrun);
    ck_assert_uint_eq(c.pos, 4);
    ck_assert_uint_eq(qc_cursor_remaining(&c), 0);
    /* Latched: even reads that would fit now fail. */
    ck_assert_uint_eq(qc_cursor_u8(&c), 0);
    ck_assert_uint_eq(qc_cursor_be16(&c), 0);
    ck_assert_ptr_null(qc_cursor_take(&c, 0));
    ck_assert_ptr_null(qc_cursor_take(&c, 1));
    ck_assert(c.overrun);
    ck_assert_uint_eq(c.pos, 4);
}
END_TEST

START_TEST(test_cursor_take)
{
    const uint8_t b[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    qc_cursor c = qc_cursor_make(b, sizeof(b));
    const uint8_t *p = qc_cursor_take(&c, 3);
    ck_assert_ptr_eq(p, b);
    ck_assert_uint_eq(c.pos, 3);
    /* Past the end: NULL, overrun, position unchanged. */
    ck_assert_ptr_null(qc_cursor_take(&c, 6));
    ck_assert(c.overrun);
    ck_assert_uint_eq(c.pos, 3);

    /* A huge length must not wrap around. */
    qc_cursor d = qc_cursor_make(b, sizeof(b));
    qc_cursor_take(&d, 4);
    ck_assert_ptr_null(qc_cursor_take(&d, SIZE_MAX));
    ck_assert(d.overrun);
    ck_assert_uint_eq(d.pos, 4);

    /* Exactly the rest works. */
    qc_cursor e = qc_cursor_make(b, sizeof(b));
    qc_cursor_take(&e, 2);
    ck_assert_ptr_eq(qc_cursor_take(&e, 6), b + 2);
    ck_assert(!e.overrun);

    /* An empty cursor. */
    qc_cursor z = qc_cursor_make(NULL, 0);
    ck_assert_uint_eq(qc_cursor_be64(&z), 0);
    ck_assert(z.overrun);
}
END_TEST

/* ---- header ---------------------------------------------------------------- */

static qc_header sample_header(uint32_t version, uint32_t header_length)
{
    qc_header h;
    memset(&h, 0, sizeof(h));
    h.magic = QC_MAGIC;
    h.version = version;
    h.backing_file_offset = 0x1122334455667788ull;
    h.backing_file_size = 0x99aabbccu;
    h.cluster_bits = 16;
    h.size = 0x0000010000000000ull;
    h.crypt_method = 2;
    h.l1_size = 0x12345678u;
    h.l1_table_offset = 0x30000;
    h.refcount_table_offset = 0x10000;
    h.refcount_table_clusters = 7;
    h.nb_snapshots = 0x01020304u;
    h.snapshots_offset = 0xfedcba9876543210ull;
    h.incompatible_features = 0x8000000000000011ull;
    h.compatible_features = 0x0102030405060708ull;
    h.autoclear_features = 0xa0b0c0d0e0f00102ull;
    h.refcount_order = 5;
    h.header_length = header_length;
    h.compression_type = 1;
    for (unsigned i = 0; i < sizeof(h.padding); i++)
        h.padding[i] = (uint8_t)(0x70 + i);
    return h;
}

static void assert_common_fields(const qc_header *a, const qc_header *b)
{
    ck_assert_uint_eq(a->magic, b->magic);
    ck_assert_uint_eq(a->version, b->version);
    ck_assert_uint_eq(a->backing_file_offset, b->backing_file_offset);
    ck_assert_uint_eq(a->backing_file_size, b->backing_file_size);
    ck_assert_uint_eq(a->cluster_bits, b->cluster_bits);
    ck_assert_uint_eq(a->size, b->size);
    ck_assert_uint_eq(a->crypt_method, b->crypt_method);
    ck_assert_uint_eq(a->l1_size, b->l1_size);
    ck_assert_uint_eq(a->l1_table_offset, b->l1_table_offset);
    ck_assert_uint_eq(a->refcount_table_offset, b->refcount_table_offset);
    ck_assert_uint_eq(a->refcount_table_clusters, b->refcount_table_clusters);
    ck_assert_uint_eq(a->nb_snapshots, b->nb_snapshots);
    ck_assert_uint_eq(a->snapshots_offset, b->snapshots_offset);
}

START_TEST(test_header_layout_by_hand)
{
    /* Encode, then read the fields back at their spec offsets. */
    qc_header h = sample_header(3, 112);
    uint8_t buf[128];
    memset(buf, 0xee, sizeof(buf));
    qc_header_encode(&h, buf);
    ck_assert_uint_eq(qc_be32(buf + 0), QC_MAGIC);
    ck_assert_uint_eq(buf[0], 'Q');
    ck_assert_uint_eq(buf[1], 'F');
    ck_assert_uint_eq(buf[2], 'I');
    ck_assert_uint_eq(buf[3], 0xfb);
    ck_assert_uint_eq(qc_be32(buf + 4), 3);
    ck_assert_uint_eq(qc_be64(buf + 8), h.backing_file_offset);
    ck_assert_uint_eq(qc_be32(buf + 16), h.backing_file_size);
    ck_assert_uint_eq(qc_be32(buf + 20), 16);
    ck_assert_uint_eq(qc_be64(buf + 24), h.size);
    ck_assert_uint_eq(qc_be32(buf + 32), 2);
    ck_assert_uint_eq(qc_be32(buf + 36), h.l1_size);
    ck_assert_uint_eq(qc_be64(buf + 40), 0x30000);
    ck_assert_uint_eq(qc_be64(buf + 48), 0x10000);
    ck_assert_uint_eq(qc_be32(buf + 56), 7);
    ck_assert_uint_eq(qc_be32(buf + 60), h.nb_snapshots);
    ck_assert_uint_eq(qc_be64(buf + 64), h.snapshots_offset);
    ck_assert_uint_eq(qc_be64(buf + 72), h.incompatible_features);
    ck_assert_uint_eq(qc_be64(buf + 80), h.compatible_features);
    ck_assert_uint_eq(qc_be64(buf + 88), h.autoclear_features);
    ck_assert_uint_eq(qc_be32(buf + 96), 5);
    ck_assert_uint_eq(qc_be32(buf + 100), 112);
    ck_assert_uint_eq(buf[104], 1);
    for (unsigned i = 0; i < 7; i++)
        ck_assert_uint_eq(buf[105 + i], 0x70 + i);
    /* Bytes past 112 are left alone. */
    for (unsigned i = 112; i < sizeof(buf); i++)
        ck_assert_uint_eq(buf[i], 0xee);
}
END_TEST

START_TEST(test_header_v2_round_trip)
{
    qc_header h = sample_header(2, 0);
    uint8_t buf[128];
    memset(buf, 0xee, sizeof(buf));
    qc_header_encode(&h, buf);
    /* A v2 encoder writes exactly 72 bytes. */
    for (unsigned i = 72; i < sizeof(buf); i++)
        ck_assert_uint_eq(buf[i], 0xee);
    qc_header d;
    ck_assert(qc_header_decode(buf, 72, &d));
    assert_common_fields(&d, &h);
    /* v2 implies 16-bit refcounts and a 72-byte header; no feature fields. */
    ck_assert_uint_eq(d.refcount_order, 4);
    ck_assert_uint_eq(d.header_length, 72);
    ck_assert_uint_eq(d.incompatible_features, 0);
    ck_assert_uint_eq(d.compatible_features, 0);
    ck_assert_uint_eq(d.autoclear_features, 0);
    ck_assert_uint_eq(d.compression_type, 0);
    /* Trailing bytes (0xee) do not leak into a v2 decode. */
    qc_header d2;
    ck_assert(qc_header_decode(buf, sizeof(buf), &d2));
    ck_assert_uint_eq(d2.incompatible_features, 0);
    ck_assert_uint_eq(d2.refcount_order, 4);
    ck_assert_uint_eq(d2.header_length, 72);
    for (unsigned i = 0; i < 7; i++)
        ck_assert_uint_eq(d2.padding[i], 0);
}
END_TEST

START_TEST(test_header_v3_104_round_trip)
{
    qc_header h = sample_header(3, 104);
    uint8_t buf[128];
    memset(buf, 0xee, sizeof(buf));
    qc_header_encode(&h, buf);
    /* No compression_type byte in a 104-byte header. */
    for (unsigned i = 104; i < sizeof(buf); i++)
        ck_assert_uint_eq(buf[i], 0xee);
    qc_header d;
    ck_assert(qc_header_decode(buf, 104, &d));
    assert_common_fields(&d, &h);
    ck_assert_uint_eq(d.incompatible_features, h.incompatible_features);
    ck_assert_uint_eq(d.compatible_features, h.compatible_features);
    ck_assert_uint_eq(d.autoclear_features, h.autoclear_features);
    ck_assert_uint_eq(d.refcount_order, 5);
    ck_assert_uint_eq(d.header_length, 104);
    /* Absent optional field reads as zero even if bytes follow. */
    ck_assert_uint_eq(d.compression_type, 0);
    ck_assert(qc_header_decode(buf, sizeof(buf), &d));
    ck_assert_uint_eq(d.compression_type, 0);
    for (unsigned i = 0; i < 7; i++)
        ck_assert_uint_eq(d.padding[i], 0);
}
END_TEST

START_TEST(test_header_v3_112_round_trip)
{
    qc_header h = sample_header(3, 112);
    uint8_t buf[112];
    qc_header_encode(&h, buf);
    qc_header d;
    ck_assert(qc_header_decode(buf, sizeof(buf), &d));
    assert_common_fields(&d, &h);
    ck_assert_uint_eq(d.incompatible_features, h.incompatible_features);
    ck_assert_uint_eq(d.compatible_features, h.compatible_features);
    ck_assert_uint_eq(d.autoclear_features, h.autoclear_features);
    ck_assert_uint_eq(d.refcount_order, h.refcount_order);
    ck_assert_uint_eq(d.header_length, 112);
    ck_assert_uint_eq(d.compression_type, 1);
    ck_assert_mem_eq(d.padding, h.padding, sizeof(h.padding));
    /* And re-encoding gives the same bytes. */
    uint8_t again[112];
    qc_header_encode(&d, again);
    ck_assert_mem_eq(again, buf, sizeof(buf));
}
END_TEST

START_TEST(test_header_v3_partial_padding)
{
    /* header_length 108: compression_type and padding bytes 105..107 only. */
    qc_header h = sample_header(3, 108);
    uint8_t buf[120];
    memset(buf, 0xee, sizeof(buf));
    qc_header_encode(&h, buf);
    ck_assert_uint_eq(buf[104], 1);
    ck_assert_uint_eq(buf[105], 0x70);
    ck_assert_uint_eq(buf[107], 0x72);
    ck_assert_uint_eq(buf[108], 0xee);
    qc_header d;
    ck_assert(qc_header_decode(buf, 108, &d));
    ck_assert_uint_eq(d.compression_type, 1);
    ck_assert_uint_eq(d.padding[0], 0x70);
    ck_assert_uint_eq(d.padding[2], 0x72);
    ck_assert_uint_eq(d.padding[3], 0);
    ck_assert_uint_eq(d.padding[6], 0);
    /* Larger header lengths still read only up to byte 111. */
    qc_header big = sample_header(3, 4096);
    uint8_t b2[112];
    qc_header_encode(&big, b2);
    ck_assert(qc_header_decode(b2, sizeof(b2), &d));
    ck_assert_uint_eq(d.header_length, 4096);
    ck_assert_mem_eq(d.padding, big.padding, 7);
}
END_TEST

START_TEST(test_header_truncated)
{
    uint8_t buf[112];
    qc_header d;

    qc_header v2 = sample_header(2, 0);
    qc_header_encode(&v2, buf);
    for (size_t len = 0; len < 72; len++)
        ck_assert_msg(!qc_header_decode(buf, len, &d), "v2 decoded from %zu bytes", len);
    ck_assert(qc_header_decode(buf, 72, &d));

    qc_header v3 = sample_header(3, 104);
    qc_header_encode(&v3, buf);
    for (size_t len = 0; len < 104; len++)
        ck_assert_msg(!qc_header_decode(buf, len, &d), "v3/104 decoded from %zu bytes", len);
    ck_assert(qc_header_decode(buf, 104, &d));

    qc_header v3l = sample_header(3, 112);
    qc_header_encode(&v3l, buf);
    for (size_t len = 0; len < 112; len++)
        ck_assert_msg(!qc_header_decode(buf, len, &d), "v3/112 decoded from %zu bytes", len);
    ck_assert(qc_header_decode(buf, 112, &d));

    /* What could be read is kept on failure. */
    ck_assert(!qc_header_decode(buf, 80, &d));
    ck_assert_uint_eq(d.magic, QC_MAGIC);
    ck_assert_uint_eq(d.version, 3);
    ck_assert_uint_eq(d.snapshots_offset, v3l.snapshots_offset);
}
END_TEST

/* ---- geometry -------------------------------------------------------------- */

START_TEST(test_geometry_cluster_bits)
{
    unsigned cb = (unsigned)_i;
    for (unsigned ext = 0; ext < 2; ext++) {
        for (unsigned order = 0; order <= 6; order++) {
            qc_geometry g;
            memset(&g, 0xa5, sizeof(g));
            qc_geometry_init(&g, cb, order, ext != 0);
            uint64_t cs = 1;
            for (unsigned i = 0; i < cb; i++)
                cs *= 2;
            ck_assert_uint_eq(g.cluster_bits, cb);
            ck_assert_uint_eq(g.cluster_size, cs);
            ck_assert(g.extended_l2 == (ext != 0));
            ck_assert_uint_eq(g.l2_entry_size, ext ? 16 : 8);
            ck_assert_uint_eq(g.l2_entries, ext ? cs / 16 : cs / 8);
            unsigned bits = 1u << order;
            ck_assert_uint_eq(g.refcount_bits, bits);
            ck_assert_uint_eq(g.refblock_entries, cs * 8 / bits);
            if (bits == 64)
                ck_assert_uint_eq(g.refcount_max, UINT64_MAX);
            else
                ck_assert_uint_eq(g.refcount_max, (1ull << bits) - 1);
            /* Compressed descriptor: x = 62 - (cluster_bits - 8). */
            unsigned x = 62 - (cb - 8);
            ck_assert_uint_eq(g.csize_shift, x);
            ck_assert_uint_eq(g.coffset_mask, (1ull << x) - 1);
            ck_assert_uint_eq(g.csize_mask, (1ull << (cb - 8)) - 1);
            /* Offset and sector fields tile bits 0..61 exactly. */
            uint64_t sect = g.csize_mask << g.csize_shift;
            ck_assert_uint_eq(sect & g.coffset_mask, 0);
            ck_assert_uint_eq(sect | g.coffset_mask, (1ull << 62) - 1);
            /* The sector field can describe a whole cluster plus one sector. */
            ck_assert_uint_eq((g.csize_mask + 1) * 512, cs * 2);
        }
    }
}
END_TEST

START_TEST(test_geometry_known_values)
{
    qc_geometry g;
    /* The QEMU default: 64 KiB clusters, 16-bit refcounts. */
    qc_geometry_init(&g, 16, 4, false);
    ck_assert_uint_eq(g.cluster_size, 65536);
    ck_assert_uint_eq(g.l2_entries, 8192);
    ck_assert_uint_eq(g.refblock_entries, 32768);
    ck_assert_uint_eq(g.refcount_max, 65535);
    ck_assert_uint_eq(g.csize_shift, 54);
    ck_assert_uint_eq(g.csize_mask, 0xff);
    ck_assert_uint_eq(g.coffset_mask, 0x003fffffffffffffull);

    qc_geometry_init(&g, 9, 0, false);
    ck_assert_uint_eq(g.l2_entries, 64);
    ck_assert_uint_eq(g.refblock_entries, 4096);
    ck_assert_uint_eq(g.refcount_max, 1);
    ck_assert_uint_eq(g.csize_shift, 61);
    ck_assert_uint_eq(g.csize_mask, 1);
    ck_assert_uint_eq(g.coffset_mask, 0x1fffffffffffffffull);

    qc_geometry_init(&g, 21, 6, true);
    ck_assert_uint_eq(g.cluster_size, 2u << 20);
    ck_assert_uint_eq(g.l2_entries, 131072);
    ck_assert_uint_eq(g.refblock_entries, 262144);
    ck_assert_uint_eq(g.refcount_max, UINT64_MAX);
    ck_assert_uint_eq(g.csize_shift, 49);
    ck_assert_uint_eq(g.csize_mask, 0x1fff);

    qc_geometry_init(&g, 14, 3, true);
    ck_assert_uint_eq(g.l2_entries, 1024);
    ck_assert_uint_eq(g.refblock_entries, 16384);
    ck_assert_uint_eq(g.refcount_max, 255);
}
END_TEST

START_TEST(test_l1_entries_needed)
{
    qc_geometry g;
    qc_geometry_init(&g, 16, 4, false);
    const uint64_t per = 65536ull * 8192; /* 512 MiB per L1 entry */
    ck_assert_uint_eq(qc_l1_entries_needed(&g, 0), 0);
    ck_assert_uint_eq(qc_l1_entries_needed(&g, 1), 1);
    ck_assert_uint_eq(qc_l1_entries_needed(&g, per - 1), 1);
    ck_assert_uint_eq(qc_l1_entries_needed(&g, per), 1);
    ck_assert_uint_eq(qc_l1_entries_needed(&g, per + 1), 2);
    ck_assert_uint_eq(qc_l1_entries_needed(&g, 4ull << 40), 8192);
    ck_assert_uint_eq(qc_l1_entries_needed(&g, UINT64_MAX), 1ull << 35);

    qc_geometry_init(&g, 16, 4, true); /* half the entries per L2 */
    ck_assert_uint_eq(qc_l1_entries_needed(&g, per), 2);
    ck_assert_uint_eq(qc_l1_entries_needed(&g, per / 2), 1);

    qc_geometry_init(&g, 9, 0, false); /* 64 entries x 512 bytes */
    ck_assert_uint_eq(qc_l1_entries_needed(&g, 32768), 1);
    ck_assert_uint_eq(qc_l1_entries_needed(&g, 32769), 2);
    ck_assert_uint_eq(qc_l1_entries_needed(&g, UINT64_MAX), 1ull << 49);

    qc_geometry_init(&g, 21, 0, false); /* 2^18 entries x 2 MiB = 2^39 */
    ck_assert_uint_eq(qc_l1_entries_needed(&g, 1ull << 39), 1);
    ck_assert_uint_eq(qc_l1_entries_needed(&g, UINT64_MAX), 1ull << 25);
}
END_TEST

/* ---- compressed descriptors ------------------------------------------------ */

START_TEST(test_compressed_round_trip)
{
    unsigned cb = (unsigned)_i;
    qc_geometry g;
    qc_geometry_init(&g, cb, 4, false);
    uint64_t s = 0x1234567ull + cb;
    for (int n = 0; n < 500; n++) {
        uint64_t off = rng_next(&s) & ((1ull << 56) - 1) & g.coffset_mask;
        uint64_t sectors = rng_next(&s) & g.csize_mask;
        uint64_t e = qc_compressed_encode(&g, off, sectors);
        ck_assert_uint_eq(e & QC_OFLAG_COMPRESSED, QC_OFLAG_COMPRESSED);
        ck_assert_uint_eq(e & QC_OFLAG_COPIED, 0);
        ck_assert_uint_eq((e >> g.csize_shift) & g.csize_mask, sectors);
        qc_compressed c;
        qc_compressed_decode(&g, e, &c);
        ck_assert_uint_eq(c.host_offset, off);
        ck_assert_uint_eq(c.length, (sectors + 1) * 512 - off % 512);
        ck_assert(!c.high_bits);
        /* COPIED (wrongly set) does not change the decoded range. */
        qc_compressed c2;
        qc_compressed_decode(&g, e | QC_OFLAG_COPIED, &c2);
        ck_assert_uint_eq(c2.host_offset, off);
        ck_assert_uint_eq(c2.length, c.length);
    }
    /* Extremes of the sector field. */
    qc_compressed c;
    qc_compressed_decode(&g, qc_compressed_encode(&g, 0x200, 0), &c);
    ck_assert_uint_eq(c.length, 512);
    qc_compressed_decode(&g, qc_compressed_encode(&g, 0x3ff, 0), &c);
    ck_assert_uint_eq(c.length, 1);
    qc_compressed_decode(&g, qc_compressed_encode(&g, 0x10000, g.csize_mask), &c);
    ck_assert_uint_eq(c.length, (g.csize_mask + 1) * 512);
    ck_assert_uint_eq(c.length, 2 * g.cluster_size);
}
END_TEST

START_TEST(test_compressed_by_hand)
{
    qc_geometry g;
    qc_geometry_init(&g, 16, 4, false);
    /* 64 KiB clusters: offset in bits 0..53, sector count in 54..61. */
    uint64_t e = QC_OFLAG_COMPRESSED | (3ull << 54) | 0x50123ull;
    qc_compressed c;
    qc_compressed_decode(&g, e, &c);
    ck_assert_uint_eq(c.host_offset, 0x50123);
    ck_assert_uint_eq(c.length, 4 * 512 - 0x123);
    ck_assert(!c.high_bits);
    ck_assert_uint_eq(qc_compressed_encode(&g, 0x50123, 3), e);

    /* 512-byte clusters: offset bits 0..60, one sector bit (61). */
    qc_geometry_init(&g, 9, 4, false);
    e = QC_OFLAG_COMPRESSED | (1ull << 61) | 0x1000ull;
    qc_compressed_decode(&g, e, &c);
    ck_assert_uint_eq(c.host_offset, 0x1000);
    ck_assert_uint_eq(c.length, 1024);
    ck_assert_uint_eq(qc_compressed_encode(&g, 0x1000, 1), e);

    /* 2 MiB clusters: offset bits 0..48, sectors 49..61. */
    qc_geometry_init(&g, 21, 4, false);
    e = QC_OFLAG_COMPRESSED | (0x1fffull << 49) | 0x1fe00ull;
    qc_compressed_decode(&g, e, &c);
    ck_assert_uint_eq(c.host_offset, 0x1fe00);
    ck_assert_uint_eq(c.length, 0x2000ull * 512);
}
END_TEST

START_TEST(test_compressed_high_bits)
{
    unsigned cb = (unsigned)_i;
    qc_geometry g;
    qc_geometry_init(&g, cb, 4, false);
    unsigned x = 62 - (cb - 8);
    qc_compressed c;
    /* Highest offset bit the spec allows (55) is fine. */
    uint64_t ok = (1ull << 55) & g.coffset_mask;
    qc_compressed_decode(&g, QC_OFLAG_COMPRESSED | ok, &c);
    ck_assert(!c.high_bits);
    for (unsigned bit = 56; bit < x; bit++) {
        qc_compressed_decode(&g, QC_OFLAG_COMPRESSED | (1ull << bit) | 0x200, &c);
        ck_assert_msg(c.high_bits, "cluster_bits %u offset bit %u not detected", cb, bit);
        ck_assert_uint_eq(c.host_offset, (1ull << bit) | 0x200);
    }
    /* With x <= 56 the offset field cannot reach bit 56 at all: every bit
     * above the field belongs to the sector count. */
    if (x <= 56) {
        qc_compressed_decode(&g, QC_OFLAG_COMPRESSED | ((1ull << 62) - 1), &c);
        ck_assert(!c.high_bits);
        ck_assert_uint_eq(c.host_offset, (1ull << x) - 1);
    }
}
END_TEST

/* ---- refcount blocks ------------------------------------------------------- */

START_TEST(test_refblock_by_hand_sub_byte)
{
    uint8_t b[4];

    /* 1 bit: entry i is bit i%8 of byte i/8, LSB first. */
    memset(b, 0, sizeof(b));
    qc_refblock_set(b, 1, 0, 1);
    qc_refblock_set(b, 1, 3, 1);
    qc_refblock_set(b, 1, 8, 1);
    qc_refblock_set(b, 1, 15, 1);
    ck_assert_uint_eq(b[0], 0x09);
    ck_assert_uint_eq(b[1], 0x81);
    ck_assert_uint_eq(b[2], 0);
    const uint8_t one[2] = {0x80, 0x02};
    for (unsigned i = 0; i < 16; i++)
        ck_assert_uint_eq(qc_refblock_get(one, 1, i), i == 7 || i == 9);

    /* 2 bits: four entries per byte, entry 0 in bits 0-1. */
    memset(b, 0, sizeof(b));
    qc_refblock_set(b, 2, 0, 3);
    qc_refblock_set(b, 2, 1, 1);
    qc_refblock_set(b, 2, 3, 2);
    qc_refblock_set(b, 2, 6, 1);
    ck_assert_uint_eq(b[0], 0x87);
    ck_assert_uint_eq(b[1], 0x10);
    const uint8_t two[1] = {0xe4}; /* 11 10 01 00 */
    for (unsigned i = 0; i < 4; i++)
        ck_assert_uint_eq(qc_refblock_get(two, 2, i), i);

    /* 4 bits: entry 0 in the low nibble. */
    memset(b, 0, sizeof(b));
    qc_refblock_set(b, 4, 0, 0xa);
    qc_refblock_set(b, 4, 1, 0x5);
    qc_refblock_set(b, 4, 3, 0xf);
    ck_assert_uint_eq(b[0], 0x5a);
    ck_assert_uint_eq(b[1], 0xf0);
    const uint8_t four[2] = {0x21, 0x43};
    for (unsigned i = 0; i < 4; i++)
        ck_assert_uint_eq(qc_refblock_get(four, 4, i), i + 1);
}
END_TEST

START_TEST(test_refblock_by_hand_wide)
{
    uint8_t b[32];

    memset(b, 0, sizeof(b));
    qc_refblock_set(b, 8, 2, 0xab);
    ck_assert_uint_eq(b[2], 0xab);
    ck_assert_uint_eq(b[1], 0);
    ck_assert_uint_eq(b[3], 0);

    memset(b, 0, sizeof(b));
    qc_refblock_set(b, 16, 1, 0x1234);
    ck_assert_uint_eq(b[2], 0x12);
    ck_assert_uint_eq(b[3], 0x34);
    const uint8_t w16[4] = {0x00, 0x01, 0xff, 0xfe};
    ck_assert_uint_eq(qc_refblock_get(w16, 16, 0), 1);
    ck_assert_uint_eq(qc_refblock_get(w16, 16, 1), 0xfffe);

    memset(b, 0, sizeof(b));
    qc_refblock_set(b, 32, 1, 0x89abcdefu);
    const uint8_t want32[8] = {0, 0, 0, 0, 0x89, 0xab, 0xcd, 0xef};
    ck_assert_mem_eq(b, want32, 8);
    ck_assert_uint_eq(qc_refblock_get(want32, 32, 1), 0x89abcdefu);

    memset(b, 0, sizeof(b));
    qc_refblock_set(b, 64, 2, 0x0102030405060708ull);
    const uint8_t want64[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    ck_assert_mem_eq(b + 16, want64, 8);
    for (unsigned i = 0; i < 16; i++)
        ck_assert_uint_eq(b[i], 0);
    ck_assert_uint_eq(qc_refblock_get(b, 64, 2), 0x0102030405060708ull);
    qc_refblock_set(b, 64, 3, UINT64_MAX);
    ck_assert_uint_eq(qc_refblock_get(b, 64, 3), UINT64_MAX);
    ck_assert_uint_eq(qc_refblock_get(b, 64, 2), 0x0102030405060708ull);
}
END_TEST

/* For each width, write values at many indexes of a 4 KiB block in a random
 * order and check every entry against a shadow array. */
START_TEST(test_refblock_widths)
{
    unsigned order = (unsigned)_i;
    unsigned bits = 1u << order;
    enum { BLOCK = 4096 };
    uint64_t entries = BLOCK * 8 / bits;
    uint64_t max = bits == 64 ? UINT64_MAX : (1ull << bits) - 1;
    uint8_t *block = calloc(1, BLOCK);
    uint64_t *shadow = calloc(entries, sizeof(uint64_t));
    ck_assert_ptr_nonnull(block);
    ck_assert_ptr_nonnull(shadow);
    uint64_t s = 0xabcdef12345ull + order;
    for (int n = 0; n < 3000; n++) {
        uint64_t idx = rng_next(&s) % entries;
        uint64_t v = rng_next(&s) & max;
        if (n % 7 == 0)
            v = max;
        qc_refblock_set(block, bits, idx, v);
        shadow[idx] = v;
        /* Neighbours untouched right after each write. */
        if (idx > 0)
            ck_assert_uint_eq(qc_refblock_get(block, bits, idx - 1), shadow[idx - 1]);
        if (idx + 1 < entries)
            ck_assert_uint_eq(qc_refblock_get(block, bits, idx + 1), shadow[idx + 1]);
        ck_assert_uint_eq(qc_refblock_get(block, bits, idx), v);
    }
    for (uint64_t i = 0; i < entries; i++)
        ck_assert_msg(qc_refblock_get(block, bits, i) == shadow[i],
                      "width %u entry %llu: got %llu want %llu", bits, (unsigned long long)i,
                      (unsigned long long)qc_refblock_get(block, bits, i),
                      (unsigned long long)shadow[i]);
    /* The first and the last entry of the block. */
    qc_refblock_set(block, bits, 0, 1);
    qc_refblock_set(block, bits, entries - 1, max);
    ck_assert_uint_eq(qc_refblock_get(block, bits, 0), 1);
    ck_assert_uint_eq(qc_refblock_get(block, bits, entries - 1), max);
    if (bits >= 8)
        ck_assert_uint_eq(block[BLOCK - 1], 0xff);
    else
        ck_assert_uint_eq(block[BLOCK - 1] >> (8 - bits), max);
    free(shadow);
    free(block);
}
END_TEST

/* Writing a value wider than the entry keeps the neighbours intact. */
START_TEST(test_refblock_overwide_value)
{
    for (unsigned bits = 1; bits <= 4; bits *= 2) {
        uint8_t b[2] = {0, 0};
        unsigned per = 8 / bits;
        qc_refblock_set(b, bits, 1, UINT64_MAX);
        ck_assert_uint_eq(qc_refblock_get(b, bits, 1), (1u << bits) - 1);
        for (unsigned i = 0; i < 2 * per; i++)
            if (i != 1)
                ck_assert_uint_eq(qc_refblock_get(b, bits, i), 0);
        ck_assert_uint_eq(b[1], 0);
    }
}
END_TEST

/* ---- snapshots ------------------------------------------------------------- */

static qc_snapshot_entry sample_snapshot(unsigned extra, const char *id, const char *name)
{
    qc_snapshot_entry e;
    memset(&e, 0, sizeof(e));
    e.l1_table_offset = 0x123450000ull;
    e.l1_size = 0x10203;
    e.id_str_size = (uint16_t)strlen(id);
    e.name_size = (uint16_t)strlen(name);
    e.date_sec = 0x5f5e1000u;
    e.date_nsec = 999999999u;
    e.vm_clock_nsec = 0x0123456789abcdefull;
    e.vm_state_size = 0xfedcba98u;
    e.extra_data_size = extra;
    e.has_vm_state_size_large = extra >= 8;
    e.has_disk_size = extra >= 16;
    e.has_icount = extra >= 24;
    e.vm_state_size_large = 0x1122334455667788ull;
    e.disk_size = 1ull << 34;
    e.icount = UINT64_MAX;
    e.id = (const uint8_t *)id;
    e.name = (const uint8_t *)name;
    return e;
}

START_TEST(test_snapshot_round_trip)
{
    static const unsigned extras[] = {0, 8, 16, 24};
    static const char *const ids[] = {"", "1", "12", "123456789"};
    static const char *const names[] = {"", "a", "snap", "a-much-longer-snapshot-name"};
    unsigned extra = extras[_i];
    for (size_t k = 0; k < 4; k++) {
        qc_snapshot_entry e = sample_snapshot(extra, ids[k], names[(k + 1) % 4]);
        uint8_t buf[256];
        memset(buf, 0xee, sizeof(buf));
        size_t used = QC_SNAPSHOT_FIXED_SIZE + extra + e.id_str_size + e.name_size;
        size_t size = qc_snapshot_encode(&e, buf, sizeof(buf));
        ck_assert_uint_eq(size, pad8(used));
        ck_assert_uint_eq(size % 8, 0);
        /* Fixed fields at their spec offsets. */
        ck_assert_uint_eq(qc_be64(buf), e.l1_table_offset);
        ck_assert_uint_eq(qc_be32(buf + 8), e.l1_size);
        ck_assert_uint_eq(qc_be16(buf + 12), e.id_str_size);
        ck_assert_uint_eq(qc_be16(buf + 14), e.name_size);
        ck_assert_uint_eq(qc_be32(buf + 36), extra);
        if (extra >= 16)
            ck_assert_uint_eq(qc_be64(buf + 48), e.disk_size);
        ck_assert_mem_eq(buf + 40 + extra, ids[k], e.id_str_size);
        /* Zero padding, and nothing written past the entry. */
        for (size_t i = used; i < size; i++)
            ck_assert_uint_eq(buf[i], 0);
        ck_assert_uint_eq(buf[size], 0xee);

        qc_cursor c = qc_cursor_make(buf, size);
        qc_snapshot_entry d;
        ck_assert(qc_snapshot_decode(&c, &d));
        ck_assert(!c.overrun);
        ck_assert_uint_eq(c.pos, size);
        ck_assert_uint_eq(d.entry_size, size);
        ck_assert_uint_eq(d.l1_table_offset, e.l1_table_offset);
        ck_assert_uint_eq(d.l1_size, e.l1_size);
        ck_assert_uint_eq(d.id_str_size, e.id_str_size);
        ck_assert_uint_eq(d.name_size, e.name_size);
        ck_assert_uint_eq(d.date_sec, e.date_sec);
        ck_assert_uint_eq(d.date_nsec, e.date_nsec);
        ck_assert_uint_eq(d.vm_clock_nsec, e.vm_clock_nsec);
        ck_assert_uint_eq(d.vm_state_size, e.vm_state_size);
        ck_assert_uint_eq(d.extra_data_size, extra);
        ck_assert(d.has_vm_state_size_large == (extra >= 8));
        ck_assert(d.has_disk_size == (extra >= 16));
        ck_assert(d.has_icount == (extra >= 24));
        if (extra >= 8)
            ck_assert_uint_eq(d.vm_state_size_large, e.vm_state_size_large);
        if (extra >= 16)
            ck_assert_uint_eq(d.disk_size, e.disk_size);
        if (extra >= 24)
            ck_assert_uint_eq(d.icount, e.icount);
        ck_assert_mem_eq(d.id, ids[k], d.id_str_size);
        ck_assert_mem_eq(d.name, names[(k + 1) % 4], d.name_size);
        ck_assert_ptr_eq(d.id, buf + 40 + extra);
        ck_assert_ptr_eq(d.name, buf + 40 + extra + d.id_str_size);
    }
}
END_TEST

START_TEST(test_snapshot_encode_too_small)
{
    qc_snapshot_entry e = sample_snapshot(16, "1", "snap");
    uint8_t buf[64];
    size_t need = pad8(QC_SNAPSHOT_FIXED_SIZE + 16 + 1 + 4); /* 64 */
    ck_assert_uint_eq(need, 64);
    memset(buf, 0xee, sizeof(buf));
    ck_assert_uint_eq(qc_snapshot_encode(&e, buf, need - 1), 0);
    ck_assert_uint_eq(buf[0], 0xee); /* nothing written */
    ck_assert_uint_eq(qc_snapshot_encode(&e, buf, need), need);
}
END_TEST

START_TEST(test_snapshot_truncated)
{
    qc_snapshot_entry e = sample_snapshot(24, "7", "name");
    uint8_t buf[128];
    size_t used = QC_SNAPSHOT_FIXED_SIZE + 24 + 1 + 4;
    size_t size = qc_snapshot_encode(&e, buf, sizeof(buf));
    ck_assert_uint_eq(size, pad8(used));
    /* Ending anywhere before the name is complete: false. */
    for (size_t len = 0; len < used; len++) {
        qc_cursor c = qc_cursor_make(buf, len);
        qc_snapshot_entry d;
        ck_assert_msg(!qc_snapshot_decode(&c, &d), "decoded from %zu of %zu bytes", len, used);
    }
    /* Only the padding missing (last entry at the end of the file): the
     * entry is complete, the cursor ends at the end of the buffer. */
    for (size_t len = used; len <= size; len++) {
        qc_cursor c = qc_cursor_make(buf, len);
        qc_snapshot_entry d;
        ck_assert(qc_snapshot_decode(&c, &d));
        ck_assert_uint_eq(c.pos, len);
        ck_assert(!c.overrun);
        ck_assert_uint_eq(d.name_size, 4);
        ck_assert_mem_eq(d.name, "name", 4);
    }
}
END_TEST

START_TEST(test_snapshot_unknown_extra_and_sequence)
{
    /* Hand-made: 32 bytes of extra data (8 unknown), then a second entry. */
    uint8_t buf[256];
    memset(buf, 0, sizeof(buf));
    qc_put_be64(buf, 0x70000);
    qc_put_be32(buf + 8, 4);
    qc_put_be16(buf + 12, 2);
    qc_put_be16(buf + 14, 3);
    qc_put_be32(buf + 36, 32);
    qc_put_be64(buf + 40, 111);
    qc_put_be64(buf + 48, 222);
    qc_put_be64(buf + 56, 333);
    qc_put_be64(buf + 64, 0xffffffffffffffffull); /* unknown extra */
    memcpy(buf + 72, "10", 2);
    memcpy(buf + 74, "abc", 3);
    size_t first = pad8(77); /* 80 */
    qc_snapshot_entry second = sample_snapshot(16, "11", "b");
    size_t second_size = qc_snapshot_encode(&second, buf + first, sizeof(buf) - first);
    ck_assert_uint_ne(second_size, 0);

    qc_cursor c = qc_cursor_make(buf, first + second_size);
    qc_snapshot_entry d;
    ck_assert(qc_snapshot_decode(&c, &d));
    ck_assert_uint_eq(d.extra_data_size, 32);
    ck_assert(d.has_icount);
    ck_assert_uint_eq(d.vm_state_size_large, 111);
    ck_assert_uint_eq(d.disk_size, 222);
    ck_assert_uint_eq(d.icount, 333);
    ck_assert_mem_eq(d.id, "10", 2);
    ck_assert_mem_eq(d.name, "abc", 3);
    ck_assert_uint_eq(d.unknown_extra_size, 8);
    ck_assert_ptr_eq(d.unknown_extra, buf + 64);
    ck_assert_uint_eq(d.entry_size, 80);
    /* Encoded again, the unknown extra data comes back byte for byte. */
    uint8_t again[128];
    ck_assert_uint_eq(qc_snapshot_encode(&d, again, sizeof(again)), 80);
    ck_assert_mem_eq(again, buf, 80);
    ck_assert_uint_eq(c.pos, 80);
    ck_assert(qc_snapshot_decode(&c, &d));
    ck_assert_mem_eq(d.id, "11", 2);
    ck_assert_uint_eq(d.disk_size, second.disk_size);
    ck_assert_uint_eq(c.pos, first + second_size);
    /* Nothing left. */
    ck_assert(!qc_snapshot_decode(&c, &d));

    /* An absurd extra_data_size fails cleanly. */
    qc_put_be32(buf + 36, 0xffffffffu);
    qc_cursor z = qc_cursor_make(buf, sizeof(buf));
    ck_assert(!qc_snapshot_decode(&z, &d));
}
END_TEST

START_TEST(test_snapshot_decode_truncated)
{
    /* 24 known + 16 unknown bytes of extra data, id "42", name "snap". */
    uint8_t buf[128];
    memset(buf, 0, sizeof(buf));
    qc_put_be64(buf, 0x70000);
    qc_put_be32(buf + 8, 4);
    qc_put_be16(buf + 12, 2);
    qc_put_be16(buf + 14, 4);
    qc_put_be32(buf + 36, 40);
    qc_put_be64(buf + 40, 111);
    qc_put_be64(buf + 48, 222);
    qc_put_be64(buf + 56, 333);
    memcpy(buf + 80, "42", 2);
    memcpy(buf + 82, "snap", 4);
    size_t used = 86;
    for (size_t len = 0; len < used; len++) {
        qc_cursor c = qc_cursor_make(buf, len);
        qc_snapshot_entry d;
        bool id_lost, name_lost;
        ck_assert(!qc_snapshot_decode(&c, &d));
        c = qc_cursor_make(buf, len);
        bool got = qc_snapshot_decode_truncated(&c, &d, &id_lost, &name_lost);
        ck_assert(got == (len >= QC_SNAPSHOT_FIXED_SIZE));
        if (!got)
            continue;
        ck_assert_uint_eq(c.pos, len);
        ck_assert_uint_eq(d.l1_table_offset, 0x70000);
        ck_assert_uint_eq(d.l1_size, 4);
        ck_assert_uint_eq(d.extra_data_size, 40); /* as declared */
        ck_assert_uint_eq(d.unknown_extra_size, 0);
        /* Known fields only when complete. */
        ck_assert(d.has_vm_state_size_large == (len >= 48));
        ck_assert(d.has_disk_size == (len >= 56));
        ck_assert(d.has_icount == (len >= 64));
        if (d.has_disk_size)
            ck_assert_uint_eq(d.disk_size, 222);
        ck_assert(id_lost == (len < 82));
        ck_assert(name_lost);
        ck_assert_uint_eq(d.id_str_size, len < 82 ? 0 : 2);
        if (!id_lost)
            ck_assert_mem_eq(d.id, "42", 2);
        ck_assert_uint_eq(d.name_size, 0);
    }
}
END_TEST

/* ---- bitmaps ----------------------------------------------------------------- */

START_TEST(test_bitmap_entry_decode)
{
    uint8_t buf[128];
    memset(buf, 0, sizeof(buf));
    qc_put_be64(buf, 0x50000);
    qc_put_be32(buf + 8, 16);
    qc_put_be32(buf + 12, QC_BITMAP_FLAG_AUTO | QC_BITMAP_FLAG_IN_USE);
    buf[16] = 1;
    buf[17] = 16;
    qc_put_be16(buf + 18, 5);
    qc_put_be32(buf + 20, 4);
    memcpy(buf + 24, "\x01\x02\x03\x04", 4); /* extra data */
    memcpy(buf + 28, "bmap0", 5);
    size_t used = 33, size = pad8(used); /* 40 */
    /* A second entry right after, without extra data. */
    qc_put_be64(buf + size, 0x60000);
    qc_put_be32(buf + size + 8, 1);
    buf[size + 16] = 1;
    buf[size + 17] = 9;
    qc_put_be16(buf + size + 18, 1);
    buf[size + 24] = 'z';
    size_t total = size + 32;

    qc_cursor c = qc_cursor_make(buf, total);
    qc_bitmap_entry e;
    ck_assert(qc_bitmap_entry_decode(&c, &e));
    ck_assert_uint_eq(e.table_offset, 0x50000);
    ck_assert_uint_eq(e.table_size, 16);
    ck_assert_uint_eq(e.flags, 3);
    ck_assert_uint_eq(e.type, 1);
    ck_assert_uint_eq(e.granularity_bits, 16);
    ck_assert_uint_eq(e.name_size, 5);
    ck_assert_uint_eq(e.extra_data_size, 4);
    ck_assert_ptr_eq(e.name, buf + 28);
    ck_assert_mem_eq(e.name, "bmap0", 5);
    ck_assert_uint_eq(e.entry_size, 40);
    ck_assert_uint_eq(c.pos, 40);

    ck_assert(qc_bitmap_entry_decode(&c, &e));
    ck_assert_uint_eq(e.table_offset, 0x60000);
    ck_assert_uint_eq(e.granularity_bits, 9);
    ck_assert_uint_eq(e.extra_data_size, 0);
    ck_assert_mem_eq(e.name, "z", 1);
    ck_assert_uint_eq(e.entry_size, 32);
    ck_assert_uint_eq(c.pos, total);

    /* Truncated anywhere inside the first (padded) entry: false. */
    for (size_t len = 0; len < size; len++) {
        qc_cursor t = qc_cursor_make(buf, len);
        ck_assert_msg(!qc_bitmap_entry_decode(&t, &e), "decoded from %zu bytes", len);
    }
    qc_cursor exact = qc_cursor_make(buf, size);
    ck_assert(qc_bitmap_entry_decode(&exact, &e));

    /* Huge sizes fail without reading out of bounds. */
    qc_put_be32(buf + 20, 0xfffffff0u);
    qc_cursor h = qc_cursor_make(buf, total);
    ck_assert(!qc_bitmap_entry_decode(&h, &e));
}
END_TEST

START_TEST(test_feature_name_decode)
{
    uint8_t p[QC_FEATURE_NAME_ENTRY_SIZE];
    memset(p, 0, sizeof(p));
    p[0] = 0;
    p[1] = 4;
    memcpy(p + 2, "extended l2", 11);
    qc_feature_name f;
    memset(&f, 0x55, sizeof(f));
    qc_feature_name_decode(p, &f);
    ck_assert_uint_eq(f.type, 0);
    ck_assert_uint_eq(f.bit, 4);
    ck_assert_str_eq(f.name, "extended l2");

    /* A name filling all 46 bytes is not NUL-terminated on disk. */
    memset(p, 'x', sizeof(p));
    p[0] = 2;
    p[1] = 63;
    qc_feature_name_decode(p, &f);
    ck_assert_uint_eq(f.type, 2);
    ck_assert_uint_eq(f.bit, 63);
    ck_assert_uint_eq(strlen(f.name), 46);
    ck_assert_uint_eq(f.name[45], 'x');
    ck_assert_uint_eq(f.name[46], '\0');

    /* Out-of-range type/bit are passed through for the checker to judge. */
    p[0] = 0xff;
    p[1] = 0x80;
    qc_feature_name_decode(p, &f);
    ck_assert_uint_eq(f.type, 0xff);
    ck_assert_uint_eq(f.bit, 0x80);
}
END_TEST

START_TEST(test_bitmaps_ext_decode)
{
    uint8_t p[QC_BITMAPS_EXT_SIZE];
    qc_put_be32(p, 3);
    qc_put_be32(p + 4, 0xdeadbeefu);
    qc_put_be64(p + 8, 0x1234);
    qc_put_be64(p + 16, 0xabc0000ull);
    qc_bitmaps_ext b;
    qc_bitmaps_ext_decode(p, &b);
    ck_assert_uint_eq(b.nb_bitmaps, 3);
    ck_assert_uint_eq(b.reserved, 0xdeadbeefu);
    ck_assert_uint_eq(b.directory_size, 0x1234);
    ck_assert_uint_eq(b.directory_offset, 0xabc0000ull);
}
END_TEST

/* Offsets written out from the LUKS 1 on-disk format, not from format.h. */
START_TEST(test_luks_header_decode)
{
    uint8_t p[QC_LUKS_HEADER_SIZE];
    ck_assert_uint_eq(QC_LUKS_HEADER_SIZE, 592);
    memset(p, 0, sizeof(p));
    memcpy(p, "LUKS\xba\xbe", 6);
    qc_put_be16(p + 6, 1);
    memcpy(p + 8, "twofish", 7);
    memcpy(p + 40, "xts-plain64", 11);
    memcpy(p + 72, "sha512", 6);
    qc_put_be32(p + 104, 4096);
    qc_put_be32(p + 108, 64);
    qc_put_be32(p + 164, 12345);
    for (unsigned i = 0; i < 8; i++) {
        uint8_t *slot = p + 208 + 48 * i;
        qc_put_be32(slot, i ? 0xdead : 0xac71f3);
        qc_put_be32(slot + 4, 100 + i);
        qc_put_be32(slot + 40, 8 + 500 * i);
        qc_put_be32(slot + 44, 4000 + i);
    }
    qc_luks_header l;
    qc_luks_header_decode(p, &l);
    ck_assert(memcmp(l.magic, "LUKS\xba\xbe", 6) == 0);
    ck_assert_uint_eq(l.version, 1);
    ck_assert_str_eq(l.cipher_name, "twofish");
    ck_assert_str_eq(l.cipher_mode, "xts-plain64");
    ck_assert_str_eq(l.hash_spec, "sha512");
    ck_assert_uint_eq(l.payload_offset, 4096);
    ck_assert_uint_eq(l.key_bytes, 64);
    ck_assert_uint_eq(l.master_key_iterations, 12345);
    for (unsigned i = 0; i < 8; i++) {
        ck_assert_uint_eq(l.slots[i].active, i ? QC_LUKS_SLOT_DISABLED : QC_LUKS_SLOT_ENABLED);
        ck_assert_uint_eq(l.slots[i].iterations, 100 + i);
        ck_assert_uint_eq(l.slots[i].key_offset, 8 + 500 * i);
        ck_assert_uint_eq(l.slots[i].stripes, 4000 + i);
    }
}
END_TEST

START_TEST(test_masks_match_spec)
{
    /* L1: bits 9-55 offset, 0-8 and 56-62 reserved, 63 COPIED. */
    ck_assert_uint_eq(QC_L1_OFFSET_MASK | QC_L1_RESERVED_MASK | QC_OFLAG_COPIED, UINT64_MAX);
    ck_assert_uint_eq(QC_L1_OFFSET_MASK & QC_L1_RESERVED_MASK, 0);
    /* L2: offset, reserved 1-8 and 56-61, zero flag bit 0, 62, 63. */
    ck_assert_uint_eq(QC_L2_OFFSET_MASK | QC_L2_RESERVED_MASK | QC_OFLAG_ZERO |
                          QC_OFLAG_COMPRESSED | QC_OFLAG_COPIED,
                      UINT64_MAX);
    ck_assert_uint_eq(QC_L2_OFFSET_MASK & QC_L2_RESERVED_MASK, 0);
    ck_assert_uint_eq(QC_L2_RESERVED_MASK & (QC_OFLAG_ZERO | QC_OFLAG_COMPRESSED | QC_OFLAG_COPIED),
                      0);
    ck_assert_uint_eq(QC_REFTABLE_OFFSET_MASK | QC_REFTABLE_RESERVED_MASK, UINT64_MAX);
    ck_assert_uint_eq(QC_BITMAP_TABLE_OFFSET_MASK | QC_BITMAP_TABLE_RESERVED_MASK |
                          QC_BITMAP_TABLE_ALL_ONES,
                      UINT64_MAX);
    ck_assert_uint_eq(QC_INCOMPAT_KNOWN, QC_INCOMPAT_DIRTY | QC_INCOMPAT_CORRUPT |
                                             QC_INCOMPAT_DATA_FILE | QC_INCOMPAT_COMPRESSION |
                                             QC_INCOMPAT_EXTL2);
}
END_TEST

Suite *unit_suite(void)
{
    Suite *s = suite_create("format");

    TCase *tc = tcase_create("bytes");
    tcase_add_test(tc, test_be16_known_bytes);
    tcase_add_test(tc, test_be32_known_bytes);
    tcase_add_test(tc, test_be64_known_bytes);
    tcase_add_test(tc, test_be_round_trips);
    tcase_add_test(tc, test_checked_arithmetic);
    tcase_add_test(tc, test_cursor_reads);
    tcase_add_test(tc, test_cursor_overrun_latches);
    tcase_add_test(tc, test_cursor_take);
    suite_add_tcase(s, tc);

    tc = tcase_create("header");
    tcase_add_test(tc, test_header_layout_by_hand);
    tcase_add_test(tc, test_header_v2_round_trip);
    tcase_add_test(tc, test_header_v3_104_round_trip);
    tcase_add_test(tc, test_header_v3_112_round_trip);
    tcase_add_test(tc, test_header_v3_partial_padding);
    tcase_add_test(tc, test_header_truncated);
    suite_add_tcase(s, tc);

    tc = tcase_create("geometry");
    tcase_add_loop_test(tc, test_geometry_cluster_bits, 9, 22);
    tcase_add_test(tc, test_geometry_known_values);
    tcase_add_test(tc, test_l1_entries_needed);
    tcase_add_test(tc, test_masks_match_spec);
    suite_add_tcase(s, tc);

    tc = tcase_create("compressed");
    tcase_add_loop_test(tc, test_compressed_round_trip, 9, 22);
    tcase_add_test(tc, test_compressed_by_hand);
    tcase_add_loop_test(tc, test_compressed_high_bits, 9, 22);
    suite_add_tcase(s, tc);

    tc = tcase_create("refblock");
    tcase_add_test(tc, test_refblock_by_hand_sub_byte);
    tcase_add_test(tc, test_refblock_by_hand_wide);
    tcase_add_loop_test(tc, test_refblock_widths, 0, 7);
    tcase_add_test(tc, test_refblock_overwide_value);
    suite_add_tcase(s, tc);

    tc = tcase_create("snapshot");
    tcase_add_loop_test(tc, test_snapshot_round_trip, 0, 4);
    tcase_add_test(tc, test_snapshot_encode_too_small);
    tcase_add_test(tc, test_snapshot_truncated);
    tcase_add_test(tc, test_snapshot_unknown_extra_and_sequence);
    tcase_add_test(tc, test_snapshot_decode_truncated);
    suite_add_tcase(s, tc);

    tc = tcase_create("extensions");
    tcase_add_test(tc, test_bitmap_entry_decode);
    tcase_add_test(tc, test_feature_name_decode);
    tcase_add_test(tc, test_bitmaps_ext_decode);
    tcase_add_test(tc, test_luks_header_decode);
    suite_add_tcase(s, tc);

    return s;
}
